//! The state cache against a real nats-server: another process writes, the cache follows in
//! order; NATS dies and comes back; bad values are skipped and reported.

mod common;

use std::time::Duration;

use common::*;
use event_bus::runtime::admin::{AdminServer, Readiness};
use event_bus::runtime::metrics::Metrics;
use event_bus::testkit::{fixtures, NatsServer};
use event_bus::{Document, StateCache};

/// `stored <key> at revision N` → N
fn stored_revision(out: &std::process::Output) -> u64 {
    assert!(out.status.success(), "event-bus failed: {}", text(&out.stderr));
    let line = text(&out.stdout);
    line.trim().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("unexpected output {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_writes_and_the_cache_sees_every_change_in_order() {
    let nats = NatsServer::start();
    let (bus, store) = provisioned(&nats.url()).await;
    let cache = StateCache::start(&bus, &Metrics::new()).await.unwrap();
    assert_eq!(cache.version(), store.version().await.unwrap());

    // Each step: the document the writer process stores, and what the cache must then show.
    type Check = Box<dyn Fn(&event_bus::Snapshot) -> bool>;
    let steps: Vec<(&str, &str, Check)> = vec![
        ("stack.st1", r#"{"uuid":"st1","name":"App"}"#, Box::new(|s| s.stack_by_name("app").is_some())),
        (
            "service.sv1",
            r#"{"uuid":"sv1","name":"web","stack_uuid":"st1","scale":2}"#,
            Box::new(|s| s.services_in_stack("st1").count() == 1),
        ),
        (
            "container.c1",
            r#"{"uuid":"c1","name":"App-web-1","service_uuid":"sv1","stack_uuid":"st1","host_uuid":"h1","primary_ip":"10.42.0.2"}"#,
            Box::new(|s| s.container_by_ip("10.42.0.2").is_some_and(|c| c.name == "App-web-1")),
        ),
        (
            "container.c2",
            r#"{"uuid":"c2","name":"App-web-2","service_uuid":"sv1","stack_uuid":"st1","host_uuid":"h2","primary_ip":"10.42.1.2"}"#,
            Box::new(|s| s.containers_of_service("sv1").count() == 2),
        ),
        (
            "container.c1",
            r#"{"uuid":"c1","name":"App-web-1","service_uuid":"sv1","stack_uuid":"st1","host_uuid":"h1","primary_ip":"10.42.0.9"}"#,
            Box::new(|s| s.container_by_ip("10.42.0.2").is_none() && s.container_by_ip("10.42.0.9").is_some()),
        ),
        (
            "status.c1",
            r#"{"uuid":"c1","host_uuid":"h1","state":"running","start_count":1}"#,
            Box::new(|s| s.status("c1").is_some_and(|st| st.state == "running")),
        ),
    ];
    for (key, doc, check) in &steps {
        let rev = stored_revision(&event_bus(&nats.url(), &["state", "put", key], Some(doc)));
        let snap = cache.wait_newer(rev - 1, Duration::from_secs(10)).await.expect("cache followed the write");
        assert_eq!(snap.version(), rev, "after {key}: the cache is at exactly the writer's revision");
        assert!(check(&snap), "after writing {key} the cache shows it: {snap:?}");
    }

    let out = event_bus(&nats.url(), &["state", "delete", "container.c2"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version = store.version().await.unwrap();
    let snap = cache.wait_newer(version - 1, Duration::from_secs(10)).await.unwrap();
    assert!(snap.container("c2").is_none());
    assert_eq!(snap.containers_of_service("sv1").count(), 1);
    assert_eq!(cache.version(), version, "the cache's version is the bucket revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_serving_while_nats_is_down_and_resyncs_when_it_returns() {
    let mut nats = NatsServer::start();
    let (bus, store) = provisioned(&nats.url()).await;
    let shape = fixtures::EnvironmentShape { hosts: 2, stacks: 2, services: 4, containers: 20 };
    for r in shape.build() {
        store.put_record(&r).await.unwrap();
    }
    let metrics = Metrics::new();
    let cache = StateCache::start(&bus, &metrics).await.unwrap();
    let readiness = Readiness::new();
    let c = cache.clone();
    readiness.add("state cache", move || c.readiness());
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap(), metrics.clone(), readiness).await.unwrap();
    let readyz = format!("http://{}/readyz", admin.local_addr());
    let http = reqwest::Client::new();
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);
    let loaded_version = cache.version();
    let applied_before = metric(&metrics, "corral_state_cache_changes_total");

    nats.kill();
    let c = cache.clone();
    eventually("the cache reports not-ready", Duration::from_secs(10), || {
        let ready = c.is_ready();
        async move { !ready }
    })
    .await;
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 503, "/readyz says not ready while NATS is down");
    // Reads keep answering from the last snapshot.
    let snap = cache.snapshot();
    assert_eq!(snap.version(), loaded_version);
    assert_eq!(snap.containers().count(), 20);
    assert!(snap.container_by_name("stack0-svc0-1").is_some());

    nats.restart();
    let c = cache.clone();
    eventually("the cache is ready again", Duration::from_secs(30), || {
        let ready = c.is_ready();
        async move { ready }
    })
    .await;
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);

    // Changes made once the server is back arrive exactly once.
    let writer = connect(&nats.url()).await;
    let wstore = event_bus::StateStore::open(&writer).await.unwrap();
    let mut moved = cache.snapshot().container("c0").unwrap().as_ref().clone();
    moved.primary_ip = Some("10.42.9.9".into());
    moved.ips = vec!["10.42.9.9".into()];
    wstore.put(&moved).await.unwrap();
    wstore.delete(&"container.c1".parse().unwrap()).await.unwrap();
    let added = fixtures::container("c-new", "stack1-svc1-9", "sv1-1", "st1", "h1", "10.42.1.200");
    let last = wstore.put(&added).await.unwrap();

    let snap = cache.wait_newer(last - 1, Duration::from_secs(30)).await.expect("cache converged after the restart");
    assert_eq!(snap.version(), last);
    assert_eq!(snap.container_by_ip("10.42.9.9").unwrap().uuid, "c0");
    assert!(snap.container("c1").is_none());
    assert_eq!(snap.container_by_name("stack1-svc1-9").unwrap().key(), added.key());
    assert_eq!(snap.containers().count(), 20);
    assert_eq!(
        metric(&metrics, "corral_state_cache_changes_total") - applied_before,
        3.0,
        "each change after the restart was applied once: none missed, none twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_value_is_skipped_with_a_log_line_and_a_metric() {
    let nats = NatsServer::start();
    let (bus, store) = provisioned(&nats.url()).await;
    let good = fixtures::container("c1", "app-web-1", "sv1", "st1", "h1", "10.42.0.2");
    store.put(&good).await.unwrap();

    let metrics = Metrics::new();
    let cache = StateCache::start(&bus, &metrics).await.unwrap();

    // Another writer (a buggy or newer one) stores garbage under known families.
    store.kv().put("container.c1", "{not json".into()).await.unwrap();
    store
        .kv()
        .put("service.sv9", r#"{"uuid":"sv9","name":"x","stack_uuid":"st1","scale":"lots"}"#.into())
        .await
        .unwrap();
    let after = store.put(&fixtures::stack("st1", "app")).await.unwrap();

    let snap = cache.wait_newer(after - 1, Duration::from_secs(10)).await.expect("the cache keeps going");
    assert!(snap.stack("st1").is_some(), "the change after the bad ones was applied");
    assert_eq!(snap.container("c1").unwrap().primary_ip.as_deref(), Some("10.42.0.2"), "the last good value is kept");
    assert!(snap.service("sv9").is_none());
    let invalid: Vec<_> = snap.invalid().map(|(k, why)| (k.clone(), why.clone())).collect();
    assert_eq!(invalid.len(), 2, "{invalid:?}");
    assert!(invalid.iter().any(|(k, why)| k == "service.sv9" && why.contains("scale")), "{invalid:?}");
    assert_eq!(metric(&metrics, r#"corral_state_cache_invalid_values_total{family="container"}"#), 1.0);
    assert_eq!(metric(&metrics, r#"corral_state_cache_invalid_values_total{family="service"}"#), 1.0);

    // The log line, as an operator sees it from the CLI (which runs the same cache).
    let out = event_bus(&nats.url(), &["state", "dump"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("skipping a value that does not parse") && log.contains("service.sv9"), "{log}");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(dump["invalid"]["container.c1"].as_str().unwrap().contains("not JSON"), "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_seen_in_order() {
    let nats = NatsServer::start();
    let (bus, store) = provisioned(&nats.url()).await;
    let cache = StateCache::start(&bus, &Metrics::new()).await.unwrap();

    // Record the value of one key in every snapshot the cache publishes.
    let mut versions = cache.subscribe();
    let watcher = cache.clone();
    let seen = tokio::spawn(async move {
        let mut seen: Vec<(u64, u64)> = Vec::new();
        while versions.changed().await.is_ok() {
            let snap = watcher.snapshot();
            let n = snap.stack("st1").and_then(|s| s.description.parse::<u64>().ok()).unwrap_or(0);
            seen.push((snap.version(), n));
            if n == 300 {
                break;
            }
        }
        seen
    });

    // 300 writes of one key, pipelined (many in flight at once), interleaved with other keys.
    let writes = (1..=300u64).map(|i| {
        let store = store.clone();
        async move {
            let mut st = fixtures::stack("st1", "app");
            st.description = i.to_string();
            let rev = store.put(&st).await.unwrap();
            store.put(&fixtures::host(&format!("h{i}"), &format!("host-{i}"), "127.0.0.1")).await.unwrap();
            rev
        }
    });
    // Sequential awaits keep write order = value order; the cache still sees them in bursts.
    for w in writes {
        w.await;
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), seen).await.unwrap().unwrap();
    // (A reader may see one snapshot twice — it loads the newest one, which can be a notification
    // ahead — but never an older one after a newer.)
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "snapshots went backwards: {seen:?}");
    assert_eq!(seen.last().unwrap().1, 300);
    let last = store.version().await.unwrap();
    let snap = cache.wait_newer(last - 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap.version(), last);
    assert_eq!(snap.hosts().count(), 300, "every interleaved write arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_with_a_different_store_makes_the_cache_reload() {
    let mut nats = NatsServer::start();
    let (bus, store) = provisioned(&nats.url()).await;
    for i in 0..5 {
        store.put(&fixtures::stack(&format!("old{i}"), &format!("old{i}"))).await.unwrap();
    }
    let metrics = Metrics::new();
    let cache = StateCache::start(&bus, &metrics).await.unwrap();
    assert_eq!(cache.snapshot().stacks().count(), 5);
    let old_version = cache.version();

    nats.kill_and_wipe();
    nats.restart();
    // Until the environment exists again the cache cannot know what it follows: not ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!cache.is_ready(), "ready while the bucket is gone");
    assert_eq!(cache.snapshot().stacks().count(), 5, "still serving the last state");

    let (_bus2, fresh) = provisioned(&nats.url()).await;
    fresh.put(&fixtures::stack("new0", "new0")).await.unwrap();
    let new_version = fresh.version().await.unwrap();
    assert!(new_version < old_version, "the fresh store is behind the old one");
    let c = cache.clone();
    eventually("the cache reloaded from the new store", Duration::from_secs(30), || {
        let snap = c.snapshot();
        let ok = snap.stacks().count() == 1 && snap.stack("new0").is_some() && c.is_ready();
        async move { ok }
    })
    .await;
    assert_eq!(cache.version(), new_version);
    assert!(metric(&metrics, "corral_state_cache_resyncs_total") >= 1.0);

    // And it follows the new store from there.
    let rev = fresh.put(&fixtures::stack("new1", "new1")).await.unwrap();
    let snap = cache.wait_newer(rev - 1, Duration::from_secs(10)).await.unwrap();
    assert!(snap.stack("new1").is_some());
}
