//! POST /token?grant_type=password | refresh_token | pkce (and the disabled id_token/web3).

use super::error::{AuthError, AuthResult, RowExt};
use super::tx::as_admin;
use super::{ok, password, ratelimit, session, users, util, Call};
use crate::http::Resp;
use crate::state::AppState;

pub async fn token(state: &AppState, call: &Call) -> AuthResult<Resp> {
    match call.q("grant_type").unwrap_or("") {
        "password" => password_grant(state, call).await,
        "refresh_token" => refresh_grant(state, call).await,
        "pkce" => pkce_grant(state, call).await,
        "id_token" => {
            let provider = call.s("provider").unwrap_or("");
            Err(AuthError::validation(format!(
                "Custom OIDC provider \"{provider}\" not allowed: provider is not enabled"
            )))
        }
        "web3" => Err(AuthError::unprocessable(
            "web3_provider_disabled",
            "Web3 provider is disabled",
        )),
        _ => Err(AuthError::bad_request(
            "invalid_credentials",
            "unsupported_grant_type",
        )),
    }
}

async fn password_grant(state: &AppState, call: &Call) -> AuthResult<Resp> {
    ratelimit::check_ip(state, call, "signin").await?;
    let (email, phone) = (call.s("email"), call.s("phone"));
    if email.is_some() && phone.is_some() {
        return Err(AuthError::validation(
            "Only an email address or phone number should be provided on login.",
        ));
    }
    if email.is_none() && phone.is_none() {
        return Err(AuthError::validation("missing email or phone"));
    }
    let pw = call.s("password").unwrap_or("");
    // Malformed addresses cannot belong to anyone: the same answer as a wrong password.
    let email = email.map(|e| e.trim().to_lowercase());
    let phone = match phone.map(util::validate_phone) {
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return Err(AuthError::invalid_credentials()),
        None => None,
    };
    // Failed attempts are counted per account, existing or not.
    let account = match (&email, &phone) {
        (Some(e), _) => format!("email:{e}"),
        (None, Some(p)) => format!("phone:{p}"),
        (None, None) => return Err(AuthError::validation("missing email or phone")),
    };
    let attempt = ratelimit::begin_password_attempt(state, &account).await?;
    let r = as_admin(state, async |tx| {
        let u = users::by_email_or_phone(tx, email.as_deref(), phone.as_deref()).await?;
        let hash = u.as_ref().and_then(|u| u.encrypted_password.clone());
        let matches = password::verify(pw, hash.as_deref(), &state.auth.dummy_hash).await;
        let Some(u) = u.filter(|_| matches) else {
            return Err(AuthError::invalid_credentials());
        };
        if u.is_banned() {
            return Err(AuthError::bad_request("user_banned", "User is banned"));
        }
        // As GoTrue: an unconfirmed user cannot sign in with a password, autoconfirm or
        // not (e.g. created by the admin API with email_confirm: false).
        if email.is_some() && !u.is_confirmed() {
            return Err(AuthError::bad_request("email_not_confirmed", "Email not confirmed"));
        }
        if phone.is_some() && u.phone_confirmed_at.is_none() {
            return Err(AuthError::bad_request("phone_not_confirmed", "Phone not confirmed"));
        }
        tx.execute(
            "update auth.identities set last_sign_in_at = now() where user_id = $1 and provider = $2",
            &[&u.id, &if email.is_some() { "email" } else { "phone" }],
        )
        .await.map_err(AuthError::pg)?;
        let mut v = session::issue(state, tx, u.id, "password", &call.origin()).await?;
        // Signed in, but the password no longer meets the rules: say so (auth-js exposes
        // it as `data.weakPassword`), as GoTrue does.
        if let Err(weak) = password::check_strength(&state.config.auth, pw) {
            if let Some(reasons) = weak.reasons {
                v["weak_password"] = serde_json::json!({"reasons": reasons, "message": weak.message});
            }
        }
        Ok(v)
    })
    .await;
    let r = r;
    if !matches!(&r, Err(e) if e.code == "invalid_credentials") {
        attempt.not_failed(state).await;
    }
    Ok(ok(r?))
}

async fn refresh_grant(state: &AppState, call: &Call) -> AuthResult<Resp> {
    ratelimit::check_ip(state, call, "refresh").await?;
    let token = call
        .s("refresh_token")
        .ok_or_else(|| AuthError::validation("Refresh token is not valid"))?;
    as_admin(state, async |tx| {
        let v = session::refresh(state, tx, token).await?;
        let uid = v["user"]["id"].as_str().and_then(|s| s.parse().ok());
        super::audit::record(tx, &call.ip, uid, "token_refreshed", None).await?;
        Ok(v)
    })
    .await
    .map(ok)
}

async fn pkce_grant(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let (Some(code), Some(verifier)) = (call.s("auth_code"), call.s("code_verifier")) else {
        return Err(AuthError::validation(
            "invalid request: both auth code and code verifier should be non-empty",
        ));
    };
    as_admin(state, async |tx| {
        let row = tx
            .query_opt(
                "select id, user_id, code_challenge_method, code_challenge, authentication_method,
                        created_at < now() - interval '5 minutes' and coalesce(auth_code_issued_at, created_at) < now() - interval '5 minutes'
                 from auth.flow_state where auth_code = $1 for update",
                &[&code],
            )
            .await.map_err(AuthError::pg)?;
        let Some(row) = row else {
            return Err(AuthError::not_found(
                "flow_state_not_found",
                "invalid flow state, no valid flow state found",
            ));
        };
        let id: uuid::Uuid = row.col(0)?;
        let user_id: Option<uuid::Uuid> = row.col(1)?;
        let method: String = row.col(2)?;
        let challenge: String = row.col(3)?;
        let auth_method: String = row.col(4)?;
        let expired: bool = row.col(5)?;
        if expired {
            return Err(AuthError::unprocessable(
                "flow_state_expired",
                "invalid flow state, flow state has expired",
            ));
        }
        if !util::pkce_matches(&method, &challenge, verifier) {
            return Err(AuthError::forbidden(
                "bad_code_verifier",
                "code challenge does not match previously saved code verifier",
            ));
        }
        let Some(uid) = user_id else {
            return Err(AuthError::not_found(
                "flow_state_not_found",
                "invalid flow state, no valid flow state found",
            ));
        };
        tx.execute("delete from auth.flow_state where id = $1", &[&id])
            .await.map_err(AuthError::pg)?;
        let amr = match auth_method.as_str() {
            "email/signup" | "magiclink" | "recovery" | "email_change" | "invite" | "otp" => auth_method.as_str(),
            _ => "otp",
        };
        session::issue(state, tx, uid, amr, &call.origin()).await
    })
    .await
    .map(ok)
}
