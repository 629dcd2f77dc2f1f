use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use event_bus::runtime::{admin, args::CommonArgs, metrics::Metrics, shutdown, telemetry};
use event_bus::{Bus, StateCache};
use rancher_dns::forward::{resolv_conf_nameservers, Forwarder, Guard};
use rancher_dns::metrics::DnsMetrics;
use rancher_dns::naming::{parse_upstream, NamingConfig};
use rancher_dns::server::{self, Handler, Shared};
use rancher_dns::source;

/// Rancher's service-discovery DNS (`<service>.<stack>.rancher.internal`, per-caller search and
/// links, SRV and PTR), answered from Corral's state in NATS or from an answers file; other
/// names are forwarded to upstream resolvers with a TTL-honouring cache.
#[derive(Parser)]
#[command(name = "rancher-dns", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to answer on, UDP and TCP (Rancher ran it on 169.254.169.250:53).
    #[arg(long, env = "CORRAL_DNS_LISTEN", default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// TTL of local answers, in seconds (also the SOA's negative-caching TTL). Rancher's catalog
    /// ran with 1; the original binary's default was 600.
    #[arg(long, env = "CORRAL_DNS_TTL", default_value_t = 1)]
    ttl: u32,
    /// Time allowed for each upstream try (e.g. `2`, `2s`, `500ms`); then the next upstream.
    #[arg(long, env = "CORRAL_DNS_RECURSER_TIMEOUT", default_value = "2", value_parser = parse_seconds)]
    recurser_timeout: Duration,
    /// Apply server-side search suffixes only to names with fewer dots than this; 0 = always.
    #[arg(long, env = "CORRAL_DNS_NDOTS", default_value_t = 0)]
    ndots: u32,
    /// Entries in the cache of forwarded answers (bounded; the soonest to expire goes first).
    #[arg(long, env = "CORRAL_DNS_CACHE_CAPACITY", default_value_t = 10_000)]
    cache_capacity: usize,
    /// Addresses of `rancher-metadata.rancher.internal` (comma-separated IPv4).
    #[arg(long, env = "CORRAL_DNS_RANCHER_METADATA_ANSWER", value_delimiter = ',', default_value = "169.254.169.250")]
    rancher_metadata_answer: Vec<Ipv4Addr>,
    /// Never forward to these addresses (comma-separated); loopback resolvers on port 53 and this
    /// server's own address are always refused, except loopback ones named in --upstream.
    #[arg(long, env = "CORRAL_DNS_NEVER_RECURSE_TO", value_delimiter = ',', default_value = "169.254.169.250")]
    never_recurse_to: Vec<std::net::IpAddr>,
    /// Default upstream resolvers (comma-separated `ip` or `ip:port`), for callers without their
    /// own `dns` servers. Default: the nameservers of --resolv-conf.
    #[arg(long, env = "CORRAL_DNS_UPSTREAM", value_delimiter = ',')]
    upstream: Vec<String>,
    /// Where to read default upstreams when --upstream is not given.
    #[arg(long, env = "CORRAL_DNS_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Serve this answers file (the original answers.json/yaml format: client IP or `default` →
    /// records, search, recurse) instead of NATS state; re-read on SIGHUP.
    #[arg(long, env = "CORRAL_DNS_ANSWERS")]
    answers: Option<PathBuf>,
    /// UDP sockets sharing the port (SO_REUSEPORT); default: one per CPU.
    #[arg(long, env = "CORRAL_DNS_UDP_SOCKETS")]
    udp_sockets: Option<usize>,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        Ok(_) => Err("must be a positive number of seconds".into()),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("expected seconds or a duration like 500ms: {e}")),
    }
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9222";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Answers are built on any thread: two arenas hold the same work (docs/benchmarks.md).
    event_bus::runtime::memory::limit_malloc_arenas(2);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _telemetry =
        telemetry::init("rancher-dns", args.common.log_format, args.common.log.as_deref().unwrap_or("info"))?;
    let metrics = Metrics::new();
    let dns_metrics = DnsMetrics::new(&metrics);

    let guard = Guard { never: args.never_recurse_to.iter().copied().collect(), own: vec![args.listen] };
    let default_upstreams = if args.upstream.is_empty() {
        match std::fs::read_to_string(&args.resolv_conf) {
            Ok(text) => guard.filter(&resolv_conf_nameservers(&text)),
            Err(e) => {
                tracing::warn!(file = %args.resolv_conf.display(), error = %e, "cannot read resolv.conf");
                Vec::new()
            }
        }
    } else {
        let mut list = Vec::new();
        for u in &args.upstream {
            list.push(
                parse_upstream(u)
                    .with_context(|| format!("--upstream {u:?}: expected an IP address, optionally with :port"))?,
            );
        }
        guard.filter_explicit(&list)
    };
    if default_upstreams.is_empty() {
        tracing::warn!("no default upstream resolver: names outside the local zones get SERVFAIL unless the caller has its own `dns` servers");
    } else {
        tracing::info!(upstreams = ?default_upstreams, "default upstream resolvers");
    }

    let forwarder = Forwarder::new(args.recurser_timeout, args.cache_capacity, dns_metrics.clone());
    let shared = Shared::new(forwarder, default_upstreams, guard, args.ndots, dns_metrics);
    let readiness = admin::Readiness::new();

    let _cache = match &args.answers {
        Some(path) => {
            source::load_answers(&shared, path, args.ttl)?;
            let (s, path, ttl) = (shared.clone(), path.clone(), args.ttl);
            shutdown::on_hangup(move || {
                if let Err(e) = source::load_answers(&s, &path, ttl) {
                    tracing::error!(error = %e, "reload failed; still serving the previous answers");
                }
            });
            None
        }
        None => {
            let bus = Bus::connect(
                &args.common.nats.options("rancher-dns"),
                &args.common.env,
                args.common.nats.nats_connect_timeout,
            )
            .await?;
            let cache = StateCache::start(&bus, &metrics).await?;
            let c = cache.clone();
            readiness.add("state cache", move || c.readiness());
            // With NATS the answers follow the state by themselves: nothing to reload.
            shutdown::on_hangup(|| tracing::info!("SIGHUP: nothing to reload, answers follow the state in NATS"));
            let cfg = NamingConfig { ttl: args.ttl, metadata_answer: args.rancher_metadata_answer.clone() };
            tokio::spawn(source::follow_cache(shared.clone(), cache.clone(), cfg));
            Some(cache)
        }
    };
    let s = shared.clone();
    readiness.add("answers", move || if s.is_loaded() { Ok(()) } else { Err("no answers loaded yet".into()) });
    let admin_addr = args.common.admin_addr.unwrap_or(DEFAULT_ADMIN.parse().expect("valid default"));
    let _admin = admin::AdminServer::start(admin_addr, metrics, readiness).await.context("admin server")?;

    let sockets =
        args.udp_sockets.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let (mut server, local) = server::bind(args.listen, Handler(shared), sockets)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %local, udp_sockets = sockets, "DNS listening on UDP and TCP");
    shutdown::signal().await;
    tracing::info!("shutting down");
    server.shutdown_gracefully().await.ok();
    Ok(())
}
