//! What opening a subscription costs, for `/ws/{channel}`, `/ws` and `/sse/{channel}`
//! alike, cheapest check first (docs/ARCHITECTURE.md "Admission"): Origin → the
//! credential → storage reachable → the node's connection cap → one `ws` token. The
//! per-IP shield ran before the handler. Every refusal is a plain HTTP answer with a
//! JSON body, counted by its code; nothing of a session exists before all pass.

use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;

use super::extract::Caller;
use super::AppState;
use crate::auth::Principal;
use crate::candles::CandleSettings;
use crate::engine::StoreError;
use crate::error::ApiError;
use crate::ratelimit::Group;
use crate::session::protocol::{check_epoch, FrameRate, SubscribeRequest};
use crate::tick::Since;

/// A subscriber admitted: who it is, and its place under the connection cap (held for
/// the connection's life).
pub struct Admitted {
    pub principal: Principal,
    pub permit: OwnedSemaphorePermit,
}

/// Origin first (CSWSH defence), then the credential; a request without Origin is a
/// non-browser client, let through only because a valid credential is required in
/// every case.
pub async fn admit(state: &AppState, caller: &Caller) -> Result<Admitted, ApiError> {
    state.auth.check_origin(&caller.headers)?;
    let principal = caller.identify(state, Group::Ws).await?;
    if !state.health.is_up() {
        return Err(StoreError::Unreachable.into());
    }
    let permit = state
        .sockets
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded)?;
    caller.admission.charge(&principal, Group::Ws, 1).await?;
    Ok(Admitted { principal, permit })
}

/// A refused handshake: counted by its code, answered as JSON.
pub fn refuse(state: &AppState, e: ApiError) -> Response {
    let (_, code) = e.status_and_code();
    state.metrics.handshakes.with_label_values(&[code]).inc();
    e.into_response()
}

/// Where a one-channel subscriber starts (`?since=&seq=&epoch=`).
#[derive(Debug, Default, Deserialize)]
pub struct StartQuery {
    since: Option<String>,
    seq: Option<String>,
    epoch: Option<String>,
    candles: Option<String>,
    rate: Option<String>,
}

impl StartQuery {
    /// The subscription these parameters ask for (400 `bad_since` / `bad_seq` /
    /// `bad_epoch` / `bad_interval` / `bad_rate`).
    pub fn request(self, channel: String, settings: &CandleSettings) -> Result<SubscribeRequest, ApiError> {
        let candles = settings
            .live(self.candles.as_deref())
            .map_err(|why| ApiError::bad_request("bad_interval", why))?;
        let since =
            Since::parse(self.since.as_deref()).map_err(|e| ApiError::bad_request("bad_since", e.to_string()))?;
        let seq = match self.seq.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => Some(
                raw.parse::<u64>()
                    .map_err(|_| ApiError::bad_request("bad_seq", "seq must be a whole number"))?,
            ),
        };
        check_epoch(self.epoch.as_deref()).map_err(|why| ApiError::bad_request("bad_epoch", why))?;
        let rate =
            FrameRate::parse_query(self.rate.as_deref()).map_err(|why| ApiError::bad_request("bad_rate", why))?;
        Ok(SubscribeRequest {
            channel,
            since,
            seq,
            epoch: self.epoch.filter(|e| !e.is_empty()),
            from_event_id: false,
            candles,
            rate,
        })
    }
}
