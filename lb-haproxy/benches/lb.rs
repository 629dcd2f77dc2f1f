//! `cargo bench -p lb-haproxy --bench lb` (or `scripts/bench/lb`): figures for docs/benchmarks.md.
//!
//! 1. Render + `haproxy -c` + start + reload for 500 services × 4 rules (1,000 containers).
//! 2. Requests/s and p99 through our load balancer to 3 loopback backends, against the same
//!    HAProxy configured by hand, interleaved rounds in the same run.
//! 3. A membership change written to NATS → the server is in HAProxy (no reload).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_bus::keys::Document;
use event_bus::model::{LbConfig, ServiceKind};
use event_bus::testkit::{fixtures, free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, NatsOptions, Provision, Snapshot};
use lb_haproxy::haproxy::{self, Haproxy};
use lb_haproxy::render::{render_service, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 9;
const CONNECTIONS: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        big_config().await;
        let nats = NatsServer::start();
        throughput_and_membership(&nats).await;
    });
}

/// 500 services × 4 rules on two ports, two containers each.
async fn big_config() {
    let mut lb = fixtures::service("lb", "st1", "lb");
    lb.kind = ServiceKind::LoadBalancer;
    let mut rules = Vec::new();
    let mut records = vec![fixtures::stack("st1", "app").into_record()];
    for i in 0..500 {
        let name = format!("s{i}");
        records.push(fixtures::service(&name, "st1", &name).into_record());
        for n in 1..=2 {
            let uuid = format!("{name}-{n}");
            let ip = format!("10.42.{}.{}", i / 100, (i % 100) * 2 + n);
            records.push(fixtures::container(&uuid, &format!("app-{name}-{n}"), &name, "st1", "h1", &ip).into_record());
            records.push(fixtures::status(&uuid, "h1", "running").into_record());
        }
        let host = format!("{name}.example.com");
        for (port, h, path) in [
            (20080, host.clone(), Some("/a")),
            (20080, host.clone(), Some("/b")),
            (20080, format!("*.{host}"), None),
            (20081, host.clone(), None),
        ] {
            rules.push(
                serde_json::from_value(serde_json::json!({
                    "source_port": port, "target_port": 8080, "service": name, "hostname": h, "path": path
                }))
                .unwrap(),
            );
        }
    }
    lb.lb_config = Some(LbConfig { port_rules: rules, ..Default::default() });
    records.push(lb.clone().into_record());
    let snap = Snapshot::from_records(1, records);
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        run_dir: dir.path().into(),
        bind_address: "127.0.0.1".parse().unwrap(),
        stats_addr: None,
        host_uuid: None,
    };
    let mut times = Vec::new();
    let mut rendered = None;
    for _ in 0..11 {
        let t = Instant::now();
        let r = render_service(&settings, &lb, &snap).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        rendered = Some(r);
    }
    let r = rendered.unwrap();
    let render_ms = median(times);
    std::fs::write(settings.config_path(), &r.text).unwrap();
    std::fs::write(settings.server_state(), "1\n").unwrap();
    let mut checks = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        haproxy::check("haproxy".as_ref(), &settings.config_path()).await.unwrap();
        checks.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let t = Instant::now();
    let mut h = Haproxy::start("haproxy".as_ref(), &settings.config_path(), &settings.master_socket()).await.unwrap();
    let start_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut reloads = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        h.reload().await.unwrap();
        reloads.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    h.stop(Duration::from_secs(5)).await;
    println!(
        "big config: 500 services x 4 rules = {} backends, {} servers, {} KiB of text",
        r.backends.len(),
        r.backends.values().map(|b| b.servers.len()).sum::<usize>(),
        r.text.len() / 1024
    );
    println!(
        "  render {render_ms:.1} ms | haproxy -c {:.0} ms | start {start_ms:.0} ms | reload {:.0} ms (medians)",
        median(checks),
        median(reloads)
    );
}

/// Keep-alive HTTP servers answering `hello`.
async fn backend(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        let used = end + 4;
                        buf.copy_within(used..have, 0);
                        have -= used;
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// Closed-loop keep-alive clients for `ROUND`: (requests/s, p99 ms, errors).
async fn load(port: u16) -> (f64, f64, u64) {
    load_all(&[port], CONNECTIONS).await[0]
}

/// `connections` clients on each of `ports` at the same time; per port (requests/s, p99 ms, errors).
async fn load_all(ports: &[u16], connections: usize) -> Vec<(f64, f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (which, port) in ports.iter().copied().enumerate().flat_map(|p| std::iter::repeat_n(p, connections)) {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            'conn: while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    errors += 1;
                    continue;
                };
                s.set_nodelay(true).unwrap();
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if s.write_all(b"GET / HTTP/1.1\r\nHost: bench.example.com\r\n\r\n").await.is_err() {
                        errors += 1;
                        continue 'conn;
                    }
                    let mut have = 0;
                    loop {
                        match s.read(&mut buf[have..]).await {
                            Ok(0) | Err(_) => {
                                errors += 1;
                                continue 'conn;
                            }
                            Ok(n) => have += n,
                        }
                        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                                .unwrap_or(0);
                            if have >= end + 4 + len {
                                if !head.starts_with("http/1.1 200") {
                                    errors += 1;
                                }
                                break;
                            }
                        }
                    }
                    lat.push(t.elapsed().as_micros() as u32);
                }
            }
            (which, lat, errors)
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = vec![(Vec::new(), 0); ports.len()];
    for task in tasks {
        let (which, lat, e) = task.await.unwrap();
        all[which].0.extend(lat);
        all[which].1 += e;
    }
    let took = t.elapsed().as_secs_f64();
    all.into_iter()
        .map(|(mut lat, errors)| {
            lat.sort_unstable();
            let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0;
            (lat.len() as f64 / took, p99, errors)
        })
        .collect()
}

async fn throughput_and_membership(nats: &NatsServer) {
    let port = free_port();
    let ips = ["127.0.6.1", "127.0.6.2", "127.0.6.3"];
    for ip in ips {
        backend(SocketAddr::new(ip.parse().unwrap(), port)).await;
    }
    // Ours: state in NATS, the release binary.
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    store.put(&fixtures::service("web", "st1", "web")).await.unwrap();
    for (n, ip) in ips.iter().enumerate() {
        let uuid = format!("web-{}", n + 1);
        store.put(&fixtures::container(&uuid, &format!("app-web-{}", n + 1), "web", "st1", "h1", ip)).await.unwrap();
        store.put(&fixtures::status(&uuid, "h1", "running")).await.unwrap();
    }
    let ours = free_port();
    let mut lb = fixtures::service("lb", "st1", "lb");
    lb.kind = ServiceKind::LoadBalancer;
    lb.lb_config = Some(
        serde_json::from_value(
            serde_json::json!({"port_rules": [{"source_port": ours, "target_port": port, "service": "web"}]}),
        )
        .unwrap(),
    );
    store.put(&lb).await.unwrap();
    let run_dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let _lb = Terminate(
        Command::new(env!("CARGO_BIN_EXE_lb-haproxy"))
            .args(["--service", "app/lb", "--bind-address", "127.0.0.1", "--log", "warn"])
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--run-dir")
            .arg(run_dir.path())
            .env("CORRAL_NATS_URL", nats.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // By hand: the configuration a person would write for the same job; and the same with the
    // X-Forwarded-* headers Rancher's load balancer added (and ours adds).
    let hand_dir = tempfile::tempdir().unwrap();
    let servers: String = ips.iter().enumerate().map(|(i, ip)| format!("    server s{i} {ip}:{port}\n")).collect();
    let mut hands = Vec::new();
    for (name, extra) in [
        ("hand", ""),
        (
            "hand+xff",
            "    option forwardfor\n    http-request set-header X-Forwarded-Port %[dst_port] if !{ req.hdr(X-Forwarded-Port) -m found }\n",
        ),
    ] {
        let p = free_port();
        let cfg = hand_dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 4096\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 50s\n    timeout server 50s\n\
                 frontend fe\n    bind 127.0.0.1:{p}\n    default_backend be\nbackend be\n    balance roundrobin\n{extra}{servers}"
            ),
        )
        .unwrap();
        let child = Terminate(
            Command::new("haproxy").arg("-W").arg("-f").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
        );
        hands.push((name, p, child));
    }
    // A/A control: our generated text, started by hand like the others. Its distance from
    // `ours` is what this machine's noise alone does to a ratio.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run_dir.path().join("haproxy.cfg").exists() {
        assert!(Instant::now() < deadline, "lb-haproxy wrote no configuration");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(run_dir.path().join("haproxy.cfg")).unwrap();
    let (p, dir) = (free_port(), hand_dir.path().join("ours-text"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = text
        .replace(&format!("127.0.0.1:{ours}"), &format!("127.0.0.1:{p}"))
        .replace(&run_dir.path().display().to_string(), &dir.display().to_string());
    std::fs::write(dir.join("server-state"), "1\n").unwrap();
    std::fs::write(dir.join("haproxy.cfg"), &text).unwrap();
    let child = Terminate(
        Command::new("haproxy")
            .arg("-W")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    hands.push(("ours-text", p, child));
    let targets: Vec<(&str, u16)> =
        std::iter::once(("ours", ours)).chain(hands.iter().map(|(n, p, _)| (*n, *p))).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while targets.iter().any(|(_, p)| lb_haproxy_get(*p).is_err()) {
        assert!(Instant::now() < deadline, "load balancers not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); targets.len()];
    let mut errors = 0;
    for round in 0..ROUNDS {
        // Rotate who goes first, so nobody always runs on a warmer machine.
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (rps, p99, e) = load(targets[i].1).await;
            errors += e;
            results[i].0.push(rps);
            results[i].1.push(p99);
        }
    }
    println!("throughput: {CONNECTIONS} keep-alive connections, {ROUNDS} rotated rounds of {ROUND:?} each, 3 loopback backends");
    let medians: Vec<(f64, f64)> = results.into_iter().map(|(r, p)| (median(r), median(p))).collect();
    for ((name, _), (rps, p99)) in targets.iter().zip(&medians) {
        println!("  {name:9} {rps:.0} req/s, p99 {p99:.2} ms");
    }
    for (i, (name, _)) in targets.iter().enumerate().skip(1) {
        println!(
            "  ours / {name}: throughput {:.1} %, p99 {:.2}x",
            medians[0].0 / medians[i].0 * 100.0,
            medians[0].1 / medians[i].1
        );
    }
    println!("  errors {errors}");

    // The same, all at once: every load balancer sees the same machine at the same moment, so
    // other work on it cancels out of the ratios (each HAProxy gets its fair share of CPU;
    // what differs is what it does per request).
    let ports: Vec<u16> = targets.iter().map(|(_, p)| *p).collect();
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; targets.len()];
    let mut p99s: Vec<Vec<f64>> = vec![vec![]; targets.len()];
    for _ in 0..ROUNDS {
        let r = load_all(&ports, CONNECTIONS / targets.len()).await;
        for (i, (rps, p99, e)) in r.iter().enumerate() {
            ratios[i].push(r[0].0 / rps * 100.0);
            p99s[i].push(*p99);
            errors += e;
        }
    }
    println!(
        "concurrent: {} connections on each, {ROUNDS} rounds of {ROUND:?}; median per-round ratio of ours to each",
        CONNECTIONS / targets.len()
    );
    for (i, (name, _)) in targets.iter().enumerate().skip(1) {
        println!(
            "  ours / {name}: throughput {:.1} %, p99 {:.2} ms vs {:.2} ms",
            median(ratios[i].clone()),
            median(p99s[0].clone()),
            median(p99s[i].clone())
        );
    }
    println!("  errors {errors}");

    // Membership: a fourth container appears and disappears, 20 times.
    backend(SocketAddr::new("127.0.6.4".parse().unwrap(), port)).await;
    let sock = run_dir.path().join("master.sock");
    let mut times = Vec::new();
    for i in 0..20 {
        let present = i % 2 == 0;
        let t = Instant::now();
        if present {
            store.put(&fixtures::container("web-4", "app-web-4", "web", "st1", "h1", "127.0.6.4")).await.unwrap();
            store.put(&fixtures::status("web-4", "h1", "running")).await.unwrap();
        } else {
            store.put(&fixtures::status("web-4", "h1", "stopped")).await.unwrap();
        }
        loop {
            let state = master(&sock, &format!("@1 show servers state {ours}_")).await;
            // Enabled (admin state 0) when present; gone or in maintenance when not.
            let line = state.lines().find(|l| l.contains(" app-web-4 "));
            let enabled = line.is_some_and(|l| l.split_whitespace().nth(6) == Some("0"));
            if enabled == present {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "change {i} never applied");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let metrics = http_body(admin, "/metrics");
    let reloads: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("corral_lb_reloads_total{result=\"ok\"} ").and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    let max = times.iter().cloned().fold(0.0, f64::max);
    println!(
        "membership: KV write → server enabled/disabled in HAProxy: median {:.1} ms, max {max:.1} ms over 20 changes; reloads {reloads}",
        median(times.clone())
    );
}

fn lb_haproxy_get(port: u16) -> Result<(), ()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|_| ())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|_| ())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|_| ())?;
    if out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(())
    }
}

fn http_body(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

async fn master(sock: &std::path::Path, cmd: &str) -> String {
    let Ok(mut s) = tokio::net::UnixStream::connect(sock).await else { return String::new() };
    let _ = s.write_all(format!("{cmd}\n").as_bytes()).await;
    let _ = s.shutdown().await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}
