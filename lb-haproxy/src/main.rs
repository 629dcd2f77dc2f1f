use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use event_bus::runtime::{admin, args::CommonArgs, metrics::Metrics, shutdown, telemetry};
use event_bus::{Bus, Events, StateCache, StateStore};
use lb_haproxy::apply::Controller;
use lb_haproxy::metrics::LbMetrics;
use lb_haproxy::render::Settings;
use lb_haproxy::report::{Instance, Reporter};

/// Rancher's built-in load balancer: keeps a real HAProxy (master-worker) in line with one
/// load balancer service's `lb_config` and the running, healthy containers it targets.
/// Membership changes go through HAProxy's runtime API; new ports, rules and certificates
/// through a checked, hitless reload. A configuration HAProxy would refuse is refused here
/// and the previous one keeps serving.
#[derive(Parser)]
#[command(name = "lb-haproxy", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The load balancer service to serve, as `stack/service`.
    #[arg(long, env = "CORRAL_LB_SERVICE", value_parser = parse_service)]
    service: String,
    /// The HAProxy binary (2.6 or newer).
    #[arg(long, env = "CORRAL_LB_HAPROXY_BIN", default_value = "haproxy")]
    haproxy_bin: PathBuf,
    /// Directory for haproxy.cfg, the master and admin sockets, the server-state file and the
    /// certificates (created with mode 0700). Default: `.corral/lb/<stack>_<service>` under the
    /// working directory.
    #[arg(long, env = "CORRAL_LB_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Address the port rules' source ports are bound on.
    #[arg(long, env = "CORRAL_LB_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Where HAProxy itself serves its Prometheus metrics (`/metrics`) and stats page
    /// (`/stats`). Off unless given.
    #[arg(long, env = "CORRAL_LB_HAPROXY_STATS_ADDR")]
    haproxy_stats_addr: Option<SocketAddr>,
    /// This host's uuid, for `io.rancher.lb_service.target=only-local|prefer-local`. Without it
    /// every target counts as local.
    #[arg(long, env = "CORRAL_HOST_UUID")]
    host_uuid: Option<String>,
    /// The load balancer container this instance runs in (the deploy agent passes it). It is
    /// written into `lbstatus.<instance>` so a reader can tell a stale key (its container gone)
    /// and is the default instance name.
    #[arg(long, env = "CORRAL_CONTAINER_UUID", value_parser = parse_instance)]
    container_uuid: Option<String>,
    /// This instance's name in the state: it writes `lbstatus.<instance>` (whether HAProxy
    /// serves, why the newest configuration was refused) and deletes it when it stops gracefully.
    /// Default: `--container-uuid`, else `<host uuid or hostname>_<stack>_<service>` (give each of
    /// two instances of one service on one host its own).
    #[arg(long, env = "CORRAL_LB_INSTANCE", value_parser = parse_instance)]
    instance: Option<String>,
}

fn parse_instance(s: &str) -> Result<String, String> {
    event_bus::Key::new(event_bus::Family::LbStatus, s)
        .map(|k| k.id)
        .map_err(|_| "expected 1-200 characters of A-Z a-z 0-9 _ - =".into())
}

fn parse_service(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/') => Ok(s.to_string()),
        _ => Err("expected `stack/service`".into()),
    }
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9226";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _telemetry =
        telemetry::init("lb-haproxy", args.common.log_format, args.common.log.as_deref().unwrap_or("info"))?;
    let metrics = Metrics::new();
    let lb_metrics = LbMetrics::new(&metrics);
    let run_dir = match args.run_dir {
        Some(d) => d,
        None => PathBuf::from(".corral/lb").join(args.service.replace('/', "_")),
    };
    let run_dir = std::path::absolute(&run_dir).with_context(|| format!("run dir {}", run_dir.display()))?;
    lb_haproxy::certs::private_dir(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let instance = args.instance.clone().or(args.container_uuid.clone()).unwrap_or_else(|| {
        let host = args.host_uuid.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
        });
        lb_haproxy::report::default_instance(&host, &args.service)
    });
    let settings = Settings {
        run_dir,
        bind_address: args.bind_address,
        stats_addr: args.haproxy_stats_addr,
        host_uuid: args.host_uuid,
    };
    tracing::info!(service = %args.service, %instance, run_dir = %settings.run_dir.display(), "starting");

    let bus =
        Bus::connect(&args.common.nats.options("lb-haproxy"), &args.common.env, args.common.nats.nats_connect_timeout)
            .await?;
    let cache = StateCache::start(&bus, &metrics).await?;
    let events = Events::new(&bus, format!("lb-haproxy@{}", args.service));
    let store = StateStore::open(&bus).await?;
    let reporter = Reporter::start(
        store,
        Instance { id: instance, host_uuid: settings.host_uuid.clone(), container_uuid: args.container_uuid.clone() },
    );
    let controller =
        Controller::new(settings, args.haproxy_bin, args.service, lb_metrics, Some(events)).with_reporter(reporter);

    let readiness = admin::Readiness::new();
    let c = cache.clone();
    readiness.add("state cache", move || c.readiness());
    let status = controller.status();
    readiness.add("haproxy", move || {
        let s = status.read().expect("status lock");
        match (&s.waiting, s.serving) {
            (_, true) => Ok(()),
            (Some(why), false) => Err(why.clone()),
            (None, false) => Err("HAProxy is not running".into()),
        }
    });
    let admin_addr = args.common.admin_addr.unwrap_or(DEFAULT_ADMIN.parse().expect("valid default"));
    let _admin = admin::AdminServer::start(admin_addr, metrics, readiness).await.context("admin server")?;
    shutdown::on_hangup(|| tracing::info!("SIGHUP: nothing to reload, the configuration follows the state in NATS"));
    controller.run(cache, shutdown::signal()).await
}
