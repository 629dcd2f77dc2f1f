//! The `rancher-metadata` binary as an operator runs it: answers-file mode with SIGHUP reload,
//! hostile clients, and 10,000 concurrent long-polls against NATS-backed state.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use event_bus::testkit::{fixtures, free_port, NatsServer};
use event_bus::{provision, Bus, NatsOptions, Provision};

struct Server {
    child: Child,
    port: u16,
    admin: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], nats_url: Option<&str>) -> Server {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rancher-metadata"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-addr",
        &format!("127.0.0.1:{admin}"),
        "--log",
        "warn",
    ])
    .args(args)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    if let Some(url) = nats_url {
        cmd.env("CORRAL_NATS_URL", url);
    }
    let server = Server { child: cmd.spawn().unwrap(), port, admin };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http("127.0.0.1", admin, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "rancher-metadata never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// A plain HTTP/1.0 GET from `from`; (status, body).
fn http(from: &str, port: u16, path: &str) -> (u16, String) {
    let socket = socket2_connect(from, port);
    let Some(mut s) = socket else { return (0, String::new()) };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: metadata\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Connects to 127.0.0.1:port from source address `from` (std has no bind-before-connect,
/// so go through tokio's socket API on a throwaway runtime).
fn socket2_connect(from: &str, port: u16) -> Option<TcpStream> {
    if from == "127.0.0.1" {
        return TcpStream::connect((from, port)).ok();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(format!("{from}:0").parse().unwrap()).ok()?;
        let stream = sock.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.ok()?;
        stream.into_std().ok().inspect(|s| {
            let _ = s.set_nonblocking(false);
        })
    })
}

const ANSWERS: &str = r#"
"2015-12-19":
  default:
    key: foo
    database: {host: 127.0.0.1, port: "3306"}
    upstream: {app1: "10.0.1.10:8080", app2: "10.0.1.11:8080"}
    nested: {a: [1, null, false]}
  "127.0.20.2":
    key: mine
"2015-07-25":
  default:
    key: old
"#;

#[test]
fn answers_file_mode_serves_reloads_on_sighup_and_keeps_the_last_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answers.yaml");
    std::fs::write(&file, ANSWERS).unwrap();
    let server = start(&["--answers", file.to_str().unwrap()], None);
    let p = server.port;

    assert_eq!(http("127.0.0.1", p, "/"), (200, "2015-07-25\n2015-12-19\nlatest\n".into()));
    assert_eq!(http("127.0.0.1", p, "/2015-12-19/key").1, "foo");
    assert_eq!(http("127.0.0.1", p, "/latest/key").1, "foo", "latest is the highest version");
    assert_eq!(http("127.0.0.1", p, "/2015-07-25/key").1, "old");
    assert_eq!(http("127.0.20.2", p, "/2015-12-19/key").1, "mine", "a client entry wins");
    assert_eq!(http("127.0.20.2", p, "/2015-12-19/database/host").1, "127.0.0.1", "…over the default's other keys");
    assert_eq!(http("127.0.0.1", p, "/2015-12-19/nested/a").1, "0\n1\n2\n");
    assert_eq!(http("127.0.0.1", p, "/2015-12-19/upstream").1, "app1\napp2\n");
    assert_eq!(http("127.0.0.1", p, "/2015-12-19/version").0, 404, "no version key in the file, no /version");

    // A long-poll on a key, released by an edit + SIGHUP.
    let waiter = std::thread::spawn(move || http("127.0.0.1", p, "/latest/key?wait=true&value=foo&maxWait=30"));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&file, ANSWERS.replace("key: foo", "key: bar")).unwrap();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    assert_eq!(waiter.join().unwrap().1, "bar");

    // A broken file is refused; the last good answers stay.
    std::fs::write(&file, "{ not: yaml: at all").unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http("127.0.0.1", p, "/latest/key").1, "bar");
}

#[test]
fn hostile_clients_get_4xx_and_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answers.json");
    std::fs::write(&file, r#"{"2015-12-19":{"default":{"key":"v"}}}"#).unwrap();
    let server = start(&["--answers", file.to_str().unwrap()], None);
    let p = server.port;

    // 200 slowloris connections that never finish their request head.
    let slow: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", p)).ok()?;
            s.write_all(b"GET /latest/key HTTP/1.1\r\nHost: x\r\nX-Slow: ").ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(slow.len(), 200);
    assert_eq!(http("127.0.0.1", p, "/latest/key").1, "v", "others are still served");

    // A 100 KiB header is refused, not buffered without bound.
    let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
    let huge = format!("GET /latest/key HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let _ = s.write_all(huge.as_bytes());
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 431"), "{}", &reply[..reply.len().min(100)]);

    // A long query string (32 KB) is fine; garbage escapes are a 400.
    let (code, _) = http("127.0.0.1", p, &format!("/latest/key?{}", "x=y&".repeat(8000)));
    assert_eq!(code, 200);
    assert_eq!(http("127.0.0.1", p, "/latest/%ff%fe").0, 400);
    assert_eq!(http("127.0.0.1", p, "/latest/key").1, "v");

    // Cleartext HTTP/2 is not spoken (its idle connections would dodge the head timeout).
    let mut h2 = TcpStream::connect(("127.0.0.1", p)).unwrap();
    h2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let closed = h2.read_to_end(&mut reply).is_ok();
    assert!(closed, "the HTTP/2 preface was not refused within 5 s");
    drop(slow);
}

#[test]
fn xff_picks_the_caller_from_the_header_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answers.json");
    std::fs::write(&file, r#"{"2015-12-19":{"default":{"who":"nobody"},"10.9.9.9":{"who":"proxied"}}}"#).unwrap();
    let server = start(&["--answers", file.to_str().unwrap(), "--xff"], None);
    let get = |xff: Option<&str>| {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        let header = xff.map(|v| format!("X-Forwarded-For: {v}\r\n")).unwrap_or_default();
        write!(s, "GET /latest/who HTTP/1.0\r\n{header}\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    };
    assert_eq!(get(Some("10.9.9.9")), "proxied");
    assert_eq!(get(None), "nobody", "without the header: the peer address");
    assert_eq!(get(Some("10.9.9.9, 10.0.0.1")), "nobody", "the whole value is the address, as the original");
}

#[test]
fn help_names_every_flag_with_its_env_var() {
    let out = Command::new(env!("CARGO_BIN_EXE_rancher-metadata")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "--answers", "--xff", "--host-uuid", "--nats-url", "--env", "--log-format", "--admin-addr"]
    {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for var in [
        "CORRAL_METADATA_LISTEN",
        "CORRAL_METADATA_ANSWERS",
        "CORRAL_METADATA_XFF",
        "CORRAL_HOST_UUID",
        "CORRAL_NATS_URL",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}

/// 10,000 concurrent `/version` long-polls on one server: a no-op write releases none, a real
/// change releases all of them, and waiters with nothing to wait for return at maxWait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_long_polls() {
    const WAITERS: usize = 10_000;
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    let server = start(&[], Some(&nats.url()));
    let port = server.port;
    let version = http("127.0.0.1", port, "/latest/version").1;

    let wait_all = |max_wait: u64, value: String| {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..WAITERS {
            let value = value.clone();
            tasks.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
                let req = format!("GET /latest/version?wait=true&value={value}&maxWait={max_wait} HTTP/1.0\r\n\r\n");
                tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.unwrap();
                let sent = Instant::now();
                let mut raw = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut raw).await.unwrap();
                let raw = String::from_utf8(raw).unwrap();
                (sent, Instant::now(), raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
            });
        }
        tasks
    };
    // Phase 1: all wait; a no-op write; then a real change releases every one of them.
    let mut tasks = wait_all(60, version.clone());
    wait_for_waiters(server.admin, WAITERS).await;
    store.put(&fixtures::stack("st1", "app")).await.unwrap(); // the same document again
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tasks.len(), WAITERS);
    assert!(tasks.try_join_next().is_none(), "a no-op write released a waiter");
    let changed_at = Instant::now();
    let rev = store.put(&fixtures::stack("st2", "web")).await.unwrap();
    let mut latest = changed_at;
    while let Some(done) = tasks.join_next().await {
        let (_, at, body) = done.unwrap();
        assert_eq!(body, rev.to_string());
        latest = latest.max(at);
    }
    let release = latest - changed_at;
    eprintln!("released {WAITERS} long-polls {release:?} after the write");
    assert!(release < Duration::from_secs(5), "release took {release:?}");

    // Phase 2: nothing changes: each returns maxWait after its request, never before.
    // (Debug build, 10,000 sockets and the server on 2 cores: the bound here is loose; the
    // benchmark reports the real spread.)
    let v = rev.to_string();
    let mut tasks = wait_all(3, v.clone());
    let (mut early, mut late) = (Duration::MAX, Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        let (sent, at, body) = done.unwrap();
        assert_eq!(body, v);
        early = early.min(at - sent);
        late = late.max(at - sent);
    }
    eprintln!("maxWait=3: returned between {early:?} and {late:?} after the request");
    assert!(early >= Duration::from_millis(2950), "a waiter returned early: {early:?}");
    assert!(late < Duration::from_secs(5), "a waiter returned late: {late:?}");
}

async fn wait_for_waiters(admin: u16, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
        let waiting = body
            .lines()
            .find_map(|l| l.strip_prefix("corral_metadata_long_polls_waiting "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if waiting >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {waiting} of {n} waiters arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
