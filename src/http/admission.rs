//! Admission on the HTTP side: the client's address, the per-IP shield's answer, the
//! token-bucket checks handlers make, and the `X-RateLimit-*` headers every limited
//! answer carries (docs/PROTOCOL.md "Rate limits").
//!
//! A handler checks its bucket through [`Admission`] once it knows who is asking;
//! the decision is noted on the request, and [`rate_headers`] writes it onto the
//! answer, success or error alike, so no handler writes rate headers itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::{AuthError, Principal};
use crate::error::ApiError;
use crate::ratelimit::ip::{shield_wait, ClientIp};
use crate::ratelimit::{Decision, Group, RateLimiter, Subject, Tier};

/// The decision of this request's bucket check, if one was made.
#[derive(Clone, Default)]
struct RateNote(Arc<OnceLock<Decision>>);

/// Computes the client's address once (peer, or `X-Forwarded-For` from a trusted
/// proxy) for the shield, the limiter and handlers.
pub async fn client_ip(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let ip = state.config.trusted_proxies.client_ip(peer, request.headers());
    request.extensions_mut().insert(ClientIp(ip));
    next.run(request).await
}

/// Gives each request a place to note its bucket decision, and writes the decision
/// as `X-RateLimit-Limit` and `X-RateLimit-Remaining` onto the answer.
pub async fn rate_headers(mut request: Request, next: Next) -> Response {
    let note = RateNote::default();
    request.extensions_mut().insert(note.clone());
    let mut response = next.run(request).await;
    if let Some(d) = note.0.get() {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    }
    response
}

/// The per-IP shield: a flood from one address gets 429 here, before any token is
/// verified or Redis asked. Two kinds of request pass untouched: the operator's static
/// ingest token (its producer is never limited) and `/healthz` (a liveness probe must
/// not be refused because someone else floods from the balancer's address).
pub async fn shield(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let (Some(shield), Some(ip)) = (&state.shield, request.extensions().get::<ClientIp>()) {
        let exempt = request.uri().path() == "/healthz" || state.auth.is_ingest_token(request.headers());
        if !exempt {
            if let Some(retry_after) = shield_wait(shield, *ip) {
                state.metrics.rate_limited.with_label_values(&["ip"]).inc();
                return ApiError::RateLimited {
                    retry_after,
                    message: "too many requests from this address".into(),
                }
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// A handler's access to the rate limiter for the request it serves.
pub struct Admission {
    limiter: Arc<RateLimiter>,
    note: RateNote,
    ip: ClientIp,
}

impl FromRequestParts<AppState> for Admission {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Admission {
            limiter: state.limiter.clone(),
            note: parts.extensions.get::<RateNote>().cloned().unwrap_or_default(),
            ip: parts
                .extensions
                .get::<ClientIp>()
                .copied()
                .unwrap_or(ClientIp(IpAddr::from([0, 0, 0, 0]))),
        })
    }
}

impl Admission {
    /// Takes `cost` tokens of `group` for `principal`; a refusal is a 429.
    pub async fn charge(&self, principal: &Principal, group: Group, cost: u32) -> Result<(), ApiError> {
        self.check(principal.subject(), principal.tier, group, cost).await
    }

    /// An authentication outcome. A request without a valid credential is charged to
    /// its address (free tier), so guessing tokens is throttled like anything else;
    /// then it gets its 401 (or 429 once the address's bucket is empty).
    pub async fn authenticated(
        &self,
        outcome: Result<Principal, AuthError>,
        group: Group,
    ) -> Result<Principal, ApiError> {
        match outcome {
            Ok(p) => Ok(p),
            Err(e @ (AuthError::Missing | AuthError::Invalid(_) | AuthError::Expired)) => {
                self.check(Subject::Ip(self.ip.rate_key()), Tier::Free, group, 1)
                    .await?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn check(&self, subject: Subject<'_>, tier: Tier, group: Group, cost: u32) -> Result<(), ApiError> {
        let Some(decision) = self.limiter.check(subject, tier, group, cost).await else {
            return Ok(());
        };
        let _ = self.note.0.set(decision);
        if decision.allowed {
            return Ok(());
        }
        let message = if cost > decision.limit {
            format!(
                "{cost} {} tokens were asked for, more than this tier's burst of {}: send smaller batches",
                group.name(),
                decision.limit
            )
        } else {
            format!("rate limit of the {} group reached, retry later", group.name())
        };
        Err(ApiError::RateLimited {
            retry_after: decision.retry_after_secs(),
            message,
        })
    }
}
