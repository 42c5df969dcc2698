//! `POST /api/v1/ingest`: one tick or a batch, validated all-or-nothing, appended in
//! one round trip.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{json_response, AppState};
use crate::auth::QueryCredentials;
use crate::error::ApiError;
use crate::tick::{now_us, IngestTick, PreparedTick, MAX_BATCH};

/// Largest request body (SPEC §1).
pub const MAX_BODY: usize = 1024 * 1024;

pub async fn ingest(
    State(state): State<AppState>,
    creds: Result<Query<QueryCredentials>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let creds = creds.map(|q| q.0).unwrap_or_default();
    state.auth.authenticate_producer(&headers, &creds)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY))?;
    let ticks = match parse(&bytes) {
        Ok(t) => t,
        Err(e) => {
            state
                .metrics
                .ticks_ingested
                .with_label_values(&["rejected"])
                .inc();
            return Err(e);
        }
    };
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

/// Parses and validates a body; any bad tick refuses the whole batch.
fn parse(bytes: &[u8]) -> Result<Vec<PreparedTick>, ApiError> {
    let is_batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let raw: Vec<IngestTick> = if is_batch {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?
    } else {
        vec![serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?]
    };
    if raw.is_empty() {
        return Err(ApiError::bad_request(
            "bad_batch",
            "a batch needs at least one tick",
        ));
    }
    if raw.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("a batch holds at most {MAX_BATCH} ticks, got {}", raw.len()),
        ));
    }
    let now = now_us();
    raw.into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.prepare(now).map_err(|e| match ApiError::from(e) {
                ApiError::BadRequest { code, message } if is_batch => ApiError::BadRequest {
                    code,
                    message: format!("tick {i}: {message}"),
                },
                other => other,
            })
        })
        .collect()
}
