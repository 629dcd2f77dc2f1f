//! Which containers serve each backend right now: running, not known to be unhealthy, and on
//! this host when the load balancer says `io.rancher.lb_service.target=only-local` (or first
//! when it says `prefer-local`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use event_bus::model::{Container, HealthCheck, Service, ServiceKind};
use event_bus::Snapshot;

use crate::rules::{Plan, Target};

/// The label on the load balancer that restricts targets to its own host.
pub const TARGET_LABEL: &str = "io.rancher.lb_service.target";

/// One HAProxy server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The server's name in HAProxy: the container's name (unique in an environment), with
    /// `_<port>` when one backend reaches the same container on two ports.
    pub name: String,
    pub addr: SocketAddr,
}

/// How HAProxy checks a backend's servers itself (the target service's `health_check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub port: u16,
    pub inter_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub timeout_ms: u64,
    pub request_line: Option<String>,
}

impl Check {
    /// Rancher stored no defaults and wrote zeros, which HAProxy refuses (rancher/rancher#9840);
    /// a zero or absent value here takes the UI's default instead.
    pub fn from_health_check(h: &HealthCheck) -> Option<Check> {
        if h.port == 0 {
            return None;
        }
        let inter_ms = h.interval.filter(|v| *v > 0).unwrap_or(2000);
        Some(Check {
            port: h.port,
            inter_ms,
            rise: h.healthy_threshold.filter(|v| *v > 0).unwrap_or(2),
            fall: h.unhealthy_threshold.filter(|v| *v > 0).unwrap_or(3),
            timeout_ms: h.response_timeout.filter(|v| *v > 0).unwrap_or(inter_ms),
            request_line: h
                .request_line
                .as_deref()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.chars().any(char::is_control))
                .map(str::to_string),
        })
    }
}

/// The servers of every backend of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub servers: BTreeMap<String, Vec<Endpoint>>,
    /// Backends whose target service has a health check HAProxy runs too.
    pub checks: BTreeMap<String, Check>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    Any,
    OnlyLocal,
    PreferLocal,
}

impl Locality {
    /// From the load balancer's labels; unknown values mean `any`.
    pub fn of(lb: &Service) -> Locality {
        match lb.launch_config.labels.get(TARGET_LABEL).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("only-local") => Locality::OnlyLocal,
            Some("prefer-local") => Locality::PreferLocal,
            _ => Locality::Any,
        }
    }
}

/// A container takes traffic when its controller wants it running, its agent reports it
/// running, and the health verdict (if there is one) is healthy. `initializing` is kept out:
/// the LB sends nothing to a container its health check has not passed yet.
pub fn is_serving(snap: &Snapshot, c: &Container) -> bool {
    if c.desired_state != "running" || c.launch_config_name.is_some() {
        return false;
    }
    if snap.status(&c.uuid).is_none_or(|s| s.state != "running") {
        return false;
    }
    match snap.health(&c.uuid).map(|h| h.health_state.as_str()) {
        None | Some("healthy") | Some("updating-healthy") | Some("") => true,
        Some(_) => false,
    }
}

fn container_ip(c: &Container) -> Option<IpAddr> {
    c.primary_ip.as_deref().or(c.ips.first().map(String::as_str)).and_then(|ip| ip.parse().ok())
}

/// Resolves the servers of every backend of `plan`. `host` is the host this load balancer runs
/// on (for `only-local` / `prefer-local`; without one every container counts as local).
/// `lb_uuid` is the load balancer's own service, which no alias leads back to.
pub fn resolve(plan: &Plan, snap: &Snapshot, lb_uuid: &str, locality: Locality, host: Option<&str>) -> Endpoints {
    let mut out = Endpoints::default();
    for (name, backend) in &plan.backends {
        let mut all: Vec<(bool, Endpoint)> = Vec::new();
        for t in &backend.targets {
            let (containers, external) = members_of(snap, t, lb_uuid);
            for c in containers {
                if !is_serving(snap, &c) {
                    continue;
                }
                let Some(ip) = container_ip(&c) else { continue };
                let local = host.is_none_or(|h| c.host_uuid.as_deref() == Some(h));
                all.push((local, Endpoint { name: server_name(&c.name), addr: SocketAddr::new(ip, t.port) }));
            }
            // An external service's addresses are on no host of ours: never local.
            for (name, ip) in external {
                all.push((host.is_none(), Endpoint { name, addr: SocketAddr::new(ip, t.port) }));
            }
            if let Some(check) = t
                .service_uuid
                .as_deref()
                .and_then(|u| snap.service(u))
                .and_then(|s| s.launch_config.health_check.as_ref())
                .and_then(Check::from_health_check)
            {
                out.checks.entry(name.clone()).or_insert(check);
            }
        }
        let any_local = all.iter().any(|(l, _)| *l);
        let keep = |local: bool| match locality {
            Locality::Any => true,
            Locality::OnlyLocal => local,
            Locality::PreferLocal => local || !any_local,
        };
        let mut servers: Vec<Endpoint> = all.into_iter().filter(|(l, _)| keep(*l)).map(|(_, e)| e).collect();
        servers.sort();
        servers.dedup_by(|a, b| a.addr == b.addr);
        // One container reached on two ports (two rules sharing a backend name) needs two names.
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for s in &servers {
            *counts.entry(s.name.clone()).or_default() += 1;
        }
        for s in &mut servers {
            if counts[&s.name] > 1 {
                s.name = format!("{}_{}", s.name, s.addr.port());
            }
        }
        out.servers.insert(name.clone(), servers);
    }
    out
}

/// Servers outside the environment: an external service's IPs, named `<service>_<ip>`.
type External = Vec<(String, IpAddr)>;

/// What a target reaches: a container, a service's containers, an external service's IPs, or
/// for an alias (`rancher/dns-service`) whatever its linked services reach, aliases of aliases
/// included (each service once, so a loop ends).
fn members_of(snap: &Snapshot, t: &Target, lb_uuid: &str) -> (Vec<std::sync::Arc<Container>>, External) {
    if let Some(uuid) = &t.container_uuid {
        return (snap.container(uuid).cloned().into_iter().collect(), Vec::new());
    }
    let mut out = (Vec::new(), Vec::new());
    if let Some(svc) = t.service_uuid.as_deref().and_then(|u| snap.service(u)) {
        let mut seen = std::collections::HashSet::from([lb_uuid.to_string()]);
        expand(snap, svc, &mut seen, &mut out);
    }
    out
}

/// Why a service named by a rule can serve nothing (said as a warning, not a refusal: its
/// backend answers 503 until it can).
pub fn unreachable(svc: &Service) -> Option<String> {
    match svc.kind {
        ServiceKind::External if !svc.external_ips.iter().any(|ip| ip.trim().parse::<IpAddr>().is_ok()) => {
            Some(if svc.hostname.is_some() {
                "is an external service given by a hostname, which is not a target yet (HAProxy would need resolvers); its backend answers 503".into()
            } else {
                "is an external service without a valid IP; its backend answers 503".into()
            })
        }
        _ => None,
    }
}

fn expand(
    snap: &Snapshot,
    svc: &Service,
    seen: &mut std::collections::HashSet<String>,
    out: &mut (Vec<std::sync::Arc<Container>>, External),
) {
    // Each service once (an alias loop ends); removed services reach nothing, as in DNS.
    if matches!(svc.state.as_str(), "removed" | "purged") || !seen.insert(svc.uuid.clone()) {
        return;
    }
    match svc.kind {
        ServiceKind::External => {
            for ip in svc.external_ips.iter().filter_map(|ip| ip.trim().parse::<IpAddr>().ok()) {
                out.1.push((server_name(&format!("{}_{ip}", svc.name)), ip));
            }
        }
        ServiceKind::Alias => {
            for key in svc.links.keys() {
                if let Some(target) = snap.service_by_ref(&svc.stack_uuid, key) {
                    expand(snap, target, seen, out);
                }
            }
        }
        _ => out.0.extend(snap.containers_of_service(&svc.uuid).cloned()),
    }
}

/// HAProxy server names: letters, digits and `_ - .`.
fn server_name(container: &str) -> String {
    container.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus::keys::Document;
    use event_bus::model::{ContainerHealth, LbConfig};
    use event_bus::testkit::fixtures;

    fn health(uuid: &str, state: &str) -> ContainerHealth {
        serde_json::from_value(serde_json::json!({"uuid": uuid, "health_state": state})).unwrap()
    }

    fn setup() -> (Service, Snapshot) {
        let mut lb = fixtures::service("lb", "st1", "lb");
        lb.kind = ServiceKind::LoadBalancer;
        lb.lb_config = Some(LbConfig {
            port_rules: vec![serde_json::from_value(
                serde_json::json!({"source_port": 80, "target_port": 8080, "service": "web"}),
            )
            .unwrap()],
            ..Default::default()
        });
        let mut records = vec![
            fixtures::stack("st1", "app").into_record(),
            fixtures::service("web", "st1", "web").into_record(),
            lb.clone().into_record(),
        ];
        for (i, host, state) in [(1, "h1", "running"), (2, "h2", "running"), (3, "h1", "stopped"), (4, "h2", "running")]
        {
            let uuid = format!("c{i}");
            records.push(
                fixtures::container(&uuid, &format!("app-web-{i}"), "web", "st1", host, &format!("10.42.0.{i}"))
                    .into_record(),
            );
            records.push(fixtures::status(&uuid, host, state).into_record());
        }
        records.push(health("c4", "unhealthy").into_record());
        records.push(health("c2", "healthy").into_record());
        (lb, Snapshot::from_records(1, records))
    }

    fn addrs(e: &Endpoints) -> Vec<String> {
        e.servers["80_"].iter().map(|s| s.addr.to_string()).collect()
    }

    #[test]
    fn running_and_not_unhealthy() {
        let (lb, snap) = setup();
        let plan = crate::rules::plan(&lb, &snap).unwrap();
        let e = resolve(&plan, &snap, "lb", Locality::Any, None);
        assert_eq!(addrs(&e), vec!["10.42.0.1:8080", "10.42.0.2:8080"]);
        assert_eq!(e.servers["80_"][0].name, "app-web-1");
    }

    #[test]
    fn only_local_and_prefer_local() {
        let (lb, snap) = setup();
        let plan = crate::rules::plan(&lb, &snap).unwrap();
        assert_eq!(addrs(&resolve(&plan, &snap, "lb", Locality::OnlyLocal, Some("h2"))), vec!["10.42.0.2:8080"]);
        assert_eq!(addrs(&resolve(&plan, &snap, "lb", Locality::OnlyLocal, Some("h9"))), Vec::<String>::new());
        assert_eq!(addrs(&resolve(&plan, &snap, "lb", Locality::PreferLocal, Some("h1"))), vec!["10.42.0.1:8080"]);
        assert_eq!(
            addrs(&resolve(&plan, &snap, "lb", Locality::PreferLocal, Some("h9"))),
            vec!["10.42.0.1:8080", "10.42.0.2:8080"]
        );
    }

    #[test]
    fn zero_check_settings_take_defaults() {
        let h: HealthCheck =
            serde_json::from_value(serde_json::json!({"port": 80, "interval": 0, "healthy_threshold": 0})).unwrap();
        let c = Check::from_health_check(&h).unwrap();
        assert_eq!((c.inter_ms, c.rise, c.fall, c.timeout_ms), (2000, 2, 3, 2000));
    }

    #[test]
    fn external_and_alias_services_as_targets() {
        let (_, snap) = setup();
        let mut records = snap.records().into_iter().map(|(_, r)| r).collect::<Vec<_>>();
        let mut ext = fixtures::service("ext", "st1", "ext");
        ext.kind = ServiceKind::External;
        ext.external_ips = vec!["192.0.2.10".into(), "not an ip".into()];
        let mut alias = fixtures::service("both", "st1", "both");
        alias.kind = ServiceKind::Alias;
        alias.links = [("web".to_string(), String::new()), ("app/ext".to_string(), String::new())].into();
        // An alias of that alias, and a loop back to it: each service counts once.
        let mut outer = fixtures::service("outer", "st1", "outer");
        outer.kind = ServiceKind::Alias;
        // (and one back to the load balancer itself, which must not proxy to itself).
        outer.links = [
            ("both".to_string(), String::new()),
            ("outer".to_string(), String::new()),
            ("lb".to_string(), String::new()),
        ]
        .into();
        records.extend([ext.into_record(), alias.into_record(), outer.into_record()]);
        // The load balancer's own container, running.
        records.push(fixtures::container("lbc", "app-lb-1", "lb", "st1", "h1", "10.42.0.9").into_record());
        records.push(fixtures::status("lbc", "h1", "running").into_record());
        let snap = Snapshot::from_records(2, records);
        let lb_for = |target: &str| {
            let mut lb = fixtures::service("lb", "st1", "lb");
            lb.kind = ServiceKind::LoadBalancer;
            lb.lb_config = Some(LbConfig {
                port_rules: vec![serde_json::from_value(
                    serde_json::json!({"source_port": 80, "target_port": 8080, "service": target}),
                )
                .unwrap()],
                ..Default::default()
            });
            lb
        };
        let servers = |target: &str, locality, host| {
            let plan = crate::rules::plan(&lb_for(target), &snap).unwrap();
            resolve(&plan, &snap, "lb", locality, host).servers["80_"]
                .iter()
                .map(|e| format!("{} {}", e.name, e.addr))
                .collect::<Vec<_>>()
        };
        assert_eq!(servers("ext", Locality::Any, None), vec!["ext_192.0.2.10 192.0.2.10:8080"]);
        let all = vec!["app-web-1 10.42.0.1:8080", "app-web-2 10.42.0.2:8080", "ext_192.0.2.10 192.0.2.10:8080"];
        assert_eq!(servers("both", Locality::Any, None), all);
        assert_eq!(servers("outer", Locality::Any, None), all);
        // External addresses are never local.
        assert_eq!(servers("both", Locality::OnlyLocal, Some("h1")), vec!["app-web-1 10.42.0.1:8080"]);
        assert_eq!(servers("ext", Locality::PreferLocal, Some("h1")), vec!["ext_192.0.2.10 192.0.2.10:8080"]);

        // What serves nothing is said.
        let mut by_name = fixtures::service("cname", "st1", "cname");
        by_name.kind = ServiceKind::External;
        by_name.hostname = Some("db.example.com".into());
        assert!(unreachable(&by_name).is_some_and(|w| w.contains("given by a hostname")));
        by_name.external_ips = vec!["192.0.2.7".into()];
        assert_eq!(unreachable(&by_name), None);
    }
}
