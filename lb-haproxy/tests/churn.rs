//! Under continuous load (a new connection per request, ~1,200/s, for at least 20 s), the target
//! scales 2 → 5 → 1 → 2, a backend restarts, and a port rule is added: no request fails, and only
//! the new rule reloads.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{addr, aget, wait_async, Backend, Lb, State};
use event_bus::testkit::free_port;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Requests from `workers` tasks, each at most `per_second`, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(port: u16, workers: usize, per_second: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<AtomicU64> = Arc::default();
        let failed: Arc<AtomicU64> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        match request(port).await {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                let mut errs = errors.lock().unwrap();
                                if errs.len() < 20 {
                                    errs.push(e);
                                }
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, errors, tasks, started: Instant::now() }
    }

    async fn finish(self) -> (u64, u64, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), errors, self.started.elapsed())
    }
}

async fn request(port: u16) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::with_capacity(256);
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .map_err(|_| "no answer within 20 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if raw.starts_with(b"HTTP/1.1 200") && raw.windows(4).any(|w| w == b"web-") {
        Ok(())
    } else {
        Err(format!("answer: {:?}", String::from_utf8_lossy(&raw[..raw.len().min(120)])))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_restart_and_a_new_rule_under_load_drop_nothing() {
    let st = State::start().await;
    let port = free_port();
    let ip = |n: u32| format!("127.0.3.{n}");
    st.service("web").await;
    let mut backends: Vec<Backend> = Vec::new();
    for n in 1..=2 {
        backends.push(Backend::http(&format!("web-{n}"), addr(&ip(n), port)).await);
        st.container("web", n, &ip(n)).await;
    }
    let lb_port = free_port();
    let rule = |src: u16| json!({"source_port": src, "target_port": port, "service": "web"});
    st.lb(json!({"port_rules": [rule(lb_port)]})).await;
    let lb = Lb::start(&st.nats.url());
    lb.wait_ready();
    assert_eq!(lb.servers(), 2.0);
    let settle = |ms| tokio::time::sleep(Duration::from_millis(ms));

    let load = Load::start(lb_port, 16, 80);
    settle(3000).await;

    // 2 → 5
    for n in 3..=5 {
        backends.push(Backend::http(&format!("web-{n}"), addr(&ip(n), port)).await);
        st.container("web", n, &ip(n)).await;
    }
    wait_async("5 servers", Duration::from_secs(30), || lb.servers() == 5.0).await;
    settle(2500).await;
    for b in &backends[2..] {
        assert!(b.hits() > 0, "{} got no traffic after the scale-up", b.name);
    }

    // 5 → 1: out of rotation first, then the containers stop.
    for n in 2..=5 {
        st.remove_container(&format!("web-{n}")).await;
    }
    wait_async("1 server", Duration::from_secs(30), || lb.servers() == 1.0).await;
    for b in &mut backends[1..] {
        b.stop();
    }
    backends.truncate(1);
    settle(2500).await;

    // 1 → 2
    backends.push(Backend::http("web-2", addr(&ip(2), port)).await);
    st.container("web", 2, &ip(2)).await;
    wait_async("2 servers", Duration::from_secs(30), || lb.servers() == 2.0).await;
    settle(1000).await;

    // web-2 restarts: stopped, its process goes away and comes back, running again.
    st.set_state("web-2", "stopped").await;
    wait_async("web-2 out", Duration::from_secs(30), || lb.servers() == 1.0).await;
    backends[1].stop();
    settle(300).await;
    backends[1].start().await;
    st.set_state("web-2", "running").await;
    wait_async("web-2 back", Duration::from_secs(30), || lb.servers() == 2.0).await;
    let hits = backends[1].hits();
    settle(2000).await;
    assert!(backends[1].hits() > hits, "the restarted backend gets traffic again");

    // A new port rule: the one structural change, a hitless reload.
    let new_port = free_port();
    st.lb(json!({"port_rules": [rule(lb_port), rule(new_port)]})).await;
    wait_async("the new rule applied", Duration::from_secs(30), || lb.reloads() == 1.0).await;
    assert_eq!(aget(new_port, "web.example.com", "/").await.0, 200);
    // Load for 20 s in all (at least 2 s after the reload).
    settle(2000.max(20_000u64.saturating_sub(load.started.elapsed().as_millis() as u64))).await;

    let (ok, failed, errors, took) = load.finish().await;
    let rate = ok as f64 / took.as_secs_f64();
    eprintln!("load: {ok} requests in {took:.1?} ({rate:.0}/s), {failed} failed");
    assert_eq!(failed, 0, "failed requests: {errors:#?}");
    assert!(ok > 0 && took >= Duration::from_secs(20), "{took:?}");
    assert_eq!(lb.reloads(), 1.0, "{}", lb.metrics());
    assert_eq!(lb.haproxy_reloads(), 1, "HAProxy's own count (show proc)");
    assert!(lb.metric("corral_lb_runtime_updates_total") >= 10.0, "{}", lb.metrics());
}
