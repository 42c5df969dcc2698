//! JWT verification: the algorithm is pinned by configuration, `exp` and `sub`
//! required, `nbf` honoured, 30 s leeway, `aud`/`iss` checked when configured.

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::subject::Tier;
use super::{AuthError, Authenticator, Credential, Principal, Settings, LEEWAY_SECS};
use crate::acl::ChannelPattern;

/// Claims tickstream reads from a JWT.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default)]
    pub scope: Scope,
}

/// `scope` as an array (docs/PROTOCOL.md §3.2) or, as OAuth servers issue it, one space-separated string.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scope {
    #[default]
    None,
    List(Vec<String>),
    Spaced(String),
}

impl Scope {
    fn into_vec(self) -> Vec<String> {
        match self {
            Scope::None => Vec::new(),
            Scope::List(v) => v,
            Scope::Spaced(s) => s.split_whitespace().map(str::to_string).collect(),
        }
    }
}

/// The validation rules for tokens signed with `algorithm`.
pub(super) fn validation(algorithm: Algorithm, settings: &Settings) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &settings.jwt_audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        // Without a configured audience any `aud` is accepted.
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &settings.jwt_issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

impl Authenticator {
    /// Signs a token with the HS256 secret (dev mode and tests).
    pub fn mint(&self, sub: &str, channels: &[&str], scopes: &[&str], ttl_secs: u64) -> Result<String, AuthError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no HS256 secret to sign with".into()))?;
        let now = crate::clock::unix_now();
        let claims = Claims {
            sub: sub.into(),
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            iat: Some(now),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            tier: None,
            scope: Scope::List(scopes.iter().map(|s| s.to_string()).collect()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Verifies a JWT: algorithm pinned by configuration, `exp` required, `nbf`
    /// honoured, 30 s leeway.
    pub fn verify_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.jwt_key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim {c}")),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (aud)".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (iss)".into()),
                _ => AuthError::Invalid("malformed token".into()),
            })?;
        let claims = data.claims;
        let tier = match claims.tier.as_deref() {
            None => Tier::Free,
            Some(t) => Tier::parse(t).ok_or_else(|| AuthError::Invalid(format!("unknown tier {t:?}")))?,
        };
        let channels = claims
            .channels
            .iter()
            .map(|p| ChannelPattern::parse(p).ok_or_else(|| AuthError::Invalid(format!("bad channel pattern {p:?}"))))
            .collect::<Result<_, _>>()?;
        Ok(Principal {
            credential: Credential::Jwt,
            sub: claims.sub,
            tier,
            channels,
            scopes: claims.scope.into_vec(),
            expires_at: Some(claims.exp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let settings = Settings {
            jwt_secret: Some("0123456789abcdef0123".into()),
            ..Settings::default()
        };
        Authenticator::new(&settings, None).unwrap().0
    }

    #[test]
    fn jwt_round_trip_and_refusals() {
        let a = auth();
        let t = a.mint("alice", &["crypto.*"], &[], 60).unwrap();
        let p = a.verify_jwt(&t).unwrap();
        assert_eq!(p.sub, "alice");
        assert!(p.can_read("crypto.BTC"));
        assert!(!p.can_read("iss.X"));
        assert!(!p.can_ingest());
        let expired = a.mint("alice", &["*"], &[], 0).unwrap();
        // exp = now is still inside the leeway.
        assert!(a.verify_jwt(&expired).is_ok());
        assert!(matches!(a.verify_jwt("garbage"), Err(AuthError::Invalid(_))));
        let other = {
            let settings = Settings {
                jwt_secret: Some("another-secret-of-16".into()),
                ..Settings::default()
            };
            Authenticator::new(&settings, None).unwrap().0
        };
        assert!(matches!(
            a.verify_jwt(&other.mint("x", &["*"], &[], 60).unwrap()),
            Err(AuthError::Invalid(_))
        ));
    }
}
