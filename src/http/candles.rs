//! `GET /api/v1/channels/{channel}/candles`: pages of OHLCV candles, paged like
//! history (docs/PROTOCOL.md §6 "Candles").

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::extract::{authorize_read, Caller, ChannelName, Params};
use super::history::{limit_param, order_param};
use super::{json_response, AppState};
use crate::candles::{Interval, Order, Query, Span};
use crate::error::ApiError;
use crate::ratelimit::Group;
use crate::tick::id::parse_moment;

#[derive(Debug, Default, Deserialize)]
pub struct CandlesQuery {
    interval: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    order: Option<String>,
    cursor: Option<String>,
}

/// A moment (RFC 3339, Unix ms, either with the `t:` of `since` cursors) in Unix ms.
fn moment(name: &str, raw: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let raw = raw.strip_prefix("t:").unwrap_or(raw);
    parse_moment(raw)
        .ok()
        .and_then(|ms| i64::try_from(ms).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("bad_time", format!("{name}: expected RFC 3339 or Unix ms")))
}

pub async fn candles(
    State(state): State<AppState>,
    ChannelName(channel): ChannelName,
    Params(q): Params<CandlesQuery>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let principal = caller.reader(&state, Group::Api).await?;
    authorize_read(&principal, &channel)?;
    if !state.config.candles.enabled {
        return Err(ApiError::NotFound(
            "candles are off on this server (TICKSTREAM_CANDLES)".into(),
        ));
    }
    let interval = q
        .interval
        .as_deref()
        .and_then(Interval::parse)
        .ok_or_else(|| ApiError::bad_request("bad_interval", "interval must be one of 1s, 1m, 5m, 1h, 1d"))?;
    let limit = limit_param(q.limit.as_deref())?;
    let order = order_param(q.order.as_deref())?;
    let mut span = Span {
        after: moment("since", &q.since)?,
        until: moment("until", &q.until)?,
    };
    // The cursor is the last bucket start of the previous page, in its order.
    if let Some(c) = q.cursor.as_deref().filter(|s| !s.is_empty()) {
        let c: i64 = c
            .parse()
            .map_err(|_| ApiError::bad_request("bad_cursor", "cursor: the previous page's next"))?;
        match order {
            Order::Asc => span.after = Some(span.after.map_or(c, |a| a.max(c))),
            Order::Desc => {
                let before = c
                    .checked_sub(1)
                    .ok_or_else(|| ApiError::bad_request("bad_cursor", "cursor: the previous page's next"))?;
                span.until = Some(span.until.map_or(before, |u| u.min(before)));
            }
        }
    }
    // One extra tells whether another page exists, so `next` is null on the last page.
    let query = Query {
        interval,
        span,
        limit: limit + 1,
        order,
    };
    let mut page = state.store.candles(&channel, query).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = page.last().filter(|_| more).map(|c| c.start.to_string());
    // Written straight into the body (a channel name is JSON-safe as it is: the
    // channel regex admits no quote, backslash or control character).
    let mut body = String::with_capacity(64 + page.len() * 160);
    body.push_str("{\"channel\":\"");
    body.push_str(&channel);
    body.push_str("\",\"interval\":\"");
    body.push_str(interval.name());
    body.push_str("\",\"candles\":[");
    for (i, candle) in page.iter().enumerate() {
        body.push_str(if i == 0 { "{" } else { ",{" });
        candle.write_members(&mut body);
        body.push('}');
    }
    body.push_str("],\"next\":");
    match next {
        Some(n) => {
            body.push('"');
            body.push_str(&n);
            body.push('"');
        }
        None => body.push_str("null"),
    }
    body.push('}');
    Ok(json_response(StatusCode::OK, body))
}
