//! API keys and tokens: the opaque key pair and the key ring that maps a presented
//! credential to an [`AuthContext`].

use http::HeaderMap;
use serde_json::{json, Value};

use super::{bearer, AuthContext, Role, ServerRole};

/// Whom a request was served as: the first caller an API resolved while serving it. The
/// request log reads it, so the credential is resolved once, by the API, and never again
/// just for logging.
pub type ServedAs = std::sync::Arc<std::sync::OnceLock<(Role, Option<uuid::Uuid>)>>;

tokio::task_local! {
    static SERVED_AS: ServedAs;
}

/// Runs `fut` (one request's handling) with `slot` receiving the caller it resolves.
pub async fn recording_caller<F: std::future::Future>(slot: ServedAs, fut: F) -> F::Output {
    SERVED_AS.scope(slot, fut).await
}

fn note_caller(ctx: &AuthContext) {
    let _ = SERVED_AS.try_with(|s| s.set((ctx.role.clone(), ctx.user_id())));
}
use crate::jwt::{JwtError, JwtKeys};

/// New-style API keys: publishable (anon) and secret (service_role).
#[derive(Debug, Clone)]
pub struct OpaqueKeys {
    pub publishable: String,
    pub secret: String,
}

impl OpaqueKeys {
    /// The well-known local pair for the default secret; otherwise keys derived from the
    /// secret, so every process sharing a secret agrees on them.
    pub fn for_secret(secret: &str) -> OpaqueKeys {
        if secret == crate::config::DEFAULT_JWT_SECRET {
            return OpaqueKeys {
                publishable: "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH".into(),
                secret: "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz".into(),
            };
        }
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let derive = |label: &str| {
            let mut m =
                Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
            m.update(label.as_bytes());
            let b =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
            b[..31].to_string()
        };
        OpaqueKeys {
            publishable: format!("sb_publishable_{}", derive("publishable")),
            secret: format!("sb_secret_{}", derive("secret")),
        }
    }
}

pub struct KeyRing {
    pub jwt: JwtKeys,
    pub opaque: OpaqueKeys,
    verified: TokenCache,
}

/// JWTs already verified, so a client sending the same token on every request (supabase-js
/// sends its key or session token each time) costs one signature check, not one per
/// request. Entries are checked against `exp` on every use; the cache empties itself when
/// full. The keys never change while the server runs, so a verified token stays valid.
#[derive(Default)]
struct TokenCache(std::sync::Mutex<std::collections::HashMap<String, (Role, Value)>>);

const TOKEN_CACHE_MAX: usize = 1024;

impl TokenCache {
    fn get(&self, token: &str) -> Option<(Role, Value)> {
        let mut map = self.0.lock().ok()?;
        let (role, claims) = map.get(token)?;
        let expired = claims
            .get("exp")
            .and_then(Value::as_f64)
            .is_some_and(|exp| exp < chrono::Utc::now().timestamp() as f64);
        if expired {
            map.remove(token);
            return None;
        }
        Some((role.clone(), claims.clone()))
    }

    fn put(&self, token: &str, role: &Role, claims: &Value) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= TOKEN_CACHE_MAX {
                map.clear();
            }
            map.insert(token.to_string(), (role.clone(), claims.clone()));
        }
    }
}

impl KeyRing {
    pub fn new(jwt: JwtKeys, opaque: OpaqueKeys) -> KeyRing {
        KeyRing {
            jwt,
            opaque,
            verified: TokenCache::default(),
        }
    }

    /// Map one presented credential to a role and claims.
    pub fn resolve(&self, token: &str) -> Result<AuthContext, JwtError> {
        let token = token.trim();
        if token.starts_with("sb_") {
            let role = if token == self.opaque.publishable {
                "anon"
            } else if token == self.opaque.secret {
                ServerRole::Service.name()
            } else {
                return Err(JwtError::InvalidApiKey);
            };
            return Ok(AuthContext {
                role: Role(role.into()),
                claims: json!({"role": role}),
                token: None,
            });
        }
        if let Some((role, claims)) = self.verified.get(token) {
            return Ok(AuthContext {
                role,
                claims,
                token: Some(token.to_string()),
            });
        }
        let claims = self.jwt.verify(token)?;
        let role = Role(
            claims
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or("anon")
                .to_string(),
        );
        self.verified.put(token, &role, &claims);
        Ok(AuthContext {
            role,
            claims,
            token: Some(token.to_string()),
        })
    }

    /// Authenticate a request from its headers (and, for WebSockets, its query string).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query_apikey: Option<&str>,
    ) -> Result<AuthContext, JwtError> {
        let ctx = if let Some(bearer) = bearer(headers) {
            self.resolve(bearer)
        } else if let Some(k) = headers
            .get("apikey")
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
        {
            self.resolve(k)
        } else if let Some(k) = query_apikey.filter(|s| !s.is_empty()) {
            self.resolve(k)
        } else {
            Ok(AuthContext::anon())
        };
        if let Ok(c) = &ctx {
            note_caller(c);
        }
        ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_JWT_SECRET;

    fn ring() -> KeyRing {
        KeyRing::new(
            JwtKeys::new(DEFAULT_JWT_SECRET),
            OpaqueKeys::for_secret(DEFAULT_JWT_SECRET),
        )
    }

    #[test]
    fn cached_tokens_still_expire_and_bad_ones_are_never_cached() {
        let r = ring();
        let now = chrono::Utc::now().timestamp();
        let soon = r
            .jwt
            .sign_hs256(&json!({"role":"authenticated","sub":"7f1b7c3e-6a39-4d2b-9a55-0e0c1d7e2f11","exp": now + 1}));
        assert_eq!(r.resolve(&soon).unwrap().role.as_str(), "authenticated");
        // From the cache.
        let again = r.resolve(&soon).unwrap();
        assert_eq!(again.role.as_str(), "authenticated");
        assert!(again.user_id().is_some());
        std::thread::sleep(std::time::Duration::from_millis(2200));
        assert!(
            r.resolve(&soon).is_err(),
            "an expired token served from the cache"
        );
        // A token with a bad signature fails every time.
        let mut forged = r.jwt.sign_hs256(&json!({"role":"service_role"}));
        forged.push('x');
        assert!(r.resolve(&forged).is_err());
        assert!(r.resolve(&forged).is_err());
    }

    #[test]
    fn no_key_is_anon_and_opaque_keys_map_to_roles() {
        let r = ring();
        let h = HeaderMap::new();
        assert_eq!(r.authenticate(&h, None).unwrap().role.as_str(), "anon");
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            r.authenticate(&h, None).unwrap().role.as_str(),
            "service_role"
        );
        let mut h = HeaderMap::new();
        h.insert("apikey", "sb_publishable_nope".parse().unwrap());
        assert_eq!(
            r.authenticate(&h, None).unwrap_err(),
            JwtError::InvalidApiKey
        );
    }

    #[test]
    fn bearer_wins_over_apikey() {
        let r = ring();
        let user = r.jwt.sign_hs256(
            &json!({"role":"authenticated","sub":"7f1b7c3e-6a39-4d2b-9a55-0e0c1d7e2f11"}),
        );
        let mut h = HeaderMap::new();
        h.insert(
            "apikey",
            "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH"
                .parse()
                .unwrap(),
        );
        h.insert("authorization", format!("Bearer {user}").parse().unwrap());
        let ctx = r.authenticate(&h, None).unwrap();
        assert_eq!(ctx.role.as_str(), "authenticated");
        assert!(ctx.user_id().is_some());
    }

    #[test]
    fn derived_opaque_keys_differ_per_secret() {
        let a = OpaqueKeys::for_secret("x".repeat(40).as_str());
        let b = OpaqueKeys::for_secret("y".repeat(40).as_str());
        assert_ne!(a.publishable, b.publishable);
        assert!(a.secret.starts_with("sb_secret_"));
    }
}
