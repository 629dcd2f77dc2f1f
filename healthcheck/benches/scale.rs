//! 1,000 checked containers on one checker (HTTP checks at `interval` 2 s against loopback
//! backends on 127.0.x.y, one server process of this bench answering them all):
//! - CPU and RSS of the checker and its HAProxy (master + worker) over 20 s of steady checking;
//! - time from HAProxy's own DOWN verdict (watched on its admin socket) to the report on NATS;
//! - applying a change of 100 containers: how many reloads, and the time until all report up.
//!
//! `NATS_SERVER_BIN=… cargo bench -p healthcheck --bench scale`

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_bus::model::{ContainerHealth, HealthCheck, HealthReport, REPORT_EVENT};
use event_bus::testkit::{fixtures, free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, Events, NatsOptions, Provision, StateStore};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Container uuid → the reports on it: (up, when received).
type Seen = BTreeMap<String, Vec<(bool, Instant)>>;

const N: usize = 1000;
const CHANGE: usize = 100;

fn ip(i: usize) -> String {
    format!("127.0.{}.{}", 10 + i / 200, 2 + i % 200)
}

fn clock_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn children(pid: u32) -> Vec<u32> {
    let out = Command::new("ps").args(["-o", "pid=", "--ppid", &pid.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The checker and every process under it.
fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children(all[i]));
        i += 1;
    }
    all
}

async fn put_checked(store: &StateStore, i: usize, port: u16) {
    let uuid = format!("c{i}");
    let mut c = fixtures::container(&uuid, &format!("app-web-{i}"), "s-web", "st1", "h1", &ip(i));
    let mut hc: HealthCheck = serde_json::from_value(serde_json::json!({"port": port})).unwrap();
    hc.request_line = Some("GET /ok HTTP/1.0".into());
    hc.interval = Some(2000);
    c.health_check = Some(hc);
    store.put(&c).await.unwrap();
    let h = ContainerHealth {
        uuid: uuid.clone(),
        health_state: "initializing".into(),
        health_check_hosts: vec!["h1".into()],
        reports: Default::default(),
        extra: Default::default(),
    };
    store.put(&h).await.unwrap();
}

fn metric(admin: u16, prefix: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    store.put(&fixtures::host("h1", "host-1", "127.0.0.1")).await.unwrap();
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    store.put(&fixtures::service("s-web", "st1", "web")).await.unwrap();

    // One server for every backend: it answers 200 unless the address it was reached at is down.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let down: Arc<Mutex<HashSet<String>>> = Default::default();
    let d = down.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let d = d.clone();
            tokio::spawn(async move {
                let to = s.local_addr().map(|a| a.ip().to_string()).unwrap_or_default();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply: &[u8] = if d.lock().unwrap().contains(&to) {
                    b"HTTP/1.0 503 Service Unavailable\r\n\r\n"
                } else {
                    b"HTTP/1.0 200 OK\r\n\r\nok"
                };
                let _ = s.write_all(reply).await;
            });
        }
    });

    let started = Instant::now();
    for i in 0..N {
        put_checked(&store, i, port).await;
    }
    eprintln!("wrote {N} containers in {:?}", started.elapsed());

    let events = Events::new(&bus, "bench");
    let mut sub = events.subscribe(REPORT_EVENT).await.unwrap();
    let reports: Arc<Mutex<Seen>> = Default::default();
    let r = reports.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(rep) = serde_json::from_value::<HealthReport>(m.event.data) {
                r.lock().unwrap().entry(rep.container_uuid).or_default().push((rep.up, Instant::now()));
            }
        }
    });

    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let checker = Terminate(
        Command::new(env!("CARGO_BIN_EXE_healthcheck"))
            .args(["--host-uuid", "h1", "--admin-addr", &format!("127.0.0.1:{admin}"), "--log", "warn"])
            .arg("--run-dir")
            .arg(dir.path())
            .env("CORRAL_NATS_URL", nats.url())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    let ups = |n: usize| reports.lock().unwrap().values().filter(|v| v.last().is_some_and(|(up, _)| *up)).count() >= n;
    while !ups(N) {
        assert!(t0.elapsed() < Duration::from_secs(120), "not all up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("start: {N} containers configured and reported up in {:.1} s", t0.elapsed().as_secs_f64());

    // Steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids = family(checker.id());
    let before: u64 = pids.iter().map(|p| clock_ticks(*p)).sum();
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    let after: u64 = family(checker.id()).iter().map(|p| clock_ticks(*p)).sum();
    let hz = 100.0;
    let cpu = (after - before) as f64 / hz / window.as_secs_f64() * 100.0;
    let rss_checker = rss_kb(checker.id());
    let rss_haproxy: u64 = family(checker.id()).iter().skip(1).map(|p| rss_kb(*p)).sum();
    println!(
        "steady: CPU {cpu:.1}% of one core (checker + HAProxy, {} processes), RSS checker {} MB, HAProxy {} MB",
        pids.len(),
        rss_checker / 1024,
        rss_haproxy / 1024
    );

    // Down detection: 20 backends start failing; HAProxy's verdict watched on its socket.
    let sock = dir.path().join("admin.sock");
    let victims: Vec<usize> = (0..20).map(|k| k * 37).collect();
    let mark = Instant::now();
    for v in &victims {
        down.lock().unwrap().insert(ip(*v));
    }
    let mut haproxy_down: BTreeMap<String, Instant> = BTreeMap::new();
    while haproxy_down.len() < victims.len() {
        assert!(mark.elapsed() < Duration::from_secs(30), "HAProxy never saw them down");
        let text = healthcheck::haproxy::ask(&sock, "show stat -1 4 -1").await.unwrap();
        for row in healthcheck::stats::parse(&text).unwrap() {
            if row.status == "DOWN" {
                haproxy_down.entry(row.server).or_insert_with(Instant::now);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while !victims
        .iter()
        .all(|v| reports.lock().unwrap().get(&format!("c{v}")).is_some_and(|r| r.last().is_some_and(|(up, _)| !up)))
    {
        assert!(mark.elapsed() < Duration::from_secs(30), "reports missing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lags: Vec<f64> = Vec::new();
    let mut total: Vec<f64> = Vec::new();
    for v in &victims {
        let at = reports.lock().unwrap()[&format!("c{v}")].last().unwrap().1;
        let seen = haproxy_down[&healthcheck::targets::server_name(&format!("c{v}"), 0)];
        lags.push(at.saturating_duration_since(seen).as_secs_f64());
        total.push(at.duration_since(mark).as_secs_f64());
    }
    lags.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    println!(
        "down: HAProxy verdict → report on NATS: median {:.0} ms, max {:.0} ms (poll 500 ms); backend failing → report: median {:.1} s, max {:.1} s (fall 3 × inter 2 s)",
        lags[lags.len() / 2] * 1000.0,
        lags[lags.len() - 1] * 1000.0,
        total[total.len() / 2],
        total[total.len() - 1]
    );

    // A change of 100 containers, written as fast as NATS takes them.
    let reloads_before = metric(admin, "corral_healthcheck_haproxy_reloads_total");
    let change = Instant::now();
    for i in N..N + CHANGE {
        put_checked(&store, i, port).await;
    }
    let written = change.elapsed();
    while !(N..N + CHANGE)
        .all(|i| reports.lock().unwrap().get(&format!("c{i}")).is_some_and(|r| r.iter().any(|(up, _)| *up)))
    {
        assert!(change.elapsed() < Duration::from_secs(60), "the 100 new containers never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloads = metric(admin, "corral_healthcheck_haproxy_reloads_total") - reloads_before;
    println!(
        "change: {CHANGE} containers written in {:.2} s, all reported up {:.1} s after the first write, {reloads} HAProxy reloads",
        written.as_secs_f64(),
        change.elapsed().as_secs_f64()
    );
    drop(checker);
}
