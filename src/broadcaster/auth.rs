//! Client authentication: HS256 JWTs signed with `JWT_SECRET`, with claims `sub` (required),
//! `role` (optional) and `exp` (required, checked with 5 s leeway).

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

/// Verifies tokens. Without a secret every token is refused.
#[derive(Clone)]
pub struct Verifier {
    /// `None` when `JWT_SECRET` is unset.
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: secret
                .filter(|s| !s.is_empty())
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
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
            _ => format!("invalid token: {e}"),
        })?;
        if data.claims.sub.is_empty() {
            return Err("invalid token: empty sub".into());
        }
        Ok(Identity {
            sub: data.claims.sub,
            role: data.claims.role,
            expires_at: data.claims.exp,
        })
    }
}

/// Signs a token (tests, benchmarks and operators' tooling).
pub fn sign(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn valid_expired_forged_and_unconfigured() {
        let verifier = Verifier::new(Some("s3cret"));
        let claims = Claims {
            sub: "u1".into(),
            role: Some("admin".into()),
            exp: now() + 60,
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
        assert!(Verifier::new(None).verify(&token).is_err());
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
