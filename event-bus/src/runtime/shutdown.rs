//! Graceful shutdown: SIGTERM or SIGINT.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Calls `on_hup` on every SIGHUP, from a task of its own. Installing it also keeps SIGHUP's
/// default action (ending the process) from applying, so every long-running binary installs
/// one, if only to log that there is nothing to reload.
pub fn on_hangup(mut on_hup: impl FnMut() + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            on_hup();
        }
    });
}
