//! HAProxy's own checks of a target's `health_check`, and serving on when NATS goes away.

mod common;

use std::time::{Duration, Instant};

use common::{addr, aget, wait_async, Backend, Lb, State};
use event_bus::testkit::{fixtures, free_port};
use serde_json::json;

/// Until `n` consecutive answers all come from `from`.
async fn only_from(port: u16, from: &str, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut streak = 0;
    while streak < n {
        assert!(Instant::now() < deadline, "never {n} answers in a row from {from}");
        let (status, body) = aget(port, "x", "/").await;
        streak = if status == 200 && body == from { streak + 1 } else { 0 };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_its_health_check_stops_getting_traffic() {
    let st = State::start().await;
    let port = free_port();
    let mut web = fixtures::service("web", common::STACK, "web");
    web.launch_config.health_check = Some(
        serde_json::from_value(json!({
            "port": port, "interval": 200, "healthy_threshold": 1, "unhealthy_threshold": 1,
            "response_timeout": 200, "request_line": "GET /healthz HTTP/1.0"
        }))
        .unwrap(),
    );
    st.put(&web).await;
    let b1 = Backend::http("web-1", addr("127.0.4.1", port)).await;
    let b2 = Backend::http("web-2", addr("127.0.4.2", port)).await;
    st.container("web", 1, "127.0.4.1").await;
    st.container("web", 2, "127.0.4.2").await;
    let lb_port = free_port();
    st.lb(json!({"port_rules": [{"source_port": lb_port, "target_port": port, "service": "web"}]})).await;
    let lb = Lb::start(&st.nats.url());
    lb.wait_ready();
    let stat = lb.master("@1 show stat");
    assert!(
        stat.lines().filter(|l| l.contains("app-web-")).all(|l| l.contains(",L7OK,") || l.contains("INI")),
        "{stat}"
    );

    // web-2 fails its check: HAProxy alone (no health record in the state yet) takes it out.
    b2.sick.store(true, std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    only_from(lb_port, "web-1", 20, Duration::from_secs(30)).await;
    eprintln!("web-2 out of rotation {:?} after its check started failing (inter 200 ms, fall 1)", t.elapsed());
    let hits = b2.hits();
    for _ in 0..10 {
        assert_eq!(aget(lb_port, "x", "/").await, (200, "web-1".into()));
    }
    assert_eq!(b2.hits(), hits);

    // A structural change reloads HAProxy; the server-state file carries web-2's DOWN over, so
    // the new worker sends it nothing (Rancher's reloads reset every server to "UP 1/3").
    let extra = free_port();
    st.lb(json!({"port_rules": [
        {"source_port": lb_port, "target_port": port, "service": "web"},
        {"source_port": extra, "target_port": port, "service": "web"},
    ]}))
    .await;
    wait_async("reloaded", Duration::from_secs(30), || lb.reloads() == 1.0).await;
    for _ in 0..10 {
        assert_eq!(aget(lb_port, "x", "/").await, (200, "web-1".into()), "after the reload");
    }
    assert_eq!(b2.hits(), hits, "the reload forgot web-2 was down");

    // Healthy again: back in rotation.
    b2.sick.store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while aget(lb_port, "x", "/").await.1 != "web-2" {
        assert!(Instant::now() < deadline, "web-2 never came back");
    }
    assert!(b1.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_while_nats_is_gone() {
    let mut st = State::start().await;
    let port = free_port();
    st.service("web").await;
    let _b1 = Backend::http("web-1", addr("127.0.5.1", port)).await;
    let _b2 = Backend::http("web-2", addr("127.0.5.2", port)).await;
    st.container("web", 1, "127.0.5.1").await;
    let lb_port = free_port();
    st.lb(json!({"port_rules": [{"source_port": lb_port, "target_port": port, "service": "web"}]})).await;
    let lb = Lb::start(&st.nats.url());
    lb.wait_ready();

    st.nats.kill();
    wait_async("not ready without NATS", Duration::from_secs(30), || !lb.ready()).await;
    for _ in 0..5 {
        assert_eq!(aget(lb_port, "x", "/").await, (200, "web-1".into()));
    }

    // Back: the cache resyncs and changes flow again.
    st.nats.restart();
    wait_async("ready again", Duration::from_secs(60), || lb.ready()).await;
    st.bus = event_bus::Bus::connect(&event_bus::NatsOptions::new(st.nats.url()), "default", Duration::from_secs(10))
        .await
        .unwrap();
    st.store = event_bus::StateStore::open(&st.bus).await.unwrap();
    st.container("web", 2, "127.0.5.2").await;
    wait_async("web-2 added after the outage", Duration::from_secs(30), || lb.servers() == 2.0).await;
    assert_eq!(lb.reloads(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_nonzero_when_haproxy_dies() {
    let st = State::start().await;
    let port = free_port();
    st.service("web").await;
    let _b = Backend::http("web-1", addr("127.0.8.1", port)).await;
    st.container("web", 1, "127.0.8.1").await;
    st.lb(json!({"port_rules": [{"source_port": free_port(), "target_port": port, "service": "web"}]})).await;
    let mut lb = Lb::start(&st.nats.url());
    lb.wait_ready();
    let master = lb.haproxy_master_pid();
    std::process::Command::new("kill").args(["-KILL", &master.to_string()]).status().unwrap();
    let status =
        tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(30))).expect("lb-haproxy kept running");
    assert!(!status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_haproxy_and_exits_zero() {
    let st = State::start().await;
    let port = free_port();
    st.service("web").await;
    let _b = Backend::http("web-1", addr("127.0.8.2", port)).await;
    st.container("web", 1, "127.0.8.2").await;
    let lb_port = free_port();
    st.lb(json!({"port_rules": [{"source_port": lb_port, "target_port": port, "service": "web"}]})).await;
    let mut lb = Lb::start(&st.nats.url());
    lb.wait_ready();
    let master = lb.haproxy_master_pid();
    std::process::Command::new("kill").args(["-TERM", &lb.pid().to_string()]).status().unwrap();
    let status = tokio::task::block_in_place(|| lb.wait_exit(Duration::from_secs(30))).expect("still running");
    assert!(status.success(), "{status}");
    let alive = std::process::Command::new("kill").args(["-0", &master.to_string()]).status().unwrap().success();
    assert!(!alive, "HAProxy's master outlived lb-haproxy");
    assert!(std::net::TcpStream::connect(("127.0.0.1", lb_port)).is_err(), "the port still listens");
}
