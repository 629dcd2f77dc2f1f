//! `deploy up` on a 200-service stack: parse + validate + plan (no I/O), and applying it to a
//! real nats-server, against a baseline measured in the same run: writing the same documents
//! with plain KV puts, one after the other (what apply does, minus reading the current state,
//! planning, claiming the stack and recording the revision). Medians of several runs.
//! Run: `cargo bench -p deploy --bench stack`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use deploy::history::History;
use deploy::plan::{plan, Scale};
use deploy::stackfile::{load, Input};
use event_bus::testkit::NatsServer;
use event_bus::{provision, Bus, Document, NatsOptions, Provision};

const SERVICES: usize = 200;
const RUNS: usize = 7;

fn files(dir: &std::path::Path) -> Input {
    let mut compose = String::from("version: '2'\nservices:\n");
    let mut rancher = String::from("version: '2'\nservices:\n");
    for i in 0..SERVICES {
        compose.push_str(&format!(
            "  svc{i}:\n    image: registry.local/svc{i}:${{TAG:-1.0}}\n    environment:\n      ROLE: worker\n      INDEX: \"{i}\"\n    ports: [\"{}:8080/tcp\"]\n    labels:\n      io.rancher.scheduler.affinity:host_label_soft: zone=z{}\n      io.rancher.sidekicks: log{i}\n    links: [svc{}:peer]\n  log{i}:\n    image: busybox\n    network_mode: container:svc{i}\n",
            10000 + i,
            i % 3,
            (i + 1) % SERVICES
        ));
        rancher.push_str(&format!(
            "  svc{i}:\n    scale: 2\n    health_check: {{port: 8080, request_line: GET /healthz HTTP/1.0, interval: 2000, healthy_threshold: 2, unhealthy_threshold: 3}}\n    metadata: {{index: {i}}}\n"
        ));
    }
    std::fs::write(dir.join("docker-compose.yml"), compose).unwrap();
    std::fs::write(dir.join("rancher-compose.yml"), rancher).unwrap();
    Input {
        compose: dir.join("docker-compose.yml"),
        rancher: Some(dir.join("rancher-compose.yml")),
        stack: "big".into(),
        ..Default::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = files(dir.path());

    let mut parse_plan = Vec::new();
    for _ in 0..RUNS * 3 {
        let t = Instant::now();
        let desired = load(&input).expect("the generated stack is valid");
        let p = plan(&desired, None, &BTreeMap::new(), Scale::Keep);
        assert_eq!(p.changes.len(), SERVICES);
        parse_plan.push(t.elapsed());
    }
    println!("parse + validate + plan, {SERVICES} services (+{SERVICES} sidekicks): median {:?}", median(parse_plan));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start();
    let (ours, raw) = rt.block_on(async {
        let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
        let store = provision(&bus, &Provision::default()).await.unwrap();
        let history = History::open(&bus).await.unwrap();
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            let mut input = input.clone();
            input.stack = format!("big{run}");
            let desired = load(&input).unwrap();
            // Baseline: the same documents, as bytes, with plain puts under other keys.
            let docs: Vec<(String, Vec<u8>)> = std::iter::once(desired.stack.clone().into_record())
                .chain(desired.services.iter().cloned().map(|s| s.into_record()))
                .map(|r| (format!("raw{run}-{}", r.id().replace('=', "-")), serde_json::to_vec(&r).unwrap()))
                .collect();
            let t = Instant::now();
            for (key, bytes) in &docs {
                store.kv().put(format!("stack.{key}"), bytes.clone().into()).await.unwrap();
            }
            raw.push(t.elapsed());
            let t = Instant::now();
            let applied = deploy::apply::run(&store, &history, &input.stack, Some(&desired), Scale::Keep, "up", false)
                .await
                .unwrap();
            assert_eq!(applied.revision, Some(1));
            ours.push(t.elapsed());
        }
        (median(ours), median(raw))
    });
    println!(
        "apply to NATS ({} keys): deploy up {ours:?}, raw KV puts {raw:?}, ratio {:.2}",
        SERVICES + 1,
        ours.as_secs_f64() / raw.as_secs_f64()
    );
}
