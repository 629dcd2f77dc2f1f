//! `event-bus server`: a local nats-server with JetStream, provisioned for the environment.
//! This is the embedded default the other commands (and later `deploy local up`) talk to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{connect, default_store_dir, ProvisionArgs};
use crate::bus::Link;
use crate::cache::StateCache;
use crate::runtime::{admin, args::CommonArgs, metrics::Metrics, natsd, shutdown};
use crate::store::provision;

const DEFAULT_ADMIN: &str = "127.0.0.1:9220";

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Address the nats-server listens on for clients.
    #[arg(long, env = "CORRAL_SERVER_LISTEN", default_value = "127.0.0.1:4222")]
    pub listen: SocketAddr,
    /// Directory for the server's config, log and JetStream store (kept across restarts).
    #[arg(long, env = "CORRAL_STORE_DIR", default_value_os_t = default_store_dir())]
    pub store_dir: PathBuf,
    /// The nats-server binary (default: $NATS_SERVER_BIN, .corral/tools/bin, then $PATH).
    #[arg(long, env = "NATS_SERVER_BIN")]
    pub nats_server_bin: Option<PathBuf>,
    #[command(flatten)]
    pub provision: ProvisionArgs,
}

pub async fn run(common: &CommonArgs, args: ServerArgs) -> anyhow::Result<()> {
    let bin = natsd::find(args.nats_server_bin.as_deref(), &[std::path::Path::new(".")]).map_err(anyhow::Error::msg)?;
    if std::net::TcpListener::bind(args.listen).is_err() {
        anyhow::bail!(
            "{} is already in use (another nats-server?); to use that server run `event-bus --nats-url nats://{} init`",
            args.listen,
            args.listen
        );
    }
    std::fs::create_dir_all(&args.store_dir).with_context(|| format!("creating {}", args.store_dir.display()))?;
    let store_dir = args.store_dir.canonicalize()?;
    let config = store_dir.join("nats.conf");
    let log = store_dir.join("nats.log");
    std::fs::write(
        &config,
        format!(
            "# written by event-bus server\nserver_name: corral\nlisten: {}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            args.listen,
            store_dir.join("jetstream").display()
        ),
    )?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .arg("-l")
        .arg(&log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("nats-server exited at once")?;

    // Every other command uses --nats-url; here it is the server we just started.
    let mut common = common.clone();
    common.nats.nats_url = format!("nats://{}", args.listen);
    let bus = tokio::select! {
        bus = connect(&common) => bus?,
        status = child.wait() => anyhow::bail!("nats-server exited ({}) before it was ready; see {}", status?, log.display()),
    };
    let store = provision(&bus, &args.provision.provision()).await?;

    // Following the bucket here makes /metrics show the environment's version and change rate.
    let metrics = Metrics::new();
    let cache = StateCache::start(&bus, &metrics).await?;
    let readiness = admin::Readiness::new();
    readiness.add("state cache", move || cache.readiness());
    let link = bus.clone();
    readiness.add("nats", move || {
        if link.link() == Link::Connected {
            Ok(())
        } else {
            Err("nats-server not reachable".into())
        }
    });
    let admin_addr = common.admin_addr.unwrap_or(DEFAULT_ADMIN.parse().expect("valid default"));
    let admin = admin::AdminServer::start(admin_addr, metrics, readiness)
        .await
        .with_context(|| format!("admin server on {admin_addr}"))?;

    // Whoever started us may have stopped reading stdout; that must not stop the server.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout(),
        "event-bus server ready: nats://{} env {:?}, bucket {} (version {}), events stream {}\n  store {}  log {}  admin http://{}",
        args.listen,
        bus.env(),
        store.bucket(),
        store.version().await?,
        bus.events_stream_name(),
        store_dir.display(),
        log.display(),
        admin.local_addr()
    );

    tokio::select! {
        _ = shutdown::signal() => {
            // nats-server's own signal command: a clean JetStream shutdown.
            let _ = tokio::process::Command::new(&bin).arg("--signal").arg(format!("quit={pid}")).status().await;
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(_) => Ok(()),
                Err(_) => { child.kill().await?; Ok(()) }
            }
        }
        status = child.wait() => anyhow::bail!("nats-server exited unexpectedly ({}); see {}", status?, log.display()),
    }
}
