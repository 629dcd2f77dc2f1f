//! A stack's life through the CLI against a real nats-server: scale, history, rollback (byte for
//! byte), rm and back, ps, inspect, and two concurrent `up`s of different versions.

mod common;

use common::deploy;

use std::time::Duration;

use event_bus::model::{Service, Stack};
use event_bus::testkit::{fixtures, NatsServer};
use event_bus::{provision, Bus, NatsOptions, Provision, StateStore};

async fn raw(store: &StateStore, id: &str) -> Option<Vec<u8>> {
    let key = event_bus::Key::new(event_bus::Family::Service, id).unwrap();
    store.get_raw(&key).await.unwrap().map(|v| v.value.to_vec())
}

const V1: &str =
    "version: '2'\nservices:\n  web:\n    image: nginx:1.25\n    ports: [\"80\"]\n  db:\n    image: mysql:8\n";
const V2: &str = "version: '2'\nservices:\n  web:\n    image: nginx:1.27\n    ports: [\"80\", \"443\"]\n  cache:\n    image: redis:7\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_history_rollback_rm() {
    let nats = NatsServer::start();
    let url = nats.url();
    let bus = Bus::connect(&NatsOptions::new(url.clone()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docker-compose.yml");
    let f = f.to_str().unwrap();

    std::fs::write(f, V1).unwrap();
    assert_eq!(deploy(&["up", "-f", f, "-p", "app"], &url).0, 0);
    let (code, out, err) = deploy(&["scale", "app/web=3"], &url);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "stack app\n  ~ service web (update)\n      scale: 1 -> 3\napplied as revision 2\n");
    let web_r2 = raw(&store, "app=web").await.unwrap();
    let db_r2 = raw(&store, "app=db").await.unwrap();

    // v2: web changes (its scale is kept), db goes, cache comes.
    std::fs::write(f, V2).unwrap();
    let (_, out, _) = deploy(&["up", "-f", f, "-p", "app"], &url);
    assert!(
        out.contains("~ service web (update)") && out.contains("+ service cache") && out.contains("- service db"),
        "{out}"
    );
    assert_eq!(store.get::<Service>("app=web").await.unwrap().unwrap().value.scale, Some(3), "up keeps the scale");

    let (_, out, _) = deploy(&["history", "app"], &url);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with("1 ") && lines[1].ends_with(" up"));
    assert!(lines[2].ends_with("scale app/web=3"));
    assert!(lines[3].starts_with("3 "));

    // Roll back to revision 2: the very bytes of that revision's documents.
    let (code, out, err) = deploy(&["rollback", "app"], &url);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("applied as revision 4\n"), "{out}");
    assert_eq!(raw(&store, "app=web").await.unwrap(), web_r2, "web restored byte for byte");
    assert_eq!(raw(&store, "app=db").await.unwrap(), db_r2, "db restored byte for byte");
    assert!(raw(&store, "app=cache").await.is_none());

    // inspect and ps show it.
    let (_, out, _) = deploy(&["inspect", "app/web"], &url);
    let web: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((web["launch_config"]["image"].as_str(), web["scale"].as_u64()), (Some("nginx:1.25"), Some(3)));
    store.put(&fixtures::container("c1", "app-web-1", "app=web", "app", "h1", "10.42.0.5")).await.unwrap();
    store.put(&fixtures::status("c1", "h1", "running")).await.unwrap();
    let (_, out, _) = deploy(&["ps", "app", "-o", "json"], &url);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[1]["service"], "web");
    assert_eq!(rows[1]["containers"][0]["state"], "running");
    let (_, out, _) = deploy(&["ps"], &url);
    assert!(out.contains("app-web-1") && out.contains("10.42.0.5"), "{out}");

    // rm, then roll the removal back.
    let (_, out, _) = deploy(&["rm", "app"], &url);
    assert!(out.starts_with("stack app: remove\n"), "{out}");
    assert!(store.get::<Stack>("app").await.unwrap().is_none());
    assert!(raw(&store, "app=web").await.is_none());
    let (code, _, err) = deploy(&["rollback", "app"], &url);
    assert_eq!(code, 0, "{err}");
    assert_eq!(raw(&store, "app=web").await.unwrap(), web_r2);
    assert!(store.get::<Stack>("app").await.unwrap().is_some());

    // Errors are plain.
    let (code, _, err) = deploy(&["rollback", "app", "99"], &url);
    assert_eq!(code, 1);
    assert!(err.contains("no revision 99"), "{err}");
    let (code, _, err) = deploy(&["scale", "app/nope=2"], &url);
    assert_eq!((code, err.trim()), (2, "stack \"app\" has no service \"nope\""));
}

/// Two `up`s of different versions of one stack at once: one applies, whole; the other is
/// refused before writing anything; never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ups_never_mix() {
    let nats = NatsServer::start();
    let url = nats.url();
    let bus = Bus::connect(&NatsOptions::new(url.clone()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yml"), dir.path().join("b.yml"));
    // Many services each, so the writes of one take a while.
    let version = |image: &str| {
        let mut s = String::from("version: '2'\nservices:\n");
        for i in 0..40 {
            s.push_str(&format!("  s{i}:\n    image: {image}\n"));
        }
        s
    };
    std::fs::write(&a, version("a:1")).unwrap();
    std::fs::write(&b, version("b:1")).unwrap();
    for round in 0..5 {
        let stack = format!("st{round}");
        let (a, b, u1, u2) = (a.clone(), b.clone(), url.clone(), url.clone());
        let s1 = stack.clone();
        let t1 = std::thread::spawn(move || deploy(&["up", "-f", a.to_str().unwrap(), "-p", &s1], &u1));
        let s2 = stack.clone();
        let t2 = std::thread::spawn(move || deploy(&["up", "-f", b.to_str().unwrap(), "-p", &s2], &u2));
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        let images: std::collections::BTreeSet<String> = {
            let mut set = std::collections::BTreeSet::new();
            for i in 0..40 {
                let svc = store.get::<Service>(&format!("{stack}=s{i}")).await.unwrap().unwrap().value;
                set.insert(svc.launch_config.image);
            }
            set
        };
        assert_eq!(images.len(), 1, "round {round}: a mix of versions: {images:?}\n{r1:?}\n{r2:?}");
        let oks = [&r1, &r2].iter().filter(|r| r.0 == 0).count();
        assert!(oks >= 1, "round {round}: neither applied: {r1:?} {r2:?}");
        for r in [&r1, &r2] {
            if r.0 != 0 {
                assert!(r.2.contains("another deploy"), "round {round}: the loser says why: {}", r.2);
            }
        }
    }
}

/// Review findings, as behaviour: `up` keeps what the files cannot say, refuses a volume driver
/// change, updates the stack record, and `rm` of nothing is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_keeps_foreign_fields_and_guards_volumes() {
    let nats = NatsServer::start();
    let url = nats.url();
    let bus = Bus::connect(&NatsOptions::new(url.clone()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docker-compose.yml");
    let f = f.to_str().unwrap();
    let v = |driver: &str, tag: &str| {
        format!("version: '2'\nservices:\n  web:\n    image: nginx:{tag}\n    volumes: [data:/d]\nvolumes:\n  data:\n    driver: {driver}\n")
    };
    std::fs::write(f, v("local", "1")).unwrap();
    assert_eq!(deploy(&["up", "-f", f, "-p", "vol"], &url).0, 0);
    let st = store.get::<Stack>("vol").await.unwrap().unwrap().value;
    assert_eq!(st.extra["volumes"]["data"]["driver"], "local");

    // A field deploy does not write survives an up.
    let mut web = store.get::<Service>("vol=web").await.unwrap().unwrap().value;
    web.vip = Some("10.43.0.5".into());
    store.put(&web).await.unwrap();
    let (_, out, _) = deploy(&["up", "-f", f, "-p", "vol"], &url);
    assert_eq!(out, "stack vol: up to date\n");

    // Changing a volume's driver is refused, with nothing written.
    std::fs::write(f, v("convoy-nfs", "2")).unwrap();
    let before = store.version().await.unwrap();
    let (code, _, err) = deploy(&["up", "-f", f, "-p", "vol"], &url);
    assert_eq!(code, 1);
    assert!(err.contains("volume \"data\": its driver is \"local\""), "{err}");
    assert_eq!(store.version().await.unwrap(), before);

    // rm of a stack that does not exist.
    let (code, _, err) = deploy(&["rm", "nosuch"], &url);
    assert_eq!((code, err.trim()), (2, "no stack \"nosuch\""));
}
