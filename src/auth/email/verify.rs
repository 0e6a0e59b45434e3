//! /verify: a code or a link's token hash checked and used up (POST, and GET for links).

use chrono::Utc;
use serde_json::json;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::auth::error::{AuthError, AuthResult, RowExt};
use crate::auth::tx::as_admin;
use crate::auth::users::{self, User};
use crate::auth::{ok, ratelimit, session, util, Call};
use crate::http::Resp;
use crate::state::AppState;

// ------------------------------------------------------------------ /verify

/// The verification types /verify accepts.
fn parse_type(t: &str) -> AuthResult<&'static str> {
    Ok(match t {
        "signup" => "signup",
        "invite" => "invite",
        "magiclink" => "magiclink",
        "recovery" => "recovery",
        "email_change" => "email_change",
        "email" => "email",
        "sms" => "sms",
        "phone_change" => "phone_change",
        _ => return Err(AuthError::validation("Unsupported verification type")),
    })
}

/// What a verification achieved.
enum Verified {
    /// Sign the user in, authenticated by this method.
    Session(Uuid, &'static str),
    /// One of the two confirmations of a secure email change; the other is still due.
    HalfwayEmailChange,
}

const SINGLE_CONFIRMATION: &str =
    "Confirmation link accepted. Please proceed to confirm link sent to the other email";

/// Find the user a code or hash belongs to and apply the verification.
/// Clear the spent token column `token` and set the timestamp column `confirmed` unless
/// it is already set. Both names are this module's constants, never input.
async fn spend_token(
    tx: &tokio_postgres::Transaction<'_>,
    id: Uuid,
    token: &'static str,
    confirmed: &'static str,
) -> AuthResult<()> {
    tx.execute(
        &format!(
            "update auth.users set {token} = '', {confirmed} = coalesce({confirmed}, now()), \
             updated_at = now() where id = $1"
        ),
        &[&id],
    )
    .await
    .map_err(AuthError::pg)?;
    Ok(())
}

/// The user a code (with its address) or a link's token hash belongs to, the token column
/// it matched, and the stored hash; locked for the rest of the transaction.
async fn find_token_owner(
    tx: &tokio_postgres::Transaction<'_>,
    vtype: &str,
    token: Option<&str>,
    token_hash: Option<&str>,
    email: Option<&str>,
    phone: Option<&str>,
) -> AuthResult<(User, &'static str, String)> {
    let columns: &[&'static str] = match vtype {
        "signup" | "invite" | "sms" => &["confirmation_token"],
        "magiclink" | "recovery" => &["recovery_token"],
        "email" => &["confirmation_token", "recovery_token"],
        "email_change" => &["email_change_token_new", "email_change_token_current"],
        "phone_change" => &["phone_change_token"],
        _ => &[],
    };
    // The code (hashed per column below) and, for codes, the address the row must have.
    let (hash, address_col, address): (Option<&str>, Option<&str>, Option<String>) =
        match (token_hash, token) {
            (Some(_), _) => (None, None, None),
            (None, Some(t)) => {
                let addr = email.or(phone).ok_or_else(|| {
                    AuthError::validation(
                        "Only an email address or phone number should be provided on verify",
                    )
                })?;
                let col = match (vtype, email.is_some()) {
                    ("phone_change", _) => "phone_change",
                    (_, true) => "email",
                    (_, false) => "phone",
                };
                (Some(t), Some(col), Some(addr.to_string()))
            }
            _ => {
                return Err(AuthError::validation(
                    "Verify requires either a token or a token hash",
                ))
            }
        };
    let mut found: Option<(User, &'static str, String)> = None;
    for col in columns {
        // A code for the new address of an email change is matched against that address.
        let address_col = match (*col, address_col) {
            ("email_change_token_new", Some(_)) => Some("email_change"),
            (_, ac) => ac,
        };
        let hash = match (hash, &address) {
            (Some(t), Some(a)) => util::token_hash(a, t),
            (None, _) => token_hash.unwrap_or_default().to_string(),
            (Some(_), None) => String::new(),
        };
        let mut q = format!(
            "select {} from auth.users where {col} = $1 and {col} <> '' and deleted_at is null",
            users::USER_COLS
        );
        if let Some(ac) = address_col {
            q.push_str(&format!(" and lower({ac}) = lower($2)"));
        }
        q.push_str(" limit 1 for update");
        let row = match &address {
            Some(a) => tx.query_opt(&q, &[&hash, a]).await.map_err(AuthError::pg)?,
            None => tx.query_opt(&q, &[&hash]).await.map_err(AuthError::pg)?,
        };
        if let Some(r) = row {
            found = Some((User::from_row(&r)?, col, hash));
            break;
        }
    }
    found.ok_or_else(AuthError::otp_expired)
}

/// An email change confirmed by one of its codes: with secure email change, the first of
/// two only spends itself (`None`); otherwise the new address takes over.
async fn confirm_email_change(
    tx: &tokio_postgres::Transaction<'_>,
    cfg: &crate::config::AuthConfig,
    u: &User,
    col: &'static str,
    hash: &str,
) -> AuthResult<Option<&'static str>> {
    let secure = !cfg.autoconfirm
        && cfg.secure_email_change
        && u.email_change_confirm_status == 0
        && u.email.is_some();
    if secure {
        // First of two confirmations: spend this code, wait for the other.
        tx.execute(
            &format!("update auth.users set {col} = '', email_change_confirm_status = 1, updated_at = now() where id = $1"),
            &[&u.id],
        )
        .await.map_err(AuthError::pg)?;
        tx.execute(
            "delete from auth.one_time_tokens where user_id = $1 and token_hash = $2",
            &[&u.id, &hash],
        )
        .await
        .map_err(AuthError::pg)?;
        return Ok(None);
    }
    users::refuse_taken_email(tx, &u.email_change, u.id).await?;
    tx.execute(
        "update auth.users set email = email_change, email_change = '', email_change_token_new = '',
           email_change_token_current = '', email_change_confirm_status = 0,
           email_confirmed_at = now(), is_anonymous = false, updated_at = now() where id = $1",
        &[&u.id],
    )
    .await.map_err(AuthError::pg)?;
    tx.execute(
        "delete from auth.one_time_tokens where user_id = $1 and token_type like 'email_change_token_%'",
        &[&u.id],
    )
    .await.map_err(AuthError::pg)?;
    ensure_email_identity(tx, u.id).await?;
    Ok(Some("email_change"))
}

async fn verify_token(
    tx: &tokio_postgres::Transaction<'_>,
    cfg: &crate::config::AuthConfig,
    vtype: &str,
    token: Option<&str>,
    token_hash: Option<&str>,
    email: Option<&str>,
    phone: Option<&str>,
) -> AuthResult<Verified> {
    let (u, col, hash) = find_token_owner(tx, vtype, token, token_hash, email, phone).await?;
    if u.is_banned() {
        return Err(AuthError::forbidden("user_banned", "User is banned"));
    }
    let sent_at = match col {
        "confirmation_token" => u.confirmation_sent_at,
        "recovery_token" => u.recovery_sent_at,
        "email_change_token_new" | "email_change_token_current" => u.email_change_sent_at,
        "phone_change_token" => u.phone_change_sent_at,
        _ => None,
    };
    let expired = sent_at.is_none_or(|s| (Utc::now() - s).num_seconds() > cfg.otp_expiry as i64);
    if expired || hash.is_empty() {
        return Err(AuthError::otp_expired());
    }
    let method = match col {
        "confirmation_token" if vtype == "sms" => {
            spend_token(tx, u.id, "confirmation_token", "phone_confirmed_at").await?;
            "otp"
        }
        "confirmation_token" => {
            spend_token(tx, u.id, "confirmation_token", "email_confirmed_at").await?;
            if vtype == "invite" || u.invited_at.is_some() && u.email_confirmed_at.is_none() {
                "invite"
            } else if vtype == "signup" {
                "email/signup"
            } else {
                "otp"
            }
        }
        "recovery_token" => {
            spend_token(tx, u.id, "recovery_token", "email_confirmed_at").await?;
            match vtype {
                "recovery" => "recovery",
                "magiclink" => "magiclink",
                _ => "otp",
            }
        }
        "email_change_token_new" | "email_change_token_current" => {
            match confirm_email_change(tx, cfg, &u, col, &hash).await? {
                Some(method) => method,
                None => return Ok(Verified::HalfwayEmailChange),
            }
        }
        "phone_change_token" => {
            tx.execute(
                "update auth.users set phone = phone_change, phone_change = '', phone_change_token = '',
                   phone_confirmed_at = now(), updated_at = now() where id = $1",
                &[&u.id],
            )
            .await.map_err(AuthError::pg)?;
            "phone_change"
        }
        _ => return Err(AuthError::otp_expired()),
    };
    tx.execute(
        "delete from auth.one_time_tokens where user_id = $1 and token_hash = $2",
        &[&u.id, &hash],
    )
    .await
    .map_err(AuthError::pg)?;
    users::sync_email_identity(tx, u.id).await?;
    Ok(Verified::Session(u.id, method))
}

/// After an email change (or an anonymous user adding an email), the user has an email
/// identity and app_metadata says so.
pub async fn ensure_email_identity(c: &impl GenericClient, id: Uuid) -> AuthResult<()> {
    c.execute(
        "insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
         select u.id::text, u.id, jsonb_build_object('sub', u.id::text, 'email', u.email,
                'email_verified', u.email_confirmed_at is not null, 'phone_verified', false),
                'email', now(), now(), now()
         from auth.users u where u.id = $1 and u.email is not null and u.email <> ''
         on conflict (provider_id, provider) do nothing",
        &[&id],
    )
    .await.map_err(AuthError::pg)?;
    c.execute(
        "update auth.users set raw_app_meta_data = coalesce(raw_app_meta_data, '{}'::jsonb)
           || jsonb_build_object('provider', case when coalesce(raw_app_meta_data->>'provider', 'anonymous') = 'anonymous'
                                                  then 'email' else raw_app_meta_data->>'provider' end,
              'providers', (select coalesce(jsonb_agg(distinct p), '[]'::jsonb) from (
                 select jsonb_array_elements_text(coalesce(raw_app_meta_data->'providers', '[]'::jsonb)) p
                 union select 'email') s where p <> 'anonymous'))
         where id = $1",
        &[&id],
    )
    .await.map_err(AuthError::pg)?;
    Ok(())
}

pub async fn verify_post(state: &AppState, call: &Call) -> AuthResult<Resp> {
    ratelimit::check_ip(state, call, "verify").await?;
    let vtype = call
        .s("type")
        .ok_or_else(|| AuthError::validation("Verify requires a verification type"))?;
    let vtype = parse_type(vtype)?;
    let (token, hash) = (call.s("token"), call.s("token_hash"));
    if token.is_none() && hash.is_none() {
        return Err(AuthError::validation(
            "Verify requires a token or a token hash",
        ));
    }
    let email = call.s("email").map(util::validate_email).transpose()?;
    let phone = call.s("phone").map(util::validate_phone).transpose()?;
    if email.is_some() && phone.is_some() {
        return Err(AuthError::validation(
            "Only an email address or phone number should be provided on verify",
        ));
    }
    as_admin(state, async |tx| {
        let outcome = verify_token(
            tx,
            &state.config.auth,
            vtype,
            token,
            hash,
            email.as_deref(),
            phone.as_deref(),
        )
        .await?;
        match outcome {
            Verified::Session(uid, method) => {
                session::issue(state, tx, uid, method, &call.origin()).await
            }
            Verified::HalfwayEmailChange => Ok(json!({"msg": SINGLE_CONFIRMATION, "code": "200"})),
        }
    })
    .await
    .map(ok)
}

/// A link click: verify, then redirect with the session in the fragment (implicit flow)
/// or `?code=` (PKCE flow); errors go to the redirect as `#error=...`.
pub async fn verify_get(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let cfg = &state.config.auth;
    let redirect = util::redirect_for(cfg, call.q("redirect_to"));
    let vtype = call.q("type").unwrap_or("");
    let token = call.q("token").unwrap_or("");
    let result: AuthResult<String> = async {
        ratelimit::check_ip(state, call, "verify").await?;
        let vtype = parse_type(vtype)?;
        if token.is_empty() {
            return Err(AuthError::validation("Verify requires a token or a token hash"));
        }
        as_admin(state, async |tx| {
            let (uid, method) =
                match verify_token(tx, cfg, vtype, None, Some(token), None, None).await? {
                    Verified::Session(uid, method) => (uid, method),
                    Verified::HalfwayEmailChange => {
                        let enc = percent_encoding::utf8_percent_encode(
                            SINGLE_CONFIRMATION,
                            percent_encoding::NON_ALPHANUMERIC,
                        );
                        return Ok(format!("{redirect}#message={enc}&sb="));
                    }
                };
            let flow = tx
                .query_opt(
                    "select id, auth_code from auth.flow_state where user_id = $1
                       and authentication_method = $2 and auth_code_issued_at is null
                     order by created_at desc limit 1",
                    &[&uid, &method],
                )
                .await.map_err(AuthError::pg)?;
            if let Some(f) = flow {
                let id: Uuid = f.col(0)?;
                let code: String = f.col(1)?;
                tx.execute(
                    "update auth.flow_state set auth_code_issued_at = now(), updated_at = now() where id = $1",
                    &[&id],
                )
                .await.map_err(AuthError::pg)?;
                let sep = if redirect.contains('?') { '&' } else { '?' };
                return Ok(format!("{redirect}{sep}code={code}"));
            }
            let s = session::issue(state, tx, uid, method, &call.origin()).await?;
            Ok(format!(
                "{redirect}#access_token={}&expires_at={}&expires_in={}&refresh_token={}&token_type=bearer&type={}",
                s["access_token"].as_str().unwrap_or(""),
                s["expires_at"],
                s["expires_in"],
                s["refresh_token"].as_str().unwrap_or(""),
                vtype
            ))
        })
        .await
    }
    .await;
    let location = match result {
        Ok(l) => l,
        Err(e) => {
            if e.internal.is_some() {
                tracing::error!(detail = ?e.internal, "verify failed");
            }
            let enc = |s: &str| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            format!(
                "{redirect}#error={}&error_code={}&error_description={}",
                if e.status.is_server_error() {
                    "server_error"
                } else {
                    "access_denied"
                },
                e.code,
                enc(&e.message)
            )
        }
    };
    let mut r = crate::http::status_response(http::StatusCode::SEE_OTHER);
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(r)
}
