//! What every handler starts from, as axum extractors: its query parameters (400
//! `bad_query`), its channel path (400 `bad_channel`), and the caller — credentials,
//! path and rate-limit admission — from which the handler asks for the principal it
//! needs. Handlers list them in the order their checks must run.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use super::admission::Admission;
use super::AppState;
use crate::auth::{AuthError, Principal, QueryCredentials};
use crate::error::ApiError;
use crate::ratelimit::Group;
use crate::tick::is_valid_channel;

/// Query parameters, or 400 `bad_query` saying what was wrong with them.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// The `{channel}` of the path, valid, or 400 `bad_channel`.
pub struct ChannelName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ChannelName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(channel)) if is_valid_channel(&channel) => Ok(ChannelName(channel)),
            _ => Err(ApiError::bad_channel()),
        }
    }
}

/// Who is calling: the credentials the request carries (header, subprotocol, query)
/// and its admission to the rate limiter. Extracting it checks nothing; the handler
/// asks for the principal when its cheaper checks have passed.
pub struct Caller {
    pub headers: HeaderMap,
    creds: QueryCredentials,
    path: String,
    pub admission: Admission,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // A query that does not decode is the handler's `Params` to refuse.
        let creds = Query::<QueryCredentials>::from_request_parts(parts, state)
            .await
            .map(|q| q.0)
            .unwrap_or_default();
        let admission = Admission::from_request_parts(parts, state).await?;
        Ok(Caller {
            headers: parts.headers.clone(),
            creds,
            path: parts.uri.path().to_string(),
            admission,
        })
    }
}

impl Caller {
    /// A reader (any credential a WebSocket accepts), charged one token of `group`
    /// as soon as it is proven; a caller without a valid credential is charged to its
    /// address first, then refused.
    pub async fn reader(&self, state: &AppState, group: Group) -> Result<Principal, ApiError> {
        let principal = self.identify(state, group).await?;
        self.admission.charge(&principal, group, 1).await?;
        Ok(principal)
    }

    /// The principal of a reader's credential, not charged yet (handshakes charge
    /// after their cheaper checks); one without a valid credential is charged to its
    /// address in `group`, then refused.
    pub async fn identify(&self, state: &AppState, group: Group) -> Result<Principal, ApiError> {
        self.admission
            .authenticated(state.auth.authenticate(&self.headers, &self.creds, &self.path), group)
            .await
    }

    /// A producer: the static ingest token or a JWT with scope `ingest`. Not charged
    /// here: ingest is charged per tick once the body is read.
    pub async fn producer(&self, state: &AppState) -> Result<Principal, ApiError> {
        self.admission
            .authenticated(
                state.auth.authenticate_producer(&self.headers, &self.creds),
                Group::Ingest,
            )
            .await
    }
}

/// 403 unless the principal's `channels` allow `channel`.
pub fn authorize_read(principal: &Principal, channel: &str) -> Result<(), ApiError> {
    if principal.can_read(channel) {
        Ok(())
    } else {
        Err(AuthError::Forbidden(format!("channel {channel}")).into())
    }
}
