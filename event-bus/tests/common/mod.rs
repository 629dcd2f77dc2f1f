#![allow(dead_code)] // each test binary uses its own subset

use std::future::Future;
use std::process::Output;
use std::time::{Duration, Instant};

use event_bus::runtime::metrics::Metrics;
use event_bus::{provision, Bus, NatsOptions, Provision, StateStore};

pub async fn connect(url: &str) -> Bus {
    Bus::connect(&NatsOptions::new(url), "default", Duration::from_secs(10)).await.expect("connect")
}

pub async fn provisioned(url: &str) -> (Bus, StateStore) {
    let bus = connect(url).await;
    let store = provision(&bus, &Provision::default()).await.expect("provision");
    (bus, store)
}

/// Polls `check` until it returns true or `within` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of one sample in the OpenMetrics text, e.g. `corral_state_cache_changes_total`.
pub fn metric(metrics: &Metrics, sample: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| {
            l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// Runs the real `event-bus` binary against `url`.
pub fn event_bus(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_event-bus"))
        .args(args)
        .env("CORRAL_NATS_URL", url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running event-bus");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
