//! The handshakes that open a stream of ticks: `GET /ws/{channel}` and `GET /ws`
//! (WebSocket, then the session in `session/websocket/`), and `GET /sse/{channel}`
//! (Server-Sent Events, `session/sse.rs`). The checks they share, cheapest first,
//! are in `handshake.rs`; the upgrade itself in `upgrade.rs`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::extract::{authorize_read, Caller, ChannelName, Params};
use super::handshake::{admit, refuse, Admitted, StartQuery};
use super::upgrade::Upgrade;
use super::AppState;
use crate::auth::{offers_subprotocol, QueryCredentials, SUBPROTOCOL};
use crate::error::ApiError;
use crate::session::protocol::SubscribeRequest;
use crate::session::sse::{self, BODY_CHUNKS};
use crate::session::websocket;
use crate::tick::{Since, StreamId};

/// `GET /ws/{channel}`: one channel, subscribed at once.
pub async fn websocket_single(
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
        Ok((admitted, request)) => accept_websocket(state, &caller, upgrade, admitted, Some(request)),
        Err(e) => refuse(&state, e),
    }
}

/// `GET /ws`: multiplexed; the client subscribes with messages.
pub async fn websocket_multiplexed(
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
        Ok(admitted) => accept_websocket(state, &caller, upgrade, admitted, None),
        Err(e) => refuse(&state, e),
    }
}

fn accept_websocket(
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

/// `GET /sse/{channel}`: one channel as Server-Sent Events; a reconnecting
/// `EventSource`'s `Last-Event-ID` resumes it.
pub async fn sse_stream(
    State(state): State<AppState>,
    channel: Result<ChannelName, ApiError>,
    query: Result<Params<StartQuery>, ApiError>,
    caller: Caller,
) -> Response {
    let checked = async {
        let ChannelName(channel) = channel?;
        let Params(query) = query?;
        let last_event_id = last_event_id(&caller)?;
        let admitted = admit(&state, &caller).await?;
        authorize_read(&admitted.principal, &channel)?;
        let mut request = query.request(channel, &state.config.candles)?;
        if let Some(id) = last_event_id {
            // The URL's `since` (and its `seq`) are where the stream first began;
            // `Last-Event-ID` is where the client is now.
            request.since = Since::After(id);
            request.seq = None;
            request.from_event_id = true;
        }
        Ok((admitted, request))
    }
    .await;
    let (Admitted { principal, permit }, request) = match checked {
        Ok(ok) => ok,
        Err(e) => return refuse(&state, e),
    };
    state.metrics.handshakes.with_label_values(&["ok"]).inc();
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let ctx = state.sessions.clone();
    let done = state.sessions_done.clone();
    tokio::spawn(async move {
        sse::run(body_tx, ctx, principal, request, done).await;
        drop(permit);
    });
    let body = Body::from_stream(futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) would hold the stream back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The `Last-Event-ID` a reconnecting `EventSource` sends: a tick id this server
/// wrote (empty means none).
fn last_event_id(caller: &Caller) -> Result<Option<StreamId>, ApiError> {
    match caller.headers.get("last-event-id").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(raw)) if raw.trim().is_empty() => Ok(None),
        Some(Ok(raw)) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| ApiError::bad_request("bad_since", format!("Last-Event-ID: {e}"))),
        Some(Err(_)) => Err(ApiError::bad_request("bad_since", "Last-Event-ID: not a stream id")),
    }
}
