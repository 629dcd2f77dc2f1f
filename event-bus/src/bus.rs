//! Connecting to NATS, and the names an environment uses there.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// How to reach NATS. Secrets are never printed: `Debug` redacts them and [`redact_url`]
/// strips credentials from URLs before they reach a log line or an error message.
#[derive(Clone, Default)]
pub struct NatsOptions {
    /// One or more server URLs, comma-separated.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed.
    pub nkey_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
    /// The client name the server shows in its connection list.
    pub name: Option<String>,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

impl NatsOptions {
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions { url: url.into(), ..Default::default() }
    }
}

/// `nats://user:secret@host:4222` → `nats://host:4222`, for every URL of a comma-separated list.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}{}", &u[..s + 3], &u[at + 1..]),
            (None, Some(at)) => u[at + 1..].to_string(),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether the client is connected right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Connected,
    Disconnected,
}

/// A connection to NATS for one environment: the client, its JetStream context, the
/// environment's names, and a live view of the connection state.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    env: Arc<str>,
    link: watch::Receiver<Link>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("env", &self.env).field("link", &*self.link.borrow()).finish()
    }
}

impl Bus {
    /// Connects, retrying the first connection with backoff until `initial_timeout` (NATS may
    /// start after us) and reconnecting forever afterwards.
    pub async fn connect(opts: &NatsOptions, env: &str, initial_timeout: Duration) -> Result<Bus> {
        // Both rustls providers are compiled in (ring via async-nats, aws-lc-rs via reqwest), so
        // rustls will not choose; without this, a TLS connection panics. Installing twice is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (tx, rx) = watch::channel(Link::Disconnected);
        // Set when the server refuses our credentials: retrying will not help the first connect.
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The last error the client met, for the message when the first connection never comes.
        let last_error: Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let tx = Arc::new(tx);
        let mut co = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(backoff)
            .event_callback({
                let tx = tx.clone();
                let refused = refused.clone();
                let last_error = last_error.clone();
                move |event| {
                    let tx = tx.clone();
                    let refused = refused.clone();
                    let last_error = last_error.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                tracing::info!("NATS connected");
                                tx.send_replace(Link::Connected);
                            }
                            async_nats::Event::Disconnected => {
                                tracing::warn!("NATS disconnected; serving the last state while reconnecting");
                                tx.send_replace(Link::Disconnected);
                            }
                            async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                                tracing::warn!("NATS refused the credentials (authorization violation)");
                                refused.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            async_nats::Event::ClientError(async_nats::ClientError::Other(msg))
                                if msg.contains("authorization violation") =>
                            {
                                tracing::warn!("NATS refused the credentials (authorization violation)");
                                refused.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            other => {
                                if matches!(
                                    other,
                                    async_nats::Event::ClientError(_) | async_nats::Event::ServerError(_)
                                ) {
                                    *last_error.lock().expect("last error poisoned") = Some(other.to_string());
                                }
                                tracing::debug!(event = %other, "NATS event")
                            }
                        }
                    }
                }
            });
        if let Some(name) = &opts.name {
            co = co.name(name);
        }
        if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
            co = co.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &opts.token {
            co = co.token(t.clone());
        }
        if let Some(path) = &opts.creds_file {
            co = co
                .credentials_file(path)
                .await
                .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        }
        if let Some(path) = &opts.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
            co = co.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &opts.tls_ca {
            co = co.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) {
            co = co.add_client_certificate(cert.clone(), key.clone());
        }
        if opts.tls_required {
            co = co.require_tls(true);
        }
        let url = redact_url(&opts.url);
        // With retry_on_initial_connect the client comes back at once and connects in the
        // background; wait for the first connection so callers start from a known state.
        let (addrs, url_auth) =
            server_addrs(&opts.url).map_err(|e| Error::Connect { url: url.clone(), source: Box::new(e) })?;
        // Flags win over credentials written into the URL.
        if opts.user.is_none() && opts.token.is_none() {
            co = match url_auth {
                Some(UrlAuth::UserPassword(u, p)) => co.user_and_password(u, p),
                Some(UrlAuth::Token(t)) => co.token(t),
                None => co,
            };
        }
        let client = co.connect(addrs).await.map_err(|e| Error::Connect { url: url.clone(), source: Box::new(e) })?;
        let mut connected = rx.clone();
        let waited = tokio::time::timeout(initial_timeout, async {
            loop {
                if client.connection_state() == async_nats::connection::State::Connected {
                    return Ok(());
                }
                if refused.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(());
                }
                tokio::select! {
                    _ = connected.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(())) => {
                return Err(Error::Connect {
                    url,
                    source: "authorization violation: the server refused the credentials \
                             (--nats-user/--nats-password, --nats-token, --nats-creds, --nats-nkey)"
                        .into(),
                })
            }
            Err(_) => {
                return Err(Error::Connect {
                    url,
                    source: match last_error.lock().expect("last error poisoned").as_deref() {
                        Some(e) => format!(
                            "no connection within {initial_timeout:?} (last error: {e}; for tls:// check --nats-tls-ca)"
                        ),
                        None => format!("no server answered within {initial_timeout:?}"),
                    }
                    .into(),
                })
            }
        }
        tx.send_replace(Link::Connected);
        // The client can report "connected" a moment before it stores the server's INFO; give it
        // that moment, and refuse only a version we actually read.
        let mut version = client.server_info().version;
        for _ in 0..50 {
            if !version.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            version = client.server_info().version;
        }
        if !version.is_empty() && !server_supports_kv(&version) {
            return Err(Error::ServerTooOld { url, found: version });
        }
        let js = jetstream::new(client.clone());
        Ok(Bus { client, js, env: env.into(), link: rx })
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    /// The KV bucket of this environment: `corral-<env>`.
    pub fn bucket_name(&self) -> String {
        format!("corral-{}", self.env)
    }

    /// The JetStream stream that keeps this environment's events: `corral-events-<env>`.
    pub fn events_stream_name(&self) -> String {
        format!("corral-events-{}", self.env)
    }

    /// `corral.<env>.events.<name>`: published events (kept by the stream).
    pub fn event_subject(&self, name: &str) -> String {
        format!("corral.{}.events.{name}", self.env)
    }

    /// `corral.<env>.requests.<name>`: request/reply (not kept: a stream on a request subject
    /// would answer the requester with its own ack).
    pub fn request_subject(&self, name: &str) -> String {
        format!("corral.{}.requests.{name}", self.env)
    }

    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// A receiver that changes whenever the connection goes up or down.
    pub fn link_watch(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }
}

/// Credentials found in a URL (`nats://user:pass@host`, or `nats://token@host`).
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// `nats://a:4222,nats://b:4222` → one address per server, with any user info taken out (so no
/// credentials travel inside addresses that get logged) and returned separately.
fn server_addrs(urls: &str) -> std::io::Result<(Vec<async_nats::ServerAddr>, Option<UrlAuth>)> {
    let mut auth = None;
    let mut addrs = Vec::new();
    for u in urls.split(',') {
        let addr = u.trim().parse::<async_nats::ServerAddr>()?;
        if let Some(user) = addr.username().filter(|u| !u.is_empty()) {
            auth = Some(match addr.password() {
                Some(p) => UrlAuth::UserPassword(user.to_string(), p.to_string()),
                None => UrlAuth::Token(user.to_string()),
            });
        }
        let url = addr.into_inner();
        let bare =
            format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(4222));
        addrs.push(bare.parse::<async_nats::ServerAddr>()?);
    }
    Ok((addrs, auth))
}

/// Reconnect delays: 100 ms doubling to 5 s.
fn backoff(attempt: usize) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(6));
    Duration::from_millis(ms.min(5_000))
}

/// KV creation through async-nats needs a 2.10+ server (2.9 lacks fields of `$JS.API.INFO`).
fn server_supports_kv(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

/// Checks that `env` can be used in bucket, stream and subject names.
pub fn validate_env(env: &str) -> Result<()> {
    if !env.is_empty() && env.len() <= 64 && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(())
    } else {
        Err(Error::InvalidEnvironment { env: env.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact_url("nats://u:p@127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("tok@127.0.0.1:4222,nats://a:b@h:1"), "127.0.0.1:4222,nats://h:1");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        let opts =
            NatsOptions { url: "nats://u:hunter2@h:1".into(), password: Some("hunter2".into()), ..Default::default() };
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn server_versions() {
        assert!(!server_supports_kv("2.9.10"));
        assert!(server_supports_kv("2.10.0"));
        assert!(server_supports_kv("v2.15.1"));
        assert!(server_supports_kv("3.0.0-beta"));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(50), Duration::from_secs(5));
    }
}
