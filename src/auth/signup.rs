//! POST /signup: email + password, phone + password, or anonymous (no email, no phone).

use serde_json::{json, Value};

use super::email::{self, Kind};
use super::error::{AuthError, AuthResult};
use super::tx::as_admin;
use super::users::{self, NewUser};
use super::{ok, password, ratelimit, session, util, Call};
use crate::http::Resp;
use crate::state::AppState;

pub async fn signup(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let (email, phone) = (call.s("email"), call.s("phone"));
    // Anonymous sign-ins have their own limit (the CLI's `anonymous_users`).
    let action = if email.is_none() && phone.is_none() {
        "anonymous"
    } else {
        "signup"
    };
    ratelimit::check_ip(state, call, action).await?;
    let cfg = &state.config.auth;
    if cfg.disable_signup {
        return Err(AuthError::unprocessable(
            "signup_disabled",
            "Signups not allowed for this instance",
        ));
    }
    let data = super::metadata(call, "data")?.unwrap_or_else(|| json!({}));
    if email.is_none() && phone.is_none() {
        return anonymous(state, call, data).await;
    }
    if email.is_some() && phone.is_some() {
        return Err(AuthError::validation(
            "Only an email address or phone number should be provided on signup.",
        ));
    }
    let flow = call.code_challenge()?;
    if flow.is_some() && phone.is_some() {
        return Err(AuthError::validation(
            "PKCE not supported for phone signups",
        ));
    }
    let pw = call
        .s("password")
        .ok_or_else(|| AuthError::validation("Signup requires a valid password"))?;
    let email = email.map(util::validate_email).transpose()?;
    let phone = phone.map(util::validate_phone).transpose()?;
    password::check_strength(cfg, pw)?;
    let hash = password::hash(pw, cfg.password_hash_cost).await?;
    let redirect = util::redirect_for(cfg, call.redirect_to());

    as_admin(state, async |tx| {
        let existing = users::by_email_or_phone(tx, email.as_deref(), phone.as_deref()).await?;
        if let Some(u) = existing {
            if u.is_confirmed() || cfg.autoconfirm {
                if cfg.autoconfirm {
                    return Err(AuthError::unprocessable(
                        "user_already_exists",
                        "User already registered",
                    ));
                }
                // Confirmations are on: answer as for a new sign-up so the response does
                // not tell whether the address is registered.
                return Ok(obfuscated_user(email.as_deref(), phone.as_deref(), &data));
            }
            // Registered but never confirmed: take the new password and data, send again.
            tx.execute(
                "update auth.users set encrypted_password = $2, raw_user_meta_data = $3,
                   updated_at = now() where id = $1",
                &[&u.id, &hash, &data],
            )
            .await
            .map_err(AuthError::pg)?;
            return send_confirmation(
                state,
                tx,
                u.id,
                email.as_deref(),
                phone.as_deref(),
                &redirect,
                flow.as_ref(),
            )
            .await;
        }
        let id = users::create(
            tx,
            NewUser {
                password_hash: Some(hash),
                email_confirmed: cfg.autoconfirm && email.is_some(),
                phone_confirmed: cfg.autoconfirm && phone.is_some(),
                ..NewUser::new(email.as_deref(), phone.as_deref(), data.clone())
            },
        )
        .await
        .map_err(|e| match e.code {
            // A concurrent sign-up for the same address won the race.
            "email_exists" | "phone_exists" => {
                AuthError::unprocessable("user_already_exists", "User already registered")
            }
            _ => e,
        })?;
        let provider = if email.is_some() { "email" } else { "phone" };
        super::audit::record(
            tx,
            &call.ip,
            Some(id),
            "user_signedup",
            Some(json!({"provider": provider})),
        )
        .await?;
        if cfg.autoconfirm {
            return session::issue(state, tx, id, "password", &call.origin()).await;
        }
        send_confirmation(
            state,
            tx,
            id,
            email.as_deref(),
            phone.as_deref(),
            &redirect,
            flow.as_ref(),
        )
        .await
    })
    .await
    .map(ok)
}

/// Send user `id` the sign-up confirmation (email, else SMS) and return its User JSON.
async fn send_confirmation(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    id: uuid::Uuid,
    email: Option<&str>,
    phone: Option<&str>,
    redirect: &str,
    flow: Option<&(String, String)>,
) -> AuthResult<Value> {
    let u = &users::by_id(tx, id)
        .await?
        .ok_or_else(AuthError::user_not_found)?;
    if let Some(e) = email {
        if let Some(f) = flow {
            email::create_flow_state(tx, u.id, f, "email/signup").await?;
        }
        email::send(state, tx, u, Kind::Signup, e, redirect, true).await?;
    } else if let Some(p) = phone {
        email::send(state, tx, u, Kind::Sms, p, redirect, true).await?;
    }
    users::json(tx, id).await
}

async fn anonymous(state: &AppState, call: &Call, data: Value) -> AuthResult<Resp> {
    if !state.config.auth.anonymous_sign_ins {
        return Err(AuthError::unprocessable(
            "anonymous_provider_disabled",
            "Anonymous sign-ins are disabled",
        ));
    }
    as_admin(state, async |tx| {
        let id = users::create(
            tx,
            NewUser {
                is_anonymous: true,
                ..NewUser::new(None, None, data)
            },
        )
        .await?;
        super::audit::record(
            tx,
            &call.ip,
            Some(id),
            "user_signedup",
            Some(json!({"provider": "anonymous"})),
        )
        .await?;
        session::issue(state, tx, id, "anonymous", &call.origin()).await
    })
    .await
    .map(ok)
}

/// What GoTrue answers for an already-registered address when confirmations are on.
fn obfuscated_user(email: Option<&str>, phone: Option<&str>, data: &Value) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    json!({
        "id": uuid::Uuid::new_v4(),
        "aud": "authenticated",
        "role": "authenticated",
        "email": email.unwrap_or(""),
        "phone": phone.unwrap_or(""),
        "confirmation_sent_at": now,
        "app_metadata": {"provider": if email.is_some() {"email"} else {"phone"}, "providers": [if email.is_some() {"email"} else {"phone"}]},
        "user_metadata": data,
        "identities": [],
        "created_at": now,
        "updated_at": now,
        "is_anonymous": false,
    })
}
