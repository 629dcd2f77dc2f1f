//! Health decisions: the vote rule as a pure function, and the strategies through the real
//! `deploy controller` against a real NATS, with scripted checkers publishing the reports (the
//! checker itself is tested against HAProxy in healthcheck/tests).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::until;
use deploy::health::{next_health, Inputs, Vote};
use event_bus::model::{
    CheckerState, Container, ContainerHealth, HealthCheck, HealthReport, HEARTBEAT_EVENT, REPORT_EVENT, STATE_REQUEST,
};
use event_bus::testkit::{fixtures, free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, Events, Family, NatsOptions, Provision, StateStore};
use futures::StreamExt;

// ------------------------------------------------------------------------------------------
// The vote rule, pure.

fn vote(up: bool) -> Vote {
    Vote { up, detail: if up { "L7OK".into() } else { "L7STS 503".into() }, start_count: 1, boot: "b".into(), seq: 1 }
}

fn inputs<'a>(votes: &'a BTreeMap<String, Vote>, live: &'a BTreeSet<String>, now_ms: u64) -> Inputs<'a> {
    Inputs {
        uuid: "c1",
        start_count: 1,
        hosts: vec!["h1".into(), "h2".into(), "h3".into()],
        votes: Some(votes),
        live_checkers: live,
        now_ms,
        initializing_timeout_ms: 60_000,
        reinitializing_timeout_ms: 60_000,
    }
}

fn set(pairs: &[&str]) -> BTreeSet<String> {
    pairs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn one_live_passing_checker_makes_a_container_healthy_and_only_live_checkers_vote() {
    let all = set(&["h1", "h2", "h3"]);
    let none = BTreeMap::new();
    let first = next_health(None, &inputs(&none, &all, 1000));
    assert_eq!(first.health_state, "initializing");
    assert_eq!(first.health_check_hosts, vec!["h1", "h2", "h3"]);

    // Down votes while initializing are ignored.
    let down: BTreeMap<String, Vote> = [("h1".to_string(), vote(false))].into();
    assert_eq!(next_health(Some(&first), &inputs(&down, &all, 2000)).health_state, "initializing");

    // One up among downs: healthy.
    let mixed: BTreeMap<String, Vote> =
        [("h1".to_string(), vote(false)), ("h2".to_string(), vote(true)), ("h3".to_string(), vote(false))].into();
    let healthy = next_health(Some(&first), &inputs(&mixed, &all, 3000));
    assert_eq!(healthy.health_state, "healthy");
    assert_eq!(healthy.reports["h2"], "healthy");
    assert_eq!(healthy.reports["h1"], "unhealthy");

    // The only passing checker dies: the dead vote is dropped, the live ones say down.
    let live = set(&["h1", "h3"]);
    let after = next_health(Some(&healthy), &inputs(&mixed, &live, 4000));
    assert_eq!(after.health_state, "unhealthy");

    // Every checker that said down dies: no live vote, no change.
    let only_up_dead = set(&["h2"]);
    let all_down: BTreeMap<String, Vote> = [("h1".to_string(), vote(false)), ("h3".to_string(), vote(false))].into();
    assert_eq!(next_health(Some(&healthy), &inputs(&all_down, &only_up_dead, 5000)).health_state, "healthy");

    // A checker not assigned to the container does not vote.
    let stranger: BTreeMap<String, Vote> = [("h9".to_string(), vote(false))].into();
    assert_eq!(next_health(Some(&healthy), &inputs(&stranger, &set(&["h9"]), 5000)).health_state, "healthy");
}

#[test]
fn timeouts_and_restarts() {
    let all = set(&["h1", "h2", "h3"]);
    let none = BTreeMap::new();
    let first = next_health(None, &inputs(&none, &all, 1000));
    let mut i = inputs(&none, &all, 1000 + 59_999);
    assert_eq!(next_health(Some(&first), &i).health_state, "initializing");
    i.now_ms = 1000 + 60_000;
    let timed_out = next_health(Some(&first), &i);
    assert_eq!(timed_out.health_state, "unhealthy");
    assert_eq!(deploy::health::reason(&timed_out), Some("initializing_timeout"));

    // A healthy container that restarts is reinitializing; votes on the old start are ignored.
    let up: BTreeMap<String, Vote> = [("h1".to_string(), vote(true))].into();
    let healthy = next_health(Some(&first), &inputs(&up, &all, 2000));
    let mut restarted = inputs(&up, &all, 3000);
    restarted.start_count = 2;
    let re = next_health(Some(&healthy), &restarted);
    assert_eq!(re.health_state, "reinitializing");
    restarted.now_ms = 3000 + 60_000;
    assert_eq!(next_health(Some(&re), &restarted).health_state, "unhealthy");
}

// ------------------------------------------------------------------------------------------
// Strategies, end to end with the controller.

/// A checker the test scripts: heartbeats, reports, and its whole view on request.
struct FakeChecker {
    host: String,
    events: Events,
    boot: String,
    state: Arc<Mutex<(u64, BTreeMap<String, bool>)>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeChecker {
    async fn start(bus: &Bus, host: &str) -> FakeChecker {
        let events = Events::new(bus, format!("healthcheck@{host}"));
        let boot = format!("boot-{host}-{}", free_port());
        let state: Arc<Mutex<(u64, BTreeMap<String, bool>)>> = Default::default();
        let mut requests = events.serve(&format!("{STATE_REQUEST}.{host}")).await.unwrap();
        let (e, s, h, b) = (events.clone(), state.clone(), host.to_string(), boot.clone());
        let server = tokio::spawn(async move {
            while let Some(req) = requests.next().await {
                let st = view(&h, &b, &s, true);
                let _ = e.reply(&req, &e.event(STATE_REQUEST).data(serde_json::to_value(st).unwrap())).await;
            }
        });
        let (e, s, h, b) = (events.clone(), state.clone(), host.to_string(), boot.clone());
        let beat = tokio::spawn(async move {
            loop {
                let st = view(&h, &b, &s, false);
                let _ = e.publish(&e.event(HEARTBEAT_EVENT).data(serde_json::to_value(st).unwrap())).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        FakeChecker { host: host.into(), events, boot, state, tasks: vec![server, beat] }
    }

    async fn say(&self, container: &str, up: bool) {
        let seq = {
            let mut st = self.state.lock().unwrap();
            st.0 += 1;
            st.1.insert(container.to_string(), up);
            st.0
        };
        let r = report(&self.host, &self.boot, seq, container, up);
        self.events.publish(&self.events.event(REPORT_EVENT).data(serde_json::to_value(r).unwrap())).await.unwrap();
    }

    /// The checker dies: no more heartbeats, no answers.
    fn kill(&mut self) {
        self.tasks.drain(..).for_each(|t| t.abort());
    }
}

impl Drop for FakeChecker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn report(host: &str, boot: &str, seq: u64, container: &str, up: bool) -> HealthReport {
    HealthReport {
        container_uuid: container.into(),
        host_uuid: host.into(),
        start_count: 0,
        up,
        status: if up { "UP".into() } else { "DOWN".into() },
        detail: if up { "L7OK".into() } else { "L7STS 503".into() },
        boot: boot.into(),
        seq,
    }
}

fn view(host: &str, boot: &str, s: &Mutex<(u64, BTreeMap<String, bool>)>, full: bool) -> CheckerState {
    let st = s.lock().unwrap();
    CheckerState {
        host_uuid: host.into(),
        boot: boot.into(),
        seq: st.0,
        checks: st.1.len() as u64,
        reports: if full { st.1.iter().map(|(c, up)| report(host, boot, st.0, c, *up)).collect() } else { vec![] },
    }
}

/// Fields drop in order: the controller stops before its NATS does.
struct World {
    _controller: Terminate,
    bus: Bus,
    store: StateStore,
    _nats: NatsServer,
}

fn health_check(strategy: &str, quorum: Option<u32>, init_timeout: u64) -> HealthCheck {
    let mut v = serde_json::json!({"port": 80, "request_line": "GET /ok HTTP/1.0", "interval": 200,
        "initializing_timeout": init_timeout, "strategy": strategy});
    if let Some(q) = quorum {
        v["recreate_on_quorum_strategy_config"] = serde_json::json!({"quorum": q});
    }
    serde_json::from_value(v).unwrap()
}

async fn world(scale: u32, hc: HealthCheck, extra_args: &[&str]) -> World {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    for i in 1..=3 {
        let mut h = fixtures::host(&format!("h{i}"), &format!("host-{i}"), &format!("127.0.1.{i}"));
        h.subnet = Some(format!("10.42.{i}.0/24"));
        store.put(&h).await.unwrap();
    }
    store.put(&fixtures::stack("st1", "app")).await.unwrap();
    let mut web = fixtures::service("s-web", "st1", "web");
    web.scale = Some(scale);
    web.launch_config.health_check = Some(hc);
    store.put(&web).await.unwrap();
    let controller = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args([
            "controller",
            "--lease-ttl",
            "2s",
            "--holder",
            "t",
            "--admin-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--health-checker-timeout", "1500ms", "--health-recreate-interval", "300ms"])
        .args(extra_args)
        .env("CORRAL_NATS_URL", nats.url())
        .env("CORRAL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    World { _controller: Terminate(controller), bus, store, _nats: nats }
}

impl World {
    async fn containers(&self) -> Vec<Container> {
        let mut out = Vec::new();
        for key in self.store.keys(Some(Family::Container)).await.unwrap() {
            if let Some(c) = self.store.get::<Container>(&key.id).await.unwrap() {
                out.push(c.value);
            }
        }
        out.sort_by_key(|c| c.create_index);
        out
    }

    async fn health(&self, uuid: &str) -> Option<ContainerHealth> {
        self.store.get::<ContainerHealth>(uuid).await.unwrap().map(|v| v.value)
    }

    async fn wait_state(&self, uuid: &str, state: &str, limit: Duration) {
        until(limit, &format!("{uuid} {state}"), || async {
            self.health(uuid).await.is_some_and(|h| h.health_state == state)
        })
        .await;
    }

    /// Waits for `n` containers, each with a health record naming its checkers.
    async fn placed(&self, n: usize) -> Vec<Container> {
        until(Duration::from_secs(20), "containers placed with checkers", || async {
            let cs = self.containers().await;
            if cs.len() != n {
                return false;
            }
            for c in &cs {
                match self.health(&c.uuid).await {
                    Some(h) if !h.health_check_hosts.is_empty() => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
        self.containers().await
    }

    async fn checkers(&self) -> Vec<FakeChecker> {
        let mut out = Vec::new();
        for h in ["h1", "h2", "h3"] {
            out.push(FakeChecker::start(&self.bus, h).await);
        }
        out
    }
}

async fn say_all(checkers: &[FakeChecker], container: &str, up: bool) {
    for c in checkers {
        c.say(container, up).await;
    }
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_none_marks_and_never_recreates() {
    let w = world(2, health_check("none", None, 60_000), &[]).await;
    let cs = w.placed(2).await;
    let h = w.health(&cs[0].uuid).await.unwrap();
    assert_eq!(h.health_check_hosts.len(), 3, "own host plus two others");
    assert_eq!(h.health_check_hosts[0], cs[0].host_uuid.clone().unwrap(), "own host first");
    let checkers = w.checkers().await;
    for c in &cs {
        say_all(&checkers, &c.uuid, true).await;
        w.wait_state(&c.uuid, "healthy", WAIT).await;
    }
    say_all(&checkers, &cs[0].uuid, false).await;
    w.wait_state(&cs[0].uuid, "unhealthy", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now: Vec<String> = w.containers().await.into_iter().map(|c| c.uuid).collect();
    assert_eq!(now, cs.iter().map(|c| c.uuid.clone()).collect::<Vec<_>>(), "nothing recreated");
    let h = w.health(&cs[0].uuid).await.unwrap();
    assert_eq!(deploy::health::remediation(&h), Some("strategy none"));
    assert_eq!(h.reports.values().filter(|v| *v == "unhealthy").count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_recreate_replaces_the_unit() {
    let w = world(1, health_check("recreate", None, 60_000), &[]).await;
    let old = w.placed(1).await.remove(0);
    let checkers = w.checkers().await;
    say_all(&checkers, &old.uuid, true).await;
    w.wait_state(&old.uuid, "healthy", WAIT).await;
    say_all(&checkers, &old.uuid, false).await;
    until(WAIT, "a replacement", || async {
        let cs = w.containers().await;
        cs.len() == 1 && cs[0].uuid != old.uuid
    })
    .await;
    let new = w.placed(1).await.remove(0);
    assert!(new.create_index > old.create_index, "a new create index");
    assert!(w.health(&old.uuid).await.is_none(), "the old verdict is cleaned up");
    w.wait_state(&new.uuid, "initializing", WAIT).await;
    say_all(&checkers, &new.uuid, true).await;
    w.wait_state(&new.uuid, "healthy", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_on_quorum_acts_only_while_the_quorum_is_healthy() {
    let w = world(3, health_check("recreateOnQuorum", Some(2), 60_000), &[]).await;
    let cs = w.placed(3).await;
    let checkers = w.checkers().await;
    for c in &cs {
        say_all(&checkers, &c.uuid, true).await;
        w.wait_state(&c.uuid, "healthy", WAIT).await;
    }
    // One of three fails: two stay healthy (= quorum), so it is replaced.
    say_all(&checkers, &cs[0].uuid, false).await;
    until(WAIT, "the replacement", || async { !w.containers().await.iter().any(|c| c.uuid == cs[0].uuid) }).await;
    let now = w.placed(3).await;
    let fresh = now.iter().find(|c| !cs.iter().any(|o| o.uuid == c.uuid)).unwrap().clone();
    say_all(&checkers, &fresh.uuid, true).await;
    w.wait_state(&fresh.uuid, "healthy", WAIT).await;

    // Two fail at once: one healthy left, below the quorum: both kept.
    say_all(&checkers, &cs[1].uuid, false).await;
    say_all(&checkers, &cs[2].uuid, false).await;
    w.wait_state(&cs[1].uuid, "unhealthy", WAIT).await;
    w.wait_state(&cs[2].uuid, "unhealthy", WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let uuids: BTreeSet<String> = w.containers().await.into_iter().map(|c| c.uuid).collect();
    assert!(uuids.contains(&cs[1].uuid) && uuids.contains(&cs[2].uuid), "recreated below the quorum");
    let h = w.health(&cs[1].uuid).await.unwrap();
    assert_eq!(deploy::health::remediation(&h), Some("quorum: 1 healthy, 2 needed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_checkers_are_dropped_from_the_vote() {
    let w = world(1, health_check("none", None, 60_000), &[]).await;
    let c = w.placed(1).await.remove(0);
    let mut checkers = w.checkers().await;
    say_all(&checkers, &c.uuid, true).await;
    w.wait_state(&c.uuid, "healthy", WAIT).await;
    // Two checkers die, the first having said "down" on its way out: the one live checker
    // still passes the container.
    checkers[0].say(&c.uuid, false).await;
    checkers[0].kill();
    checkers[1].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.health(&c.uuid).await.unwrap().health_state, "healthy");
    // The container's host goes: the last live checker reports it down.
    checkers[2].say(&c.uuid, false).await;
    w.wait_state(&c.uuid, "unhealthy", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_never_becomes_healthy_is_damped() {
    let w = world(1, health_check("recreate", None, 1000), &["--health-recreate-limit", "2"]).await;
    let first = w.placed(1).await.remove(0);
    let _checkers = w.checkers().await;
    // Nobody ever passes it: unhealthy at the initializing timeout, replaced, twice; then kept.
    until(Duration::from_secs(30), "two replacements", || async {
        w.containers().await.first().is_some_and(|c| c.create_index >= first.create_index.map(|i| i + 2))
    })
    .await;
    let last = w.placed(1).await.remove(0);
    until(WAIT, "the damping mark", || async {
        w.health(&last.uuid)
            .await
            .is_some_and(|h| deploy::health::remediation(&h).is_some_and(|r| r.starts_with("damped")))
    })
    .await;
    let h = w.health(&last.uuid).await.unwrap();
    assert_eq!((h.health_state.as_str(), deploy::health::reason(&h)), ("unhealthy", Some("initializing_timeout")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.containers().await[0].uuid, last.uuid, "no more replacements");
}

#[test]
fn bad_health_checks_are_refused_at_deploy_up() {
    let cases = [
        ("{port: 0}", "web.health_check.port"),
        ("{port: 80, interval: -2000}", "web.health_check.interval"),
        ("{port: 80, healthy_threshold: 0}", "web.health_check.healthy_threshold"),
        ("{port: 80, unhealthy_threshold: 0}", "web.health_check.unhealthy_threshold"),
        (r#"{port: 80, request_line: "GET /ok HTTP/1.0\nHost: x"}"#, "web.health_check.request_line"),
        (r#"{port: 80, request_line: "GET /ok HTTP/1.0\r\nHost: x"}"#, "web.health_check.request_line"),
    ];
    for (hc, field) in cases {
        let dir = tempfile::tempdir().unwrap();
        let compose = dir.path().join("docker-compose.yml");
        let rancher = dir.path().join("rancher-compose.yml");
        std::fs::write(&compose, "web:\n  image: a\n").unwrap();
        std::fs::write(&rancher, format!("web:\n  health_check: {hc}\n")).unwrap();
        let (code, _, err) = common::deploy(
            &["validate", "-f", compose.to_str().unwrap(), "-r", rancher.to_str().unwrap(), "-p", "app"],
            "nats://127.0.0.1:1",
        );
        assert_eq!(code, 2, "{hc}: accepted");
        assert!(err.contains("rancher-compose.yml:2:") && err.contains(field), "{hc}: {err}");
    }
}
