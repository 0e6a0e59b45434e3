//! The signed-in user: GET/PUT /user, POST /logout, GET /reauthenticate.

use serde_json::json;

use super::email::{self, Kind};
use super::error::{AuthError, AuthResult};
use super::guard::AuthedUser;
use super::tx::as_admin;
use super::{load_token_user, no_content, ok, password, users, util, Call};
use crate::http::Resp;
use crate::state::AppState;

pub async fn get(state: &AppState, t: AuthedUser) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        users::json(tx, u.id).await
    })
    .await
    .map(ok)
}

pub async fn update(state: &AppState, call: &Call, t: AuthedUser) -> AuthResult<Resp> {
    let cfg = &state.config.auth;
    let data = super::metadata(call, "data")?;
    if call.body.get("app_metadata").is_some_and(|v| !v.is_null()) {
        return Err(AuthError::forbidden(
            "not_admin",
            "Updating app_metadata requires admin privileges",
        ));
    }
    let email = call.s("email").map(util::validate_email).transpose()?;
    let phone = call.s("phone").map(util::validate_phone).transpose()?;
    let new_password = call.s("password");
    if let Some(p) = new_password {
        password::check_strength(cfg, p)?;
    }
    let flow = call.code_challenge()?;
    let redirect = util::redirect_for(cfg, call.redirect_to());
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        if let Some(p) = new_password {
            change_password(state, call, tx, &u, &t, p, email.is_some()).await?;
        }
        if let Some(d) = &data {
            let merged = users::merge_meta(&u.user_meta, d);
            tx.execute(
                "update auth.users set raw_user_meta_data = $2, updated_at = now() where id = $1",
                &[&u.id, &merged],
            )
            .await
            .map_err(AuthError::pg)?;
        }
        if let Some(e) = email.as_deref().filter(|e| Some(*e) != u.email.as_deref()) {
            change_email(state, tx, &u, e, flow.as_ref(), &redirect).await?;
        }
        if let Some(p) = phone.as_deref().filter(|p| Some(*p) != u.phone.as_deref()) {
            change_phone(state, tx, &u, p, &redirect).await?;
        }
        super::audit::record(tx, &call.ip, Some(u.id), "user_modified", None).await?;
        users::json(tx, u.id).await
    })
    .await
    .map(ok)
}

/// A new password: refused for an anonymous user with no address (unless this update adds
/// an email), checked against the reauthentication nonce when one is given, never the old
/// one. Every other session ends.
async fn change_password(
    state: &AppState,
    call: &Call,
    tx: &tokio_postgres::Transaction<'_>,
    u: &users::User,
    t: &AuthedUser,
    p: &str,
    adding_email: bool,
) -> AuthResult<()> {
    let cfg = &state.config.auth;
    if u.is_anonymous && u.email.is_none() && u.phone.is_none() && !adding_email {
        return Err(AuthError::unprocessable(
            "validation_failed",
            "Updating password of an anonymous user without an email or phone is not allowed",
        ));
    }
    if let Some(n) = call.s("nonce") {
        let addr = u.email.clone().or(u.phone.clone()).unwrap_or_default();
        let valid = !u.reauthentication_token.is_empty()
            && util::token_hash(&addr, n) == u.reauthentication_token
            && u.reauthentication_sent_at
                .is_some_and(|s| (chrono::Utc::now() - s).num_seconds() <= cfg.otp_expiry as i64);
        if !valid {
            return Err(AuthError::unprocessable(
                "reauthentication_not_valid",
                "Requires reauthentication",
            ));
        }
    }
    if password::verify(p, u.encrypted_password.as_deref(), &state.auth.dummy_hash).await {
        return Err(AuthError::unprocessable(
            "same_password",
            "New password should be different from the old password.",
        ));
    }
    let hash = password::hash(p, cfg.password_hash_cost).await?;
    tx.execute(
        "update auth.users set encrypted_password = $2, reauthentication_token = '',
           updated_at = now() where id = $1",
        &[&u.id, &hash],
    )
    .await
    .map_err(AuthError::pg)?;
    super::audit::record(tx, &call.ip, Some(u.id), "user_updated_password", None).await?;
    // A password change signs out every other session (GoTrue keeps the current one).
    tx.execute(
        "delete from auth.sessions where user_id = $1 and ($2::uuid is null or id <> $2)",
        &[&u.id, &t.session_id],
    )
    .await
    .map_err(AuthError::pg)?;
    Ok(())
}

/// A new email: taken at once for an anonymous user when sign-ups autoconfirm, otherwise
/// staged and confirmed by mail (to both addresses with secure email change).
async fn change_email(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    u: &users::User,
    e: &str,
    flow: Option<&(String, String)>,
    redirect: &str,
) -> AuthResult<()> {
    let cfg = &state.config.auth;
    users::refuse_taken_email(tx, e, u.id).await?;
    tx.execute(
        "update auth.users set email_change = $2, updated_at = now() where id = $1",
        &[&u.id, &e],
    )
    .await
    .map_err(AuthError::pg)?;
    if u.is_anonymous && cfg.autoconfirm {
        // An anonymous user adding an email is like signing up.
        tx.execute(
            "update auth.users set email = email_change, email_change = '', email_confirmed_at = now(),
               is_anonymous = false, updated_at = now() where id = $1",
            &[&u.id],
        )
        .await.map_err(AuthError::pg)?;
        email::ensure_email_identity(tx, u.id).await?;
    } else {
        let u2 = users::by_id(tx, u.id)
            .await?
            .ok_or_else(AuthError::user_not_found)?;
        if let Some(f) = flow {
            email::create_flow_state(tx, u.id, f, "email_change").await?;
        }
        tx.execute(
            "update auth.users set email_change_token_current = '', email_change_confirm_status = 0 where id = $1",
            &[&u.id],
        )
        .await.map_err(AuthError::pg)?;
        email::send(state, tx, &u2, Kind::EmailChange, e, redirect, true).await?;
        if let Some(current) = u2.email.as_deref().filter(|_| cfg.secure_email_change) {
            email::send(
                state,
                tx,
                &u2,
                Kind::EmailChangeCurrent,
                current,
                redirect,
                true,
            )
            .await?;
        }
    }
    Ok(())
}

/// A new phone: taken at once when sign-ups autoconfirm, otherwise staged and confirmed by SMS.
async fn change_phone(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    u: &users::User,
    p: &str,
    redirect: &str,
) -> AuthResult<()> {
    let cfg = &state.config.auth;
    users::refuse_taken_phone(tx, p, u.id).await?;
    if cfg.autoconfirm {
        tx.execute(
            "update auth.users set phone = $2, phone_confirmed_at = now(), updated_at = now() where id = $1",
            &[&u.id, &p],
        )
        .await.map_err(AuthError::pg)?;
    } else {
        tx.execute(
            "update auth.users set phone_change = $2, updated_at = now() where id = $1",
            &[&u.id, &p],
        )
        .await
        .map_err(AuthError::pg)?;
        let u2 = users::by_id(tx, u.id)
            .await?
            .ok_or_else(AuthError::user_not_found)?;
        email::send(state, tx, &u2, Kind::PhoneChange, p, redirect, true).await?;
    }
    Ok(())
}

pub async fn logout(state: &AppState, call: &Call, t: AuthedUser) -> AuthResult<Resp> {
    let scope = call.q("scope").unwrap_or("global");
    if !matches!(scope, "global" | "local" | "others") {
        return Err(AuthError::validation(format!(
            "Unsupported logout scope \"{scope}\""
        )));
    }
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        match (scope, t.session_id) {
            ("local", Some(s)) => {
                tx.execute("delete from auth.sessions where id = $1", &[&s])
                    .await
                    .map_err(AuthError::pg)?;
            }
            ("others", Some(s)) => {
                tx.execute(
                    "delete from auth.sessions where user_id = $1 and id <> $2",
                    &[&u.id, &s],
                )
                .await
                .map_err(AuthError::pg)?;
            }
            ("others", None) => {}
            _ => {
                tx.execute("delete from auth.sessions where user_id = $1", &[&u.id])
                    .await
                    .map_err(AuthError::pg)?;
            }
        }
        super::audit::record(
            tx,
            &call.ip,
            Some(u.id),
            "logout",
            Some(json!({"scope": scope})),
        )
        .await?;
        Ok(())
    })
    .await?;
    Ok(no_content())
}

pub async fn reauthenticate(state: &AppState, t: AuthedUser) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        let (to, kind) = match (&u.email, &u.phone) {
            (Some(e), _) => {
                if u.email_confirmed_at.is_none() {
                    return Err(AuthError::unprocessable(
                        "email_not_confirmed",
                        "Please verify your email first.",
                    ));
                }
                (e.clone(), Kind::Reauthentication)
            }
            (_, Some(p)) => (p.clone(), Kind::Reauthentication),
            _ => {
                return Err(AuthError::validation(
                    "Reauthentication requires the user to have an email or a phone number",
                ))
            }
        };
        let site = state.config.auth.site_url.clone();
        email::send(state, tx, &u, kind, &to, &site, true).await?;
        Ok(json!({}))
    })
    .await
    .map(ok)
}
