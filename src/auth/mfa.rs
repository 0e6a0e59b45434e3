//! MFA: TOTP factors (enroll with secret, URI and QR code; challenge; verify raises the
//! session to aal2), WebAuthn factors (enroll and unenroll only; ceremonies are not
//! verified by this server), and the admin factor list/delete.

use chrono::Utc;
use serde_json::{json, Value};
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

use super::error::{AuthError, AuthResult, RowExt};
use super::guard::AuthedUser;
use super::tx::as_admin;
use super::{load_token_user, ok, session, users, Call};
use crate::http::Resp;
use crate::state::AppState;

/// Seconds a challenge stays open (GoTrue's default).
const CHALLENGE_EXPIRY: i64 = 300;
const MAX_FACTORS: i64 = 10;

pub async fn route(
    state: &AppState,
    call: &Call,
    t: AuthedUser,
    rest: &[&str],
) -> AuthResult<Resp> {
    // Who is asking (`t`, checked by the caller) comes before what is asked about
    // (GoTrue's middleware order).
    match (call.method.as_str(), rest) {
        ("POST", []) => enroll(state, call, t).await,
        ("POST", [id, "challenge"]) => challenge(state, call, t, parse_id(id)?).await,
        ("POST", [id, "verify"]) => verify(state, call, t, parse_id(id)?).await,
        ("DELETE", [id]) => unenroll(state, t, parse_id(id)?).await,
        _ => Err(AuthError::not_found(
            "not_found",
            format!(
                "{} /auth/v1/factors/{} is not supported",
                call.method,
                rest.join("/")
            ),
        )),
    }
}

fn parse_id(s: &str) -> AuthResult<Uuid> {
    s.parse()
        .map_err(|_| AuthError::not_found("validation_failed", "factor_id must be an UUID"))
}

async fn session_aal(
    tx: &tokio_postgres::Transaction<'_>,
    sid: Option<Uuid>,
) -> AuthResult<String> {
    let Some(sid) = sid else {
        return Ok("aal1".into());
    };
    Ok(tx
        .query_opt(
            "select coalesce(aal, 'aal1') from auth.sessions where id = $1",
            &[&sid],
        )
        .await
        .map_err(AuthError::pg)?
        .map(|r| r.col::<String>(0))
        .transpose()?
        .unwrap_or_else(|| "aal1".into()))
}

async fn enroll(state: &AppState, call: &Call, t: AuthedUser) -> AuthResult<Resp> {
    let ftype = call.s("factor_type").unwrap_or("");
    let friendly = call.s("friendly_name").unwrap_or("").to_string();
    match ftype {
        "totp" | "webauthn" => {}
        "phone" => {
            return Err(AuthError::unprocessable(
                "mfa_phone_enroll_not_enabled",
                "MFA enroll is disabled for Phone",
            ))
        }
        _ => {
            return Err(AuthError::validation(
                "factor_type needs to be totp, phone, or webauthn",
            ))
        }
    }
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        let row = tx
            .query_one(
                "select count(*), count(*) filter (where status = 'verified'),
                        count(*) filter (where trim(friendly_name) <> '' and friendly_name = $2)
                 from auth.mfa_factors where user_id = $1",
                &[&u.id, &friendly],
            )
            .await.map_err(AuthError::pg)?;
        let (all, verified, same_name): (i64, i64, i64) = (row.col(0)?, row.col(1)?, row.col(2)?);
        if same_name > 0 {
            return Err(AuthError::unprocessable(
                "mfa_factor_name_conflict",
                format!("A factor with the friendly name \"{friendly}\" for this user already exists"),
            ));
        }
        if all >= MAX_FACTORS {
            return Err(AuthError::unprocessable(
                "too_many_enrolled_mfa_factors",
                "Maximum number of verified factors reached, unenroll to continue",
            ));
        }
        if verified > 0 && session_aal(tx, t.session_id).await? != "aal2" {
            return Err(AuthError::forbidden(
                "insufficient_aal",
                "AAL2 required to enroll a new factor",
            ));
        }
        let id = Uuid::new_v4();
        if ftype == "webauthn" {
            tx.execute(
                "insert into auth.mfa_factors (id, user_id, friendly_name, factor_type, status, created_at, updated_at)
                 values ($1, $2, $3, 'webauthn', 'unverified', now(), now())",
                &[&id, &u.id, &friendly],
            )
            .await.map_err(AuthError::pg)?;
            return Ok(json!({"id": id, "type": "webauthn", "friendly_name": friendly}));
        }
        let mut raw = [0u8; 20];
        rand::Rng::fill(&mut rand::thread_rng(), &mut raw);
        let secret = base32(&raw);
        let issuer = call
            .s("issuer")
            .map(str::to_string)
            .unwrap_or_else(|| host_of(&state.config.auth.site_url));
        let account = u.email.clone().or(u.phone.clone()).unwrap_or_default();
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let uri = format!(
            "otpauth://totp/{}:{}?algorithm=SHA1&digits=6&issuer={}&period=30&secret={secret}",
            enc(&issuer),
            enc(&account),
            enc(&issuer)
        );
        let qr = qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::H)
            .map_err(|e| AuthError::internal("Error generating QR Code", e.to_string()))?
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .build();
        tx.execute(
            "insert into auth.mfa_factors (id, user_id, friendly_name, factor_type, status, created_at, updated_at, secret)
             values ($1, $2, $3, 'totp', 'unverified', now(), now(), $4)",
            &[&id, &u.id, &friendly, &secret],
        )
        .await.map_err(AuthError::pg)?;
        Ok(json!({
            "id": id,
            "type": "totp",
            "friendly_name": friendly,
            "totp": {"qr_code": qr, "secret": secret, "uri": uri},
        }))
    })
    .await
    .map(ok)
}

fn host_of(url: &str) -> String {
    url.split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .to_string()
}

/// The caller's factor, or GoTrue's not-found error.
async fn own_factor(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: Uuid,
    id: Uuid,
) -> AuthResult<(String, String, Option<String>)> {
    tx.query_opt(
        "select factor_type, status, secret from auth.mfa_factors where id = $1 and user_id = $2 for update",
        &[&id, &user_id],
    )
    .await.map_err(AuthError::pg)?
    .map(|r| -> AuthResult<_> { Ok((r.col(0)?, r.col(1)?, r.col(2)?)) })
    .transpose()?
    .ok_or_else(factor_not_found)
}

fn factor_not_found() -> AuthError {
    AuthError::not_found("mfa_factor_not_found", "Factor not found")
}

/// The user's TOTP factor `id` (locked), as its secret; WebAuthn factors are refused.
async fn own_totp_factor(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: Uuid,
    id: Uuid,
) -> AuthResult<Option<String>> {
    let (ftype, _, secret) = own_factor(tx, user_id, id).await?;
    if ftype != "totp" {
        return Err(AuthError::unprocessable(
            "mfa_webauthn_verify_not_enabled",
            "MFA verification is disabled for WebAuthn",
        ));
    }
    Ok(secret)
}

async fn challenge(state: &AppState, call: &Call, t: AuthedUser, id: Uuid) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        own_totp_factor(tx, u.id, id).await?;
        let cid = Uuid::new_v4();
        let ip: std::net::IpAddr = call.ip.parse().unwrap_or([127, 0, 0, 1].into());
        tx.execute(
            "insert into auth.mfa_challenges (id, factor_id, created_at, ip_address) values ($1, $2, now(), $3)",
            &[&cid, &id, &ip],
        )
        .await.map_err(AuthError::pg)?;
        tx.execute(
            "update auth.mfa_factors set last_challenged_at = clock_timestamp(), updated_at = now() where id = $1",
            &[&id],
        )
        .await.map_err(AuthError::pg)?;
        Ok(json!({
            "id": cid,
            "type": "totp",
            "expires_at": Utc::now().timestamp() + CHALLENGE_EXPIRY,
        }))
    })
    .await
    .map(ok)
}

async fn verify(state: &AppState, call: &Call, t: AuthedUser, id: Uuid) -> AuthResult<Resp> {
    let code = call.s("code").unwrap_or("").to_string();
    let cid: Uuid = call
        .s("challenge_id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            AuthError::unprocessable(
                "mfa_factor_not_found",
                "MFA factor with the provided challenge ID not found",
            )
        })?;
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        let secret = own_totp_factor(tx, u.id, id).await?;
        if code.is_empty() {
            return Err(AuthError::validation("Code needs to be non-empty"));
        }
        let ch = tx
            .query_opt(
                "select extract(epoch from now() - created_at)::bigint, verified_at is not null
                 from auth.mfa_challenges where id = $1 and factor_id = $2",
                &[&cid, &id],
            )
            .await.map_err(AuthError::pg)?
            .ok_or_else(|| {
                AuthError::unprocessable(
                    "mfa_factor_not_found",
                    "MFA factor with the provided challenge ID not found",
                )
            })?;
        let (age, used): (i64, bool) = (ch.col(0)?, ch.col(1)?);
        if age > CHALLENGE_EXPIRY || used {
            tx.execute("delete from auth.mfa_challenges where id = $1", &[&cid])
                .await.map_err(AuthError::pg)?;
            return Err(AuthError::unprocessable(
                "mfa_challenge_expired",
                format!("MFA challenge {cid} has expired, verify against another challenge or create a new challenge."),
            )
            .keep_commit());
        }
        let key = secret.as_deref().and_then(base32_decode).unwrap_or_default();
        if !totp_valid(&key, &code, Utc::now().timestamp()) {
            return Err(AuthError::unprocessable(
                "mfa_verification_failed",
                "Invalid TOTP code entered",
            ));
        }
        let Some(sid) = t.session_id else {
            return Err(AuthError::forbidden(
                "session_not_found",
                "Session from session_id claim in JWT does not exist",
            ));
        };
        tx.execute("update auth.mfa_challenges set verified_at = now() where id = $1", &[&cid])
            .await.map_err(AuthError::pg)?;
        tx.execute(
            "update auth.mfa_factors set status = 'verified', updated_at = now() where id = $1",
            &[&id],
        )
        .await.map_err(AuthError::pg)?;
        tx.execute(
            "delete from auth.mfa_factors where user_id = $1 and factor_type = 'totp' and status = 'unverified' and id <> $2",
            &[&u.id, &id],
        )
        .await.map_err(AuthError::pg)?;
        tx.execute(
            "update auth.sessions set aal = 'aal2', factor_id = $2, updated_at = now() where id = $1",
            &[&sid, &id],
        )
        .await.map_err(AuthError::pg)?;
        tx.execute(
            "insert into auth.mfa_amr_claims (session_id, created_at, updated_at, authentication_method, id)
             values ($1, now(), now(), 'totp', $2)
             on conflict (session_id, authentication_method) do update set created_at = now(), updated_at = now()",
            &[&sid, &Uuid::new_v4()],
        )
        .await.map_err(AuthError::pg)?;
        // Other sessions below aal2 end, as in GoTrue.
        tx.execute(
            "delete from auth.sessions where user_id = $1 and id <> $2 and coalesce(aal, 'aal1') = 'aal1'",
            &[&u.id, &sid],
        )
        .await.map_err(AuthError::pg)?;
        let parent: Option<String> = tx
            .query_opt(
                "select token from auth.refresh_tokens where session_id = $1 and revoked = false order by id desc limit 1",
                &[&sid],
            )
            .await.map_err(AuthError::pg)?
            .map(|r| r.col(0))
            .transpose()?;
        tx.execute(
            "update auth.refresh_tokens set revoked = true, updated_at = now() where session_id = $1 and revoked = false",
            &[&sid],
        )
        .await.map_err(AuthError::pg)?;
        let token = super::util::refresh_token();
        tx.execute(
            "insert into auth.refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id)
             values ('00000000-0000-0000-0000-000000000000', $1, $2, false, now(), now(), $3, $4)",
            &[&token, &u.id.to_string(), &parent, &sid],
        )
        .await.map_err(AuthError::pg)?;
        session::respond(state, tx, u.id, sid, token).await
    })
    .await
    .map(ok)
}

async fn unenroll(state: &AppState, t: AuthedUser, id: Uuid) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        let (_, status, _) = own_factor(tx, u.id, id).await?;
        if status == "verified" && session_aal(tx, t.session_id).await? != "aal2" {
            return Err(AuthError::unprocessable(
                "insufficient_aal",
                "AAL2 required to unenroll verified factor",
            ));
        }
        tx.execute("delete from auth.mfa_factors where id = $1", &[&id])
            .await
            .map_err(AuthError::pg)?;
        Ok(json!({ "id": id }))
    })
    .await
    .map(ok)
}

// ------------------------------------------------------------------ admin

pub async fn admin_list(state: &AppState, user_id: Uuid) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        users::by_id(tx, user_id)
            .await?
            .ok_or_else(AuthError::user_not_found)?;
        let rows = tx
            .query(
                "select auth.oxibase_factor_json(f) from auth.mfa_factors f where user_id = $1 order by created_at",
                &[&user_id],
            )
            .await.map_err(AuthError::pg)?;
        Ok(Value::Array(rows.iter().map(|r| r.col(0)).collect::<AuthResult<_>>()?))
    })
    .await
    .map(ok)
}

pub async fn admin_delete(state: &AppState, user_id: Uuid, id: Uuid) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        users::by_id(tx, user_id)
            .await?
            .ok_or_else(AuthError::user_not_found)?;
        let row = tx
            .query_opt(
                "delete from auth.mfa_factors f where id = $1 and user_id = $2 returning auth.oxibase_factor_json(f)",
                &[&id, &user_id],
            )
            .await.map_err(AuthError::pg)?
            .ok_or_else(factor_not_found)?;
        row.col::<Value>(0)
    })
    .await
    .map(ok)
}

// ------------------------------------------------------------------ TOTP (RFC 6238)

/// A secret as the enroll response shows it: RFC 4648 base32, upper case, no padding.
fn base32(data: &[u8]) -> String {
    Secret::Raw(data.to_vec()).to_encoded().to_string()
}

/// A stored secret's bytes (case and trailing `=` forgiven); `None` when not base32.
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=').to_ascii_uppercase();
    Secret::Encoded(s).to_bytes().ok()
}

/// Six digits, 30-second steps, one step of skew either way (GoTrue's settings).
fn totp(key: &[u8]) -> TOTP {
    // `new_unchecked`: stored secrets are ours (20 bytes); no length rule to apply here.
    TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, key.to_vec())
}

fn totp_valid(key: &[u8], code: &str, now: i64) -> bool {
    if key.is_empty() || code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // `check` looks one step back: a clock before 00:00:30 1970 has no such step.
    match u64::try_from(now) {
        Ok(t) if t >= 30 => totp(key).check(code, t),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors_and_base32() {
        let key = b"12345678901234567890";
        // RFC 6238 appendix B (SHA1), last six digits.
        assert_eq!(totp(key).generate(59), "287082");
        assert_eq!(totp(key).generate(1111111109), "081804");
        assert!(totp_valid(key, "081804", 1111111109));
        assert!(totp_valid(key, "081804", 1111111109 + 30));
        assert!(!totp_valid(key, "081804", 1111111109 + 90));
        assert!(!totp_valid(key, "123456", 1111111109));
        let s = base32(key);
        assert_eq!(s, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(base32_decode(&s).unwrap(), key.to_vec());
    }
}
