//! The admin listener: `/health` (the process serves), `/ready` (listening, and a live authority
//! stream or cached answers to serve, and not draining) and `/metrics` (Prometheus text).

use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::authority_client::AuthorityLink;
use crate::cache::Cache;

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> &'static PrometheusHandle {
    nodedns_common::telemetry::prometheus(describe)
}

fn describe() {
    nodedns_common::telemetry::describe_dns_metrics();
    metrics::describe_counter!(
        "nodedns_autopath_total",
        "Autopath walks by result (hit, nxdomain, asked_name)."
    );
    metrics::describe_histogram!("nodedns_autopath_duration_seconds", "Time of an autopath walk.");
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("coredns_cache_hits_total", "Answers from the cache, by type (success, denial).");
    describe_counter!("coredns_cache_misses_total", "Queries the cache could not answer.");
    describe_counter!("coredns_cache_evictions_total", "Cache entries evicted for room or expiry.");
    describe_gauge!("coredns_cache_entries", "Entries in the cache.");
    describe_gauge!("nodedns_cache_bytes", "Bytes held by the cache (its bound is --cache-bytes).");
    describe_counter!(
        "nodedns_cache_stale_served_total",
        "Stale answers served because the source failed (RFC 8767)."
    );
    describe_counter!(
        "nodedns_notice_evictions_total",
        "Cache entries evicted by the authority's change notices."
    );
    describe_counter!(
        "nodedns_coalesced_total",
        "Misses that waited for an identical query already in flight."
    );
    describe_histogram!(
        "nodedns_upstream_request_duration_seconds",
        "Time of one attempt towards an upstream server."
    );
    describe_gauge!("nodedns_upstream_healthy", "1 while an upstream server answers, 0 once marked down.");
    describe_histogram!(
        "nodedns_authority_request_duration_seconds",
        "Time of a Resolve round trip to the authority."
    );
    describe_counter!("nodedns_authority_disconnects_total", "Authority sessions that ended.");
    nodedns_common::reload::describe_metrics();
}

pub struct AdminState {
    pub authority: Arc<AuthorityLink>,
    pub cache: Arc<Cache>,
    pub draining: CancellationToken,
}

async fn ready(State(s): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    if s.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if *s.authority.connected().borrow() {
        (StatusCode::OK, "ready\n")
    } else if s.cache.entry_count() > 0 {
        (StatusCode::OK, "ready (authority unreachable, serving from cache)\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no authority connected yet and nothing cached\n")
    }
}

async fn metrics_text(State(s): State<Arc<AdminState>>) -> String {
    metrics::gauge!("coredns_cache_entries").set(s.cache.entry_count() as f64);
    metrics::gauge!("nodedns_cache_bytes").set(s.cache.weighted_size() as f64);
    let mut text = prometheus().render();
    crate::respond::render(&mut text);
    text
}

pub async fn serve(
    listener: StdTcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    nodedns_common::process::serve_admin(listener, router, stop).await
}
