//! Test parts: NATS state with a load balancer and its targets, the `lb-haproxy` binary (which
//! starts a real HAProxy), and backends as small HTTP and TCP servers on loopback addresses
//! (each container of the fixture is its own 127.0.x.y).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_bus::model::{Certificate, LbConfig, PrivateKey, Service, ServiceKind};
use event_bus::testkit::{fixtures, free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, Document, Key, NatsOptions, Provision, StateStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const STACK: &str = "st1";
pub const STACK_NAME: &str = "app";

/// A NATS server with a provisioned environment holding stack `app`.
pub struct State {
    pub nats: NatsServer,
    pub bus: Bus,
    pub store: StateStore,
}

impl State {
    pub async fn start() -> State {
        let nats = NatsServer::start();
        let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
        let store = provision(&bus, &Provision::default()).await.unwrap();
        store.put(&fixtures::host("h1", "host-1", "127.0.0.1")).await.unwrap();
        store.put(&fixtures::stack(STACK, STACK_NAME)).await.unwrap();
        State { nats, bus, store }
    }

    pub async fn put<T: Document>(&self, doc: &T) {
        self.store.put(doc).await.unwrap();
    }

    /// A plain service `name` (uuid = name).
    pub async fn service(&self, name: &str) {
        self.put(&fixtures::service(name, STACK, name)).await;
    }

    /// Container `<service>-<n>` of `service` at `ip`, running.
    pub async fn container(&self, service: &str, n: u32, ip: &str) {
        let uuid = format!("{service}-{n}");
        self.put(&fixtures::container(&uuid, &format!("app-{service}-{n}"), service, STACK, "h1", ip)).await;
        self.put(&fixtures::status(&uuid, "h1", "running")).await;
    }

    pub async fn set_state(&self, container: &str, state: &str) {
        self.put(&fixtures::status(container, "h1", state)).await;
    }

    pub async fn remove_container(&self, container: &str) {
        for family in ["container", "status", "health"] {
            let _ = self.store.delete(&format!("{family}.{container}").parse::<Key>().unwrap()).await;
        }
    }

    pub async fn set_health(&self, container: &str, state: &str) {
        let h: event_bus::model::ContainerHealth =
            serde_json::from_value(serde_json::json!({"uuid": container, "health_state": state})).unwrap();
        self.put(&h).await;
    }

    /// The load balancer service `lb` with this `lb_config`.
    pub async fn lb(&self, lb_config: serde_json::Value) {
        self.put(&lb_service(lb_config)).await;
    }

    pub async fn cert(&self, uuid: &str, cert: &str, key: &str) {
        self.put(&Certificate {
            uuid: uuid.into(),
            name: uuid.into(),
            cert: cert.into(),
            key: PrivateKey(key.into()),
            cn: None,
            subject_alternative_names: vec![],
            expires_at: None,
            extra: Default::default(),
        })
        .await;
    }
}

pub fn lb_service(lb_config: serde_json::Value) -> Service {
    let mut s = fixtures::service("lb", STACK, "lb");
    s.kind = ServiceKind::LoadBalancer;
    s.lb_config = Some(serde_json::from_value::<LbConfig>(lb_config).unwrap());
    s
}

/// The `lb-haproxy` binary serving `app/lb`, its HAProxy on 127.0.0.1.
pub struct Lb {
    child: Terminate,
    pub admin: u16,
    pub run_dir: tempfile::TempDir,
}

impl Lb {
    pub fn start(nats_url: &str) -> Lb {
        Lb::start_with(nats_url, &[])
    }

    pub fn start_with(nats_url: &str, args: &[&str]) -> Lb {
        let admin = free_port();
        let run_dir = tempfile::Builder::new().prefix("corral-lb-").tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lb-haproxy"))
            .args(["--service", "app/lb", "--bind-address", "127.0.0.1", "--log", "info"])
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--run-dir")
            .arg(run_dir.path())
            .args(args)
            .env("CORRAL_NATS_URL", nats_url)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lb-haproxy");
        Lb { child: Terminate(child), admin, run_dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn wait_ready(&self) {
        wait("lb-haproxy ready", Duration::from_secs(60), || http_status(self.admin, "/readyz") == 200);
    }

    pub fn metrics(&self) -> String {
        raw_get(self.admin, "/metrics")
    }

    /// The value of the first metric line starting with `prefix`, 0 when absent.
    pub fn metric(&self, prefix: &str) -> f64 {
        metric(&self.metrics(), prefix)
    }

    pub fn ready(&self) -> bool {
        http_status(self.admin, "/readyz") == 200
    }

    pub fn reloads(&self) -> f64 {
        self.metric("corral_lb_reloads_total{result=\"ok\"}")
    }

    pub fn rejected(&self) -> f64 {
        self.metric("corral_lb_rejected_configs_total")
    }

    pub fn servers(&self) -> f64 {
        self.metric("corral_lb_servers ")
    }

    /// HAProxy's master process, from `show proc`.
    pub fn haproxy_master_pid(&self) -> i32 {
        self.master("show proc")
            .lines()
            .find(|l| l.contains(" master "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .expect("a master in show proc")
    }

    /// A command on HAProxy's master CLI (`show proc`, `@1 show stat`, …).
    pub fn master(&self, command: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.run_dir.path().join("master.sock")).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The master's reload count from `show proc`.
    pub fn haproxy_reloads(&self) -> u64 {
        let text = self.master("show proc");
        text.lines().find(|l| l.contains(" master ")).and_then(|l| l.split_whitespace().nth(2)?.parse().ok()).unwrap()
    }
}

pub fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(prefix).and_then(|rest| rest.trim().split(' ').next()?.parse().ok()))
        .unwrap_or(0.0)
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn wait_async(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn raw_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

fn http_status(port: u16, path: &str) -> u16 {
    raw_get(port, path).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// One HTTP/1.1 request with `Connection: close`: `(status, body)`; status 0 when the
/// connection failed.
pub fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    parse_response(&raw)
}

/// [`get`] with request headers; the whole raw response.
pub fn get_raw(port: u16, headers: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

pub fn parse_response(raw: &str) -> (u16, String) {
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// An HTTP server answering every request with its name; stops accepting when dropped or
/// stopped, letting requests in progress finish.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// While set, `/healthz` answers 503.
    pub sick: Arc<std::sync::atomic::AtomicBool>,
    accept: Option<tokio::task::JoinHandle<()>>,
    tcp: bool,
}

impl Backend {
    pub async fn http(name: &str, addr: SocketAddr) -> Backend {
        let mut b =
            Backend { name: name.into(), addr, hits: Arc::default(), sick: Arc::default(), accept: None, tcp: false };
        b.start().await;
        b
    }

    /// A TCP server that writes `<name>:` and then echoes what it reads.
    pub async fn echo(name: &str, addr: SocketAddr) -> Backend {
        let mut b =
            Backend { name: name.into(), addr, hits: Arc::default(), sick: Arc::default(), accept: None, tcp: true };
        b.start().await;
        b
    }

    pub async fn start(&mut self) {
        // A listener just stopped may take a moment to close.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("{}: {e}", self.addr),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (name, hits, tcp, sick) = (self.name.clone(), self.hits.clone(), self.tcp, self.sick.clone());
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                let (name, hits, sick) = (name.clone(), hits.clone(), sick.clone());
                tokio::spawn(async move {
                    if tcp {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let _ = s.write_all(format!("{name}:").as_bytes()).await;
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        return;
                    }
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req);
                    let check = head.starts_with("GET /healthz");
                    if !check {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                    let status =
                        if check && sick.load(Ordering::Relaxed) { "503 Service Unavailable" } else { "200 OK" };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        }));
    }

    /// Stops accepting (requests in progress finish).
    pub fn stop(&mut self) {
        if let Some(t) = self.accept.take() {
            t.abort();
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// [`get`] off the async runtime.
pub async fn aget(port: u16, host: &str, path: &str) -> (u16, String) {
    let (host, path) = (host.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || get(port, &host, &path)).await.unwrap()
}

/// A TLS client that accepts any certificate and tells which one it was served.
pub mod tls {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCert;

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }

    /// GET `path` over TLS with SNI `name`: (served leaf certificate, status, body), or the
    /// handshake error.
    pub fn get(port: u16, name: &str, path: &str) -> Result<(Vec<u8>, u16, String), String> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        let server = ServerName::try_from(name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        write!(tls, "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        let leaf = tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or("no certificate")?;
        let (status, body) = super::parse_response(&String::from_utf8_lossy(&raw));
        Ok((leaf, status, body))
    }

    pub async fn aget(port: u16, name: &str, path: &str) -> Result<(Vec<u8>, u16, String), String> {
        let (name, path) = (name.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || get(port, &name, &path)).await.unwrap()
    }
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}
