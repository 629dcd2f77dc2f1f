//! The checker against a real HAProxy and a real NATS, with loopback backends served by the test:
//! HTTP and TCP verdicts, their timing against the thresholds, a refused configuration, and
//! reports that wait out a NATS outage.

mod common;

use std::time::Duration;

use common::*;
use event_bus::testkit::{fixtures, NatsServer};
use event_bus::{provision, Bus, Events, Family, Key, NatsOptions, Provision, StateStore};

async fn env(nats: &NatsServer) -> (StateStore, Events) {
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    store.put(&fixtures::host("h1", "host-1", "127.0.0.1")).await.unwrap();
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    store.put(&fixtures::service("s-web", "st1", "web")).await.unwrap();
    (store, Events::new(&bus, "test"))
}

const INTERVAL: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_verdicts_follow_the_backends() {
    let nats = NatsServer::start();
    let (store, events) = env(&nats).await;
    let web = Backend::http("127.0.0.1").await;
    let tcp = Backend::http("127.0.0.1").await;
    checked_container(
        &store,
        "c1",
        "127.0.0.1",
        check(web.addr.port(), Some("GET /ok HTTP/1.0"), INTERVAL, 2, 3),
        &["h1"],
    )
    .await;
    checked_container(&store, "c2", "127.0.0.1", check(tcp.addr.port(), None, INTERVAL, 2, 2), &["h1"]).await;
    let mut reports = Reports::follow(&events).await;
    let checker = Checker::start(&nats.url(), "h1");
    let cfg = checker.config();
    assert!(cfg.contains("option httpchk GET /ok HTTP/1.0"), "{cfg}");
    assert!(
        cfg.contains(&format!("inter {INTERVAL} fastinter {INTERVAL} downinter {INTERVAL} rise 2 fall 3")),
        "{cfg}"
    );

    let (r, _) = reports.wait("c1", true, Duration::from_secs(15)).await;
    assert_eq!((r.host_uuid.as_str(), r.status.as_str()), ("h1", "UP"));
    reports.wait("c2", true, Duration::from_secs(15)).await;

    // Remove the page: down after `fall` failed checks, within one more interval (plus polling
    // and NATS; generous for a loaded machine).
    web.set_page(false);
    let (r, took) = reports.wait("c1", false, Duration::from_secs(10)).await;
    eprintln!("HTTP page removed → down report in {took:?} (fall 3 × inter {INTERVAL} ms)");
    assert_eq!(r.detail, "L7STS 404");
    assert!(took >= Duration::from_millis(2 * INTERVAL), "down after fewer than `fall` checks: {took:?}");
    assert!(took <= Duration::from_millis(4 * INTERVAL + 3000), "down too late: {took:?}");

    web.set_page(true);
    let (_, took) = reports.wait("c1", true, Duration::from_secs(10)).await;
    eprintln!("HTTP page restored → up report in {took:?} (rise 2 × inter {INTERVAL} ms)");
    assert!(took >= Duration::from_millis(INTERVAL), "up after fewer than `rise` checks: {took:?}");
    assert!(took <= Duration::from_millis(3 * INTERVAL + 3000), "up too late: {took:?}");

    // TCP: the port closes, then opens again.
    let addr = tcp.close();
    let (r, took) = reports.wait("c2", false, Duration::from_secs(10)).await;
    eprintln!("TCP port closed → down report in {took:?}");
    assert_eq!(r.detail, "L4CON");
    let _tcp = Backend::http_on(addr).await;
    reports.wait("c2", true, Duration::from_secs(10)).await;

    assert_eq!(checker.metric("corral_healthcheck_checks "), 2.0);
    assert!(checker.metric("corral_healthcheck_transitions_total") >= 6.0);
    assert!(checker.metric("corral_healthcheck_detect_seconds_count") >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_never_replaces_the_running_one() {
    let nats = NatsServer::start();
    let (store, events) = env(&nats).await;
    let web = Backend::http("127.0.0.1").await;
    checked_container(&store, "c1", "127.0.0.1", check(web.addr.port(), Some("GET /ok"), INTERVAL, 1, 1), &["h1"])
        .await;
    let mut reports = Reports::follow(&events).await;
    let checker = Checker::start(&nats.url(), "h1");
    reports.wait("c1", true, Duration::from_secs(15)).await;

    // An address HAProxy cannot use: `haproxy -c` refuses the whole file.
    checked_container(&store, "c9", "no-such-host.invalid", check(80, None, INTERVAL, 1, 1), &["h1"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while checker.metric("corral_healthcheck_haproxy_rejected_configs_total") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the bad configuration was not refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!checker.config().contains("c_c9_"), "the refused file was installed");
    // The running HAProxy still checks.
    web.set_page(false);
    reports.wait("c1", false, Duration::from_secs(10)).await;

    // Once the bad container goes, the next configuration applies again.
    store.delete(&Key::new(Family::Container, "c9").unwrap()).await.unwrap();
    let other = Backend::http("127.0.0.1").await;
    checked_container(&store, "c3", "127.0.0.1", check(other.addr.port(), None, INTERVAL, 1, 1), &["h1"]).await;
    reports.wait("c3", true, Duration::from_secs(15)).await;
    assert!(checker.metric("corral_healthcheck_haproxy_reloads_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_made_while_nats_is_away_are_reported_when_it_returns() {
    let mut nats = NatsServer::start();
    let (store, events) = env(&nats).await;
    let web = Backend::http("127.0.0.1").await;
    checked_container(&store, "c1", "127.0.0.1", check(web.addr.port(), Some("GET /ok"), INTERVAL, 1, 1), &["h1"])
        .await;
    let mut reports = Reports::follow(&events).await;
    let checker = Checker::start(&nats.url(), "h1");
    reports.wait("c1", true, Duration::from_secs(15)).await;

    nats.kill();
    web.set_page(false);
    // HAProxy keeps checking without NATS; the verdict waits in the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while checker.metric("corral_healthcheck_pending_reports") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no report queued while NATS was away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(checker.admin, "/readyz").0, 503, "not ready without NATS");
    nats.restart();
    // The report was stored by the stream once NATS was back: read it from there.
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let events = Events::new(&bus, "test");
    let mut replay = events.replay(event_bus::model::REPORT_EVENT, Some(Duration::from_secs(120))).await.unwrap();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        use futures::StreamExt;
        while let Some(m) = replay.next().await {
            let r: event_bus::model::HealthReport = serde_json::from_value(m.event.data).unwrap();
            if r.container_uuid == "c1" && !r.up {
                return r;
            }
        }
        panic!("replay ended")
    })
    .await
    .expect("the down report never reached NATS");
    assert_eq!(found.host_uuid, "h1");
    drop(store);
}
