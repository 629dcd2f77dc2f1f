//! `corral_healthcheck_*` metrics.

use event_bus::runtime::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct CheckMetrics {
    /// Containers configured in HAProxy.
    pub checks: Gauge,
    /// Containers assigned here that cannot be checked (no address, bad request line).
    pub skipped: Gauge,
    /// Verdict changes, by direction (`up`, `down`).
    pub transitions: Family<Labels, Counter>,
    /// From HAProxy's status change to the report stored on NATS.
    pub detect: Histogram,
    /// Successful reloads; refused configurations; failed reloads.
    pub reloads: Counter,
    pub rejected: Counter,
    pub reload_failures: Counter,
    /// Reports waiting for NATS.
    pub pending: Gauge,
    pub stat_errors: Counter,
}

impl CheckMetrics {
    pub fn new(m: &Metrics) -> CheckMetrics {
        let c = CheckMetrics {
            checks: Gauge::default(),
            skipped: Gauge::default(),
            transitions: Family::default(),
            detect: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            reloads: Counter::default(),
            rejected: Counter::default(),
            reload_failures: Counter::default(),
            pending: Gauge::default(),
            stat_errors: Counter::default(),
        };
        m.register("corral_healthcheck_checks", "Containers configured in this host's HAProxy", c.checks.clone());
        m.register(
            "corral_healthcheck_skipped",
            "Containers assigned to this host that cannot be checked (no address, bad request line)",
            c.skipped.clone(),
        );
        m.register(
            "corral_healthcheck_transitions",
            "Changes of verdict reported, by direction (up, down)",
            c.transitions.clone(),
        );
        m.register(
            "corral_healthcheck_detect_seconds",
            "Time from HAProxy's status change (its lastchg, whole seconds) to the report stored on NATS",
            c.detect.clone(),
        );
        m.register("corral_healthcheck_haproxy_reloads", "Hitless HAProxy reloads done", c.reloads.clone());
        m.register(
            "corral_healthcheck_haproxy_rejected_configs",
            "Configurations `haproxy -c` refused (the running one was kept)",
            c.rejected.clone(),
        );
        m.register(
            "corral_healthcheck_haproxy_reload_failures",
            "Reloads that did not bring up a new worker",
            c.reload_failures.clone(),
        );
        m.register("corral_healthcheck_pending_reports", "Reports waiting for NATS", c.pending.clone());
        m.register("corral_healthcheck_stat_errors", "Failed reads of HAProxy's stats socket", c.stat_errors.clone());
        c
    }
}
