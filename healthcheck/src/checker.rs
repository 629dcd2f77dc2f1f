//! The checker loop: state cache → targets → HAProxy (at most one reload per
//! `min_reload_interval`, so a burst of 100 changes is one reload) → `show stat` every
//! `poll` → reports on NATS.
//!
//! Publishing runs in its own task with a queue holding the newest report per container, so a
//! NATS outage never stalls the checks: HAProxy keeps checking, the verdicts keep changing in
//! memory, and what changed is sent when NATS is back. Every `heartbeat` the checker says it is
//! alive and how far its reports got (`seq`); the controller asks for the whole view
//! (`healthcheck.state.<host>`) when it missed something.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_bus::model::{CheckerState, HealthReport, HEARTBEAT_EVENT, REPORT_EVENT, STATE_REQUEST};
use event_bus::{Events, StateCache};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::haproxy::{Haproxy, HaproxyError};
use crate::metrics::CheckMetrics;
use crate::render::{render, Paths};
use crate::targets::select;
use crate::tracker::Tracker;

#[derive(Debug, Clone)]
pub struct Settings {
    pub host_uuid: String,
    pub haproxy_bin: PathBuf,
    /// Where the configuration, sockets and server-state file live.
    pub dir: PathBuf,
    /// How often HAProxy's stats are read.
    pub poll: Duration,
    pub heartbeat: Duration,
    /// Changes arriving faster than this are folded into one reload.
    pub min_reload_interval: Duration,
}

/// What the admin server's readiness and the state request read.
#[derive(Default)]
pub struct Status {
    pub haproxy_running: bool,
    pub current: Vec<HealthReport>,
    pub seq: u64,
    pub checks: u64,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// Runs until HAProxy cannot be started or stops for good.
pub async fn run(
    cache: StateCache,
    events: Events,
    s: Settings,
    metrics: CheckMetrics,
    status: SharedStatus,
) -> anyhow::Result<()> {
    let boot = uuid::Uuid::new_v4().to_string();
    let dir = std::path::absolute(&s.dir)?;
    std::fs::create_dir_all(&dir)?;
    let paths = Paths::in_dir(&dir);
    let mut tracker = Tracker::new(&s.host_uuid, &boot);
    let mut changes = cache.subscribe();
    changes.borrow_and_update();
    let (targets, skipped) = select(&cache.snapshot(), &s.host_uuid);
    for why in &skipped {
        tracing::warn!(reason = %why, "not checked");
    }
    tracker.set_targets(&targets);
    let mut haproxy = Haproxy::start(&s.haproxy_bin, &dir, paths.clone(), &render(&targets, &paths)).await?;
    tracing::info!(checks = targets.len(), dir = %dir.display(), "HAProxy started");
    metrics.checks.set(targets.len() as i64);
    metrics.skipped.set(skipped.len() as i64);
    {
        let mut st = status.lock().expect("status poisoned");
        st.haproxy_running = true;
        st.checks = targets.len() as u64;
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let publisher = tokio::spawn(publish_reports(events.clone(), rx, metrics.clone()));
    let heart = tokio::spawn(heartbeat(events.clone(), s.clone(), boot.clone(), status.clone()));
    let server = tokio::spawn(serve_state(events.clone(), s.host_uuid.clone(), boot.clone(), status.clone()));
    let _tasks = AbortOnDrop(vec![publisher, heart, server]);

    let mut wanted: Option<String> = None;
    let mut last_reload = Instant::now();
    let mut poll = tokio::time::interval(s.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the state cache stopped");
                }
                changes.borrow_and_update();
                let (targets, skipped) = select(&cache.snapshot(), &s.host_uuid);
                let text = render(&targets, &paths);
                if text != haproxy.current() || wanted.is_some() {
                    for why in &skipped {
                        tracing::warn!(reason = %why, "not checked");
                    }
                    tracker.set_targets(&targets);
                    metrics.checks.set(targets.len() as i64);
                    metrics.skipped.set(skipped.len() as i64);
                    wanted = Some(text);
                }
            }
            _ = poll.tick() => {
                match haproxy.ask("show stat -1 4 -1").await.map_err(anyhow::Error::from).and_then(|t| Ok(crate::stats::parse(&t)?)) {
                    Ok(rows) => {
                        let observed = Instant::now();
                        for (report, since) in tracker.apply(&rows) {
                            let dir = if report.up { "up" } else { "down" };
                            metrics.transitions.get_or_create(&vec![("direction", dir.to_string())]).inc();
                            tracing::info!(container = %report.container_uuid, up = report.up, detail = %report.detail, "verdict changed");
                            let _ = tx.send(Queued { report, observed, since_s: since });
                        }
                        let mut st = status.lock().expect("status poisoned");
                        st.current = tracker.current();
                        st.seq = tracker.seq();
                        st.checks = tracker.len() as u64;
                    }
                    Err(e) => {
                        metrics.stat_errors.inc();
                        tracing::warn!(error = %e, "reading HAProxy stats failed");
                    }
                }
                if wanted.is_some() && last_reload.elapsed() >= s.min_reload_interval {
                    let text = wanted.take().expect("checked");
                    last_reload = Instant::now();
                    match haproxy.apply(&text).await {
                        Ok(true) => {
                            metrics.reloads.inc();
                            tracing::info!(checks = tracker.len(), "HAProxy reloaded");
                        }
                        Ok(false) => {}
                        Err(e @ HaproxyError::Invalid { .. }) => {
                            metrics.rejected.inc();
                            tracing::error!(error = %e, "new configuration refused; HAProxy keeps running the previous one");
                        }
                        Err(e @ HaproxyError::Exited(_)) => {
                            status.lock().expect("status poisoned").haproxy_running = false;
                            return Err(e.into());
                        }
                        Err(e) => {
                            metrics.reload_failures.inc();
                            tracing::warn!(error = %e, "reload failed; retrying");
                            wanted = Some(text);
                        }
                    }
                }
            }
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(|t| t.abort());
    }
}

struct Queued {
    report: HealthReport,
    observed: Instant,
    since_s: Option<u64>,
}

/// Sends reports, newest per container first-come; keeps what NATS did not take and retries.
async fn publish_reports(events: Events, mut rx: mpsc::UnboundedReceiver<Queued>, metrics: CheckMetrics) {
    let mut pending: BTreeMap<String, Queued> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(q) => {
                    pending.insert(q.report.container_uuid.clone(), q);
                }
                None => return,
            }
        }
        while let Ok(q) = rx.try_recv() {
            pending.insert(q.report.container_uuid.clone(), q);
        }
        metrics.pending.set(pending.len() as i64);
        let sends = pending.values().map(|q| {
            let ev = events
                .event(REPORT_EVENT)
                .resource("container", q.report.container_uuid.clone())
                .data(serde_json::to_value(&q.report).expect("serializable"));
            let events = &events;
            async move {
                let ok = tokio::time::timeout(Duration::from_secs(5), events.publish(&ev)).await;
                (q.report.container_uuid.clone(), q.report.seq, matches!(ok, Ok(Ok(_))))
            }
        });
        let results = futures::future::join_all(sends).await;
        let mut failed = false;
        for (uuid, seq, ok) in results {
            if !ok {
                failed = true;
                continue;
            }
            // A newer report may have replaced it meanwhile; only drop what was sent.
            if pending.get(&uuid).is_some_and(|q| q.report.seq == seq) {
                let q = pending.remove(&uuid).expect("present");
                let lag = q.observed.elapsed().as_secs_f64() + q.since_s.unwrap_or(0) as f64;
                metrics.detect.observe(lag);
            }
        }
        metrics.pending.set(pending.len() as i64);
        if failed {
            tracing::warn!(pending = pending.len(), "NATS did not take every report; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn heartbeat(events: Events, s: Settings, boot: String, status: SharedStatus) {
    let mut tick = tokio::time::interval(s.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = {
            let st = status.lock().expect("status poisoned");
            CheckerState {
                host_uuid: s.host_uuid.clone(),
                boot: boot.clone(),
                seq: st.seq,
                checks: st.checks,
                reports: vec![],
            }
        };
        let ev = events
            .event(HEARTBEAT_EVENT)
            .resource("host", s.host_uuid.clone())
            .data(serde_json::to_value(&state).expect("serializable"));
        if let Ok(Err(e)) = tokio::time::timeout(s.heartbeat.max(Duration::from_secs(1)), events.publish(&ev)).await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}

/// Answers `healthcheck.state.<host>` with every current verdict.
async fn serve_state(events: Events, host: String, boot: String, status: SharedStatus) {
    let name = format!("{STATE_REQUEST}.{host}");
    let mut requests = loop {
        match events.serve(&name).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve state requests yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(req) = requests.next().await {
        let state = {
            let st = status.lock().expect("status poisoned");
            CheckerState {
                host_uuid: host.clone(),
                boot: boot.clone(),
                seq: st.seq,
                checks: st.checks,
                reports: st.current.clone(),
            }
        };
        let answer = events.event(STATE_REQUEST).data(serde_json::to_value(&state).expect("serializable"));
        if let Err(e) = events.reply(&req, &answer).await {
            tracing::debug!(error = %e, "state reply not sent");
        }
    }
}
