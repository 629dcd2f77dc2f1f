//! Rancher's naming rules: a state snapshot → [`Answers`]. Pure; the rules are listed in the
//! README ("Names served").

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use event_bus::model::{Container, Service, ServiceKind, Stack};
use event_bus::Snapshot;
use hickory_proto::rr::Name;

use crate::answers::{fqdn, reverse_name, Answers, Clients, Entry, Names, SrvTarget, View, ZONE};

/// Label that reorders or drops the Rancher search domains of a container.
pub const DNS_PRIORITY_LABEL: &str = "io.rancher.container.dns.priority";

#[derive(Debug, Clone)]
pub struct NamingConfig {
    /// TTL of every local record.
    pub ttl: u32,
    /// Addresses of `rancher-metadata.rancher.internal.`.
    pub metadata_answer: Vec<Ipv4Addr>,
}

/// Builds the answers for a snapshot.
pub fn answers(snap: &Snapshot, cfg: &NamingConfig) -> Answers {
    let mut b = Builder { snap, names: Names::default() };
    let mut services: Vec<&Arc<Service>> = snap.services().filter(|s| live(&s.state)).collect();
    services.sort_by(|a, b| (a.create_index, &a.uuid).cmp(&(b.create_index, &b.uuid)));
    for svc in services {
        b.service(svc);
    }
    b.aliases();
    b.containers();
    if !cfg.metadata_answer.is_empty() {
        let entry = Entry { a: cfg.metadata_answer.clone(), ..Default::default() };
        b.names.insert(format!("rancher-metadata.{ZONE}").into(), Arc::new(entry));
    }
    let clients = Arc::new(b.clients());
    finish(snap, cfg, b.names, clients)
}

/// Builds the answers for `snap` from the previous generation instead of from scratch when only
/// containers, statuses or health changed (scale, restarts, health flaps: nearly every change of
/// a running environment). Every name and caller view is kept; the changed containers' own
/// names, reverse names and caller views, the services they belong to, and the aliases are
/// recomputed. A service or stack change, a renamed container, or a change to a container that
/// another one links to or shares the network of builds from scratch.
pub fn rebuild(snap: &Snapshot, cfg: &NamingConfig, previous: Option<(&Snapshot, &Answers)>) -> Answers {
    use event_bus::Family as F;
    let Some((old, prev)) = previous else { return answers(snap, cfg) };
    if snap.differs_from(old, &[F::Service, F::Stack]) {
        return answers(snap, cfg);
    }
    let changed = snap.changes_since(old, &[F::Container]);
    let container = |r: &Option<event_bus::Record>| match r {
        Some(event_bus::Record::Container(c)) => Some(c.clone()),
        _ => None,
    };
    let changed: Vec<(Option<Container>, Option<Container>)> =
        changed.iter().map(|(before, after)| (container(before), container(after))).collect();
    if !changed.is_empty() {
        let mut referenced = HashSet::new();
        for c in snap.containers().chain(old.containers()) {
            referenced.extend(c.network_from_container_uuid.as_deref());
            referenced.extend(c.links.values().map(String::as_str));
        }
        for (before, after) in &changed {
            let uuid = after.as_ref().or(before.as_ref()).map(|c| c.uuid.as_str()).unwrap_or_default();
            let renamed = matches!((before, after), (Some(b), Some(a)) if b.name != a.name);
            // A container named like the static metadata name: the full build decides.
            let metadata =
                [before, after].into_iter().flatten().any(|c| c.name.eq_ignore_ascii_case("rancher-metadata"));
            if renamed || metadata || referenced.contains(uuid) {
                return answers(snap, cfg);
            }
        }
    }

    let mut b = Builder { snap, names: prev.default.names.clone() };
    let mut touched: Vec<String> = Vec::new();
    let mut touch = |svc: Option<&str>| {
        if let Some(s) = svc {
            if !touched.iter().any(|t| t == s) {
                touched.push(s.to_string());
            }
        }
    };
    for (before, after) in snap.changes_since(old, &[F::Status, F::Health]) {
        let uuid = after.as_ref().or(before.as_ref()).map(|r| r.id().to_string()).unwrap_or_default();
        touch(snap.container(&uuid).and_then(|c| c.service_uuid.as_deref()));
    }
    let mut clients = if changed.is_empty() { None } else { Some((*prev.clients).clone()) };
    let mut addresses = HashSet::new();
    let mut container_names = HashSet::new();
    for (before, after) in &changed {
        if let Some(c) = before {
            container_names.insert(c.name.to_ascii_lowercase());
            addresses.extend(container_ip(old, c));
            touch(c.service_uuid.as_deref());
        }
        if let Some(c) = after.as_ref().filter(|c| c.desired_state != "removed") {
            container_names.insert(c.name.to_ascii_lowercase());
            addresses.extend(container_ip(snap, c));
            touch(c.service_uuid.as_deref());
        }
    }
    // A changed name is recomputed as a full build would: the last container (in key order)
    // of that name with an address holds it.
    for name in &container_names {
        let fqdn = format!("{name}.{ZONE}");
        b.names.remove(fqdn.as_str());
        let holder = snap
            .containers()
            .filter(|c| c.desired_state != "removed" && c.name.eq_ignore_ascii_case(name))
            .filter_map(|c| container_ip(snap, c))
            .last();
        if let Some(ip) = holder {
            b.names.insert(fqdn.into(), Arc::new(Entry { a: vec![ip], ..Default::default() }));
        }
    }
    if let Some(clients) = clients.as_mut() {
        // The newest container claiming each address gets its reverse name and its view.
        let by_address = b.by_address();
        let newest = |cs: &mut dyn Iterator<Item = &&Arc<Container>>| -> Option<Arc<Container>> {
            cs.fold(None, |best: Option<&Arc<Container>>, c| match best {
                Some(b) if !claims(c, b) => Some(b),
                _ => Some(c),
            })
            .cloned()
        };
        let mut searches = HashMap::new();
        for ip in addresses {
            let claimants = by_address.get(&ip).map(|v| &v[..]).unwrap_or(&[]);
            b.names.remove(reverse_name(ip).as_str());
            if let Some(c) = newest(&mut claimants.iter().filter(|c| c.network_from_container_uuid.is_none())) {
                b.insert_ptr(ip, &c);
            }
            clients.remove(&IpAddr::V4(ip));
            if let Some(c) = newest(&mut claimants.iter()) {
                let c = snap.container(&c.uuid).expect("from this snapshot");
                clients.insert(IpAddr::V4(ip), b.view(c, &mut searches));
            }
        }
    }
    for uuid in &touched {
        if let Some(svc) = snap.service(uuid).filter(|s| live(&s.state)) {
            b.service(svc);
        }
    }
    b.aliases();
    let clients = match clients {
        Some(c) => Arc::new(c),
        None => prev.clients.clone(),
    };
    finish(snap, cfg, b.names, clients)
}

fn finish(snap: &Snapshot, cfg: &NamingConfig, names: Names, clients: Arc<Clients>) -> Answers {
    Answers {
        serial: snap.version() as u32,
        ttl: cfg.ttl,
        authoritative: vec![ZONE.into()],
        default: View { search: Arc::from(vec![Box::<str>::from(ZONE)]), recurse: Arc::from(vec![]), names },
        clients,
        soa_records: Default::default(),
    }
}

type SearchList = Arc<[Box<str>]>;

struct Builder<'a> {
    snap: &'a Snapshot,
    names: Names,
}

fn live(state: &str) -> bool {
    !matches!(state, "removed" | "removing" | "purged" | "purging")
}

/// A container's address on the managed network: its own, or that of the container whose
/// network it shares (`network_mode: container:<x>`).
fn container_ip(snap: &Snapshot, c: &Container) -> Option<Ipv4Addr> {
    let ip = match &c.network_from_container_uuid {
        Some(other) => snap.container(other).and_then(|o| o.primary_ip.as_deref()),
        None => c.primary_ip.as_deref(),
    };
    ip.and_then(|ip| ip.parse().ok())
}

fn container_state<'s>(snap: &'s Snapshot, c: &Container) -> &'s str {
    // No observed status yet: the agent has not reported, the container is still starting
    // (the same reading metadata gives).
    snap.status(&c.uuid).map(|s| s.state.as_str()).unwrap_or("starting")
}

/// Rancher's rule: running or starting, and healthy (or without a health check).
fn usable(snap: &Snapshot, svc: &Service, c: &Container) -> bool {
    if !matches!(container_state(snap, c), "running" | "starting") {
        return false;
    }
    let health = snap.health(&c.uuid).map(|h| h.health_state.as_str()).unwrap_or("");
    match health {
        "healthy" | "updating-healthy" => true,
        "" => c.health_check.is_none() && launch_config_of(svc, c).health_check.is_none(),
        _ => false,
    }
}

/// The launch config a container was made from: its sidekick's, or the primary's.
fn launch_config_of<'s>(svc: &'s Service, c: &Container) -> &'s event_bus::model::LaunchConfig {
    match c.launch_config_name.as_deref().filter(|n| *n != svc.name) {
        Some(n) => {
            svc.secondary_launch_configs.iter().find(|l| l.name.as_deref() == Some(n)).unwrap_or(&svc.launch_config)
        }
        None => &svc.launch_config,
    }
}

/// Whether `c` wins an address (or a view) over `other` when both claim it: the newest.
fn claims(c: &Container, other: &Container) -> bool {
    (c.create_index, &c.name, &c.uuid) > (other.create_index, &other.name, &other.uuid)
}

/// `<service>.<stack>.rancher.internal.`
fn service_fqdn(svc: &Service, stack: &Stack) -> String {
    format!("{}.{}.{ZONE}", svc.name.to_ascii_lowercase(), stack.name.to_ascii_lowercase())
}

impl<'a> Builder<'a> {
    fn stack_of(&self, svc: &Service) -> Option<&'a Arc<Stack>> {
        self.snap.stack(&svc.stack_uuid).filter(|st| live(&st.state))
    }

    /// The containers of one launch config (`None` = the primary), oldest first.
    fn members(&self, svc: &'a Service, launch_config: Option<&str>) -> Vec<&'a Arc<Container>> {
        let snap: &'a Snapshot = self.snap;
        let mut v: Vec<&'a Arc<Container>> = snap
            .containers_of_service(&svc.uuid)
            .filter(|c| {
                let lc = c.launch_config_name.as_deref().filter(|n| *n != svc.name);
                lc == launch_config && c.desired_state != "removed"
            })
            .collect();
        v.sort_by(|a, b| (a.create_index, &a.name).cmp(&(b.create_index, &b.name)));
        v
    }

    /// The containers a service name points to, with their addresses. When none is usable the
    /// name does not vanish: it points to the newest running container, or else the newest one.
    fn targets(&self, svc: &'a Service, launch_config: Option<&str>) -> Vec<(&'a Arc<Container>, Ipv4Addr)> {
        let with_ip: Vec<(&'a Arc<Container>, Ipv4Addr)> = self
            .members(svc, launch_config)
            .into_iter()
            .filter_map(|c| container_ip(self.snap, c).map(|ip| (c, ip)))
            .collect();
        let good: Vec<_> = with_ip.iter().filter(|(c, _)| usable(self.snap, svc, c)).cloned().collect();
        if !good.is_empty() || with_ip.is_empty() {
            return good;
        }
        let running = with_ip.iter().rev().find(|(c, _)| container_state(self.snap, c) == "running");
        vec![*running.unwrap_or_else(|| with_ip.last().expect("not empty"))]
    }

    /// The names of one (non-alias) service: its own, its sidekicks', their SRV names.
    fn service(&mut self, svc: &'a Service) {
        let Some(stack) = self.stack_of(svc) else { return };
        let base = service_fqdn(svc, stack);
        match svc.kind {
            ServiceKind::Alias => {} // see aliases(): they need every other service first
            ServiceKind::External => {
                let entry = Entry {
                    a: svc.external_ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
                    cname: svc.hostname.as_deref().and_then(|h| Name::from_ascii(fqdn(h)).ok()),
                    ..Default::default()
                };
                self.names.insert(base.into(), Arc::new(entry));
            }
            _ => {
                let targets = self.targets(svc, None);
                let vip = svc.vip.as_deref().and_then(|v| v.parse::<Ipv4Addr>().ok());
                let entry = Entry {
                    a: match vip {
                        Some(vip) => vec![vip],
                        None => targets.iter().map(|(_, ip)| *ip).collect(),
                    },
                    ..Default::default()
                };
                self.srv(&base, &svc.launch_config, &targets);
                for lc in &svc.secondary_launch_configs {
                    let Some(name) = lc.name.as_deref() else { continue };
                    let targets = self.targets(svc, Some(name));
                    let sidekick = format!("{}.{base}", name.to_ascii_lowercase());
                    self.srv(&sidekick, lc, &targets);
                    let entry = Entry { a: targets.iter().map(|(_, ip)| *ip).collect(), ..Default::default() };
                    self.names.insert(sidekick.into(), Arc::new(entry));
                }
                self.names.insert(base.into(), Arc::new(entry));
            }
        }
    }

    /// `_<port>._<proto>.<name>`: one SRV per target container, for each port the launch config
    /// publishes or exposes.
    fn srv(&mut self, name: &str, lc: &event_bus::model::LaunchConfig, targets: &[(&Arc<Container>, Ipv4Addr)]) {
        let mut seen = HashSet::new();
        for spec in lc.ports.iter().chain(&lc.expose) {
            let Some((port, proto)) = private_port(spec) else { continue };
            if !seen.insert((port, proto.clone())) {
                continue;
            }
            let srv = targets
                .iter()
                .filter_map(|(c, ip)| {
                    let target = Name::from_ascii(format!("{}.{ZONE}", c.name.to_ascii_lowercase())).ok()?;
                    Some(SrvTarget { port, target, addr: Some(*ip) })
                })
                .collect();
            let entry = Entry { srv, ..Default::default() };
            self.names.insert(format!("_{port}._{proto}.{name}").into(), Arc::new(entry));
        }
    }

    fn aliases(&mut self) {
        let snap: &'a Snapshot = self.snap;
        for svc in snap.services().filter(|s| s.kind == ServiceKind::Alias && live(&s.state)) {
            let Some(stack) = self.stack_of(svc) else { continue };
            let mut seen = HashSet::from([svc.uuid.clone()]);
            let entry = self.resolve_alias(svc, &mut seen);
            self.names.insert(service_fqdn(svc, stack).into(), Arc::new(entry));
        }
    }

    fn resolve_alias(&self, svc: &Service, seen: &mut HashSet<String>) -> Entry {
        let mut out = Entry::default();
        for key in svc.links.keys() {
            let Some(target) = self.link_target(svc, key) else { continue };
            if !seen.insert(target.uuid.clone()) {
                tracing::debug!(alias = %svc.name, target = %target.name, "alias loop or repeat ignored");
                continue;
            }
            let entry = if target.kind == ServiceKind::Alias {
                self.resolve_alias(target, seen)
            } else {
                let name = self.stack_of(target).map(|st| service_fqdn(target, st));
                name.and_then(|n| self.names.get(n.as_str())).map(|e| (**e).clone()).unwrap_or_default()
            };
            // A target that is a CNAME (external hostname) makes the alias that CNAME.
            if out.cname.is_none() {
                out.cname = entry.cname;
            }
            for ip in entry.a {
                if !out.a.contains(&ip) {
                    out.a.push(ip);
                }
            }
        }
        out
    }

    /// A service link key: `<stack>/<service>`, or `<service>` in the linking service's stack.
    fn link_target(&self, from: &Service, key: &str) -> Option<&Arc<Service>> {
        self.snap.service_by_ref(&from.stack_uuid, key).filter(|s| live(&s.state))
    }

    fn containers(&mut self) {
        let mut ptr_owner: HashMap<Ipv4Addr, &Arc<Container>> = HashMap::new();
        for c in self.snap.containers() {
            if c.desired_state == "removed" {
                continue;
            }
            let Some(ip) = container_ip(self.snap, c) else { continue };
            let name = format!("{}.{ZONE}", c.name.to_ascii_lowercase());
            self.names.insert(name.into(), Arc::new(Entry { a: vec![ip], ..Default::default() }));
            if c.network_from_container_uuid.is_none() && ptr_owner.get(&ip).is_none_or(|old| claims(c, old)) {
                ptr_owner.insert(ip, c);
            }
        }
        for (ip, c) in ptr_owner {
            self.insert_ptr(ip, c);
        }
    }

    fn insert_ptr(&mut self, ip: Ipv4Addr, c: &Container) {
        if let Ok(target) = Name::from_ascii(format!("{}.{ZONE}", c.name.to_ascii_lowercase())) {
            self.names.insert(reverse_name(ip).into(), Arc::new(Entry { ptr: Some(target), ..Default::default() }));
        }
    }

    /// Every container by address (its own or the one whose network it shares).
    fn by_address(&self) -> HashMap<Ipv4Addr, Vec<&'a Arc<Container>>> {
        let snap: &'a Snapshot = self.snap;
        let mut out: HashMap<Ipv4Addr, Vec<&'a Arc<Container>>> = HashMap::new();
        for c in snap.containers().filter(|c| c.desired_state != "removed") {
            if let Some(ip) = container_ip(snap, c) {
                out.entry(ip).or_default().push(c);
            }
        }
        out
    }

    fn clients(&self) -> Clients {
        let mut out: HashMap<IpAddr, &Arc<Container>> = HashMap::new();
        for c in self.snap.containers() {
            if c.desired_state == "removed" {
                continue;
            }
            let Some(ip) = container_ip(self.snap, c) else { continue };
            let slot = out.entry(IpAddr::V4(ip)).or_insert(c);
            if claims(c, slot) {
                *slot = c;
            }
        }
        // Most containers of a launch config share one search list.
        let mut searches = HashMap::new();
        out.into_iter().map(|(ip, c)| (ip, self.view(c, &mut searches))).collect()
    }

    /// What container `c` sees: its search list, its own resolvers and its links.
    fn view(&self, c: &'a Container, searches: &mut HashMap<(&'a str, Option<&'a str>), SearchList>) -> View {
        let snap: &'a Snapshot = self.snap;
        let svc = c.service_uuid.as_deref().and_then(|u| snap.service(u));
        let stack = svc.and_then(|s| self.stack_of(s));
        let lc = svc.map(|s| match c.launch_config_name.as_deref().filter(|n| *n != s.name) {
            Some(n) => {
                s.secondary_launch_configs.iter().find(|l| l.name.as_deref() == Some(n)).unwrap_or(&s.launch_config)
            }
            None => &s.launch_config,
        });
        let plain = c.dns_search.is_empty() && !c.labels.contains_key(DNS_PRIORITY_LABEL);
        let search = match (plain, svc) {
            (true, Some(s)) => searches
                .entry((s.uuid.as_str(), c.launch_config_name.as_deref()))
                .or_insert_with(|| self.search(c, svc, stack, lc).into())
                .clone(),
            _ => self.search(c, svc, stack, lc).into(),
        };
        let dns = if c.dns.is_empty() { lc.map(|l| &l.dns[..]).unwrap_or(&[]) } else { &c.dns };
        View { search, recurse: recurse_list(dns).into(), names: self.links(c, svc) }
    }

    fn search(
        &self,
        c: &Container,
        svc: Option<&Arc<Service>>,
        stack: Option<&Arc<Stack>>,
        lc: Option<&event_bus::model::LaunchConfig>,
    ) -> Vec<Box<str>> {
        let mut rancher: Vec<String> = Vec::new();
        if let (Some(svc), Some(stack)) = (svc, stack) {
            let stack_domain = format!("{}.{ZONE}", stack.name.to_ascii_lowercase());
            rancher.push(stack_domain.clone());
            rancher.push(format!("{}.{stack_domain}", svc.name.to_ascii_lowercase()));
        }
        rancher.push(ZONE.to_string());
        let user_list =
            if c.dns_search.is_empty() { lc.map(|l| &l.dns_search[..]).unwrap_or(&[]) } else { &c.dns_search };
        let user: Vec<String> = user_list.iter().filter(|s| !s.trim().is_empty()).map(|s| fqdn(s)).collect();
        let priority = c.labels.get(DNS_PRIORITY_LABEL).map(|v| v.to_ascii_lowercase());
        let ordered: Vec<String> = match priority.as_deref() {
            Some("none") => user,
            Some("service_last") => user.into_iter().chain(rancher).collect(),
            _ => rancher.into_iter().chain(user).collect(),
        };
        let mut seen = HashSet::new();
        ordered.into_iter().filter(|s| seen.insert(s.clone())).map(Into::into).collect()
    }

    /// Names only this caller sees: `<alias>.rancher.internal.` and `<alias>.<linked stack>.rancher.internal.`
    /// for each service link, `<link>.rancher.internal.` for each container link (a service
    /// link of the same name wins). They name their target, so they follow its changes.
    fn links(&self, c: &Container, svc: Option<&Arc<Service>>) -> Names {
        let mut names = Names::default();
        let link = |target: String| Arc::new(Entry { link: Some(target.into()), ..Default::default() });
        for (name, target) in &c.links {
            let Some(t) = self.snap.container(target) else { continue };
            names.insert(
                format!("{}.{ZONE}", name.to_ascii_lowercase()).into(),
                link(format!("{}.{ZONE}", t.name.to_ascii_lowercase())),
            );
        }
        if let Some(svc) = svc {
            for (key, alias) in &svc.links {
                let Some(target) = self.link_target(svc, key) else { continue };
                let Some(stack) = self.snap.stack(&target.stack_uuid) else { continue };
                let stack = stack.name.to_ascii_lowercase();
                let fqdn = format!("{}.{stack}.{ZONE}", target.name.to_ascii_lowercase());
                let alias = if alias.is_empty() { &target.name } else { alias }.to_ascii_lowercase();
                names.insert(format!("{alias}.{ZONE}").into(), link(fqdn.clone()));
                names.insert(format!("{alias}.{stack}.{ZONE}").into(), link(fqdn));
            }
        }
        names
    }
}

/// `8080:80/tcp`, `0.0.0.0:8080:80`, `80/udp`, `80` → the container-side port and protocol.
fn private_port(spec: &str) -> Option<(u16, String)> {
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    let port = ports.rsplit(':').next()?.parse().ok()?;
    matches!(proto.as_str(), "tcp" | "udp").then_some((port, proto))
}

/// A container's `dns` entries as upstream addresses (`ip` or `ip:port`); entries that are not
/// addresses are skipped.
pub fn recurse_list(entries: &[String]) -> Vec<SocketAddr> {
    entries.iter().filter_map(|e| parse_upstream(e)).collect()
}

/// `1.2.3.4`, `1.2.3.4:5353`, `::1`, `[::1]:5353` → a socket address (port 53 by default).
pub fn parse_upstream(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus::testkit::fixtures;
    use event_bus::Document;

    /// A sidekick without a health check is judged by its own launch config, not by the
    /// primary's health check.
    #[test]
    fn sidekicks_follow_their_own_health_check() {
        let mut web = fixtures::service("s1", "st1", "web");
        web.launch_config.health_check = Some(serde_json::from_value(serde_json::json!({"port": 80})).unwrap());
        web.secondary_launch_configs =
            vec![event_bus::model::LaunchConfig { name: Some("log".into()), ..Default::default() }];
        let mut records = vec![fixtures::stack("st1", "app").into_record(), web.into_record()];
        for (i, ip) in ["10.42.0.3", "10.42.0.4"].iter().enumerate() {
            let mut c = fixtures::container(&format!("l{i}"), &format!("app-web-log-{}", i + 1), "s1", "st1", "h1", ip);
            c.launch_config_name = Some("log".into());
            records.push(c.into_record());
            records.push(fixtures::status(&format!("l{i}"), "h1", "running").into_record());
        }
        let a = answers(&Snapshot::from_records(1, records), &NamingConfig { ttl: 1, metadata_answer: vec![] });
        let log = &a.default.names["log.web.app.rancher.internal."];
        assert_eq!(log.a.len(), 2, "{log:?}");
    }

    #[test]
    fn ports() {
        assert_eq!(private_port("8080:80/tcp"), Some((80, "tcp".into())));
        assert_eq!(private_port("0.0.0.0:8080:80"), Some((80, "tcp".into())));
        assert_eq!(private_port("53/UDP"), Some((53, "udp".into())));
        assert_eq!(private_port("x"), None);
        assert_eq!(private_port("80/sctp"), None);
    }

    #[test]
    fn upstreams() {
        assert_eq!(parse_upstream("10.0.0.2"), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(parse_upstream("127.0.0.1:5353"), Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(parse_upstream("[::1]:54"), Some("[::1]:54".parse().unwrap()));
        assert_eq!(parse_upstream("nope"), None);
    }
}
