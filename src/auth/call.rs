//! One /auth/v1 request parsed into a [`Call`]: method, path, query, a JSON body whose
//! well-known fields have GoTrue's types, and the client IP.

use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use super::error::{AuthError, AuthResult};
use super::{session, util, MAX_BODY};
use crate::http::Req;
use crate::state::AppState;

/// One parsed request.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Value,
    pub ip: String,
}

impl Call {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    /// A string field of the body; empty strings count as absent.
    pub fn s(&self, k: &str) -> Option<&str> {
        self.body
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
    pub fn b(&self, k: &str) -> Option<bool> {
        self.body.get(k).and_then(Value::as_bool)
    }
    pub fn origin(&self) -> session::Origin {
        session::Origin {
            ip: Some(self.ip.clone()).filter(|i| i != "unknown"),
            user_agent: self
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(512).collect()),
        }
    }
    /// `redirect_to` from the query (supabase-js) or the body.
    pub fn redirect_to(&self) -> Option<&str> {
        self.q("redirect_to")
            .filter(|s| !s.is_empty())
            .or_else(|| self.s("redirect_to"))
            .or_else(|| self.s("redirectTo"))
    }
    pub fn code_challenge(&self) -> AuthResult<Option<(String, String)>> {
        util::pkce_params(self.s("code_challenge"), self.s("code_challenge_method"))
    }
}

pub(super) async fn parse(state: &AppState, req: Req, path: String) -> AuthResult<Call> {
    let (parts, body) = req.into_parts();
    let query = crate::http::query_pairs(parts.uri.query());
    let ip = client_ip(state, &parts);
    let bytes = crate::http::body::read_limited(body, MAX_BODY)
        .await
        .map_err(|e| match e {
            crate::http::body::BodyError::TooLarge(n) => AuthError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_entity_too_large",
                format!("Request body too large (max {n} bytes)"),
            ),
            crate::http::body::BodyError::Read(m) => {
                AuthError::bad_request("bad_json", format!("Could not read request body: {m}"))
            }
        })?;
    let ignore_body = parts.method == Method::GET || parts.method == Method::HEAD;
    let body = if ignore_body || bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        // PostgreSQL text and jsonb cannot hold NUL characters.
        if bytes.windows(6).any(|w| w == b"\\u0000") {
            return Err(AuthError::bad_request(
                "bad_json",
                "Could not parse request body as JSON: NUL characters are not supported",
            ));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            AuthError::bad_request(
                "bad_json",
                format!("Could not parse request body as JSON: {e}"),
            )
        })?;
        if !(v.is_object() || v.is_null()) {
            return Err(AuthError::bad_request(
                "bad_json",
                "Could not parse request body as JSON: expected an object",
            ));
        }
        check_field_types(&v)?;
        v
    };
    Ok(Call {
        method: parts.method,
        path,
        query,
        headers: parts.headers,
        body,
        ip,
    })
}

/// Fields GoTrue decodes as strings or booleans: another JSON type is a 400, not a
/// silently ignored value (an `email: 123` must not become an anonymous sign-up).
fn check_field_types(v: &Value) -> AuthResult<()> {
    const STRINGS: &[&str] = &[
        "email",
        "phone",
        "password",
        "token",
        "token_hash",
        "type",
        "refresh_token",
        "code_challenge",
        "code_challenge_method",
        "redirect_to",
        "auth_code",
        "code_verifier",
        "nonce",
        "channel",
        "provider",
        "id_token",
        "new_email",
        "friendly_name",
        "factor_type",
        "challenge_id",
        "code",
        "role",
        "ban_duration",
        "id",
        "password_hash",
        "issuer",
        "client_name",
        "client_uri",
        "logo_uri",
        "client_type",
    ];
    const BOOLS: &[&str] = &[
        "create_user",
        "email_confirm",
        "phone_confirm",
        "should_soft_delete",
    ];
    let Some(o) = v.as_object() else {
        return Ok(());
    };
    for (k, val) in o {
        let bad = (STRINGS.contains(&k.as_str()) && !(val.is_string() || val.is_null()))
            || (BOOLS.contains(&k.as_str()) && !(val.is_boolean() || val.is_null()));
        if bad {
            return Err(AuthError::bad_request(
                "bad_json",
                format!("Could not parse request body as JSON: field {k} has the wrong type"),
            ));
        }
    }
    Ok(())
}

/// The peer address when the server recorded it as a request extension; the first
/// `X-Forwarded-For` hop only when configured to trust a proxy.
fn client_ip(state: &AppState, parts: &http::request::Parts) -> String {
    let peer = parts.extensions.get::<std::net::SocketAddr>().copied();
    crate::http::client_ip(state.config.auth.trust_forwarded_for, &parts.headers, peer)
        .map_or_else(|| "unknown".into(), |ip| ip.to_string())
}
