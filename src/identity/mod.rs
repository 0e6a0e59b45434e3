//! Identity: who is calling. The caller's database role and verified claims
//! ([`AuthContext`]), how a request is authenticated ([`KeyRing`]: the `Authorization:
//! Bearer` token, else the `apikey` header or query parameter), and the server's own roles.
//! A request with no key at all is `anon` (the postgrest-js suite sends none). Each API
//! turns a [`crate::jwt::JwtError`] into its own error shape. `http/` and `db/` both depend
//! on this module; it depends on neither.

pub mod keys;

use http::HeaderMap;
use serde_json::{json, Value};

pub use keys::{KeyRing, OpaqueKeys};

/// The database role a request runs as (the JWT's `role` claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role(pub String);

impl Role {
    pub fn anon() -> Role {
        Role("anon".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// service_role and supabase_admin bypass RLS and may use admin routes.
    pub fn is_service(&self) -> bool {
        matches!(self.0.as_str(), "service_role" | "supabase_admin")
    }
    pub fn is_anon(&self) -> bool {
        self.0 == "anon"
    }
}

#[derive(Debug, Clone)]
pub struct AuthContext {
    pub role: Role,
    /// The verified claims (for API keys, the key's own claims).
    pub claims: Value,
    /// The raw bearer token, when one was sent.
    pub token: Option<String>,
}

impl AuthContext {
    pub fn anon() -> AuthContext {
        AuthContext {
            role: Role::anon(),
            claims: json!({"role": "anon"}),
            token: None,
        }
    }
    pub fn service() -> AuthContext {
        AuthContext {
            role: Role("service_role".into()),
            claims: json!({"role": "service_role"}),
            token: None,
        }
    }
    /// The user id (`sub`), for tokens issued to a user.
    pub fn user_id(&self) -> Option<uuid::Uuid> {
        self.claims.get("sub")?.as_str()?.parse().ok()
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}
