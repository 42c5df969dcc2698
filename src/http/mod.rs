//! The HTTP surface: routes, shared state and the layers every answer goes through
//! (request id, security headers, CORS, one log line and one histogram sample per
//! request, the client's address, the per-IP shield, rate headers).

pub mod admission;
pub mod candles;
pub mod capacity;
pub mod extract;
pub mod handshake;
pub mod history;
pub mod ingest;
pub mod ops;
pub mod serve;
pub mod subscribe;
pub mod upgrade;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{mpsc, Semaphore};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::engine::Store;
use crate::error::ErrorCause;
use crate::health::StoreHealth;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::ip::Shield;
use crate::ratelimit::RateLimiter;
use crate::session::SessionContext;

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub hub: Arc<Hub>,
    /// The append service (`POST /api/v1/ingest` and the demo feeder).
    pub ingest: Arc<crate::ingest::Ingest>,
    /// Recent history in memory, for REST pages (src/page_cache.rs).
    pub page_cache: Arc<crate::page_cache::PageCache>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionContext>,
    pub node: Arc<crate::nodes::Node>,
    /// Cloned into every session; shutdown waits until all clones are dropped.
    pub sessions_done: mpsc::Sender<()>,
    pub limiter: Arc<RateLimiter>,
    /// The store's last health ping (handshakes refuse with 503 while it fails).
    pub health: Arc<StoreHealth>,
    /// One permit per open WebSocket or SSE stream (`TICKSTREAM_MAX_CONNECTIONS`,
    /// kept under the open-file limit: [`capacity`]); a session holds its permit
    /// until it ends.
    pub sockets: Arc<Semaphore>,
    /// The per-IP flood shield; `None` when `TICKSTREAM_IP_RATE=off`.
    pub shield: Option<Shield>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's request id when it is short and plain (safe to log and echo),
/// else a fresh one of 16 random hex digits.
fn request_id(headers: &axum::http::HeaderMap) -> HeaderValue {
    let sane = headers.get(&X_REQUEST_ID).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    });
    match sane {
        Some(v) => v.clone(),
        None => {
            use rand::RngCore;
            HeaderValue::from_str(&format!("{:016x}", rand::rng().next_u64())).unwrap_or(HeaderValue::from_static("0"))
        }
    }
}

pub fn router(state: AppState) -> Router {
    let auth = state.auth.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| auth.origin_allowed(o))
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, X_REQUEST_ID.clone()])
        // A browser app may read its rate limits and when to retry.
        .expose_headers([
            X_REQUEST_ID.clone(),
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            header::RETRY_AFTER,
        ]);
    Router::new()
        .route("/api/v1/ingest", post(ingest::ingest))
        .route("/api/v1/channels", get(history::channels))
        .route("/api/v1/channels/{channel}/ticks", get(history::ticks))
        .route("/api/v1/channels/{channel}/latest", get(history::latest))
        .route("/api/v1/channels/{channel}/candles", get(candles::candles))
        .route("/api/v1/nodes", get(ops::nodes))
        .route("/api/v1/openapi.json", get(ops::openapi))
        .route("/ws", get(subscribe::websocket_multiplexed))
        .route("/ws/{channel}", get(subscribe::websocket_single))
        .route("/sse/{channel}", get(subscribe::sse_stream))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/metrics/system", get(ops::system_metrics))
        .merge(ops::dashboard())
        .fallback(ops::not_found)
        .layer(middleware::from_fn(admission::rate_headers))
        .layer(middleware::from_fn_with_state(state.clone(), admission::shield))
        .layer(middleware::from_fn_with_state(state.clone(), admission::client_ip))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(cors)
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(state)
}

/// Request id, one log line and one latency sample per request. Logs the path
/// only: query strings can carry tokens and are never logged. An error answer
/// adds its code, and a 5xx its cause (`error::ErrorCause`).
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let path = request.uri().path().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let id = request_id(request.headers());
    request.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .http_duration
        .with_label_values(&[method, route.as_str(), status.as_str()])
        .observe(elapsed.as_secs_f64());
    let cause = response.extensions_mut().remove::<ErrorCause>();
    let request_id = id.to_str().unwrap_or("");
    let (micros, status) = (elapsed.as_micros() as u64, status.as_u16());
    match cause {
        // A 5xx's cause is logged here and nowhere else: at warn for the first in a
        // second (an outage fails every request the same way; a log kept at warn gets
        // one line a second, not one per request), at info for the others.
        Some(ErrorCause {
            code,
            detail: Some(cause),
        }) => {
            if server_error_warning_due() {
                tracing::warn!(request_id, method = %method, path = %path, status, micros, error = code, cause, "request");
            } else {
                tracing::info!(request_id, method = %method, path = %path, status, micros, error = code, cause, "request");
            }
        }
        Some(ErrorCause { code, detail: None }) => {
            tracing::info!(request_id, method = %method, path = %path, status, micros, error = code, "request")
        }
        None => tracing::info!(request_id, method = %method, path = %path, status, micros, "request"),
    }
    response
}

/// Whether a 5xx's request line may be a warning: the first of each second is. A
/// process-wide clock is enough for a log's pace (it holds no request state).
fn server_error_warning_due() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::now_ms() / 1000;
    LAST_SECOND.swap(now, Ordering::Relaxed) != now
}

/// A method as a metric label: one of the standard ones, else `other`, so a client
/// inventing methods cannot create histogram series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// A JSON body answer with the given status (helper for hand-built JSON).
pub fn json_response(status: axum::http::StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
