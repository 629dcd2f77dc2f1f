//! Bad input is refused with a clear error, published as an event and in the state
//! (`lbstatus.<instance>`), and the running load balancer keeps serving what it served.

mod common;

use std::time::Duration;

use common::{addr, aget, wait_async, Backend, Lb, State};
use event_bus::model::LbStatus;
use event_bus::testkit::free_port;
use event_bus::{Events, StateStore};
use futures::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused_and_the_old_one_keeps_serving() {
    let st = State::start().await;
    let port = free_port();
    st.service("web").await;
    let _web = Backend::http("web-1", addr("127.0.2.1", port)).await;
    st.container("web", 1, "127.0.2.1").await;
    let good = free_port();
    let good_rules = json!([{"source_port": good, "target_port": port, "service": "web"}]);
    st.lb(json!({"port_rules": good_rules})).await;
    let lb = Lb::start_with(&st.nats.url(), &["--instance", "lb-test-1"]);
    lb.wait_ready();
    assert_eq!(aget(good, "x", "/").await, (200, "web-1".into()));
    wait_status(&st.store, "the start", |s| s.serving && s.refused.is_none() && s.service_uuid == "lb").await;

    let events = Events::new(&st.bus, "test");
    let mut refused = events.subscribe("lb.config.refused").await.unwrap();

    let a = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b.example.com".into()]).unwrap();
    let other_key = b.signing_key.serialize_pem();
    st.cert("mismatched", &a.cert.pem(), &other_key).await;
    // Someone else's listener on the port a new rule wants.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let new_port = free_port();
    let with = |extra: serde_json::Value| {
        let mut rules = good_rules.as_array().unwrap().clone();
        rules.push(extra);
        json!(rules)
    };

    let cases: Vec<(&str, serde_json::Value, String)> = vec![
        (
            "overlapping rules with equal priority",
            json!({"port_rules": with(json!({"source_port": good, "target_port": 1, "service": "other"}))}),
            "port_rules[1] overlaps port_rules[0]".into(),
        ),
        (
            "a certificate whose key does not match",
            json!({
                "port_rules": with(json!({"source_port": new_port, "target_port": port, "service": "web", "protocol": "https"})),
                "certs": ["mismatched"],
            }),
            "certificate \"mismatched\": the private key does not match the certificate".into(),
        ),
        (
            "a port another process listens on",
            json!({"port_rules": with(json!({"source_port": taken_port, "target_port": port, "service": "web"}))}),
            format!("port_rules[1].source_port {taken_port}: 127.0.0.1:{taken_port} is already in use"),
        ),
        (
            "a raw snippet HAProxy rejects",
            json!({"port_rules": good_rules, "config": "defaults\n  timeout client banana\n"}),
            "(the line is `timeout client banana`)".into(),
        ),
        (
            "udp",
            json!({"port_rules": with(json!({"source_port": new_port, "target_port": 53, "service": "web", "protocol": "udp"}))}),
            "protocol udp is not supported by HAProxy".into(),
        ),
    ];
    for (i, (what, config, says)) in cases.into_iter().enumerate() {
        st.lb(config).await;
        let event = tokio::time::timeout(Duration::from_secs(30), refused.next())
            .await
            .unwrap_or_else(|_| panic!("no lb.config.refused event for {what}"))
            .unwrap()
            .event;
        let error = event.data["error"].as_str().unwrap().to_string();
        assert!(error.contains(&says), "{what}: the error says {error:?}, expected it to contain {says:?}");
        assert_eq!(event.resource_id.as_deref(), Some("lb"));
        assert!(!error.contains("PRIVATE KEY") && !error.contains(&other_key[40..80]), "{error}");
        assert_eq!(lb.rejected(), (i + 1) as f64, "{what}");
        // The same error in the state, next to the service, for `deploy ps`.
        wait_status(&st.store, what, |s| s.serving && s.refused.as_ref().is_some_and(|r| r.contains(&says))).await;
        assert_eq!(lb.metric("corral_lb_config_refused "), 1.0);
        // Untouched: the same worker, no reload, still serving.
        assert_eq!(aget(good, "x", "/").await, (200, "web-1".into()), "after {what}");
        assert_eq!(lb.reloads(), 0.0, "{what}");
    }
    assert_eq!(lb.haproxy_reloads(), 0);
    drop(taken);

    // While refused, the previous configuration still follows membership.
    let _web2 = Backend::http("web-2", addr("127.0.2.2", port)).await;
    st.container("web", 2, "127.0.2.2").await;
    wait_async("web-2 added", Duration::from_secs(30), || lb.servers() == 2.0).await;

    // A good configuration again: applied (a new port is a reload), the refusal cleared.
    st.lb(json!({"port_rules": with(json!({"source_port": new_port, "target_port": port, "service": "web"}))})).await;
    wait_async("the good configuration applied", Duration::from_secs(30), || lb.reloads() == 1.0).await;
    assert_eq!(lb.metric("corral_lb_config_refused "), 0.0);
    assert_eq!(aget(new_port, "x", "/").await.0, 200);
    assert_eq!(lb.haproxy_reloads(), 1);
    wait_status(&st.store, "the refusal cleared", |s| s.serving && s.refused.is_none()).await;

    // A port another process holds, then lets go: nothing in the state changes, yet the
    // refusal clears by itself and the port is served.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    st.lb(json!({"port_rules": with(json!({"source_port": held_port, "target_port": port, "service": "web"}))})).await;
    let in_use = format!("source_port {held_port}: 127.0.0.1:{held_port} is already in use");
    wait_status(&st.store, "a held port", |s| s.refused.as_ref().is_some_and(|r| r.contains(&in_use))).await;
    drop(held);
    wait_status(&st.store, "the port let go", |s| s.serving && s.refused.is_none()).await;
    assert_eq!(aget(held_port, "x", "/").await.0, 200);

    // A stopped instance takes its status with it.
    drop(lb);
    assert!(st.store.get::<LbStatus>("lb-test-1").await.unwrap().is_none(), "lbstatus.lb-test-1 left behind");
}

/// Waits until `lbstatus.lb-test-1` is written and satisfies `ok`.
async fn wait_status(store: &StateStore, what: &str, ok: impl Fn(&LbStatus) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = store.get::<LbStatus>("lb-test-1").await.unwrap().map(|v| v.value);
        if s.as_ref().is_some_and(&ok) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "lbstatus after {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
