use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::runtime::natsd::INSTALL_HINT;

/// Finds `nats-server`: `$NATS_SERVER_BIN`, then `<workspace>/.corral/tools/bin`, then `$PATH`.
pub fn find_nats_server() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    crate::runtime::natsd::find(None, &[workspace, Path::new(".")])
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    // Free for TCP and UDP (DNS servers use both), and never handed out twice by this process:
    // tests running in parallel must not end up sharing a port (a UDP server with
    // SO_REUSEPORT would join another's silently).
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding 127.0.0.1:0");
        let mut given = GIVEN.lock().expect("free_port lock");
        if given.contains(&port) || std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        return port;
    }
}

/// One real nats-server with JetStream on 127.0.0.1, its store in a temp dir. Killed on drop.
pub struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    port: u16,
    name: String,
    config: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl NatsServer {
    /// Starts a standalone server. Panics with an install hint if there is no nats-server.
    pub fn start() -> NatsServer {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start() -> Result<NatsServer, String> {
        Self::try_start_with("")
    }

    /// Starts a standalone server with extra configuration appended, e.g. an
    /// `authorization { … }` block.
    pub fn start_with(extra_config: &str) -> NatsServer {
        Self::try_start_with(extra_config).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start_with(extra_config: &str) -> Result<NatsServer, String> {
        let tmp = tempfile::Builder::new().prefix("corral-nats-").tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().to_path_buf();
        let extra = (!extra_config.is_empty()).then(|| extra_config.to_string());
        let mut s = Self::prepare(find_nats_server()?, dir, Some(tmp), "corral-test".into(), free_port(), extra)?;
        s.start_process()?;
        Ok(s)
    }

    fn prepare(
        bin: PathBuf,
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        name: String,
        port: u16,
        cluster: Option<String>,
    ) -> Result<NatsServer, String> {
        let store = dir.join("jetstream");
        let conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n{}",
            store.display(),
            cluster.unwrap_or_default()
        );
        let config = dir.join("nats.conf");
        std::fs::write(&config, conf).map_err(|e| format!("{}: {e}", config.display()))?;
        Ok(NatsServer { bin, dir, _tmp: tmp, port, name, config, child: None, starts: 0 })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("nats-{}.log", self.starts))
    }

    fn start_process(&mut self) -> Result<(), String> {
        self.spawn()?;
        self.wait_log("Server is ready", Duration::from_secs(20))
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}. {INSTALL_HINT}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("nats-server {} exited ({status}) before it was ready:\n{text}", self.name));
            }
            if Instant::now() > deadline {
                return Err(format!("nats-server {} not ready after {timeout:?}:\n{text}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the server keeps its files (config, logs, JetStream store).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (SIGKILL: a crash, not a clean stop). The store stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and deletes its JetStream store: the next `restart` comes up empty, as a
    /// server replaced by a fresh one would.
    pub fn kill_and_wipe(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("jetstream"));
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.start_process().unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of real servers on loopback (routes between all of them).
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    _tmp: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers (3 or 5) and waits until each has joined the cluster.
    pub fn start(n: usize) -> NatsCluster {
        Self::try_start(n).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(n: usize) -> Result<NatsCluster, String> {
        let bin = find_nats_server()?;
        let tmp = tempfile::Builder::new().prefix("corral-cluster-").tempdir().map_err(|e| e.to_string())?;
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let cluster = format!(
                "cluster {{\n  name: corral-test\n  listen: 127.0.0.1:{route_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            );
            let dir = tmp.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            nodes.push(NatsServer::prepare(bin.clone(), dir, None, format!("n{}", i + 1), free_port(), Some(cluster))?);
        }
        // Start all before waiting: a node is "ready" only once it sees its peers.
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &mut nodes {
            node.wait_log("Server is ready", Duration::from_secs(30))?;
        }
        Ok(NatsCluster { nodes, _tmp: tmp })
    }

    /// All client URLs, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}
