//! The metadata API over real HTTP, against state in a real nats-server. Callers are told apart
//! by source address: each test client binds to its own 127.0.10.x address, and the fixture
//! gives containers those addresses as their IPs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_bus::model::LaunchConfig;
use event_bus::runtime::metrics::Metrics;
use event_bus::testkit::{fixtures, NatsServer};
use event_bus::{provision, Bus, Document, NatsOptions, Provision, StateCache, StateStore};
use rancher_metadata::server::{serve, App};
use rancher_metadata::source::follow_cache;
use serde_json::{json, Value};

struct Env {
    nats: NatsServer,
    store: StateStore,
    base: String,
    app: Arc<App>,
    metrics: Metrics,
    _cache: StateCache,
}

async fn fixture(store: &StateStore) {
    let mut h1 = fixtures::host("h1", "host-1", "10.0.0.1");
    h1.labels.insert("zone".into(), "a".into());
    store.put(&h1).await.unwrap();
    store.put(&fixtures::host("h2", "host-2", "10.0.0.2")).await.unwrap();
    store.put(&fixtures::stack("st-app", "App")).await.unwrap();
    store.put(&fixtures::stack("st-other", "other")).await.unwrap();

    let mut web = fixtures::service("sv-web", "st-app", "web");
    web.scale = Some(2);
    web.create_index = Some(1);
    web.launch_config.ports = vec!["8080:80/tcp".into()];
    web.launch_config.labels.insert("io.rancher.sidekicks".into(), "log".into());
    web.secondary_launch_configs =
        vec![LaunchConfig { name: Some("log".into()), image: "busybox".into(), ..Default::default() }];
    web.metadata = json!({"greeting": "hello", "nested": {"list": [1, 2.5, null, true]}});
    web.links.insert("App/db".into(), "database".into());
    web.token = Some("s3cr3t-token".into());
    store.put(&web).await.unwrap();
    store.put(&fixtures::service("sv-db", "st-app", "db")).await.unwrap();
    store.put(&fixtures::service("sv-oweb", "st-other", "web")).await.unwrap();

    let mut c1 = fixtures::container("c1", "App-web-1", "sv-web", "st-app", "h1", "127.0.10.2");
    c1.ports = vec!["8080:80/tcp".into()];
    store.put(&c1).await.unwrap();
    store.put(&fixtures::container("c2", "App-web-2", "sv-web", "st-app", "h2", "127.0.10.3")).await.unwrap();
    let mut log = fixtures::container("c3", "App-web-log-1", "sv-web", "st-app", "h1", "127.0.10.4");
    log.launch_config_name = Some("log".into());
    store.put(&log).await.unwrap();
    store.put(&fixtures::container("c4", "App-db-1", "sv-db", "st-app", "h2", "127.0.10.5")).await.unwrap();
    store.put(&fixtures::container("c5", "other-web-1", "sv-oweb", "st-other", "h1", "127.0.10.6")).await.unwrap();
    store.put(&fixtures::status("c1", "h1", "running")).await.unwrap();
}

async fn start() -> Env {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    fixture(&store).await;
    let metrics = Metrics::new();
    let cache = StateCache::start(&bus, &metrics).await.unwrap();
    let app = App::new(false, rancher_metadata::local_caller::LocalCallers::detect().ok(), &metrics);
    tokio::spawn(follow_cache(app.clone(), cache.clone(), Some("h1".into())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = app.clone();
    tokio::spawn(serve(listener, served, std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.is_loaded() {
        assert!(Instant::now() < deadline, "answers never loaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Env { nats, store, base: format!("http://{addr}"), app, metrics, _cache: cache }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// GET `path` from source address `from` with an optional Accept header.
async fn get(env: &Env, from: &str, path: &str, accept: Option<&str>) -> Reply {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client.get(format!("{}{path}", env.base));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Reply { status, headers, body: r.text().await.unwrap() }
}

/// Starts a long-poll request in the background; resolves to (body, time taken).
fn long_poll(env: &Env, path: String) -> tokio::task::JoinHandle<(String, Duration)> {
    let url = format!("{}{path}", env.base);
    tokio::spawn(async move {
        let t = Instant::now();
        let body = reqwest::get(url).await.unwrap().text().await.unwrap();
        (body, t.elapsed())
    })
}

const WEB1: &str = "127.0.10.2";
const LOG1: &str = "127.0.10.4";
const OTHER: &str = "127.0.10.6";
const STRANGER: &str = "127.0.10.99";
const JSON: Option<&str> = Some("application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_self_and_rendering() {
    let env = start().await;

    // The version list, text and JSON.
    let r = get(&env, WEB1, "/", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "2015-07-25\n2015-12-19\n2016-07-29\nlatest\n"));
    assert_eq!(
        get(&env, WEB1, "/", JSON).await.json(),
        json!({"2015-07-25": "/2015-07-25", "2015-12-19": "/2015-12-19", "2016-07-29": "/2016-07-29", "latest": "/latest"})
    );

    // self, text: scalars without a newline, maps as sorted lines with `/` on subtrees.
    assert_eq!(get(&env, WEB1, "/latest/self/container/name", None).await.body, "app-web-1");
    assert_eq!(get(&env, WEB1, "/2015-12-19/self/container/name", None).await.body, "App-web-1");
    assert_eq!(get(&env, WEB1, "/latest/self", None).await.body, "container/\nhost/\nservice/\nstack/\n");
    assert_eq!(get(&env, WEB1, "/latest/self/container/primary_ip", None).await.body, "127.0.10.2");
    assert_eq!(get(&env, WEB1, "/latest/self/container/ips", None).await.body, "0\n");
    assert_eq!(get(&env, WEB1, "/latest/self/container/state", None).await.body, "running");
    assert_eq!(get(&env, WEB1, "/latest/self/service/metadata/greeting", None).await.body, "hello");
    assert_eq!(get(&env, WEB1, "/latest/self/service/metadata/nested/list", None).await.body, "0\n1\n2\n3\n");
    assert_eq!(get(&env, WEB1, "/latest/self/service/metadata/nested/list/1", None).await.body, "2.5");
    assert_eq!(get(&env, WEB1, "/latest/self/service/metadata/nested/list/2", None).await.body, "");
    assert_eq!(get(&env, WEB1, "/latest/self/stack/name", None).await.body, "app");
    assert_eq!(get(&env, WEB1, "/latest/self/host/name", None).await.body, "host-1");
    assert_eq!(get(&env, WEB1, "/latest/self/host/labels/zone", None).await.body, "a");

    // A sidekick sees its own launch config as its service.
    assert_eq!(get(&env, LOG1, "/latest/self/service/name", None).await.body, "log");
    assert_eq!(get(&env, LOG1, "/latest/self/service/primary_service_name", None).await.body, "web");
    assert_eq!(get(&env, WEB1, "/latest/self/service/sidekicks", JSON).await.json(), json!(["log"]));

    // Ports per version.
    assert_eq!(get(&env, WEB1, "/2015-07-25/self/container/ports/0", None).await.body, "10.0.0.1:8080:80/tcp");
    assert_eq!(get(&env, WEB1, "/latest/self/container/ports/0", None).await.body, "0.0.0.0:8080:80/tcp");

    // Names vs objects.
    assert_eq!(
        get(&env, WEB1, "/2015-07-25/services/web/containers", JSON).await.json(),
        json!(["App-web-1", "App-web-2"])
    );
    assert_eq!(get(&env, WEB1, "/2015-07-25/services/web/containers", None).await.body, "0\n1\n");
    assert_eq!(get(&env, WEB1, "/latest/services/web/containers", None).await.body, "0=app-web-1\n1=app-web-2\n");
    assert_eq!(get(&env, WEB1, "/2015-12-19/stacks/App/services/web/containers/1/name", None).await.body, "App-web-2");
    assert_eq!(get(&env, WEB1, "/2015-07-25/stacks/App/services", JSON).await.json(), json!(["db", "web", "log"]));
    assert_eq!(get(&env, WEB1, "/2015-12-19/hosts/0/hostId", None).await.body, "1");
    assert_eq!(get(&env, WEB1, "/latest/hosts/0/hostId", None).await.status, 404);

    // Lists: by index, name or uuid; stable order (stack, then name; sidekicks after their primary).
    assert_eq!(
        get(&env, WEB1, "/latest/services", None).await.body,
        "0=db\n1=web\n2=log\n3=web\n",
        "services of stack app (db, web + its sidekick log), then stack other"
    );
    assert_eq!(get(&env, WEB1, "/latest/containers/c4/name", None).await.body, "app-db-1");
    assert_eq!(get(&env, WEB1, "/latest/stacks/other/services/web/containers/0/name", None).await.body, "other-web-1");

    // `/services/<name>` prefers the caller's stack.
    assert_eq!(get(&env, WEB1, "/latest/services/web/stack_name", None).await.body, "app");
    assert_eq!(get(&env, OTHER, "/latest/services/web/stack_name", None).await.body, "other");

    // Lowercase retry.
    assert_eq!(get(&env, WEB1, "/latest/Self/Container/Name", None).await.body, "app-web-1");

    // Keys are query-escaped in text, and an escaped segment is one key.
    assert_eq!(get(&env, WEB1, "/2015-12-19/self/service/links", None).await.body, "App%2Fdb\n");
    assert_eq!(get(&env, WEB1, "/2015-12-19/self/service/links/App%2Fdb", None).await.body, "database");
    assert_eq!(get(&env, WEB1, "/latest/self/service/links/app%2fdb", None).await.body, "database");

    // JSON: compact, sorted keys, no newline; YAML too.
    let r = get(&env, WEB1, "/latest/self/container", JSON).await;
    assert!(!r.body.ends_with('\n') && !r.body.contains(": "), "{}", r.body);
    let keys: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(get(&env, WEB1, "/latest/self/container/name", JSON).await.body, "\"app-web-1\"");
    let yaml = get(&env, WEB1, "/latest/self/stack", Some("application/x-yaml")).await.body;
    assert!(yaml.contains("name: app\n"), "{yaml}");

    // Every answer allows any origin.
    assert_eq!(get(&env, WEB1, "/latest/self/container/name", None).await.headers["access-control-allow-origin"], "*");
    assert_eq!(get(&env, STRANGER, "/latest/nothing", None).await.headers["access-control-allow-origin"], "*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_callers_errors_and_paths() {
    let env = start().await;

    // An unknown caller gets the local host and 404 for the rest of self.
    assert_eq!(get(&env, STRANGER, "/latest/self/host/name", None).await.body, "host-1");
    for part in ["container", "service", "stack"] {
        let r = get(&env, STRANGER, &format!("/latest/self/{part}"), None).await;
        assert_eq!((r.status, r.body.as_str()), (404, "Not found\n"), "{part}");
    }
    let r = get(&env, STRANGER, "/latest/self/container", JSON).await;
    assert_eq!(r.json(), json!({"code": 404, "message": "Not found", "type": "error"}));
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let r = get(&env, STRANGER, "/latest/self/container", Some("text/yaml")).await;
    assert!(r.status == 404 && r.body.contains("message: Not found"), "{}", r.body);

    // Secrets: the token only in the caller's own /self/service.
    assert_eq!(get(&env, WEB1, "/latest/self/service/token", None).await.body, "s3cr3t-token");
    assert_eq!(get(&env, LOG1, "/latest/self/service/token", None).await.body, "s3cr3t-token");
    // (A caller's own `/latest` includes its own `self`, token and all; nobody else's does.)
    for (from, path) in [
        (WEB1, "/latest/services/web"),
        (OTHER, "/latest/stacks/app"),
        (OTHER, "/latest"),
        (STRANGER, "/latest"),
        (OTHER, "/latest/services"),
    ] {
        let body = get(&env, from, path, JSON).await.body;
        assert!(!body.contains("s3cr3t"), "{path} from {from} leaked the token");
    }
    assert_eq!(get(&env, OTHER, "/latest/self/service/token", JSON).await.body, "null");

    // Callers are answered apart: after an unknown caller, a container on host-2 sees host-2.
    assert_eq!(get(&env, STRANGER, "/latest/self/host/name", None).await.body, "host-1");
    assert_eq!(get(&env, "127.0.10.3", "/latest/self/host/name", None).await.body, "host-2");

    // Fields the model keeps but Rancher never had stay out of answers, even nested ones.
    let mut db = env.store.get::<event_bus::model::Service>("sv-db").await.unwrap().unwrap().value;
    let mut lb = event_bus::model::LbConfig::default();
    lb.extra.insert("private_key".into(), json!("PEM-SECRET"));
    lb.port_rules
        .push(serde_json::from_value(json!({"source_port": 80, "target_port": 8080, "stray": "PEM-SECRET"})).unwrap());
    db.lb_config = Some(lb);
    let rev = env.store.put(&db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&env, WEB1, "/latest/version", None).await.body != rev.to_string() {
        assert!(Instant::now() < deadline, "the lb_config change never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = get(&env, OTHER, "/latest/services/db/lb_config", JSON).await.body;
    assert!(body.contains("\"source_port\":80") && !body.contains("PEM-SECRET"), "{body}");

    // Versions, methods, canonical paths, escapes, limits.
    let r = get(&env, WEB1, "/2014-01-01/self", None).await;
    assert_eq!((r.status, r.body.as_str()), (404, "Invalid version\n"));
    let r = get(&env, WEB1, "/latest//self/./container?x=1", None).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "/latest/self/container?x=1");
    assert_eq!(get(&env, WEB1, "/latest/self/container/", None).await.status, 200, "a trailing slash is ignored");
    let r = get(&env, WEB1, "/latest/self%zz", None).await;
    assert!(r.status == 400 && r.body.contains("invalid URL escape"), "{}", r.body);
    let long = format!("/latest/{}", "a/".repeat(5000));
    assert_eq!(get(&env, WEB1, &long, None).await.status, 414);
    let deep = format!("/latest/{}", "a/".repeat(100));
    assert_eq!(get(&env, WEB1, &deep, None).await.status, 404);
    let client = reqwest::Client::new();
    let r = client.post(format!("{}/latest/self", env.base)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (404, "404 page not found\n".to_string()));
    let r = client.head(format!("{}/latest/version", env.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The version is the environment version and is the same in every API version.
    let v = get(&env, WEB1, "/latest/version", None).await.body;
    assert_eq!(v, env.store.version().await.unwrap().to_string());
    assert_eq!(get(&env, WEB1, "/2015-07-25/version", None).await.body, v);
    assert_eq!(get(&env, WEB1, "/latest/name", None).await.body, "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_change_not_on_no_op_writes() {
    let env = start().await;
    let v0 = get(&env, WEB1, "/latest/version", None).await.body;

    // Nothing changes: the answer comes at maxWait, with the same value.
    let t = Instant::now();
    let r = get(&env, WEB1, &format!("/latest/version?wait=true&value={v0}&maxWait=1"), None).await;
    let took = t.elapsed();
    assert_eq!(r.body, v0);
    assert!(took >= Duration::from_millis(1000) && took < Duration::from_millis(1900), "returned after {took:?}");

    // A no-op write (same document again) moves the bucket but not the answers: waiters stay.
    let waiter = long_poll(&env, format!("/latest/version?wait=true&value={v0}&maxWait=2"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let same = env.store.get::<event_bus::model::Stack>("st-app").await.unwrap().unwrap().value;
    env.store.put(&same).await.unwrap();
    // So does a change nobody is shown: an agent's heartbeat, a field the model keeps but does not know.
    let mut h1 = env.store.get::<event_bus::model::Host>("h1").await.unwrap().unwrap().value;
    h1.heartbeat_ms = Some(1_234_567);
    h1.extra.insert("agent_build".into(), json!("abc"));
    env.store.put(&h1).await.unwrap();
    let v_now = get(&env, WEB1, "/latest/version", None).await.body;
    let (body, took) = waiter.await.unwrap();
    let v0 = get(&env, WEB1, "/latest/version", None).await.body;
    assert_eq!(body, v0, "the no-op and invisible writes did not change the version");
    assert_eq!(v_now, v0);
    assert!(took >= Duration::from_secs(2), "the no-op write released the waiter after {took:?}");
    let released = |env: &Env| {
        env.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("corral_metadata_change_to_answer_seconds_count ").map(str::to_string))
    };
    assert_eq!(released(&env).as_deref(), Some("0"), "waiters answered at maxWait are not change-released");

    // A real change releases the waiter at once with the new version.
    let waiter = long_poll(&env, format!("/latest/version?wait=true&value={v0}&maxWait=30"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut web = env.store.get::<event_bus::model::Service>("sv-web").await.unwrap().unwrap().value;
    web.metadata["greeting"] = json!("bonjour");
    let rev = env.store.put(&web).await.unwrap();
    let (body, took) = waiter.await.unwrap();
    assert_eq!(body, rev.to_string());
    assert!(took < Duration::from_secs(5), "released after {took:?}");
    assert_eq!(released(&env).as_deref(), Some("1"), "the release is measured server-side");
    assert_eq!(get(&env, WEB1, "/latest/self/service/metadata/greeting", None).await.body, "bonjour");

    // Long-poll works on any path: wait for a container's state to change.
    let base = env.base.clone();
    let waiter = tokio::spawn(async move {
        reqwest::get(format!("{base}/latest/containers/c2/state?wait=true&value=starting&maxWait=30"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.store.put(&fixtures::status("c2", "h2", "running")).await.unwrap();
    assert_eq!(waiter.await.unwrap(), "running");
    let _ = &env.app;
}

/// confd's rancher backend, reproduced from the spec (§3.1): probe `/`, read keys as JSON under a
/// version prefix, flatten lists by `name`, watch `/version?wait=true&value=init&maxWait=10`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confd_style_client_sees_changes_within_one_watch_round() {
    let env = start().await;
    let client = reqwest::Client::builder().local_address(WEB1.parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    assert_eq!(client.get(format!("{}/", env.base)).send().await.unwrap().status(), 200);

    let read = |key: &'static str| {
        let client = client.clone();
        let url = format!("{}/2015-12-19{key}", env.base);
        async move {
            let v: Value =
                client.get(url).header("Accept", "application/json").send().await.unwrap().json().await.unwrap();
            let mut flat = std::collections::BTreeMap::new();
            flatten(key, &v, &mut flat);
            flat
        }
    };
    let meta = read("/self/service/metadata").await;
    assert_eq!(meta["/self/service/metadata/greeting"], "hello");
    assert_eq!(meta["/self/service/metadata/nested/list/2"], "null");
    let members = read("/stacks/App/services/web/containers").await;
    assert_eq!(members["/stacks/App/services/web/containers/App-web-2/primary_ip"], "127.0.10.3");

    // The watch loop: first round returns the current version at once (value=init).
    let watch = |value: String| {
        let client = client.clone();
        let url = format!("{}/2015-12-19/version?wait=true&value={value}&maxWait=10", env.base);
        async move {
            client.get(url).header("Accept", "application/json").send().await.unwrap().json::<String>().await.unwrap()
        }
    };
    let v1 = watch("init".into()).await;
    let next = tokio::spawn(watch(v1.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut web = env.store.get::<event_bus::model::Service>("sv-web").await.unwrap().unwrap().value;
    web.metadata["greeting"] = json!("hej");
    env.store.put(&web).await.unwrap();
    env.store.put(&fixtures::container("c6", "App-web-3", "sv-web", "st-app", "h2", "127.0.10.7")).await.unwrap();
    let v2 = next.await.unwrap();
    assert_ne!(v1, v2, "the watch fired");
    // The template re-reads after the watch fires; both changes may need the next round at most.
    let mut rounds = 0;
    loop {
        let meta = read("/self/service/metadata").await;
        let members = read("/stacks/App/services/web/containers").await;
        if meta["/self/service/metadata/greeting"] == "hej"
            && members.contains_key("/stacks/App/services/web/containers/App-web-3/name")
        {
            break;
        }
        rounds += 1;
        assert!(rounds < 2, "changes not visible after one more watch round");
        let _ = tokio::time::timeout(Duration::from_secs(10), watch(v2.clone())).await;
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut std::collections::BTreeMap<String, String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| flatten(&format!("{prefix}/{k}"), v, out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| {
            let key = v.get("name").and_then(Value::as_str).map(String::from).unwrap_or(i.to_string());
            flatten(&format!("{prefix}/{key}"), v, out)
        }),
        Value::Null => drop(out.insert(prefix.to_string(), "null".into())),
        Value::String(s) => drop(out.insert(prefix.to_string(), s.clone())),
        other => drop(out.insert(prefix.to_string(), other.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_keeps_answers_and_changes_flow_after() {
    let mut env = start().await;
    env.nats.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&env, WEB1, "/latest/self/container/name", None).await.body, "app-web-1");
    env.nats.restart();
    let bus = Bus::connect(&NatsOptions::new(env.nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = StateStore::open(&bus).await.unwrap();
    let c = fixtures::container("c9", "App-web-9", "sv-web", "st-app", "h2", "127.0.10.9");
    store.put(&c).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get(&env, "127.0.10.9", "/latest/self/container/name", None).await.body == "app-web-9" {
            break;
        }
        assert!(Instant::now() < deadline, "the change made after the restart never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = c.key();
}
