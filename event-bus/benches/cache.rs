//! State cache benchmarks against a real nats-server on loopback, each next to a baseline
//! measured in the same run: a bare async-nats KV watch receiving the same keys.
//!
//! - `cold_load`: 20 hosts / 50 stacks / 500 services / 5,000 containers, from nothing to a
//!   complete snapshot (cache) vs. to the last entry of the initial delivery (bare watch);
//! - `live_updates`: 5,000 container updates written by another connection, until the reader
//!   has seen the last one (cache: applied and published in a snapshot);
//! - `apply`: the CPU path alone, decode + index 5,000 container updates into a full snapshot.
//!
//! The NATS-backed measurements are 15 alternating runs each (medians reported); the CPU path
//! is a criterion benchmark. Run: `cargo bench -p event-bus --bench cache` (or
//! `scripts/bench/state-cache`). At the end it prints the medians and the cache/baseline ratios.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use event_bus::keys::{decode, encode};
use event_bus::runtime::metrics::Metrics;
use event_bus::testkit::{fixtures::EnvironmentShape, NatsServer};
use event_bus::{provision, Bus, Document, Key, NatsOptions, Provision, Record, Snapshot, StateCache, StateStore};
use futures::StreamExt;

const UPDATES: usize = 5_000;
const RUNS: usize = 15;

static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(name: &str, d: Duration, iters: u64) {
    TIMES.lock().unwrap().entry(name.to_string()).or_default().push(d.as_secs_f64() / iters as f64);
}

fn median(name: &str) -> f64 {
    let mut v = TIMES.lock().unwrap().get(name).cloned().unwrap_or_default();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn write_all(store: &StateStore, records: &[Record]) -> u64 {
    let results: Vec<u64> = futures::stream::iter(records.iter())
        .map(|r| async move { store.put_record(r).await.unwrap() })
        .buffer_unordered(256)
        .collect()
        .await;
    results.into_iter().max().unwrap_or(0)
}

async fn bare_cold_load(store: &StateStore) -> usize {
    let mut w = store.kv().watch_with_history(">").await.unwrap();
    let mut n = 0;
    while let Some(e) = w.next().await {
        let e = e.unwrap();
        n += 1;
        if e.delta == 0 {
            break;
        }
    }
    n
}

fn container_updates(records: &[Record], round: usize) -> Vec<Record> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Container(c) => {
                let mut c = c.clone();
                c.labels.insert("round".into(), round.to_string());
                Some(c.into_record())
            }
            _ => None,
        })
        .take(UPDATES)
        .collect()
}

fn main() {
    let mut c = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start();
    let (bus, store) = rt.block_on(async {
        let bus = Bus::connect(&NatsOptions::new(nats.url()), "bench", Duration::from_secs(10)).await.unwrap();
        let store = provision(&bus, &Provision { history: 1, ..Default::default() }).await.unwrap();
        (bus, store)
    });
    let records = EnvironmentShape::BENCH.build();
    let keys = records.len() + 1; // + environment.bench
    rt.block_on(write_all(&store, &records));

    // Whole-system runs are few and alternate between the baseline and the cache, so both see
    // the same machine. (Each watch leaves an ephemeral consumer on the server for 30 s; letting
    // criterion pick hundreds of iterations would hit the server's consumer limit.)
    for _ in 0..RUNS {
        let t = Instant::now();
        assert_eq!(rt.block_on(bare_cold_load(&store)), keys);
        record("cold_load/bare_kv_watch", t.elapsed(), 1);
        let t = Instant::now();
        let cache = rt.block_on(StateCache::start(&bus, &Metrics::new())).unwrap();
        record("cold_load/state_cache", t.elapsed(), 1);
        assert_eq!(cache.snapshot().containers().count(), EnvironmentShape::BENCH.containers);
    }

    let cache = rt.block_on(StateCache::start(&bus, &Metrics::new())).unwrap();
    for round in 1..=RUNS {
        // Baseline: a bare watch sees the last of UPDATES writes.
        let updates = container_updates(&records, 2 * round);
        let d = rt.block_on(async {
            let mut w = store.kv().watch(">").await.unwrap();
            let t = Instant::now();
            let last = write_all(&store, &updates).await;
            while let Some(e) = w.next().await {
                if e.unwrap().revision >= last {
                    break;
                }
            }
            t.elapsed()
        });
        record("live_updates/bare_kv_watch", d, 1);
        // The cache: the last write is applied and published in a snapshot.
        let updates = container_updates(&records, 2 * round + 1);
        let d = rt.block_on(async {
            let t = Instant::now();
            let last = write_all(&store, &updates).await;
            cache.wait_newer(last - 1, Duration::from_secs(60)).await.expect("cache caught up");
            t.elapsed()
        });
        record("live_updates/state_cache", d, 1);
    }
    drop(cache);

    // The CPU path alone: decode + apply into a snapshot that already holds the environment.
    let base = Snapshot::from_records(0, records.iter().cloned());
    let encoded: Vec<(Key, Vec<u8>)> =
        container_updates(&records, 0).iter().map(|r| (Key::new(r.family(), r.id()).unwrap(), encode(r))).collect();
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(encoded.len() as u64));
    g.bench_function("decode_and_apply", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let mut s = base.clone();
                for (key, bytes) in &encoded {
                    s.apply(key, Some(decode(key, bytes).unwrap()));
                }
                std::hint::black_box(&s);
            }
            let d = t.elapsed();
            record("apply/decode_and_apply", d, iters);
            d
        })
    });
    g.finish();
    c.final_summary();

    let (bare, cache_t) = (median("cold_load/bare_kv_watch"), median("cold_load/state_cache"));
    println!("\nsummary (medians, same run, nats-server on loopback):");
    println!(
        "cold load of {keys} keys: bare KV watch {:.1} ms, state cache {:.1} ms, ratio {:.2}",
        bare * 1e3,
        cache_t * 1e3,
        cache_t / bare
    );
    let (bare_u, cache_u) = (median("live_updates/bare_kv_watch"), median("live_updates/state_cache"));
    println!(
        "live updates ({UPDATES}): bare KV watch {:.0}/s, state cache {:.0}/s, ratio (time) {:.2}",
        UPDATES as f64 / bare_u,
        UPDATES as f64 / cache_u,
        cache_u / bare_u
    );
    println!("decode+apply CPU path: {:.0} updates/s", encoded.len() as f64 / median("apply/decode_and_apply"));
}
