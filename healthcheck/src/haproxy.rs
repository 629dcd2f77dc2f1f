//! The HAProxy process: master-worker (`-W`), with the master's CLI socket for operators.
//!
//! A new configuration is written beside the live one, checked with `haproxy -c`, and only then
//! moved over it; the workers' server states are dumped to the server-state file; then the
//! master is sent SIGUSR2 and re-executes itself with the new file, handing over to a new
//! worker (hitless; the old worker finishes within `hard-stop-after`). A configuration HAProxy
//! refuses never replaces the running one: the live file and the running worker stay as they
//! were, and the error is returned.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::render::Paths;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HaproxyError {
    #[error("haproxy refused the configuration {file}: {output}")]
    Invalid { file: PathBuf, output: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("haproxy did not {what} within {waited:?}")]
    Timeout { what: &'static str, waited: Duration },
    #[error("haproxy exited: {0}")]
    Exited(std::process::ExitStatus),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HaproxyError {
    let path = path.to_path_buf();
    move |source| HaproxyError::Io { what, path, source }
}

/// A running HAProxy master; stopped (with its workers) when dropped.
pub struct Haproxy {
    bin: PathBuf,
    dir: PathBuf,
    paths: Paths,
    child: tokio::process::Child,
    current: String,
    reloads: u64,
}

impl Haproxy {
    pub fn config_file(dir: &Path) -> PathBuf {
        dir.join("haproxy.cfg")
    }

    pub fn master_socket(dir: &Path) -> PathBuf {
        dir.join("master.sock")
    }

    /// Checks `text` with `haproxy -c` (written to `<dir>/haproxy.cfg.new`).
    pub async fn validate(bin: &Path, dir: &Path, text: &str) -> Result<PathBuf, HaproxyError> {
        let candidate = dir.join("haproxy.cfg.new");
        tokio::fs::write(&candidate, text).await.map_err(io("writing", &candidate))?;
        let out = tokio::process::Command::new(bin)
            .args(["-c", "-q", "-f"])
            .arg(&candidate)
            .output()
            .await
            .map_err(io("running", bin))?;
        if out.status.success() {
            Ok(candidate)
        } else {
            let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if output.is_empty() {
                output = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            Err(HaproxyError::Invalid { file: candidate, output })
        }
    }

    /// Validates `text`, starts the master on it and waits until the worker answers on the
    /// admin socket.
    pub async fn start(bin: &Path, dir: &Path, paths: Paths, text: &str) -> Result<Haproxy, HaproxyError> {
        let candidate = Self::validate(bin, dir, text).await?;
        let live = Self::config_file(dir);
        tokio::fs::rename(&candidate, &live).await.map_err(io("installing", &live))?;
        if !paths.state_file.exists() {
            tokio::fs::write(&paths.state_file, "1\n").await.map_err(io("writing", &paths.state_file))?;
        }
        let _ = tokio::fs::remove_file(&paths.admin_socket).await;
        let master = Self::master_socket(dir);
        let child = tokio::process::Command::new(bin)
            // -q: HAProxy's notices (each reload, each server change) are not this log's business;
            // alerts still reach stderr.
            .args(["-W", "-q", "-S"])
            .arg(format!("unix@{},mode,600", master.display()))
            .arg("-f")
            .arg(&live)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting", bin))?;
        let mut h = Haproxy { bin: bin.into(), dir: dir.into(), paths, child, current: text.into(), reloads: 0 };
        h.wait_for_worker(None, Duration::from_secs(10)).await?;
        Ok(h)
    }

    /// The configuration the running worker was started with.
    pub fn current(&self) -> &str {
        &self.current
    }

    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Applies `text` with a hitless reload; `Ok(false)` when it is what runs already.
    pub async fn apply(&mut self, text: &str) -> Result<bool, HaproxyError> {
        if text == self.current {
            return Ok(false);
        }
        if let Some(status) = self.child.try_wait().map_err(io("waiting for", &self.bin))? {
            return Err(HaproxyError::Exited(status));
        }
        let candidate = Self::validate(&self.bin, &self.dir, text).await?;
        // Keep every server's health across the reload.
        match self.ask("show servers state").await {
            Ok(state) if state.starts_with('1') => {
                tokio::fs::write(&self.paths.state_file, state).await.map_err(io("writing", &self.paths.state_file))?
            }
            Ok(other) => {
                tracing::warn!(reply = %other.trim(), "show servers state: unexpected reply; reloading without it")
            }
            Err(e) => tracing::warn!(error = %e, "show servers state failed; reloading without it"),
        }
        let old_pid = self.worker_pid().await;
        let live = Self::config_file(&self.dir);
        tokio::fs::rename(&candidate, &live).await.map_err(io("installing", &live))?;
        let pid = self.child.id().ok_or(HaproxyError::Timeout { what: "run", waited: Duration::ZERO })?;
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGUSR2);
        }
        self.wait_for_worker(old_pid, Duration::from_secs(10)).await?;
        self.current = text.into();
        self.reloads += 1;
        Ok(true)
    }

    /// The worker's pid, from `show info` on the admin socket.
    async fn worker_pid(&self) -> Option<u32> {
        let info = self.ask("show info").await.ok()?;
        info.lines().find_map(|l| l.strip_prefix("Pid: ")).and_then(|p| p.trim().parse().ok())
    }

    /// Waits until a worker other than `old` answers on the admin socket.
    async fn wait_for_worker(&mut self, old: Option<u32>, limit: Duration) -> Result<(), HaproxyError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("waiting for", &self.bin))? {
                return Err(HaproxyError::Exited(status));
            }
            if let Some(pid) = self.worker_pid().await {
                if Some(pid) != old {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                return Err(HaproxyError::Timeout { what: "answer on the admin socket", waited: limit });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends one command to the admin socket and returns the whole answer.
    pub async fn ask(&self, command: &str) -> Result<String, HaproxyError> {
        ask(&self.paths.admin_socket, command).await
    }
}

/// One command on a HAProxy CLI socket (the connection closes after the answer).
pub async fn ask(socket: &Path, command: &str) -> Result<String, HaproxyError> {
    let talk = async {
        let mut s = tokio::net::UnixStream::connect(socket).await?;
        s.write_all(format!("{command}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(5), talk).await {
        Ok(r) => r.map_err(io("talking to", socket)),
        Err(_) => Err(HaproxyError::Timeout { what: "answer", waited: Duration::from_secs(5) }),
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SIGTERM first, so the master stops its workers; kill_on_drop is the fallback.
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}
