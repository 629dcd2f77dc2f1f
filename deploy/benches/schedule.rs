//! The scheduler alone: 5,000 containers (500 services × 10) placed on 100 hosts, a third of the
//! services with a hard host-label rule, a third with a soft one, from an empty environment.
//! Goal (issue): under 200 ms. Run: `cargo bench -p deploy --bench schedule`.

use criterion::{criterion_group, criterion_main, Criterion};
use deploy::schedule::{live_hosts, place, Counters};
use event_bus::keys::Document;
use event_bus::testkit::fixtures;
use event_bus::{Record, Snapshot};

fn environment() -> Snapshot {
    let mut records: Vec<Record> = Vec::new();
    for h in 0..100 {
        let mut host = fixtures::host(&format!("h{h}"), &format!("host-{h:03}"), "127.0.1.1");
        host.subnet = Some(format!("10.{}.{}.0/24", 42 + h / 250, h % 250));
        host.labels.insert("zone".into(), format!("z{}", h % 5));
        records.push(host.into_record());
    }
    for st in 0..50 {
        records.push(fixtures::stack(&format!("st{st}"), &format!("stack{st}")).into_record());
        for sv in 0..10 {
            let i = st * 10 + sv;
            let mut s = fixtures::service(&format!("s{i}"), &format!("st{st}"), &format!("svc{sv}"));
            s.scale = Some(10);
            match i % 3 {
                0 => {
                    s.launch_config
                        .labels
                        .insert("io.rancher.scheduler.affinity:host_label".into(), format!("zone=z{}", i % 5));
                }
                1 => {
                    s.launch_config
                        .labels
                        .insert("io.rancher.scheduler.affinity:host_label_soft".into(), format!("zone=z{}", i % 5));
                }
                _ => {}
            }
            records.push(s.into_record());
        }
    }
    Snapshot::from_records(1, records)
}

fn bench(c: &mut Criterion) {
    let snap = environment();
    let hosts = live_hosts(&snap, 0, u64::MAX);
    let p = place(&snap, &hosts, &Counters::default(), 0);
    assert_eq!(p.create.len(), 5000, "{:?}", p.unplaceable);
    let mut g = c.benchmark_group("schedule");
    g.sample_size(20);
    g.bench_function("place 5,000 containers on 100 hosts", |b| {
        b.iter(|| place(&snap, &hosts, &Counters::default(), 0))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
