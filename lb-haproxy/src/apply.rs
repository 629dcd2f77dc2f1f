//! Keeping HAProxy in line with the state.
//!
//! For each new snapshot the configuration is rendered again. If only backend membership
//! differs from what runs, the differences go through the runtime API (no reload) and the
//! file is rewritten to match, so a later reload keeps them. Anything else is a structural
//! change: new ports must be free, the text must pass `haproxy -c`, then the file is swapped
//! and the master reloads hitlessly. A refused configuration leaves HAProxy as it was (and its
//! membership still follows the state, rendered from the last configuration that was good),
//! is logged, counted, published as an `lb.config.refused` event and written to the state
//! ([`crate::report`]).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use event_bus::model::Service;
use event_bus::{Events, Family, Snapshot, StateCache};

use crate::certs;
use crate::error::{ConfigError, HaproxyError};
use crate::haproxy::{self, Haproxy};
use crate::metrics::LbMetrics;
use crate::render::{self, BackendServers, Rendered, Settings};
use crate::report::Reporter;

/// What the current worker has: backend → server → (address, taking traffic).
pub type Live = BTreeMap<String, BTreeMap<String, (SocketAddr, bool)>>;

/// One runtime change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Add {
        backend: String,
        server: String,
        addr: SocketAddr,
        params: String,
    },
    SetAddr {
        backend: String,
        server: String,
        addr: SocketAddr,
    },
    Enable {
        backend: String,
        server: String,
    },
    /// Take out of rotation (existing connections finish), then delete when it has none.
    Disable {
        backend: String,
        server: String,
    },
}

/// The runtime changes that turn `live` into `desired` (pure). New and re-enabled servers come
/// first, so a backend being replaced never goes through zero servers.
pub fn membership_ops(live: &Live, desired: &BTreeMap<String, BackendServers>) -> Vec<Op> {
    let mut up = Vec::new();
    let mut down = Vec::new();
    for (b, want) in desired {
        let have = live.get(b);
        for s in &want.servers {
            match have.and_then(|h| h.get(&s.name)) {
                None => up.push(Op::Add {
                    backend: b.clone(),
                    server: s.name.clone(),
                    addr: s.addr,
                    params: want.params.clone(),
                }),
                Some((addr, enabled)) => {
                    if *addr != s.addr {
                        up.push(Op::SetAddr { backend: b.clone(), server: s.name.clone(), addr: s.addr });
                    }
                    if !enabled {
                        up.push(Op::Enable { backend: b.clone(), server: s.name.clone() });
                    }
                }
            }
        }
        for (name, (_, enabled)) in have.into_iter().flatten() {
            if *enabled && !want.servers.iter().any(|s| &s.name == name) {
                down.push(Op::Disable { backend: b.clone(), server: name.clone() });
            }
        }
    }
    up.extend(down);
    up
}

/// The families a load balancer's configuration is rendered from.
const INPUTS: &[Family] =
    &[Family::Stack, Family::Service, Family::Container, Family::Status, Family::Health, Family::Certificate];

/// What `/readyz` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub serving: bool,
    pub waiting: Option<String>,
}

pub struct Controller {
    settings: Settings,
    bin: PathBuf,
    /// `stack/name` of the load balancer service.
    service: String,
    haproxy: Option<Haproxy>,
    applied: Option<Rendered>,
    live: Live,
    /// The last load balancer spec that rendered and applied.
    last_good: Option<Service>,
    refused: Option<String>,
    warned: Vec<String>,
    retry: bool,
    /// A refusal that depends on the host, not the state (a port another process holds): when
    /// to look again, and the delay so far (1 s doubling to 30 s).
    recheck: Option<(Instant, Duration)>,
    metrics: LbMetrics,
    events: Option<Events>,
    reporter: Option<Reporter>,
    status: Arc<RwLock<Status>>,
}

impl Controller {
    pub fn new(settings: Settings, bin: PathBuf, service: String, metrics: LbMetrics, events: Option<Events>) -> Self {
        Controller {
            settings,
            bin,
            service,
            haproxy: None,
            applied: None,
            live: Live::new(),
            last_good: None,
            refused: None,
            warned: Vec::new(),
            retry: false,
            recheck: None,
            metrics,
            events,
            reporter: None,
            status: Arc::new(RwLock::new(Status { serving: false, waiting: Some("not started".into()) })),
        }
    }

    /// Also write this instance's verdict to the state (`lbstatus.<instance>`).
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    pub fn status(&self) -> Arc<RwLock<Status>> {
        self.status.clone()
    }

    fn set_status(&self, serving: bool, waiting: Option<String>) {
        *self.status.write().expect("status lock") = Status { serving, waiting };
    }

    /// Follows the cache until `shutdown` resolves, then stops HAProxy gracefully. Returns an
    /// error if HAProxy dies on its own (a supervisor should restart us).
    pub async fn run(
        mut self,
        cache: StateCache,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut changes = cache.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Arc<Snapshot>> = None;
        let result = loop {
            changes.borrow_and_update();
            let snap = cache.snapshot();
            // Only what the configuration is made of: our own lbstatus writes (and other
            // components' records) must not re-run the step.
            if self.retry || last.as_ref().is_none_or(|l| snap.differs_from(l, INPUTS)) {
                self.step(&snap).await;
                last = Some(snap);
            }
            let next = loop {
                tokio::select! {
                    _ = &mut shutdown => break None,
                    r = changes.changed() => break Some(r.is_ok()),
                    _ = tick.tick() => {
                        if let Some(status) = self.haproxy.as_mut().and_then(Haproxy::exited) {
                            tracing::error!(%status, "HAProxy exited");
                            self.haproxy = None;
                            break None;
                        }
                        self.delete_pending().await;
                        if self.recheck.is_some_and(|(at, _)| Instant::now() >= at) {
                            self.retry = true;
                        }
                        if self.retry {
                            break Some(true);
                        }
                    }
                }
            };
            match next {
                Some(true) => continue,
                Some(false) => break Ok(()),
                None if self.haproxy.is_none() && self.applied.is_some() => {
                    break Err(anyhow::anyhow!("HAProxy exited unexpectedly"))
                }
                None => break Ok(()),
            }
        };
        self.set_status(false, Some("shutting down".into()));
        // The status goes first: HAProxy's drain can take the whole stop timeout, after which
        // a supervisor kills us, and the instance is leaving either way.
        if let Some(r) = self.reporter.take() {
            r.stop().await;
        }
        if let Some(h) = self.haproxy.take() {
            h.stop(Duration::from_secs(10)).await;
        }
        result
    }

    /// Brings HAProxy in line with one snapshot, and says how that went.
    pub async fn step(&mut self, snap: &Snapshot) {
        let Some(uuid) = self.bring_in_line(snap).await else { return };
        if let Some(r) = &self.reporter {
            let serving = self.applied.is_some() && self.haproxy.is_some();
            r.set(&uuid, serving, self.refused.as_deref());
        }
    }

    /// Returns the load balancer service's uuid, if it is in the state.
    async fn bring_in_line(&mut self, snap: &Snapshot) -> Option<String> {
        self.retry = false;
        let started = Instant::now();
        let Some(lb) = find_service(snap, &self.service) else {
            let why = format!("load balancer service {} not in the state", self.service);
            if self.applied.is_none() {
                self.set_status(false, Some(why));
            } else {
                tracing::warn!("{why}: keeping the current configuration");
            }
            return None;
        };
        let uuid = lb.uuid.clone();
        let rendered = match render::render_service(&self.settings, &lb, snap) {
            Ok(r) => r,
            Err(e) => {
                self.refuse(&lb, e);
                self.follow_membership_of_last_good(snap, started).await;
                return Some(uuid);
            }
        };
        for w in &rendered.warnings {
            if !self.warned.contains(w) {
                tracing::warn!(service = %self.service, "{w}");
            }
        }
        self.warned = rendered.warnings.clone();
        match self.apply(&lb, rendered, started).await {
            Ok(()) => {
                self.recheck = None;
                if self.refused.take().is_some() {
                    tracing::info!(service = %self.service, "configuration accepted again");
                    self.metrics.refused_now.set(0);
                }
                self.last_good = Some(lb);
            }
            Err(Failure::Refused(e)) => {
                self.refuse(&lb, e);
                self.follow_membership_of_last_good(snap, started).await;
            }
            Err(Failure::Haproxy(e)) => {
                tracing::error!(error = %e, "applying the configuration failed; retrying");
                self.retry = true;
            }
        }
        Some(uuid)
    }

    /// While the newest spec is refused, the last good one keeps following membership.
    async fn follow_membership_of_last_good(&mut self, snap: &Snapshot, started: Instant) {
        let Some(good) = self.last_good.clone() else { return };
        if let Ok(r) = render::render_service(&self.settings, &good, snap) {
            if self.applied.as_ref().is_some_and(|a| same_structure(a, &r)) {
                if let Err(e) = self.apply(&good, r, started).await {
                    tracing::warn!(error = %e, "membership update of the previous configuration failed");
                    self.retry = matches!(e, Failure::Haproxy(_));
                }
            }
        }
    }

    fn refuse(&mut self, lb: &Service, e: ConfigError) {
        let msg = e.to_string();
        // Nothing in the state changes when the other process lets the port go: look again.
        if matches!(e, ConfigError::PortInUse { .. }) {
            let delay =
                self.recheck.map(|(_, d)| (d * 2).min(Duration::from_secs(30))).unwrap_or(Duration::from_secs(1));
            self.recheck = Some((Instant::now() + delay, delay));
        } else {
            self.recheck = None;
        }
        if self.refused.as_deref() == Some(msg.as_str()) {
            return;
        }
        tracing::error!(service = %self.service, error = %msg, "configuration refused; HAProxy keeps its current configuration");
        self.metrics.rejected.inc();
        self.metrics.refused_now.set(1);
        self.refused = Some(msg.clone());
        if self.applied.is_none() {
            self.set_status(false, Some(format!("no valid configuration yet: {msg}")));
        }
        self.publish("lb.config.refused", lb, serde_json::json!({ "service": self.service, "error": msg }));
    }

    fn publish(&self, name: &str, lb: &Service, data: serde_json::Value) {
        let Some(events) = self.events.clone() else { return };
        let event = events.event(name).resource("service", lb.uuid.clone()).data(data);
        tokio::spawn(async move {
            if let Err(e) = events.publish(&event).await {
                tracing::warn!(error = %e, event = %event.name, "could not publish the event");
            }
        });
    }

    async fn apply(&mut self, lb: &Service, r: Rendered, started: Instant) -> Result<(), Failure> {
        let Some(applied) = self.applied.as_ref() else { return self.structural(lb, r, started).await };
        if applied.text == r.text {
            return Ok(());
        }
        let dynamic = r.backends.values().all(|b| b.dynamic) || membership_equal_where_static(applied, &r);
        if !same_structure(applied, &r) || !dynamic {
            return self.structural(lb, r, started).await;
        }
        match self.runtime(&r).await {
            Ok(n) => {
                self.write_config(&r.text).map_err(Failure::Haproxy)?;
                self.metrics.runtime_updates.inc_by(n);
                self.metrics.applied("runtime", started.elapsed().as_secs_f64());
                tracing::info!(
                    changes = n,
                    ms = started.elapsed().as_millis() as u64,
                    "membership updated without a reload"
                );
                self.count_servers();
                self.applied = Some(r);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "runtime update failed; reloading instead");
                self.structural(lb, r, started).await
            }
        }
    }

    async fn runtime(&mut self, r: &Rendered) -> Result<u64, HaproxyError> {
        let ops = membership_ops(&self.live, &r.backends);
        let h = self.haproxy.as_ref().expect("applied implies running");
        let mut n = 0;
        for op in ops {
            match &op {
                Op::Add { backend, server, addr, params } => {
                    let cmd = format!("add server {backend}/{server} {addr} {params}");
                    expect(h, cmd.trim_end(), |r| r.contains("New server registered")).await?;
                    if params.split_whitespace().any(|w| w == "check") {
                        expect(h, &format!("enable health {backend}/{server}"), str::is_empty).await?;
                    }
                    expect(h, &format!("enable server {backend}/{server}"), str::is_empty).await?;
                    self.live.entry(backend.clone()).or_default().insert(server.clone(), (*addr, true));
                }
                Op::SetAddr { backend, server, addr } => {
                    let cmd = format!("set server {backend}/{server} addr {} port {}", addr.ip(), addr.port());
                    expect(h, &cmd, |r| r.contains("changed") || r.contains("no need")).await?;
                    if let Some(e) = self.live.get_mut(backend).and_then(|b| b.get_mut(server)) {
                        e.0 = *addr;
                    }
                }
                Op::Enable { backend, server } => {
                    expect(h, &format!("enable server {backend}/{server}"), str::is_empty).await?;
                    if let Some(e) = self.live.get_mut(backend).and_then(|b| b.get_mut(server)) {
                        e.1 = true;
                    }
                }
                Op::Disable { backend, server } => {
                    expect(h, &format!("disable server {backend}/{server}"), str::is_empty).await?;
                    if let Some(e) = self.live.get_mut(backend).and_then(|b| b.get_mut(server)) {
                        e.1 = false;
                    }
                }
            }
            n += 1;
        }
        self.delete_pending().await;
        Ok(n)
    }

    /// Deletes disabled servers once their connections are gone (`del server` refuses before).
    async fn delete_pending(&mut self) {
        let Some(h) = self.haproxy.as_ref() else { return };
        let pending: Vec<(String, String)> = self
            .live
            .iter()
            .flat_map(|(b, s)| s.iter().filter(|(_, (_, en))| !en).map(move |(n, _)| (b.clone(), n.clone())))
            .collect();
        for (b, s) in pending {
            match h.worker_command(&format!("del server {b}/{s}")).await {
                Ok(reply) if reply.contains("Server deleted") => {
                    if let Some(m) = self.live.get_mut(&b) {
                        m.remove(&s);
                    }
                }
                Ok(reply) => tracing::debug!(backend = %b, server = %s, %reply, "server not deletable yet"),
                Err(e) => tracing::debug!(error = %e, "del server"),
            }
        }
    }

    async fn structural(&mut self, lb: &Service, r: Rendered, started: Instant) -> Result<(), Failure> {
        self.check_ports(&r)?;
        let dir = self.settings.certs_dir();
        let io = |path: &std::path::Path, e: std::io::Error| {
            Failure::Haproxy(HaproxyError::Io { path: path.display().to_string(), source: e })
        };
        if !r.certs.is_empty() {
            certs::write_all(&dir, &r.certs).map_err(|e| io(&dir, e))?;
        }
        if let Some((name, content)) = &r.crt_list {
            let p = dir.join(name);
            certs::write_private(&p, content).map_err(|e| io(&p, e))?;
        }
        let next = self.settings.run_dir.join("haproxy.cfg.next");
        std::fs::write(&next, &r.text).map_err(|e| io(&next, e))?;
        if let Err(output) = haproxy::check(&self.bin, &next).await {
            let _ = std::fs::remove_file(&next);
            self.clean_certs();
            return Err(Failure::Refused(ConfigError::Refused { output: self.explain(&output, &r) }));
        }
        let cfg = self.settings.config_path();
        match self.haproxy.as_mut() {
            None => {
                std::fs::rename(&next, &cfg).map_err(|e| io(&cfg, e))?;
                let state = self.settings.server_state();
                if !state.exists() {
                    std::fs::write(&state, "1\n").map_err(|e| io(&state, e))?;
                }
                let h =
                    Haproxy::start(&self.bin, &cfg, &self.settings.master_socket()).await.map_err(Failure::Haproxy)?;
                tracing::info!(master = h.pid(), worker = h.worker(), "HAProxy started");
                self.haproxy = Some(h);
            }
            Some(h) => {
                // Health carries over: the new worker reads the servers' state from this file.
                if let Ok(state) = h.worker_command("show servers state").await {
                    let _ = std::fs::write(self.settings.server_state(), format!("{state}\n"));
                }
                let previous = std::fs::read_to_string(&cfg).ok();
                std::fs::rename(&next, &cfg).map_err(|e| io(&cfg, e))?;
                if let Err(e) = h.reload().await {
                    self.metrics.reload(false);
                    if let Some(p) = previous {
                        let _ = std::fs::write(&cfg, p);
                    }
                    return Err(Failure::Haproxy(e));
                }
                self.metrics.reload(true);
                tracing::info!(worker = h.worker(), ms = started.elapsed().as_millis() as u64, "HAProxy reloaded");
                self.publish(
                    "lb.config.reloaded",
                    lb,
                    serde_json::json!({ "service": self.service, "ports": r.ports.keys().collect::<Vec<_>>() }),
                );
            }
        }
        self.metrics.applied("reload", started.elapsed().as_secs_f64());
        self.live = r
            .backends
            .iter()
            .map(|(b, s)| (b.clone(), s.servers.iter().map(|e| (e.name.clone(), (e.addr, true))).collect()))
            .collect();
        self.applied = Some(r);
        self.count_servers();
        self.clean_certs();
        self.set_status(true, None);
        Ok(())
    }

    /// A port the running HAProxy does not hold yet must be free on this host.
    fn check_ports(&self, r: &Rendered) -> Result<(), Failure> {
        for (port, rule) in &r.ports {
            if self.applied.as_ref().is_some_and(|a| a.ports.contains_key(port)) {
                continue;
            }
            let addr = SocketAddr::new(self.settings.bind_address, *port);
            if let Err(e) = TcpListener::bind(addr) {
                return Err(Failure::Refused(if e.kind() == std::io::ErrorKind::AddrInUse {
                    ConfigError::PortInUse { rule: *rule, port: *port, addr: addr.to_string() }
                } else {
                    ConfigError::InvalidField {
                        rule: *rule,
                        field: "source_port",
                        reason: format!("cannot listen on {addr}: {e}"),
                    }
                }));
            }
        }
        Ok(())
    }

    /// HAProxy names files in its alerts; say which certificate a certificate file is.
    fn explain(&self, output: &str, r: &Rendered) -> String {
        let mut out =
            output.replace(&self.settings.run_dir.join("haproxy.cfg.next").display().to_string(), "haproxy.cfg");
        for c in &r.certs {
            out = out.replace(
                &self.settings.certs_dir().join(&c.file_name).display().to_string(),
                &format!("certificate {:?}", c.name),
            );
        }
        quote_lines(&out, &r.text)
    }

    fn clean_certs(&self) {
        let mut keep: Vec<String> =
            self.applied.iter().flat_map(|a| a.certs.iter().map(|c| c.file_name.clone())).collect();
        keep.extend(self.applied.iter().filter_map(|a| a.crt_list.as_ref().map(|c| c.0.clone())));
        certs::remove_unused(&self.settings.certs_dir(), &keep);
    }

    fn write_config(&self, text: &str) -> Result<(), HaproxyError> {
        let cfg = self.settings.config_path();
        let tmp = cfg.with_extension("cfg.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &cfg))
            .map_err(|e| HaproxyError::Io { path: cfg.display().to_string(), source: e })
    }

    fn count_servers(&self) {
        let n: usize = self.live.values().map(|b| b.values().filter(|(_, en)| *en).count()).sum();
        self.metrics.servers.set(n as i64);
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Refused(ConfigError),
    #[error(transparent)]
    Haproxy(HaproxyError),
}

async fn expect(h: &Haproxy, cmd: &str, ok: impl Fn(&str) -> bool) -> Result<String, HaproxyError> {
    let reply = h.worker_command(cmd).await?;
    if ok(&reply) {
        Ok(reply)
    } else {
        Err(HaproxyError::Command { command: cmd.into(), reply })
    }
}

/// After each `[haproxy.cfg:N]` HAProxy names, the line itself (in place of its number): the
/// user wrote `lb_config`, not the generated file, and needs to see which of their lines it is.
fn quote_lines(output: &str, config: &str) -> String {
    let lines: Vec<&str> = config.lines().collect();
    output
        .lines()
        .map(|l| {
            let n = l
                .split_once("[haproxy.cfg:")
                .and_then(|(_, rest)| rest.split(']').next())
                .and_then(|n| n.parse::<usize>().ok());
            // The line is quoted instead of numbered: the number moves whenever a backend
            // above it gains or loses a server, and one refusal must read the same each time.
            match n.and_then(|n| lines.get(n.wrapping_sub(1)).map(|text| (n, text))) {
                Some((n, text)) => {
                    format!(
                        "{} (the line is `{}`)",
                        l.replace(&format!("[haproxy.cfg:{n}]"), "[haproxy.cfg]"),
                        text.trim()
                    )
                }
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn same_structure(a: &Rendered, b: &Rendered) -> bool {
    a.structure == b.structure
        && a.certs == b.certs
        && a.crt_list == b.crt_list
        && a.backends.len() == b.backends.len()
        && a.backends
            .iter()
            .zip(&b.backends)
            .all(|((na, x), (nb, y))| na == nb && x.params == y.params && x.dynamic == y.dynamic)
}

/// Backends HAProxy cannot change at runtime (cookie stickiness) must not change membership.
fn membership_equal_where_static(a: &Rendered, b: &Rendered) -> bool {
    b.backends
        .iter()
        .filter(|(_, s)| !s.dynamic)
        .all(|(n, s)| a.backends.get(n).is_some_and(|x| x.servers == s.servers))
}

/// `stack/name` → the service.
pub fn find_service(snap: &Snapshot, spec: &str) -> Option<Service> {
    let (stack, name) = spec.split_once('/')?;
    let st = snap.stack_by_name(stack)?;
    snap.service_by_name(&st.uuid, name).map(|s| Service::clone(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Endpoint;

    fn ep(name: &str, addr: &str) -> Endpoint {
        Endpoint { name: name.into(), addr: addr.parse().unwrap() }
    }

    #[test]
    fn haproxy_errors_quote_the_line() {
        let out = "[ALERT]    (1) : config : parsing [haproxy.cfg:2] : unexpected character 'b'\n[ALERT] fatal";
        let q = quote_lines(out, "defaults\n    timeout client banana\n");
        assert!(
            q.contains("parsing [haproxy.cfg] : unexpected character 'b' (the line is `timeout client banana`)"),
            "{q}"
        );
        assert!(q.ends_with("[ALERT] fatal"));
        // The same line further down the file (servers added above it) reads the same.
        let later = out.replace("cfg:2]", "cfg:3]");
        assert_eq!(
            quote_lines(
                &later,
                "defaults
    option httplog
    timeout client banana
"
            ),
            q
        );
    }

    #[test]
    fn adds_before_removals_and_reuses_disabled_servers() {
        let mut live = Live::new();
        live.entry("b".into()).or_default().insert("a".into(), ("10.0.0.1:80".parse().unwrap(), true));
        live.entry("b".into()).or_default().insert("old".into(), ("10.0.0.9:80".parse().unwrap(), true));
        live.entry("b".into()).or_default().insert("back".into(), ("10.0.0.3:80".parse().unwrap(), false));
        let desired: BTreeMap<String, BackendServers> = [(
            "b".to_string(),
            BackendServers {
                servers: vec![ep("a", "10.0.0.2:80"), ep("back", "10.0.0.3:80"), ep("new", "10.0.0.4:80")],
                params: "check".into(),
                dynamic: true,
            },
        )]
        .into();
        let ops = membership_ops(&live, &desired);
        assert_eq!(
            ops,
            vec![
                Op::SetAddr { backend: "b".into(), server: "a".into(), addr: "10.0.0.2:80".parse().unwrap() },
                Op::Enable { backend: "b".into(), server: "back".into() },
                Op::Add {
                    backend: "b".into(),
                    server: "new".into(),
                    addr: "10.0.0.4:80".parse().unwrap(),
                    params: "check".into()
                },
                Op::Disable { backend: "b".into(), server: "old".into() },
            ]
        );
    }
}
