//! The HAProxy process in master-worker mode (`-W -S <master socket>`), and its master CLI:
//! `show proc`, hitless `reload`, and runtime commands routed to the current worker with
//! `@!<pid>` (so a command never lands on an old worker that is finishing its connections).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::HaproxyError;

/// `haproxy -c`: `Ok` or what HAProxy said (its alerts, or everything if it printed none).
pub async fn check(bin: &Path, config: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {} -c: {e}", bin.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let alerts: Vec<String> = text.lines().filter(|l| l.contains("ALERT")).map(without_pid).collect();
    Err(if alerts.is_empty() { text.trim().to_string() } else { alerts.join("\n") })
}

/// `[ALERT]    (27585) : config : …` → `[ALERT] config : …`: the checking process's pid changes
/// on every run, and a refusal that says the same thing must read the same (it is deduplicated,
/// and written to the state).
fn without_pid(line: &str) -> String {
    let Some(rest) = line.strip_prefix("[ALERT]") else { return line.to_string() };
    let rest = rest.trim_start();
    let rest = match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((pid, after)) if pid.bytes().all(|b| b.is_ascii_digit()) => {
            after.trim_start().trim_start_matches(':').trim_start()
        }
        _ => rest,
    };
    format!("[ALERT] {rest}")
}

/// What `show proc` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procs {
    pub master: u32,
    /// Reloads the master has done (failed ones included).
    pub reloads: u64,
    pub failed: u64,
    /// Workers of the current generation.
    pub workers: Vec<u32>,
    /// Workers of earlier generations still finishing their connections.
    pub old_workers: Vec<u32>,
}

impl Procs {
    pub fn parse(text: &str) -> Option<Procs> {
        let mut p = Procs::default();
        let mut section = "";
        let mut seen_master = false;
        for line in text.lines() {
            let l = line.trim();
            if let Some(s) = l.strip_prefix('#') {
                section = if s.trim() == "workers" {
                    "workers"
                } else if s.trim() == "old workers" {
                    "old"
                } else {
                    "other"
                };
                continue;
            }
            let t: Vec<&str> = l.split_whitespace().collect();
            match t.get(1).copied() {
                Some("master") => {
                    p.master = t[0].parse().ok()?;
                    p.reloads = t.get(2)?.parse().ok()?;
                    p.failed = t.get(4).and_then(|f| f.trim_end_matches(']').parse().ok()).unwrap_or(0);
                    seen_master = true;
                }
                Some("worker") => {
                    let pid = t[0].parse().ok()?;
                    match section {
                        "old" => p.old_workers.push(pid),
                        _ => p.workers.push(pid),
                    }
                }
                _ => {}
            }
        }
        seen_master.then_some(p)
    }
}

/// A running HAProxy master. Dropping it without [`Haproxy::stop`] kills it.
pub struct Haproxy {
    bin: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    worker: u32,
}

impl Haproxy {
    /// Starts `bin -W -S <socket> -f <config>` and waits until a worker runs. HAProxy gets its
    /// own process group (a Ctrl-C meant for us must not hard-stop it before we do) and dies
    /// with this process if it is killed (`PR_SET_PDEATHSIG`). That signal fires when the
    /// *thread* that spawned it ends, so call this from one that lives as long as the process
    /// (the binary's controller runs on `main`'s `block_on`), never from `spawn_blocking`.
    pub async fn start(bin: &Path, config: &Path, socket: &Path) -> Result<Haproxy, HaproxyError> {
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new(bin);
        cmd.arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", abs(socket)))
            .arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| HaproxyError::Spawn { bin: bin.display().to_string(), source })?;
        let mut h = Haproxy { bin: bin.to_path_buf(), socket: socket.to_path_buf(), child: Some(child), worker: 0 };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = h.exited() {
                return Err(HaproxyError::Exited { status });
            }
            if let Ok(p) = h.procs().await {
                if let Some(w) = p.workers.first() {
                    h.worker = *w;
                    return Ok(h);
                }
            }
            if Instant::now() > deadline {
                return Err(HaproxyError::Cli { socket: abs(socket), reason: "no worker after 20 s".into() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The master's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The current worker's pid.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// `Some(status)` once the master has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// One master CLI command. The master refuses connections while it re-executes for a
    /// reload, so connecting is retried for a few seconds.
    pub async fn master(&self, command: &str) -> Result<String, HaproxyError> {
        let err = |reason: String| HaproxyError::Cli { socket: abs(&self.socket), reason };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match tokio::net::UnixStream::connect(&self.socket).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(err(format!("connect: {e}"))),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let exchange = async {
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            stream.shutdown().await?;
            let mut out = String::new();
            stream.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(err(format!("`{command}`: {e}"))),
            Err(_) => Err(err(format!("`{command}`: no answer within 10 s"))),
        }
    }

    /// A runtime command for the current worker; its reply, trimmed.
    pub async fn worker_command(&self, command: &str) -> Result<String, HaproxyError> {
        let reply = self.master(&format!("@!{} {command}", self.worker)).await?;
        let reply = reply.trim().to_string();
        if reply.starts_with("Can't find the target PID") {
            return Err(HaproxyError::Command { command: command.into(), reply });
        }
        Ok(reply)
    }

    pub async fn procs(&self) -> Result<Procs, HaproxyError> {
        let text = self.master("show proc").await?;
        Procs::parse(&text).ok_or_else(|| HaproxyError::Cli {
            socket: abs(&self.socket),
            reason: format!("unexpected `show proc`: {text}"),
        })
    }

    /// Reloads through the master CLI: the master re-reads the configuration file and hands the
    /// listening sockets to a new worker; the old one finishes its connections. Returns once
    /// the new worker runs; a failed reload leaves the old worker serving.
    pub async fn reload(&mut self) -> Result<(), HaproxyError> {
        let before = self.procs().await?;
        // The master answers nothing and re-executes at once; a cut connection is expected.
        let _ = self.master("reload").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.exited() {
                return Err(HaproxyError::Exited { status });
            }
            if let Ok(p) = self.procs().await {
                if p.failed > before.failed {
                    return Err(HaproxyError::Reload {
                        reason: "HAProxy could not load the new configuration (its log says why)".into(),
                    });
                }
                if p.reloads > before.reloads {
                    if let Some(w) = p.workers.first().filter(|w| !before.workers.contains(w)) {
                        self.worker = *w;
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(HaproxyError::Reload { reason: "no new worker within 30 s".into() });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Soft stop (SIGUSR1: stop listening, finish connections) for up to `grace`, then SIGTERM.
    pub async fn stop(mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

fn abs(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_proc() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n16945           master          2 [failed: 1]   0d00h00m03s     2.6.12-1+deb12u4\n# workers\n17240           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n# old workers\n17001           worker          1               0d00h00m02s     2.6.12-1+deb12u4\n# programs\n\n";
        let p = Procs::parse(text).unwrap();
        assert_eq!(p, Procs { master: 16945, reloads: 2, failed: 1, workers: vec![17240], old_workers: vec![17001] });
        assert_eq!(Procs::parse("Unknown command"), None);
    }

    #[test]
    fn alerts_read_the_same_from_one_run_to_the_next() {
        let a = "[ALERT]    (27585) : config : parsing [haproxy.cfg:13] : unexpected character 'b'";
        let b = "[ALERT]    (31002) : config : parsing [haproxy.cfg:13] : unexpected character 'b'";
        assert_eq!(without_pid(a), "[ALERT] config : parsing [haproxy.cfg:13] : unexpected character 'b'");
        assert_eq!(without_pid(a), without_pid(b));
        assert_eq!(without_pid("[ALERT] (x) odd"), "[ALERT] (x) odd");
        assert_eq!(without_pid("no alert"), "no alert");
    }
}
