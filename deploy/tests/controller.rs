//! `deploy controller` as an operator runs it: two of them against one NATS, the active one
//! places containers, the standby takes over within 10 s when the active one is killed.

mod common;

use common::until;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use event_bus::model::{Container, Lease, Service};
use event_bus::testkit::{fixtures, free_port, NatsServer};
use event_bus::{provision, Bus, Family, NatsOptions, Provision, StateStore};

/// Killed with SIGKILL on drop: the active controller must die without giving its lease up.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn controller(url: &str, name: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_deploy"))
            .args([
                "controller",
                "--lease-ttl",
                "2s",
                "--holder",
                name,
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .env("CORRAL_NATS_URL", url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn containers_of(store: &StateStore, service: &str) -> Vec<Container> {
    let mut out = Vec::new();
    for key in store.keys(Some(Family::Container)).await.unwrap() {
        if let Some(c) = store.get::<Container>(&key.id).await.unwrap() {
            if c.value.service_uuid.as_deref() == Some(service) {
                out.push(c.value);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_and_fails_over() {
    let nats = NatsServer::start();
    let url = nats.url();
    let bus = Bus::connect(&NatsOptions::new(url.clone()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    for (uuid, name, third) in [("h1", "host-1", 1), ("h2", "host-2", 2)] {
        let mut h = fixtures::host(uuid, name, &format!("127.0.1.{third}"));
        h.subnet = Some(format!("10.42.{third}.0/24"));
        store.put(&h).await.unwrap();
    }
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    let mut web = fixtures::service("s-web", "st1", "web");
    web.scale = Some(2);
    store.put(&web).await.unwrap();
    let mut nowhere = fixtures::service("s-nowhere", "st1", "nowhere");
    nowhere.launch_config.labels.insert("io.rancher.scheduler.affinity:host_label".into(), "zone=mars".into());
    store.put(&nowhere).await.unwrap();

    // A service whose requested address no host can give: a reason, and no churn.
    let mut bad_ip = fixtures::service("s-badip", "st1", "badip");
    bad_ip.launch_config.labels.insert("io.rancher.container.requested_ip".into(), "192.168.9.9".into());
    store.put(&bad_ip).await.unwrap();

    let mut a = Some(controller(&url, "ctl-a"));
    let mut b = Some(controller(&url, "ctl-b"));
    until(Duration::from_secs(20), "2 web containers", || async { containers_of(&store, "s-web").await.len() == 2 })
        .await;
    let names: std::collections::BTreeSet<String> =
        containers_of(&store, "s-web").await.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["app-web-1".to_string(), "app-web-2".to_string()].into());

    // The reason a service cannot be placed is shown by `deploy ps`.
    let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(["ps", "-o", "json"])
        .env("CORRAL_NATS_URL", &url)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["service"] == "nowhere").unwrap();
    assert!(
        row["unplaceable"].as_str().unwrap().contains("fails io.rancher.scheduler.affinity:host_label=zone=mars"),
        "{row}"
    );

    // Settled: the lease is only renewed (every third of its 2 s), not rewritten in a loop.
    let lease_rev = |store: &StateStore| {
        let store = store.clone();
        async move { store.get::<Lease>("deploy-controller").await.unwrap().unwrap().revision }
    };
    let before = lease_rev(&store).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = lease_rev(&store).await - before;
    assert!(writes <= 8, "{writes} lease writes in 2 s");

    // Kill the active one; the standby takes over and keeps placing.
    let holder = store.get::<Lease>("deploy-controller").await.unwrap().unwrap().value.holder;
    let killed = Instant::now();
    if holder == "ctl-a" {
        drop(a.take());
    } else {
        drop(b.take());
    }
    let mut web = store.get::<Service>("s-web").await.unwrap().unwrap().value;
    web.scale = Some(3);
    store.put(&web).await.unwrap();
    until(Duration::from_secs(10), "scale-up placed by the standby", || async {
        containers_of(&store, "s-web").await.len() == 3
    })
    .await;
    let took = killed.elapsed();
    let new_holder = store.get::<Lease>("deploy-controller").await.unwrap().unwrap().value.holder;
    assert_ne!(new_holder, holder);
    eprintln!("standby placed the scale-up {took:?} after the active controller was killed");
    // Indexes continue, never reused.
    let names: std::collections::BTreeSet<String> =
        containers_of(&store, "s-web").await.into_iter().map(|c| c.name).collect();
    assert!(names.contains("app-web-3"), "{names:?}");
    drop((a, b));
}
