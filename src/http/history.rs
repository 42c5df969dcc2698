//! REST reads of history: the channel list, pages of ticks, the latest tick.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::admission::Admission;
use super::{json_response, query, AppState};
use crate::auth::{Principal, QueryCredentials};
use crate::error::ApiError;
use crate::ratelimit::Group;
use crate::store::IdRange;
use crate::tick::{is_valid_channel, StreamId};

/// Largest page (SPEC §4).
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    order: Option<String>,
    cursor: Option<String>,
    #[serde(flatten)]
    creds: QueryCredentials,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelsQuery {
    limit: Option<String>,
    cursor: Option<String>,
    #[serde(flatten)]
    creds: QueryCredentials,
}

/// A REST reader: any credential the WebSocket accepts, charged one `api` token.
pub async fn reader(
    state: &AppState,
    headers: &HeaderMap,
    creds: &QueryCredentials,
    path: &str,
    admission: &Admission,
) -> Result<Principal, ApiError> {
    let principal = admission
        .authenticated(state.auth.authenticate(headers, creds, path), Group::Api)
        .await?;
    admission.charge(&principal, Group::Api, 1).await?;
    Ok(principal)
}

/// Checks the channel name, authenticates and charges the request, then checks that
/// the token may read the channel (a refused read is charged too, and says so in its
/// rate headers).
async fn reader_for(
    state: &AppState,
    headers: &HeaderMap,
    creds: &QueryCredentials,
    uri: &OriginalUri,
    channel: Result<Path<String>, PathRejection>,
    admission: &Admission,
) -> Result<(Principal, String), ApiError> {
    let channel = channel.map(|p| p.0).map_err(|_| ApiError::bad_channel())?;
    if !is_valid_channel(&channel) {
        return Err(ApiError::bad_channel());
    }
    let principal = reader(state, headers, creds, uri.path(), admission).await?;
    if !principal.can_read(&channel) {
        return Err(crate::auth::AuthError::Forbidden(format!("channel {channel}")).into());
    }
    Ok((principal, channel))
}

fn limit_param(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None | Some("") => Ok(DEFAULT_PAGE),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request("bad_limit", format!("limit must be 1..={MAX_PAGE}"))),
    }
}

fn id_param(name: &str, raw: &Option<String>) -> Result<Option<StreamId>, ApiError> {
    raw.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| ApiError::bad_request("bad_id", format!("{name}: {e}")))
        })
        .transpose()
}

/// `GET /api/v1/channels`: the channels the token may read, by name, in pages.
/// The token's patterns are applied to the names before anything is read per
/// channel, so a token that may read nothing costs nothing.
pub async fn channels(
    State(state): State<AppState>,
    uri: OriginalUri,
    headers: HeaderMap,
    admission: Admission,
    q: Result<Query<ChannelsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let principal = reader(&state, &headers, &q.creds, uri.path(), &admission).await?;
    let limit = limit_param(q.limit.as_deref())?;
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) if is_valid_channel(c) => Some(c.to_string()),
        Some(_) => return Err(ApiError::bad_request("bad_cursor", "cursor must be a channel name")),
        None => None,
    };
    let mut names = if principal.channels.is_empty() {
        Vec::new()
    } else {
        state.store.channel_names().await?
    };
    names.retain(|c| principal.can_read(c) && after.as_ref().is_none_or(|a| c > a));
    let more = names.len() > limit;
    names.truncate(limit);
    let list = state.store.summaries(&names).await?;
    let mut out = String::from("{\"channels\":[");
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{{\"channel\":\"{}\",\"last_id\":", c.channel));
        match &c.last {
            Some(t) => match t.ts() {
                Some(ts) => out.push_str(&format!("\"{}\",\"last_ts\":\"{ts}\"", t.id)),
                None => out.push_str(&format!("\"{}\",\"last_ts\":null", t.id)),
            },
            None => out.push_str("null,\"last_ts\":null"),
        }
        out.push_str(&format!(",\"length\":{}}}", c.length));
    }
    out.push_str("],\"next\":");
    match list.last().filter(|_| more) {
        Some(c) => out.push_str(&format!("\"{}\"}}", c.channel)),
        None => out.push_str("null}"),
    }
    Ok(json_response(StatusCode::OK, out))
}

pub async fn ticks(
    State(state): State<AppState>,
    channel: Result<Path<String>, PathRejection>,
    uri: OriginalUri,
    headers: HeaderMap,
    admission: Admission,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (_, channel) = reader_for(&state, &headers, &q.creds, &uri, channel, &admission).await?;
    let limit = limit_param(q.limit.as_deref())?;
    let descending = match q.order.as_deref() {
        None | Some("") | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiError::bad_request("bad_order", "order must be asc or desc")),
    };
    let since = id_param("since", &q.since)?;
    let until = id_param("until", &q.until)?;
    let cursor = id_param("cursor", &q.cursor)?;
    // `since` is exclusive, `until` inclusive; the cursor continues in the page order.
    let mut range = IdRange {
        from: since.map_or(StreamId::ZERO, StreamId::next),
        to: until.unwrap_or(StreamId::MAX),
    };
    if let Some(c) = cursor {
        if descending {
            range.to = range.to.min(c.prev());
        } else {
            range.from = range.from.max(c.next());
        }
    }
    // One extra tells whether another page exists, so `next` is null on the last page.
    let mut page = if descending {
        state.store.rev_range(&channel, range, limit + 1).await?
    } else {
        state.store.range(&channel, range, limit + 1).await?
    };
    let more = page.len() > limit;
    page.truncate(limit);
    let epoch = match page.first() {
        Some(t) => Some(t.epoch.to_string()),
        None => state.store.epoch(&channel).await?,
    };
    let mut out = String::with_capacity(64 + page.len() * 256);
    out.push_str(&format!("{{\"channel\":\"{channel}\",\"epoch\":"));
    match &epoch {
        Some(e) => out.push_str(&format!("\"{e}\"")),
        None => out.push_str("null"),
    }
    out.push_str(",\"ticks\":[");
    for (i, t) in page.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        t.write_json(&mut out, false);
    }
    out.push_str("],\"next\":");
    match page.last().filter(|_| more) {
        Some(t) => out.push_str(&format!("\"{}\"}}", t.id)),
        None => out.push_str("null}"),
    }
    Ok(json_response(StatusCode::OK, out))
}

pub async fn latest(
    State(state): State<AppState>,
    channel: Result<Path<String>, PathRejection>,
    uri: OriginalUri,
    headers: HeaderMap,
    admission: Admission,
    q: Result<Query<QueryCredentials>, QueryRejection>,
) -> Result<Response, ApiError> {
    let creds = query(q)?;
    let (_, channel) = reader_for(&state, &headers, &creds, &uri, channel, &admission).await?;
    match state.store.latest(&channel).await? {
        Some(t) => {
            let mut out = String::with_capacity(256);
            t.write_json(&mut out, false);
            Ok(json_response(StatusCode::OK, out))
        }
        None => Err(ApiError::NotFound(format!("channel {channel} has no ticks"))),
    }
}
