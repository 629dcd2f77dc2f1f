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
