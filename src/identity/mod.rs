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
        self.0 == ServerRole::Service.name() || self.0 == "supabase_admin"
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
            role: Role(ServerRole::Service.name().into()),
            claims: json!({"role": ServerRole::Service.name()}),
            token: None,
        }
    }
    /// The user id (`sub`), for tokens issued to a user.
    pub fn user_id(&self) -> Option<uuid::Uuid> {
        self.claims.get("sub")?.as_str()?.parse().ok()
    }
}

/// The roles the server itself acts as for its own bookkeeping (never for caller work,
/// which runs as the caller's [`Role`]). The only place their names are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// Owner of the `auth` schema: every auth request's own work.
    AuthAdmin,
    /// Owner of the `storage` schema: bucket lookups, locks, upload bookkeeping.
    StorageAdmin,
    /// Owner of the `realtime` schema (and has REPLICATION for change capture).
    RealtimeAdmin,
    /// `service_role`: bypasses RLS; the functions' bookkeeping in tables users only read.
    Service,
}

impl ServerRole {
    pub const fn name(self) -> &'static str {
        match self {
            ServerRole::AuthAdmin => "supabase_auth_admin",
            ServerRole::StorageAdmin => "supabase_storage_admin",
            ServerRole::RealtimeAdmin => "supabase_realtime_admin",
            ServerRole::Service => "service_role",
        }
    }

    /// The statements that make the current transaction this role (`local`), or the
    /// session (`!local`): the role, quoted, and what the role's work needs besides (auth
    /// renders its timestamps in UTC).
    pub fn set_sql(self, local: bool) -> String {
        let scope = if local { "set local" } else { "set" };
        let mut sql = format!("{scope} role {}", crate::db::quote_ident(self.name()));
        if self == ServerRole::AuthAdmin {
            sql.push_str(&format!("; {scope} timezone to 'UTC'"));
        }
        sql
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

#[cfg(test)]
mod tests {
    use super::ServerRole;

    #[test]
    fn server_roles_are_quoted_and_auth_works_in_utc() {
        assert_eq!(
            ServerRole::StorageAdmin.set_sql(true),
            r#"set local role "supabase_storage_admin""#
        );
        assert_eq!(
            ServerRole::RealtimeAdmin.set_sql(false),
            r#"set role "supabase_realtime_admin""#
        );
        assert_eq!(
            ServerRole::AuthAdmin.set_sql(true),
            r#"set local role "supabase_auth_admin"; set local timezone to 'UTC'"#
        );
    }
}
