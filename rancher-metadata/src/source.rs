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
                app.publish(data);
                // Build the newest tree now rather than on the first request after the change.
                let data = app.data();
                tokio::task::spawn_blocking(move || data.default_tree("latest").is_some());
            }
            Ok(None) => tracing::debug!(version = cache.version(), "state changed, answers did not"),
            Err(e) => tracing::error!(error = %e, "building metadata answers failed"),
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Loads the answers file; on error keeps serving what was loaded before.
pub fn load_answers(app: &App, path: &Path) -> Result<(), String> {
    match Data::from_answers_file(path, &app.data())? {
        Some(data) => app.publish(data),
        None => tracing::info!(file = %path.display(), "answers file unchanged"),
    }
    Ok(())
}
