//! `deploy agent`: one per host. Registers the host (name, agent IP, labels, subnet) with a
//! heartbeat, keeps a Docker bridge network for the host's subnet, and makes Docker run exactly
//! the containers the controller assigned to this host: creates and starts the missing ones
//! (with their address, labels, DNS settings), starts again those that stopped (unless
//! `io.rancher.container.start_once`), removes the ones no longer assigned, and reports each
//! one's observed state. It finds its containers by label, so a restarted agent adopts what
//! runs instead of recreating it. Level-triggered: every state change and every second.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use event_bus::model::{Container, ContainerStatus, Extra, Host, Labels, LaunchConfig, ServiceKind};
use event_bus::{StateCache, StateStore};

use crate::history::now_ms;

/// Label Docker containers carry to say which host's agent owns them.
pub const OWNER: &str = "io.corral.agent.host";
pub const UUID: &str = "io.rancher.container.uuid";
const START_ONCE: &str = "io.rancher.container.start_once";

#[derive(Debug, Clone)]
pub struct Settings {
    pub host_uuid: String,
    pub host_name: String,
    pub agent_ip: String,
    pub labels: Labels,
    /// This host's slice of the managed network, e.g. `10.42.3.0/24`.
    pub subnet: String,
    /// The Docker network made for it.
    pub network: String,
    pub heartbeat: Duration,
    /// DNS servers given to containers (rancher-dns); none: Docker's default.
    pub dns: Vec<String>,
    /// How long a container gets to stop after SIGTERM (upgrades stop old containers).
    pub stop_timeout: Duration,
    /// The image a load balancer service's containers run (`scripts/lb-image`), and what they
    /// need to reach NATS: its URL (never credentials) and the environment name.
    pub lb_image: String,
    pub nats_url: String,
    pub env: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    State(#[from] event_bus::Error),
    #[error("{0}")]
    Config(String),
}

/// The gateway of a subnet (`.1`), which the bridge takes.
pub fn gateway(subnet: &str) -> Option<std::net::Ipv4Addr> {
    let (ip, len) = subnet.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| (8..=30).contains(l))?;
    let network = u32::from(ip) & (u32::MAX << (32 - len));
    Some(std::net::Ipv4Addr::from(network + 1))
}

/// Creates the host's bridge network unless it exists.
pub async fn ensure_network(docker: &Docker, s: &Settings) -> Result<(), AgentError> {
    create_network(docker, &s.host_uuid, &s.network, &s.subnet).await
}

/// Creates `network` on `subnet` (gateway `.1`), owned by `host_uuid`, unless it exists.
pub async fn create_network(docker: &Docker, host_uuid: &str, network: &str, subnet: &str) -> Result<(), AgentError> {
    if docker.inspect_network(network, None).await.is_ok() {
        return Ok(());
    }
    let gw = gateway(subnet)
        .ok_or_else(|| AgentError::Config(format!("--subnet {subnet:?}: expected an IPv4 subnet a.b.c.d/8-30")))?
        .to_string();
    docker
        .create_network(NetworkCreateRequest {
            name: network.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: Some(gw),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([(OWNER.to_string(), host_uuid.to_string())])),
            ..Default::default()
        })
        .await?;
    tracing::info!(network = %network, subnet = %subnet, "created the host's network");
    Ok(())
}

/// Writes the host record with a fresh heartbeat.
pub async fn heartbeat(store: &StateStore, s: &Settings) -> Result<(), AgentError> {
    let mut host = Host::new(&s.host_uuid, &s.host_name, &s.agent_ip);
    host.labels = s.labels.clone();
    host.subnet = Some(s.subnet.clone());
    host.heartbeat_ms = Some(now_ms());
    store.put(&host).await?;
    Ok(())
}

/// One Docker container this agent owns, as listed.
struct Running {
    id: String,
    running: bool,
}

/// What the agent remembers from one pass to the next.
pub struct Memory {
    /// Containers whose status this agent wrote (it deletes them when they go).
    reported: std::collections::BTreeSet<String>,
    /// Containers being stopped in the background (a stop can take the whole stop timeout;
    /// the pass does not wait for it).
    stopping: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Containers Docker refused to create or start: when to try again, and the delay so far
    /// (1 s doubling to 30 s), so that a port taken by another process is not retried in a loop.
    backoff: HashMap<String, (std::time::Instant, Duration)>,
    /// Containers being created and started in the background, at most [`CREATE_PARALLEL`] at
    /// once across passes: a pass hands new containers over and goes on, so containers that
    /// appear while others are created join the queue at once instead of waiting for a whole
    /// pass (and its slowest container) to end.
    creating: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// What finished creations said: (container uuid, created and started; `None`: left alone,
    /// it was no longer ours to create when its turn came).
    done_tx: tokio::sync::mpsc::UnboundedSender<(String, Option<bool>)>,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<(String, Option<bool>)>,
}

impl Default for Memory {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Memory {
            reported: Default::default(),
            stopping: Default::default(),
            backoff: Default::default(),
            creating: Default::default(),
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(CREATE_PARALLEL)),
            done_tx: tx,
            done_rx: rx,
        }
    }
}

impl Memory {
    fn waiting(&self, uuid: &str) -> bool {
        self.backoff.get(uuid).is_some_and(|(at, _)| std::time::Instant::now() < *at)
    }
    fn creating(&self, uuid: &str) -> bool {
        self.creating.lock().is_ok_and(|set| set.contains(uuid))
    }
    /// Takes in what background creations finished with.
    fn collect(&mut self) {
        let mut done = Vec::new();
        while let Ok(d) = self.done_rx.try_recv() {
            done.push(d);
        }
        for (uuid, ok) in done {
            // Only now, before the pass lists Docker: a container no longer marked as being
            // created is in that listing, so it is never created twice.
            if let Ok(mut set) = self.creating.lock() {
                set.remove(&uuid);
            }
            let Some(ok) = ok else { continue };
            self.reported.insert(uuid.clone());
            if ok {
                self.backoff.remove(&uuid);
            } else {
                self.failed(&uuid);
            }
        }
    }
    fn failed(&mut self, uuid: &str) {
        let delay = self.backoff.get(uuid).map(|(_, d)| (*d * 2).min(Duration::from_secs(30)));
        let delay = delay.unwrap_or(Duration::from_secs(1));
        self.backoff.insert(uuid.to_string(), (std::time::Instant::now() + delay, delay));
    }
}

/// Brings Docker in line with the containers assigned to this host, and reports their state.
pub async fn reconcile(
    docker: &Docker,
    store: &StateStore,
    cache: &StateCache,
    s: &Settings,
    mem: &mut Memory,
) -> Result<(), AgentError> {
    mem.collect();
    let snap = cache.snapshot();
    let assigned: BTreeMap<String, &std::sync::Arc<Container>> = snap
        .containers_on_host(&s.host_uuid)
        .filter(|c| c.desired_state != "removed")
        .map(|c| (c.uuid.clone(), c))
        .collect();
    let filters = HashMap::from([("label".to_string(), vec![format!("{OWNER}={}", s.host_uuid)])]);
    let listed =
        docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build())).await?;
    let mut ours: HashMap<String, Running> = HashMap::new();
    for c in listed {
        let Some(uuid) = c.labels.as_ref().and_then(|l| l.get(UUID)).cloned() else { continue };
        let running = matches!(c.state, Some(bollard::models::ContainerSummaryStateEnum::RUNNING));
        ours.insert(uuid, Running { id: c.id.unwrap_or_default(), running });
    }
    // Gone from the assignment: remove.
    for (uuid, r) in &ours {
        if !assigned.contains_key(uuid) && !mem.creating(uuid) {
            docker.remove_container(&r.id, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await?;
            tracing::info!(container = %uuid, "removed (no longer assigned here)");
        }
    }
    // Status records this agent wrote for containers no longer assigned: ours to clean up.
    let stale: Vec<String> = mem.reported.iter().filter(|u| !assigned.contains_key(*u)).cloned().collect();
    for uuid in stale {
        // Even when the snapshot shows none: a background creation's write may not be in it yet.
        store.delete(&event_bus::Key::new(event_bus::Family::Status, uuid.as_str())?).await?;
        mem.reported.remove(&uuid);
    }
    // Primaries before the sidekicks that join their network.
    let mut to_create: Vec<&std::sync::Arc<Container>> = Vec::new();
    let mut order: Vec<&std::sync::Arc<Container>> = assigned.values().copied().collect();
    order.sort_by_key(|c| (c.network_from_container_uuid.is_some(), c.create_index));
    for c in order {
        // Being created in the background: that task reports it.
        if mem.creating(&c.uuid) {
            continue;
        }
        let status = snap.status(&c.uuid);
        let start_count = status.map(|st| st.start_count).unwrap_or(0);
        // Stopped by an upgrade: stop it (kept for a rollback) and never start it again. The
        // stop runs in the background; a later pass reports it stopped.
        if c.desired_state == "stopped" {
            if let Some(r) = ours.get(&c.uuid) {
                if r.running {
                    let first = mem.stopping.lock().map(|mut set| set.insert(c.uuid.clone())).unwrap_or(false);
                    if first {
                        let (docker, id, uuid, name) = (docker.clone(), r.id.clone(), c.uuid.clone(), c.name.clone());
                        let stopping = mem.stopping.clone();
                        let t = s.stop_timeout.as_secs().max(1) as i32;
                        tokio::spawn(async move {
                            let options = bollard::query_parameters::StopContainerOptionsBuilder::new().t(t).build();
                            match docker.stop_container(&id, Some(options)).await {
                                Ok(()) => tracing::info!(container = %name, "stopped (upgrade)"),
                                Err(e) => tracing::warn!(container = %name, error = %e, "stop failed; retrying"),
                            }
                            if let Ok(mut set) = stopping.lock() {
                                set.remove(&uuid);
                            }
                        });
                    }
                    continue;
                }
                report(store, &snap, c, &r.id, "stopped", start_count, None, s).await?;
                mem.reported.insert(c.uuid.clone());
            }
            continue;
        }
        // Docker refused it a moment ago: wait for the backoff before trying again.
        if mem.waiting(&c.uuid) && !ours.get(&c.uuid).is_some_and(|r| r.running) {
            continue;
        }
        let (id, started) = match ours.get(&c.uuid) {
            Some(r) if r.running => (r.id.clone(), false),
            Some(r) => {
                let info = docker.inspect_container(&r.id, None).await?;
                let exit = info.state.as_ref().and_then(|st| st.exit_code).unwrap_or(0);
                let once = c.labels.get(START_ONCE).is_some_and(|v| v == "true");
                if once && exit == 0 && start_count > 0 {
                    report(store, &snap, c, &r.id, "stopped", start_count, Some(exit), s).await?;
                    mem.reported.insert(c.uuid.clone());
                    continue;
                }
                if let Err(e) = docker.start_container(&r.id, None).await {
                    failed(store, &snap, c, &r.id, start_count, &e, s).await?;
                    mem.failed(&c.uuid);
                    mem.reported.insert(c.uuid.clone());
                    continue;
                }
                mem.backoff.remove(&c.uuid);
                tracing::info!(container = %c.name, exit, "started again");
                (r.id.clone(), true)
            }
            // Created before and gone from Docker (`docker rm`): say so; the controller
            // replaces the unit with a new one (new create index), as Rancher did.
            None if status.is_some_and(|st| st.external_id.is_some() && st.state != "removed") => {
                let id = status.and_then(|st| st.external_id.clone()).unwrap_or_default();
                report(store, &snap, c, &id, "removed", start_count, None, s).await?;
                mem.reported.insert(c.uuid.clone());
                tracing::info!(container = %c.name, "removed from Docker behind our back; reported");
                continue;
            }
            None if status.is_some_and(|st| st.state == "removed") => continue,
            None => {
                to_create.push(c);
                continue;
            }
        };
        let count = if started { start_count + 1 } else { start_count.max(1) };
        report(store, &snap, c, &id, "running", count, None, s).await?;
        mem.reported.insert(c.uuid.clone());
    }
    // New containers, in the background, several at a time (Docker takes a while per container,
    // mostly waiting). A container that joins another's network waits until that one runs.
    let mut handed = 0;
    for c in to_create {
        if let Some(target) = &c.network_from_container_uuid {
            if !ours.get(target).is_some_and(|r| r.running) {
                continue;
            }
        }
        let done = mem.done_tx.clone();
        if let Ok(mut set) = mem.creating.lock() {
            set.insert(c.uuid.clone());
        }
        let (docker, store, cache, uuid, s) = (docker.clone(), store.clone(), cache.clone(), c.uuid.clone(), s.clone());
        let slots = mem.slots.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            // Waiting for a slot can take a while: act on the state as it is now. A container
            // unassigned, moved or stopped meanwhile is left alone (the next pass sees to it).
            let snap = cache.snapshot();
            let still = snap
                .container(&uuid)
                .filter(|c| c.host_uuid.as_deref() == Some(s.host_uuid.as_str()) && c.desired_state == "running")
                .cloned();
            let Some(c) = still else {
                let _ = done.send((uuid, None));
                return;
            };
            let start_count = snap.status(&c.uuid).map(|st| st.start_count).unwrap_or(0);
            // Whether Docker created and started it, and whether the status write went through.
            let (started, written) = match create(&docker, &snap, &c, &s).await {
                Err(e) => (false, failed(&store, &snap, &c, "", start_count, &e, &s).await),
                Ok(id) => match docker.start_container(&id, None).await {
                    Err(e) => (false, failed(&store, &snap, &c, &id, start_count, &e, &s).await),
                    Ok(()) => {
                        tracing::info!(container = %c.name, ip = ?c.primary_ip, "created and started");
                        (true, report(&store, &snap, &c, &id, "running", start_count + 1, None, &s).await)
                    }
                },
            };
            // A status write that failed (NATS away) is made again by a later pass, which finds
            // the container in Docker (or tries it again after the backoff).
            if let Err(e) = written {
                tracing::warn!(container = %c.name, error = %e, "could not report the container's state");
            }
            let _ = done.send((uuid, Some(started)));
        });
        handed += 1;
    }
    if handed > 0 {
        // The moment the assignment reached this host (`scripts/bench/deploy-docker` splits at it).
        tracing::info!(containers = handed, "new containers to create");
    }
    Ok(())
}

/// How many containers the agent creates and starts at once.
const CREATE_PARALLEL: usize = 4;

#[allow(clippy::too_many_arguments)]
async fn report(
    store: &StateStore,
    snap: &event_bus::Snapshot,
    c: &Container,
    id: &str,
    state: &str,
    start_count: u64,
    exit_code: Option<i64>,
    s: &Settings,
) -> Result<(), AgentError> {
    let new = ContainerStatus {
        uuid: c.uuid.clone(),
        host_uuid: s.host_uuid.clone(),
        state: state.into(),
        external_id: Some(id.to_string()),
        start_count,
        exit_code,
        error: None,
        extra: Extra::new(),
    };
    if snap.status(&c.uuid).map(|st| st.as_ref()) != Some(&new) {
        store.put(&new).await?;
    }
    Ok(())
}

/// Docker refused to create or start a container (a port taken, an image missing…): the
/// status says why, so `deploy ps` and `deploy local up` show it; the next pass tries again.
async fn failed(
    store: &StateStore,
    snap: &event_bus::Snapshot,
    c: &Container,
    id: &str,
    start_count: u64,
    error: &(dyn std::fmt::Display + Sync),
    s: &Settings,
) -> Result<(), AgentError> {
    tracing::warn!(container = %c.name, %error, "cannot run the container");
    let new = ContainerStatus {
        uuid: c.uuid.clone(),
        host_uuid: s.host_uuid.clone(),
        state: "error".into(),
        external_id: Some(id.to_string()).filter(|i| !i.is_empty()),
        start_count,
        exit_code: None,
        error: Some(error.to_string()),
        extra: Extra::new(),
    };
    if snap.status(&c.uuid).map(|st| st.as_ref()) != Some(&new) {
        store.put(&new).await?;
    }
    Ok(())
}

fn launch_config<'a>(snap: &'a event_bus::Snapshot, c: &Container) -> Option<&'a LaunchConfig> {
    let svc = snap.service(c.service_uuid.as_deref()?)?;
    Some(match c.launch_config_name.as_deref().filter(|n| *n != svc.name) {
        Some(n) => svc.secondary_launch_configs.iter().find(|l| l.name.as_deref() == Some(n))?,
        None => &svc.launch_config,
    })
}

async fn create(
    docker: &Docker,
    snap: &event_bus::Snapshot,
    c: &Container,
    s: &Settings,
) -> Result<String, AgentError> {
    let lc = launch_config(snap, c);
    let mut labels: HashMap<String, String> = c.labels.clone().into_iter().collect();
    labels.insert(OWNER.into(), s.host_uuid.clone());
    labels.insert(UUID.into(), c.uuid.clone());
    let env: Vec<String> =
        lc.map(|l| l.environment.iter().map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
    let (network_mode, networking) = match (&c.network_from_container_uuid, lc.and_then(|l| l.network_mode.as_deref()))
    {
        (Some(target), _) => {
            let name = snap.container(target).map(|t| t.name.clone()).unwrap_or_default();
            (format!("container:{name}"), None)
        }
        (None, Some(m @ ("host" | "none"))) => (m.to_string(), None),
        _ => {
            let endpoint = EndpointSettings {
                ipam_config: Some(EndpointIpamConfig { ipv4_address: c.primary_ip.clone(), ..Default::default() }),
                ..Default::default()
            };
            (
                s.network.clone(),
                Some(NetworkingConfig { endpoints_config: Some(HashMap::from([(s.network.clone(), endpoint)])) }),
            )
        }
    };
    if let Some(svc) =
        snap.service(c.service_uuid.as_deref().unwrap_or_default()).filter(|s| s.kind == ServiceKind::LoadBalancer)
    {
        return create_lb(docker, snap, c, svc, labels, s).await;
    }
    let own_network = network_mode == s.network;
    let (exposed, bindings) = port_bindings(lc.map(|l| (&l.ports[..], &l.expose[..])).unwrap_or_default());
    let body = ContainerCreateBody {
        image: c.image.clone(),
        cmd: lc.map(|l| l.command.clone()).filter(|v| !v.is_empty()),
        entrypoint: lc.map(|l| l.entry_point.clone()).filter(|v| !v.is_empty()),
        env: Some(env),
        labels: Some(labels),
        hostname: if own_network { Some(c.hostname.clone().unwrap_or_else(|| c.name.clone())) } else { None },
        host_config: Some(HostConfig {
            network_mode: Some(network_mode),
            dns: if own_network && !s.dns.is_empty() { Some(s.dns.clone()) } else { None },
            dns_search: if own_network { Some(search_domains(snap, c)) } else { None },
            port_bindings: Some(bindings).filter(|b| !b.is_empty()),
            binds: lc
                .map(|l| l.volumes.iter().filter(|v| v.contains(':')).cloned().collect::<Vec<_>>())
                .filter(|v| !v.is_empty()),
            // Named volumes come from this driver (convoy-nfs, …); Docker's `local` otherwise.
            volume_driver: verbatim(lc, "volume_driver").and_then(|v| v.as_str().map(String::from)),
            privileged: lc.map(|l| l.privileged).filter(|p| *p),
            cap_add: lc.map(|l| l.cap_add.clone()).filter(|c| !c.is_empty()),
            extra_hosts: verbatim(lc, "extra_hosts").and_then(strings),
            ..Default::default()
        }),
        networking_config: networking,
        exposed_ports: Some(exposed).filter(|e| !e.is_empty()),
        user: verbatim(lc, "user").and_then(|v| v.as_str().map(String::from)),
        working_dir: verbatim(lc, "working_dir").and_then(|v| v.as_str().map(String::from)),
        ..Default::default()
    };
    // A container left from an earlier agent under the same name but not ours: an error the
    // operator must see, not something to delete.
    let created =
        docker.create_container(Some(CreateContainerOptionsBuilder::new().name(&c.name).build()), body).await?;
    Ok(created.id)
}

/// A load balancer's container: lb-haproxy and HAProxy from `--lb-image`, on the host's network
/// (it binds the rule ports on the host and reaches NATS like the agent does), told which service
/// it serves. Rancher ran `rancher/lb-service-haproxy` on the managed network instead.
async fn create_lb(
    docker: &Docker,
    snap: &event_bus::Snapshot,
    c: &Container,
    svc: &event_bus::model::Service,
    labels: HashMap<String, String>,
    s: &Settings,
) -> Result<String, AgentError> {
    let stack = snap.stack(&svc.stack_uuid).map(|st| st.name.clone()).unwrap_or_default();
    let env = vec![
        format!("CORRAL_NATS_URL={}", s.nats_url),
        format!("CORRAL_ENV={}", s.env),
        format!("CORRAL_LB_SERVICE={stack}/{}", svc.name),
        format!("CORRAL_HOST_UUID={}", s.host_uuid),
        // Its verdict on the configuration goes to lbstatus.<container uuid> (`deploy ps`).
        format!("CORRAL_CONTAINER_UUID={}", c.uuid),
        // Several load balancers may share the host's network: no fixed admin port.
        "CORRAL_ADMIN_ADDR=127.0.0.1:0".to_string(),
    ];
    let body = ContainerCreateBody {
        image: Some(s.lb_image.clone()),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(HostConfig { network_mode: Some("host".into()), ..Default::default() }),
        ..Default::default()
    };
    let created =
        docker.create_container(Some(CreateContainerOptionsBuilder::new().name(&c.name).build()), body).await?;
    Ok(created.id)
}

/// The compose keys kept verbatim (`compose::VERBATIM`) that the agent gives to Docker; the
/// others are stored and checked only, and `up` says so.
pub const APPLIED_VERBATIM: &[&str] = &["volume_driver", "user", "working_dir", "extra_hosts"];

/// The verbatim keys of a launch config that Docker will not get.
pub fn not_applied(lc: &LaunchConfig) -> Vec<&str> {
    lc.extra
        .keys()
        .map(String::as_str)
        .filter(|k| crate::compose::is_verbatim(k) && !APPLIED_VERBATIM.contains(k))
        .collect()
}

/// A compose key kept verbatim in the launch config (`compose::VERBATIM`).
fn verbatim<'a>(lc: Option<&'a LaunchConfig>, key: &str) -> Option<&'a serde_json::Value> {
    lc?.extra.get(key)
}

/// A list of strings, or a map written as `key:value` (compose's `extra_hosts` forms).
fn strings(v: &serde_json::Value) -> Option<Vec<String>> {
    match v {
        serde_json::Value::Array(a) => Some(a.iter().filter_map(|s| s.as_str().map(String::from)).collect()),
        serde_json::Value::Object(m) => {
            Some(m.iter().map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default())).collect())
        }
        _ => None,
    }
}

/// Docker's exposed ports (`80/tcp`) and port bindings from compose `ports` and `expose`.
fn port_bindings((ports, expose): (&[String], &[String])) -> (Vec<String>, bollard::models::PortMap) {
    let mut exposed = Vec::new();
    let mut bindings = bollard::models::PortMap::new();
    for spec in ports.iter().chain(expose).filter_map(|p| crate::ports::parse(p).ok()) {
        for (container, host) in spec.pairs() {
            let key = format!("{container}/{}", spec.proto);
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            // `ports` publish (on a fixed host port or one Docker picks); `expose` does not.
            if ports.iter().any(|p| crate::ports::parse(p).as_ref() == Ok(&spec)) {
                bindings.entry(key).or_insert_with(|| Some(vec![])).get_or_insert_with(Vec::new).push(
                    bollard::models::PortBinding {
                        host_ip: spec.host_ip.map(|ip| ip.to_string()),
                        host_port: Some(host.map(|h| h.to_string()).unwrap_or_default()),
                    },
                );
            }
        }
    }
    (exposed, bindings)
}

/// Search domains as Rancher gave them: the launch config's own, then the container's service,
/// its stack, and `rancher.internal` (rancher-dns also searches per caller on its side, so short
/// names work either way).
fn search_domains(snap: &event_bus::Snapshot, c: &Container) -> Vec<String> {
    let mut out = c.dns_search.clone();
    let svc = c.service_uuid.as_deref().and_then(|s| snap.service(s));
    let stack = svc.and_then(|s| snap.stack(&s.stack_uuid));
    if let (Some(svc), Some(stack)) = (svc, stack) {
        out.push(format!("{}.{}.rancher.internal", svc.name, stack.name));
        out.push(format!("{}.rancher.internal", stack.name));
    }
    out.push("rancher.internal".into());
    out.dedup();
    out
}

/// A request for one container's logs (`deploy logs`), on [`logs_subject`] of its host. The
/// agent answers `ok` (or the reason it will not) and streams the output to `stream_to`; the
/// last message has the header [`LOGS_END`] (its value: an error, if the stream broke). While
/// following, the reader publishes to `<stream_to>.alive` at least every [`LOGS_ALIVE`]; after
/// three missed beats the agent stops streaming.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogsRequest {
    /// The container's uuid (it must be assigned to this host).
    pub container: String,
    pub stream_to: String,
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    #[serde(default)]
    pub tail: Option<u64>,
}

pub const LOGS_END: &str = "Corral-Logs-End";
pub const LOGS_ALIVE: Duration = Duration::from_secs(5);

pub fn logs_subject(bus: &event_bus::Bus, host_uuid: &str) -> String {
    bus.request_subject(&format!("agent.logs.{host_uuid}"))
}

/// Answers log requests for the containers assigned to this host (and only those: a request
/// cannot read any other container of the Docker engine).
pub async fn serve_logs(bus: event_bus::Bus, docker: Docker, cache: StateCache, host_uuid: String) {
    use futures::StreamExt as _;
    let mut requests = loop {
        match bus.client.subscribe(logs_subject(&bus, &host_uuid)).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe for log requests; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(msg) = requests.next().await {
        let Some(reply) = msg.reply.clone() else { continue };
        let answer = match serde_json::from_slice::<LogsRequest>(&msg.payload) {
            Err(e) => Err(format!("not a log request: {e}")),
            Ok(req) => {
                let snap = cache.snapshot();
                match snap.container(&req.container).filter(|c| c.host_uuid.as_deref() == Some(&host_uuid)) {
                    None => Err(format!("{} is not a container of host {host_uuid}", req.container)),
                    Some(c) => {
                        let name = c.name.clone();
                        tokio::spawn(stream_logs(bus.clone(), docker.clone(), req, name));
                        Ok(())
                    }
                }
            }
        };
        let body = match answer {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        let _ = bus.client.publish(reply, body.into()).await;
    }
}

async fn stream_logs(bus: event_bus::Bus, docker: Docker, req: LogsRequest, name: String) {
    use futures::StreamExt as _;
    let mut alive = match bus.client.subscribe(format!("{}.alive", req.stream_to)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "log stream: cannot subscribe for the reader's beats");
            return;
        }
    };
    let options = bollard::query_parameters::LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .follow(req.follow)
        .tail(&req.tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into()))
        .build();
    let mut logs = docker.logs(&name, Some(options));
    let mut last_beat = std::time::Instant::now();
    let mut tick = tokio::time::interval(LOGS_ALIVE);
    let end = loop {
        tokio::select! {
            item = logs.next() => match item {
                Some(Ok(out)) => {
                    if bus.client.publish(req.stream_to.clone(), out.into_bytes()).await.is_err() {
                        break String::from("NATS went away");
                    }
                }
                Some(Err(e)) => break e.to_string(),
                None => break String::new(),
            },
            Some(_) = alive.next() => last_beat = std::time::Instant::now(),
            _ = tick.tick() => if req.follow && last_beat.elapsed() > 3 * LOGS_ALIVE {
                break String::new();
            },
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(LOGS_END, end.as_str());
    let _ = bus.client.publish_with_headers(req.stream_to.clone(), headers, bytes::Bytes::new()).await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs until the process ends: heartbeat and reconcile.
pub async fn run(docker: Docker, store: StateStore, cache: StateCache, s: Settings) -> Result<(), AgentError> {
    ensure_network(&docker, &s).await?;
    // The heartbeat has its own task: a slow Docker call must never make the host look dead.
    let beat = {
        let (store, s) = (store.clone(), s.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = heartbeat(&store, &s).await {
                    tracing::warn!(error = %e, "heartbeat failed; retrying");
                }
                tokio::time::sleep(s.heartbeat).await;
            }
        })
    };
    let _beat = AbortOnDrop(beat);
    let mut changes = cache.subscribe();
    let mut mem = Memory::default();
    loop {
        if cache.is_ready() {
            if let Err(e) = reconcile(&docker, &store, &cache, &s, &mut mem).await {
                tracing::warn!(error = %e, "reconcile failed; the next pass retries");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
    }
}
