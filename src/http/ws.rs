//! `GET /ws/{channel}` and `GET /ws`: the WebSocket handshake (checks in
//! `handshake.rs`), then the upgrade into a session (`session/websocket.rs`).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{authorize_read, Caller, ChannelName, Params};
use super::handshake::{admit, refuse, Admitted, StartQuery};
use super::AppState;
use crate::auth::{offers_subprotocol, QueryCredentials, SUBPROTOCOL};
use crate::error::{error_body, ApiError};
use crate::session::protocol::{SubscribeRequest, MAX_CLIENT_MESSAGE};
use crate::session::websocket;

/// `GET /ws/{channel}`: one channel, subscribed at once.
pub async fn single(
    State(state): State<AppState>,
    channel: Result<ChannelName, ApiError>,
    query: Result<Params<StartQuery>, ApiError>,
    caller: Caller,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let checked = async {
        let ChannelName(channel) = channel?;
        let Params(query) = query?;
        let admitted = admit(&state, &caller).await?;
        authorize_read(&admitted.principal, &channel)?;
        let request = query.request(channel, &state.config.candles)?;
        Ok((admitted, request))
    }
    .await;
    match checked {
        Ok((admitted, request)) => accept(state, &caller, upgrade, admitted, Some(request)),
        Err(e) => refuse(&state, e),
    }
}

/// `GET /ws`: multiplexed; the client subscribes with messages.
pub async fn multiplexed(
    State(state): State<AppState>,
    query: Result<Params<QueryCredentials>, ApiError>,
    caller: Caller,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let checked = async {
        query?;
        admit(&state, &caller).await
    }
    .await;
    match checked {
        Ok(admitted) => accept(state, &caller, upgrade, admitted, None),
        Err(e) => refuse(&state, e),
    }
}

fn accept(
    state: AppState,
    caller: &Caller,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    admitted: Admitted,
    initial: Option<SubscribeRequest>,
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
    if offers_subprotocol(&caller.headers) {
        upgrade = upgrade.protocols([SUBPROTOCOL]);
    }
    let ctx = state.sessions.clone();
    let done = state.sessions_done.clone();
    let Admitted { principal, permit } = admitted;
    upgrade
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            // The permit is held for the session's life: the cap counts open sockets.
            websocket::run(socket, ctx, principal, initial, done).await;
            drop(permit);
        })
}
