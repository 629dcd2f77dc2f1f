use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use event_bus::runtime::{admin, args::CommonArgs, metrics::Metrics, shutdown, telemetry};
use event_bus::{Bus, StateCache};
use rancher_metadata::{server, source};

/// Rancher's metadata HTTP API (versions 2015-07-25, 2015-12-19, 2016-07-29, latest; text, JSON,
/// YAML; per-caller `self`; long-poll), answered from Corral's state in NATS or from an answers file.
#[derive(Parser)]
#[command(name = "rancher-metadata", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the metadata API (the original's `--listen`).
    #[arg(long, env = "CORRAL_METADATA_LISTEN", default_value = "0.0.0.0:80")]
    listen: SocketAddr,
    /// Serve this static answers file (JSON or YAML: version → client IP or `default` → tree)
    /// instead of NATS state; re-read on SIGHUP.
    #[arg(long, env = "CORRAL_METADATA_ANSWERS")]
    answers: Option<PathBuf>,
    /// Take the caller's IP from the X-Forwarded-For header (whole value) when present.
    #[arg(long, env = "CORRAL_METADATA_XFF")]
    xff: bool,
    /// Find callers on the host's network (whose address names no container) by the Docker
    /// container their socket was made in (the kernel's socket cgroup): they get their own `self`
    /// instead of only `/self/host`. Needs --host-uuid, the host's network and cgroup namespaces
    /// and its cgroup v2 hierarchy (as a container: `network_mode: host`, `cgroup: host`); off
    /// with --xff. Otherwise such callers stay unknown, as in Rancher.
    #[arg(long, env = "CORRAL_METADATA_HOST_NETWORK_SELF", default_value_t = true, action = clap::ArgAction::Set)]
    host_network_self: bool,
    /// The host this server answers for: `/self/host` of callers that are not known containers.
    #[arg(long, env = "CORRAL_HOST_UUID")]
    host_uuid: Option<String>,
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9221";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Answers are built on any thread: two arenas hold the same work (docs/benchmarks.md).
    event_bus::runtime::memory::limit_malloc_arenas(2);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _telemetry =
        telemetry::init("rancher-metadata", args.common.log_format, args.common.log.as_deref().unwrap_or("info"))?;
    let metrics = Metrics::new();
    // Off with an answers file (callers are addresses there), with --xff (a proxy on the host's
    // network would otherwise pass its own identity to everyone it forwards for) and without
    // --host-uuid (the Docker id must be one this host's agent reports).
    let local_callers = match (args.host_network_self, &args.answers, args.xff, &args.host_uuid) {
        (true, None, false, Some(_)) => rancher_metadata::local_caller::LocalCallers::detect()
            .inspect_err(|why| tracing::warn!("callers on the host's network stay unknown callers: {why}"))
            .ok(),
        (true, None, _, _) => {
            tracing::info!("callers on the host's network stay unknown callers (needs --host-uuid, and no --xff)");
            None
        }
        _ => None,
    };
    let app = server::App::new(args.xff, local_callers, &metrics);
    let readiness = admin::Readiness::new();

    let _cache = match &args.answers {
        Some(path) => {
            source::load_answers(&app, path).map_err(anyhow::Error::msg)?;
            let (app2, path2) = (app.clone(), path.clone());
            shutdown::on_hangup(move || {
                if let Err(e) = source::load_answers(&app2, &path2) {
                    tracing::error!(error = %e, "reload failed; still serving the previous answers");
                }
            });
            None
        }
        None => {
            // SIGHUP would end the process; with NATS there is nothing to reload.
            shutdown::on_hangup(|| tracing::info!("SIGHUP: nothing to reload, answers follow the state in NATS"));
            let bus = Bus::connect(
                &args.common.nats.options("rancher-metadata"),
                &args.common.env,
                args.common.nats.nats_connect_timeout,
            )
            .await?;
            let cache = StateCache::start(&bus, &metrics).await?;
            let c = cache.clone();
            readiness.add("state cache", move || c.readiness());
            tokio::spawn(source::follow_cache(app.clone(), cache.clone(), args.host_uuid.clone()));
            Some(cache)
        }
    };
    let a = app.clone();
    readiness.add("answers", move || if a.is_loaded() { Ok(()) } else { Err("no answers loaded yet".into()) });
    let admin_addr = args.common.admin_addr.unwrap_or(DEFAULT_ADMIN.parse().expect("valid default"));
    let _admin = admin::AdminServer::start(admin_addr, metrics, readiness).await.context("admin server")?;

    let listener = listen(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "metadata API listening");
    server::serve(listener, app, shutdown::signal()).await;
    Ok(())
}

/// A listener with a deep accept queue: thousands of long-poll clients reconnect at once after a
/// change, and the default backlog would drop some of their connections.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}
