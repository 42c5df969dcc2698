//! Error policy.
//!
//! Library code returns typed errors (`thiserror` enums: [`StoreError`],
//! [`AuthError`], [`TickError`], …). They become an HTTP answer in exactly one place,
//! the [`IntoResponse`] impl of [`ApiError`] below, which picks the status and the
//! stable machine-readable `error` code of the JSON body `{"error","message"}`
//! (docs/PROTOCOL.md §4). Clients branch on `error`; `message` is for people and may change.
//!
//! Internal details (Redis error text, file paths) are logged, never sent: a 503 says
//! "storage unavailable", the log says why. `into_response` logs nothing itself: it
//! leaves an [`ErrorCause`] in the response's extensions, and the layer that writes
//! each request's one log line (`http::observe`) adds the code (`error`) and, for a
//! 5xx, the cause (`cause`), so the line that says "503" also says why, once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::AuthError;
use crate::engine::StoreError;
use crate::ingest::IngestError;
use crate::tick::{BodyError, TickError};

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A rate limit refused the request; `retry_after` is whole seconds.
    #[error("{message}")]
    RateLimited { retry_after: u64, message: String },
    /// The node holds as many WebSockets as it may (`TICKSTREAM_MAX_CONNECTIONS`).
    #[error("this node is at its connection limit, try again shortly")]
    Overloaded,
    /// A request to a WebSocket endpoint that is not a valid upgrade, and why.
    #[error("{0}")]
    NotWebSocket(&'static str),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn bad_channel() -> ApiError {
        ApiError::bad_request("bad_channel", TickError::BadChannel.to_string())
    }

    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Auth(AuthError::Missing) => (StatusCode::UNAUTHORIZED, "missing_token"),
            ApiError::Auth(AuthError::Expired) => (StatusCode::UNAUTHORIZED, "token_expired"),
            ApiError::Auth(AuthError::Invalid(_)) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            ApiError::Auth(AuthError::Forbidden(_)) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Auth(AuthError::BadOrigin(_)) => (StatusCode::FORBIDDEN, "bad_origin"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::NotWebSocket(_) => (StatusCode::UPGRADE_REQUIRED, "websocket_required"),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(e) => e.into(),
            IngestError::Forbidden(_) => AuthError::Forbidden(e.to_string()).into(),
            IngestError::Store(e) => e.into(),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let code = match &e {
            BodyError::Json(_) => "bad_json",
            BodyError::Empty => "bad_batch",
            BodyError::TooMany(_) => "batch_too_large",
            BodyError::Tick {
                error: TickError::BadChannel,
                ..
            } => "bad_channel",
            BodyError::Tick {
                error: TickError::TooFarAhead(_),
                ..
            } => "bad_ts",
            BodyError::Tick { .. } => "bad_tick",
        };
        ApiError::bad_request(code, e.to_string())
    }
}

/// The JSON body of every error answer.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": code, "message": message })
}

/// What went wrong, for the request's log line (never sent to the client).
#[derive(Debug, Clone)]
pub struct ErrorCause {
    /// The stable code the body carries.
    pub code: &'static str,
    /// A 5xx's full text, internal details included (its only record); `None` for a
    /// 4xx, whose message the client got (and which may quote what it sent).
    pub detail: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Store(_) => "storage is unavailable, try again shortly".to_string(),
            other => other.to_string(),
        };
        let mut response = (status, Json(error_body(code, &message))).into_response();
        if let ApiError::RateLimited { retry_after, .. } = &self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*retry_after).into());
        }
        response.extensions_mut().insert(ErrorCause {
            code,
            detail: status.is_server_error().then(|| self.to_string()),
        });
        response
    }
}
