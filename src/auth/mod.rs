//! /auth/v1: a GoTrue-compatible API (what supabase-js 2.119 speaks to).
//!
//! Every request is parsed into a [`Call`] (method, path, query, JSON body, client IP) and
//! an [`Endpoint`] (pure, tested), its [`Privilege`] is checked, and it is answered with
//! `X-Supabase-Api-Version: 2024-01-01`; errors are GoTrue's `{code, message}` (plus the
//! legacy `msg`/`error_code`). The server's own work on auth tables runs in one
//! transaction per request as `supabase_auth_admin`, never as the caller.
//!
//! Mail: every message is written to `auth.oxibase_outbox` in the request's transaction.
//! With `auth.smtp_url` a background task hands it to SMTP (retrying) and then clears the
//! code and link from the row; without it the outbox is the local inbox, like Supabase's
//! Inbucket: `GET /auth/v1/inbox?email=<address>` with the service_role key returns the
//! newest messages with their `otp`, `token_hash` and `action_link` (or read the table).

mod admin;
mod audit;
mod email;
pub mod error;
mod guard;
mod mfa;
mod oauth;
mod page;
mod passkey;
mod password;
mod ratelimit;
mod session;
mod signup;
mod token;
mod tx;
mod user;
mod users;
mod util;

use deadpool_postgres::Pool;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use crate::config::Config;
use crate::http::{error_response, json_response, status_response, Req, Resp};
use crate::state::AppState;
use error::{AuthError, AuthResult};
pub use guard::caller;
use guard::{AdminCaller, AuthedUser};

/// Auth bodies are small; a bigger one is refused before parsing.
const MAX_BODY: usize = 256 * 1024;
/// Largest user_metadata / app_metadata accepted, serialized.
pub const MAX_METADATA: usize = 64 * 1024;

/// This API's share of the application state.
pub struct State {
    pub smtp: Option<email::Smtp>,
    /// Custom email templates by Supabase's names (see `auth.email_templates_dir`).
    pub templates: std::collections::HashMap<String, String>,
    /// See [`password::dummy_hash`].
    pub dummy_hash: String,
}

pub async fn init(config: &Config, _pool: &Pool) -> Result<State, String> {
    let a = &config.auth;
    if !(4..=31).contains(&a.password_hash_cost) {
        return Err(format!(
            "auth.password_hash_cost must be between 4 and 31 (got {})",
            a.password_hash_cost
        ));
    }
    if !matches!(
        a.password_requirements.as_str(),
        "" | "letters_digits" | "lower_upper_letters_digits" | "lower_upper_letters_digits_symbols"
    ) {
        return Err(format!(
            "auth.password_requirements: unknown value '{}'",
            a.password_requirements
        ));
    }
    let smtp = match &config.auth.smtp_url {
        Some(url) => Some(email::Smtp::new(url.expose(), &config.auth.smtp_sender)?),
        None => None,
    };
    if !a.custom_access_token_hook.is_empty()
        && util::hook_function(&a.custom_access_token_hook).is_none()
    {
        return Err(format!(
            "auth.custom_access_token_hook: expected schema.function or pg-functions://db/schema/function, got '{}'",
            a.custom_access_token_hook
        ));
    }
    let cost = a.password_hash_cost;
    let dummy_hash = tokio::task::spawn_blocking(move || password::dummy_hash(cost))
        .await
        .map_err(|e| e.to_string())?;
    let templates = email::load_templates(a.email_templates_dir.as_deref())?;
    Ok(State {
        smtp,
        dummy_hash,
        templates,
    })
}

/// Background work: deliver queued mail (when SMTP is configured) and sweep old rate-limit
/// windows, expired flow states and old outbox rows.
pub fn spawn_background(state: &AppState) {
    let s = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            if s.auth.smtp.is_some() {
                email::deliver_pending(&s).await;
            }
            if n.is_multiple_of(300) {
                sweep(&s).await;
            }
            n += 1;
        }
    });
}

async fn sweep(state: &AppState) {
    let Ok(c) = state.pool.get().await else {
        return;
    };
    let sql = format!(
        "begin; {};
         delete from auth.oxibase_rate_limits where window_start < now() - interval '2 hours';
         delete from auth.flow_state where created_at < now() - interval '1 day';
         delete from auth.webauthn_challenges where expires_at < now() - interval '1 hour';
         delete from auth.mfa_challenges where created_at < now() - interval '1 day';
         delete from auth.oxibase_outbox where created_at < now() - interval '7 days';
         commit;",
        crate::identity::ServerRole::AuthAdmin.set_sql(true)
    );
    let r = c.batch_execute(&sql).await;
    if let Err(e) = r {
        let _ = c.batch_execute("rollback").await;
        tracing::warn!(error = %crate::db::error_text(&e), "auth sweep failed");
    }
}

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

pub async fn handle(state: &AppState, req: Req, path: &str) -> Resp {
    let path = path.trim_end_matches('/').to_string();
    let mut resp = match parse(state, req, path).await {
        Ok(call) => match route(state, &call).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        },
        Err(e) => error_response(&e),
    };
    resp.headers_mut().insert(
        "x-supabase-api-version",
        HeaderValue::from_static("2024-01-01"),
    );
    resp
}

async fn parse(state: &AppState, req: Req, path: String) -> AuthResult<Call> {
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
    if state.config.auth.trust_forwarded_for {
        if let Some(f) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        {
            return f.to_string();
        }
    }
    if let Some(a) = parts.extensions.get::<std::net::SocketAddr>() {
        return a.ip().to_string();
    }
    "unknown".into()
}

/// Every /auth/v1 route, parsed from method and path alone (no I/O), so the table can be
/// tested exhaustively. Sub-APIs (admin, factors, passkeys) route their own tails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Settings,
    Jwks,
    Signup,
    Token,
    GetUser,
    UpdateUser,
    Logout,
    Reauthenticate,
    Otp,
    VerifyPost,
    VerifyGet,
    Recover,
    Resend,
    Inbox,
    Invite,
    Admin(Vec<String>),
    Factors(Vec<String>),
    Passkeys(Vec<String>),
    /// Known GoTrue features this server answers with GoTrue's "disabled" error.
    Disabled(DisabledFeature),
    /// Known GoTrue endpoints not built here (501 naming the endpoint).
    Unsupported,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisabledFeature {
    ExternalProvider,
    ManualLinking,
    Saml,
}

/// Who may call an endpoint: [`route`] makes the check and hands the handler its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Anyone with (or without) an API key.
    Public,
    /// A user's access token.
    User,
    /// service_role or supabase_admin.
    Admin,
}

impl Endpoint {
    pub fn parse(method: &str, path: &str) -> Endpoint {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let tail = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match (method, segs.as_slice()) {
            ("GET", ["health"]) => Endpoint::Health,
            ("GET", ["settings"]) => Endpoint::Settings,
            ("GET", [".well-known", "jwks.json"]) => Endpoint::Jwks,
            ("POST", ["signup"]) => Endpoint::Signup,
            ("POST", ["token"]) => Endpoint::Token,
            ("GET", ["user"]) => Endpoint::GetUser,
            ("PUT", ["user"]) => Endpoint::UpdateUser,
            ("POST", ["logout"]) => Endpoint::Logout,
            ("GET", ["reauthenticate"]) => Endpoint::Reauthenticate,
            ("POST", ["otp"]) | ("POST", ["magiclink"]) => Endpoint::Otp,
            ("POST", ["verify"]) => Endpoint::VerifyPost,
            ("GET", ["verify"]) => Endpoint::VerifyGet,
            ("POST", ["recover"]) => Endpoint::Recover,
            ("POST", ["resend"]) => Endpoint::Resend,
            ("GET", ["inbox"]) => Endpoint::Inbox,
            ("POST", ["invite"]) => Endpoint::Invite,
            (_, ["admin", "sso" | "custom-providers", ..])
            | (_, ["oauth" | "scim", ..])
            | (_, [".well-known", "openid-configuration" | "oauth-authorization-server"]) => {
                Endpoint::Unsupported
            }
            (_, ["admin", rest @ ..]) => Endpoint::Admin(tail(rest)),
            (_, ["factors", rest @ ..]) => Endpoint::Factors(tail(rest)),
            (_, ["passkeys", rest @ ..]) => Endpoint::Passkeys(tail(rest)),
            ("GET", ["authorize"]) | (_, ["callback"]) => {
                Endpoint::Disabled(DisabledFeature::ExternalProvider)
            }
            ("GET", ["user", "identities", "authorize"])
            | ("DELETE", ["user", "identities", _]) => {
                Endpoint::Disabled(DisabledFeature::ManualLinking)
            }
            ("POST", ["sso"]) | ("GET" | "POST", ["sso", ..]) => {
                Endpoint::Disabled(DisabledFeature::Saml)
            }
            _ => Endpoint::Unknown,
        }
    }

    pub fn privilege(&self) -> Privilege {
        match self {
            Endpoint::GetUser
            | Endpoint::UpdateUser
            | Endpoint::Logout
            | Endpoint::Reauthenticate
            | Endpoint::Factors(_) => Privilege::User,
            Endpoint::Admin(_) | Endpoint::Invite | Endpoint::Inbox => Privilege::Admin,
            Endpoint::Unsupported => Privilege::Public,
            Endpoint::Passkeys(rest) => match rest.first().map(String::as_str) {
                Some("authentication") => Privilege::Public,
                _ => Privilege::User,
            },
            _ => Privilege::Public,
        }
    }
}

fn rest(r: &[String]) -> Vec<&str> {
    r.iter().map(String::as_str).collect()
}

async fn route(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let endpoint = Endpoint::parse(call.method.as_str(), &call.path);
    // The privilege is checked here once, before any work; the guard it yields is what the
    // handler needs, so no handler runs unchecked and none checks again.
    match endpoint.privilege() {
        Privilege::Public => route_public(state, call, endpoint).await,
        Privilege::User => {
            let user = guard::user(state, call)?;
            route_user(state, call, endpoint, user).await
        }
        Privilege::Admin => {
            let admin = guard::admin(state, call)?;
            route_admin(state, call, endpoint, admin).await
        }
    }
}

/// An endpoint the privilege table and the dispatch below disagree on (a bug, caught by
/// the route-table test).
fn misrouted(endpoint: &Endpoint) -> AuthError {
    AuthError::internal(
        "Unexpected error",
        format!("{endpoint:?} dispatched under the wrong privilege"),
    )
}

async fn route_user(
    state: &AppState,
    call: &Call,
    endpoint: Endpoint,
    user: AuthedUser,
) -> AuthResult<Resp> {
    match endpoint {
        Endpoint::GetUser => user::get(state, user).await,
        Endpoint::UpdateUser => user::update(state, call, user).await,
        Endpoint::Logout => user::logout(state, call, user).await,
        Endpoint::Reauthenticate => user::reauthenticate(state, user).await,
        Endpoint::Factors(r) => mfa::route(state, call, user, &rest(&r)).await,
        Endpoint::Passkeys(r) => passkey::route_user(state, call, user, &rest(&r)).await,
        e => Err(misrouted(&e)),
    }
}

async fn route_admin(
    state: &AppState,
    call: &Call,
    endpoint: Endpoint,
    admin: AdminCaller,
) -> AuthResult<Resp> {
    match endpoint {
        Endpoint::Inbox => email::inbox(state, call).await,
        Endpoint::Invite => admin::invite(state, call, admin).await,
        Endpoint::Admin(r) => admin::route(state, call, admin, &rest(&r)).await,
        e => Err(misrouted(&e)),
    }
}

async fn route_public(state: &AppState, call: &Call, endpoint: Endpoint) -> AuthResult<Resp> {
    match endpoint {
        Endpoint::Health => Ok(ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "name": "GoTrue",
            "description": "oxibase's GoTrue-compatible auth API"
        }))),
        Endpoint::Settings => Ok(ok(settings(&state.config))),
        Endpoint::Jwks => Ok(ok(state.keys.jwt.public_jwks())),
        Endpoint::Signup => signup::signup(state, call).await,
        Endpoint::Token => token::token(state, call).await,
        Endpoint::Otp => email::otp(state, call).await,
        Endpoint::VerifyPost => email::verify_post(state, call).await,
        Endpoint::VerifyGet => email::verify_get(state, call).await,
        Endpoint::Recover => email::recover(state, call).await,
        Endpoint::Resend => email::resend(state, call).await,
        Endpoint::Passkeys(r) => passkey::route_public(state, call, &rest(&r)).await,
        Endpoint::Disabled(DisabledFeature::ExternalProvider) => Err(AuthError::validation(
            "Unsupported provider: provider is not enabled",
        )),
        Endpoint::Disabled(DisabledFeature::ManualLinking) => Err(AuthError::not_found(
            "manual_linking_disabled",
            "Manual linking is disabled",
        )),
        Endpoint::Disabled(DisabledFeature::Saml) => Err(AuthError::not_found(
            "saml_provider_disabled",
            "SAML 2.0 is disabled",
        )),
        Endpoint::Unsupported => Err(AuthError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            format!(
                "{} /auth/v1/{} is not implemented by oxibase",
                call.method, call.path
            ),
        )),
        Endpoint::Unknown => Err(AuthError::not_found(
            "not_found",
            format!("{} /auth/v1/{} is not supported", call.method, call.path),
        )),
        e => Err(misrouted(&e)),
    }
}

pub fn ok(v: Value) -> Resp {
    json_response(StatusCode::OK, &v)
}

pub fn no_content() -> Resp {
    status_response(StatusCode::NO_CONTENT)
}

fn settings(cfg: &Config) -> Value {
    let a = &cfg.auth;
    let mut external = serde_json::Map::new();
    for p in [
        "apple",
        "azure",
        "bitbucket",
        "discord",
        "facebook",
        "figma",
        "fly",
        "github",
        "gitlab",
        "google",
        "keycloak",
        "kakao",
        "linkedin",
        "linkedin_oidc",
        "notion",
        "spotify",
        "slack",
        "slack_oidc",
        "workos",
        "twitch",
        "twitter",
        "x",
        "zoom",
        "saml",
        "web3_solana",
        "web3_ethereum",
    ] {
        external.insert(p.into(), json!(false));
    }
    external.insert("anonymous_users".into(), json!(a.anonymous_sign_ins));
    external.insert("email".into(), json!(true));
    external.insert("phone".into(), json!(true));
    json!({
        "external": external,
        "disable_signup": a.disable_signup,
        "mailer_autoconfirm": a.autoconfirm,
        "phone_autoconfirm": a.autoconfirm,
        "sms_provider": "",
        "saml_enabled": false,
        "passkey_enabled": a.passkeys,
    })
}

// ------------------------------------------------------------------ shared plumbing

/// Check the token's user and session still exist (inside the request's transaction).
pub async fn load_token_user(
    tx: &tokio_postgres::Transaction<'_>,
    t: &AuthedUser,
) -> AuthResult<users::User> {
    let u = users::by_id(tx, t.user_id).await?;
    let Some(u) = u.filter(|u| u.deleted_at.is_none()) else {
        return Err(AuthError::forbidden(
            "user_not_found",
            "User from sub claim in JWT does not exist",
        ));
    };
    if u.is_banned() {
        return Err(AuthError::forbidden("user_banned", "User is banned"));
    }
    if let Some(sid) = t.session_id {
        let found = tx
            .query_opt(
                "select 1 from auth.sessions where id = $1 and user_id = $2",
                &[&sid, &t.user_id],
            )
            .await?;
        if found.is_none() {
            return Err(AuthError::forbidden(
                "session_not_found",
                "Session from session_id claim in JWT does not exist",
            ));
        }
    }
    Ok(u)
}

/// Metadata from the body: an object (or absent), not larger than [`MAX_METADATA`].
pub fn metadata(call: &Call, key: &str) -> AuthResult<Option<Value>> {
    match call.body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            if v.to_string().len() > MAX_METADATA {
                return Err(AuthError::validation(format!(
                    "{key} is too large (max {MAX_METADATA} bytes)"
                )));
            }
            Ok(Some(v.clone()))
        }
        Some(_) => Err(AuthError::bad_request(
            "bad_json",
            format!("Could not parse request body as JSON: {key} must be an object"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        use Endpoint as E;
        use Privilege as P;
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let table: Vec<(&str, &str, Endpoint, Privilege)> = vec![
            ("GET", "health", E::Health, P::Public),
            ("GET", "settings", E::Settings, P::Public),
            ("GET", ".well-known/jwks.json", E::Jwks, P::Public),
            ("POST", "signup", E::Signup, P::Public),
            ("POST", "token", E::Token, P::Public),
            ("GET", "user", E::GetUser, P::User),
            ("PUT", "user", E::UpdateUser, P::User),
            ("POST", "user", E::Unknown, P::Public),
            ("POST", "logout", E::Logout, P::User),
            ("GET", "logout", E::Unknown, P::Public),
            ("GET", "reauthenticate", E::Reauthenticate, P::User),
            ("POST", "otp", E::Otp, P::Public),
            ("POST", "magiclink", E::Otp, P::Public),
            ("POST", "verify", E::VerifyPost, P::Public),
            ("GET", "verify", E::VerifyGet, P::Public),
            ("POST", "recover", E::Recover, P::Public),
            ("POST", "resend", E::Resend, P::Public),
            ("GET", "inbox", E::Inbox, P::Admin),
            ("POST", "invite", E::Invite, P::Admin),
            ("GET", "admin/users", E::Admin(v(&["users"])), P::Admin),
            (
                "DELETE",
                "admin/users/x",
                E::Admin(v(&["users", "x"])),
                P::Admin,
            ),
            ("POST", "factors", E::Factors(vec![]), P::User),
            (
                "POST",
                "factors/f/verify",
                E::Factors(v(&["f", "verify"])),
                P::User,
            ),
            (
                "POST",
                "passkeys/authentication/options",
                E::Passkeys(v(&["authentication", "options"])),
                P::Public,
            ),
            (
                "POST",
                "passkeys/registration/options",
                E::Passkeys(v(&["registration", "options"])),
                P::User,
            ),
            ("GET", "passkeys", E::Passkeys(vec![]), P::User),
            (
                "GET",
                "authorize",
                E::Disabled(DisabledFeature::ExternalProvider),
                P::Public,
            ),
            (
                "GET",
                "user/identities/authorize",
                E::Disabled(DisabledFeature::ManualLinking),
                P::Public,
            ),
            ("POST", "sso", E::Disabled(DisabledFeature::Saml), P::Public),
            ("GET", "nope", E::Unknown, P::Public),
            ("GET", "admin/audit", E::Admin(v(&["audit"])), P::Admin),
            ("GET", "admin/sso/providers", E::Unsupported, P::Public),
            ("POST", "oauth/token", E::Unsupported, P::Public),
            (
                "GET",
                ".well-known/openid-configuration",
                E::Unsupported,
                P::Public,
            ),
            ("GET", "", E::Unknown, P::Public),
        ];
        for (m, path, want, privilege) in table {
            let got = Endpoint::parse(m, path);
            assert_eq!(got, want, "{m} {path}");
            assert_eq!(got.privilege(), privilege, "{m} {path}");
        }
    }
}
