//! Whole-system DNS load with a reference measured in the same run.
//!
//! Environment: 20 hosts / 50 stacks / 500 services / 5,000 running containers in a real
//! nats-server. Query mix: 70 % `svcK.stackJ.rancher.internal`, 20 % short names resolved by
//! server-side search (`svcK` in the caller's stack, `svcK.stackJ`), 10 % NXDOMAIN under
//! `rancher.internal`.
//! - Throughput: dnsperf at full speed against the release `rancher-dns`, then against BIND 9
//!   authoritative for a zone holding every name of the query file with the same answers (BIND
//!   does no search: the short names are plain records there, which favours it). QPS, loss, mean
//!   latency, peak RSS of both.
//! - Latency percentiles: the same two servers at a fixed 10,000 QPS, per-query latencies from
//!   `dnsperf -v`.
//! - Propagation: time from a KV write (a container stops, then starts) to the first answer that
//!   shows it, asked in a tight loop over UDP; p50/p99/max over 200 changes.
//!
//! Needs `dnsperf`, `named`, `dig` (Debian: dnsperf, bind9, bind9-dnsutils); `scripts/bench/dns`
//! installs them. Run: `cargo bench -p rancher-dns --bench dnsperf`.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use event_bus::testkit::fixtures::{self, EnvironmentShape};
use event_bus::testkit::{free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, Document, NatsOptions, Provision, Record};
use futures::StreamExt;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

const CALLER: &str = "127.0.5.2";
const QUERIES: usize = 100_000;
const FULL_SPEED_SECS: &str = "20";

fn need(tool: &str, package: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool} || test -x /usr/sbin/{tool}")).status();
    if !found.map(|s| s.success()).unwrap_or(false) {
        panic!("{tool} not found: install the Debian package {package} (scripts/bench/dns does)");
    }
}

fn peak_rss_mb(pid: u32) -> f64 {
    rss_field(pid, "VmHWM:")
}

fn rss_mb(pid: u32) -> f64 {
    rss_field(pid, "VmRSS:")
}

fn rss_field(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// One A question over UDP; the sorted addresses, or None on NXDOMAIN/timeout.
fn ask(sock: &UdpSocket, port: u16, name: &str) -> Option<Vec<String>> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    sock.send_to(&m.to_vec().unwrap(), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let r = Message::from_vec(&buf[..n]).ok()?;
        if r.metadata.id != m.metadata.id {
            continue;
        }
        let mut v: Vec<String> = r
            .answers
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::A(a) => Some(a.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        return (!v.is_empty()).then_some(v);
    }
}

/// The kernel's count of UDP datagrams dropped because a receive buffer was full (any socket).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors").unwrap_or(0);
    values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or(0)
}

struct Perf {
    qps: f64,
    sent: u64,
    completed: u64,
    lost: u64,
    avg_ms: f64,
}

fn dnsperf(port: u16, file: &str, extra: &[&str]) -> (Perf, String) {
    let out = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-a", CALLER, "-d", file])
        .args(extra)
        .output()
        .expect("running dnsperf");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in dnsperf output:\n{}", &text[text.len().saturating_sub(2000)..]))
    };
    let perf = Perf {
        qps: field("Queries per second:"),
        sent: field("Queries sent:") as u64,
        completed: field("Queries completed:") as u64,
        lost: field("Queries lost:") as u64,
        avg_ms: field("Average Latency (s):") * 1e3,
    };
    (perf, text)
}

/// Per-query latencies (ms) from `dnsperf -v` output lines `> NOERROR name A 0.000123`.
fn percentiles(text: &str) -> (f64, f64, f64, usize) {
    let mut v: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e3)
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(f64::NAN);
    (p(0.50), p(0.99), p(0.999), v.len())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    need("dnsperf", "dnsperf");
    need("named", "bind9");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start();
    let mut records = EnvironmentShape::BENCH.build();
    // The dnsperf caller is a container of stack0's svc0, so `svcK` means stack0's svcK.
    records.push(fixtures::container("caller", "stack0-svc0-caller", "sv0-0", "st0", "h0", CALLER).into_record());
    let containers: Vec<String> =
        records.iter().filter_map(|r| if let Record::Container(c) = r { Some(c.uuid.clone()) } else { None }).collect();
    for uuid in &containers {
        records.push(fixtures::status(uuid, "h0", "running").into_record());
    }
    let store = rt.block_on(async {
        let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
        let store = provision(&bus, &Provision { history: 1, ..Default::default() }).await.unwrap();
        futures::stream::iter(records.iter())
            .map(|r| store.put_record(r))
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
        store
    });

    let (port, admin) = (free_port(), free_port());
    let ours = Terminate(
        Command::new(env!("CARGO_BIN_EXE_rancher-dns"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--log", "warn", "--resolv-conf", "/dev/null"])
            .env("CORRAL_NATS_URL", nats.url())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sock = UdpSocket::bind(format!("{CALLER}:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ask(&sock, port, "stack0-svc0-caller.rancher.internal.").is_none() {
        assert!(Instant::now() < deadline, "rancher-dns never served the fixture");
        std::thread::sleep(Duration::from_millis(100));
    }

    let loaded_rss = rss_mb(ours.id());

    // The query file, and the answers each name gets from us (BIND's zone is made of them).
    let mut zone: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = Vec::with_capacity(QUERIES);
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut rand = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for i in 0..QUERIES {
        let (stack, svc) = (rand(50), rand(10));
        let name = match i % 10 {
            0..=6 => format!("svc{svc}.stack{stack}.rancher.internal."),
            7 => format!("svc{svc}."),
            8 => format!("svc{svc}.stack{stack}."),
            _ => format!("nosuch{}.stack{stack}.rancher.internal.", rand(1000)),
        };
        if !zone.contains_key(&name) && !name.starts_with("nosuch") {
            let ips = ask(&sock, port, &name).unwrap_or_else(|| panic!("{name} does not resolve"));
            zone.insert(name.clone(), ips);
        }
        lines.push(format!("{name} A"));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let queries = format!("{d}/queries.txt");
    std::fs::write(&queries, lines.join("\n") + "\n").unwrap();

    let mut z = String::from(
        "$TTL 1\n@ IN SOA rancher.internal. rancher.internal. 1 60 10 86400 1\n@ IN NS ns.\nns. IN A 127.0.0.1\n",
    );
    for (name, ips) in &zone {
        for ip in ips {
            z.push_str(&format!("{name} IN A {ip}\n"));
        }
    }
    std::fs::write(format!("{d}/root.zone"), z).unwrap();
    let bind_port = free_port();
    std::fs::write(
        format!("{d}/named.conf"),
        format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/s.key\";\n\
             listen-on port {bind_port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no;\n\
             dnssec-validation no; notify no; minimal-responses yes; max-records-per-type 0; }};\n\
             controls {{ }};\nzone \".\" {{ type primary; file \"{d}/root.zone\"; }};\n"
        ),
    )
    .unwrap();
    let named_bin = if std::path::Path::new("/usr/sbin/named").exists() { "/usr/sbin/named" } else { "named" };
    let bind = Terminate(
        Command::new(named_bin)
            .args(["-g", "-c", &format!("{d}/named.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask(&sock, bind_port, "svc0.stack0.rancher.internal.").is_none() {
        assert!(Instant::now() < deadline, "named did not serve the reference zone");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both serve the same answers for every name of the file.
    for (name, ips) in zone.iter().take(200) {
        assert_eq!(ask(&sock, bind_port, name).as_ref(), Some(ips), "{name}");
    }
    drop(sock);

    // CORRAL_BENCH_QUICK=1: propagation and memory only (for iterating on the update path).
    let quick = std::env::var_os("CORRAL_BENCH_QUICK").is_some();
    let full = ["-l", FULL_SPEED_SECS, "-c", "4", "-q", "256"];
    println!(
        "Query mix: 70% service.stack.rancher.internal, 20% short names (search), 10% NXDOMAIN; {} distinct names.",
        zone.len()
    );
    println!();
    println!("| server | QPS | sent | completed | lost | kernel UDP buffer drops | mean latency | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    let servers = [("rancher-dns", port, ours.id()), ("BIND 9 (reference)", bind_port, bind.id())];
    for (label, p, pid) in if quick { &servers[..0] } else { &servers[..] } {
        let (label, p, pid) = (*label, *p, *pid);
        let drops = udp_rcvbuf_errors();
        let (r, _) = dnsperf(p, &queries, &full);
        println!(
            "| {label} | {:.0} | {} | {} | {} | {} | {:.3} ms | {:.1} MB |",
            r.qps,
            r.sent,
            r.completed,
            r.lost,
            udp_rcvbuf_errors() - drops,
            r.avg_ms,
            peak_rss_mb(pid)
        );
        results.push(r);
    }
    println!();
    if !quick {
        println!("QPS ratio rancher-dns / BIND: {:.2}", results[0].qps / results[1].qps);
    }

    println!();
    println!("| server @ 10,000 QPS | p50 | p99 | p99.9 | answers |");
    println!("|---|---|---|---|---|");
    for (label, p) in if quick { vec![] } else { vec![("rancher-dns", port), ("BIND 9 (reference)", bind_port)] } {
        let (_, text) = dnsperf(p, &queries, &["-l", "10", "-Q", "10000", "-c", "2", "-v"]);
        let (p50, p99, p999, n) = percentiles(&text);
        println!("| {label} | {p50:.3} ms | {p99:.3} ms | {p999:.3} ms | {n} |");
    }

    // Propagation: stop and start a container of svc0.stack0, asking in a tight loop.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let name = "svc0.stack0.rancher.internal.";
    let before = ask(&sock, port, name).unwrap();
    let target = rt.block_on(async {
        let c = store.get::<event_bus::model::Container>("c0").await.unwrap().unwrap();
        c.value.primary_ip.clone().unwrap()
    });
    assert!(before.contains(&target));
    let mut delays = Vec::new();
    for round in 0..200 {
        let state = if round % 2 == 0 { "stopped" } else { "running" };
        let written = Instant::now();
        rt.block_on(store.put(&fixtures::status("c0", "h0", state))).unwrap();
        loop {
            let now = ask(&sock, port, name).unwrap_or_default();
            if now.contains(&target) == (state == "running") {
                delays.push(written.elapsed());
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(5), "change {round} not visible");
        }
    }
    // Structural changes: a container is added to svc0.stack0 (scale up), then removed.
    let mut scale = Vec::new();
    for round in 0..100 {
        let ip = "10.99.0.2";
        let written = Instant::now();
        let adding = round % 2 == 0;
        if adding {
            let c = fixtures::container("scaled", "stack0-svc0-99", "sv0-0", "st0", "h0", ip);
            rt.block_on(store.put(&c)).unwrap();
        } else {
            rt.block_on(store.delete(&event_bus::Key::new(event_bus::Family::Container, "scaled").unwrap())).unwrap();
        }
        loop {
            let now = ask(&sock, port, name).unwrap_or_default();
            if now.iter().any(|a| a == ip) == adding {
                scale.push(written.elapsed());
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(5), "scale change {round} not visible");
        }
    }
    println!();
    for (what, mut d) in
        [("status changes (stop/start), 200", delays), ("scale up/down (container added/removed), 100", scale)]
    {
        d.sort();
        let pct = |p: f64| d[((d.len() as f64 * p) as usize).min(d.len() - 1)];
        println!(
            "propagation KV write -> changed answer, {what}: p50 {:?}, p99 {:?}, max {:?}",
            pct(0.5),
            pct(0.99),
            d[d.len() - 1]
        );
    }
    println!(
        "rancher-dns RSS: {loaded_rss:.1} MB once loaded, {:.1} MB at the end, {:.1} MB peak",
        rss_mb(ours.id()),
        peak_rss_mb(ours.id())
    );
}
