//! Test parts: the `healthcheck` binary, loopback backends the test serves itself, reports read
//! from NATS, and a fixture environment where the test plays the controller's assignment.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_bus::model::{ContainerHealth, HealthCheck, HealthReport, REPORT_EVENT};
use event_bus::testkit::{fixtures, free_port, Terminate};
use event_bus::{Events, StateStore};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback HTTP server whose `/ok` page can be removed (404) and restored, or a TCP port
/// that can be closed and reopened.
pub struct Backend {
    pub addr: std::net::SocketAddr,
    pub page: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn http(ip: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        Self::serve(listener)
    }

    pub async fn http_on(addr: std::net::SocketAddr) -> Backend {
        Self::serve(tokio::net::TcpListener::bind(addr).await.unwrap())
    }

    fn serve(listener: tokio::net::TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let page = Arc::new(AtomicBool::new(true));
        let p = page.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let p = p.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                    let reply: &[u8] = if p.load(Ordering::SeqCst) {
                        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                    } else {
                        b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                    };
                    let _ = s.write_all(reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Backend { addr, page, task }
    }

    pub fn set_page(&self, present: bool) {
        self.page.store(present, Ordering::SeqCst);
    }

    /// Stops listening (connections are refused from now on).
    pub fn close(self) -> std::net::SocketAddr {
        self.task.abort();
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn check(port: u16, request_line: Option<&str>, interval: u64, rise: u32, fall: u32) -> HealthCheck {
    let mut hc: HealthCheck = serde_json::from_value(serde_json::json!({"port": port})).unwrap();
    hc.request_line = request_line.map(String::from);
    hc.interval = Some(interval);
    hc.response_timeout = Some(interval);
    hc.healthy_threshold = Some(rise);
    hc.unhealthy_threshold = Some(fall);
    hc
}

/// Writes a container with a health check and (as the controller would) its checker hosts.
pub async fn checked_container(store: &StateStore, uuid: &str, ip: &str, hc: HealthCheck, checkers: &[&str]) {
    let mut c = fixtures::container(uuid, &format!("app-web-{}", &uuid[1..]), "s-web", "st1", checkers[0], ip);
    c.health_check = Some(hc);
    store.put(&c).await.unwrap();
    let h = ContainerHealth {
        uuid: uuid.into(),
        health_state: "initializing".into(),
        health_check_hosts: checkers.iter().map(|s| s.to_string()).collect(),
        reports: Default::default(),
        extra: Default::default(),
    };
    store.put(&h).await.unwrap();
}

pub struct Checker {
    child: Terminate,
    pub admin: u16,
    pub dir: tempfile::TempDir,
}

impl Checker {
    pub fn start(nats_url: &str, host: &str) -> Checker {
        let admin = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_healthcheck"))
            .args(["--host-uuid", host, "--admin-addr", &format!("127.0.0.1:{admin}"), "--log", "warn"])
            .args(["--poll-interval", "100ms", "--heartbeat-interval", "300ms", "--min-reload-interval", "300ms"])
            .arg("--run-dir")
            .arg(dir.path())
            .env("CORRAL_NATS_URL", nats_url)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start healthcheck");
        let c = Checker { child: Terminate(child), admin, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(admin, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "healthcheck never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = http_get(self.admin, "/metrics");
        body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    pub fn config(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.cfg")).unwrap_or_default()
    }
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Reports as they arrive on NATS.
pub struct Reports {
    rx: tokio::sync::mpsc::UnboundedReceiver<HealthReport>,
    _task: tokio::task::JoinHandle<()>,
}

impl Reports {
    pub async fn follow(events: &Events) -> Reports {
        let mut sub = events.subscribe(REPORT_EVENT).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(r) = serde_json::from_value::<HealthReport>(m.event.data.clone()) {
                    let _ = tx.send(r);
                }
            }
        });
        Reports { rx, _task: task }
    }

    /// Waits for a report on `container` saying `up`; how long it took.
    pub async fn wait(&mut self, container: &str, up: bool, limit: Duration) -> (HealthReport, Duration) {
        let start = Instant::now();
        loop {
            let left = limit
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("no {container} up={up} report within {limit:?}"));
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(r)) if r.container_uuid == container && r.up == up => return (r, start.elapsed()),
                Ok(Some(_)) => continue,
                _ => panic!("no {container} up={up} report within {limit:?}"),
            }
        }
    }

    /// Every report received within `d`.
    pub async fn during(&mut self, d: Duration) -> Vec<HealthReport> {
        let start = Instant::now();
        let mut out = Vec::new();
        while let Some(left) = d.checked_sub(start.elapsed()) {
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(r)) => out.push(r),
                _ => break,
            }
        }
        out
    }
}
