//! The HTTP/1.1 side of a WebSocket handshake (RFC 6455 §4.2): the extractor that
//! checks an upgrade request, and the `101` answer that hands the connection's TCP
//! stream to a session.
//!
//! The session gets the bare `TcpStream` (split into halves that need no lock
//! between them) rather than a library's WebSocket: it frames its own messages
//! (`src/session/websocket/codec/`).

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::Response;
use base64::Engine as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use crate::auth::header_list;
use crate::error::ApiError;

/// A valid WebSocket upgrade request, not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Upgrade, ApiError> {
        if parts.version != Version::HTTP_11 {
            return Err(ApiError::NotWebSocket("WebSocket upgrades need HTTP/1.1"));
        }
        if parts.method != Method::GET {
            return Err(ApiError::NotWebSocket("the request method must be GET"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(ApiError::NotWebSocket("the Connection header must include `upgrade`"));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(ApiError::NotWebSocket("the Upgrade header must be `websocket`"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(ApiError::NotWebSocket("the Sec-WebSocket-Version header must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(ApiError::NotWebSocket("the Sec-WebSocket-Key header is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(ApiError::NotWebSocket("this connection cannot be upgraded"))?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols` (naming `protocol`, if the client offered
    /// one the server speaks) and, once hyper has sent it, runs `session` with the
    /// connection's TCP stream and any bytes the client sent after its request.
    pub fn accept<F, Fut>(self, protocol: Option<&'static str>, session: F) -> Response
    where
        F: FnOnce(TcpStream, Vec<u8>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            // The accept loop (serve.rs) serves every connection as a TokioIo<TcpStream>.
            let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
                tracing::error!("an upgraded connection that is not a TCP stream");
                return;
            };
            // Copied, and the rest dropped before the session starts: `read_buf` keeps
            // hyper's whole read buffer (8 KiB) alive, most of an idle socket's memory
            // if the session held it.
            let early = parts.read_buf.to_vec();
            let tcp = parts.io.into_inner();
            drop(parts.read_buf);
            session(tcp, early).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        response
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    header_list(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_key_is_rfc_6455_s_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
