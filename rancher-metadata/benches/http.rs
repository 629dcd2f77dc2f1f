//! Whole-system load on the metadata API, with a reference measured in the same run.
//!
//! Environment: 20 hosts / 50 stacks / 500 services / 5,000 containers in a real nats-server.
//! - Throughput and latency: `wrk` against `/latest/self/container` and `/latest/services` (JSON
//!   and text) on the release `rancher-metadata`, and against nginx serving the same bytes as
//!   static files (the ceiling for "answer with bytes from memory"). RSS of rancher-metadata.
//! - Propagation: 10,000 long-polls on `/latest/version`; time from a KV write to each waiter's
//!   answer (p50/p99/max), over several rounds. References in the same run, same client: nginx
//!   with nchan (10,000 long-poll subscribers released by one publish) and a bare writer (a
//!   process that only writes a fixed answer to each parked connection: the machine's floor).
//!
//! Needs `wrk`, `nginx` and nchan (Debian: wrk, nginx-light, libnginx-mod-nchan);
//! `scripts/bench/metadata` installs them.
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

/// CPU time a process's threads have run, in ns (from the scheduler's own accounting, which is
/// exact where /proc's ticks are 10 ms): what the wake of 10,000 waiters costs each side,
/// whatever else the machine runs meanwhile.
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn metrics_text(admin: u16) -> String {
    reqwest::blocking::get(format!("http://127.0.0.1:{admin}/metrics")).unwrap().text().unwrap()
}

fn waiting(admin: u16) -> usize {
    metrics_text(admin)
        .lines()
        .find_map(|l| l.strip_prefix("corral_metadata_long_polls_waiting "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A histogram's observations between two scrapes, as a percentile function answering the
/// upper bound of the bucket that holds the percentile (`+Inf` beyond the last).
fn histogram_delta(before: &str, after: &str, name: &str) -> impl Fn(f64) -> String {
    let buckets = |text: &str| -> Vec<(String, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|l| {
                let (le, rest) = l.split_once('"')?;
                Some((le.to_string(), rest.trim_start_matches('}').trim().parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let delta: Vec<(String, f64)> =
        a.iter().map(|(le, n)| (le.clone(), n - b.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1))).collect();
    move |p: f64| {
        let total = delta.last().map_or(0.0, |x| x.1);
        match delta.iter().find(|(_, n)| *n >= total * p) {
            Some((le, _)) if le != "+Inf" => format!("{:.1} ms", le.parse::<f64>().unwrap_or(f64::NAN) * 1e3),
            _ => "+Inf".into(),
        }
    }
}

/// The long-poll clients of one round: `WAITERS` connections asking `target` (a path and query),
/// say `/latest/version?wait=true&value=V`; returns when each saw its whole answer. One thread with a single-threaded
/// runtime and no more than a read per socket, so the client takes at most one of the two cores
/// and as little of it as it can: what the figure shows is mostly the server. Also returns the
/// CPU time this thread spent from the first answer on.
fn waiters(port: u16, target: &str, keep_alive: bool) -> (Vec<Instant>, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let request: std::sync::Arc<str> = if keep_alive {
        format!("GET {target} HTTP/1.1\r\nHost: metadata\r\n\r\n")
    } else {
        format!("GET {target} HTTP/1.0\r\n\r\n")
    }
    .into();
    rt.block_on(async move {
        // Open the connections a few hundred at a time, as clients arriving over a moment would.
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..WAITERS {
            let (gate, request) = (gate.clone(), request.clone());
            tasks.spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
                s.write_all(request.as_bytes()).await.expect("send");
                drop(permit);
                let mut buf = [0u8; 1024];
                let mut len = 0;
                loop {
                    let n = s.read(&mut buf[len..]).await.expect("answer");
                    assert!(n > 0, "connection closed before a whole answer");
                    len += n;
                    if answer_complete(&buf[..len]) {
                        // The stream lives on until the round is over, as a client's would.
                        return (Instant::now(), s);
                    }
                }
            });
        }
        let mut seen = Vec::with_capacity(WAITERS);
        let mut streams = Vec::with_capacity(WAITERS);
        let mut cpu_at_first = 0;
        while let Some(t) = tasks.join_next().await {
            if seen.is_empty() {
                cpu_at_first = thread_cpu_ns();
            }
            let (at, s) = t.unwrap();
            seen.push(at);
            streams.push(s);
        }
        (seen, thread_cpu_ns() - cpu_at_first)
    })
}

/// nginx in the foreground with configuration `conf`, written to `dir`/nginx.conf.
fn nginx(dir: &std::path::Path, conf: &str) -> Terminate {
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    Terminate(Command::new("nginx").args(["-c", path.to_str().unwrap(), "-p", dir.to_str().unwrap()]).spawn().unwrap())
}

/// Answer delays of all rounds of one server, from the write (or publish) to each answer.
#[derive(Default)]
struct Rounds(Vec<Duration>);

impl Rounds {
    fn add(&mut self, written: Instant, seen: Vec<Instant>) {
        self.0.extend(seen.into_iter().map(|t| t - written));
        self.0.sort();
    }
    fn pct(&self, p: f64) -> Duration {
        self.0[((self.0.len() as f64 * p) as usize).min(self.0.len() - 1)]
    }
    fn p99(&self) -> f64 {
        self.pct(0.99).as_secs_f64()
    }
    /// `first | p50 | p99 | max`, in ms.
    fn row(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        format!("{} | {} | {} | {}", ms(self.0[0]), ms(self.pct(0.5)), ms(self.pct(0.99)), ms(self.0[self.0.len() - 1]))
    }
}

/// nginx with the nchan module: long-poll subscribers on `/sub?id=<channel>`, released by a
/// POST to `/pub?id=<channel>` (a fresh channel per round, so no subscriber finds an old message).
/// Two workers, as the other nginx reference and as rancher-metadata's two runtime workers.
struct Nchan {
    port: u16,
    _dir: tempfile::TempDir,
    _process: Terminate,
}

const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

impl Nchan {
    fn start() -> Nchan {
        need("nginx", "nginx-light");
        assert!(
            std::path::Path::new(NCHAN_MODULE).exists(),
            "{NCHAN_MODULE} not found: install the Debian package libnginx-mod-nchan (scripts/bench/metadata does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let process = nginx(
            dir.path(),
            &format!(
                "load_module {NCHAN_MODULE};\n\
                 daemon off; worker_processes 2; worker_rlimit_nofile 20000; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 15000; }}\n\
                 http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
                 fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen 127.0.0.1:{port} backlog=8192;\n\
                 location = /sub {{ nchan_subscriber longpoll; nchan_channel_id $arg_id; nchan_subscriber_timeout 120s; }}\n\
                 location = /pub {{ nchan_publisher; nchan_channel_id $arg_id; }}\n\
                 location = /status {{ nchan_stub_status; }} }} }}\n",
                d = dir.path().display()
            ),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx with nchan did not start (see its error.log)");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nchan { port, _dir: dir, _process: process }
    }

    /// Waits until `n` subscribers wait (nchan's `nchan_stub_status`: `subscribers: N`).
    fn wait_for_subscribers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = reqwest::blocking::get(format!("http://127.0.0.1:{}/status", self.port))
                .and_then(|r| r.text())
                .unwrap_or_default();
            let active = status
                .lines()
                .find_map(|l| l.strip_prefix("subscribers: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if active >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {active} of {n} nchan subscribers arrived");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publishes a version-sized message to `channel`, releasing its subscribers.
    fn publish(&self, channel: &str) {
        let r = reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{}/pub?id={channel}", self.port))
            .body("12346")
            .send()
            .unwrap();
        assert!(r.status().is_success(), "nchan publish: {}", r.status());
    }
}

/// One round against the bare writer: a child process (this bench binary with `--bare-writer`;
/// the client and 10,000 server sockets would not fit one process's file limit) accepts the
/// waiters, reads each request, says so, and on a line from us writes one fixed answer of
/// rancher-metadata's size to each connection in turn (and, for HTTP/1.0, closes it). Returns
/// when the go was given and when each answer arrived.
fn bare_writer_round(keep_alive: bool) -> (Instant, Vec<Instant>) {
    use std::io::{BufRead, Write};
    let port = free_port();
    let mut child = Terminate(
        Command::new(std::env::current_exe().unwrap())
            .args(["--bare-writer", &port.to_string(), if keep_alive { "keep" } else { "close" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let client = std::thread::spawn(move || waiters(port, "/latest/version", keep_alive));
    assert_eq!(lines.next().unwrap().unwrap(), "parked", "bare writer");
    let mut stdin = child.0.stdin.take().unwrap();
    let written = Instant::now();
    stdin.write_all(b"go\n").unwrap();
    let seen = client.join().unwrap().0;
    (written, seen)
}

/// The bare writer's side (see `bare_writer_round`).
fn bare_writer(port: u16, keep_alive: bool) {
    use std::io::{BufRead, Read, Write};
    let socket = deep_listener(port);
    println!("listening");
    let mut parked = Vec::with_capacity(WAITERS);
    for _ in 0..WAITERS {
        let (mut s, _) = socket.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let (mut buf, mut len) = ([0u8; 1024], 0);
        while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf[len..]).unwrap();
            assert!(n > 0, "client left before its request was read");
            len += n;
        }
        parked.push(s);
    }
    println!("parked");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).unwrap();
    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
                   access-control-allow-origin: *\r\ncontent-length: 5\r\n\
                   date: Sat, 28 Nov 2026 02:00:00 GMT\r\n\r\n12346";
    if keep_alive {
        for s in &mut parked {
            s.write_all(answer).unwrap();
        }
        // Connections stay open until the round's client is done (it closes them).
        std::thread::sleep(Duration::from_secs(60));
    } else {
        for mut s in parked {
            s.write_all(answer).unwrap();
        }
    }
}

/// A blocking listener with a deep accept queue (the client opens 256 connections at a time).
fn deep_listener(port: u16) -> std::net::TcpListener {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let _guard = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(([127, 0, 0, 1], port).into()).unwrap();
    let listener = socket.listen(8192).unwrap().into_std().unwrap();
    listener.set_nonblocking(false).unwrap();
    listener
}

/// Whether `raw` holds a whole HTTP response (head and `Content-Length` bytes of body).
fn answer_complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .expect("answers carry a Content-Length");
    raw.len() >= head_end + 4 + length
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / cargo test's bench discovery
    }
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, port, mode] = &args[..] {
        if flag == "--bare-writer" {
            return bare_writer(port.parse().unwrap(), mode == "keep");
        }
    }
    // `cargo bench -p rancher-metadata --bench http -- propagation` runs only the parts named.
    let parts: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if run("throughput") {
        need("wrk", "wrk");
        need("nginx", "nginx-light");
    }
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
        // CORRAL_BENCH_METADATA_BIN: another build of the server (say, the previous commit's) under
        // the same load.
        Command::new(
            std::env::var("CORRAL_BENCH_METADATA_BIN").unwrap_or(env!("CARGO_BIN_EXE_rancher-metadata").into()),
        )
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

    println!("rancher-metadata RSS: {:.1} MB when ready", rss_now_mb(server.id()));
    // Loaded: the environment and the latest tree built (any path but /version needs it).
    let r = http.get(format!("{base}/latest/name")).send().unwrap();
    assert_eq!(r.status(), 200);
    std::thread::sleep(Duration::from_secs(1));
    let rss_loaded = rss_now_mb(server.id());
    println!("rancher-metadata RSS: {rss_loaded:.1} MB loaded and idle (latest tree built)");

    if run("throughput") {
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
        let _nginx = nginx(
            dir.path(),
            &format!(
                "daemon off; worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; default_type text/plain; client_body_temp_path {d}; proxy_temp_path {d};\n\
                 fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen 127.0.0.1:{nginx_port}; root {d}; }} }}\n",
                d = dir.path().display()
            ),
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
    }
    if run("propagation") {
        // Propagation to 10,000 long-polls, as confd's Go client asks (HTTP/1.1, the connection
        // kept) and as `curl` in a shell loop does (HTTP/1.0, closed after the answer). The same
        // client, in the same run, against two references: nginx with the nchan module (a
        // production C server built for this fan-out: long-poll subscribers released by one
        // publish) and a bare writer (a process that only writes one fixed answer to each parked
        // connection: what this machine's loopback TCP costs, the floor under any server).
        let nchan = Nchan::start();
        println!(
            "| client | server | first | p50 | p99 | max | p99 vs nchan | p99 vs bare writer | server side p50 / p99 | \
             CPU per waiter, server / client |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for keep_alive in [true, false] {
            let before = metrics_text(admin);
            let (mut ours, mut reference, mut floor) = (Rounds::default(), Rounds::default(), Rounds::default());
            let (mut server_cpu, mut client_cpu) = (0, 0);
            for round in 0..ROUNDS {
                let version = http.get(format!("{base}/latest/version")).send().unwrap().text().unwrap();
                let target = format!("/latest/version?wait=true&value={version}&maxWait=120");
                let client = std::thread::spawn(move || waiters(port, &target, keep_alive));
                // Let every waiter arrive before the write.
                let deadline = Instant::now() + Duration::from_secs(60);
                while waiting(admin) < WAITERS && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if let Ok(hook) = std::env::var("CORRAL_BENCH_BEFORE_WRITE") {
                    // For profiling the wake alone, e.g. `perf record -p $SERVER_PID -o … -- sleep 1 &`.
                    let _ = Command::new("sh").args(["-c", &hook]).env("SERVER_PID", server.id().to_string()).status();
                }
                let cpu = cpu_ns(server.id());
                let written = Instant::now();
                let name = format!("bench-{keep_alive}-{round}");
                rt.block_on(store.put(&event_bus::testkit::fixtures::stack(&name, &name))).unwrap();
                let (seen, client_ns) = client.join().unwrap();
                server_cpu += cpu_ns(server.id()) - cpu;
                client_cpu += client_ns;
                ours.add(written, seen);
                // The references right after, so that all three meet the same machine.
                let channel = format!("r-{keep_alive}-{round}");
                let target = format!("/sub?id={channel}");
                let client = std::thread::spawn(move || waiters(nchan.port, &target, keep_alive));
                nchan.wait_for_subscribers(WAITERS);
                let written = Instant::now();
                nchan.publish(&channel);
                reference.add(written, client.join().unwrap().0);
                let (written, seen) = bare_writer_round(keep_alive);
                floor.add(written, seen);
            }
            let server_hist =
                histogram_delta(&before, &metrics_text(admin), "corral_metadata_change_to_answer_seconds");
            let client = if keep_alive { "HTTP/1.1, kept" } else { "HTTP/1.0, closed" };
            let per_waiter = |ns: u64| ns as f64 / (ROUNDS * WAITERS) as f64 / 1e3;
            println!(
                "| {client} | rancher-metadata | {} | {:.2} | {:.2} | server <= {} / <= {} | {:.1} µs / {:.1} µs |",
                ours.row(),
                ours.p99() / reference.p99(),
                ours.p99() / floor.p99(),
                server_hist(0.50),
                server_hist(0.99),
                per_waiter(server_cpu),
                per_waiter(client_cpu),
            );
            println!(
                "| {client} | nginx + nchan | {} | 1.00 | {:.2} | | |",
                reference.row(),
                reference.p99() / floor.p99()
            );
            println!("| {client} | bare writer | {} | | 1.00 | | |", floor.row());
        }
    }
    println!("rancher-metadata RSS now: {:.1} MB (peak {:.1} MB)", rss_now_mb(server.id()), rss_mb(server.id()));
    if run("punctuality") {
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
    }
    if run("versions") {
        // Last, as it changes what the RSS figures above mean. Clients that also ask under the
        // older version names (confd templates often use a dated prefix): each API version has
        // its own tree.
        for v in ["2015-12-19", "2015-07-25"] {
            assert_eq!(http.get(format!("{base}/{v}/name")).send().unwrap().status(), 200);
            std::thread::sleep(Duration::from_secs(1));
            println!("rancher-metadata RSS: {:.1} MB with the {v} tree built too", rss_now_mb(server.id()));
        }
    }
}
