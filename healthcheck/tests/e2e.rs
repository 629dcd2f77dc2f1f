//! End to end on loopback: the real checker (HAProxy) → reports on NATS → the controller's health
//! task → `health.<uuid>` → what users see: the service's DNS answer (rancher-dns, asked with
//! `dig`) and `health_state` in rancher-metadata. Two containers of one service listen on their
//! own 127.0.0.x address; removing one's page takes it out of the answer.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use event_bus::runtime::metrics::Metrics;
use event_bus::testkit::{fixtures, free_port, NatsServer};
use event_bus::{provision, Bus, Events, NatsOptions, Provision, StateCache};

fn dig(port: u16, name: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args(["+short", "+tries=1", "+time=2", "-p", &port.to_string(), "@127.0.0.1", name, "A"])
        .output()
        .expect("dig (Debian package bind9-dnsutils)");
    let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    ips.sort();
    ips
}

async fn until_true(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_container_leaves_dns_and_shows_in_metadata() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    store.put(&fixtures::host("h1", "host-1", "127.0.0.1")).await.unwrap();
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    let port = free_port();
    let hc = check(port, Some("GET /ok HTTP/1.0"), 200, 1, 2);
    let mut web = fixtures::service("s-web", "st1", "web");
    web.scale = Some(2);
    let mut hc_none = hc.clone();
    hc_none.strategy = Some("none".into());
    web.launch_config.health_check = Some(hc_none.clone());
    store.put(&web).await.unwrap();
    let b1 = Backend::http_on(SocketAddr::from(([127, 0, 0, 11], port))).await;
    let _b2 = Backend::http_on(SocketAddr::from(([127, 0, 0, 12], port))).await;
    for (uuid, name, ip) in [("c1", "app-web-1", "127.0.0.11"), ("c2", "app-web-2", "127.0.0.12")] {
        let mut c = fixtures::container(uuid, name, "s-web", "st1", "h1", ip);
        c.health_check = Some(hc_none.clone());
        store.put(&c).await.unwrap();
        store.put(&fixtures::status(uuid, "h1", "running")).await.unwrap();
    }

    // The controller's health task (active: this test holds no lease, it is the controller).
    let metrics = Metrics::new();
    let cache = StateCache::start(&bus, &metrics).await.unwrap();
    let (_active_tx, active_rx) = tokio::sync::watch::channel(true);
    let settings = deploy::health::Settings {
        checkers: 3,
        checker_timeout: Duration::from_secs(3),
        recreate_interval: Duration::from_secs(1),
        recreate_limit: 3,
        recreate_window: Duration::from_secs(600),
        host_timeout: Duration::from_secs(30),
    };
    let _health = deploy::health::spawn(
        store.clone(),
        cache.clone(),
        Events::new(&bus, "deploy-controller"),
        settings,
        active_rx,
        &metrics,
    );
    let _checker = Checker::start(&nats.url(), "h1");

    // DNS and metadata, in-process, from the same state.
    let dns_metrics = rancher_dns::metrics::DnsMetrics::new(&metrics);
    let forwarder = rancher_dns::forward::Forwarder::new(Duration::from_secs(1), 10, dns_metrics.clone());
    let guard = rancher_dns::forward::Guard { never: Default::default(), own: vec![] };
    let shared = rancher_dns::server::Shared::new(forwarder, vec![], guard, 0, dns_metrics);
    let cfg = rancher_dns::naming::NamingConfig { ttl: 1, metadata_answer: vec![std::net::Ipv4Addr::LOCALHOST] };
    tokio::spawn(rancher_dns::source::follow_cache(shared.clone(), cache.clone(), cfg));
    let (mut dns, dns_addr) =
        rancher_dns::server::bind("127.0.0.1:0".parse().unwrap(), rancher_dns::server::Handler(shared), 1)
            .await
            .unwrap();
    let app = rancher_metadata::server::App::new(false, None, &metrics);
    tokio::spawn(rancher_metadata::source::follow_cache(app.clone(), cache.clone(), Some("h1".into())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let md_port = listener.local_addr().unwrap().port();
    tokio::spawn(rancher_metadata::server::serve(listener, app, std::future::pending()));
    let health_of = |name: &str| {
        let path = format!("/latest/containers/{name}/health_state");
        tokio::task::block_in_place(|| http_get(md_port, &path).1)
    };

    let both = vec!["127.0.0.11".to_string(), "127.0.0.12".to_string()];
    let name = "web.app.rancher.internal";
    until_true(Duration::from_secs(20), "both containers healthy in DNS", || {
        tokio::task::block_in_place(|| dig(dns_addr.port(), name)) == both
    })
    .await;
    assert_eq!(health_of("app-web-1"), "healthy");

    b1.set_page(false);
    until_true(Duration::from_secs(20), "app-web-1 out of the answer", || {
        tokio::task::block_in_place(|| dig(dns_addr.port(), name)) == vec!["127.0.0.12".to_string()]
    })
    .await;
    assert_eq!(health_of("app-web-1"), "unhealthy");
    assert_eq!(health_of("app-web-2"), "healthy");
    let h = store.get::<event_bus::model::ContainerHealth>("c1").await.unwrap().unwrap().value;
    assert_eq!(h.reports["h1"], "unhealthy");
    assert_eq!(deploy::health::remediation(&h), Some("strategy none"));

    b1.set_page(true);
    until_true(Duration::from_secs(20), "app-web-1 back in the answer", || {
        tokio::task::block_in_place(|| dig(dns_addr.port(), name)) == both
    })
    .await;
    dns.shutdown_gracefully().await.ok();
}
