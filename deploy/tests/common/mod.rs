//! Shared by deploy's integration tests: running the binary, and waiting on a condition.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `deploy` against `nats_url`; (exit code, stdout, stderr).
pub fn deploy(args: &[&str], nats_url: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(args)
        .env("CORRAL_NATS_URL", nats_url)
        .env("CORRAL_NATS_CONNECT_TIMEOUT", "3s")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Polls `f` until it is true; how long that took, or a panic naming `what` after `limit`.
pub async fn until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes what the test made in Docker, even when it fails.
pub struct DockerCleanup {
    pub host: String,
    pub network: String,
}
impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=io.corral.agent.host={}", self.host)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker").arg("rm").arg("-f").args(&ids).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub const IMAGE: &str = "corral-test/busybox:1";

/// Fails (never skips) when the test image is missing, saying how to build it.
pub fn require_image() {
    assert!(
        Command::new("docker").args(["image", "inspect", IMAGE]).output().map(|o| o.status.success()).unwrap_or(false),
        "image {IMAGE} missing: run scripts/test-image (needs Docker and busybox-static; scripts/setup does both)"
    );
}
