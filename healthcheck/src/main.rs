use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use event_bus::runtime::{admin, args::CommonArgs, metrics::Metrics, shutdown, telemetry};
use event_bus::{Bus, Events, StateCache};
use healthcheck::checker::{self, Settings, SharedStatus};
use healthcheck::metrics::CheckMetrics;

/// Checks the containers the deploy controller assigned to this host (TCP or HTTP, with a
/// private HAProxy) and reports every change of verdict as a `healthcheck.report` event. It
/// never restarts anything: the deploy controller decides.
#[derive(Parser)]
#[command(name = "healthcheck", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// This host's id in the state (`host.<uuid>`); it checks the containers whose
    /// `health.<uuid>.health_check_hosts` lists it. Default: the host name.
    #[arg(long, env = "CORRAL_HEALTHCHECK_HOST_UUID")]
    host_uuid: Option<String>,
    /// The haproxy binary (2.6 or newer).
    #[arg(long, env = "CORRAL_HEALTHCHECK_HAPROXY", default_value = "haproxy")]
    haproxy: PathBuf,
    /// Directory for HAProxy's configuration, sockets and server-state file.
    /// Default: <temp dir>/corral-healthcheck-<host uuid>.
    #[arg(long, env = "CORRAL_HEALTHCHECK_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// How often HAProxy's stats are read (e.g. 500ms).
    #[arg(long, env = "CORRAL_HEALTHCHECK_POLL_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How often the checker says it is alive; the controller drops a checker from the vote
    /// after a few missed heartbeats.
    #[arg(long, env = "CORRAL_HEALTHCHECK_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// At most one HAProxy reload per this interval; changes in between are folded together.
    #[arg(long, env = "CORRAL_HEALTHCHECK_MIN_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    min_reload_interval: Duration,
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9225";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _telemetry =
        telemetry::init("healthcheck", args.common.log_format, args.common.log.as_deref().unwrap_or("info"))?;
    let host_uuid = match args.host_uuid {
        Some(h) => h,
        None => std::env::var("HOSTNAME").context("--host-uuid is not set and neither is HOSTNAME")?,
    };
    event_bus::Key::new(event_bus::Family::Host, host_uuid.as_str()).context("--host-uuid")?;
    let metrics = Metrics::new();
    let check_metrics = CheckMetrics::new(&metrics);
    let bus = Bus::connect(
        &args.common.nats.options(&format!("healthcheck@{host_uuid}")),
        &args.common.env,
        args.common.nats.nats_connect_timeout,
    )
    .await?;
    let cache = StateCache::start(&bus, &metrics).await?;
    let events = Events::new(&bus, format!("healthcheck@{host_uuid}"));
    let status = SharedStatus::default();
    let readiness = admin::Readiness::new();
    let c = cache.clone();
    readiness.add("state cache", move || c.readiness());
    let st = status.clone();
    readiness.add("haproxy", move || {
        if st.lock().expect("status poisoned").haproxy_running {
            Ok(())
        } else {
            Err("HAProxy is not running".into())
        }
    });
    let admin_addr = args.common.admin_addr.unwrap_or(DEFAULT_ADMIN.parse().expect("valid default"));
    let _admin = admin::AdminServer::start(admin_addr, metrics, readiness).await.context("admin server")?;
    shutdown::on_hangup(|| tracing::info!("SIGHUP: nothing to reload, checks follow the state in NATS"));
    let settings = Settings {
        dir: args.run_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("corral-healthcheck-{host_uuid}"))),
        host_uuid,
        haproxy_bin: args.haproxy,
        poll: args.poll_interval,
        heartbeat: args.heartbeat_interval,
        min_reload_interval: args.min_reload_interval,
    };
    tokio::select! {
        r = checker::run(cache, events, settings, check_metrics, status) => r?,
        _ = shutdown::signal() => tracing::info!("shutting down"),
    }
    Ok(())
}
