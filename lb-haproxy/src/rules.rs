//! From a load balancer service's `lb_config.port_rules` to a [`Plan`]: one frontend per source
//! port with its rules in match order, and the backends they route to. Pure, and where every
//! refusal of a rule set is decided (apart from what needs the host: ports in use, `haproxy -c`).

use std::collections::BTreeMap;

use event_bus::model::{PortRule, Service};
use event_bus::Snapshot;

use crate::error::ConfigError;

/// Rancher's port-rule protocols that HAProxy can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP, routed by Host and path.
    Http,
    /// TLS terminated here, then HTTP.
    Https,
    /// Raw TCP.
    Tcp,
    /// TLS terminated here, then raw TCP (routed by the SNI name).
    Tls,
    /// TLS passed through untouched, routed by the SNI name of the ClientHello.
    Sni,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Sni => "sni",
        }
    }

    /// HAProxy `mode http` (the others are `mode tcp`).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }

    /// The frontend holds the certificates and terminates TLS.
    pub fn terminates_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    fn takes_hostname(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

/// A hostname matcher, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// `app.example.com`
    Exact(String),
    /// `*.example.com`: the value is the suffix including its dot, `.example.com`.
    Suffix(String),
    /// `www.*`: the value is the prefix including its dot, `www.`.
    Prefix(String),
}

impl Host {
    fn parse(raw: &str) -> Result<Host, String> {
        let h = raw.trim().to_ascii_lowercase();
        let ok_chars = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if let Some(rest) = h.strip_prefix("*.") {
            if ok_chars(rest) {
                return Ok(Host::Suffix(format!(".{rest}")));
            }
        } else if let Some(rest) = h.strip_suffix(".*") {
            if ok_chars(rest) {
                return Ok(Host::Prefix(format!("{rest}.")));
            }
        } else if ok_chars(&h) {
            return Ok(Host::Exact(h));
        }
        Err(format!(
            "{raw:?} is not a hostname: expected letters, digits, '-' and '.', optionally `*.` in front or `.*` at the end"
        ))
    }

    /// The name as a user wrote it (for messages and backend names).
    pub fn display(&self) -> String {
        match self {
            Host::Exact(h) => h.clone(),
            Host::Suffix(s) => format!("*{s}"),
            Host::Prefix(p) => format!("{p}*"),
        }
    }

    fn is_exact(&self) -> bool {
        matches!(self, Host::Exact(_))
    }

    fn len(&self) -> usize {
        match self {
            Host::Exact(s) | Host::Suffix(s) | Host::Prefix(s) => s.len(),
        }
    }
}

/// One routing rule of a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Index in `lb_config.port_rules` (for messages).
    pub rule: usize,
    pub host: Option<Host>,
    pub path: Option<String>,
    pub priority: Option<u32>,
    pub backend: String,
}

impl Route {
    fn matcher(&self) -> String {
        match (&self.host, &self.path) {
            (None, None) => "everything (no hostname, no path)".into(),
            (Some(h), None) => format!("hostname {}", h.display()),
            (None, Some(p)) => format!("path {p}"),
            (Some(h), Some(p)) => format!("hostname {} and path {p}", h.display()),
        }
    }

    /// Rancher's order for rules without a priority: exact host + path, exact host, wildcard
    /// host + path, wildcard host, path only; within a class the longer (more specific) first.
    fn specificity(&self) -> (u8, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>) {
        let class = match (&self.host, &self.path) {
            (Some(h), Some(_)) if h.is_exact() => 0,
            (Some(h), None) if h.is_exact() => 1,
            (Some(_), Some(_)) => 2,
            (Some(_), None) => 3,
            (None, Some(_)) => 4,
            (None, None) => 5,
        };
        let hl = self.host.as_ref().map_or(0, Host::len);
        let pl = self.path.as_ref().map_or(0, String::len);
        (class, std::cmp::Reverse(hl), std::cmp::Reverse(pl))
    }
}

/// One listening port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub port: u16,
    pub protocol: Protocol,
    /// Rules with a matcher, in the order HAProxy must try them.
    pub routes: Vec<Route>,
    /// Where a request no route matches goes; without one an HTTP request gets 503 and a
    /// TCP/SNI connection is closed.
    pub default_backend: Option<String>,
    /// The rule that first named this port (for messages).
    pub first_rule: usize,
}

/// Where a backend's servers come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The target service's uuid; `None` when the named service does not exist (yet): the
    /// backend is kept, empty, and answers 503.
    pub service_uuid: Option<String>,
    /// How the rule named it (`web`, `other/site`, `container:…`), for messages.
    pub named: String,
    pub port: u16,
    /// A standalone container instead of a service.
    pub container_uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub http: bool,
    pub targets: Vec<Target>,
    /// The first rule's `weight` (Rancher v1.6): HAProxy `weight` of every server.
    pub weight: Option<u32>,
}

/// Everything the port rules say, resolved against the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub frontends: Vec<Frontend>,
    pub backends: BTreeMap<String, Backend>,
    /// Things worth a log line that do not refuse the configuration.
    pub warnings: Vec<String>,
}

struct Rule<'a> {
    index: usize,
    port: u16,
    protocol: Protocol,
    host: Option<Host>,
    path: Option<String>,
    priority: Option<u32>,
    backend_name: Option<String>,
    weight: Option<u32>,
    target: Target,
    _src: &'a PortRule,
}

fn invalid(rule: usize, field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidField { rule, field, reason: reason.into() }
}

fn parse_protocol(index: usize, raw: Option<&str>) -> Result<Protocol, ConfigError> {
    match raw.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("http") => Ok(Protocol::Http),
        Some("https") => Ok(Protocol::Https),
        Some("tcp") => Ok(Protocol::Tcp),
        Some("tls") => Ok(Protocol::Tls),
        Some("sni") => Ok(Protocol::Sni),
        Some("udp") => Err(ConfigError::UdpNotSupported { rule: index }),
        Some(other) => Err(invalid(index, "protocol", format!("{other:?}: expected http, https, tcp, tls or sni"))),
    }
}

fn valid_backend_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// `80, app.example.com, /api` → `80_app_example_com_api` (Rancher's naming: each run of other
/// characters becomes one `_`).
fn generated_backend_name(port: u16, host: Option<&Host>, path: Option<&str>) -> String {
    let raw = format!("{port}_{}_{}", host.map(Host::display).unwrap_or_default(), path.unwrap_or_default());
    let mut out = String::new();
    let mut last_us = false;
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            last_us = false;
        } else if !last_us {
            out.push('_');
            last_us = true;
        }
    }
    out
}

/// Resolves `svc` (in the load balancer's stack) or `stack/svc`.
fn resolve_service(snap: &Snapshot, lb: &Service, named: &str) -> Option<String> {
    snap.service_by_ref(&lb.stack_uuid, named).map(|s| s.uuid.clone())
}

/// Builds the plan. Refuses, naming the rule and field: a missing or out-of-range port, udp,
/// an unknown protocol, hostnames or paths where the protocol cannot match them, a malformed
/// hostname, path or backend name, two protocols on one port, two rules matching the same
/// requests with the same priority, and a TLS-terminating port without a certificate.
pub fn plan(lb: &Service, snap: &Snapshot) -> Result<Plan, ConfigError> {
    let lbc = lb
        .lb_config
        .as_ref()
        .filter(|c| !c.port_rules.is_empty())
        .ok_or_else(|| ConfigError::NotALoadBalancer { service: lb.name.clone() })?;
    let has_cert = !lbc.certs.is_empty() || lbc.default_cert.is_some();
    let mut warnings = Vec::new();
    let mut rules = Vec::new();
    for (index, pr) in lbc.port_rules.iter().enumerate() {
        let port = match pr.source_port {
            Some(p) if p > 0 => p,
            _ => return Err(invalid(index, "source_port", "required: the port to listen on, 1-65535")),
        };
        let protocol = parse_protocol(index, pr.protocol.as_deref())?;
        if protocol.terminates_tls() && !has_cert {
            return Err(ConfigError::NoCertificate { rule: index, port, protocol: protocol.name() });
        }
        let host = match pr.hostname.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
            None => None,
            Some(_) if !protocol.takes_hostname() => {
                return Err(invalid(index, "hostname", "a tcp rule cannot match a hostname (use sni or tls)"))
            }
            Some(h) => Some(Host::parse(h).map_err(|r| invalid(index, "hostname", r))?),
        };
        let path = match pr.path.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(_) if !protocol.is_http() => {
                return Err(invalid(index, "path", format!("a {} rule cannot match a path", protocol.name())))
            }
            Some(p) if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(invalid(index, "path", format!("{p:?}: expected a path prefix starting with `/`")))
            }
            Some(p) => Some(p.to_string()),
        };
        if pr.weight.is_some_and(|w| w > 256) {
            return Err(invalid(index, "weight", "must be 0-256 (0 takes the servers out of rotation)"));
        }
        if pr.priority == Some(0) {
            return Err(invalid(index, "priority", "must be 1 or more (lower matches first)"));
        }
        let backend_name = match pr.backend_name.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
            None => None,
            Some(b) if valid_backend_name(b) => Some(b.to_string()),
            Some(b) => {
                return Err(invalid(
                    index,
                    "backend_name",
                    format!("{b:?}: expected letters, digits, '_', '-', '.' or ':'"),
                ))
            }
        };
        let targets = rule_targets(index, pr, lb, snap, &mut warnings)?;
        for target in targets {
            // A selector match may bring its own hostname/path/backend name (Rancher's
            // target-side lb_config); `target.1` holds those overrides.
            let (target, over) = target;
            let host = match over.hostname {
                Some(h) => Some(Host::parse(&h).map_err(|r| invalid(index, "selector", r))?),
                None => host.clone(),
            };
            let path = over.path.or_else(|| path.clone());
            rules.push(Rule {
                index,
                port,
                protocol,
                host,
                path,
                priority: pr.priority,
                backend_name: over.backend_name.or_else(|| backend_name.clone()),
                weight: pr.weight,
                target,
                _src: pr,
            });
        }
    }
    build(rules, warnings)
}

#[derive(Default)]
struct Overrides {
    hostname: Option<String>,
    path: Option<String>,
    backend_name: Option<String>,
}

fn rule_targets(
    index: usize,
    pr: &PortRule,
    lb: &Service,
    snap: &Snapshot,
    warnings: &mut Vec<String>,
) -> Result<Vec<(Target, Overrides)>, ConfigError> {
    let service = pr.service.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let selector = pr.selector.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let container = pr.container.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let given = [service.is_some(), selector.is_some(), container.is_some()].iter().filter(|b| **b).count();
    if given != 1 {
        return Err(invalid(index, "service", "exactly one of service, selector and container is required"));
    }
    if let Some(named) = service {
        let port = pr
            .target_port
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(index, "target_port", "required with `service`: the container port to send to"))?;
        if named.split('/').count() > 2 || named.split('/').any(str::is_empty) {
            return Err(invalid(index, "service", format!("{named:?}: expected `service` or `stack/service`")));
        }
        let uuid = resolve_service(snap, lb, named);
        if uuid.is_none() {
            warnings.push(format!("port_rules[{index}]: service {named:?} not found; its backend answers 503"));
        }
        if let Some(svc) = uuid.as_deref().and_then(|u| snap.service(u)) {
            if let Some(w) = crate::targets::unreachable(svc) {
                warnings.push(format!("port_rules[{index}]: service {named:?} {w}"));
            }
        }
        let t = Target { service_uuid: uuid, named: named.into(), port, container_uuid: None };
        return Ok(vec![(t, Overrides::default())]);
    }
    if let Some(named) = container {
        let port = pr
            .target_port
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(index, "target_port", "required with `container`: the container port to send to"))?;
        let found = snap.container(named).or_else(|| snap.container_by_name(named)).map(|c| c.uuid.clone());
        if found.is_none() {
            warnings.push(format!("port_rules[{index}]: container {named:?} not found; its backend answers 503"));
        }
        let t = Target {
            service_uuid: None,
            named: format!("container:{named}"),
            port,
            container_uuid: Some(found.unwrap_or_else(|| named.to_string())),
        };
        return Ok(vec![(t, Overrides::default())]);
    }
    let raw = selector.expect("counted above");
    let sel = Selector::parse(raw).map_err(|r| invalid(index, "selector", r))?;
    let mut out = Vec::new();
    let mut matches: Vec<_> =
        snap.services().filter(|s| s.uuid != lb.uuid && sel.matches(&s.launch_config.labels)).cloned().collect();
    matches.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    for s in matches {
        let named = snap.stack(&s.stack_uuid).map_or(s.name.clone(), |st| format!("{}/{}", st.name, s.name));
        let own: Vec<&PortRule> = s.lb_config.iter().flat_map(|c| c.port_rules.iter()).collect();
        if own.is_empty() {
            match pr.target_port.filter(|p| *p > 0) {
                Some(port) => out.push((
                    Target { service_uuid: Some(s.uuid.clone()), named, port, container_uuid: None },
                    Overrides::default(),
                )),
                None => warnings.push(format!(
                    "port_rules[{index}]: selector matches {named}, which has no lb_config.port_rules and the rule no target_port; skipped"
                )),
            }
            continue;
        }
        for r in own {
            let Some(port) = r.target_port.or(pr.target_port).filter(|p| *p > 0) else {
                warnings.push(format!(
                    "port_rules[{index}]: selector match {named} has a rule without target_port; skipped"
                ));
                continue;
            };
            out.push((
                Target { service_uuid: Some(s.uuid.clone()), named: named.clone(), port, container_uuid: None },
                Overrides {
                    hostname: r.hostname.clone().filter(|h| !h.trim().is_empty()),
                    path: r.path.clone().filter(|p| !p.trim().is_empty()),
                    backend_name: r.backend_name.clone().filter(|b| valid_backend_name(b)),
                },
            ));
        }
    }
    if out.is_empty() {
        warnings.push(format!("port_rules[{index}]: selector {raw:?} matches no service"));
    }
    Ok(out)
}

fn build(rules: Vec<Rule<'_>>, warnings: Vec<String>) -> Result<Plan, ConfigError> {
    let mut backends: BTreeMap<String, Backend> = BTreeMap::new();
    // Rules that route the same way on the same port share a backend; which key a generated
    // name came from, so that `*.x.com` and `x.com` never collide into one (Rancher's bug).
    // Generated backends: one per (port, hostname, path, priority). The priority is part of it:
    // two rules that match the same requests with different priorities are a winner and a rule
    // that never matches, not one backend of both rules' targets.
    let mut generated: BTreeMap<MatchKey, String> = BTreeMap::new();
    let mut frontends: BTreeMap<u16, Frontend> = BTreeMap::new();
    // (port, host, path, priority) → the first rule with that matcher, and its backend.
    type Matcher = (u16, Option<Host>, Option<String>, Option<u32>);
    let mut seen: BTreeMap<Matcher, (usize, String)> = BTreeMap::new();

    for r in &rules {
        let fe = frontends.entry(r.port).or_insert_with(|| Frontend {
            port: r.port,
            protocol: r.protocol,
            routes: Vec::new(),
            default_backend: None,
            first_rule: r.index,
        });
        if fe.protocol != r.protocol {
            return Err(ConfigError::MixedProtocols {
                port: r.port,
                first: fe.first_rule,
                first_protocol: fe.protocol.name(),
                rule: r.index,
                protocol: r.protocol.name(),
            });
        }
        let name = match &r.backend_name {
            Some(n) => n.clone(),
            None => {
                let key = (r.port, r.host.clone(), r.path.clone(), r.priority);
                match generated.get(&key) {
                    Some(n) => n.clone(),
                    None => {
                        let base = generated_backend_name(r.port, r.host.as_ref(), r.path.as_deref());
                        let mut name = base.clone();
                        let mut n = 2;
                        while backends.contains_key(&name) || generated.values().any(|v| *v == name) {
                            name = format!("{base}{n}");
                            n += 1;
                        }
                        generated.insert(key, name.clone());
                        name
                    }
                }
            }
        };
        let be = backends.entry(name.clone()).or_insert_with(|| Backend {
            name: name.clone(),
            http: r.protocol.is_http(),
            targets: Vec::new(),
            weight: r.weight,
        });
        if be.http != r.protocol.is_http() {
            return Err(invalid(
                r.index,
                "backend_name",
                format!("backend {name:?} is shared by HTTP and TCP rules; give them different backend names"),
            ));
        }
        if !be.targets.contains(&r.target) {
            be.targets.push(r.target.clone());
        }
        // Two port rules with the same matcher and priority are refused: which one wins would
        // be arbitrary (Rancher silently merged them into one backend). What merges: the
        // services a selector rule expands to, and rules that name the same backend_name.
        let key = (r.port, r.host.clone(), r.path.clone(), r.priority);
        match seen.get(&key) {
            Some((first, first_backend))
                if *first != r.index && !(r.backend_name.is_some() && *first_backend == name) =>
            {
                let route =
                    Route { rule: r.index, host: r.host.clone(), path: r.path.clone(), priority: None, backend: name };
                return Err(ConfigError::OverlappingRules {
                    port: r.port,
                    first: *first,
                    rule: r.index,
                    matcher: route.matcher(),
                    priority: r.priority.map_or("none".into(), |p| p.to_string()),
                });
            }
            Some(_) => continue,
            None => {
                seen.insert(key, (r.index, name.clone()));
            }
        }
        let route =
            Route { rule: r.index, host: r.host.clone(), path: r.path.clone(), priority: r.priority, backend: name };
        fe.routes.push(route);
    }

    let mut warnings = warnings;
    for fe in frontends.values_mut() {
        fe.routes.sort_by(|a, b| {
            let ka = (a.priority.is_none(), a.priority.unwrap_or(0), a.specificity(), a.rule);
            let kb = (b.priority.is_none(), b.priority.unwrap_or(0), b.specificity(), b.rule);
            ka.cmp(&kb)
        });
        // The catch-all rule (no hostname, no path) is the port's default backend; with
        // several (different priorities) the first in order wins and the others never match.
        let mut defaults = fe.routes.iter().filter(|r| r.host.is_none() && r.path.is_none());
        if let Some(d) = defaults.next() {
            fe.default_backend = Some(d.backend.clone());
            for shadowed in defaults {
                warnings.push(format!(
                    "port_rules[{}]: never matches, port {} already sends everything else to port_rules[{}]",
                    shadowed.rule, fe.port, d.rule
                ));
            }
        }
        fe.routes.retain(|r| r.host.is_some() || r.path.is_some());
    }
    // A backend no route and no default leads to (a shadowed catch-all's) takes no traffic and
    // is left out, so its targets are not checked and counted for nothing.
    let used: std::collections::BTreeSet<&String> = frontends
        .values()
        .flat_map(|fe| fe.routes.iter().map(|r| &r.backend).chain(fe.default_backend.as_ref()))
        .collect();
    backends.retain(|name, _| used.contains(name));
    Ok(Plan { frontends: frontends.into_values().collect(), backends, warnings })
}

/// (source port, hostname, path, priority): what one generated backend is for.
type MatchKey = (u16, Option<Host>, Option<String>, Option<u32>);

/// Rancher's label selector over services: comma-separated clauses, all of which must hold:
/// `k=v`, `k==v`, `k!=v`, `k in (a, b)`, `k notin (a, b)`, `k` (present), `!k` (absent).
/// Rancher's own parser only honoured `k=v` (healthcheck-lb.md §2.1); this is the grammar its
/// documentation promised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Clause>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Selector {
    pub fn parse(raw: &str) -> Result<Selector, String> {
        let mut clauses = Vec::new();
        let mut rest = raw.trim();
        while !rest.is_empty() {
            // A clause ends at a comma outside parentheses.
            let mut depth = 0;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let clause = rest[..end].trim();
            rest = rest.get(end + 1..).unwrap_or("").trim();
            clauses.push(Self::clause(clause).map_err(|e| format!("{raw:?}: {e}"))?);
        }
        if clauses.is_empty() {
            return Err("empty selector".into());
        }
        Ok(Selector(clauses))
    }

    fn clause(c: &str) -> Result<Clause, String> {
        let list = |s: &str| -> Result<Vec<String>, String> {
            let inner = s.trim().strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or("expected (a, b, …)")?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
        };
        if let Some((k, v)) = c.split_once("!=") {
            return Ok(Clause::Ne(k.trim().into(), v.trim().into()));
        }
        if let Some((k, v)) = c.split_once("==").or_else(|| c.split_once('=')) {
            return Ok(Clause::Eq(k.trim().into(), v.trim().into()));
        }
        let words: Vec<&str> = c.splitn(2, char::is_whitespace).collect();
        if words.len() == 2 {
            let rest = words[1].trim_start();
            if let Some(l) = rest.strip_prefix("notin") {
                return Ok(Clause::NotIn(words[0].into(), list(l)?));
            }
            if let Some(l) = rest.strip_prefix("in") {
                return Ok(Clause::In(words[0].into(), list(l)?));
            }
            return Err(format!("clause {c:?}: expected k=v, k!=v, k in (…), k notin (…), k or !k"));
        }
        match c.strip_prefix('!') {
            Some(k) if !k.trim().is_empty() => Ok(Clause::Absent(k.trim().into())),
            None if !c.is_empty() => Ok(Clause::Exists(c.into())),
            _ => Err(format!("clause {c:?} is empty")),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|c| match c {
            Clause::Eq(k, v) => labels.get(k).is_some_and(|x| x.eq_ignore_ascii_case(v)),
            Clause::Ne(k, v) => !labels.get(k).is_some_and(|x| x.eq_ignore_ascii_case(v)),
            Clause::In(k, vs) => labels.get(k).is_some_and(|x| vs.iter().any(|v| x.eq_ignore_ascii_case(v))),
            Clause::NotIn(k, vs) => !labels.get(k).is_some_and(|x| vs.iter().any(|v| x.eq_ignore_ascii_case(v))),
            Clause::Exists(k) => labels.contains_key(k),
            Clause::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus::keys::Document;
    use event_bus::model::{LbConfig, ServiceKind};
    use event_bus::testkit::fixtures;

    fn rule(port: u16, svc: &str, target: u16) -> PortRule {
        serde_json::from_value(serde_json::json!({"source_port": port, "target_port": target, "service": svc})).unwrap()
    }

    fn lb(rules: Vec<PortRule>) -> Service {
        let mut s = fixtures::service("lb", "st1", "lb");
        s.kind = ServiceKind::LoadBalancer;
        s.lb_config = Some(LbConfig { port_rules: rules, certs: vec!["c1".into()], ..Default::default() });
        s
    }

    fn snap() -> Snapshot {
        let records = vec![
            fixtures::stack("st1", "app").into_record(),
            fixtures::stack("st2", "other").into_record(),
            fixtures::service("web", "st1", "web").into_record(),
            fixtures::service("api", "st1", "api").into_record(),
            fixtures::service("site", "st2", "site").into_record(),
        ];
        Snapshot::from_records(1, records)
    }

    fn with(mut r: PortRule, f: impl FnOnce(&mut PortRule)) -> PortRule {
        f(&mut r);
        r
    }

    #[test]
    fn most_specific_first_and_a_default_per_port() {
        let rules = vec![
            rule(80, "other/site", 80),
            with(rule(80, "web", 8080), |r| r.hostname = Some("*.example.com".into())),
            with(rule(80, "api", 8080), |r| {
                r.hostname = Some("App.Example.com".into());
                r.path = Some("/api".into())
            }),
            with(rule(80, "web", 8080), |r| r.path = Some("/static".into())),
            with(rule(80, "web", 8080), |r| r.hostname = Some("app.example.com".into())),
            with(rule(80, "api", 8081), |r| {
                r.path = Some("/x".into());
                r.priority = Some(2)
            }),
        ];
        let p = plan(&lb(rules), &snap()).unwrap();
        let fe = &p.frontends[0];
        let order: Vec<usize> = fe.routes.iter().map(|r| r.rule).collect();
        assert_eq!(order, vec![5, 2, 4, 1, 3]);
        assert_eq!(fe.default_backend.as_deref(), Some("80_"));
        assert_eq!(fe.routes[1].backend, "80_app_example_com_api");
        assert_eq!(fe.routes[1].host, Some(Host::Exact("app.example.com".into())));
        assert_eq!(p.backends["80_"].targets[0].service_uuid.as_deref(), Some("site"));
    }

    #[test]
    fn wildcard_and_exact_names_get_distinct_backends() {
        let rules = vec![
            with(rule(80, "web", 1), |r| r.hostname = Some("*.example.com".into())),
            with(rule(80, "api", 2), |r| r.hostname = Some("example.com".into())),
        ];
        let p = plan(&lb(rules), &snap()).unwrap();
        let names: Vec<&String> = p.frontends[0].routes.iter().map(|r| &r.backend).collect();
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1], "{names:?}");
    }

    #[test]
    fn refusals_name_the_rule() {
        let err = |rules| plan(&lb(rules), &snap()).unwrap_err();
        let e = err(vec![with(rule(53, "web", 53), |r| r.protocol = Some("udp".into()))]);
        assert_eq!(e, ConfigError::UdpNotSupported { rule: 0 });
        assert!(e.to_string().contains("not supported by HAProxy"), "{e}");

        let e = err(vec![
            with(rule(80, "web", 1), |r| r.hostname = Some("a.com".into())),
            with(rule(80, "api", 1), |r| r.hostname = Some("A.com".into())),
        ]);
        assert!(matches!(e, ConfigError::OverlappingRules { first: 0, rule: 1, port: 80, .. }), "{e}");

        let e = err(vec![rule(80, "web", 1), with(rule(80, "api", 1), |r| r.protocol = Some("tcp".into()))]);
        assert!(matches!(e, ConfigError::MixedProtocols { rule: 1, .. }), "{e}");

        let e = err(vec![with(rule(3306, "web", 1), |r| {
            r.protocol = Some("tcp".into());
            r.hostname = Some("db".into())
        })]);
        assert!(matches!(e, ConfigError::InvalidField { rule: 0, field: "hostname", .. }), "{e}");

        let e = err(vec![with(rule(80, "web", 1), |r| r.path = Some("api".into()))]);
        assert!(matches!(e, ConfigError::InvalidField { field: "path", .. }), "{e}");
        let e = err(vec![with(rule(80, "web", 1), |r| r.target_port = None)]);
        assert!(matches!(e, ConfigError::InvalidField { field: "target_port", .. }), "{e}");
        let e = err(vec![with(rule(80, "web", 1), |r| r.weight = Some(300))]);
        assert!(matches!(e, ConfigError::InvalidField { field: "weight", .. }), "{e}");
        let e = err(vec![with(rule(80, "web", 1), |r| r.backend_name = Some("a b".into()))]);
        assert!(matches!(e, ConfigError::InvalidField { field: "backend_name", .. }), "{e}");
    }

    #[test]
    fn equal_matchers_with_different_priorities_are_allowed() {
        let rules = vec![
            with(rule(80, "web", 1), |r| {
                r.hostname = Some("a.com".into());
                r.priority = Some(2)
            }),
            with(rule(80, "api", 1), |r| {
                r.hostname = Some("a.com".into());
                r.priority = Some(1)
            }),
        ];
        let p = plan(&lb(rules), &snap()).unwrap();
        assert_eq!(p.frontends[0].routes[0].rule, 1);
        // Each rule its own backend: the winner's targets are not mixed with the other's.
        let first = &p.backends[&p.frontends[0].routes[0].backend];
        assert_eq!(first.targets.iter().map(|t| t.named.as_str()).collect::<Vec<_>>(), vec!["api"]);

        // Two catch-alls on one port: the lower priority number is the default backend, alone;
        // the other never matches (a warning) and its targets get no backend.
        let rules = vec![
            with(rule(8081, "web", 80), |r| r.priority = Some(1)),
            with(rule(8081, "api", 80), |r| r.priority = Some(2)),
        ];
        let p = plan(&lb(rules), &snap()).unwrap();
        let default = p.frontends[0].default_backend.clone().unwrap();
        assert_eq!(p.backends.len(), 1, "{:?}", p.backends.keys());
        assert_eq!(p.backends[&default].targets.iter().map(|t| t.named.as_str()).collect::<Vec<_>>(), vec!["web"]);
        assert!(p.warnings.iter().any(|w| w.contains("port_rules[1]: never matches")), "{:?}", p.warnings);
    }

    #[test]
    fn tls_without_a_certificate_is_refused() {
        let mut s = lb(vec![with(rule(443, "web", 1), |r| r.protocol = Some("https".into()))]);
        s.lb_config.as_mut().unwrap().certs.clear();
        let e = plan(&s, &snap()).unwrap_err();
        assert!(matches!(e, ConfigError::NoCertificate { port: 443, .. }), "{e}");
    }

    #[test]
    fn unknown_service_is_an_empty_backend_with_a_warning() {
        let p = plan(&lb(vec![rule(80, "nope", 1)]), &snap()).unwrap();
        assert_eq!(p.backends["80_"].targets[0].service_uuid, None);
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn selector_grammar() {
        let labels: BTreeMap<String, String> =
            [("tier".to_string(), "web".to_string()), ("env".to_string(), "prod".to_string())].into();
        let m = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(m("tier=web"));
        assert!(m("tier=web, env in (prod, staging)"));
        assert!(!m("tier!=web"));
        assert!(m("env notin (dev)"));
        assert!(m("tier"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(Selector::parse("tier in prod").is_err());
    }

    #[test]
    fn selector_rules_take_the_matches_own_rules() {
        let mut snap = snap();
        let mut tagged = fixtures::service("tagged", "st2", "tagged");
        tagged.launch_config.labels.insert("lb".into(), "yes".into());
        tagged.lb_config = Some(LbConfig {
            port_rules: vec![serde_json::from_value(
                serde_json::json!({"target_port": 9000, "hostname": "t.example.com"}),
            )
            .unwrap()],
            ..Default::default()
        });
        snap.apply(&tagged.key(), Some(tagged.clone().into_record()));
        let r: PortRule = serde_json::from_value(serde_json::json!({"source_port": 80, "selector": "lb=yes"})).unwrap();
        let p = plan(&lb(vec![r]), &snap).unwrap();
        let route = &p.frontends[0].routes[0];
        assert_eq!(route.host, Some(Host::Exact("t.example.com".into())));
        assert_eq!(p.backends[&route.backend].targets[0].port, 9000);
    }
}
