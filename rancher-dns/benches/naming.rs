//! Hot paths without I/O, on the 20-host / 50-stack / 500-service / 5,000-container environment:
//! building a generation of answers (from scratch, after a status change, after a scale-up), and resolving
//! one question (a service FQDN, a short name through the caller's search list, a miss).
//! Run: `cargo bench -p rancher-dns --bench naming`.

use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use event_bus::testkit::fixtures::{self, EnvironmentShape};
use event_bus::{Document, Key, Record, Snapshot};
use hickory_proto::rr::{Name, RecordType};
use rancher_dns::naming::{answers, rebuild, NamingConfig};
use rancher_dns::resolve::{resolve, Options};

fn environment() -> Snapshot {
    let mut records = EnvironmentShape::BENCH.build();
    let ids: Vec<String> =
        records.iter().filter_map(|r| if let Record::Container(c) = r { Some(c.uuid.clone()) } else { None }).collect();
    for id in &ids {
        records.push(fixtures::status(id, "h0", "running").into_record());
    }
    Snapshot::from_records(1, records)
}

fn bench(c: &mut Criterion) {
    let snap = environment();
    let cfg = NamingConfig { ttl: 1, metadata_answer: vec!["169.254.169.250".parse().unwrap()] };
    let base = answers(&snap, &cfg);
    let mut changed = snap.clone();
    let stopped = fixtures::status("c0", "h0", "stopped").into_record();
    changed.apply(&Key::new(stopped.family(), stopped.id()).unwrap(), Some(stopped));

    c.bench_function("build answers from scratch (5,000 containers)", |b| b.iter(|| answers(&snap, &cfg)));
    c.bench_function("rebuild after one status change", |b| b.iter(|| rebuild(&changed, &cfg, Some((&snap, &base)))));
    let mut scaled = snap.clone();
    let added = fixtures::container("new", "stack0-svc0-99", "sv0-0", "st0", "h0", "10.99.0.2").into_record();
    scaled.apply(&Key::new(added.family(), added.id()).unwrap(), Some(added));
    c.bench_function("rebuild after one container is added", |b| {
        b.iter(|| rebuild(&scaled, &cfg, Some((&snap, &base))))
    });

    // c0 is a container of stack0/svc0 at 10.42.0.2.
    let caller: IpAddr = "10.42.0.2".parse().unwrap();
    let opts = Options { ndots: 0, rotate: 3 };
    for (label, name) in [
        ("resolve service.stack.rancher.internal", "svc7.stack12.rancher.internal."),
        ("resolve a short name through search", "svc3."),
        ("resolve a miss under rancher.internal", "nosuch.stack12.rancher.internal."),
    ] {
        let name = Name::from_ascii(name).unwrap();
        c.bench_function(label, |b| b.iter(|| resolve(&base, caller, &name, RecordType::A, opts)));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
