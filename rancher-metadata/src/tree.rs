//! Builds Rancher's metadata trees from a state snapshot: the shared ("default") tree of each API
//! version, and the `self` subtree of one caller.
//!
//! Field names and the per-version differences follow the original (spec §1.6–1.8). Lists are
//! sorted so that an index means the same thing twice (the original iterated Go maps). Only the
//! fields Rancher served are emitted: unknown fields of the model never reach callers, and the
//! service `token` only appears in a container's own `/self/service`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use event_bus::model::{Container, HealthCheck, Host, LbConfig, Service};
use event_bus::Snapshot;
use serde_json::{json, Map, Value};

use crate::node::{Interner, Node};

/// The API versions the original served; `latest` is the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Api {
    V1,
    V2,
    V3,
}

impl Api {
    pub const NAMES: [(&'static str, Api); 4] =
        [("2015-07-25", Api::V1), ("2015-12-19", Api::V2), ("2016-07-29", Api::V3), ("latest", Api::V3)];

    pub fn from_name(name: &str) -> Option<Api> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }
    fn lowercase_names(self) -> bool {
        self == Api::V3
    }
    fn objects(self) -> bool {
        self != Api::V1
    }
}

/// What the tree builder needs besides the snapshot.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The host this metadata server answers for (`/self/host` of unknown callers).
    pub local_host_uuid: Option<String>,
    /// The opaque version token served at `/version`.
    pub version: String,
}

fn name(api: Api, s: &str) -> Value {
    if api.lowercase_names() {
        Value::String(s.to_lowercase())
    } else {
        Value::String(s.to_string())
    }
}

fn opt<T: serde::Serialize>(v: &Option<T>) -> Value {
    v.as_ref().map(|v| serde_json::to_value(v).expect("model values serialize")).unwrap_or(Value::Null)
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("model values serialize")
}

/// Rancher's port strings per version: without a host IP, V1/V2 put the host's agent IP in
/// front (and replace `0.0.0.0` by it), V3 puts `0.0.0.0:` in front.
pub fn format_port(api: Api, port: &str, agent_ip: &str) -> String {
    let (mapping, proto) = match port.split_once('/') {
        Some((m, p)) => (m, Some(p)),
        None => (port, None),
    };
    let parts: Vec<&str> = mapping.split(':').collect();
    let with_ip = match parts.len() {
        2 => match api {
            Api::V3 => format!("0.0.0.0:{mapping}"),
            _ => format!("{agent_ip}:{mapping}"),
        },
        3 if parts[0] == "0.0.0.0" && api != Api::V3 && !agent_ip.is_empty() => {
            format!("{agent_ip}:{}:{}", parts[1], parts[2])
        }
        _ => mapping.to_string(),
    };
    match proto {
        Some(p) => format!("{with_ip}/{p}"),
        None => with_ip,
    }
}

/// A health check with only the fields Rancher had (fields the model keeps but does not know
/// never reach callers).
pub fn known_health_check(h: &HealthCheck) -> HealthCheck {
    let mut h = h.clone();
    h.extra.clear();
    if let Some(q) = &mut h.recreate_on_quorum_strategy_config {
        q.extra.clear();
    }
    h
}

/// An lb_config with only the fields Rancher had.
pub fn known_lb_config(l: &LbConfig) -> LbConfig {
    let mut l = l.clone();
    l.extra.clear();
    l.port_rules.iter_mut().for_each(|r| r.extra.clear());
    l
}

/// The launch config a container was made from, as (service entry name, is primary).
fn launch_config_name(svc: &Service, c: &Container) -> String {
    c.launch_config_name.clone().unwrap_or_else(|| svc.name.clone())
}

/// Builds the nodes of one tree (or one caller's `self`). Each container's node is built once and
/// shared by every list that shows it; strings are interned for the tree's lifetime.
struct Builder<'a> {
    snap: &'a Snapshot,
    api: Api,
    env_name: String,
    env_uuid: String,
    strings: RefCell<Interner>,
    containers: RefCell<HashMap<String, Node>>,
}

impl<'a> Builder<'a> {
    fn new(snap: &'a Snapshot, api: Api) -> Self {
        let (env_name, env_uuid) =
            snap.environment().map(|e| (e.name.to_lowercase(), e.uuid.clone())).unwrap_or_default();
        Builder { snap, api, env_name, env_uuid, strings: Default::default(), containers: Default::default() }
    }

    fn node(&self, v: &Value) -> Node {
        Node::from_value(v, &mut self.strings.borrow_mut())
    }

    /// A map node from `m`'s entries and `children` that are nodes already (shared, not copied).
    fn obj(&self, m: Map<String, Value>, children: Vec<(&str, Node)>) -> Node {
        let mut strings = self.strings.borrow_mut();
        let mut entries: Vec<_> = m.iter().map(|(k, v)| (strings.get(k), Node::from_value(v, &mut strings))).collect();
        entries.extend(children.into_iter().map(|(k, v)| (strings.get(k), v)));
        Node::object(entries)
    }

    /// A container's node, built on first use (it depends on the container alone).
    fn container(&self, c: &Container) -> Node {
        if let Some(n) = self.containers.borrow().get(&c.uuid) {
            return n.clone();
        }
        let n = self.build_container(c);
        self.containers.borrow_mut().insert(c.uuid.clone(), n.clone());
        n
    }

    fn build_container(&self, c: &Container) -> Node {
        let api = self.api;
        let svc = c.service_uuid.as_deref().and_then(|id| self.snap.service(id));
        let stack = c.stack_uuid.as_deref().and_then(|id| self.snap.stack(id));
        let host = c.host_uuid.as_deref().and_then(|id| self.snap.host(id));
        let agent_ip = host.map(|h| h.agent_ip.as_str()).unwrap_or("");
        let status = self.snap.status(&c.uuid);
        let health = self.snap.health(&c.uuid);
        let ips: Vec<&String> =
            c.primary_ip.iter().chain(c.ips.iter().filter(|ip| Some(*ip) != c.primary_ip.as_ref())).collect();
        let mut m = Map::new();
        m.insert("name".into(), name(api, &c.name));
        m.insert("uuid".into(), json!(c.uuid));
        m.insert("primary_ip".into(), opt(&c.primary_ip));
        m.insert("ips".into(), json!(ips));
        m.insert("primary_mac_address".into(), opt(&c.primary_mac_address));
        m.insert("ports".into(), json!(c.ports.iter().map(|p| format_port(api, p, agent_ip)).collect::<Vec<_>>()));
        m.insert("labels".into(), to_value(&c.labels));
        m.insert("hostname".into(), opt(&c.hostname));
        m.insert("create_index".into(), opt(&c.create_index));
        m.insert("service_index".into(), opt(&c.service_index));
        m.insert("start_count".into(), json!(status.map(|s| s.start_count).unwrap_or(0)));
        m.insert("state".into(), json!(status.map(|s| s.state.as_str()).unwrap_or("starting")));
        m.insert("health_state".into(), health.map(|h| json!(h.health_state)).unwrap_or(Value::Null));
        m.insert("health_check".into(), opt(&c.health_check.as_ref().map(known_health_check)));
        m.insert("health_check_hosts".into(), json!(health.map(|h| h.health_check_hosts.clone()).unwrap_or_default()));
        m.insert("host_uuid".into(), opt(&c.host_uuid));
        m.insert(
            "external_id".into(),
            status.and_then(|s| s.external_id.clone()).map(Value::String).unwrap_or(Value::Null),
        );
        m.insert("memory_reservation".into(), opt(&c.memory_reservation));
        m.insert("milli_cpu_reservation".into(), opt(&c.milli_cpu_reservation));
        m.insert("dns".into(), json!(c.dns));
        m.insert("dns_search".into(), json!(c.dns_search));
        m.insert("network_uuid".into(), opt(&c.network_uuid));
        m.insert("network_from_container_uuid".into(), opt(&c.network_from_container_uuid));
        m.insert("system".into(), json!(c.system));
        m.insert("environment_uuid".into(), json!(self.env_uuid));
        m.insert("links".into(), to_value(&c.links));
        let svc_name = svc.map(|s| launch_config_name(s, c));
        m.insert("service_name".into(), svc_name.map(|n| name(api, &n)).unwrap_or(Value::Null));
        m.insert("service_uuid".into(), opt(&c.service_uuid));
        m.insert("stack_name".into(), stack.map(|s| name(api, &s.name)).unwrap_or(Value::Null));
        m.insert("stack_uuid".into(), opt(&c.stack_uuid));
        self.obj(m, Vec::new())
    }

    /// Containers of one launch config of a service, by create index then name.
    fn members(&self, svc: &Service, launch_config: Option<&str>) -> Vec<Arc<Container>> {
        let mut v: Vec<Arc<Container>> = self
            .snap
            .containers_of_service(&svc.uuid)
            .filter(|c| c.launch_config_name.as_deref() == launch_config)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.create_index, &a.name).cmp(&(b.create_index, &b.name)));
        v
    }

    /// One entry per launch config: the primary, then its sidekicks (same uuid, own name).
    fn service_entries(&self, svc: &Service, with_token: bool) -> Vec<Node> {
        let api = self.api;
        let stack = self.snap.stack(&svc.stack_uuid);
        let mut out = Vec::new();
        let configs = std::iter::once(None).chain(svc.secondary_launch_configs.iter().map(|lc| lc.name.as_deref()));
        for lc_name in configs {
            let lc = match lc_name {
                None => &svc.launch_config,
                Some(n) => match svc.secondary_launch_configs.iter().find(|l| l.name.as_deref() == Some(n)) {
                    Some(l) => l,
                    None => continue,
                },
            };
            let entry_name = lc_name.unwrap_or(&svc.name);
            let containers = self.members(svc, lc_name);
            let mut m = Map::new();
            m.insert("name".into(), name(api, entry_name));
            m.insert("uuid".into(), json!(svc.uuid));
            m.insert("stack_name".into(), stack.map(|s| name(api, &s.name)).unwrap_or(Value::Null));
            m.insert("stack_uuid".into(), json!(svc.stack_uuid));
            m.insert("kind".into(), to_value(&svc.kind));
            m.insert("scale".into(), opt(&svc.scale));
            m.insert("create_index".into(), opt(&svc.create_index));
            let containers = if api.objects() {
                Node::array(containers.iter().map(|c| self.container(c)).collect())
            } else {
                self.node(&Value::Array(containers.iter().map(|c| name(api, &c.name)).collect()))
            };
            let sidekicks: Vec<Value> = if lc_name.is_none() {
                svc.secondary_launch_configs.iter().filter_map(|l| l.name.as_deref()).map(|n| name(api, n)).collect()
            } else {
                Vec::new()
            };
            m.insert("sidekicks".into(), Value::Array(sidekicks));
            m.insert("primary_service_name".into(), name(api, &svc.name));
            m.insert("ports".into(), json!(lc.ports));
            m.insert("expose".into(), json!(lc.expose));
            m.insert("labels".into(), to_value(&lc.labels));
            m.insert("metadata".into(), if svc.metadata.is_null() { json!({}) } else { svc.metadata.clone() });
            let links: Map<String, Value> = svc
                .links
                .iter()
                .map(|(k, v)| (if api.lowercase_names() { k.to_lowercase() } else { k.clone() }, json!(v)))
                .collect();
            m.insert("links".into(), Value::Object(links));
            m.insert("external_ips".into(), json!(svc.external_ips));
            m.insert("hostname".into(), opt(&svc.hostname));
            m.insert("fqdn".into(), opt(&self.snap.fqdn(&svc.uuid).map(|f| f.fqdn.clone()).or(svc.fqdn.clone())));
            m.insert("vip".into(), opt(&svc.vip));
            m.insert("health_check".into(), opt(&lc.health_check.as_ref().map(known_health_check)));
            m.insert("lb_config".into(), opt(&svc.lb_config.as_ref().map(known_lb_config)));
            m.insert("system".into(), json!(svc.system));
            m.insert("state".into(), json!(svc.state));
            m.insert("environment_uuid".into(), json!(self.env_uuid));
            let token = if with_token { opt(&svc.token) } else { Value::Null };
            m.insert("token".into(), token);
            out.push(self.obj(m, vec![("containers", containers)]));
        }
        out
    }

    fn sorted_services(&self, stack_uuid: Option<&str>) -> Vec<Arc<Service>> {
        let mut v: Vec<Arc<Service>> = match stack_uuid {
            Some(st) => self.snap.services_in_stack(st).cloned().collect(),
            None => self.snap.services().cloned().collect(),
        };
        let stack_name =
            |s: &Service| self.snap.stack(&s.stack_uuid).map(|st| st.name.to_lowercase()).unwrap_or_default();
        v.sort_by_cached_key(|s| (stack_name(s), s.name.to_lowercase(), s.uuid.clone()));
        v
    }

    fn stack(&self, st: &event_bus::model::Stack) -> Node {
        let services =
            self.sorted_services(Some(&st.uuid)).iter().flat_map(|s| self.service_entries(s, false)).collect();
        self.stack_with(st, services)
    }

    /// A stack object around its service entries (already built, in order).
    fn stack_with(&self, st: &event_bus::model::Stack, services: Vec<Node>) -> Node {
        let api = self.api;
        let mut m = Map::new();
        m.insert("name".into(), name(api, &st.name));
        m.insert("uuid".into(), json!(st.uuid));
        m.insert("environment_name".into(), json!(self.env_name));
        m.insert("environment_uuid".into(), json!(self.env_uuid));
        m.insert("system".into(), json!(st.system));
        let services = if api.objects() {
            Node::array(services)
        } else {
            Node::array(services.iter().map(|s| s.get("name").cloned().unwrap_or(Node::Null)).collect())
        };
        self.obj(m, vec![("services", services)])
    }

    fn host(&self, h: &Host, index: usize) -> Node {
        let mut m = Map::new();
        m.insert("name".into(), json!(if h.name.is_empty() { &h.hostname } else { &h.name }));
        m.insert("hostname".into(), json!(h.hostname));
        m.insert("uuid".into(), json!(h.uuid));
        m.insert("agent_ip".into(), json!(h.agent_ip));
        m.insert("labels".into(), to_value(&h.labels));
        m.insert("state".into(), json!(h.state));
        m.insert("agent_state".into(), json!(h.agent_state));
        m.insert("memory".into(), opt(&h.memory));
        m.insert("milli_cpu".into(), opt(&h.milli_cpu));
        m.insert("local_storage_mb".into(), opt(&h.local_storage_mb));
        m.insert("environment_uuid".into(), json!(self.env_uuid));
        if self.api != Api::V3 {
            // Rancher's numeric database id; ours is the host's position in name order, from 1.
            m.insert("hostId".into(), json!(index + 1));
        }
        self.obj(m, Vec::new())
    }

    fn sorted_hosts(&self) -> Vec<Arc<Host>> {
        let mut v: Vec<Arc<Host>> = self.snap.hosts().cloned().collect();
        v.sort_by(|a, b| (a.name.to_lowercase(), &a.uuid).cmp(&(b.name.to_lowercase(), &b.uuid)));
        v
    }

    fn host_value(&self, uuid: &str) -> Option<Node> {
        let hosts = self.sorted_hosts();
        hosts.iter().position(|h| h.uuid == uuid).map(|i| self.host(&hosts[i], i))
    }

    fn network(&self) -> Node {
        self.node(&json!({
            "name": "managed",
            "uuid": format!("{}-managed", if self.env_uuid.is_empty() { "corral" } else { &self.env_uuid }),
            "environment_uuid": self.env_uuid,
            "is_default": true,
            "host_ports": true,
            "metadata": {},
            "default_policy_action": "allow",
            "policy": [],
        }))
    }
}

/// The shared tree of one API version: everything but `self` (which only holds the local host).
pub fn default_tree(snap: &Snapshot, api: Api, ctx: &Context) -> Node {
    let b = Builder::new(snap, api);
    let mut containers: Vec<Arc<Container>> = snap.containers().cloned().collect();
    containers.sort_by(|a, b| (a.name.to_lowercase(), &a.uuid).cmp(&(b.name.to_lowercase(), &b.uuid)));
    // Each service's entries are built once: the top-level list and its stack's list share them
    // (and the entries share their containers with the top-level `containers`).
    let mut by_stack: HashMap<String, Vec<Node>> = Default::default();
    let mut services: Vec<Node> = Vec::new();
    for svc in b.sorted_services(None) {
        let entries = b.service_entries(&svc, false);
        by_stack.entry(svc.stack_uuid.clone()).or_default().extend(entries.iter().cloned());
        services.extend(entries);
    }
    let mut stacks: Vec<_> = snap.stacks().cloned().collect();
    stacks.sort_by(|a, b| (a.name.to_lowercase(), &a.uuid).cmp(&(b.name.to_lowercase(), &b.uuid)));
    let hosts = b.sorted_hosts();
    let mut root = Map::new();
    root.insert("name".into(), json!(b.env_name));
    root.insert("uuid".into(), json!(b.env_uuid));
    root.insert("region_name".into(), json!(snap.environment().map(|e| e.region_name.clone()).unwrap_or_default()));
    root.insert("version".into(), json!(ctx.version));
    if api == Api::V3 {
        root.insert("environments".into(), json!([]));
    }
    let mut self_map = Vec::new();
    if let Some(h) = ctx.local_host_uuid.as_deref().and_then(|u| b.host_value(u)) {
        self_map.push((b.strings.borrow_mut().get("host"), h));
    }
    let children = vec![
        ("containers", Node::array(containers.iter().map(|c| b.container(c)).collect())),
        ("services", Node::array(services)),
        (
            "stacks",
            Node::array(stacks.iter().map(|s| b.stack_with(s, by_stack.remove(&s.uuid).unwrap_or_default())).collect()),
        ),
        ("hosts", Node::array(hosts.iter().enumerate().map(|(i, h)| b.host(h, i)).collect())),
        ("networks", Node::array(vec![b.network()])),
        ("self", Node::object(self_map)),
    ];
    b.obj(root, children)
}

/// The `self` subtree of container `c` (the caller).
pub fn self_tree(snap: &Snapshot, api: Api, c: &Container) -> Node {
    let b = Builder::new(snap, api);
    let mut children = vec![("container", b.container(c))];
    if let Some(svc) = c.service_uuid.as_deref().and_then(|id| snap.service(id)) {
        let entry_name = launch_config_name(svc, c);
        let own = b
            .service_entries(svc, true)
            .into_iter()
            .find(|e| e.get("name").and_then(Node::as_str).is_some_and(|n| n.eq_ignore_ascii_case(&entry_name)));
        if let Some(own) = own {
            children.push(("service", own));
        }
    }
    if let Some(st) = c.stack_uuid.as_deref().and_then(|id| snap.stack(id)) {
        children.push(("stack", b.stack(st)));
    }
    if let Some(h) = c.host_uuid.as_deref().and_then(|u| b.host_value(u)) {
        children.push(("host", h));
    }
    b.obj(Map::new(), children)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_per_version() {
        assert_eq!(format_port(Api::V1, "8080:80/tcp", "10.0.0.5"), "10.0.0.5:8080:80/tcp");
        assert_eq!(format_port(Api::V2, "0.0.0.0:8080:80/tcp", "10.0.0.5"), "10.0.0.5:8080:80/tcp");
        assert_eq!(format_port(Api::V3, "8080:80/tcp", "10.0.0.5"), "0.0.0.0:8080:80/tcp");
        assert_eq!(format_port(Api::V3, "1.2.3.4:8080:80/udp", "10.0.0.5"), "1.2.3.4:8080:80/udp");
        assert_eq!(format_port(Api::V1, "80/tcp", "10.0.0.5"), "80/tcp");
    }
}
