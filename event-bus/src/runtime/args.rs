//! Flags every binary shares. Each flag also reads an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::bus::NatsOptions;
use crate::runtime::telemetry::LogFormat;

/// How to reach NATS. (No `Debug`: it holds secrets; use [`NatsArgs::options`], whose `Debug` redacts.)
#[derive(clap::Args, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(long, global = true, env = "CORRAL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// User name for user/password authentication.
    #[arg(long, global = true, env = "CORRAL_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, global = true, env = "CORRAL_NATS_PASSWORD", hide_env_values = true, requires = "nats_user")]
    pub nats_password: Option<String>,
    /// Token authentication.
    #[arg(long, global = true, env = "CORRAL_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// Credentials file (JWT + nkey seed, `.creds`).
    #[arg(long, global = true, env = "CORRAL_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(long, global = true, env = "CORRAL_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate.
    #[arg(long, global = true, env = "CORRAL_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "CORRAL_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, global = true, env = "CORRAL_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// How long to keep trying the first connection before giving up (e.g. 10s, 2m).
    #[arg(long, global = true, env = "CORRAL_NATS_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub nats_connect_timeout: std::time::Duration,
    /// Refuse to talk to NATS without TLS.
    #[arg(long, global = true, env = "CORRAL_NATS_TLS_REQUIRED")]
    pub nats_tls_required: bool,
}

impl NatsArgs {
    pub fn options(&self, client_name: &str) -> NatsOptions {
        NatsOptions {
            url: self.nats_url.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            creds_file: self.nats_creds.clone(),
            nkey_file: self.nats_nkey.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            tls_required: self.nats_tls_required,
            name: Some(client_name.to_string()),
        }
    }
}

/// Flags of every component: NATS, environment, logging, admin address.
#[derive(clap::Args, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Environment: selects the bucket `corral-<env>` and subjects `corral.<env>.…`.
    #[arg(long, env = "CORRAL_ENV", default_value = "default", global = true)]
    pub env: String,
    /// Log format on stderr.
    #[arg(long, env = "CORRAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,event_bus=debug`). Default: `info` for
    /// long-running components, `warn` for one-shot commands.
    #[arg(long, env = "CORRAL_LOG", global = true)]
    pub log: Option<String>,
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics). Each component has its own default.
    #[arg(long, env = "CORRAL_ADMIN_ADDR", global = true)]
    pub admin_addr: Option<SocketAddr>,
}
