//! The WebSocket handshake, cheapest check first (docs/ARCHITECTURE.md "Admission"):
//! channel name → Origin → (the per-IP shield ran before the handler) → token →
//! storage reachable → channel permission → connection cap → `ws` token bucket →
//! upgrade. Every refusal is a plain HTTP answer with a JSON body; no socket is opened
//! and no session state exists before all checks pass.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use tokio::sync::OwnedSemaphorePermit;

use super::admission::Admission;
use super::AppState;
use crate::auth::{offers_subprotocol, AuthError, Principal, QueryCredentials, SUBPROTOCOL};
use crate::error::{error_body, ApiError};
use crate::ratelimit::Group;
use crate::session::protocol::{SubscribeRequest, MAX_CLIENT_MESSAGE};
use crate::session::websocket;
use crate::store::StoreError;
use crate::tick::{is_valid_channel, Since};

#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    since: Option<String>,
    seq: Option<String>,
    epoch: Option<String>,
    #[serde(flatten)]
    creds: QueryCredentials,
}

/// `GET /ws/{channel}`: one channel, subscribed at once.
pub async fn single(
    State(state): State<AppState>,
    channel: Result<Path<String>, PathRejection>,
    query: Result<Query<WsQuery>, QueryRejection>,
    uri: OriginalUri,
    headers: HeaderMap,
    admission: Admission,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let checked = async {
        let channel = channel.map(|p| p.0).map_err(|_| ApiError::bad_channel())?;
        if !is_valid_channel(&channel) {
            return Err(ApiError::bad_channel());
        }
        let q = super::query(query)?;
        let principal = authorize(&state, &headers, &q.creds, uri.path(), &admission).await?;
        let permit = admit(&state, &principal, &admission).await?;
        if !principal.can_read(&channel) {
            return Err(AuthError::Forbidden(format!("channel {channel}")).into());
        }
        let since = Since::parse(q.since.as_deref()).map_err(|e| ApiError::bad_request("bad_since", e.to_string()))?;
        let seq = match q.seq.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => Some(
                raw.parse::<u64>()
                    .map_err(|_| ApiError::bad_request("bad_seq", "seq must be a whole number"))?,
            ),
        };
        let request = SubscribeRequest {
            channel,
            since,
            seq,
            epoch: q.epoch.filter(|e| !e.is_empty()),
            from_event_id: false,
        };
        Ok((principal, request, permit))
    }
    .await;
    match checked {
        Ok((principal, request, permit)) => accept(state, &headers, upgrade, principal, Some(request), permit),
        Err(e) => refuse(&state, e),
    }
}

/// `GET /ws`: multiplexed; the client subscribes with messages.
pub async fn multiplexed(
    State(state): State<AppState>,
    query: Result<Query<QueryCredentials>, QueryRejection>,
    uri: OriginalUri,
    headers: HeaderMap,
    admission: Admission,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let checked = async {
        let creds = super::query(query)?;
        let principal = authorize(&state, &headers, &creds, uri.path(), &admission).await?;
        let permit = admit(&state, &principal, &admission).await?;
        Ok((principal, permit))
    }
    .await;
    match checked {
        Ok((principal, permit)) => accept(state, &headers, upgrade, principal, None, permit),
        Err(e) => refuse(&state, e),
    }
}

/// The node's connection cap, then the `ws` bucket (one token for the handshake and,
/// on `/ws/{channel}`, its subscription).
async fn admit(
    state: &AppState,
    principal: &Principal,
    admission: &Admission,
) -> Result<OwnedSemaphorePermit, ApiError> {
    let permit = state
        .sockets
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded)?;
    admission.charge(principal, Group::Ws, 1).await?;
    Ok(permit)
}

/// Origin first (CSWSH defence), then the token. A request without Origin is a
/// non-browser client; it is let through only because a valid token is required
/// below in every case.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    creds: &QueryCredentials,
    path: &str,
    admission: &Admission,
) -> Result<Principal, ApiError> {
    state.auth.check_origin(headers)?;
    let principal = admission
        .authenticated(state.auth.authenticate(headers, creds, path), Group::Ws)
        .await?;
    if !state.health.is_up() {
        return Err(StoreError::Unreachable.into());
    }
    Ok(principal)
}

fn refuse(state: &AppState, e: ApiError) -> Response {
    let (_, code) = e.status_and_code();
    state.metrics.handshakes.with_label_values(&[code]).inc();
    e.into_response()
}

fn accept(
    state: AppState,
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    principal: Principal,
    initial: Option<SubscribeRequest>,
    permit: OwnedSemaphorePermit,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            state.metrics.handshakes.with_label_values(&["not_websocket"]).inc();
            let body = error_body("websocket_required", &e.body_text());
            return (StatusCode::UPGRADE_REQUIRED, axum::Json(body)).into_response();
        }
    };
    state.metrics.handshakes.with_label_values(&["ok"]).inc();
    let mut upgrade = upgrade
        // Frames above 64 KiB close with 1008 in the session; this hard cap only
        // protects memory from far larger ones.
        .max_message_size(MAX_CLIENT_MESSAGE * 4)
        .max_frame_size(MAX_CLIENT_MESSAGE * 4)
        // tungstenite allocates its read buffer up front (128 KiB by default): most
        // of an idle socket's memory. Client messages are tiny; 1 KiB reads suffice (the
        // buffer grows for a larger message).
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024);
    if offers_subprotocol(headers) {
        upgrade = upgrade.protocols([SUBPROTOCOL]);
    }
    let ctx = state.sessions.clone();
    let done = state.sessions_done.clone();
    upgrade
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            // The permit is held for the session's life: the cap counts open sockets.
            websocket::run(socket, ctx, principal, initial, done).await;
            drop(permit);
        })
}
