//! Whole-system load on the metadata API, with a reference measured in the same run.
//!
//! Environment: 20 hosts / 50 stacks / 500 services / 5,000 containers in a real nats-server.
//! - Throughput and latency: `wrk` against `/latest/self/container` and `/latest/services` (JSON
//!   and text) on the release `rancher-metadata`, and against nginx serving the same bytes as
//!   static files (the ceiling for "answer with bytes from memory"). RSS of rancher-metadata.
//! - Propagation: 10,000 long-polls on `/latest/version`; time from a KV write to each waiter's
//!   answer (p50/p99/max), over several rounds.
//!
//! Needs `wrk` and `nginx` (Debian: wrk, nginx-light); `scripts/bench/metadata` installs them.
//! Run: `cargo bench -p rancher-metadata --bench http`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use event_bus::testkit::{fixtures::EnvironmentShape, free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, NatsOptions, Provision, Record};
use futures::StreamExt;

const WAITERS: usize = 10_000;
const ROUNDS: usize = 5;

fn need(tool: &str, package: &str) {
    if Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        panic!("{tool} not found: install the Debian package {package} (scripts/bench/metadata does)");
    }
}

fn wrk(url: &str, accept: &str) -> (f64, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", "-d10s", "--latency", "-H", &format!("Accept: {accept}"), url])
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string());
    (rps, p99.unwrap_or_default())
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    kb("VmHWM:").or(kb("VmRSS:")).unwrap_or(0.0) / 1024.0
}

fn rss_now_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / cargo test's bench discovery
    }
    need("wrk", "wrk");
    need("nginx", "nginx-light");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start();
    let store = rt.block_on(async {
        let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
        let store = provision(&bus, &Provision { history: 1, ..Default::default() }).await.unwrap();
        let mut records = EnvironmentShape::BENCH.build();
        // wrk calls from 127.0.0.1: make that the IP of the first container so /self resolves.
        if let Some(Record::Container(c)) = records.iter_mut().find(|r| matches!(r, Record::Container(_))) {
            c.primary_ip = Some("127.0.0.1".into());
            c.ips = vec!["127.0.0.1".into()];
        }
        futures::stream::iter(records.iter())
            .map(|r| store.put_record(r))
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
        store
    });

    let (port, admin) = (free_port(), free_port());
    let server = Terminate(
        Command::new(env!("CARGO_BIN_EXE_rancher-metadata"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--log",
                "warn",
            ])
            .env("CORRAL_NATS_URL", nats.url())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("http://127.0.0.1:{admin}/readyz")).send().map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "rancher-metadata not ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let rss_loaded = rss_now_mb(server.id());

    // nginx serving the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let paths = [("self-container", "/latest/self/container"), ("services", "/latest/services")];
    for (file, path) in paths {
        for (suffix, accept) in [("json", "application/json"), ("txt", "text/plain")] {
            let body = http.get(format!("{base}{path}")).header("Accept", accept).send().unwrap().bytes().unwrap();
            std::fs::write(dir.path().join(format!("{file}.{suffix}")), &body).unwrap();
        }
    }
    let nginx_port = free_port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; default_type text/plain; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{nginx_port}; root {d}; }} }}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let _nginx = Terminate(
        Command::new("nginx").args(["-c", conf.to_str().unwrap(), "-p", dir.path().to_str().unwrap()]).spawn().unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));

    println!("| request | rancher-metadata req/s | p99 | nginx (same bytes) req/s | p99 | ratio |");
    println!("|---|---|---|---|---|---|");
    for (file, path) in paths {
        for (suffix, accept) in [("json", "application/json"), ("txt", "text/plain")] {
            let (ours, ours_p99) = wrk(&format!("{base}{path}"), accept);
            let (ref_rps, ref_p99) = wrk(&format!("http://127.0.0.1:{nginx_port}/{file}.{suffix}"), accept);
            println!(
                "| {path} ({suffix}) | {ours:.0} | {ours_p99} | {ref_rps:.0} | {ref_p99} | {:.2} |",
                ours / ref_rps
            );
        }
    }
    println!(
        "rancher-metadata RSS: {rss_loaded:.1} MB loaded and idle, {:.1} MB now, {:.1} MB peak under wrk",
        rss_now_mb(server.id()),
        rss_mb(server.id())
    );

    // Propagation to 10,000 long-polls.
    let mut all = Vec::new();
    for round in 0..ROUNDS {
        let delays = rt.block_on(async {
            let version = reqwest::get(format!("{base}/latest/version")).await.unwrap().text().await.unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            // Open the connections a few hundred at a time, as clients arriving over a moment would.
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
            for _ in 0..WAITERS {
                let v = version.clone();
                let gate = gate.clone();
                tasks.spawn(async move {
                    let permit = gate.acquire_owned().await.unwrap();
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
                    let req = format!("GET /latest/version?wait=true&value={v}&maxWait=120 HTTP/1.0\r\n\r\n");
                    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.expect("send");
                    drop(permit);
                    let mut raw = Vec::new();
                    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut raw).await.expect("answer");
                    Instant::now()
                });
            }
            // Let every waiter arrive before the write.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let m = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
                let n = m
                    .lines()
                    .find_map(|l| l.strip_prefix("corral_metadata_long_polls_waiting "))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if n.unwrap_or(0) >= WAITERS || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let written = Instant::now();
            store
                .put(&event_bus::testkit::fixtures::stack(&format!("bench-{round}"), &format!("bench{round}")))
                .await
                .unwrap();
            let mut d = Vec::with_capacity(WAITERS);
            while let Some(t) = tasks.join_next().await {
                d.push(t.unwrap() - written);
            }
            d
        });
        all.extend(delays);
    }
    // Punctuality: 10,000 waiters whose value never changes must all return at maxWait (2 s).
    let lateness = rt.block_on(async {
        let version = reqwest::get(format!("{base}/latest/version")).await.unwrap().text().await.unwrap();
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..WAITERS {
            let (v, gate) = (version.clone(), gate.clone());
            tasks.spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
                let req = format!("GET /latest/version?wait=true&value={v}&maxWait=2 HTTP/1.0\r\n\r\n");
                tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.expect("send");
                let sent = Instant::now();
                drop(permit);
                let mut raw = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut raw).await.expect("answer");
                sent.elapsed().as_secs_f64() - 2.0
            });
        }
        let mut l = Vec::with_capacity(WAITERS);
        while let Some(t) = tasks.join_next().await {
            l.push(t.unwrap());
        }
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        l
    });
    println!(
        "maxWait=2 punctuality, {WAITERS} waiters: earliest {:+.1} ms, p50 {:+.1} ms, p99 {:+.1} ms, latest {:+.1} ms (relative to 2 s after the request)",
        lateness[0] * 1e3,
        lateness[lateness.len() / 2] * 1e3,
        lateness[lateness.len() * 99 / 100] * 1e3,
        lateness[lateness.len() - 1] * 1e3
    );

    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "propagation KV write -> long-poll answer, {WAITERS} waiters x {ROUNDS} rounds: first {:?}, p50 {:?}, p99 {:?}, max {:?}",
        all[0],
        pct(0.50),
        pct(0.99),
        all[all.len() - 1]
    );
}
