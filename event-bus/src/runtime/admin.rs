//! The admin HTTP server: `/healthz` (the process answers), `/readyz` (every readiness check
//! passes; 503 with the reasons otherwise) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

use super::metrics::Metrics;

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Named readiness checks, evaluated on every `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(String, Check)>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&self, name: impl Into<String>, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        self.checks.write().expect("readiness poisoned").push((name.into(), Box::new(check)));
    }

    /// `Ok` when every check passes, else the failures, one per line.
    pub fn evaluate(&self) -> Result<(), String> {
        let failures: Vec<String> = self
            .checks
            .read()
            .expect("readiness poisoned")
            .iter()
            .filter_map(|(name, check)| check().err().map(|e| format!("{name}: {e}")))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
}

/// A running admin server; stops when dropped.
pub struct AdminServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped.
    pub async fn start(addr: SocketAddr, metrics: Metrics, readiness: Readiness) -> std::io::Result<AdminServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(AdminState { metrics, readiness });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
        tracing::info!(%addr, "admin server listening (/healthz, /readyz, /metrics)");
        Ok(AdminServer { addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.readiness.evaluate() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{why}\n")),
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
}
