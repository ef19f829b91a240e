//! The HTTP endpoints (axum): on the healthz address kube-proxy's `/healthz` and `/livez` (JSON,
//! 200 or 503, see [`crate::health`]); on the metrics address `/metrics` (Prometheus text),
//! `/healthz` (a plain `ok` while the process runs, as kube-proxy's metrics server has) and
//! `/proxyMode` (`ipvs`).

use crate::health::Health;
use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

fn health_answer(s: &Shared, live: bool) -> impl IntoResponse {
    let report = s.health.report(Instant::now(), live);
    let ok = report.ok();
    s.metrics.health_answer(live, ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        report.json(),
    )
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    health_answer(&s, false)
}

async fn livez(State(s): State<Shared>) -> impl IntoResponse {
    health_answer(&s, true)
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Serves `/healthz` and `/livez` on `listener` until the runtime stops.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(Shared { health, metrics });
    axum::serve(listener, app).await
}

/// Serves `/metrics`, `/healthz` and `/proxyMode` on `listener` until the runtime stops.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics_state: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/proxyMode", get(|| async { "ipvs" }))
        .with_state(Shared {
            health,
            metrics: metrics_state,
        });
    axum::serve(listener, app).await
}
