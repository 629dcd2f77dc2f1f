//! The answers being served, and where they come from: the `event-bus` state cache (the normal
//! mode) or a static answers file (the original's standalone format).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use event_bus::Snapshot;
use serde_json::Value;

use crate::tree::{self, Api, Context};

/// Caller entries built so far in one generation, by (API version, caller IP).
type Built = Mutex<HashMap<(Api, String), Option<Arc<Value>>>>;

/// Per-caller entries: built on demand from a snapshot, or given by an answers file.
enum Callers {
    Snapshot { snap: Arc<Snapshot>, built: Built },
    Static(BTreeMap<String, BTreeMap<String, Arc<Value>>>),
}

/// What identifies a rendered answer that does not depend on the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RenderKey {
    pub version: String,
    pub path: Vec<String>,
    /// `/services/<name>` depends on the caller's stack.
    pub prefer_stack: Option<String>,
    pub format: crate::render::Format,
}

/// Rendered answers kept per generation (a few thousand distinct paths at most in practice).
const MAX_RENDERED: usize = 4096;
const MAX_RENDERED_BYTES: usize = 64 << 20;

#[derive(Default)]
struct RenderCache {
    bodies: HashMap<RenderKey, bytes::Bytes>,
    bytes: usize,
}

/// The trees of one snapshot: 2016-07-29 (= latest) built at once, because it decides whether
/// anything changed; the older versions only when somebody asks for them.
struct Lazy {
    snap: Arc<Snapshot>,
    ctx: Context,
    v1: OnceLock<Arc<Value>>,
    v2: OnceLock<Arc<Value>>,
    v3: Arc<Value>,
    /// Names in their original case: the one thing V1/V2 show that V3 (lowercased) does not.
    names: Vec<String>,
}

impl Lazy {
    fn tree(&self, api: Api) -> &Arc<Value> {
        let build = || Arc::new(tree::default_tree(&self.snap, api, &self.ctx));
        match api {
            Api::V1 => self.v1.get_or_init(build),
            Api::V2 => self.v2.get_or_init(build),
            Api::V3 => &self.v3,
        }
    }
}

fn original_names(snap: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = snap
        .containers()
        .map(|c| c.name.clone())
        .chain(snap.services().flat_map(|s| {
            std::iter::once(s.name.clone()).chain(s.secondary_launch_configs.iter().filter_map(|l| l.name.clone()))
        }))
        .chain(snap.stacks().map(|s| s.name.clone()))
        .collect();
    v.sort();
    v
}

/// One immutable generation of answers. Requests hold an `Arc<Data>` for their whole life.
pub struct Data {
    rendered: Mutex<RenderCache>,
    lazy: Option<Lazy>,
    /// Changes exactly when some answer changes; what long-poll waiters wait on.
    pub generation: u64,
    /// The `/version` token (environment version of the last change that altered answers).
    pub token: String,
    defaults: BTreeMap<String, Arc<Value>>,
    callers: Callers,
}

/// A bound on caller entries cached per generation (each is a few objects).
const MAX_CACHED_CALLERS: usize = 50_000;

impl Data {
    /// Nothing loaded yet: every version path answers 404, as the original before its first load.
    pub fn empty() -> Data {
        Data {
            rendered: Default::default(),
            lazy: None,
            generation: 0,
            token: String::new(),
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
    pub fn default_tree(&self, version: &str) -> Option<&Arc<Value>> {
        if let Some(lazy) = &self.lazy {
            return Api::from_name(version).map(|api| lazy.tree(api));
        }
        self.defaults.get(version).or_else(|| match version {
            "latest" => self.defaults.iter().filter(|(k, _)| k.as_str() != "latest").map(|(_, v)| v).next_back(),
            _ => None,
        })
    }

    /// The caller's own entry under `version` (a map), if it has one.
    pub fn caller(&self, version: &str, ip: &str) -> Option<Arc<Value>> {
        match &self.callers {
            Callers::Static(by_version) => {
                let entries = by_version.get(version).or_else(|| match version {
                    "latest" => by_version.iter().filter(|(k, _)| k.as_str() != "latest").map(|(_, v)| v).next_back(),
                    _ => None,
                })?;
                entries.get(ip).cloned()
            }
            Callers::Snapshot { snap, built } => {
                let api = Api::from_name(version)?;
                let key = (api, ip.to_string());
                if let Some(hit) = built.lock().expect("caller cache poisoned").get(&key) {
                    return hit.clone();
                }
                let entry = tree::self_tree(snap, api, ip).map(|s| Arc::new(serde_json::json!({ "self": s })));
                let mut cache = built.lock().expect("caller cache poisoned");
                if cache.len() < MAX_CACHED_CALLERS {
                    cache.insert(key, entry.clone());
                }
                entry
            }
        }
    }

    /// Answers for a snapshot. Returns `None` when they would equal `previous`'s (a write that
    /// changed nothing a caller can see keeps the version, so no long-poller wakes).
    pub fn from_snapshot(snap: Arc<Snapshot>, local_host: Option<String>, previous: &Data) -> Option<Data> {
        let mut ctx = Context { local_host_uuid: local_host, version: previous.token.clone() };
        let v3 = tree::default_tree(&snap, Api::V3, &ctx);
        let names = original_names(&snap);
        if let Some(prev) = &previous.lazy {
            if *prev.v3 == v3 && prev.names == names && callers_unchanged(previous, &snap) {
                return None;
            }
        }
        let token = snap.version().to_string();
        let mut v3 = v3;
        v3["version"] = Value::String(token.clone());
        ctx.version = token.clone();
        Some(Data {
            rendered: Default::default(),
            lazy: Some(Lazy {
                snap: snap.clone(),
                ctx,
                v1: OnceLock::new(),
                v2: OnceLock::new(),
                v3: Arc::new(v3),
                names,
            }),
            generation: previous.generation + 1,
            token,
            defaults: BTreeMap::new(),
            callers: Callers::Snapshot { snap, built: Mutex::new(HashMap::new()) },
        })
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
        let mut callers: BTreeMap<String, BTreeMap<String, Arc<Value>>> = BTreeMap::new();
        for (version, clients) in versions {
            let Value::Object(clients) = clients else {
                return Err(format!(
                    "{}: version {version:?}: expected a map of client IP or `default` → tree",
                    path.display()
                ));
            };
            for (client, mut tree) in clients {
                tree::sort_keys(&mut tree);
                if client == "default" {
                    defaults.insert(version.clone(), Arc::new(tree));
                } else {
                    callers.entry(version.clone()).or_default().insert(client, Arc::new(tree));
                }
            }
            defaults.entry(version.clone()).or_insert_with(|| Arc::new(Value::Object(Default::default())));
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
            defaults,
            callers: Callers::Static(callers),
        }))
    }
}

/// Self entries derive from the same objects as the shared trees, except the service `token`
/// (never in the shared tree). Compare tokens so a token change still reaches its callers.
fn callers_unchanged(previous: &Data, snap: &Snapshot) -> bool {
    match &previous.callers {
        Callers::Snapshot { snap: old, .. } => {
            let tokens = |s: &Snapshot| s.services().map(|svc| svc.extra.get("token").cloned()).collect::<Vec<_>>();
            tokens(old) == tokens(snap)
        }
        Callers::Static(_) => false,
    }
}
