//! The `corral_lb_` metrics. HAProxy's own metrics are served by HAProxy itself (its
//! Prometheus exporter, on `--haproxy-stats-addr`).

use event_bus::runtime::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct LbMetrics {
    /// Reloads by result (`ok`, `failed`).
    pub reloads: Family<Labels, Counter>,
    /// Server changes made through the runtime API (add, enable, disable, set addr, delete).
    pub runtime_updates: Counter,
    /// Distinct configurations refused.
    pub rejected: Counter,
    /// 1 while the newest configuration is refused and an older one serves.
    pub refused_now: Gauge,
    /// Servers taking traffic, all backends together.
    pub servers: Gauge,
    /// Time from a new state snapshot to HAProxy having it, by how (`runtime`, `reload`).
    pub apply_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl LbMetrics {
    pub fn new(m: &Metrics) -> LbMetrics {
        let l = LbMetrics {
            reloads: Family::default(),
            runtime_updates: Counter::default(),
            rejected: Counter::default(),
            refused_now: Gauge::default(),
            servers: Gauge::default(),
            apply_seconds: Family::new_with_constructor(buckets),
        };
        m.register("corral_lb_reloads", "HAProxy reloads, by result", l.reloads.clone());
        m.register(
            "corral_lb_runtime_updates",
            "Server changes applied through HAProxy's runtime API, without a reload",
            l.runtime_updates.clone(),
        );
        m.register("corral_lb_rejected_configs", "Load balancer configurations refused", l.rejected.clone());
        m.register(
            "corral_lb_config_refused",
            "1 while the newest configuration is refused and the previous one keeps serving",
            l.refused_now.clone(),
        );
        m.register("corral_lb_servers", "Servers taking traffic, all backends together", l.servers.clone());
        m.register(
            "corral_lb_apply_seconds",
            "Time to bring HAProxy in line with a new state, by method",
            l.apply_seconds.clone(),
        );
        l
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&vec![("result".into(), if ok { "ok" } else { "failed" }.into())]).inc();
    }

    pub fn applied(&self, how: &str, seconds: f64) {
        self.apply_seconds.get_or_create(&vec![("method".into(), how.into())]).observe(seconds);
    }
}
