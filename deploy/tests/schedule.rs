//! The controller's placement rules on fixture environments (pure: no NATS, no Docker).

use std::sync::Arc;

use deploy::schedule::{live_hosts, place, Counters, Placement};
use event_bus::keys::Document;
use event_bus::model::{Host, LaunchConfig, Service};
use event_bus::testkit::fixtures;
use event_bus::{Key, Record, Snapshot};

fn host(uuid: &str, name: &str, third: u8, labels: &[(&str, &str)]) -> Host {
    let mut h = fixtures::host(uuid, name, &format!("127.0.1.{third}"));
    h.subnet = Some(format!("10.42.{third}.0/24"));
    h.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    h
}

fn service(uuid: &str, name: &str, scale: u32, labels: &[(&str, &str)]) -> Service {
    let mut s = fixtures::service(uuid, "st1", name);
    s.scale = Some(scale);
    s.launch_config.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    s
}

fn snapshot(hosts: Vec<Host>, services: Vec<Service>) -> Snapshot {
    let mut records: Vec<Record> = vec![fixtures::stack("st1", "app").into_record()];
    records.extend(hosts.into_iter().map(|h| h.into_record()));
    records.extend(services.into_iter().map(|s| s.into_record()));
    Snapshot::from_records(1, records)
}

/// Applies a placement to the snapshot, as the controller's writes would.
fn apply(snap: &mut Snapshot, p: &Placement) {
    for c in p.create.iter().chain(&p.update) {
        let r = c.clone().into_record();
        snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
    }
    for uuid in &p.remove {
        snap.apply(&Key::new(event_bus::Family::Container, uuid).unwrap(), None);
    }
}

fn hosts_of(p: &Placement, service: &str) -> Vec<String> {
    let mut v: Vec<String> = p
        .create
        .iter()
        .filter(|c| c.service_uuid.as_deref() == Some(service) && c.launch_config_name.is_none())
        .map(|c| c.host_uuid.clone().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn scale_global_and_sidekicks() {
    let mut web = service("s-web", "web", 3, &[]);
    web.secondary_launch_configs = vec![LaunchConfig {
        name: Some("log".into()),
        image: "busybox".into(),
        network_mode: Some("container:web".into()),
        ..Default::default()
    }];
    let agent = service("s-agent", "agent", 1, &[("io.rancher.scheduler.global", "true")]);
    let snap = snapshot(vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])], vec![web, agent]);
    let hosts = live_hosts(&snap, 0, 10_000);
    let p = place(&snap, &hosts, &Counters::default(), 0);
    assert!(p.unplaceable.is_empty(), "{:?}", p.unplaceable);
    assert_eq!(hosts_of(&p, "s-web").len(), 3);
    assert_eq!(hosts_of(&p, "s-agent"), ["h1", "h2"], "global: one per host");
    // Names, indexes, sidekicks beside their primary sharing its network.
    let web1 = p.create.iter().find(|c| c.name == "app-web-1").unwrap();
    let log1 = p.create.iter().find(|c| c.name == "app-web-log-1").unwrap();
    assert_eq!(log1.host_uuid, web1.host_uuid);
    assert_eq!(log1.network_from_container_uuid.as_deref(), Some(web1.uuid.as_str()));
    assert!(log1.primary_ip.is_none());
    assert_eq!(web1.labels["io.rancher.stack_service.name"], "app/web");
    // Addresses from the host's subnet, distinct.
    for c in p.create.iter().filter(|c| c.primary_ip.is_some()) {
        let third = if c.host_uuid.as_deref() == Some("h1") { 1 } else { 2 };
        assert!(c.primary_ip.as_ref().unwrap().starts_with(&format!("10.42.{third}.")), "{c:?}");
    }
    let ips: std::collections::BTreeSet<_> = p.create.iter().filter_map(|c| c.primary_ip.clone()).collect();
    assert_eq!(ips.len(), p.create.iter().filter(|c| c.primary_ip.is_some()).count());
    // Spread: 3 web units on 2 hosts → 2 and 1.
    let on_h1 = hosts_of(&p, "s-web").iter().filter(|h| *h == "h1").count();
    assert!(on_h1 == 1 || on_h1 == 2);
}

#[test]
fn host_label_rules_and_reasons() {
    let hosts = vec![
        host("h1", "host-1", 1, &[("zone", "a"), ("disk", "ssd")]),
        host("h2", "host-2", 2, &[("zone", "b")]),
        host("h3", "host-3", 3, &[("zone", "a"), ("role", "edge")]),
    ];
    let services = vec![
        service("s-a", "in-a", 2, &[("io.rancher.scheduler.affinity:host_label", "zone=a")]),
        service("s-ne", "not-edge", 3, &[("io.rancher.scheduler.affinity:host_label_ne", "role=edge")]),
        service("s-soft", "prefers-ssd", 1, &[("io.rancher.scheduler.affinity:host_label_soft", "disk=ssd")]),
        service("s-none", "nowhere", 1, &[("io.rancher.scheduler.affinity:host_label", "zone=c")]),
        service("s-req", "pinned", 1, &[("io.rancher.service.requested.host.id", "h2")]),
    ];
    let snap = snapshot(hosts, services);
    let p = place(&snap, &live_hosts(&snap, 0, 10_000), &Counters::default(), 0);
    assert_eq!(hosts_of(&p, "s-a"), ["h1", "h3"]);
    assert!(hosts_of(&p, "s-ne").iter().all(|h| h != "h3"));
    assert_eq!(hosts_of(&p, "s-soft"), ["h1"]);
    assert_eq!(hosts_of(&p, "s-req"), ["h2"]);
    assert!(hosts_of(&p, "s-none").is_empty());
    assert_eq!(
        p.unplaceable["s-none"],
        "0 of 1 units placed: no host qualifies: host-1: fails io.rancher.scheduler.affinity:host_label=zone=c; \
         host-2: fails io.rancher.scheduler.affinity:host_label=zone=c; \
         host-3: fails io.rancher.scheduler.affinity:host_label=zone=c"
    );
}

#[test]
fn container_affinity_follows_what_runs() {
    let db = service("s-db", "db", 1, &[("io.rancher.service.requested.host.id", "h2")]);
    let near = service(
        "s-near",
        "near-db",
        1,
        &[("io.rancher.scheduler.affinity:container_label", "io.rancher.stack_service.name=app/db")],
    );
    let far = service(
        "s-far",
        "far-db",
        1,
        &[("io.rancher.scheduler.affinity:container_label_ne", "io.rancher.stack_service.name=app/db")],
    );
    let mut snap = snapshot(vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])], vec![db, near, far]);
    // One pass: what it places for db counts for the services after it.
    let hosts = live_hosts(&snap, 0, 10_000);
    let p = place(&snap, &hosts, &Counters::default(), 0);
    assert!(p.unplaceable.is_empty(), "{:?}", p.unplaceable);
    apply(&mut snap, &p);
    let again = place(&snap, &hosts, &p.counters, 0);
    assert!(again.create.is_empty() && again.remove.is_empty(), "stable");
    let host_of = |svc: &str| snap.containers_of_service(svc).next().and_then(|c| c.host_uuid.clone());
    assert_eq!(host_of("s-db").as_deref(), Some("h2"));
    assert_eq!(host_of("s-near").as_deref(), Some("h2"));
    assert_eq!(host_of("s-far").as_deref(), Some("h1"));
}

#[test]
fn indexes_never_repeat_and_lost_hosts_are_replaced() {
    let snap0 = snapshot(
        vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])],
        vec![service("s-web", "web", 2, &[])],
    );
    let mut snap = snap0;
    let hosts = live_hosts(&snap, 0, 10_000);
    let p = place(&snap, &hosts, &Counters::default(), 0);
    apply(&mut snap, &p);
    let first: Vec<u64> = p.create.iter().map(|c| c.create_index.unwrap()).collect();

    // Steady state: nothing to do.
    let again = place(&snap, &hosts, &p.counters, 0);
    assert!(again.create.is_empty() && again.remove.is_empty());

    // host-2's heartbeat stops: its unit is removed and a new one starts on host-1 with new indexes.
    let mut h2 = snap.host("h2").unwrap().as_ref().clone();
    h2.heartbeat_ms = Some(1_000);
    let r = h2.into_record();
    snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
    let live = live_hosts(&snap, 100_000, 10_000);
    assert_eq!(live.iter().map(|h| h.uuid.as_str()).collect::<Vec<_>>(), ["h1"]);
    let moved = place(&snap, &live, &p.counters, 0);
    assert_eq!(moved.remove.len(), 1);
    assert_eq!(hosts_of(&moved, "s-web"), ["h1"]);
    let new = &moved.create[0];
    assert!(first.iter().all(|i| *i < new.create_index.unwrap()), "create_index never reused");
    assert_eq!(new.name, "app-web-3", "service index never reused");

    // Scale down to 1: the newest unit goes.
    apply(&mut snap, &moved);
    let mut web = snap.service("s-web").unwrap().as_ref().clone();
    web.scale = Some(1);
    let r = web.into_record();
    snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
    let down = place(&snap, &live, &moved.counters, 0);
    assert_eq!(down.remove, std::slice::from_ref(&new.uuid));
}

#[test]
fn requested_ips_and_bad_ones() {
    let ok = service("s-ok", "ok", 1, &[("io.rancher.container.requested_ip", "10.42.1.50")]);
    let bad = service(
        "s-bad",
        "bad",
        1,
        &[("io.rancher.container.requested_ip", "192.168.9.9"), ("io.rancher.service.requested.host.id", "h1")],
    );
    let snap = snapshot(vec![host("h1", "host-1", 1, &[])], vec![ok, bad]);
    let p = place(&snap, &live_hosts(&snap, 0, 10_000), &Counters::default(), 0);
    assert_eq!(
        p.create.iter().find(|c| c.service_uuid.as_deref() == Some("s-ok")).unwrap().primary_ip.as_deref(),
        Some("10.42.1.50")
    );
    assert_eq!(
        p.unplaceable["s-bad"],
        "0 of 1 units placed: no host qualifies: host-1: io.rancher.container.requested_ip is not an address of its subnet 10.42.1.0/24"
    );
    assert!(p.create.iter().all(|c| c.service_uuid.as_deref() != Some("s-bad")), "nothing half-placed");
}

#[test]
fn no_hosts_is_a_reason_too() {
    let snap = snapshot(vec![], vec![service("s-web", "web", 1, &[])]);
    let p = place(&snap, &Vec::<Arc<Host>>::new(), &Counters::default(), 0);
    assert_eq!(p.unplaceable["s-web"], "0 of 1 units placed: no host qualifies: no live hosts");
}

/// A host port is published once per host and address (Rancher's port scheduling): the second
/// unit goes to another host, the third has nowhere to go and says which container holds the port.
#[test]
fn published_ports_do_not_clash() {
    let mut web = service("s-web", "web", 3, &[]);
    web.launch_config.ports = vec!["8080:80".into()];
    let mut other = service("s-api", "api", 1, &[]);
    other.launch_config.ports = vec!["127.0.0.1:9090:80".into(), "8080:80/udp".into()];
    let mut snap = snapshot(vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])], vec![web, other]);
    let hosts: Vec<Arc<Host>> = snap.hosts().cloned().collect();
    let p = place(&snap, &hosts, &Counters::default(), 0);
    assert_eq!(hosts_of(&p, "s-web"), ["h1", "h2"]);
    assert_eq!(hosts_of(&p, "s-api").len(), 1, "another address or protocol does not clash");
    let reason = &p.unplaceable["s-web"];
    assert!(reason.starts_with("2 of 3 units placed: no host qualifies: "), "{reason}");
    assert!(reason.contains("host-1: port 8080/tcp is already published there by app-web-"), "{reason}");
    // The next pass sees the same taken ports: nothing more is placed, the reason stays.
    apply(&mut snap, &p);
    let placed = place(&snap, &hosts, &p.counters, 0);
    assert!(placed.create.is_empty() && placed.unplaceable.contains_key("s-web"));
}

/// Cattle's `${stack_name}`/`${service_name}` macros (written `$${…}` in a compose file): a
/// service that avoids its own containers spreads one per host, and says so when it runs out.
#[test]
fn affinity_macros_name_the_service_itself() {
    let web = service(
        "s-web",
        "web",
        3,
        &[(
            "io.rancher.scheduler.affinity:container_label_ne",
            "io.rancher.stack_service.name=${stack_name}/${service_name}",
        )],
    );
    let snap = snapshot(vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])], vec![web]);
    let hosts: Vec<Arc<Host>> = snap.hosts().cloned().collect();
    let p = place(&snap, &hosts, &Counters::default(), 0);
    assert_eq!(hosts_of(&p, "s-web"), ["h1", "h2"]);
    let reason = &p.unplaceable["s-web"];
    assert!(
        reason.contains("fails io.rancher.scheduler.affinity:container_label_ne=io.rancher.stack_service.name=app/web"),
        "{reason}"
    );
}

/// retain_ip: the unit that replaces one gets its address back (not the lowest free one),
/// whether the old one was removed from Docker (placement replaces it in one pass) or its
/// record was deleted (the health decision's recreate; the next pass replaces it).
#[test]
fn retain_ip_gives_the_address_back() {
    let api = service("s-api", "api", 1, &[]);
    let mut web = service("s-web", "web", 3, &[]);
    web.extra.insert("retain_ip".into(), serde_json::json!(true));
    let mut snap = snapshot(vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])], vec![api.clone(), web]);
    let hosts: Vec<Arc<Host>> = snap.hosts().cloned().collect();
    let p = place(&snap, &hosts, &Counters::default(), 0);
    apply(&mut snap, &p);
    let find = |snap: &Snapshot, name: &str| snap.containers().find(|c| c.name == name).map(|c| (**c).clone());
    let (api1, web1, web2) =
        (find(&snap, "app-api-1").unwrap(), find(&snap, "app-web-1").unwrap(), find(&snap, "app-web-2").unwrap());
    assert_eq!(api1.primary_ip.as_deref(), Some("10.42.1.2"));
    assert_eq!(web2.host_uuid.as_deref(), Some("h1"));
    assert_eq!(web2.primary_ip.as_deref(), Some("10.42.1.3"));

    // web-1 removed from Docker behind the agent's back: replaced in the same pass.
    let st = fixtures::status(&web1.uuid, web1.host_uuid.as_deref().unwrap(), "removed").into_record();
    snap.apply(&Key::new(st.family(), st.id()).unwrap(), Some(st));
    let p2 = place(&snap, &hosts, &p.counters, 0);
    assert_eq!(p2.remove.as_slice(), std::slice::from_ref(&web1.uuid));
    assert_eq!(p2.create.len(), 1);
    assert_eq!(p2.create[0].primary_ip, web1.primary_ip, "{} keeps the address", p2.create[0].name);
    apply(&mut snap, &p2);

    // api scaled to 0 frees 10.42.1.2; then web-2's record is deleted (a recreate). Its
    // replacement goes back to host-1 with 10.42.1.3, not the lower free 10.42.1.2.
    let mut api0 = api.clone();
    api0.scale = Some(0);
    let r = api0.into_record();
    snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
    let p3 = place(&snap, &hosts, &p2.counters, 0);
    assert_eq!(p3.remove.as_slice(), std::slice::from_ref(&api1.uuid));
    apply(&mut snap, &p3);
    snap.apply(&Key::new(event_bus::Family::Container, &web2.uuid).unwrap(), None);
    let p4 = place(&snap, &hosts, &p3.counters, 0);
    assert_eq!(p4.create.len(), 1);
    assert_eq!(
        (p4.create[0].host_uuid.as_deref(), p4.create[0].primary_ip.as_deref()),
        (Some("h1"), Some("10.42.1.3"))
    );
    assert_eq!(p4.counters.addresses["s-web"].len(), 3);
    assert!(!p4.counters.addresses.contains_key("s-api"), "only retain_ip services are remembered");
}

/// The agent's part: every container the controller wants running runs, a stopped one stops.
fn agents_run(snap: &mut Snapshot) {
    let all: Vec<_> = snap.containers().cloned().collect();
    for c in all {
        let state = if c.desired_state == "stopped" { "stopped" } else { "running" };
        let st = fixtures::status(&c.uuid, c.host_uuid.as_deref().unwrap_or_default(), state).into_record();
        snap.apply(&Key::new(st.family(), st.id()).unwrap(), Some(st));
    }
}

/// (name, desired state, version is the service's) of the primaries, by name.
fn units_of(snap: &Snapshot, svc: &Service) -> Vec<(String, String, bool)> {
    let version = deploy::upgrade::version(svc);
    let mut v: Vec<_> = snap
        .containers_of_service(&svc.uuid)
        .map(|c| (c.name.clone(), c.desired_state.clone(), !deploy::upgrade::stale(c, &version)))
        .collect();
    v.sort();
    v
}

fn set_service(snap: &mut Snapshot, svc: &Service) {
    let r = svc.clone().into_record();
    snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
}

/// `svc` placed on one host and running; and a step: one controller pass at a time (ms), its
/// writes applied, the book carried to the next pass.
fn running_on_one_host(svc: &Service) -> (Snapshot, impl FnMut(&mut Snapshot, u64) -> Placement) {
    let mut snap = snapshot(vec![host("h1", "host-1", 1, &[])], vec![svc.clone()]);
    let hosts: Vec<Arc<Host>> = snap.hosts().cloned().collect();
    let mut counters = Counters::default();
    let mut step = move |snap: &mut Snapshot, now: u64| {
        let p = place(snap, &hosts, &counters, now);
        apply(snap, &p);
        counters = p.counters.clone();
        p
    };
    step(&mut snap, 0);
    agents_run(&mut snap);
    (snap, step)
}

/// `up --upgrade`, batch 1, stop first: each batch stops one old unit and starts one new one,
/// waits for it to run and for the interval; old units stay stopped until confirmed, then go.
#[test]
fn upgrade_in_batches_then_confirm() {
    let mut old = service("s-web", "web", 3, &[]);
    old.launch_config.image = "busybox:1".into();
    let (mut snap, mut step) = running_on_one_host(&old);
    let mut new = old.clone();
    new.launch_config.image = "busybox:2".into();
    assert!(deploy::upgrade::begin(&old, &mut new, Some(1), Some(1000)).unwrap());
    set_service(&mut snap, &new);

    let p = step(&mut snap, 10_000);
    assert_eq!(
        p.update.iter().map(|c| (c.name.as_str(), c.desired_state.as_str())).collect::<Vec<_>>(),
        [("app-web-1", "stopped")]
    );
    assert_eq!(p.create.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app-web-4"]);
    // The new unit does not run yet: the next batch waits, whatever the time.
    let p = step(&mut snap, 60_000);
    assert!(p.create.is_empty() && p.update.is_empty(), "{p:?}");
    agents_run(&mut snap);
    // It runs, but the interval has not passed since the batch began.
    let p = step(&mut snap, 10_500);
    assert!(p.create.is_empty() && p.update.is_empty(), "{p:?}");
    let p = step(&mut snap, 11_000);
    assert_eq!(p.update.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app-web-2"]);
    agents_run(&mut snap);
    step(&mut snap, 12_000);
    agents_run(&mut snap);
    step(&mut snap, 13_000);
    assert_eq!(
        units_of(&snap, &new),
        [
            ("app-web-1".into(), "stopped".into(), false),
            ("app-web-2".into(), "stopped".into(), false),
            ("app-web-3".into(), "stopped".into(), false),
            ("app-web-4".into(), "running".into(), true),
            ("app-web-5".into(), "running".into(), true),
            ("app-web-6".into(), "running".into(), true),
        ]
    );
    // Done: nothing more happens until it is confirmed; then the old units go.
    let p = step(&mut snap, 99_000);
    assert!(p.create.is_empty() && p.update.is_empty() && p.remove.is_empty(), "{p:?}");
    let mut confirmed = new.clone();
    assert!(deploy::upgrade::confirm(&mut confirmed));
    set_service(&mut snap, &confirmed);
    let p = step(&mut snap, 100_000);
    let mut removed = p.remove.clone();
    removed.sort();
    assert_eq!(removed, ["c1", "c2", "c3"]);
    assert!(p.counters.batches.is_empty());
}

/// A unit of the current batch that goes (recreated by the health decision, which deletes its
/// record) is not waited for: the upgrade goes on with its replacement.
#[test]
fn a_batch_does_not_wait_for_a_unit_that_went() {
    let mut old = service("s-web", "web", 2, &[]);
    old.launch_config.image = "busybox:1".into();
    let mut snap = snapshot(vec![host("h1", "host-1", 1, &[])], vec![old.clone()]);
    let hosts: Vec<Arc<Host>> = snap.hosts().cloned().collect();
    let p = place(&snap, &hosts, &Counters::default(), 0);
    apply(&mut snap, &p);
    agents_run(&mut snap);
    let mut new = old.clone();
    new.launch_config.image = "busybox:2".into();
    deploy::upgrade::begin(&old, &mut new, Some(1), Some(0)).unwrap();
    set_service(&mut snap, &new);
    let p = place(&snap, &hosts, &p.counters, 1);
    apply(&mut snap, &p);
    let started = p.create[0].uuid.clone();
    assert_eq!(p.counters.batches["s-web"].started.as_slice(), std::slice::from_ref(&started));
    // The new unit never runs; the health decision deletes it.
    snap.apply(&Key::new(event_bus::Family::Container, &started).unwrap(), None);
    let p2 = place(&snap, &hosts, &p.counters, 2);
    assert_eq!(p2.create.len(), 1, "a replacement for the unit that went");
    assert!(p2.update.is_empty(), "no new batch before the replacement runs: {p2:?}");
    apply(&mut snap, &p2);
    agents_run(&mut snap);
    let p3 = place(&snap, &hosts, &p2.counters, 3);
    assert_eq!(p3.update.len(), 1, "the next batch goes on: {p3:?}");
}

/// start_first: the new unit runs before the old one stops; a rollback then starts the old
/// units again and removes the new ones, in the same batches.
#[test]
fn start_first_then_rollback() {
    let mut old = service("s-web", "web", 2, &[]);
    old.launch_config.image = "busybox:1".into();
    old.extra.insert(
        "upgrade_strategy".into(),
        serde_json::json!({"start_first": true, "batch_size": 1, "interval_millis": 0}),
    );
    let (mut snap, mut step) = running_on_one_host(&old);
    let mut new = old.clone();
    new.launch_config.image = "busybox:2".into();
    deploy::upgrade::begin(&old, &mut new, None, None).unwrap();
    set_service(&mut snap, &new);
    let p = step(&mut snap, 1);
    assert_eq!(p.create.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app-web-3"]);
    assert!(p.update.is_empty(), "nothing stops before its replacement runs");
    agents_run(&mut snap);
    let p = step(&mut snap, 2);
    assert_eq!(
        p.update.iter().map(|c| (c.name.as_str(), c.desired_state.as_str())).collect::<Vec<_>>(),
        [("app-web-1", "stopped")]
    );
    assert!(p.create.is_empty());
    for now in 3..10 {
        agents_run(&mut snap);
        step(&mut snap, now);
    }
    let running = |snap: &Snapshot| {
        snap.containers()
            .filter(|c| c.desired_state == "running")
            .map(|c| c.name.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(running(&snap), ["app-web-3".to_string(), "app-web-4".to_string()].into());

    let mut back = new.clone();
    assert!(deploy::upgrade::rollback(&mut back));
    set_service(&mut snap, &back);
    for now in 10..20 {
        step(&mut snap, now);
        agents_run(&mut snap);
    }
    assert_eq!(
        running(&snap),
        ["app-web-1".to_string(), "app-web-2".to_string()].into(),
        "the old units again, not new ones"
    );
    assert_eq!(snap.containers().count(), 2, "the new units are gone");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// On any environment: every unit is on a live host that passes the service's hard
        /// rules; no more units than wanted; global means one per host; addresses are in the
        /// host's subnet and never shared on a host; names and create indexes are unique.
        #[test]
        fn placements_keep_the_rules(
            hosts in proptest::collection::vec((0u8..3, any::<bool>()), 1..8),
            services in proptest::collection::vec((0u32..6, 0u8..4, any::<bool>()), 1..10),
        ) {
            let hs: Vec<Host> = hosts.iter().enumerate()
                .map(|(i, (zone, edge))| {
                    let mut labels = vec![("zone", ["a", "b", "c"][*zone as usize])];
                    if *edge { labels.push(("role", "edge")); }
                    host(&format!("h{i}"), &format!("host-{i}"), i as u8 + 1, &labels)
                })
                .collect();
            let ss: Vec<Service> = services.iter().enumerate()
                .map(|(i, (scale, rule, global))| {
                    let mut labels: Vec<(&str, &str)> = match rule {
                        0 => vec![],
                        1 => vec![("io.rancher.scheduler.affinity:host_label", "zone=a")],
                        2 => vec![("io.rancher.scheduler.affinity:host_label_ne", "role=edge")],
                        _ => vec![("io.rancher.scheduler.affinity:host_label_soft", "zone=b")],
                    };
                    if *global { labels.push(("io.rancher.scheduler.global", "true")); }
                    service(&format!("s{i}"), &format!("svc{i}"), *scale, &labels)
                })
                .collect();
            let snap = snapshot(hs.clone(), ss.clone());
            let live = live_hosts(&snap, 0, 10_000);
            let p = place(&snap, &live, &Counters::default(), 0);
            let mut names = std::collections::BTreeSet::new();
            let mut indexes = std::collections::BTreeSet::new();
            let mut ips = std::collections::BTreeSet::new();
            for c in &p.create {
                prop_assert!(names.insert(c.name.clone()), "duplicate name {}", c.name);
                prop_assert!(indexes.insert(c.create_index), "duplicate create index");
                let h = hs.iter().find(|h| Some(&h.uuid) == c.host_uuid.as_ref()).unwrap();
                let svc = ss.iter().find(|s| Some(&s.uuid) == c.service_uuid.as_ref()).unwrap();
                let rule = svc.launch_config.labels.iter().find(|(k, _)| k.starts_with("io.rancher.scheduler.affinity:")).map(|(k, v)| (k.as_str(), v.as_str()));
                match rule {
                    Some(("io.rancher.scheduler.affinity:host_label", "zone=a")) => prop_assert_eq!(h.labels.get("zone").map(String::as_str), Some("a")),
                    Some(("io.rancher.scheduler.affinity:host_label_ne", "role=edge")) => prop_assert!(!h.labels.contains_key("role")),
                    _ => {}
                }
                let ip = c.primary_ip.clone().unwrap();
                let third = h.subnet.as_ref().unwrap().split('.').nth(2).unwrap().to_string();
                prop_assert_eq!(ip.split('.').nth(2).unwrap(), third.as_str());
                prop_assert!(ips.insert(ip), "address shared");
            }
            for svc in &ss {
                let placed: Vec<String> = hosts_of(&p, &svc.uuid);
                let global = svc.launch_config.labels.contains_key("io.rancher.scheduler.global");
                if global {
                    let unique: std::collections::BTreeSet<_> = placed.iter().collect();
                    prop_assert_eq!(unique.len(), placed.len(), "global: one per host");
                } else {
                    prop_assert!(placed.len() <= svc.scale.unwrap() as usize);
                }
                // Either fully placed, or a reason.
                let wanted = if global { placed.len() } else { svc.scale.unwrap() as usize };
                prop_assert!(placed.len() == wanted || p.unplaceable.contains_key(&svc.uuid));
            }
        }
    }
}

mod review {
    use super::*;

    /// A requested address in another host's subnet sends the unit to that host; a bad one
    /// leaves the counters where they were (no churn pass after pass).
    #[test]
    fn requested_ip_picks_the_host_and_failures_take_no_index() {
        let svc = service("s-ip", "ip", 1, &[("io.rancher.container.requested_ip", "10.42.2.50")]);
        let snap = snapshot(vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])], vec![svc]);
        let p = place(&snap, &live_hosts(&snap, 0, 10_000), &Counters::default(), 0);
        let c = &p.create[0];
        assert_eq!((c.host_uuid.as_deref(), c.primary_ip.as_deref()), (Some("h2"), Some("10.42.2.50")));

        let bad = service("s-bad", "bad", 1, &[("io.rancher.container.requested_ip", "10.42.1.1")]);
        let snap = snapshot(vec![host("h1", "host-1", 1, &[])], vec![bad]);
        let p1 = place(&snap, &live_hosts(&snap, 0, 10_000), &Counters::default(), 0);
        let p2 = place(&snap, &live_hosts(&snap, 0, 10_000), &p1.counters, 0);
        assert!(p1.unplaceable.contains_key("s-bad"), "the bridge address .1 is not given");
        assert_eq!(p1.counters, p2.counters, "no index taken by a failed placement");
    }

    /// One-per-host via a rule against the service's own containers is stable.
    #[test]
    fn self_anti_affinity_is_stable() {
        let web = service(
            "s-web",
            "web",
            2,
            &[("io.rancher.scheduler.affinity:container_label_ne", "io.rancher.stack_service.name=app/web")],
        );
        let mut snap = snapshot(vec![host("h1", "host-1", 1, &[]), host("h2", "host-2", 2, &[])], vec![web]);
        let hosts = live_hosts(&snap, 0, 10_000);
        let p = place(&snap, &hosts, &Counters::default(), 0);
        assert_eq!(hosts_of(&p, "s-web"), ["h1", "h2"]);
        apply(&mut snap, &p);
        let again = place(&snap, &hosts, &p.counters, 0);
        assert!(again.create.is_empty() && again.remove.is_empty(), "{:?} {:?}", again.create, again.remove);
        // Scale 3 on 2 hosts: the third unit has nowhere to go, and says so.
        let mut web = snap.service("s-web").unwrap().as_ref().clone();
        web.scale = Some(3);
        let r = web.into_record();
        snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
        let third = place(&snap, &hosts, &p.counters, 0);
        assert!(third.create.is_empty());
        assert!(third.unplaceable["s-web"].starts_with("2 of 3 units placed"), "{:?}", third.unplaceable);
    }

    /// A reset book cannot bring an index back.
    #[test]
    fn counters_never_go_below_what_exists() {
        let mut snap = snapshot(vec![host("h1", "host-1", 1, &[])], vec![service("s-web", "web", 1, &[])]);
        let hosts = live_hosts(&snap, 0, 10_000);
        let p = place(&snap, &hosts, &Counters::default(), 0);
        apply(&mut snap, &p);
        let mut web = snap.service("s-web").unwrap().as_ref().clone();
        web.scale = Some(2);
        let r = web.into_record();
        snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
        let q = place(&snap, &hosts, &Counters::default(), 0);
        assert_eq!(q.create[0].name, "app-web-2");
        assert_ne!(q.create[0].uuid, p.create[0].uuid);
    }

    /// Several values of a container rule all apply; an unknown rule is a reason.
    #[test]
    fn values_are_anded_and_unknown_rules_are_reported() {
        let db = service("s-db", "db", 1, &[("io.rancher.service.requested.host.id", "h1")]);
        let both = service(
            "s-both",
            "both",
            1,
            &[(
                "io.rancher.scheduler.affinity:container_label",
                "io.rancher.stack_service.name=app/db,io.rancher.stack_service.name=app/cache",
            )],
        );
        let odd = service("s-odd", "odd", 1, &[("io.rancher.scheduler.affinity:host_lable", "a=b")]);
        let snap = snapshot(vec![host("h1", "host-1", 1, &[])], vec![db, both, odd]);
        let p = place(&snap, &live_hosts(&snap, 0, 10_000), &Counters::default(), 0);
        assert!(hosts_of(&p, "s-both").is_empty(), "no host runs both db and cache");
        assert!(p.unplaceable["s-odd"].starts_with("unknown affinity rule io.rancher.scheduler.affinity:host_lable"));
    }

    /// A unit whose primary is gone is replaced whole; a removed service's containers go.
    #[test]
    fn broken_units_and_removed_services() {
        let mut web = service("s-web", "web", 1, &[]);
        web.secondary_launch_configs =
            vec![LaunchConfig { name: Some("log".into()), image: "busybox".into(), ..Default::default() }];
        let mut snap = snapshot(vec![host("h1", "host-1", 1, &[])], vec![web]);
        let hosts = live_hosts(&snap, 0, 10_000);
        let p = place(&snap, &hosts, &Counters::default(), 0);
        apply(&mut snap, &p);
        let primary = p.create.iter().find(|c| c.launch_config_name.is_none()).unwrap().uuid.clone();
        snap.apply(&Key::new(event_bus::Family::Container, &primary).unwrap(), None);
        let q = place(&snap, &hosts, &p.counters, 0);
        assert_eq!(q.remove.len(), 1, "the lone sidekick goes");
        assert_eq!(q.create.len(), 2, "a whole new unit comes");
        apply(&mut snap, &q);
        let mut gone = snap.service("s-web").unwrap().as_ref().clone();
        gone.state = "removed".into();
        let r = gone.into_record();
        snap.apply(&Key::new(r.family(), r.id()).unwrap(), Some(r));
        let z = place(&snap, &hosts, &q.counters, 0);
        assert_eq!(z.remove.len(), 2);
    }
}
