//! Operations endpoints (health, readiness, metrics, the OpenAPI document) and the
//! dashboard, which is compiled into the binary so the server runs from any
//! directory.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
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

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the dashboard (`static/`, docs/PROTOCOL.md §11) as (path, content type,
/// body), compiled in: the page, its ES modules and style, and the client library it is
/// built on, taken from the very file the npm package ships (`clients/js/index.js`),
/// never a copy. A module added to `static/` needs its row here
/// (static/test/assets.test.mjs checks that it has one).
const DASHBOARD_ASSETS: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../../static/index.html")),
    ("/style.css", CSS, include_str!("../../static/style.css")),
    ("/app.js", JS, include_str!("../../static/app.js")),
    ("/cards.js", JS, include_str!("../../static/cards.js")),
    ("/chart.js", JS, include_str!("../../static/chart.js")),
    ("/feed.js", JS, include_str!("../../static/feed.js")),
    ("/model.js", JS, include_str!("../../static/model.js")),
    ("/notices.js", JS, include_str!("../../static/notices.js")),
    ("/prefs.js", JS, include_str!("../../static/prefs.js")),
    ("/status.js", JS, include_str!("../../static/status.js")),
    ("/store.js", JS, include_str!("../../static/store.js")),
    ("/texts.js", JS, include_str!("../../static/texts.js")),
    ("/tickstream-client.js", JS, include_str!("../../clients/js/index.js")),
];

/// The dashboard's routes, one per asset, each answered with the page's CSP. `no-cache`:
/// the modules are fetched again (or revalidated) after an upgrade, never mixed with
/// an older version's.
pub fn dashboard() -> Router<AppState> {
    DASHBOARD_ASSETS
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            router.route(
                path,
                get(move || async move {
                    (
                        [
                            (header::CONTENT_TYPE, content_type),
                            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
                            (header::CACHE_CONTROL, "no-cache"),
                        ],
                        body,
                    )
                        .into_response()
                }),
            )
        })
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
