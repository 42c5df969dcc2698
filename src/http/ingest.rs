//! `POST /api/v1/ingest`: reads the body (bounded), checks the producer and its rate
//! limit, and hands the ticks to the append service (`ingest.rs`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::extract::{Caller, Params};
use super::{json_response, AppState};
use crate::auth::QueryCredentials;
use crate::error::ApiError;
use crate::ratelimit::Group;

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;
/// A body over [`MAX_BODY`] is still read (and thrown away) up to this much, for at
/// most [`DRAIN_TIME`], before the 413: answering while the producer is still sending
/// would make the kernel reset the connection, and the producer would see a broken
/// pipe instead of the 413 that says what is wrong.
const DRAIN_MAX: usize = 16 * MAX_BODY;
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// A body must arrive within this long (headers have their own 10 s).
const BODY_TIME: Duration = Duration::from_secs(30);

/// The body, at most [`MAX_BODY`]; else 413 (after draining, see [`DRAIN_MAX`]).
async fn read_body(body: Body, declared: Option<usize>) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY));
    let mut seen = 0usize;
    let too_large = |seen: usize| declared.is_some_and(|n| n > MAX_BODY) || seen > MAX_BODY;
    let mut deadline = tokio::time::Instant::now() + if too_large(0) { DRAIN_TIME } else { BODY_TIME };
    let outcome = loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break Err("the request body did not arrive in time"),
            Ok(next) => next,
        };
        match next {
            None => break Ok(()),
            Some(Err(_)) => break Err("the request body could not be read"),
            Some(Ok(chunk)) => {
                let was_too_large = too_large(seen);
                seen += chunk.len();
                if !too_large(seen) {
                    bytes.extend_from_slice(&chunk);
                } else if !was_too_large {
                    deadline = deadline.min(tokio::time::Instant::now() + DRAIN_TIME);
                }
                if seen > DRAIN_MAX {
                    break Ok(());
                }
            }
        }
    };
    match outcome {
        _ if too_large(seen) => Err(ApiError::TooLarge(MAX_BODY)),
        Ok(()) => Ok(bytes),
        Err(why) => Err(ApiError::bad_request("bad_body", why)),
    }
}

pub async fn ingest(
    State(state): State<AppState>,
    Params(_): Params<QueryCredentials>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let producer = caller.producer(&state).await?;
    let declared = caller
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bytes = read_body(body, declared).await?;
    let ticks = state.ingest.validate(&bytes, |channel| producer.can_write(channel))?;
    // One token per tick; a batch the bucket cannot pay for whole stores nothing.
    let cost = u32::try_from(ticks.len()).unwrap_or(u32::MAX);
    caller.admission.charge(&producer, Group::Ingest, cost).await?;
    let results = state.ingest.append(&ticks).await?;
    let body = json!({
        "results": results
            .iter()
            .map(|r| json!({"id": r.id.to_string(), "event_id": r.event_id, "duplicate": r.duplicate}))
            .collect::<Vec<_>>()
    });
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}
