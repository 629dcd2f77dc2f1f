//! A 3-server JetStream cluster on loopback: lose a server, keep writing and watching.

mod common;

use std::time::Duration;

use common::*;
use event_bus::runtime::metrics::Metrics;
use event_bus::testkit::{fixtures, NatsCluster};
use event_bus::{provision, Provision, StateCache, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_of_three_servers_does_not_stop_writes_or_watches() {
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    let bus = connect(&urls).await;
    // The cluster elects a JetStream meta leader shortly after start; provisioning waits for it.
    let p = Provision { replicas: 3, ..Default::default() };
    let mut store = None;
    for _ in 0..100 {
        match provision(&bus, &p).await {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let store = store.expect("provisioned a replicated bucket on the cluster");
    let info = store.kv().stream.get_info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);

    let cache = StateCache::start(&bus, &Metrics::new()).await.unwrap();
    store.put(&fixtures::stack("st1", "app")).await.unwrap();

    // Stop the very server the cache is connected to: its watch must move to another one.
    let connected_to = bus.client.server_info().server_name;
    let victim = cluster.nodes.iter().position(|n| n.name() == connected_to).expect("connected to a cluster node");
    cluster.nodes[victim].kill();

    // A fresh writer, to the survivors only.
    let survivors: Vec<String> = cluster.nodes.iter().filter(|n| n.is_running()).map(|n| n.url()).collect::<Vec<_>>();
    let writer = connect(&survivors.join(",")).await;
    // Right after the loss the bucket's stream may be electing a new leader: a NATS error (not
    // "not provisioned") that goes away.
    let mut wstore = None;
    for _ in 0..100 {
        match StateStore::open(&writer).await {
            Ok(s) => {
                wstore = Some(s);
                break;
            }
            Err(event_bus::Error::NotProvisioned { .. }) => panic!("the replicated bucket vanished"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let wstore = wstore.expect("the bucket answered again after the server loss");
    let mut last = 0;
    for i in 0..10 {
        let c = fixtures::container(
            &format!("c{i}"),
            &format!("app-web-{i}"),
            "sv1",
            "st1",
            "h1",
            &format!("10.42.0.{}", i + 2),
        );
        // Right after the loss JetStream may need a moment to move stream leadership.
        let mut tries = 0;
        last = loop {
            match wstore.put(&c).await {
                Ok(rev) => break rev,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("retrying write after server loss: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("writes did not resume: {e}"),
            }
        };
    }
    let snap =
        cache.wait_newer(last - 1, Duration::from_secs(30)).await.expect("the watch continued on another server");
    assert_eq!(snap.containers().count(), 10);
    assert_eq!(snap.container_by_ip("10.42.0.11").unwrap().uuid, "c9");
    assert_ne!(bus.client.server_info().server_name, connected_to, "the cache's client moved to a surviving server");
}
