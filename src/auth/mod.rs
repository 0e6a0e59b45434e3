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
mod call;
mod email;
mod endpoint;
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
use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::config::Config;
use crate::http::{error_response, json_response, status_response, Req, Resp};
use crate::state::AppState;
use call::parse;
pub use call::Call;
pub use endpoint::{DisabledFeature, Endpoint, Privilege};
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
    /// See [`password::DummyHash`].
    pub dummy_hash: password::DummyHash,
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
    let dummy_hash = password::DummyHash::new(a.password_hash_cost);
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
    let warm = state.clone();
    tokio::spawn(async move {
        warm.auth.dummy_hash.get().await;
    });
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

/// An auth API call made in-process by the built-in dashboard, as the service_role (the
/// server's own secret key): the same endpoint parsing, privilege check and handlers as
/// `/auth/v1/<path>`, so the dashboard has no second implementation of user management.
pub async fn call_as_service(
    state: &AppState,
    method: http::Method,
    path: &str,
    query: Vec<(String, String)>,
    body: Value,
    ip: String,
) -> Resp {
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&state.keys.opaque.secret) {
        headers.insert("apikey", v);
    }
    let call = Call {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
        ip,
    };
    match route(state, &call).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
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
            .await
            .map_err(AuthError::pg)?;
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
