//! Test parts: the `rancher-dns` binary, BIND's `named` as an upstream, and `dig` with its output
//! parsed into what a user reads.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use event_bus::testkit::{free_port, Terminate};

/// Finds a system tool or fails with what to install (a missing tool is a failure, not a skip).
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found: install the Debian package `{package}` (scripts/setup does)");
}

pub struct Dns {
    child: Terminate,
    pub port: u16,
    pub admin: u16,
}

impl Dns {
    /// Starts the binary on a free loopback port and waits until /readyz says ready.
    pub fn start(args: &[&str], nats_url: Option<&str>) -> Dns {
        Dns::start_with(free_port(), args, nats_url)
    }

    /// In answers-file mode on a chosen port.
    pub fn start_on(port: u16, args: &[&str]) -> Dns {
        Dns::start_with(port, args, None)
    }

    fn start_with(port: u16, args: &[&str], nats_url: Option<&str>) -> Dns {
        let admin = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rancher-dns"));
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
        if !args.iter().any(|a| *a == "--upstream" || *a == "--resolv-conf") {
            // Never the machine's own resolvers: tests only talk to what they started.
            cmd.args(["--resolv-conf", "/dev/null"]);
        }
        if let Some(url) = nats_url {
            cmd.env("CORRAL_NATS_URL", url);
        }
        let dns = Dns { child: Terminate(cmd.spawn().expect("start rancher-dns")), port, admin };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(admin, "/readyz") != 200 {
            assert!(Instant::now() < deadline, "rancher-dns never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        dns
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `dig` from source address `from` (a caller identity) with extra options.
    pub fn dig(&self, from: &str, args: &[&str]) -> Dig {
        dig(self.port, from, args)
    }

    /// The value of one metric line (`name{labels}`) on /metrics, 0 when absent.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        metric(&http_get(self.admin, "/metrics"), line_prefix)
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
    }
}

pub fn metric(body: &str, line_prefix: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix).and_then(|rest| rest.trim().split(' ').next()?.parse().ok()))
        .unwrap_or(0.0)
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

fn http_status(port: u16, path: &str) -> u16 {
    http_get(port, path).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// dig's answer, as a user reads it.
#[derive(Debug, Clone)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    /// `(owner, ttl, type, data)` per answer line.
    pub answer: Vec<(String, u32, String, String)>,
    pub authority: Vec<(String, u32, String, String)>,
    pub additional: Vec<(String, u32, String, String)>,
    pub raw: String,
}

impl Dig {
    /// The data of the answer records of one type, sorted.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self.answer.iter().filter(|r| r.2 == rtype).map(|r| r.3.clone()).collect();
        v.sort();
        v
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

pub fn dig(port: u16, from: &str, args: &[&str]) -> Dig {
    let out = Command::new(tool("dig", "bind9-dnsutils"))
        .args(["-p", &port.to_string(), "@127.0.0.1", "-b", from, "+tries=1", "+time=5", "+nocookie"])
        .args(args)
        .output()
        .expect("run dig");
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    parse_dig(&raw)
}

pub fn parse_dig(raw: &str) -> Dig {
    let mut d = Dig {
        status: String::new(),
        flags: vec![],
        answer: vec![],
        authority: vec![],
        additional: vec![],
        raw: raw.to_string(),
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(String::from).collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = "";
            }
        } else {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() >= 5 {
                let rec =
                    (parts[0].to_string(), parts[1].parse().unwrap_or(0), parts[3].to_string(), parts[4..].join(" "));
                match section {
                    "answer" => d.answer.push(rec),
                    "authority" => d.authority.push(rec),
                    "additional" => d.additional.push(rec),
                    _ => {}
                }
            }
        }
    }
    d
}

/// A real BIND 9 `named`, authoritative (no recursion) on a loopback port, for upstream tests.
pub struct Named {
    child: Terminate,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Named {
    /// Serves the root zone `root_records` (zone-file lines after the SOA), plus `broken.test`,
    /// whose file is missing, so named answers SERVFAIL for every name under it.
    pub fn start(root_records: &str) -> Named {
        Named::start_with(root_records, true)
    }

    /// Serves only the root zone, `broken.test` included if the records say so.
    pub fn start_without_broken_zone(root_records: &str) -> Named {
        Named::start_with(root_records, false)
    }

    fn start_with(root_records: &str, broken: bool) -> Named {
        let broken = if broken { "zone \"broken.test\" { type primary; file \"missing.zone\"; };" } else { "" };
        let named = tool("named", "bind9");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_port();
        std::fs::write(
            dir.path().join("named.conf"),
            format!(
                r#"options {{
  directory "{d}"; pid-file "{d}/named.pid"; session-keyfile "{d}/session.key";
  listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
  recursion no; dnssec-validation no; notify no;
}};
controls {{ }};
zone "." {{ type primary; file "{d}/root.zone"; }};
{broken}
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("root.zone"),
            format!("$TTL 300\n@ IN SOA ns.test. admin.test. 1 60 10 600 30\n@ IN NS ns.test.\nns.test. IN A 127.0.0.1\n{root_records}\n"),
        )
        .unwrap();
        let child = Command::new(named)
            .args(["-g", "-c", &format!("{d}/named.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start named");
        let n = Named { child: Terminate(child), port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let d = dig(port, "127.0.0.1", &["ns.test"]);
            if d.status == "NOERROR" {
                break;
            }
            assert!(Instant::now() < deadline, "named did not come up on port {port}: {}", d.raw);
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Polls `f` until it returns true; returns how long that took, or panics after `limit`.
pub fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
