//! The answers being served, and where they come from: the `event-bus` state cache (the normal
//! mode) or a static answers file (the original's standalone format).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use event_bus::{Family, Record, Snapshot};
use serde_json::Value;

use crate::node::{Interner, Node};
use crate::render::{render, Format};
use crate::tree::{self, Api, Context};

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// By source address (or the whole `X-Forwarded-For` value).
    Ip(String),
    /// A process in the Docker container of this id (a caller on the host's network, whose
    /// address names no container: see `local_caller`).
    Docker(String),
}

/// Caller entries built so far in one generation, by (API version, caller), and their size.
#[derive(Default)]
struct CallerCache {
    entries: HashMap<(Api, Caller), Option<Node>>,
    bytes: usize,
}
type Built = Mutex<CallerCache>;

/// Per-caller entries: built on demand from a snapshot, or given by an answers file.
enum Callers {
    Snapshot { snap: Arc<Snapshot>, built: Built },
    Static(BTreeMap<String, BTreeMap<String, Node>>),
}

/// What identifies a rendered answer that does not depend on the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RenderKey {
    pub version: String,
    pub path: Vec<String>,
    /// `/services/<name>` depends on the caller's stack.
    pub prefer_stack: Option<String>,
    pub format: Format,
}

/// Rendered answers kept per generation (a few thousand distinct paths at most in practice).
const MAX_RENDERED: usize = 4096;
const MAX_RENDERED_BYTES: usize = 64 << 20;

#[derive(Default)]
struct RenderCache {
    bodies: HashMap<RenderKey, bytes::Bytes>,
    bytes: usize,
}

/// The trees of one snapshot, each built on first use (requests wait for it off the async
/// workers, see `Data::needs_build`).
struct Lazy {
    snap: Arc<Snapshot>,
    ctx: Context,
    trees: [OnceLock<Node>; 3],
}

impl Lazy {
    fn slot(&self, api: Api) -> &OnceLock<Node> {
        match api {
            Api::V1 => &self.trees[0],
            Api::V2 => &self.trees[1],
            Api::V3 => &self.trees[2],
        }
    }

    fn tree(&self, api: Api) -> &Node {
        self.slot(api).get_or_init(|| tree::default_tree(&self.snap, api, &self.ctx))
    }
}

/// What metadata shows: a change elsewhere (volumes, leases, certificates) is not a new version.
const SHOWN: &[Family] = &[
    Family::Environment,
    Family::Host,
    Family::Stack,
    Family::Service,
    Family::Container,
    Family::Status,
    Family::Health,
    Family::Fqdn,
];

/// The part of a record that some answer shows: a change elsewhere (an agent's heartbeat, a
/// container's exit code, an image, a field the model keeps but does not know) is not a new
/// version, so long-pollers are not woken for it.
fn shown(r: &Option<Record>) -> Option<Record> {
    use event_bus::model::LaunchConfig;
    let shown_lc = |lc: &LaunchConfig| LaunchConfig {
        name: lc.name.clone(),
        ports: lc.ports.clone(),
        expose: lc.expose.clone(),
        labels: lc.labels.clone(),
        health_check: lc.health_check.as_ref().map(tree::known_health_check),
        ..Default::default()
    };
    Some(match r.as_ref()? {
        Record::Host(h) => {
            let mut h = h.clone();
            (h.subnet, h.heartbeat_ms) = (None, None);
            h.extra.clear();
            Record::Host(h)
        }
        Record::Stack(st) => {
            let mut st = st.clone();
            st.description.clear();
            st.extra.clear();
            Record::Stack(st)
        }
        Record::Service(svc) => {
            let mut svc = svc.clone();
            svc.launch_config = shown_lc(&svc.launch_config);
            svc.secondary_launch_configs = svc.secondary_launch_configs.iter().map(shown_lc).collect();
            svc.lb_config = svc.lb_config.as_ref().map(tree::known_lb_config);
            svc.selector_container = None;
            svc.extra.clear();
            Record::Service(svc)
        }
        Record::Container(c) => {
            let mut c = c.clone();
            c.health_check = c.health_check.as_ref().map(tree::known_health_check);
            (c.image, c.desired_state) = (None, String::new());
            c.extra.clear();
            Record::Container(c)
        }
        Record::Status(st) => {
            let mut st = st.clone();
            (st.exit_code, st.error, st.host_uuid) = (None, None, String::new());
            st.extra.clear();
            Record::Status(st)
        }
        Record::Health(h) => {
            let mut h = h.clone();
            h.reports.clear();
            h.extra.clear();
            Record::Health(h)
        }
        Record::Fqdn(f) => {
            let mut f = f.clone();
            f.extra.clear();
            Record::Fqdn(f)
        }
        Record::Environment(e) => {
            let mut e = e.clone();
            e.extra.clear();
            Record::Environment(e)
        }
        other => other.clone(),
    })
}

fn version_bodies(token: &str) -> [bytes::Bytes; 3] {
    let v = Node::String(token.into());
    [Format::Text, Format::Json, Format::Yaml].map(|f| bytes::Bytes::from(render(&v, f)))
}

/// An answers file's entry for `version`; `latest`, when the file has none, is the highest version.
fn by_version<'a, V>(map: &'a BTreeMap<String, V>, version: &str) -> Option<&'a V> {
    map.get(version).or_else(|| match version {
        "latest" => map.iter().filter(|(k, _)| k.as_str() != "latest").map(|(_, v)| v).next_back(),
        _ => None,
    })
}

/// One immutable generation of answers. Requests hold an `Arc<Data>` for their whole life.
pub struct Data {
    rendered: Mutex<RenderCache>,
    lazy: Option<Lazy>,
    /// Changes exactly when some answer changes; what long-poll waiters wait on.
    pub generation: u64,
    /// The `/version` token (environment version of the last change that altered answers).
    pub token: String,
    /// `/version` answered in text, JSON and YAML, built once: after a change every long-poller
    /// asks for it at once, and each of them gets these bytes rather than its own rendering.
    version_bodies: [bytes::Bytes; 3],
    /// When this generation started being served (set by `App::publish`); long-poll answers
    /// measure their delay from here.
    pub published: std::time::Instant,
    defaults: BTreeMap<String, Node>,
    callers: Callers,
}

/// A bound on the caller entries cached per generation, by their JSON size: a caller's `self`
/// holds its service and stack with their containers, so big services make big entries.
const MAX_CACHED_CALLER_BYTES: usize = 64 << 20;

impl Data {
    /// Nothing loaded yet: every version path answers 404, as the original before its first load.
    pub fn empty() -> Data {
        Data {
            rendered: Default::default(),
            lazy: None,
            generation: 0,
            token: String::new(),
            version_bodies: version_bodies(""),
            published: std::time::Instant::now(),
            defaults: BTreeMap::new(),
            callers: Callers::Static(BTreeMap::new()),
        }
    }

    /// A caller-independent answer rendered earlier in this generation.
    pub fn rendered(&self, key: &RenderKey) -> Option<bytes::Bytes> {
        self.rendered.lock().expect("render cache poisoned").bodies.get(key).cloned()
    }

    /// Keeps a rendered answer for the rest of this generation, within the cache's bounds.
    pub fn remember(&self, key: RenderKey, body: bytes::Bytes) {
        let mut c = self.rendered.lock().expect("render cache poisoned");
        if c.bodies.len() < MAX_RENDERED && c.bytes + body.len() <= MAX_RENDERED_BYTES {
            c.bytes += body.len();
            c.bodies.insert(key, body);
        }
    }

    /// The version names served, for `GET /`. `latest` is always listed.
    pub fn version_names(&self) -> Vec<String> {
        if self.lazy.is_some() {
            return Api::NAMES.iter().map(|(n, _)| n.to_string()).collect();
        }
        let mut v: Vec<String> = self.defaults.keys().cloned().collect();
        if !v.iter().any(|n| n == "latest") {
            v.push("latest".into());
        }
        v
    }

    /// The shared tree of a version; `latest` falls back to the highest version name.
    pub fn default_tree(&self, version: &str) -> Option<&Node> {
        if let Some(lazy) = &self.lazy {
            return Api::from_name(version).map(|api| lazy.tree(api));
        }
        by_version(&self.defaults, version)
    }

    /// Whether a caller at `ip` might still be found by its Docker container: state-cache mode
    /// (an answers file knows callers only by address) and no container has that address.
    pub fn ip_is_unknown(&self, ip: &str) -> bool {
        matches!(&self.callers, Callers::Snapshot { snap, .. } if snap.container_by_ip(ip).is_none())
    }

    /// The caller's own entry under `version` (a map), if it has one.
    pub fn caller(&self, version: &str, who: &Caller) -> Option<Node> {
        match (&self.callers, who) {
            (Callers::Static(entries), Caller::Ip(ip)) => {
                let entries = by_version(entries, version)?;
                entries.get(ip).cloned()
            }
            (Callers::Static(_), Caller::Docker(_)) => None,
            (Callers::Snapshot { snap, built }, _) => {
                let api = Api::from_name(version)?;
                let key = (api, who.clone());
                if let Some(hit) = built.lock().expect("caller cache poisoned").entries.get(&key) {
                    return hit.clone();
                }
                let container = match who {
                    Caller::Ip(ip) => snap.container_by_ip(ip),
                    Caller::Docker(id) => {
                        // Only a container this server's host runs (main turns the lookup off
                        // without --host-uuid).
                        let here = self.lazy.as_ref().and_then(|l| l.ctx.local_host_uuid.as_deref());
                        here.and_then(|h| snap.container_by_docker_id(id, Some(h)))
                    }
                };
                let entry = container.map(|c| Node::object(vec![("self".into(), tree::self_tree(snap, api, c))]));
                // Only known containers are cached (an unknown or forged X-Forwarded-For value
                // must not fill memory), and the cache is bounded by the size of its entries.
                if let Some(e) = &entry {
                    let size = serde_json::to_vec(e).map(|b| b.len()).unwrap_or(usize::MAX);
                    let mut cache = built.lock().expect("caller cache poisoned");
                    if cache.bytes + size <= MAX_CACHED_CALLER_BYTES {
                        cache.bytes += size;
                        cache.entries.insert(key, entry.clone());
                    }
                }
                entry
            }
        }
    }

    /// Answers for a snapshot. Returns `None` when they would equal `previous`'s (a write that
    /// changed nothing a caller can see keeps the version, so no long-poller wakes).
    pub fn from_snapshot(snap: Arc<Snapshot>, local_host: Option<String>, previous: &Data) -> Option<Data> {
        if let Some(prev) = &previous.lazy {
            let visible = snap.changes_since(&prev.snap, SHOWN).iter().any(|(a, b)| shown(a) != shown(b));
            if !visible && prev.ctx.local_host_uuid == local_host {
                return None;
            }
        }
        let token = snap.version().to_string();
        let ctx = Context { local_host_uuid: local_host, version: token.clone() };
        Some(Data {
            rendered: Default::default(),
            lazy: Some(Lazy { snap: snap.clone(), ctx, trees: Default::default() }),
            generation: previous.generation + 1,
            version_bodies: version_bodies(&token),
            published: std::time::Instant::now(),
            token,
            defaults: BTreeMap::new(),
            callers: Callers::Snapshot { snap, built: Default::default() },
        })
    }

    /// The `/version` answer of an API version (the token and its rendering in `format`), when
    /// it can be given without building its tree (state-cache mode, where it is the generation's
    /// token).
    pub fn version_answer(&self, version: &str, format: Format) -> Option<(&str, bytes::Bytes)> {
        if self.lazy.is_none() || Api::from_name(version).is_none() {
            return None;
        }
        let body = match format {
            Format::Text => &self.version_bodies[0],
            Format::Json => &self.version_bodies[1],
            Format::Yaml => &self.version_bodies[2],
        };
        Some((self.token.as_str(), body.clone()))
    }

    /// Whether answering `version` needs a tree built first (slow for a big environment: the
    /// server does that on a blocking thread).
    pub fn needs_build(&self, version: &str) -> bool {
        match (&self.lazy, Api::from_name(version)) {
            (Some(lazy), Some(api)) => lazy.slot(api).get().is_none(),
            _ => false,
        }
    }

    /// Answers from the original's static file: version → client IP or `default` → tree.
    /// Each client entry is served over `default` (its missing top-level keys come from there).
    pub fn from_answers_file(path: &Path, previous: &Data) -> Result<Option<Data>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed: Value = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let Value::Object(versions) = parsed else {
            return Err(format!("{}: expected a map of version → client → tree", path.display()));
        };
        let mut defaults = BTreeMap::new();
        let mut callers: BTreeMap<String, BTreeMap<String, Node>> = BTreeMap::new();
        let mut strings = Interner::default();
        for (version, clients) in versions {
            let Value::Object(clients) = clients else {
                return Err(format!(
                    "{}: version {version:?}: expected a map of client IP or `default` → tree",
                    path.display()
                ));
            };
            for (client, tree) in clients {
                // Nodes keep their maps' keys sorted, as the original rendered them.
                let tree = Node::from_value(&tree, &mut strings);
                if client == "default" {
                    defaults.insert(version.clone(), tree);
                } else {
                    callers.entry(version.clone()).or_default().insert(client, tree);
                }
            }
            defaults.entry(version.clone()).or_insert_with(|| Node::object(Vec::new()));
        }
        if let Callers::Static(prev) = &previous.callers {
            if defaults == previous.defaults && &callers == prev {
                return Ok(None);
            }
        }
        let generation = previous.generation + 1;
        Ok(Some(Data {
            rendered: Default::default(),
            lazy: None,
            generation,
            token: generation.to_string(),
            version_bodies: version_bodies(&generation.to_string()),
            published: std::time::Instant::now(),
            defaults,
            callers: Callers::Static(callers),
        }))
    }
}
