//! Client authentication: HS256 JWTs signed with `JWT_SECRET`, with claims `sub` (required),
//! `role` (optional), `exp` (required) and `nbf` (optional), both checked with 5 s leeway.
//! A token whose `exp` lies further ahead than `JWT_MAX_LIFETIME_SECS` is refused: a leaked
//! token must not open private rooms for years. All time arithmetic saturates.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::{Deserialize, Serialize};

/// The claims oddsfeed reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub role: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// An authenticated connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub role: Option<String>,
    /// Unix seconds after which the identity no longer grants access.
    pub expires_at: u64,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }
}

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY: u64 = 5;

/// Verifies tokens. Without a secret every token is refused.
#[derive(Clone)]
pub struct Verifier {
    /// `None` when `JWT_SECRET` is unset.
    key: Option<DecodingKey>,
    validation: Validation,
    /// Longest time ahead an `exp` may lie, in seconds.
    max_lifetime: u64,
}

impl Verifier {
    pub fn new(secret: Option<&str>, max_lifetime_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: secret
                .filter(|s| !s.is_empty())
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            max_lifetime: max_lifetime_secs,
        }
    }

    /// The identity in a valid token, or why it is refused (said to the client).
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let Some(key) = &self.key else {
            return Err(
                "authentication is not configured on this server (JWT_SECRET is unset)".into(),
            );
        };
        let data = decode::<Claims>(token, key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_string(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                "invalid token signature".to_string()
            }
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                "token not valid yet (nbf is in the future)".to_string()
            }
            _ => format!("invalid token: {e}"),
        })?;
        if data.claims.sub.is_empty() {
            return Err("invalid token: empty sub".into());
        }
        let latest = jsonwebtoken::get_current_timestamp()
            .saturating_add(self.max_lifetime)
            .saturating_add(LEEWAY);
        let issued_for = data
            .claims
            .iat
            .map_or(0, |iat| data.claims.exp.saturating_sub(iat));
        if data.claims.exp > latest || issued_for > self.max_lifetime.saturating_add(LEEWAY) {
            return Err(format!(
                "token lives too long: exp is more than {} s ahead or after iat (JWT_MAX_LIFETIME_SECS)",
                self.max_lifetime
            ));
        }
        Ok(Identity {
            sub: data.claims.sub,
            role: data.claims.role,
            expires_at: data.claims.exp,
        })
    }
}

/// Signs a token (tests, benchmarks and operators' tooling). `nbf`, when wanted, goes
/// through [`sign_value`].
pub fn sign(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Signs arbitrary claims, for tests of claims [`Claims`] cannot express.
pub fn sign_value(
    secret: &str,
    claims: &serde_json::Value,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn far_future_expiry_and_future_nbf_are_refused() {
        let verifier = Verifier::new(Some("k"), 3600);
        let forever = sign_value("k", &json!({"sub": "u1", "exp": u64::MAX})).unwrap();
        let err = verifier.verify(&forever).unwrap_err();
        assert!(err.contains("lives too long"), "{err}");
        let two_hours = sign_value("k", &json!({"sub": "u1", "exp": now() + 7200})).unwrap();
        assert!(verifier.verify(&two_hours).is_err());
        let hour = sign_value("k", &json!({"sub": "u1", "exp": now() + 3500})).unwrap();
        assert!(verifier.verify(&hour).is_ok());
        // Issued for ten years, in its last hour now: still too long-lived.
        let old = sign_value(
            "k",
            &json!({"sub": "u1", "exp": now() + 600, "iat": now() - 315_360_000}),
        )
        .unwrap();
        assert!(
            verifier
                .verify(&old)
                .unwrap_err()
                .contains("lives too long")
        );
        let later = sign_value(
            "k",
            &json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300}),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&later).unwrap_err(),
            "token not valid yet (nbf is in the future)"
        );
        let started = sign_value(
            "k",
            &json!({"sub": "u1", "exp": now() + 600, "nbf": now() - 10}),
        )
        .unwrap();
        assert!(verifier.verify(&started).is_ok());
        let max_lifetime = Verifier::new(Some("k"), u64::MAX);
        assert!(
            max_lifetime.verify(&forever).is_ok(),
            "saturating: no overflow with the largest lifetime"
        );
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn valid_expired_forged_and_unconfigured() {
        let verifier = Verifier::new(Some("s3cret"), 86_400);
        let claims = Claims {
            sub: "u1".into(),
            role: Some("admin".into()),
            exp: now() + 60,
            iat: Some(now()),
        };
        let token = sign("s3cret", &claims).unwrap();
        let id = verifier.verify(&token).unwrap();
        assert_eq!(id.sub, "u1");
        assert!(id.is_admin());

        let expired = sign(
            "s3cret",
            &Claims {
                exp: now() - 60,
                ..claims.clone()
            },
        )
        .unwrap();
        assert_eq!(verifier.verify(&expired).unwrap_err(), "token expired");
        let forged = sign("other", &claims).unwrap();
        assert_eq!(
            verifier.verify(&forged).unwrap_err(),
            "invalid token signature"
        );
        assert!(verifier.verify("garbage").is_err());
        assert!(Verifier::new(None, 86_400).verify(&token).is_err());
        let no_role = sign(
            "s3cret",
            &Claims {
                role: None,
                ..claims
            },
        )
        .unwrap();
        assert!(!verifier.verify(&no_role).unwrap().is_admin());
    }
}
