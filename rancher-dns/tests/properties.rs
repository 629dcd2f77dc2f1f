//! Properties of the resolution path (naming rules + search + record building), over arbitrary
//! names, types and callers: never a panic, never a forward for our own zone, and every direct
//! answer carries the name that was asked.

use std::net::IpAddr;

use event_bus::keys::Document;
use event_bus::testkit::fixtures::EnvironmentShape;
use event_bus::Snapshot;
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;
use rancher_dns::naming::{answers, NamingConfig};
use rancher_dns::resolve::{resolve, Options, Outcome};

fn env() -> rancher_dns::answers::Answers {
    let shape = EnvironmentShape { hosts: 3, stacks: 4, services: 12, containers: 40 };
    let mut records = shape.build();
    // A few statuses so some containers count as running.
    for c in 0..40 {
        records.push(
            event_bus::testkit::fixtures::status(
                &format!("c{c}"),
                "h0",
                if c % 3 == 0 { "stopped" } else { "running" },
            )
            .into_record(),
        );
    }
    let snap = Snapshot::from_records(7, records);
    answers(&snap, &NamingConfig { ttl: 1, metadata_answer: vec!["169.254.169.250".parse().unwrap()] })
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        // Names that exist in the environment, and near misses.
        Just("svc1".to_string()),
        Just("stack2".to_string()),
        Just("rancher".to_string()),
        Just("internal".to_string()),
        Just("_80".to_string()),
        Just("_tcp".to_string()),
        Just("in-addr".to_string()),
        Just("arpa".to_string()),
        "[a-z0-9-]{1,20}",
        // Any bytes a label may carry on the wire.
        proptest::collection::vec(any::<u8>(), 1..63).prop_map(|b| b.iter().map(|c| (c % 94 + 33) as char).collect()),
    ]
}

fn qtype() -> impl Strategy<Value = RecordType> {
    prop_oneof![
        Just(RecordType::A),
        Just(RecordType::AAAA),
        Just(RecordType::SRV),
        Just(RecordType::PTR),
        Just(RecordType::TXT),
        Just(RecordType::CNAME),
        Just(RecordType::SOA),
        Just(RecordType::ANY),
        any::<u16>().prop_map(RecordType::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    #[test]
    fn resolution_is_total_and_keeps_our_zone(labels in proptest::collection::vec(label(), 0..8), qt in qtype(),
                                              caller in 0u8..60, ndots in 0u32..4, rotate in any::<usize>()) {
        let a = env();
        let text = labels.join(".");
        let Ok(name) = Name::from_ascii(format!("{text}.")) else { return Ok(()) };
        let client: IpAddr = format!("10.42.{}.{}", caller % 3, caller / 3 + 2).parse().unwrap();
        let out = resolve(&a, client, &name, qt, Options { ndots, rotate });
        let lower = name.to_lowercase().to_ascii();
        let ours = lower == "rancher.internal." || lower.ends_with(".rancher.internal.");
        if ours {
            prop_assert!(out != Outcome::Forward, "{lower} {qt:?} forwarded");
        }
        if let Outcome::Local { answers, .. } = &out {
            if let Some(first) = answers.first() {
                prop_assert_eq!(first.name.to_lowercase(), name.to_lowercase());
            }
        }
    }
}

#[test]
fn known_names_resolve_for_their_callers() {
    let a = env();
    // Containers of stack0/svc0 live at 10.42.<h>.<i>; a caller in stack0 finds `svc1` by its short name.
    let snap_caller: IpAddr = "10.42.0.2".parse().unwrap();
    let name = Name::from_ascii("svc1.").unwrap();
    match resolve(&a, snap_caller, &name, RecordType::A, Options { ndots: 0, rotate: 0 }) {
        Outcome::Local { answers, .. } => assert!(!answers.is_empty()),
        other => panic!("svc1 from a stack0 container: {other:?}"),
    }
    // ndots 1: `svc1.stack0` has one dot, so no search: not found, and not ours → forward.
    let name = Name::from_ascii("svc1.stack0.").unwrap();
    assert_eq!(resolve(&a, snap_caller, &name, RecordType::A, Options { ndots: 1, rotate: 0 }), Outcome::Forward);
    match resolve(&a, snap_caller, &name, RecordType::A, Options { ndots: 2, rotate: 0 }) {
        Outcome::Local { answers, .. } => assert!(!answers.is_empty()),
        other => panic!("svc1.stack0 with ndots 2: {other:?}"),
    }
}

/// The incremental rebuild gives exactly what a full build gives, names and caller views alike,
/// through random status, health and container changes (added, removed, readdressed, some onto
/// addresses another container already claims, some linking to others).
#[test]
fn incremental_rebuild_equals_a_full_build() {
    use event_bus::model::{ContainerHealth, Extra};
    use event_bus::testkit::fixtures;
    use event_bus::{Family, Key, Record};
    use rancher_dns::naming::rebuild;

    let cfg = NamingConfig { ttl: 1, metadata_answer: vec!["169.254.169.250".parse().unwrap()] };
    let shape = EnvironmentShape { hosts: 3, stacks: 4, services: 12, containers: 40 };
    let mut records = shape.build();
    // Give one service a health check, so health matters for it.
    for r in records.iter_mut() {
        if let Record::Service(s) = r {
            if s.uuid == "sv0-0" {
                s.launch_config.health_check = Some(serde_json::from_value(serde_json::json!({"port": 80})).unwrap());
            }
        }
    }
    let mut snap = Snapshot::from_records(1, records);
    let mut current = answers(&snap, &cfg);
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut incremental_views, mut shared_views) = (0, 0);
    for round in 0..400 {
        let before = snap.clone();
        for _ in 0..=next(3) {
            let c = format!("c{}", next(40));
            let (key, record) = match next(10) {
                0..=3 => {
                    let state = ["running", "stopped", "starting", "error"][next(4) as usize];
                    let r = fixtures::status(&c, "h0", state).into_record();
                    (Key::new(Family::Status, &c).unwrap(), (next(5) != 0).then_some(r))
                }
                4..=6 => {
                    let h = ["healthy", "unhealthy", "initializing", "updating-healthy"][next(4) as usize];
                    let r = Record::Health(ContainerHealth {
                        uuid: c.clone(),
                        health_state: h.into(),
                        health_check_hosts: vec![],
                        reports: Default::default(),
                        extra: Extra::new(),
                    });
                    (Key::new(Family::Health, &c).unwrap(), (next(5) != 0).then_some(r))
                }
                _ => {
                    // A container written: a new one or an existing one, on one of a few addresses
                    // (so claims collide), sometimes removed, now and then linking to another.
                    let uuid = if next(2) == 0 { format!("n{}", next(6)) } else { c.clone() };
                    let sv = format!("sv{}-{}", next(4), next(3));
                    let st = sv[2..].split('-').next().map(|s| format!("st{s}")).unwrap();
                    let ip = format!("10.42.{}.{}", next(3), next(4) + 2);
                    // Names from a small pool: duplicates, and the static metadata name.
                    let name = ["x-a", "x-b", "x-c", "rancher-metadata"][next(4) as usize].to_string();
                    let name = if next(2) == 0 { format!("x-{uuid}") } else { name };
                    let mut ct = fixtures::container(&uuid, &name, &sv, &st, "h0", &ip);
                    ct.create_index = Some(next(100));
                    if next(8) == 0 {
                        ct.links.insert("peer".into(), format!("c{}", next(40)));
                    }
                    (Key::new(Family::Container, &uuid).unwrap(), (next(6) != 0).then_some(ct.into_record()))
                }
            };
            snap.apply(&key, record);
        }
        let incremental = rebuild(&snap, &cfg, Some((&before, &current)));
        let full = answers(&snap, &cfg);
        assert_eq!(incremental.default.names.len(), full.default.names.len(), "round {round}");
        for (name, entry) in &full.default.names {
            assert_eq!(incremental.default.names.get(name).map(|e| &**e), Some(&**entry), "round {round}: {name}");
        }
        assert_eq!(*incremental.clients, *full.clients, "round {round}: caller views");
        if std::sync::Arc::ptr_eq(&incremental.clients, &current.clients) {
            shared_views += 1;
        } else {
            incremental_views += 1;
        }
        current = incremental;
    }
    assert!(shared_views > 20 && incremental_views > 20, "both paths exercised: {shared_views} / {incremental_views}");
}
