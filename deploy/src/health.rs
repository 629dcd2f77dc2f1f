//! Health decisions: checker reports (`healthcheck.report`) → `health.<uuid>` records → the
//! service's strategy. Runs beside the controller and writes only while it holds the lease.
//!
//! **Who checks what.** For every container with a `health_check` this task writes the checker
//! hosts into `health.<uuid>.health_check_hosts`: up to N (default 3) live hosts not labelled
//! `io.rancher.host.healthcheck.deploy_strategy=skip`, the container's own host first (as late
//! Rancher 1.6 did), then others ranked by a hash of (container, host), so the choice is
//! stable and the same on every controller. Hosts keep their assignment while they live.
//!
//! **The vote.** A checker is *live* while its heartbeats arrive (within `checker_timeout`).
//! Only live checkers assigned to the container, reporting on its current start count, vote:
//! - any live vote `up` → `healthy` (one passing checker suffices, from any state);
//! - no live vote `up`, at least one live vote `down`, state `healthy` → `unhealthy`;
//! - no live vote at all → no change (a dead checker is dropped, never counted as down);
//! - `initializing`/`reinitializing` ignore `down` votes and end at their timeout as
//!   `unhealthy` (Rancher removed the container there; here the strategy decides).
//!
//! A container appears `initializing`; a restart (higher start count) of a `healthy` one makes it
//! `reinitializing`; an `unhealthy` one stays `unhealthy` until a checker passes it.
//!
//! **Strategies**, per service: `none` never acts; `recreate` replaces unhealthy units;
//! `recreateOnQuorum(Q)` only while at least Q units are `healthy`. Replacing a unit means
//! deleting its container records: placement then sees the service short of its scale and
//! places a new unit (new names, new create index), and the agents remove the old containers —
//! the controller's ordinary path, nothing special. At most one replacement per service per
//! `recreate_interval`; a service that needed `recreate_limit` replacements within
//! `recreate_window` gets no more (its unhealthy containers are marked `remediation: damped`)
//! until the window has room again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_bus::model::{
    CheckerState, Container, ContainerHealth, HealthReport, Strategy, HEARTBEAT_EVENT, REPORT_EVENT, STATE_REQUEST,
};
use event_bus::{Events, Family, Key, Snapshot, StateCache, StateStore};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;

use crate::history::now_ms;

pub const SKIP_LABEL: &str = "io.rancher.host.healthcheck.deploy_strategy";

pub const INITIALIZING: &str = "initializing";
pub const REINITIALIZING: &str = "reinitializing";
pub const HEALTHY: &str = "healthy";
pub const UNHEALTHY: &str = "unhealthy";

/// Rancher's states for the containers of a service being upgraded: what is written while the
/// service is `upgrading` or `rolling-back` (rancher-dns and lb-haproxy count
/// `updating-healthy` as healthy). The vote works on the plain states.
pub const UPDATING_HEALTHY: &str = "updating-healthy";
pub const UPDATING_UNHEALTHY: &str = "updating-unhealthy";

/// The plain state behind a written one (`updating-healthy` → `healthy`).
pub fn plain(state: &str) -> &str {
    match state {
        UPDATING_HEALTHY => HEALTHY,
        UPDATING_UNHEALTHY => UNHEALTHY,
        s => s,
    }
}

/// Whether a written state counts as healthy.
pub fn is_healthy(state: &str) -> bool {
    plain(state) == HEALTHY
}

/// `deploy controller` flags for health decisions.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// Checker hosts per container (the container's own host plus others).
    #[arg(long, env = "CORRAL_DEPLOY_HEALTH_CHECKERS", default_value_t = 3)]
    pub health_checkers: usize,
    /// A checker whose heartbeat is older than this is dropped from the vote.
    #[arg(long, env = "CORRAL_DEPLOY_HEALTH_CHECKER_TIMEOUT", default_value = "8s", value_parser = humantime::parse_duration)]
    pub health_checker_timeout: Duration,
    /// At most one unhealthy unit of a service is replaced per this interval.
    #[arg(long, env = "CORRAL_DEPLOY_HEALTH_RECREATE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub health_recreate_interval: Duration,
    /// Replacements of one service allowed within --health-recreate-window; beyond, unhealthy
    /// containers are marked `damped` and kept.
    #[arg(long, env = "CORRAL_DEPLOY_HEALTH_RECREATE_LIMIT", default_value_t = 3)]
    pub health_recreate_limit: usize,
    /// The window of --health-recreate-limit.
    #[arg(long, env = "CORRAL_DEPLOY_HEALTH_RECREATE_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub health_recreate_window: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub checkers: usize,
    pub checker_timeout: Duration,
    pub recreate_interval: Duration,
    pub recreate_limit: usize,
    pub recreate_window: Duration,
    /// A host whose agent heartbeat is older than this is not given checks.
    pub host_timeout: Duration,
}

impl HealthArgs {
    pub fn settings(&self, host_timeout: Duration) -> Settings {
        Settings {
            checkers: self.health_checkers.max(1),
            checker_timeout: self.health_checker_timeout,
            recreate_interval: self.health_recreate_interval,
            recreate_limit: self.health_recreate_limit.max(1),
            recreate_window: self.health_recreate_window,
            host_timeout,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts.

/// FNV-1a: a stable hash (std's is randomly seeded per process).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// The checker hosts of a container: the ones it had that are still `eligible`, its own host
/// first when eligible, then eligible hosts by rendezvous hash, `n` at most.
pub fn assign(
    container_uuid: &str,
    own: Option<&str>,
    previous: &[String],
    eligible: &[String],
    n: usize,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(n);
    if let Some(own) = own.filter(|o| eligible.iter().any(|e| e == o)) {
        out.push(own.to_string());
    }
    for p in previous {
        if eligible.contains(p) && !out.contains(p) {
            out.push(p.clone());
        }
    }
    let mut ranked: Vec<&String> = eligible.iter().filter(|e| !out.contains(e)).collect();
    ranked.sort_by_key(|h| std::cmp::Reverse(fnv(&[container_uuid, h])));
    out.extend(ranked.into_iter().cloned());
    out.truncate(n);
    out
}

/// One checker's latest verdict on one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    pub up: bool,
    pub detail: String,
    pub start_count: u64,
    pub boot: String,
    pub seq: u64,
}

impl From<&HealthReport> for Vote {
    fn from(r: &HealthReport) -> Vote {
        Vote { up: r.up, detail: r.detail.clone(), start_count: r.start_count, boot: r.boot.clone(), seq: r.seq }
    }
}

/// What the verdict on one container is computed from.
pub struct Inputs<'a> {
    pub uuid: &'a str,
    pub start_count: u64,
    pub hosts: Vec<String>,
    /// Host → its latest vote on this container.
    pub votes: Option<&'a BTreeMap<String, Vote>>,
    pub live_checkers: &'a BTreeSet<String>,
    pub now_ms: u64,
    pub initializing_timeout_ms: u64,
    pub reinitializing_timeout_ms: u64,
}

fn extra_u64(h: &ContainerHealth, key: &str) -> Option<u64> {
    h.extra.get(key).and_then(|v| v.as_u64())
}

/// When the state last changed (Rancher's `health_updated`), Unix ms.
pub fn updated_ms(h: &ContainerHealth) -> Option<u64> {
    extra_u64(h, "health_updated_ms")
}

/// The next health record of a container (the vote rule in the module docs).
pub fn next_health(prev: Option<&ContainerHealth>, i: &Inputs) -> ContainerHealth {
    let (mut state, mut updated, mut reason) = match prev {
        None => (INITIALIZING.to_string(), i.now_ms, "new container".to_string()),
        Some(p) => (
            plain(&p.health_state).to_string(),
            updated_ms(p).unwrap_or(i.now_ms),
            p.extra.get("reason").and_then(|v| v.as_str()).unwrap_or("").to_string(),
        ),
    };
    let set = |s: &str, why: String, state: &mut String, updated: &mut u64, reason: &mut String| {
        if state != s {
            *state = s.to_string();
            *updated = i.now_ms;
        }
        *reason = why;
    };
    let prev_start = prev.and_then(|p| extra_u64(p, "start_count")).unwrap_or(i.start_count);
    if i.start_count > prev_start && state == HEALTHY {
        set(REINITIALIZING, "restarted".into(), &mut state, &mut updated, &mut reason);
    }
    let live: Vec<(&String, &Vote)> = i
        .votes
        .into_iter()
        .flatten()
        .filter(|(h, v)| i.hosts.contains(h) && i.live_checkers.contains(*h) && v.start_count == i.start_count)
        .collect();
    if let Some((h, _)) = live.iter().find(|(_, v)| v.up) {
        set(HEALTHY, format!("passing on {h}"), &mut state, &mut updated, &mut reason);
    } else if !live.is_empty() && state == HEALTHY {
        let detail: Vec<String> = live.iter().map(|(h, v)| format!("{h}: {}", v.detail)).collect();
        set(
            UNHEALTHY,
            format!("failing on every live checker ({})", detail.join(", ")),
            &mut state,
            &mut updated,
            &mut reason,
        );
    } else if state == INITIALIZING && i.now_ms.saturating_sub(updated) >= i.initializing_timeout_ms {
        set(UNHEALTHY, "initializing_timeout".into(), &mut state, &mut updated, &mut reason);
    } else if state == REINITIALIZING && i.now_ms.saturating_sub(updated) >= i.reinitializing_timeout_ms {
        set(UNHEALTHY, "reinitializing_timeout".into(), &mut state, &mut updated, &mut reason);
    }
    let mut reports = BTreeMap::new();
    let mut details = serde_json::Map::new();
    for (h, v) in i.votes.into_iter().flatten() {
        if i.hosts.contains(h) && v.start_count == i.start_count {
            reports.insert(h.clone(), if v.up { HEALTHY.to_string() } else { UNHEALTHY.to_string() });
            details.insert(h.clone(), v.detail.clone().into());
        }
    }
    let mut extra = prev.map(|p| p.extra.clone()).unwrap_or_default();
    extra.insert("health_updated_ms".into(), updated.into());
    extra.insert("start_count".into(), i.start_count.into());
    extra.insert("reason".into(), reason.into());
    extra.insert("checks".into(), details.into());
    if state != UNHEALTHY {
        extra.remove("remediation");
    }
    ContainerHealth {
        uuid: i.uuid.to_string(),
        health_state: state,
        health_check_hosts: i.hosts.clone(),
        reports,
        extra,
    }
}

/// A deployment unit: a primary and its sidekicks.
type Unit<'a> = Vec<&'a Arc<Container>>;

/// Replacements made per service, for the rate limit and flap damping.
#[derive(Debug, Default, Clone)]
pub struct Remediations {
    pub by_service: HashMap<String, Vec<u64>>,
}

/// What the strategies decide in one pass.
#[derive(Debug, Default, PartialEq)]
pub struct Remedy {
    /// Units to replace: the container uuids of each (the unhealthy container's whole unit).
    pub recreate: Vec<Vec<String>>,
    /// Unhealthy containers kept, and why (`none`, `quorum 1 of 2`, `damped …`).
    pub kept: BTreeMap<String, String>,
}

/// Applies each service's strategy to its unhealthy containers. `health` gives the state a
/// container has now (after this pass's votes). Records what it replaces in `book`.
pub fn remedy(
    snap: &Snapshot,
    health: &dyn Fn(&str) -> Option<String>,
    s: &Settings,
    book: &mut Remediations,
    now_ms: u64,
) -> Remedy {
    let mut out = Remedy::default();
    let mut services: BTreeSet<&str> = BTreeSet::new();
    for c in snap.containers() {
        if c.health_check.is_some() && c.desired_state == "running" {
            if let Some(svc) = c.service_uuid.as_deref() {
                services.insert(svc);
            }
        }
    }
    for svc in services {
        // Units: service index → its live containers.
        let mut units: BTreeMap<String, Unit> = BTreeMap::new();
        for c in snap.containers_of_service(svc).filter(|c| c.desired_state == "running") {
            units.entry(c.service_index.clone().unwrap_or_default()).or_default().push(c);
        }
        let state_of = |c: &Container| c.health_check.as_ref().map(|_| health(&c.uuid).unwrap_or_default());
        let healthy_units =
            units.values().filter(|u| u.iter().all(|c| state_of(c).is_none_or(|st| st == HEALTHY))).count();
        // Each unhealthy unit with the container that makes it so, oldest first.
        let mut sick: Vec<(&Unit, &Arc<Container>)> = units
            .values()
            .filter_map(|u| u.iter().find(|c| state_of(c).as_deref() == Some(UNHEALTHY)).map(|bad| (u, *bad)))
            .collect();
        sick.sort_by_key(|(_, c)| c.create_index);
        let history = book.by_service.entry(svc.to_string()).or_default();
        history.retain(|t| now_ms.saturating_sub(*t) < s.recreate_window.as_millis() as u64);
        for (unit, bad) in sick {
            let strategy = bad.health_check.as_ref().map(|h| h.strategy_kind()).unwrap_or(Strategy::Recreate);
            let why = match strategy {
                Strategy::None => Some("strategy none".to_string()),
                Strategy::RecreateOnQuorum(q) if (healthy_units as u32) < q => {
                    Some(format!("quorum: {healthy_units} healthy, {q} needed"))
                }
                _ if history.len() >= s.recreate_limit => Some(format!(
                    "damped: {} replacements of this service within {}",
                    history.len(),
                    humantime::format_duration(s.recreate_window)
                )),
                _ if history
                    .last()
                    .is_some_and(|t| now_ms.saturating_sub(*t) < s.recreate_interval.as_millis() as u64) =>
                {
                    Some("waiting: one replacement per service per interval".to_string())
                }
                _ => None,
            };
            match why {
                Some(why) => {
                    out.kept.insert(bad.uuid.clone(), why);
                }
                None => {
                    history.push(now_ms);
                    let mut uuids: Vec<String> = unit.iter().map(|c| c.uuid.clone()).collect();
                    uuids.sort();
                    out.recreate.push(uuids);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The task.

#[derive(Clone)]
struct HealthMetrics {
    recreations: Counter,
    kept: Counter,
    transitions: prometheus_client::metrics::family::Family<Vec<(&'static str, String)>, Counter>,
    resyncs: Counter,
}

impl HealthMetrics {
    fn new(m: &event_bus::runtime::metrics::Metrics) -> Self {
        let h = HealthMetrics {
            recreations: Counter::default(),
            kept: Counter::default(),
            transitions: Default::default(),
            resyncs: Counter::default(),
        };
        m.register("corral_deploy_health_recreations", "Unhealthy units replaced by a strategy", h.recreations.clone());
        m.register(
            "corral_deploy_health_kept_unhealthy",
            "Decisions to keep an unhealthy container (strategy none, quorum, damping, rate limit)",
            h.kept.clone(),
        );
        m.register(
            "corral_deploy_health_transitions",
            "Health state changes written, by new state",
            h.transitions.clone(),
        );
        m.register(
            "corral_deploy_health_checker_resyncs",
            "Times a checker's whole view was asked for (new checker, or reports missed)",
            h.resyncs.clone(),
        );
        h
    }
}

struct Checker {
    boot: String,
    seq: u64,
    last_heartbeat: Instant,
}

/// The votes and checkers heard from (kept while standing by too, so a takeover starts warm).
#[derive(Default)]
struct Ears {
    votes: HashMap<String, BTreeMap<String, Vote>>,
    checkers: HashMap<String, Checker>,
}

impl Ears {
    fn report(&mut self, r: &HealthReport) {
        let c = self.checkers.entry(r.host_uuid.clone()).or_insert_with(|| Checker {
            boot: r.boot.clone(),
            seq: 0,
            last_heartbeat: Instant::now() - Duration::from_secs(3600),
        });
        if c.boot == r.boot {
            c.seq = c.seq.max(r.seq);
        }
        let votes = self.votes.entry(r.container_uuid.clone()).or_default();
        let newer = votes.get(&r.host_uuid).is_none_or(|v| v.boot != r.boot || v.seq < r.seq);
        if newer {
            votes.insert(r.host_uuid.clone(), Vote::from(r));
        }
    }

    /// A heartbeat; true when the checker's whole view must be asked for.
    fn heartbeat(&mut self, st: &CheckerState) -> bool {
        match self.checkers.get_mut(&st.host_uuid) {
            Some(c) if c.boot == st.boot && c.seq >= st.seq => {
                c.last_heartbeat = Instant::now();
                false
            }
            _ => true,
        }
    }

    /// A checker's whole view replaces what was known from it.
    fn resync(&mut self, st: &CheckerState) {
        for votes in self.votes.values_mut() {
            votes.remove(&st.host_uuid);
        }
        self.checkers
            .insert(st.host_uuid.clone(), Checker { boot: st.boot.clone(), seq: 0, last_heartbeat: Instant::now() });
        for r in &st.reports {
            self.report(r);
        }
        if let Some(c) = self.checkers.get_mut(&st.host_uuid) {
            c.seq = c.seq.max(st.seq);
        }
    }

    fn live(&self, timeout: Duration) -> BTreeSet<String> {
        self.checkers.iter().filter(|(_, c)| c.last_heartbeat.elapsed() <= timeout).map(|(h, _)| h.clone()).collect()
    }
}

/// Which hosts are alive by this controller's clock (a heartbeat that stopped changing).
#[derive(Default)]
struct HostClock {
    seen: HashMap<String, (Option<u64>, Instant)>,
}

impl HostClock {
    fn eligible(&mut self, snap: &Snapshot, timeout: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut out: Vec<String> = snap
            .hosts()
            .filter(|h| h.state == "active" && h.agent_state == "active")
            .filter(|h| h.labels.get(SKIP_LABEL).is_none_or(|v| v != "skip"))
            .filter(|h| {
                let e = self.seen.entry(h.uuid.clone()).or_insert((h.heartbeat_ms, now));
                if e.0 != h.heartbeat_ms {
                    *e = (h.heartbeat_ms, now);
                }
                h.heartbeat_ms.is_none() || now.duration_since(e.1) <= timeout
            })
            .map(|h| h.uuid.clone())
            .collect();
        out.sort();
        out
    }
}

/// Starts the health task (metrics are registered now). It listens all the time and writes only
/// while `active` says this controller holds the lease.
pub fn spawn(
    store: StateStore,
    cache: StateCache,
    events: Events,
    settings: Settings,
    active: tokio::sync::watch::Receiver<bool>,
    metrics: &event_bus::runtime::metrics::Metrics,
) -> tokio::task::JoinHandle<()> {
    let m = HealthMetrics::new(metrics);
    tokio::spawn(run(store, cache, events, settings, active, m))
}

async fn run(
    store: StateStore,
    cache: StateCache,
    events: Events,
    s: Settings,
    active: tokio::sync::watch::Receiver<bool>,
    m: HealthMetrics,
) {
    let mut heard = loop {
        match events.subscribe("healthcheck.>").await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(error = %e, "health: cannot subscribe to checker reports yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut ears = Ears::default();
    let mut hosts = HostClock::default();
    let mut book = Remediations::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = heard.next() => {
                let Some(msg) = msg else { return };
                let ev = &msg.event;
                if ev.name == REPORT_EVENT {
                    match serde_json::from_value::<HealthReport>(ev.data.clone()) {
                        Ok(r) => ears.report(&r),
                        Err(e) => tracing::warn!(error = %e, publisher = %ev.publisher, "health: unreadable report"),
                    }
                } else if ev.name == HEARTBEAT_EVENT {
                    match serde_json::from_value::<CheckerState>(ev.data.clone()) {
                        Ok(st) => if ears.heartbeat(&st) {
                            m.resyncs.inc();
                            let ask = events.event(format!("{STATE_REQUEST}.{}", st.host_uuid));
                            match events.request(&ask, Duration::from_secs(2)).await {
                                Ok(answer) => match serde_json::from_value::<CheckerState>(answer.data) {
                                    Ok(full) => ears.resync(&full),
                                    Err(e) => tracing::warn!(error = %e, host = %st.host_uuid, "health: unreadable checker state"),
                                },
                                Err(e) => tracing::warn!(error = %e, host = %st.host_uuid, "health: checker state not received"),
                            }
                        },
                        Err(e) => tracing::warn!(error = %e, publisher = %ev.publisher, "health: unreadable heartbeat"),
                    }
                }
            }
            _ = tick.tick() => {
                if *active.borrow() && cache.is_ready() {
                    if let Err(e) = pass(&store, &cache, &s, &ears, &mut hosts, &mut book, &active, &m).await {
                        tracing::warn!(error = %e, "health: pass failed; the next one retries");
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn pass(
    store: &StateStore,
    cache: &StateCache,
    s: &Settings,
    ears: &Ears,
    hosts: &mut HostClock,
    book: &mut Remediations,
    active: &tokio::sync::watch::Receiver<bool>,
    m: &HealthMetrics,
) -> event_bus::Result<()> {
    let snap = cache.snapshot();
    let now = now_ms();
    let eligible = hosts.eligible(&snap, s.host_timeout);
    let live = ears.live(s.checker_timeout);
    let mut next: BTreeMap<String, ContainerHealth> = BTreeMap::new();
    for c in snap.containers() {
        let Some(hc) = c.health_check.as_ref() else { continue };
        if c.desired_state != "running" {
            continue;
        }
        let prev = snap.health(&c.uuid).map(|h| h.as_ref());
        let previous_hosts = prev.map(|p| p.health_check_hosts.clone()).unwrap_or_default();
        let inputs = Inputs {
            uuid: &c.uuid,
            start_count: snap.status(&c.uuid).map(|st| st.start_count).unwrap_or(0),
            hosts: assign(&c.uuid, c.host_uuid.as_deref(), &previous_hosts, &eligible, s.checkers),
            votes: ears.votes.get(&c.uuid),
            live_checkers: &live,
            now_ms: now,
            initializing_timeout_ms: hc.initializing_timeout_ms(),
            reinitializing_timeout_ms: hc.reinitializing_timeout_ms(),
        };
        next.insert(c.uuid.clone(), next_health(prev, &inputs));
    }
    let state = |uuid: &str| next.get(uuid).map(|h| h.health_state.clone());
    let remedy = remedy(&snap, &state, s, book, now);
    for (uuid, why) in &remedy.kept {
        if let Some(h) = next.get_mut(uuid) {
            let why = serde_json::Value::from(why.as_str());
            if h.extra.get("remediation") != Some(&why) {
                m.kept.inc();
                tracing::info!(container = %uuid, reason = %why, "unhealthy container kept");
            }
            h.extra.insert("remediation".into(), why);
        }
    }
    if !*active.borrow() {
        return Ok(());
    }
    // Containers of a service being upgraded show Rancher's `updating-*` states.
    for (uuid, h) in next.iter_mut() {
        let svc = snap.container(uuid).and_then(|c| snap.service(c.service_uuid.as_deref()?));
        if svc.is_some_and(|svc| crate::upgrade::in_progress(svc)) {
            match h.health_state.as_str() {
                HEALTHY => h.health_state = UPDATING_HEALTHY.into(),
                UNHEALTHY => h.health_state = UPDATING_UNHEALTHY.into(),
                _ => {}
            }
        }
    }
    for (uuid, h) in &next {
        let prev = snap.health(uuid).map(|p| p.as_ref());
        if prev == Some(h) {
            continue;
        }
        if prev.map(|p| p.health_state.as_str()) != Some(h.health_state.as_str()) {
            m.transitions.get_or_create(&vec![("state", h.health_state.clone())]).inc();
            tracing::info!(container = %uuid, state = %h.health_state, reason = ?h.extra.get("reason"), "health changed");
        }
        store.put(h).await?;
    }
    for unit in &remedy.recreate {
        m.recreations.inc();
        tracing::info!(containers = ?unit, "replacing an unhealthy unit");
        for uuid in unit {
            store.delete(&Key::new(Family::Container, uuid.as_str())?).await?;
        }
    }
    // Verdicts of containers that are gone.
    for h in snap.healths() {
        let gone = snap.container(&h.uuid).is_none_or(|c| c.desired_state != "running" || c.health_check.is_none());
        if gone && !next.contains_key(&h.uuid) {
            store.delete(&Key::new(Family::Health, h.uuid.as_str())?).await?;
        }
    }
    Ok(())
}

/// Extra fields of a health record that say why (for `deploy ps` and tests).
pub fn reason(h: &ContainerHealth) -> Option<&str> {
    h.extra.get("reason").and_then(|v| v.as_str())
}

pub fn remediation(h: &ContainerHealth) -> Option<&str> {
    h.extra.get("remediation").and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_host_first_then_stable_others() {
        let eligible: Vec<String> = ["h1", "h2", "h3", "h4", "h5"].map(String::from).to_vec();
        let a = assign("c1", Some("h3"), &[], &eligible, 3);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], "h3");
        assert_eq!(a, assign("c1", Some("h3"), &[], &eligible, 3), "deterministic");
        // A previous checker that is still eligible stays.
        let kept = assign("c1", Some("h3"), &["h3".into(), "h5".into()], &eligible, 3);
        assert_eq!(&kept[..2], &["h3".to_string(), "h5".to_string()]);
        // Own host not eligible (dead or skip): others only.
        let b = assign("c1", Some("h9"), &[], &eligible, 3);
        assert!(!b.contains(&"h9".to_string()) && b.len() == 3);
        assert_eq!(assign("c1", Some("h1"), &[], &eligible[..1], 3), vec!["h1".to_string()]);
    }
}
