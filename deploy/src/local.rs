//! `deploy local up|down`: the whole stack on this machine from one command. A private
//! nats-server with JetStream (or the one already listening), the controller, one agent on the
//! local Docker engine, and the infrastructure components built next to `deploy` (rancher-dns,
//! rancher-metadata, healthcheck), each a detached process with its log and pid file under the state
//! directory, so `down` (or a second `up`) finds them again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bollard::Docker;
use event_bus::runtime::args::CommonArgs;
use event_bus::{Bus, StateCache};

use crate::agent;
use crate::history::History;
use crate::plan::Scale;
use crate::stackfile::Desired;

/// Where the local stack lives (for `up` and `down`).
#[derive(clap::Args, Debug, Clone)]
pub struct Machine {
    /// Where the local stack keeps NATS's store, the logs and the pid files.
    #[arg(long, env = "CORRAL_LOCAL_DIR", default_value = ".corral/local")]
    pub state_dir: PathBuf,
    /// This machine's host id; its Docker network is `corral-<id>` and its containers carry
    /// `io.corral.agent.host=<id>`.
    #[arg(long, env = "CORRAL_LOCAL_HOST_UUID", default_value = "local")]
    pub host_uuid: String,
}

impl Machine {
    pub fn network(&self) -> String {
        format!("corral-{}", self.host_uuid)
    }
}

/// How `up` runs the services.
#[derive(clap::Args, Debug, Clone)]
pub struct Services {
    /// This host's subnet: the Docker network's, whose gateway (.1) rancher-dns and
    /// rancher-metadata listen on, and which containers use as their DNS server.
    #[arg(long, env = "CORRAL_LOCAL_SUBNET", default_value = "10.42.0.0/24")]
    pub subnet: String,
    /// Port of the private nats-server (loopback only). Without --nats-url, a NATS already
    /// listening there is used instead of starting one.
    #[arg(long, env = "CORRAL_LOCAL_NATS_PORT", default_value_t = 4222)]
    pub nats_port: u16,
    /// Port rancher-dns answers on, at the subnet's gateway.
    #[arg(long, env = "CORRAL_LOCAL_DNS_PORT", default_value_t = 53)]
    pub dns_port: u16,
    /// Port rancher-metadata answers on, at the subnet's gateway.
    #[arg(long, env = "CORRAL_LOCAL_METADATA_PORT", default_value_t = 80)]
    pub metadata_port: u16,
    /// Upstream DNS servers for names outside rancher.internal (default: the host's resolv.conf).
    #[arg(long, env = "CORRAL_LOCAL_UPSTREAM", value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// Admin ports (/healthz, /readyz, /metrics) on 127.0.0.1: this one and the next four
    /// (controller, agent, rancher-dns, rancher-metadata, healthcheck); 0: any free ports.
    #[arg(long, env = "CORRAL_LOCAL_ADMIN_BASE_PORT", default_value_t = 9230)]
    pub admin_base_port: u16,
    /// The image load balancer services run (built by scripts/lb-image).
    #[arg(long, env = "CORRAL_DEPLOY_LB_IMAGE", default_value = "corral/lb-haproxy:dev")]
    pub lb_image: String,
    /// How long to wait for the stack's containers to run before giving up.
    #[arg(long, env = "CORRAL_LOCAL_WAIT", default_value = "3m", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// Where a local stack keeps its files: `nats/` (the JetStream store, kept by `down`),
/// `logs/<name>.log`, `run/<name>.pid`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> std::io::Result<Layout> {
        for sub in ["nats", "logs", "run"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Layout { dir: dir.canonicalize()? })
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(format!("{name}.pid"))
    }
    /// The pid of `name` if its pid file names a live process running the program it recorded
    /// (a pid the system gave to another program since is not ours to stop).
    pub fn running(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file(name)).ok()?;
        let mut lines = text.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let program = lines.next().unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        // A process just started may still show an empty or the parent's command line for a
        // moment; it is someone else's only when neither its argv[0] nor its binary match.
        let ours = program.is_empty()
            || argv0.is_empty()
            || argv0 == program.as_bytes()
            || exe.is_some_and(|e| Path::new(program).canonicalize().is_ok_and(|p| p == e));
        (alive(pid) && ours).then_some(pid)
    }
    /// Names with a pid file, in start order (as recorded in `run/order`).
    pub fn started(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("run/order"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
    fn record(&self, name: &str, pid: u32, program: &Path) -> std::io::Result<()> {
        std::fs::write(self.pid_file(name), format!("{pid}\n{}\n", program.display()))?;
        let mut order = self.started();
        if !order.iter().any(|n| n == name) {
            order.push(name.to_string());
            std::fs::write(self.dir.join("run/order"), order.join("\n") + "\n")?;
        }
        Ok(())
    }
}

pub fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && !zombie(pid)
}

/// A child of ours that exited but was not reaped still answers signal 0.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Starts `program args` detached (its own process group, stdin closed, output appended to
/// its log) and records its pid. Returns the pid, or the one already running.
pub fn spawn(layout: &Layout, name: &str, program: &Path, args: &[String]) -> std::io::Result<(u32, bool)> {
    if let Some(pid) = layout.running(name) {
        return Ok((pid, false));
    }
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(layout.log(name))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("starting {}: {e}", program.display())))?;
    layout.record(name, child.id(), program)?;
    Ok((child.id(), true))
}

/// Stops `name` (SIGTERM, then SIGKILL after `grace`); whether it was running.
pub fn stop(layout: &Layout, name: &str, grace: Duration) -> bool {
    let Some(pid) = layout.running(name) else {
        let _ = std::fs::remove_file(layout.pid_file(name));
        return false;
    };
    // SAFETY: plain signals to a pid we started and recorded.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    while alive(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(layout.pid_file(name));
    true
}

/// The nats-server configuration of a local stack: loopback only, JetStream in `nats/`.
pub fn nats_config(layout: &Layout, port: u16) -> std::io::Result<PathBuf> {
    let path = layout.dir.join("nats/nats.conf");
    std::fs::write(
        &path,
        format!(
            "# written by deploy local up\nserver_name: corral-local\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            layout.dir.join("nats/jetstream").display()
        ),
    )?;
    Ok(path)
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_listening(addr: std::net::SocketAddr, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// This binary's path; when it was rebuilt while running (Linux then reports "… (deleted)"),
/// the new one at the same path.
fn own_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if exe.is_file() {
        return Ok(exe);
    }
    let text = exe.to_string_lossy();
    Ok(PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text)))
}

/// The binary `name` built next to `deploy` (cargo puts a workspace's binaries together), or on
/// `$PATH`.
pub fn sibling(name: &str) -> Option<PathBuf> {
    let beside = own_exe().ok()?.parent()?.join(name);
    if beside.is_file() {
        return Some(beside);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Whether the user chose a NATS server (flag or environment), rather than the private one.
fn nats_chosen() -> bool {
    std::env::var_os("CORRAL_NATS_URL").is_some()
        || std::env::args().any(|a| a == "--nats-url" || a.starts_with("--nats-url="))
}

/// The private nats-server: the one this directory started (still running), else whatever
/// listens on the port, else a new one. Returns its URL.
async fn start_nats(layout: &Layout, port: u16) -> anyhow::Result<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("nats://{addr}");
    if let Some(pid) = layout.running("nats") {
        println!("nats-server        running (pid {pid})  {url}");
        return Ok(url);
    }
    if tokio::net::TcpStream::connect(addr).await.is_ok() {
        println!("nats-server        using the server already listening at {url}");
        return Ok(url);
    }
    let bin = event_bus::runtime::natsd::find(None, &[Path::new(".")]).map_err(anyhow::Error::msg)?;
    let config = nats_config(layout, port)?;
    let (pid, _) = spawn(layout, "nats", &bin, &["-c".into(), config.display().to_string()])?;
    if !wait_listening(addr, Duration::from_secs(15)).await {
        anyhow::bail!("nats-server did not start listening at {url}; see {}", layout.log("nats").display());
    }
    println!("nats-server        started (pid {pid})  {url}  store {}", layout.dir.join("nats").display());
    Ok(url)
}

/// The network exists with this subnet, or not at all (then the agent settings create it).
async fn check_network(docker: &Docker, network: &str, subnet: &str) -> anyhow::Result<()> {
    let Ok(net) = docker.inspect_network(network, None).await else { return Ok(()) };
    let subnets: Vec<String> =
        net.ipam.and_then(|i| i.config).unwrap_or_default().into_iter().filter_map(|c| c.subnet).collect();
    if subnets.iter().any(|s| s == subnet) {
        return Ok(());
    }
    anyhow::bail!(
        "the Docker network {network} exists with subnet {}, not {subnet}: give --subnet {} or remove it (`deploy local down`, then `docker network rm {network}`)",
        subnets.join(","),
        subnets.first().map(String::as_str).unwrap_or("?")
    )
}

/// The last lines of a log, for a component that died at once.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `deploy local up`.
pub async fn up(
    common: &CommonArgs,
    m: &Machine,
    sv: &Services,
    desired: Option<&Desired>,
) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&m.state_dir).with_context(|| format!("creating {}", m.state_dir.display()))?;
    let gw = agent::gateway(&sv.subnet)
        .ok_or_else(|| anyhow!("--subnet {:?}: expected an IPv4 subnet such as 10.42.0.0/24", sv.subnet))?;
    let docker = Docker::connect_with_local_defaults().context("Docker")?;
    docker
        .ping()
        .await
        .map_err(|e| anyhow!("no Docker engine answers ({e}); start one (scripts/setup starts Debian's dockerd)"))?;
    check_network(&docker, &m.network(), &sv.subnet).await?;

    let url = if nats_chosen() { common.nats.nats_url.clone() } else { start_nats(&layout, sv.nats_port).await? };
    std::fs::write(layout.dir.join("run/nats-url"), &url)?;
    let mut common = common.clone();
    common.nats.nats_url = url.clone();
    let bus = Bus::connect(&common.nats.options("deploy"), &common.env, common.nats.nats_connect_timeout).await?;
    let store = event_bus::provision(&bus, &event_bus::Provision::default()).await?;
    let history = History::open(&bus).await?;

    let (host_name, network) = (host_name(), m.network());
    agent::create_network(&docker, &m.host_uuid, &network, &sv.subnet).await?;

    let admin = |i: u16| match sv.admin_base_port {
        0 => "127.0.0.1:0".to_string(),
        base => format!("127.0.0.1:{}", base.saturating_add(i)),
    };
    let common_args = |i: u16| -> Vec<String> {
        ["--nats-url", &url, "--env", &common.env, "--admin-addr", &admin(i)].map(String::from).to_vec()
    };
    let exe = own_exe()?;
    let mut dns_args = vec![
        "--listen".to_string(),
        format!("{gw}:{}", sv.dns_port),
        "--rancher-metadata-answer".into(),
        gw.to_string(),
    ];
    if !sv.upstream.is_empty() {
        dns_args.extend(["--upstream".to_string(), sv.upstream.join(",")]);
    }
    let components: Vec<(&str, Option<PathBuf>, Vec<String>)> = vec![
        ("controller", Some(exe.clone()), vec!["controller".into()]),
        (
            "agent",
            Some(exe),
            [
                "agent",
                "--host-uuid",
                &m.host_uuid,
                "--host-name",
                &host_name,
                "--subnet",
                &sv.subnet,
                "--network",
                &network,
                "--container-dns",
                &gw.to_string(),
                "--lb-image",
                &sv.lb_image,
            ]
            .map(String::from)
            .to_vec(),
        ),
        ("rancher-dns", sibling("rancher-dns"), dns_args),
        (
            "rancher-metadata",
            sibling("rancher-metadata"),
            ["--listen".to_string(), format!("{gw}:{}", sv.metadata_port), "--host-uuid".into(), m.host_uuid.clone()]
                .to_vec(),
        ),
        // Without a checker, health-checked containers stay `initializing` (and out of DNS).
        (
            "healthcheck",
            sibling("healthcheck"),
            [
                "--host-uuid".to_string(),
                m.host_uuid.clone(),
                "--run-dir".into(),
                layout.dir.join("run/healthcheck").display().to_string(),
            ]
            .to_vec(),
        ),
    ];
    let mut started = Vec::new();
    for (i, (name, bin, mut args)) in components.into_iter().enumerate() {
        let Some(bin) = bin else {
            println!("{name:<18} not found next to deploy or on PATH (cargo build -p {name}); skipped");
            continue;
        };
        args.extend(common_args(i as u16));
        let (pid, new) = spawn(&layout, name, &bin, &args)?;
        if new {
            started.push((name, pid));
        } else {
            println!("{name:<18} running (pid {pid})");
        }
    }
    // A component that cannot start (a port taken, a bad flag) dies at once: say so now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, pid) in &started {
        let log = layout.log(name);
        if !alive(*pid) {
            anyhow::bail!("{name} exited at once; the end of {}:\n{}", log.display(), tail(&log, 5));
        }
        println!("{name:<18} started (pid {pid})  log {}", log.display());
    }

    let Some(d) = desired else {
        println!("\nNothing to deploy; try `deploy local up <template or directory>`. Stop with `deploy local down`.");
        return Ok(ExitCode::SUCCESS);
    };
    let stack = d.stack.name.clone();
    let has_lb = d.services.iter().any(|s| s.kind == event_bus::model::ServiceKind::LoadBalancer);
    if has_lb && docker.inspect_image(&sv.lb_image).await.is_err() {
        anyhow::bail!(
            "the stack has a load balancer, and its image {} is not built: run scripts/lb-image (it needs lb-haproxy built)",
            sv.lb_image
        );
    }
    // As `deploy up`: a changed launch config is said, a service being upgraded is not changed.
    let current = crate::plan::current(&store, &stack).await?;
    let mut d = d.clone();
    let (_, notes) = crate::upgrade::prepare(&current, &mut d.services, None).map_err(anyhow::Error::msg)?;
    notes.iter().for_each(|n| println!("{n}"));
    let applied = crate::apply::run(&store, &history, &stack, Some(&d), Scale::Exact, "local up", false).await?;
    print!("\n{}", applied.plan);
    if let Some(rev) = applied.revision {
        println!("applied as revision {rev}");
    }

    let metrics = event_bus::runtime::metrics::Metrics::new();
    let cache = StateCache::start(&bus, &metrics).await?;
    println!("\nwaiting for stack {stack} (up to {}):", humantime::format_duration(sv.wait));
    let start = Instant::now();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    // A refused load balancer configuration is the user's to fix: after this long (time for
    // lb-haproxy's rechecks of a port someone else held) waiting on is pointless.
    const REFUSED_FOR: Duration = Duration::from_secs(15);
    let mut refused_since: Option<Instant> = None;
    loop {
        let rows = crate::ps::rows(&cache.snapshot(), Some(&stack));
        let refused: Vec<String> = rows
            .iter()
            .flat_map(|r| {
                r.lb_refused
                    .iter()
                    .map(move |why| format!("{}/{}: load balancer configuration refused {why}", r.stack, r.service))
            })
            .collect();
        for line in &refused {
            if seen.insert(line.clone(), String::new()).is_none() {
                println!("  {line}");
            }
        }
        for r in &rows {
            if let Some(why) = &r.unplaceable {
                let key = format!("{}/{}", r.stack, r.service);
                if seen.get(&key) != Some(why) {
                    println!("  {key}: cannot be placed yet: {why}");
                    seen.insert(key, why.clone());
                }
            }
            for c in &r.containers {
                let mut line = format!("{:<32} {:<15} {}", c.name, c.ip, c.state);
                if !c.health.is_empty() {
                    line.push_str(&format!(", {}", c.health));
                }
                if let Some(e) = &c.error {
                    line.push_str(&format!(": {e}"));
                }
                if seen.get(&c.name) != Some(&line) {
                    println!("  {line}");
                    seen.insert(c.name.clone(), line);
                }
            }
        }
        if !rows.is_empty() && crate::ps::settled(&rows) {
            break;
        }
        match (refused.is_empty(), refused_since) {
            (true, _) => refused_since = None,
            (false, None) => refused_since = Some(Instant::now()),
            (false, Some(at)) if at.elapsed() > REFUSED_FOR => {
                eprintln!(
                    "stack {stack} is not running: its load balancer configuration is refused ({}); fix lb_config and run `deploy local up` again (`deploy ps {stack}` shows it)",
                    refused.join("; ")
                );
                return Ok(ExitCode::FAILURE);
            }
            (false, Some(_)) => {}
        }
        if start.elapsed() > sv.wait {
            eprintln!(
                "stack {stack} is not running after {}: see `deploy ps {stack}` and the logs in {}",
                humantime::format_duration(sv.wait),
                layout.dir.join("logs").display()
            );
            return Ok(ExitCode::FAILURE);
        }
        for (name, pid) in &started {
            if !alive(*pid) {
                anyhow::bail!("{name} stopped; see {}", layout.log(name).display());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = crate::ps::rows(&cache.snapshot(), Some(&stack));
    println!("\nstack {stack} is running ({:.1} s). Try:", start.elapsed().as_secs_f64());
    let nats_env = if url == "nats://127.0.0.1:4222" { String::new() } else { format!("CORRAL_NATS_URL={url} ") };
    let me = own_exe()
        .ok()
        .map(|p| {
            let cwd = std::env::current_dir().unwrap_or_default();
            p.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(p).display().to_string()
        })
        .unwrap_or_else(|| "deploy".into());
    println!("  {nats_env}{me} ps {stack}");
    println!("  {nats_env}{me} logs -f {stack}");
    let snap = cache.snapshot();
    for c in snap.containers().filter(|c| rows.iter().any(|r| r.containers.iter().any(|x| x.name == c.name))) {
        for spec in c.ports.iter().filter_map(|p| crate::ports::parse(p).ok()).filter(|p| p.proto == "tcp") {
            for (_, host) in spec.pairs() {
                if let Some(h) = host {
                    let ip = spec.host_ip.map(|i| i.to_string()).unwrap_or_else(|| "127.0.0.1".into());
                    println!("  curl http://{ip}:{h}/            # {} (published)", c.name);
                }
            }
        }
    }
    let first = rows.iter().find(|r| !r.containers.is_empty() && r.kind != "externalService");
    if let Some(r) = first {
        let port = if sv.dns_port == 53 { String::new() } else { format!(" -p {}", sv.dns_port) };
        if layout.running("rancher-dns").is_some() {
            println!("  dig @{gw}{port} {}.{}.rancher.internal +short", r.service, r.stack);
        }
        if let Some(c) = r.containers.first() {
            if layout.running("rancher-metadata").is_some() && sv.metadata_port == 80 {
                println!("  docker exec {} wget -qO- http://rancher-metadata/latest/self/container/name", c.name);
            }
        }
    }
    let mut down = String::new();
    if m.state_dir != Path::new(".corral/local") {
        down.push_str(&format!(" --state-dir {}", m.state_dir.display()));
    }
    if m.host_uuid != "local" {
        down.push_str(&format!(" --host-uuid {}", m.host_uuid));
    }
    println!("  {me} local down{down}");
    Ok(ExitCode::SUCCESS)
}

/// `deploy local down`: the agent first (so nothing starts the containers again), the local
/// agent's containers (stopped, not removed, their status recorded as stopped while NATS still
/// runs), then the other processes `up` started, newest first. NATS's store stays.
pub async fn down(common: &CommonArgs, m: &Machine, stop_timeout: Duration) -> anyhow::Result<ExitCode> {
    let layout = Layout::new(&m.state_dir).with_context(|| format!("opening {}", m.state_dir.display()))?;
    if stop(&layout, "agent", Duration::from_secs(10)) {
        println!("stopped agent");
    }
    let stopped = stop_containers(&m.host_uuid, stop_timeout).await;
    if let Err(e) = record_stopped(common, &layout, &stopped).await {
        println!("could not record the containers as stopped ({e}); the next `up` corrects it");
    }
    for name in layout.started().iter().rev().filter(|n| *n != "agent") {
        if stop(&layout, name, Duration::from_secs(10)) {
            println!("stopped {name}");
        }
    }
    println!("state kept in {}; `deploy local up` starts it all again", layout.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Stops the local agent's running containers; the uuids of those stopped.
async fn stop_containers(host_uuid: &str, timeout: Duration) -> Vec<String> {
    let Ok(docker) = Docker::connect_with_local_defaults() else { return vec![] };
    let filters =
        std::collections::HashMap::from([("label".to_string(), vec![format!("{}={host_uuid}", agent::OWNER)])]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::new().filters(&filters).build();
    let listed = match docker.list_containers(Some(options)).await {
        Ok(l) => l,
        Err(e) => {
            println!("no Docker engine answers ({e}); containers may still run");
            return vec![];
        }
    };
    let stops =
        listed.into_iter().filter_map(|c| Some((c.id?, c.labels?.get(agent::UUID)?.clone()))).map(|(id, uuid)| {
            let docker = docker.clone();
            async move {
                let options = bollard::query_parameters::StopContainerOptionsBuilder::new()
                    .t(timeout.as_secs().max(1) as i32)
                    .build();
                docker.stop_container(&id, Some(options)).await.map(|_| uuid)
            }
        });
    let results = futures::future::join_all(stops).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let stopped: Vec<String> = results.into_iter().filter_map(Result::ok).collect();
    println!(
        "stopped {} container(s){}",
        stopped.len(),
        if failed > 0 { format!(", {failed} failed") } else { String::new() }
    );
    stopped
}

/// Marks the stopped containers' status `stopped`, so the next `up` waits for them to run again.
async fn record_stopped(common: &CommonArgs, layout: &Layout, uuids: &[String]) -> anyhow::Result<()> {
    let Ok(url) = std::fs::read_to_string(layout.dir.join("run/nats-url")) else { return Ok(()) };
    let mut common = common.clone();
    common.nats.nats_url = url;
    common.nats.nats_connect_timeout = Duration::from_secs(3);
    let bus = Bus::connect(&common.nats.options("deploy"), &common.env, common.nats.nats_connect_timeout).await?;
    let store = event_bus::StateStore::open(&bus).await?;
    for uuid in uuids {
        if let Some(mut st) = store.get::<event_bus::model::ContainerStatus>(uuid).await?.map(|v| v.value) {
            st.state = "stopped".into();
            store.put(&st).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways() {
        use crate::agent::gateway;
        assert_eq!(gateway("10.42.0.0/24"), Some("10.42.0.1".parse().unwrap()));
        assert_eq!(gateway("10.42.7.9/24"), Some("10.42.7.1".parse().unwrap()));
        assert_eq!(gateway("10.42.0.0/33"), None);
        assert_eq!(gateway("nope"), None);
    }

    #[test]
    fn pid_files_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path()).unwrap();
        let (pid, started) = spawn(&layout, "sleeper", Path::new("/bin/sleep"), &["30".into()]).unwrap();
        assert!(started && layout.running("sleeper") == Some(pid));
        assert_eq!(spawn(&layout, "sleeper", Path::new("/bin/sleep"), &["30".into()]).unwrap(), (pid, false));
        assert_eq!(layout.started(), ["sleeper"]);
        assert!(stop(&layout, "sleeper", Duration::from_secs(5)));
        assert_eq!(layout.running("sleeper"), None);
        assert!(!stop(&layout, "sleeper", Duration::from_secs(1)));
    }
}
