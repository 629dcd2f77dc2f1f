//! The controller's placement, as a pure function: desired services + hosts + the containers
//! that exist → the containers that should exist (kept, created, removed), or for each service
//! that cannot be placed, the reason (which rule ruled out which host).
//!
//! Rules (Rancher 1.6's, `io.rancher.scheduler.*` labels of the primary launch config):
//! - `scale` deployment units, or with `io.rancher.scheduler.global: 'true'` one per eligible host;
//! - hard rules: `affinity:host_label` (all pairs), `affinity:host_label_ne` (none of them),
//!   `affinity:container_label`/`_ne` (a container with that label runs / does not run on the
//!   host), `affinity:container`/`_ne` (by container name), `io.rancher.service.requested.host.id`;
//! - soft rules (`…_soft`, `…_soft_ne`) only order the eligible hosts: most soft rules met first;
//! - then the host with the fewest containers of this service, then the fewest containers;
//! - a unit is the primary and its sidekicks, always on one host.
//!
//! Names are `<stack>-<service>-<n>` (sidekicks `<stack>-<service>-<sidekick>-<n>`); `n` (the
//! service index) and the environment-wide create index come from counters that only grow, so
//! neither is ever reused. Each host's containers get addresses from the host's subnet:
//! `io.rancher.container.requested_ip` when it is free and in the subnet, else the lowest free.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use event_bus::model::{Container, Host, Service, ServiceKind};
use event_bus::Snapshot;
use serde::{Deserialize, Serialize};

pub const GLOBAL: &str = "io.rancher.scheduler.global";
pub const REQUESTED_HOST: &str = "io.rancher.service.requested.host.id";
pub const REQUESTED_IP: &str = "io.rancher.container.requested_ip";
const AFFINITY: &str = "io.rancher.scheduler.affinity:";

/// What placement must remember from one pass to the next (kept by the active controller with
/// its lease): counters that only grow, and the batches of upgrades in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub next_create_index: u64,
    /// Per service uuid: the next service index.
    pub next_service_index: BTreeMap<String, u64>,
    /// Per upgrading service: its current batch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub batches: BTreeMap<String, Batch>,
    /// Per `retain_ip` service: its units' primaries → (host, address), so that the unit that
    /// replaces one that went (removed from Docker, recreated by the health decision) gets
    /// the address back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, BTreeMap<String, (String, String)>>,
}

/// One batch of an in-service upgrade ([`crate::upgrade`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// When it began (ms); the next begins `interval` later at the earliest.
    pub at_ms: u64,
    /// Primaries of the units it created or started again: the next step waits until they run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<String>,
    /// With `start_first`: primaries of the old units to stop once `started` run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Placement {
    /// Containers to write (new ones).
    pub create: Vec<Container>,
    /// Container uuids to remove (beyond scale, on hosts that no longer qualify, orphans).
    pub remove: Vec<String>,
    /// Containers whose `desired_state` changes (stopped or started again by an upgrade).
    pub update: Vec<Container>,
    /// Services that could not be (fully) placed, and why.
    pub unplaceable: BTreeMap<String, String>,
    pub counters: Counters,
}

/// Which hosts may run containers: active, and with a heartbeat no older than `max_age_ms`
/// (a host without a heartbeat record counts as alive: fixtures and agents that just started).
pub fn live_hosts(snap: &Snapshot, now_ms: u64, max_age_ms: u64) -> Vec<Arc<Host>> {
    let mut hosts: Vec<Arc<Host>> = snap
        .hosts()
        .filter(|h| h.state == "active" && h.agent_state == "active")
        .filter(|h| h.heartbeat_ms.is_none_or(|t| now_ms.saturating_sub(t) <= max_age_ms))
        .cloned()
        .collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    hosts
}

struct Rule {
    key: String,
    kind: RuleKind,
    values: Vec<String>,
    negate: bool,
    soft: bool,
}

#[derive(Clone)]
enum RuleKind {
    HostLabel,
    ContainerLabel,
    ContainerName,
}

/// The affinity rules of a launch config, one per value (Cattle makes each comma-separated value
/// its own constraint, so they all apply), and the affinity keys it does not know.
/// Cattle's macros in affinity values (`$${stack_name}` in a compose file, which interpolation
/// turns into `${stack_name}`): the service's own stack and service names.
fn macros<'a>(value: &'a str, stack: &str, service: &str) -> Cow<'a, str> {
    if !value.contains("${") {
        return Cow::Borrowed(value);
    }
    Cow::Owned(value.replace("${stack_name}", stack).replace("${service_name}", service))
}

fn rules(labels: &BTreeMap<String, String>, stack: &str, service: &str) -> (Vec<Rule>, Vec<String>) {
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for (k, v) in labels {
        let v = macros(v, stack, service);
        let Some(rule) = k.strip_prefix(AFFINITY) else { continue };
        let (base, negate, soft) = if let Some(b) = rule.strip_suffix("_soft_ne") {
            (b, true, true)
        } else if let Some(b) = rule.strip_suffix("_ne") {
            (b, true, false)
        } else if let Some(b) = rule.strip_suffix("_soft") {
            (b, false, true)
        } else {
            (rule, false, false)
        };
        let kind = match base {
            "host_label" => RuleKind::HostLabel,
            "container_label" => RuleKind::ContainerLabel,
            "container" => RuleKind::ContainerName,
            _ => {
                unknown.push(k.clone());
                continue;
            }
        };
        for value in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(Rule { key: k.clone(), kind: kind.clone(), values: vec![value.to_string()], negate, soft });
        }
    }
    (out, unknown)
}

/// What runs on each host, for container rules and spreading.
#[derive(Default)]
struct HostLoad<'a> {
    labels: Vec<Cow<'a, BTreeMap<String, String>>>,
    names: BTreeSet<Cow<'a, str>>,
    total: usize,
    /// Published host ports by (port, protocol): the address and the container publishing it.
    ports: HashMap<(u16, &'static str), Vec<Publisher>>,
}

type Published = (Option<std::net::IpAddr>, u16, &'static str);

/// Who publishes a port on a host: on which address (none: all), and the container's name.
type Publisher = (Option<std::net::IpAddr>, String);

/// The fixed host ports a container publishes (specs that do not parse were refused by `deploy
/// up`; here they are skipped).
fn published(ports: &[String]) -> impl Iterator<Item = Published> + '_ {
    ports.iter().filter_map(|p| crate::ports::parse(p).ok()).flat_map(|p| p.published().collect::<Vec<_>>())
}

impl HostLoad<'_> {
    fn publish(&mut self, ports: &[String], by: &str) {
        for (ip, port, proto) in published(ports) {
            self.ports.entry((port, proto)).or_default().push((ip, by.to_string()));
        }
    }
}

/// The first port of `unit` that something on the host already publishes: (port, by whom).
fn port_taken<'a>(unit: &[Published], load: Option<&'a HostLoad>) -> Option<(Published, &'a str)> {
    let load = load?;
    unit.iter().find_map(|mine| {
        let theirs = load.ports.get(&(mine.1, mine.2))?;
        theirs
            .iter()
            .find(|(ip, _)| crate::ports::clash(*mine, (*ip, mine.1, mine.2)))
            .map(|(_, by)| (*mine, by.as_str()))
    })
}

impl Rule {
    /// Whether `host` meets the rule (for a negated rule: meets the negation).
    fn met(&self, host: &Host, load: Option<&HostLoad>) -> bool {
        let has = |value: &str| -> bool {
            match self.kind {
                RuleKind::HostLabel => match value.split_once('=') {
                    Some((k, v)) => host.labels.get(k.trim()).is_some_and(|x| x == v.trim()),
                    None => host.labels.contains_key(value),
                },
                RuleKind::ContainerLabel => load.is_some_and(|l| {
                    l.labels.iter().any(|labels| match value.split_once('=') {
                        Some((k, v)) => labels.get(k.trim()).is_some_and(|x| x == v.trim()),
                        None => labels.contains_key(value),
                    })
                }),
                RuleKind::ContainerName => load.is_some_and(|l| l.names.contains(&Cow::Borrowed(value))),
            }
        };
        if self.negate {
            // `_ne`: none of the values.
            !self.values.iter().any(|v| has(v))
        } else {
            // All pairs for host labels; any listed container for container rules.
            match self.kind {
                RuleKind::HostLabel => self.values.iter().all(|v| has(v)),
                _ => self.values.iter().any(|v| has(v)),
            }
        }
    }
}

/// The deployment units a service has now: service index → its containers.
fn units<'a>(snap: &'a Snapshot, svc: &'a Service) -> BTreeMap<u64, Vec<&'a Arc<Container>>> {
    let mut out: BTreeMap<u64, Vec<&Arc<Container>>> = BTreeMap::new();
    for c in snap.containers_of_service(&svc.uuid) {
        if c.desired_state == "removed" {
            continue;
        }
        let index = c.service_index.as_deref().and_then(|i| i.parse().ok()).unwrap_or(0);
        out.entry(index).or_default().push(c);
    }
    out
}

/// Places every service of the snapshot on `hosts` (the live ones).
///
/// Rules are applied when a unit is placed, as in Rancher: a unit that runs on a live host
/// stays there (it is not moved because a label changed, and a service's rule against its own
/// containers does not evict the unit the rule sees).
///
/// `now_ms` paces upgrade batches.
pub fn place(snap: &Snapshot, hosts: &[Arc<Host>], counters: &Counters, now_ms: u64) -> Placement {
    let mut out = Placement { counters: floor(snap, counters), ..Default::default() };
    out.counters.batches.clear();
    out.counters.addresses.clear();
    // What runs where, including what this placement adds as it goes.
    let mut load: HashMap<String, HostLoad> = HashMap::new();
    let mut used_ips: HashMap<String, BTreeSet<Ipv4Addr>> = HashMap::new();
    for c in snap.containers().filter(|c| c.desired_state != "removed") {
        let Some(h) = c.host_uuid.as_deref() else { continue };
        let l = load.entry(h.to_string()).or_default();
        if !c.ports.is_empty() {
            l.publish(&c.ports, &c.name);
        }
        l.labels.push(Cow::Borrowed(&c.labels));
        l.names.insert(Cow::Borrowed(c.name.as_str()));
        l.total += 1;
        let ips = c.primary_ip.iter().chain(c.ips.iter());
        used_ips.entry(h.to_string()).or_default().extend(ips.filter_map(|i| i.parse::<Ipv4Addr>().ok()));
    }
    let host_ids: BTreeSet<&str> = hosts.iter().map(|h| h.uuid.as_str()).collect();
    let mut services: Vec<&Arc<Service>> = snap.services().collect();
    services.sort_by(|a, b| (&a.stack_uuid, &a.name).cmp(&(&b.stack_uuid, &b.name)));
    for svc in services {
        if matches!(svc.kind, ServiceKind::External | ServiceKind::Alias) || svc.state == "removed" {
            continue;
        }
        let Some(stack) = snap.stack(&svc.stack_uuid) else { continue };
        let labels = &svc.launch_config.labels;
        let (all_rules, unknown) = rules(labels, &stack.name, &svc.name);
        if !unknown.is_empty() {
            out.unplaceable.insert(
                svc.uuid.clone(),
                format!(
                    "unknown affinity rule {} (host_label, container_label, container, with _ne, _soft, _soft_ne)",
                    unknown.join(", ")
                ),
            );
            continue;
        }
        let requested = labels.get(REQUESTED_HOST);
        let global = labels.get(GLOBAL).is_some_and(|v| v == "true");
        // Global services follow only the hard host-label rules (Rancher 1.6).
        let hard: Vec<&Rule> =
            all_rules.iter().filter(|r| !r.soft && (!global || matches!(r.kind, RuleKind::HostLabel))).collect();
        let requested_ips: Vec<Ipv4Addr> = svc
            .launch_config
            .labels
            .get(REQUESTED_IP)
            .map(|v| v.split(',').filter_map(|ip| ip.trim().parse().ok()).collect())
            .unwrap_or_default();

        // Hosts that pass the rules that do not depend on what runs (requested host, subnet,
        // host labels), and why the others do not.
        let mut base: Vec<&Arc<Host>> = Vec::new();
        let mut why_not: Vec<String> = Vec::new();
        for h in hosts {
            if let Some(r) = requested.filter(|r| **r != h.uuid) {
                why_not.push(format!("{}: not the requested host {r}", h.name));
                continue;
            }
            let Some(subnet) = h.subnet.as_deref().and_then(parse_subnet) else {
                why_not.push(format!("{}: no subnet to give addresses from", h.name));
                continue;
            };
            if !requested_ips.is_empty() && !requested_ips.iter().any(|ip| usable_in(*ip, subnet)) {
                why_not.push(format!(
                    "{}: {REQUESTED_IP} is not an address of its subnet {}",
                    h.name,
                    h.subnet.as_deref().unwrap_or("")
                ));
                continue;
            }
            match hard.iter().find(|r| matches!(r.kind, RuleKind::HostLabel) && !r.met(h, None)) {
                None => base.push(h),
                Some(r) => why_not.push(format!("{}: fails {}={}", h.name, r.key, r.values.join(","))),
            }
        }

        // Existing units: kept while their host is live, they are complete, and (beyond the
        // wanted count, or a second one on a host for global) the oldest win.
        let lcs: Vec<Option<&str>> = std::iter::once(None)
            .chain(svc.secondary_launch_configs.iter().filter_map(|lc| lc.name.as_deref().map(Some)))
            .collect();
        let wanted_fixed = svc.scale.unwrap_or(1) as usize;
        let mut kept_hosts: Vec<String> = Vec::new();
        // In-service upgrades: units of another version than the service's are replaced in
        // batches while the service is upgrading or rolling back (crate::upgrade).
        let upgrading = crate::upgrade::in_progress(svc);
        let rolling_back = svc.state == "rolling-back";
        let version = crate::upgrade::version(svc);
        let mut batch = match upgrading {
            true => counters.batches.get(&svc.uuid).cloned().unwrap_or_default(),
            false => Batch::default(),
        };
        let (batch_size, interval_ms, start_first) = crate::upgrade::Upgrade::of(svc)
            .map(|u| (u.batch_size.max(1) as usize, u.interval_ms, u.start_first && !global))
            .unwrap_or((crate::upgrade::DEFAULT_BATCH_SIZE as usize, crate::upgrade::DEFAULT_INTERVAL_MS, false));
        let mut running: Vec<(String, Vec<&Arc<Container>>)> = Vec::new();
        let mut revivable: std::collections::VecDeque<(String, Vec<&Arc<Container>>)> = Default::default();
        for (_, containers) in units(snap, svc) {
            let host = containers.first().and_then(|c| c.host_uuid.clone()).unwrap_or_default();
            // One container per launch config, the oldest; extras and stray configs go.
            let mut by_lc: BTreeMap<Option<&str>, &Arc<Container>> = BTreeMap::new();
            let mut sorted = containers.clone();
            sorted.sort_by_key(|c| c.create_index);
            for c in &sorted {
                let lc = c.launch_config_name.as_deref().filter(|n| *n != svc.name);
                if lcs.contains(&lc) && !by_lc.contains_key(&lc) && c.host_uuid.as_deref() == Some(&host) {
                    by_lc.insert(lc, c);
                } else {
                    out.remove.push(c.uuid.clone());
                }
            }
            // A member the agent reports gone from Docker breaks the unit: it is replaced whole.
            let complete = lcs.iter().all(|lc| by_lc.contains_key(lc))
                && !by_lc.values().any(|c| snap.status(&c.uuid).is_some_and(|st| st.state == "removed"));
            let live = host_ids.contains(host.as_str());
            let members: Vec<&Arc<Container>> = by_lc.values().copied().collect();
            let Some(primary) = by_lc.get(&None).filter(|_| complete && live) else {
                out.remove.extend(members.iter().map(|c| c.uuid.clone()));
                continue;
            };
            let stale = crate::upgrade::stale(primary, &version);
            match (primary.desired_state == "stopped", upgrading) {
                (false, _) => running.push((host, members)),
                // An old unit an upgrade stopped: kept until confirmed or rolled back.
                (true, true) if stale && !rolling_back => {}
                // Rolling back, a new unit leaves as old ones did: stopped first (load balancers
                // drop a unit that is to stop at once; the agent gives it its stop timeout),
                // removed once the agent reports it stopped.
                (true, true) if stale => {
                    if snap.status(&primary.uuid).is_none_or(|st| st.state != "running") {
                        out.remove.extend(members.iter().map(|c| c.uuid.clone()));
                    }
                }
                // Of the version rolled back to: started again as room opens.
                (true, true) if !stale => revivable.push_back((host, members)),
                // Confirmed (or rolled back past): stopped units go.
                _ => out.remove.extend(members.iter().map(|c| c.uuid.clone())),
            }
        }
        // A unit leaves by being stopped (kept for a rollback; when rolling back, removed once
        // stopped).
        let retire = |members: &[&Arc<Container>], out: &mut Placement| {
            for c in members {
                let mut stopped = (***c).clone();
                stopped.desired_state = "stopped".into();
                out.update.push(stopped);
            }
        };
        if upgrading {
            // A unit of the batch that went (replaced, recreated by the health decision) is
            // not waited for; its replacement, made in this pass, joins the batch instead.
            let before = batch.started.len();
            batch.started.retain(|u| snap.container(u).is_some() && !out.remove.contains(u));
            let lost = batch.started.len() != before;
            batch.stop.retain(|u| snap.container(u).is_some() && !out.remove.contains(u));
            // A unit is ready when it runs and, if it is health-checked, is healthy (as Rancher's
            // upgrade waited for): only then does the next step stop more old units.
            // The verdict must be about this run of it: an old unit a rollback starts again still
            // carries the `healthy` of its previous run until the controller sees the restart
            // (start count) and makes it `reinitializing`; taken at its word, the new units would
            // stop while the old one is not serving yet.
            let ready = |u: &String| {
                let Some(st) = snap.status(u).filter(|st| st.state == "running") else { return false };
                snap.container(u).is_none_or(|c| {
                    c.health_check.is_none()
                        || snap.health(u).is_some_and(|h| {
                            crate::health::is_healthy(&h.health_state)
                                && h.extra
                                    .get("start_count")
                                    .and_then(|v| v.as_u64())
                                    .is_none_or(|n| n == st.start_count)
                        })
                })
            };
            let started_run = !lost && batch.started.iter().all(ready);
            let old: Vec<String> = running
                .iter()
                .map(|(_, m)| m[0])
                .filter(|p| crate::upgrade::stale(p, &version) && !batch.stop.contains(&p.uuid))
                .map(|p| p.uuid.clone())
                .collect();
            if started_run && !batch.stop.is_empty() {
                // Their replacements run: the old units of this batch stop now.
                for uuid in std::mem::take(&mut batch.stop) {
                    if let Some(i) = running.iter().position(|(_, m)| m[0].uuid == uuid) {
                        let (_, members) = running.remove(i);
                        retire(&members, &mut out);
                    }
                }
                batch.started.clear();
            } else if started_run && batch.stop.is_empty() && !old.is_empty() && now_ms >= batch.at_ms + interval_ms {
                let chosen: Vec<String> = old.into_iter().take(batch_size).collect();
                batch = Batch { at_ms: now_ms, started: Vec::new(), stop: Vec::new() };
                if start_first {
                    batch.stop = chosen;
                } else {
                    for uuid in chosen {
                        if let Some(i) = running.iter().position(|(_, m)| m[0].uuid == uuid) {
                            let (_, members) = running.remove(i);
                            retire(&members, &mut out);
                        }
                    }
                }
            }
        }
        for (host, members) in running {
            // Old units waiting for their replacements do not count against the scale.
            if batch.stop.contains(&members[0].uuid) {
                continue;
            }
            let room = if global {
                !kept_hosts.contains(&host) && base.iter().any(|h| h.uuid == host)
            } else {
                kept_hosts.len() < wanted_fixed
            };
            if room {
                kept_hosts.push(host);
            } else {
                out.remove.extend(members.iter().map(|c| c.uuid.clone()));
            }
        }

        // retain_ip: the addresses of units gone since the last pass (or going in this one) are
        // given back to the units that replace them, on the same host.
        let retain = svc.extra.get("retain_ip").and_then(|v| v.as_bool()).unwrap_or(false);
        let mut retained: Vec<(String, Ipv4Addr)> = Vec::new();
        let mut addresses: BTreeMap<String, (String, String)> = BTreeMap::new();
        if retain {
            for c in snap.containers_of_service(&svc.uuid).filter(|c| c.launch_config_name.is_none()) {
                if let (Some(h), Some(ip), false) = (&c.host_uuid, &c.primary_ip, out.remove.contains(&c.uuid)) {
                    addresses.insert(c.uuid.clone(), (h.clone(), ip.clone()));
                }
            }
            for (uuid, (h, ip)) in counters.addresses.get(&svc.uuid).into_iter().flatten() {
                let Ok(addr) = ip.parse::<Ipv4Addr>() else { continue };
                if addresses.contains_key(uuid) {
                    continue;
                }
                // Removed in this pass: its address is free for this pass's units (the agent
                // removes a container before it creates the ones that replace it).
                if out.remove.contains(uuid) {
                    if let Some(used) = used_ips.get_mut(h) {
                        used.remove(&addr);
                    }
                }
                retained.push((h.clone(), addr));
            }
        }

        if global && base.is_empty() {
            let reason = if why_not.is_empty() { "no live hosts".to_string() } else { why_not.join("; ") };
            out.unplaceable.insert(svc.uuid.clone(), format!("global: no host qualifies: {reason}"));
        }
        // New units, one at a time: the container rules see what this pass has placed.
        let soft_host_missed: HashMap<&str, usize> = base
            .iter()
            .map(|h| {
                let n = all_rules
                    .iter()
                    .filter(|r| r.soft && matches!(r.kind, RuleKind::HostLabel) && !r.met(h, None))
                    .count();
                (h.uuid.as_str(), n)
            })
            .collect();
        let soft_container_rules = all_rules.iter().any(|r| r.soft && !matches!(r.kind, RuleKind::HostLabel));
        let container_hard: Vec<&Rule> =
            hard.iter().copied().filter(|r| !matches!(r.kind, RuleKind::HostLabel)).collect();
        // Host ports the unit publishes: a host where one is taken does not qualify (Rancher's
        // port scheduling), rather than Docker failing to start the container.
        let unit_ports: Vec<Published> = published(&svc.launch_config.ports)
            .chain(svc.secondary_launch_configs.iter().flat_map(|lc| published(&lc.ports)))
            .collect();
        loop {
            let wanted = if global { base.len() } else { wanted_fixed };
            if kept_hosts.len() >= wanted {
                break;
            }
            // Rolling back: the old units start again before any new one is made.
            if let Some((host, members)) = revivable.pop_front() {
                if global && kept_hosts.contains(&host) {
                    out.remove.extend(members.iter().map(|c| c.uuid.clone()));
                    continue;
                }
                for c in &members {
                    let mut started = (***c).clone();
                    started.desired_state = "running".into();
                    out.update.push(started);
                }
                batch.started.push(members[0].uuid.clone());
                kept_hosts.push(host);
                continue;
            }
            let mut blocked = Vec::new();
            let candidates: Vec<&Arc<Host>> = base
                .iter()
                .copied()
                .filter(|h| !(global && kept_hosts.contains(&h.uuid)))
                .filter(|h| {
                    if let Some(r) = container_hard.iter().find(|r| !r.met(h, load.get(&h.uuid))) {
                        blocked.push(format!("{}: fails {}={}", h.name, r.key, r.values.join(",")));
                        return false;
                    }
                    if let Some(((_, port, proto), by)) = port_taken(&unit_ports, load.get(&h.uuid)) {
                        blocked.push(format!("{}: port {port}/{proto} is already published there by {by}", h.name));
                        return false;
                    }
                    true
                })
                .collect();
            let score = |h: &Host| -> (bool, usize, usize, usize) {
                // A host with an address to give back comes first.
                let no_address = !retained.iter().any(|(rh, _)| *rh == h.uuid);
                let mut soft_missed = soft_host_missed.get(h.uuid.as_str()).copied().unwrap_or(0);
                if soft_container_rules {
                    soft_missed += all_rules
                        .iter()
                        .filter(|r| r.soft && !matches!(r.kind, RuleKind::HostLabel) && !r.met(h, load.get(&h.uuid)))
                        .count();
                }
                let mine = kept_hosts.iter().filter(|k| **k == h.uuid).count();
                let total = load.get(&h.uuid).map(|l| l.total).unwrap_or(0);
                (no_address, soft_missed, mine, total)
            };
            let Some(host) = candidates.iter().copied().min_by_key(|h| score(h)) else {
                let mut reasons = why_not.clone();
                reasons.extend(blocked);
                let reason = if reasons.is_empty() { "no live hosts".to_string() } else { reasons.join("; ") };
                let placed = kept_hosts.len();
                out.unplaceable.insert(
                    svc.uuid.clone(),
                    format!("{placed} of {wanted} units placed: no host qualifies: {reason}"),
                );
                break;
            };
            // Indexes are only taken for a unit that is placed whole.
            // (unit_on moves only these two; saving them, not the whole book, keeps a pass fast.)
            let before = (out.counters.next_create_index, out.counters.next_service_index.get(&svc.uuid).copied());
            let mut wish = requested_ips.clone();
            wish.extend(retained.iter().filter(|(rh, _)| *rh == host.uuid).map(|(_, ip)| *ip));
            let what = What { svc, stack, lcs: &lcs, requested_ips: &wish, version: &version };
            match unit_on(&what, host, &mut out.counters, used_ips.entry(host.uuid.clone()).or_default()) {
                Ok(unit) => {
                    let l = load.entry(host.uuid.clone()).or_default();
                    l.total += unit.len();
                    for c in &unit {
                        if !c.ports.is_empty() {
                            l.publish(&c.ports, &c.name);
                        }
                        l.labels.push(Cow::Owned(c.labels.clone()));
                        l.names.insert(Cow::Owned(c.name.clone()));
                    }
                    kept_hosts.push(host.uuid.clone());
                    if retain {
                        for c in unit.iter().filter(|c| c.launch_config_name.is_none()) {
                            if let Some(ip) = &c.primary_ip {
                                retained.retain(|(_, r)| r.to_string() != *ip);
                                addresses.insert(c.uuid.clone(), (host.uuid.clone(), ip.clone()));
                            }
                        }
                    }
                    if upgrading {
                        batch
                            .started
                            .extend(unit.iter().filter(|c| c.launch_config_name.is_none()).map(|c| c.uuid.clone()));
                    }
                    out.create.extend(unit);
                }
                Err(reason) => {
                    out.counters.next_create_index = before.0;
                    match before.1 {
                        Some(n) => out.counters.next_service_index.insert(svc.uuid.clone(), n),
                        None => out.counters.next_service_index.remove(&svc.uuid),
                    };
                    out.unplaceable.insert(svc.uuid.clone(), reason);
                    break;
                }
            }
        }
        if upgrading {
            out.counters.batches.insert(svc.uuid.clone(), batch);
        }
        if retain && !addresses.is_empty() {
            out.counters.addresses.insert(svc.uuid.clone(), addresses);
        }
    }
    // Containers of services or stacks that are gone or removed, and of hosts that are gone.
    for c in snap.containers().filter(|c| c.desired_state != "removed") {
        let svc = c.service_uuid.as_deref().map(|s| snap.service(s));
        let orphan = match svc {
            Some(None) => true,
            Some(Some(s)) => s.state == "removed" || snap.stack(&s.stack_uuid).is_none(),
            None => false,
        };
        let lost = c.service_uuid.is_some() && c.host_uuid.as_deref().is_some_and(|h| !host_ids.contains(h));
        if (orphan || lost) && !out.remove.contains(&c.uuid) {
            out.remove.push(c.uuid.clone());
        }
    }
    out
}

/// The counters, raised above every index the snapshot holds (a lost or reset book must never
/// make an index come back).
fn floor(snap: &Snapshot, counters: &Counters) -> Counters {
    let mut out = counters.clone();
    for c in snap.containers() {
        if let Some(i) = c.create_index {
            out.next_create_index = out.next_create_index.max(i);
        }
        if let (Some(svc), Some(i)) = (&c.service_uuid, c.service_index.as_deref().and_then(|i| i.parse::<u64>().ok()))
        {
            let next = out.next_service_index.entry(svc.clone()).or_insert(1);
            *next = (*next).max(i + 1);
        }
    }
    out
}

/// What a unit of a service is made of.
struct What<'a> {
    svc: &'a Service,
    stack: &'a event_bus::model::Stack,
    /// The launch configs: `None` for the primary, then the sidekicks' names.
    lcs: &'a [Option<&'a str>],
    requested_ips: &'a [Ipv4Addr],
    /// The service's launch config version ([`crate::upgrade::version`]).
    version: &'a str,
}

/// A unit (primary + sidekicks) on `host`, with names, indexes and addresses; `Err` (with the
/// reason) when an address cannot be given.
fn unit_on(
    what: &What,
    host: &Host,
    counters: &mut Counters,
    used: &mut BTreeSet<Ipv4Addr>,
) -> Result<Vec<Container>, String> {
    let What { svc, stack, lcs, requested_ips, version } = *what;
    let subnet = host.subnet.as_deref().and_then(parse_subnet).ok_or_else(|| format!("{} has no subnet", host.name))?;
    let service_index = counters.next_service_index.entry(svc.uuid.clone()).or_insert(1);
    let n = *service_index;
    *service_index += 1;
    let mut unit: Vec<Container> = Vec::new();
    let mut uuids: BTreeMap<String, String> = BTreeMap::new();
    let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for lc_name in lcs {
        let lc = match lc_name {
            None => &svc.launch_config,
            Some(n) => {
                svc.secondary_launch_configs.iter().find(|l| l.name.as_deref() == Some(*n)).expect("from the service")
            }
        };
        counters.next_create_index += 1;
        let create_index = counters.next_create_index;
        let name = match lc_name {
            None => format!("{}-{}-{n}", stack.name, svc.name),
            Some(sk) => format!("{}-{}-{sk}-{n}", stack.name, svc.name),
        };
        let uuid = format!("c{create_index}");
        uuids.insert(lc_name.unwrap_or(&svc.name).to_string(), uuid.clone());
        let mut labels = lc.labels.clone();
        labels.insert("io.rancher.stack.name".into(), stack.name.clone());
        labels.insert("io.rancher.stack_service.name".into(), format!("{}/{}", stack.name, svc.name));
        labels.insert(
            "io.rancher.service.launch.config".into(),
            lc_name.map(String::from).unwrap_or("io.rancher.service.primary.launch.config".into()),
        );
        labels.insert("io.rancher.container.uuid".into(), uuid.clone());
        labels.insert("io.rancher.container.name".into(), name.clone());
        let mut c = Container {
            uuid,
            name,
            service_uuid: Some(svc.uuid.clone()),
            stack_uuid: Some(stack.uuid.clone()),
            launch_config_name: lc_name.map(String::from),
            create_index: Some(create_index),
            service_index: Some(n.to_string()),
            host_uuid: Some(host.uuid.clone()),
            primary_ip: None,
            ips: vec![],
            primary_mac_address: None,
            hostname: lc.hostname.clone(),
            image: Some(lc.image.clone()),
            labels,
            ports: lc.ports.clone(),
            dns: lc.dns.clone(),
            dns_search: lc.dns_search.clone(),
            health_check: lc.health_check.clone(),
            memory_reservation: lc.memory_reservation,
            milli_cpu_reservation: lc.milli_cpu_reservation,
            network_uuid: None,
            network_from_container_uuid: None,
            links: BTreeMap::new(),
            desired_state: "running".into(),
            system: svc.system,
            environment_uuid: stack.environment_uuid.clone(),
            extra: [(crate::upgrade::VERSION.to_string(), serde_json::Value::from(version))].into_iter().collect(),
        };
        match lc.network_mode.as_deref() {
            Some(m) if m.starts_with("container:") => {}
            Some("host" | "none") => {}
            // A load balancer's container runs on the host's network (the agent's `create_lb`).
            _ if svc.kind == ServiceKind::LoadBalancer && lc_name.is_none() => {}
            _ => {
                let wish = if lc_name.is_none() { requested_ips } else { &[] };
                let ip = wish
                    .iter()
                    .copied()
                    .find(|ip| usable_in(*ip, subnet) && !used.contains(ip) && !taken.contains(ip))
                    .or_else(|| free_ip(subnet, used, &taken))
                    .ok_or_else(|| {
                        format!("{} has no free address left in {}", host.name, host.subnet.as_deref().unwrap_or(""))
                    })?;
                taken.insert(ip);
                c.primary_ip = Some(ip.to_string());
                c.ips = vec![ip.to_string()];
            }
        }
        unit.push(c);
    }
    // Sidekicks that share a network point at the unit's container of that name.
    for c in unit.iter_mut() {
        let lc = match c.launch_config_name.as_deref() {
            None => &svc.launch_config,
            Some(n) => {
                svc.secondary_launch_configs.iter().find(|l| l.name.as_deref() == Some(n)).expect("from the service")
            }
        };
        if let Some(target) = lc.network_mode.as_deref().and_then(|m| m.strip_prefix("container:")) {
            c.network_from_container_uuid = uuids.get(target).cloned();
        }
    }
    used.extend(taken);
    Ok(unit)
}

fn parse_subnet(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(ip) & mask, mask))
}

/// Whether `ip` may be given in the subnet: not the network, the bridge (.1) or the broadcast.
fn usable_in(ip: Ipv4Addr, (net, mask): (u32, u32)) -> bool {
    let n = u32::from(ip);
    n & mask == net && n != net && n != net + 1 && n != net | !mask
}

/// The lowest free address of the subnet, from .2 (.1 is the bridge), not the broadcast.
fn free_ip((net, mask): (u32, u32), used: &BTreeSet<Ipv4Addr>, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let last = net | !mask;
    (net + 2..last).map(Ipv4Addr::from).find(|ip| !used.contains(ip) && !taken.contains(ip))
}
