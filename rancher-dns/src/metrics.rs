//! `corral_dns_*` metrics. Counters for the common (type, rcode) pairs are looked up once, so the
//! hot path only increments an atomic.

use std::time::Duration;

use event_bus::runtime::metrics::Metrics;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

type Labels = Vec<(&'static str, String)>;

const TYPES: [RecordType; 9] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::TXT,
    RecordType::CNAME,
    RecordType::SOA,
    RecordType::MX,
    RecordType::ANY,
];
const RCODES: [ResponseCode; 6] = [
    ResponseCode::NoError,
    ResponseCode::NXDomain,
    ResponseCode::ServFail,
    ResponseCode::FormErr,
    ResponseCode::NotImp,
    ResponseCode::Refused,
];

/// Where an answer came from, for the latency histogram.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Local,
    Forwarded,
    Rejected,
}

#[derive(Clone)]
pub struct DnsMetrics {
    queries: Family<Labels, Counter>,
    fast: Vec<Vec<Counter>>,
    answer: [Histogram; 3],
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    upstream_latency: Family<Labels, Histogram>,
    upstream_failures: Family<Labels, Counter>,
    pub names: Gauge,
    pub generations: Counter,
    pub rebuild: Histogram,
}

fn latency_buckets() -> Histogram {
    // 10 µs … ~5 s
    Histogram::new(exponential_buckets(0.00001, 2.5, 15))
}

impl DnsMetrics {
    pub fn new(metrics: &Metrics) -> DnsMetrics {
        let queries: Family<Labels, Counter> = Family::default();
        let fast = TYPES
            .iter()
            .map(|t| {
                RCODES
                    .iter()
                    .map(|r| queries.get_or_create(&vec![("type", t.to_string()), ("rcode", rcode_name(*r))]).clone())
                    .collect()
            })
            .collect();
        let answer_family: Family<Labels, Histogram> = Family::new_with_constructor(latency_buckets);
        let answer = ["local", "forwarded", "rejected"]
            .map(|s| answer_family.get_or_create(&vec![("source", s.into())]).clone());
        let m = DnsMetrics {
            queries,
            fast,
            answer,
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_entries: Gauge::default(),
            upstream_latency: Family::new_with_constructor(latency_buckets),
            upstream_failures: Family::default(),
            names: Gauge::default(),
            generations: Counter::default(),
            rebuild: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        };
        metrics.register(
            "corral_dns_queries",
            "DNS queries answered, by query type and response code",
            m.queries.clone(),
        );
        metrics.register(
            "corral_dns_answer_duration_seconds",
            "Time from receiving a query to handing its answer to the socket, by where the answer came from",
            answer_family,
        );
        metrics.register("corral_dns_cache_hits", "Forwarded questions answered from the cache", m.cache_hits.clone());
        metrics.register("corral_dns_cache_misses", "Forwarded questions that went upstream", m.cache_misses.clone());
        metrics.register("corral_dns_cache_entries", "Entries in the forwarding cache", m.cache_entries.clone());
        metrics.register(
            "corral_dns_upstream_duration_seconds",
            "Upstream exchange time, by upstream",
            m.upstream_latency.clone(),
        );
        metrics.register(
            "corral_dns_upstream_failures",
            "Upstream tries that failed, by upstream and reason (timeout, error, servfail, refused, formerr, notimp)",
            m.upstream_failures.clone(),
        );
        metrics.register(
            "corral_dns_names",
            "Names in the current generation of answers (shared view)",
            m.names.clone(),
        );
        metrics.register("corral_dns_generations", "Generations of answers swapped in", m.generations.clone());
        metrics.register(
            "corral_dns_rebuild_duration_seconds",
            "Time to build a generation of answers from a state snapshot",
            m.rebuild.clone(),
        );
        m
    }

    pub fn query(&self, qtype: RecordType, rcode: ResponseCode, source: Source, took: Duration) {
        let t = TYPES.iter().position(|x| *x == qtype);
        let r = RCODES.iter().position(|x| *x == rcode);
        match (t, r) {
            (Some(t), Some(r)) => {
                self.fast[t][r].inc();
            }
            _ => {
                self.queries.get_or_create(&vec![("type", qtype.to_string()), ("rcode", rcode_name(rcode))]).inc();
            }
        }
        self.answer[source as usize].observe(took.as_secs_f64());
    }

    pub fn upstream(&self, upstream: &std::net::SocketAddr, took: Duration) {
        self.upstream_latency.get_or_create(&vec![("upstream", upstream.to_string())]).observe(took.as_secs_f64());
    }

    pub fn upstream_failure(&self, upstream: &std::net::SocketAddr, reason: &'static str) {
        self.upstream_failures
            .get_or_create(&vec![("upstream", upstream.to_string()), ("reason", reason.to_string())])
            .inc();
    }
}

fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => other.to_string().to_ascii_uppercase(),
    }
}
