//! POST /otp (magic link, email or SMS code), /recover and /resend.

use serde_json::json;

use super::{create_flow_state, send, Kind};
use crate::auth::error::{AuthError, AuthResult};
use crate::auth::tx::as_admin;
use crate::auth::users::{self, NewUser, User};
use crate::auth::{ok, ratelimit, util, Call};
use crate::http::Resp;
use crate::state::AppState;

// ------------------------------------------------------------------ POST /otp

pub async fn otp(state: &AppState, call: &Call) -> AuthResult<Resp> {
    ratelimit::check_ip(state, call, "otp").await?;
    let cfg = &state.config.auth;
    let (email, phone) = (call.s("email"), call.s("phone"));
    if email.is_some() && phone.is_some() {
        return Err(AuthError::validation(
            "Only an email address or phone number should be provided",
        ));
    }
    if email.is_none() && phone.is_none() {
        return Err(AuthError::validation("One of email or phone must be set"));
    }
    let data = crate::auth::metadata(call, "data")?.unwrap_or_else(|| json!({}));
    let create_user = call.b("create_user").unwrap_or(true);
    let flow = call.code_challenge()?;
    let redirect = util::redirect_for(cfg, call.redirect_to());
    let email = email.map(util::validate_email).transpose()?;
    let phone = phone.map(util::validate_phone).transpose()?;
    as_admin(state, async |tx| {
        let existing = users::by_email_or_phone(tx, email.as_deref(), phone.as_deref()).await?;
        let u = match existing {
            Some(u) => u,
            None => {
                if !create_user || cfg.disable_signup {
                    return Err(AuthError::unprocessable(
                        "otp_disabled",
                        "Signups not allowed for otp",
                    ));
                }
                let id = users::create(
                    tx,
                    NewUser::new(email.as_deref(), phone.as_deref(), data.clone()),
                )
                .await?;
                users::by_id(tx, id)
                    .await?
                    .ok_or_else(AuthError::user_not_found)?
            }
        };
        if u.is_banned() {
            return Err(AuthError::bad_request("user_banned", "User is banned"));
        }
        if let Some(p) = &phone {
            send(state, tx, &u, Kind::Sms, p, &redirect, true).await?;
            return Ok(json!({"message_id": null}));
        }
        let e = email.as_deref().unwrap_or_default();
        let kind = if u.email_confirmed_at.is_some() {
            Kind::MagicLink
        } else {
            Kind::Signup
        };
        if let Some(f) = &flow {
            let m = if kind == Kind::Signup {
                "email/signup"
            } else {
                "magiclink"
            };
            create_flow_state(tx, u.id, f, m).await?;
        }
        send(state, tx, &u, kind, e, &redirect, true).await?;
        Ok(json!({}))
    })
    .await
    .map(ok)
}

// ------------------------------------------------------------------ /recover, /resend

pub async fn recover(state: &AppState, call: &Call) -> AuthResult<Resp> {
    ratelimit::check_ip(state, call, "otp").await?;
    let email = call
        .s("email")
        .ok_or_else(|| AuthError::validation("Password recovery requires an email"))?;
    let email = util::validate_email(email)?;
    let flow = call.code_challenge()?;
    let redirect = util::redirect_for(&state.config.auth, call.redirect_to());
    as_admin(state, async |tx| {
        // An unknown address gets the same answer, including the per-address limit: the
        // response never tells whether the address is registered.
        if let Some(u) = users::by_email(tx, &email).await? {
            if let Some(f) = &flow {
                create_flow_state(tx, u.id, f, "recovery").await?;
            }
            send(state, tx, &u, Kind::Recovery, &email, &redirect, true).await?;
            crate::auth::audit::record(tx, &call.ip, Some(u.id), "user_recovery_requested", None)
                .await?;
        } else {
            ratelimit::check_email(state, tx, &email).await?;
        }
        Ok(json!({}))
    })
    .await
    .map(ok)
}

pub async fn resend(state: &AppState, call: &Call) -> AuthResult<Resp> {
    ratelimit::check_ip(state, call, "otp").await?;
    let t = call.s("type").unwrap_or("");
    if !matches!(t, "signup" | "email_change" | "sms" | "phone_change") {
        return Err(AuthError::validation(
            "Missing one of these types: signup, email_change, sms, phone_change",
        ));
    }
    let (email, phone) = (call.s("email"), call.s("phone"));
    if email.is_some() && phone.is_some() {
        return Err(AuthError::validation(
            "Only an email address or phone number should be provided.",
        ));
    }
    if matches!(t, "signup" | "email_change") && email.is_none() {
        return Err(AuthError::validation(
            "Type provided requires an email address",
        ));
    }
    if matches!(t, "sms" | "phone_change") && phone.is_none() {
        return Err(AuthError::validation(
            "Type provided requires a phone number",
        ));
    }
    let email = email.map(util::validate_email).transpose()?;
    let phone = phone.map(util::validate_phone).transpose()?;
    let redirect = util::redirect_for(&state.config.auth, call.redirect_to());
    as_admin(state, async |tx| {
        match t {
            "signup" => {
                let e = email.as_deref().unwrap_or_default();
                match users::by_email(tx, e).await? {
                    Some(u) if u.email_confirmed_at.is_none() => {
                        send(state, tx, &u, Kind::Signup, e, &redirect, true).await?;
                    }
                    _ => ratelimit::check_email(state, tx, e).await?,
                }
            }
            "email_change" => {
                let e = email.as_deref().unwrap_or_default();
                let row = tx
                    .query_opt(
                        &format!("select {} from auth.users where (lower(email) = $1 or lower(email_change) = $1) and email_change <> '' and deleted_at is null limit 1 for update", users::USER_COLS),
                        &[&e],
                    )
                    .await.map_err(AuthError::pg)?;
                if let Some(r) = row {
                    let u = User::from_row(&r)?;
                    let to = u.email_change.clone();
                    send(state, tx, &u, Kind::EmailChange, &to, &redirect, true).await?;
                }
            }
            "sms" => {
                let p = phone.as_deref().unwrap_or_default();
                if let Some(u) = users::by_phone(tx, p).await? {
                    if u.phone_confirmed_at.is_none() {
                        send(state, tx, &u, Kind::Sms, p, &redirect, true).await?;
                    }
                }
            }
            _ => {
                let p = phone.as_deref().unwrap_or_default();
                let row = tx
                    .query_opt(
                        &format!("select {} from auth.users where phone_change = $1 and deleted_at is null limit 1 for update", users::USER_COLS),
                        &[&p],
                    )
                    .await.map_err(AuthError::pg)?;
                if let Some(r) = row {
                    let u = User::from_row(&r)?;
                    send(state, tx, &u, Kind::PhoneChange, p, &redirect, true).await?;
                }
            }
        }
        Ok(json!({}))
    })
    .await
    .map(ok)
}
