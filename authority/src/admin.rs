//! The admin listener: `/health` (the process is serving), `/ready` (a complete cluster is loaded
//! and we are not draining) and `/metrics` (Prometheus text).

use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use nodedns_zone::ClusterStore;
use tokio_util::sync::CancellationToken;

pub struct AdminState {
    pub store: Arc<ClusterStore>,
    pub draining: CancellationToken,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(|| async { crate::metrics::prometheus().render() }))
        .with_state(state)
}

async fn ready(State(s): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    if s.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !s.store.is_synced() {
        (StatusCode::SERVICE_UNAVAILABLE, "cluster not loaded yet\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

pub async fn serve(
    listener: StdTcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    nodedns_common::process::serve_admin(listener, router(state), stop).await
}
