//! `GET /ws/{channel}` and `GET /ws`: the WebSocket handshake (checks in
//! `handshake.rs`), then the upgrade into a session (`session/websocket.rs`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::extract::{authorize_read, Caller, ChannelName, Params};
use super::handshake::{admit, refuse, Admitted, StartQuery};
use super::upgrade::Upgrade;
use super::AppState;
use crate::auth::{offers_subprotocol, QueryCredentials, SUBPROTOCOL};
use crate::error::ApiError;
use crate::session::protocol::SubscribeRequest;
use crate::session::websocket;

/// `GET /ws/{channel}`: one channel, subscribed at once.
pub async fn single(
    State(state): State<AppState>,
    channel: Result<ChannelName, ApiError>,
    query: Result<Params<StartQuery>, ApiError>,
    caller: Caller,
    upgrade: Result<Upgrade, ApiError>,
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
    upgrade: Result<Upgrade, ApiError>,
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
    upgrade: Result<Upgrade, ApiError>,
    admitted: Admitted,
    initial: Option<SubscribeRequest>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            state.metrics.handshakes.with_label_values(&["not_websocket"]).inc();
            return e.into_response();
        }
    };
    state.metrics.handshakes.with_label_values(&["ok"]).inc();
    let protocol = offers_subprotocol(&caller.headers).then_some(SUBPROTOCOL);
    let ctx = state.sessions.clone();
    let done = state.sessions_done.clone();
    let Admitted { principal, permit } = admitted;
    upgrade.accept(protocol, move |tcp, early| async move {
        // The permit is held for the session's life: the cap counts open sockets.
        websocket::run(tcp, early, ctx, principal, initial, done).await;
        drop(permit);
    })
}
