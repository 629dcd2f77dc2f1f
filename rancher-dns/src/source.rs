//! Keeping the answers current: follow the state cache, or (re)load an answers file.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use event_bus::StateCache;

use crate::naming::{self, NamingConfig};
use crate::server::Shared;

/// Rebuilds the answers for each new snapshot (a burst of changes is one snapshot) and swaps them
/// in. Forwarded answers are cached separately, so nothing else is flushed.
pub async fn follow_cache(shared: Arc<Shared>, cache: StateCache, cfg: NamingConfig) {
    let mut changes = cache.subscribe();
    let mut previous: Option<Arc<event_bus::Snapshot>> = None;
    loop {
        changes.borrow_and_update();
        let snap = cache.snapshot();
        let (cfg2, prev, current, snap2) = (cfg.clone(), previous.take(), shared.answers(), snap.clone());
        let started = Instant::now();
        let built = tokio::task::spawn_blocking(move || {
            let answers = naming::rebuild(&snap2, &cfg2, prev.as_deref().map(|p| (p, &*current)));
            drop(current);
            answers
        })
        .await;
        match built {
            Ok(answers) => {
                previous = Some(snap);
                shared.metrics.rebuild.observe(started.elapsed().as_secs_f64());
                tracing::debug!(version = answers.serial, names = answers.default.names.len(), "answers rebuilt");
                shared.publish(answers);
            }
            Err(e) => tracing::error!(error = %e, "building DNS answers failed; still serving the previous ones"),
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Loads the answers file; on error keeps serving what was loaded before. The serial goes up by
/// one on each successful load.
pub fn load_answers(shared: &Shared, path: &Path, ttl: u32) -> Result<(), crate::file::FileError> {
    let serial = shared.answers().serial.wrapping_add(1);
    let answers = crate::file::load(path, ttl, serial)?;
    tracing::info!(file = %path.display(), names = answers.default.names.len(), clients = answers.clients.len(), "answers loaded");
    shared.publish(answers);
    Ok(())
}
