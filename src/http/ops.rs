//! Operations endpoints (health, readiness, metrics, the OpenAPI document) and the
//! dashboard, which is compiled into the binary so the server runs from any
//! directory.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::{Caller, Params};
use super::{json_response, AppState};
use crate::auth::QueryCredentials;
use crate::error::ApiError;
use crate::ratelimit::Group;

/// The dashboard loads only its own script and style and talks only to this server.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}).to_string())
}

/// 200 when the store answers and every live reader has heard from it recently;
/// 503 naming what is down otherwise. The store's answer is the health task's last
/// ping (at most a second old): however often `/readyz` is called, it asks Redis
/// nothing itself.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let redis = state.health.redis_status();
    let tail = state.hub.tail_health();
    let tail_ok = tail.stale_partitions.is_empty();
    let ready = redis != "down" && tail_ok;
    let body = json!({
        "engine": state.store.name(),
        "redis": redis,
        "ratelimit": state.limiter.mode(),
        "tail": if tail_ok { "ok" } else { "stale" },
        "stale_partitions": tail.stale_partitions,
        "active_channels": state.hub.active_channels(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body.to_string())
}

/// Nodes serving from the same Redis. Needs a valid token: addresses are internal.
pub async fn nodes(
    State(state): State<AppState>,
    Params(_): Params<QueryCredentials>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.reader(&state, Group::Api).await?;
    let nodes = state.node.list().await?;
    Ok(json_response(StatusCode::OK, json!({ "nodes": nodes }).to_string()))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    // Brings the fallback gauge up to date with the limiter's mode.
    state.limiter.mode();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn system_metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render_system(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    json_response(StatusCode::OK, include_str!("openapi.json").to_string())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn dashboard_index() -> Response {
    asset("text/html; charset=utf-8", include_str!("../../static/index.html"))
}

pub async fn dashboard_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../../static/app.js"))
}

pub async fn dashboard_chart_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../../static/chart.js"))
}

pub async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("../../static/style.css"))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
