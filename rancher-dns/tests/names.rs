//! Black-box: the binary against NATS state and a real BIND upstream, asked with `dig` from
//! several caller addresses (each 127.0.x.y is a container of the fixture).

mod common;

use std::time::Duration;

use common::{Dns, Named};
use event_bus::model::{ContainerHealth, Extra, HealthCheck, ServiceKind};
use event_bus::testkit::{fixtures, NatsServer};
use event_bus::{provision, Bus, Key, NatsOptions, Provision, StateStore};

// Callers (container IPs).
const WEB1: &str = "127.0.10.1";
const WEB2: &str = "127.0.10.2";
const LOGGER: &str = "127.0.10.3";
const API: &str = "127.0.10.5";
const DB1: &str = "127.0.20.1";
const DB2: &str = "127.0.20.2";
const SOLO: &str = "127.0.30.1";
const STRANGER: &str = "127.0.0.1";

fn upstream_zone() -> String {
    let mut z = String::from("www.example.test. IN A 127.0.0.80\n");
    z.push_str("web. IN A 127.0.0.99\n"); // what `web` means to the outside world
    z
}

fn health(uuid: &str, state: &str) -> ContainerHealth {
    ContainerHealth {
        uuid: uuid.into(),
        health_state: state.into(),
        health_check_hosts: vec![],
        reports: Default::default(),
        extra: Extra::new(),
    }
}

fn check() -> HealthCheck {
    serde_json::from_value(serde_json::json!({"port": 80, "interval": 2000})).unwrap()
}

async fn fixture(store: &StateStore, second_upstream: &str) {
    store.put(&fixtures::host("h1", "host-1", "127.0.1.1")).await.unwrap();
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    store.put(&fixtures::stack("st2", "db")).await.unwrap();

    let mut web = fixtures::service("s-web", "st1", "web");
    web.scale = Some(2);
    web.launch_config.ports = vec!["8080:80/tcp".into()];
    web.secondary_launch_configs = vec![event_bus::model::LaunchConfig {
        name: Some("logger".into()),
        expose: vec!["514/udp".into()],
        ..Default::default()
    }];
    web.links.insert("db/mysql".into(), "database".into());
    store.put(&web).await.unwrap();
    for (uuid, name, ip) in [("c-web1", "app-web-1", WEB1), ("c-web2", "app-web-2", WEB2)] {
        store.put(&fixtures::container(uuid, name, "s-web", "st1", "h1", ip)).await.unwrap();
        store.put(&fixtures::status(uuid, "h1", "running")).await.unwrap();
    }
    let mut logger = fixtures::container("c-logger1", "app-web-logger-1", "s-web", "st1", "h1", LOGGER);
    logger.launch_config_name = Some("logger".into());
    logger.labels.insert("io.rancher.container.dns.priority".into(), "None".into());
    store.put(&logger).await.unwrap();
    store.put(&fixtures::status("c-logger1", "h1", "running")).await.unwrap();

    let mut mysql = fixtures::service("s-mysql", "st2", "mysql");
    mysql.launch_config.health_check = Some(check());
    store.put(&mysql).await.unwrap();
    for (uuid, name, ip, h) in [("c-db1", "db-mysql-1", DB1, "healthy"), ("c-db2", "db-mysql-2", DB2, "unhealthy")] {
        let mut c = fixtures::container(uuid, name, "s-mysql", "st2", "h1", ip);
        c.health_check = Some(check());
        store.put(&c).await.unwrap();
        store.put(&fixtures::status(uuid, "h1", "running")).await.unwrap();
        store.put(&health(uuid, h)).await.unwrap();
    }

    // A service whose only container is still initializing: the name must not vanish.
    let mut api = fixtures::service("s-api", "st1", "api");
    api.launch_config.health_check = Some(check());
    store.put(&api).await.unwrap();
    let mut c = fixtures::container("c-api1", "app-api-1", "s-api", "st1", "h1", API);
    c.health_check = Some(check());
    store.put(&c).await.unwrap();
    store.put(&fixtures::status("c-api1", "h1", "running")).await.unwrap();
    store.put(&health("c-api1", "initializing")).await.unwrap();

    let mut ext = fixtures::service("s-ext", "st1", "ext");
    ext.kind = ServiceKind::External;
    ext.external_ips = vec!["192.0.2.10".into(), "192.0.2.11".into()];
    store.put(&ext).await.unwrap();
    let mut cname = fixtures::service("s-cname", "st1", "search");
    cname.kind = ServiceKind::External;
    cname.hostname = Some("www.example.test".into());
    store.put(&cname).await.unwrap();

    let mut all = fixtures::service("s-all", "st1", "all");
    all.kind = ServiceKind::Alias;
    all.links = [("app/web".to_string(), String::new()), ("db/mysql".to_string(), String::new())].into();
    store.put(&all).await.unwrap();
    // Two aliases pointing at each other (rancher/rancher#7922 spun the CPU on this).
    let mut l1 = fixtures::service("s-loop1", "st1", "loop1");
    l1.kind = ServiceKind::Alias;
    l1.links = [("app/loop2".to_string(), String::new())].into();
    store.put(&l1).await.unwrap();
    let mut l2 = fixtures::service("s-loop2", "st1", "loop2");
    l2.kind = ServiceKind::Alias;
    l2.links = [("app/loop1".to_string(), String::new()), ("app/web".to_string(), String::new())].into();
    store.put(&l2).await.unwrap();

    // A standalone container with a Docker link and its own resolver.
    let mut solo = fixtures::container("c-solo", "solo", "", "", "h1", SOLO);
    solo.service_uuid = None;
    solo.stack_uuid = None;
    solo.links.insert("webby".into(), "c-web2".into());
    solo.dns = vec![second_upstream.to_string()];
    store.put(&solo).await.unwrap();
    store.put(&fixtures::status("c-solo", "h1", "running")).await.unwrap();
}

struct World {
    _nats: NatsServer,
    named: Named,
    _named2: Named,
    store: StateStore,
    dns: Dns,
}

async fn world() -> World {
    let nats = NatsServer::start();
    let named = Named::start(&upstream_zone());
    let named2 = Named::start("only.second.test. IN A 127.0.0.82");
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    fixture(&store, &named2.addr()).await;
    let dns = Dns::start(
        &["--ttl", "5", "--upstream", &named.addr(), "--rancher-metadata-answer", "127.0.0.250"],
        Some(&nats.url()),
    );
    // The answers follow the state; wait for the last fixture write to show.
    common::within(Duration::from_secs(10), "fixture visible", || dns.dig(SOLO, &["webby"]).status == "NOERROR");
    World { _nats: nats, named, _named2: named2, store, dns }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rancher_names_for_every_caller() {
    let w = world().await;
    let dns = &w.dns;

    // <service>.<stack>: both running containers, authoritative, recursion available, --ttl.
    let d = dns.dig(STRANGER, &["web.app.rancher.internal"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.data("A"), [WEB1, WEB2]);
    for f in ["qr", "aa", "rd", "ra"] {
        assert!(d.has_flag(f), "flag {f} missing: {}", d.raw);
    }
    assert!(d.answer.iter().all(|r| r.1 == 5 && r.0 == "web.app.rancher.internal."), "{:?}", d.answer);
    // The answer carries the query's own name, its case kept.
    let d = dns.dig(STRANGER, &["WEB.App.rancher.internal"]);
    assert!(d.answer.iter().all(|r| r.0 == "WEB.App.rancher.internal."), "{:?}", d.answer);

    // Sidekick, container name, metadata.
    assert_eq!(dns.dig(STRANGER, &["logger.web.app.rancher.internal"]).data("A"), [LOGGER]);
    assert_eq!(dns.dig(STRANGER, &["app-web-1.rancher.internal"]).data("A"), [WEB1]);
    assert_eq!(dns.dig(STRANGER, &["rancher-metadata.rancher.internal"]).data("A"), ["127.0.0.250"]);

    // Health: the unhealthy container is left out; a service with nothing healthy keeps its name.
    assert_eq!(dns.dig(STRANGER, &["mysql.db.rancher.internal"]).data("A"), [DB1]);
    assert_eq!(dns.dig(STRANGER, &["api.app.rancher.internal"]).data("A"), [API]);

    // External services: addresses, or a CNAME whose target the upstream resolves.
    assert_eq!(dns.dig(STRANGER, &["ext.app.rancher.internal"]).data("A"), ["192.0.2.10", "192.0.2.11"]);
    let d = dns.dig(STRANGER, &["search.app.rancher.internal"]);
    assert_eq!(d.data("CNAME"), ["www.example.test."]);
    assert_eq!(d.data("A"), ["127.0.0.80"]);
    assert_eq!(d.answer[0].2, "CNAME", "the CNAME comes first");

    // Alias: union of targets; alias loops terminate.
    assert_eq!(dns.dig(STRANGER, &["all.app.rancher.internal"]).data("A"), [WEB1, WEB2, DB1]);
    assert_eq!(dns.dig(STRANGER, &["loop1.app.rancher.internal"]).data("A"), [WEB1, WEB2]);

    // Per-caller search: a web container finds its stack's services, its sidekick and its links.
    assert_eq!(dns.dig(WEB1, &["web"]).data("A"), [WEB1, WEB2]);
    let d = dns.dig(WEB1, &["logger"]);
    assert_eq!(d.data("A"), [LOGGER]);
    assert_eq!(d.answer[0].0, "logger.", "owner is the name asked");
    assert_eq!(dns.dig(WEB1, &["mysql.db"]).data("A"), [DB1]);
    assert_eq!(dns.dig(WEB1, &["database"]).data("A"), [DB1], "service link alias");
    assert_eq!(dns.dig(WEB1, &["database.db"]).data("A"), [DB1]);
    assert_eq!(dns.dig(WEB1, &["app-web-2"]).data("A"), [WEB2], "container names through rancher.internal");
    assert_eq!(dns.dig(WEB1, &["sidekick-not-here"]).status, "NXDOMAIN", "the upstream's answer for a stray name");
    // The same short names mean something else, or nothing, to others.
    assert_eq!(dns.dig(DB1, &["database"]).status, "NXDOMAIN", "links belong to the linking service");
    assert_eq!(dns.dig(DB1, &["mysql"]).data("A"), [DB1], "own stack");
    assert_eq!(dns.dig(DB1, &["web.app"]).data("A"), [WEB1, WEB2]);
    assert_eq!(dns.dig(STRANGER, &["web"]).data("A"), ["127.0.0.99"], "no search for unknown callers: forwarded");
    // dns.priority=None: no Rancher search domains for that container.
    assert_eq!(dns.dig(LOGGER, &["web"]).data("A"), ["127.0.0.99"]);
    // A container link.
    assert_eq!(dns.dig(SOLO, &["webby"]).data("A"), [WEB2]);

    // Misses in our zone: NXDOMAIN, authoritative, SOA with the environment version as serial.
    let version = w.store.version().await.unwrap() as u32;
    let d = dns.dig(STRANGER, &["nope.app.rancher.internal"]);
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.has_flag("aa"));
    assert_eq!(d.authority.len(), 1, "{}", d.raw);
    let soa = &d.authority[0];
    assert_eq!((soa.0.as_str(), soa.2.as_str()), ("rancher.internal.", "SOA"));
    let serial: u32 = soa.3.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(serial, version, "serial = environment version");

    // AAAA of an existing name: NODATA (not NXDOMAIN, which broke nginx: rancher/rancher#3055).
    let d = dns.dig(STRANGER, &["web.app.rancher.internal", "AAAA"]);
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 0));
    assert_eq!(d.authority[0].2, "SOA");
    // Other types of existing names: NODATA too.
    assert_eq!(dns.dig(STRANGER, &["web.app.rancher.internal", "MX"]).status, "NOERROR");

    // SRV from the service's ports, with the containers' addresses as glue.
    let d = dns.dig(STRANGER, &["_80._tcp.web.app.rancher.internal", "SRV"]);
    assert_eq!(d.data("SRV"), ["0 1 80 app-web-1.rancher.internal.", "0 1 80 app-web-2.rancher.internal."]);
    let mut glue: Vec<String> =
        d.additional.iter().filter(|r| r.2 == "A").map(|r| format!("{} {}", r.0, r.3)).collect();
    glue.sort();
    assert_eq!(glue, [format!("app-web-1.rancher.internal. {WEB1}"), format!("app-web-2.rancher.internal. {WEB2}")]);
    assert_eq!(
        dns.dig(WEB1, &["_514._udp.logger", "SRV"]).data("SRV"),
        ["0 1 514 app-web-logger-1.rancher.internal."],
        "sidekick SRV through the caller's search"
    );
    assert_eq!(dns.dig(STRANGER, &["_81._tcp.web.app.rancher.internal", "SRV"]).status, "NXDOMAIN");

    // PTR of container addresses.
    assert_eq!(dns.dig(STRANGER, &["-x", WEB1]).data("PTR"), ["app-web-1.rancher.internal."]);

    // The caller's own resolver first: the standalone container asks its `dns` server.
    assert_eq!(dns.dig(SOLO, &["only.second.test"]).data("A"), ["127.0.0.82"]);
    assert_eq!(dns.dig(WEB1, &["only.second.test"]).status, "NXDOMAIN", "others use the default upstream");
    drop(w.named);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_show_in_the_next_answer() {
    let w = world().await;
    let dns = &w.dns;
    let store = &w.store;
    let web = |d: &Dns| d.dig(STRANGER, &["web.app.rancher.internal"]).data("A");
    assert_eq!(web(dns), [WEB1, WEB2]);

    // Scale up: a third container starts.
    store.put(&fixtures::container("c-web3", "app-web-3", "s-web", "st1", "h1", "127.0.10.9")).await.unwrap();
    store.put(&fixtures::status("c-web3", "h1", "running")).await.unwrap();
    let scale_up = common::within(Duration::from_secs(1), "scale-up visible", || web(dns).len() == 3);

    // A container becomes unhealthy: it leaves the name.
    store.put(&health("c-web1", "unhealthy")).await.unwrap();
    let unhealthy = common::within(Duration::from_secs(1), "unhealthy container dropped", || {
        web(dns) == vec![WEB2.to_string(), "127.0.10.9".to_string()]
    });

    // A container stops.
    store.put(&fixtures::status("c-web3", "h1", "stopped")).await.unwrap();
    let stopped =
        common::within(Duration::from_secs(1), "stopped container dropped", || web(dns) == vec![WEB2.to_string()]);

    // The service is removed: the name is gone (NXDOMAIN), other names are untouched.
    store.delete(&Key::new(event_bus::Family::Service, "s-web").unwrap()).await.unwrap();
    let removed = common::within(Duration::from_secs(1), "removed service gone", || {
        dns.dig(STRANGER, &["web.app.rancher.internal"]).status == "NXDOMAIN"
    });
    assert_eq!(dns.dig(STRANGER, &["mysql.db.rancher.internal"]).data("A"), [DB1]);
    eprintln!(
        "visible after: scale-up {scale_up:?}, unhealthy {unhealthy:?}, stopped {stopped:?}, removed {removed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_answering_while_nats_is_down_and_resyncs_after() {
    let mut w = world().await;
    w._nats.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.dns.dig(STRANGER, &["web.app.rancher.internal"]).data("A"), [WEB1, WEB2], "last good state served");
    assert_eq!(w.dns.dig(WEB1, &["database"]).data("A"), [DB1]);
    assert!(w.dns.metrics().contains("corral_dns_queries_total{type=\"A\",rcode=\"NOERROR\"}"));

    // NATS comes back (same store); a change made then shows up.
    w._nats.restart();
    let bus = Bus::connect(&NatsOptions::new(w._nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = StateStore::open(&bus).await.unwrap();
    store.put(&fixtures::status("c-web2", "h1", "stopped")).await.unwrap();
    common::within(Duration::from_secs(15), "change after reconnect visible", || {
        w.dns.dig(STRANGER, &["web.app.rancher.internal"]).data("A") == [WEB1]
    });
}
