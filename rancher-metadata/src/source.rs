//! Keeping the answers current: follow the state cache, or (re)load an answers file.

use std::path::Path;
use std::sync::Arc;

use event_bus::StateCache;

use crate::data::Data;
use crate::server::App;

/// Follows the cache: for each new snapshot (bursts collapse into one), decides from the fields
/// metadata shows whether any answer changed; if so, publishes a new generation (which wakes
/// the long-pollers) and builds its latest tree in the background.
pub async fn follow_cache(app: Arc<App>, cache: StateCache, local_host: Option<String>) {
    let mut changes = cache.subscribe();
    loop {
        changes.borrow_and_update();
        let snap = cache.snapshot();
        let previous = app.data();
        let host = local_host.clone();
        match tokio::task::spawn_blocking(move || Data::from_snapshot(snap, host, &previous)).await {
            Ok(Some(data)) => {
                let generation = data.generation;
                let previous = app.publish(data);
                tokio::spawn(after_publish(app.clone(), previous, generation));
            }
            Ok(None) => tracing::debug!(version = cache.version(), "state changed, answers did not"),
            Err(e) => tracing::error!(error = %e, "building metadata answers failed"),
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// What a new generation brings besides waking the long-pollers, once they have been answered
/// (a request that needs the tree sooner builds it itself): build the newest tree now rather
/// than on the first request after the change, and free the previous generation, both off the
/// async workers.
async fn after_publish(app: Arc<App>, previous: Arc<Data>, generation: u64) {
    App::settled(&previous, SETTLE_LIMIT).await;
    let data = app.data();
    tokio::task::spawn_blocking(move || {
        drop(previous);
        // A newer generation builds its own tree.
        if data.generation == generation {
            data.default_tree("latest");
        }
        event_bus::runtime::memory::give_back_freed_memory();
    });
}

/// How long background work waits for the long-polls of the previous generation to be answered.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads the answers file; on error keeps serving what was loaded before.
pub fn load_answers(app: &App, path: &Path) -> Result<(), String> {
    match Data::from_answers_file(path, &app.data())? {
        Some(data) => drop(app.publish(data)),
        None => tracing::info!(file = %path.display(), "answers file unchanged"),
    }
    Ok(())
}
