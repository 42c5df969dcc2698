//! HMAC-signed handshakes, for clients without a JWT library (docs/PROTOCOL.md §3.3).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::subject::Tier;
use super::{AuthError, Authenticator, Credential, Principal, HMAC_WINDOW_SECS};

impl Authenticator {
    /// Verifies an HMAC-signed handshake: `sig` = hex HMAC-SHA256(secret,
    /// "{client_id}\n{ts}\n{path}"), `ts` within ±60 s.
    pub fn verify_hmac(&self, client_id: &str, ts: &str, sig: &str, path: &str) -> Result<Principal, AuthError> {
        let secret = self
            .hmac_secret
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("signed handshakes are not enabled".into()))?;
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(AuthError::Invalid("bad client_id".into()));
        }
        let ts_secs: i64 = ts.parse().map_err(|_| AuthError::Invalid("bad ts".into()))?;
        let now = i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX);
        // abs_diff: a `ts` near i64::MIN must be refused, not overflow.
        if now.abs_diff(ts_secs) > HMAC_WINDOW_SECS.unsigned_abs() {
            return Err(AuthError::Expired);
        }
        let sig = hex::decode(sig).map_err(|_| AuthError::Invalid("bad signature".into()))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::Invalid("bad key".into()))?;
        mac.update(format!("{client_id}\n{ts}\n{path}").as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::Invalid("bad signature".into()))?;
        Ok(Principal {
            credential: Credential::Hmac,
            sub: client_id.to_string(),
            tier: Tier::Free,
            channels: self.hmac_channels.clone(),
            scopes: Vec::new(),
            expires_at: None,
        })
    }
}
