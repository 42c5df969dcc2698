//! `POST /api/v1/ingest`: one tick or a batch, validated all-or-nothing, appended in
//! one round trip.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::extract::{Caller, Params};
use super::{json_response, AppState};
use crate::auth::QueryCredentials;
use crate::clock::now_us;
use crate::error::ApiError;
use crate::ratelimit::Group;
use crate::tick::parse_body;

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;

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
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY))?;
    let ticks = match parse_body(&bytes, now_us()).map_err(ApiError::from) {
        Ok(t) => t,
        Err(e) => {
            state.metrics.ticks_ingested.with_label_values(&["rejected"]).inc();
            return Err(e);
        }
    };
    // One token per tick; a batch the bucket cannot pay for whole stores nothing.
    let cost = u32::try_from(ticks.len()).unwrap_or(u32::MAX);
    caller.admission.charge(&producer, Group::Ingest, cost).await?;
    let results = state.store.append(&ticks).await?;
    let duplicates = results.iter().filter(|r| r.duplicate).count() as u64;
    state
        .metrics
        .ticks_ingested
        .with_label_values(&["stored"])
        .inc_by(results.len() as u64 - duplicates);
    state
        .metrics
        .ticks_ingested
        .with_label_values(&["duplicate"])
        .inc_by(duplicates);
    let body = json!({
        "results": results
            .iter()
            .map(|r| json!({"id": r.id.to_string(), "event_id": r.event_id, "duplicate": r.duplicate}))
            .collect::<Vec<_>>()
    });
    Ok(json_response(StatusCode::CREATED, body.to_string()))
}
