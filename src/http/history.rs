//! REST reads of history: the channel list, pages of ticks, the latest tick.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::extract::{authorize_read, Caller, ChannelName, Params};
use super::{json_response, AppState};
use crate::candles::Order;
use crate::error::ApiError;
use crate::ratelimit::Group;
use std::sync::Arc;

use crate::engine::IdRange;
use crate::page_cache::Want;
use crate::tick::id::parse_moment;
use crate::tick::{is_valid_channel, StreamId};

/// `order`: `asc` (default) or `desc`.
pub(super) fn order_param(raw: Option<&str>) -> Result<Order, ApiError> {
    match raw {
        None | Some("") | Some("asc") => Ok(Order::Asc),
        Some("desc") => Ok(Order::Desc),
        Some(_) => Err(ApiError::bad_request("bad_order", "order must be asc or desc")),
    }
}

/// Largest page.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    order: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelsQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `limit`: 1..=1000, default 100.
pub(super) fn limit_param(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None | Some("") => Ok(DEFAULT_PAGE),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request("bad_limit", format!("limit must be 1..={MAX_PAGE}"))),
    }
}

/// Which end of a moment's millisecond a bound means.
#[derive(Clone, Copy)]
enum Edge {
    /// `since=t:…` (exclusive ids): after the millisecond before, so the first tick
    /// appended at or after the moment is included.
    Before,
    /// `until=t:…` (inclusive ids): up to the last id of the moment's millisecond.
    End,
}

/// An id parameter; `since` and `until` also take a moment, `t:<RFC 3339>` or
/// `t:<unix ms>`.
fn id_param(name: &str, raw: &Option<String>, moment: Option<Edge>) -> Result<Option<StreamId>, ApiError> {
    let Some(raw) = raw.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request("bad_id", format!("{name}: {e}"));
    match (raw.strip_prefix("t:"), moment) {
        (Some(t), Some(edge)) => {
            let ms = parse_moment(t).map_err(|e| bad(&e))?;
            Ok(Some(match edge {
                Edge::Before => StreamId::new(ms, 0).prev(),
                Edge::End => StreamId::new(ms, u64::MAX),
            }))
        }
        _ => raw.parse().map(Some).map_err(|e| bad(&e)),
    }
}

/// `GET /api/v1/channels`: the channels the token may read, by name, in pages.
/// The token's patterns are applied to the names before anything is read per
/// channel, so a token that may read nothing costs nothing.
pub async fn channels(
    State(state): State<AppState>,
    Params(q): Params<ChannelsQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let principal = caller.reader(&state, Group::Api).await?;
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
    ChannelName(channel): ChannelName,
    Params(q): Params<HistoryQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let principal = caller.reader(&state, Group::Api).await?;
    authorize_read(&principal, &channel)?;
    let limit = limit_param(q.limit.as_deref())?;
    let descending = order_param(q.order.as_deref())? == Order::Desc;
    let since = id_param("since", &q.since, Some(Edge::Before))?;
    let until = id_param("until", &q.until, Some(Edge::End))?;
    let cursor = id_param("cursor", &q.cursor, None)?;
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
    let want = Want {
        range,
        count: limit + 1,
        descending,
    };
    // The ticks are written into the body as they are read, from the node's memory
    // or from Redis (`history.rs`), without an intermediate copy.
    let mut out = String::with_capacity(96 + limit.min(1000) * 256);
    out.push_str(&format!("{{\"channel\":\"{channel}\",\"ticks\":["));
    let mut written = 0;
    let mut last_written = None;
    // The page's `epoch` is that of its newest tick: where a client that read the
    // page resumes from (docs/PROTOCOL.md §4). After a failover's rollback a page of
    // survivors is of the old epoch even though the channel has moved on; a client
    // resuming with that epoch is replayed the survivors, then told of the rollback.
    let mut newest_epoch: Option<Arc<str>> = None;
    let (read, last_epoch, source) = state
        .page_cache
        .page(&state.store, &channel, want, &mut |t| {
            if written == limit {
                return;
            }
            if written > 0 {
                out.push(',');
            }
            t.write_json(&mut out, false);
            written += 1;
            last_written = Some(t.id);
            if !descending || newest_epoch.is_none() {
                newest_epoch = Some(t.epoch.clone());
            }
        })
        .await?;
    state.metrics.history_pages.with_label_values(&[source]).inc();
    state.metrics.history_cache_bytes.set(state.page_cache.bytes() as i64);
    let more = read > limit;
    let epoch = match newest_epoch.or(last_epoch) {
        Some(e) => Some(e.to_string()),
        None => state.store.epoch(&channel).await?,
    };
    out.push_str("],\"epoch\":");
    match &epoch {
        Some(e) => out.push_str(&format!("\"{e}\"")),
        None => out.push_str("null"),
    }
    out.push_str(",\"next\":");
    match last_written.filter(|_| more) {
        Some(id) => out.push_str(&format!("\"{id}\"}}")),
        None => out.push_str("null}"),
    }
    Ok(json_response(StatusCode::OK, out))
}

pub async fn latest(
    State(state): State<AppState>,
    ChannelName(channel): ChannelName,
    Params(_): Params<crate::auth::QueryCredentials>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let principal = caller.reader(&state, Group::Api).await?;
    authorize_read(&principal, &channel)?;
    match state.store.latest(&channel).await? {
        Some(t) => {
            let mut out = String::with_capacity(256);
            t.write_json(&mut out, false);
            Ok(json_response(StatusCode::OK, out))
        }
        None => Err(ApiError::NotFound(format!("channel {channel} has no ticks"))),
    }
}
