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

use event_bus::model::{Container, Extra, Host, LaunchConfig, Service, ServiceKind};
use event_bus::Snapshot;
use serde::{Deserialize, Serialize};

pub const GLOBAL: &str = "io.rancher.scheduler.global";
pub const REQUESTED_HOST: &str = "io.rancher.service.requested.host.id";
pub const REQUESTED_IP: &str = "io.rancher.container.requested_ip";
const AFFINITY: &str = "io.rancher.scheduler.affinity:";

/// Counters that only grow (kept by the active controller with its lease).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub next_create_index: u64,
    /// Per service uuid: the next service index.
    pub next_service_index: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct Placement {
    /// Containers to write (new ones).
    pub create: Vec<Container>,
    /// Container uuids to remove (beyond scale, on hosts that no longer qualify, orphans).
    pub remove: Vec<String>,
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

enum RuleKind {
    HostLabel,
    ContainerLabel,
    ContainerName,
}

fn rules(labels: &BTreeMap<String, String>) -> Vec<Rule> {
    let mut out = Vec::new();
    for (k, v) in labels {
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
            _ => continue,
        };
        let values = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        out.push(Rule { key: k.clone(), kind, values, negate, soft });
    }
    out
}

/// What runs on each host, for container rules and spreading.
struct HostLoad<'a> {
    labels: Vec<Cow<'a, BTreeMap<String, String>>>,
    names: BTreeSet<Cow<'a, str>>,
    total: usize,
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

/// Places every service of the snapshot on `hosts`.
pub fn place(snap: &Snapshot, hosts: &[Arc<Host>], counters: &Counters) -> Placement {
    let mut out = Placement { counters: counters.clone(), ..Default::default() };
    // What runs where, including what this placement adds as it goes.
    let mut load: HashMap<String, HostLoad> = HashMap::new();
    let mut used_ips: HashMap<String, BTreeSet<Ipv4Addr>> = HashMap::new();
    for c in snap.containers().filter(|c| c.desired_state != "removed") {
        let Some(h) = c.host_uuid.as_deref() else { continue };
        let l =
            load.entry(h.to_string()).or_insert_with(|| HostLoad { labels: vec![], names: BTreeSet::new(), total: 0 });
        l.labels.push(Cow::Borrowed(&c.labels));
        l.names.insert(Cow::Borrowed(c.name.as_str()));
        l.total += 1;
        if let Some(ip) = c.primary_ip.as_deref().and_then(|i| i.parse().ok()) {
            used_ips.entry(h.to_string()).or_default().insert(ip);
        }
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
        let all_rules = rules(labels);
        let requested = labels.get(REQUESTED_HOST);
        let global = labels.get(GLOBAL).is_some_and(|v| v == "true");

        // Hosts that pass every hard rule, and why the others do not.
        let mut eligible: Vec<&Arc<Host>> = Vec::new();
        let mut why_not: Vec<String> = Vec::new();
        for h in hosts {
            if let Some(r) = requested.filter(|r| **r != h.uuid) {
                why_not.push(format!("{}: not the requested host {r}", h.name));
                continue;
            }
            if h.subnet.as_deref().and_then(parse_subnet).is_none() {
                why_not.push(format!("{}: no subnet to give addresses from", h.name));
                continue;
            }
            let failed: Vec<&Rule> = all_rules.iter().filter(|r| !r.soft && !r.met(h, load.get(&h.uuid))).collect();
            match failed.first() {
                None => eligible.push(h),
                Some(r) => why_not.push(format!("{}: fails {}={}", h.name, r.key, r.values.join(","))),
            }
        }
        let existing = units(snap, svc);
        // Units to keep: on eligible hosts, up to the wanted count, oldest first.
        let wanted = if global { eligible.len() } else { svc.scale.unwrap_or(1) as usize };
        let mut kept_hosts: Vec<String> = Vec::new();
        let mut kept = 0;
        for (_, containers) in existing.iter() {
            let host = containers.first().and_then(|c| c.host_uuid.clone()).unwrap_or_default();
            let on_eligible = eligible.iter().any(|h| h.uuid == host);
            let duplicate_global = global && kept_hosts.contains(&host);
            if kept < wanted && on_eligible && !duplicate_global {
                kept += 1;
                kept_hosts.push(host);
            } else {
                out.remove.extend(containers.iter().map(|c| c.uuid.clone()));
            }
        }
        let missing = wanted.saturating_sub(kept);
        if missing == 0 {
            continue;
        }
        // Soft host-label rules do not change while this service is placed: count the misses
        // once per host. (Soft container rules depend on what gets placed: counted per unit.)
        let soft_host_missed: HashMap<&str, usize> = eligible
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
        let mut placed = 0;
        for _ in 0..missing {
            // The best eligible host (for global: one without a unit yet): fewest soft rules
            // missed, then fewest units of this service, then fewest containers, then name.
            let score = |h: &Host| -> (usize, usize, usize) {
                let mut soft_missed = soft_host_missed.get(h.uuid.as_str()).copied().unwrap_or(0);
                if soft_container_rules {
                    soft_missed += all_rules
                        .iter()
                        .filter(|r| r.soft && !matches!(r.kind, RuleKind::HostLabel) && !r.met(h, load.get(&h.uuid)))
                        .count();
                }
                let mine = kept_hosts.iter().filter(|k| **k == h.uuid).count();
                let total = load.get(&h.uuid).map(|l| l.total).unwrap_or(0);
                (soft_missed, mine, total)
            };
            let best = eligible.iter().filter(|h| !(global && kept_hosts.contains(&h.uuid))).min_by_key(|h| score(h));
            let Some(host) = best.copied() else { break };
            let service_index = out.counters.next_service_index.entry(svc.uuid.clone()).or_insert(1);
            let n = *service_index;
            *service_index += 1;
            let lcs: Vec<(Option<&str>, &LaunchConfig)> = std::iter::once((None, &svc.launch_config))
                .chain(svc.secondary_launch_configs.iter().map(|lc| (lc.name.as_deref(), lc)))
                .collect();
            let mut unit_uuids: BTreeMap<String, String> = BTreeMap::new();
            let mut unit: Vec<Container> = Vec::new();
            for (lc_name, lc) in &lcs {
                out.counters.next_create_index += 1;
                let create_index = out.counters.next_create_index;
                let name = match lc_name {
                    None => format!("{}-{}-{n}", stack.name, svc.name),
                    Some(sk) => format!("{}-{}-{sk}-{n}", stack.name, svc.name),
                };
                let uuid = format!("c{create_index}");
                unit_uuids.insert(lc_name.unwrap_or(&svc.name).to_string(), uuid.clone());
                let mut labels = lc.labels.clone();
                labels.insert("io.rancher.stack.name".into(), stack.name.clone());
                labels.insert("io.rancher.stack_service.name".into(), format!("{}/{}", stack.name, svc.name));
                labels.insert(
                    "io.rancher.service.launch.config".into(),
                    lc_name.map(String::from).unwrap_or("io.rancher.service.primary.launch.config".into()),
                );
                labels.insert("io.rancher.container.uuid".into(), uuid.clone());
                labels.insert("io.rancher.container.name".into(), name.clone());
                unit.push(Container {
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
                    extra: Extra::new(),
                });
            }
            // Addresses: sidekicks sharing a network get none of their own.
            let subnet = host.subnet.as_deref().and_then(parse_subnet).expect("eligible hosts have one");
            let used = used_ips.entry(host.uuid.clone()).or_default();
            let mut failed = None;
            for c in unit.iter_mut() {
                let lc = lcs
                    .iter()
                    .find(|(n, _)| *n == c.launch_config_name.as_deref())
                    .map(|(_, lc)| *lc)
                    .expect("from lcs");
                if let Some(target) = lc.network_mode.as_deref().and_then(|m| m.strip_prefix("container:")) {
                    c.network_from_container_uuid = unit_uuids.get(target).cloned();
                    continue;
                }
                if matches!(lc.network_mode.as_deref(), Some("host" | "none")) {
                    continue;
                }
                let requested =
                    c.labels.get(REQUESTED_IP).and_then(|v| v.split(',').next()).map(str::trim).map(String::from);
                let ip = match requested {
                    Some(r) => match r.parse::<Ipv4Addr>() {
                        Ok(ip) if in_subnet(ip, subnet) && !used.contains(&ip) => Some(ip),
                        Ok(ip) if in_subnet(ip, subnet) => free_ip(subnet, used),
                        _ => {
                            failed = Some(format!(
                                "{REQUESTED_IP}={r} is not in {}'s subnet {}",
                                host.name,
                                host.subnet.as_deref().unwrap_or("")
                            ));
                            None
                        }
                    },
                    None => free_ip(subnet, used),
                };
                match ip {
                    Some(ip) => {
                        used.insert(ip);
                        c.primary_ip = Some(ip.to_string());
                        c.ips = vec![ip.to_string()];
                    }
                    None if failed.is_none() => {
                        failed = Some(format!(
                            "{} has no free address left in {}",
                            host.name,
                            host.subnet.as_deref().unwrap_or("")
                        ))
                    }
                    None => {}
                }
            }
            if let Some(reason) = failed {
                out.unplaceable.insert(svc.uuid.clone(), reason);
                break;
            }
            let l = load.entry(host.uuid.clone()).or_insert_with(|| HostLoad {
                labels: vec![],
                names: BTreeSet::new(),
                total: 0,
            });
            l.total += unit.len();
            // What this pass places counts for the container rules of the services after it.
            for c in &unit {
                l.labels.push(Cow::Owned(c.labels.clone()));
                l.names.insert(Cow::Owned(c.name.clone()));
            }
            kept_hosts.push(host.uuid.clone());
            out.create.extend(unit);
            placed += 1;
        }
        if placed < missing && !out.unplaceable.contains_key(&svc.uuid) {
            let reason = if eligible.is_empty() {
                format!(
                    "no host qualifies: {}",
                    if why_not.is_empty() { "no live hosts".to_string() } else { why_not.join("; ") }
                )
            } else {
                format!("{placed} of {missing} missing units placed: every eligible host already runs one (global) ")
            };
            out.unplaceable.insert(svc.uuid.clone(), reason.trim().to_string());
        }
    }
    // Containers of services that no longer exist, or on hosts that are gone.
    for c in snap.containers().filter(|c| c.desired_state != "removed") {
        let orphan = c.service_uuid.as_deref().is_some_and(|s| snap.service(s).is_none());
        let lost = c.host_uuid.as_deref().is_some_and(|h| !host_ids.contains(h)) && c.service_uuid.is_some();
        if (orphan || lost) && !out.remove.contains(&c.uuid) {
            out.remove.push(c.uuid.clone());
        }
    }
    out
}

fn parse_subnet(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(ip) & mask, mask))
}

fn in_subnet(ip: Ipv4Addr, (net, mask): (u32, u32)) -> bool {
    u32::from(ip) & mask == net
}

/// The lowest free address of the subnet, from .2 (.1 is the bridge), not the broadcast.
fn free_ip((net, mask): (u32, u32), used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let last = net | !mask;
    (net + 2..last).map(Ipv4Addr::from).find(|ip| !used.contains(ip))
}
