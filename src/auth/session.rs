//! Sessions as GoTrue shapes them: a row in auth.sessions, a chain of short refresh tokens
//! in auth.refresh_tokens (rotation, reuse interval, family revocation on replay), and an
//! access token signed with the issuing key.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::error::{AuthError, AuthResult, RowExt};
use super::users;
use super::util;
use crate::state::AppState;

/// Where a request came from, recorded on the session.
#[derive(Default, Clone)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Create a session for `user_id` authenticated by `method` and return GoTrue's token
/// response `{access_token, token_type, expires_in, expires_at, refresh_token, user}`.
pub async fn issue(
    state: &AppState,
    c: &impl GenericClient,
    user_id: Uuid,
    method: &str,
    origin: &Origin,
) -> AuthResult<Value> {
    let session_id = Uuid::new_v4();
    let ip: Option<std::net::IpAddr> = origin.ip.as_deref().and_then(|i| i.parse().ok());
    c.execute(
        "insert into auth.sessions (id, user_id, created_at, updated_at, aal, user_agent, ip)
         values ($1, $2, now(), now(), 'aal1', $3, $4)",
        &[&session_id, &user_id, &origin.user_agent, &ip],
    )
    .await
    .map_err(AuthError::pg)?;
    c.execute(
        "insert into auth.mfa_amr_claims (session_id, created_at, updated_at, authentication_method, id)
         values ($1, now(), now(), $2, $3)",
        &[&session_id, &method, &Uuid::new_v4()],
    )
    .await.map_err(AuthError::pg)?;
    let token = util::refresh_token();
    c.execute(
        "insert into auth.refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, session_id)
         values ('00000000-0000-0000-0000-000000000000', $1, $2, false, now(), now(), $3)",
        &[&token, &user_id.to_string(), &session_id],
    )
    .await.map_err(AuthError::pg)?;
    c.execute(
        "update auth.users set last_sign_in_at = now(), updated_at = now() where id = $1",
        &[&user_id],
    )
    .await
    .map_err(AuthError::pg)?;
    super::audit::record(
        c,
        origin.ip.as_deref().unwrap_or(""),
        Some(user_id),
        "login",
        Some(json!({"provider": method})),
    )
    .await?;
    respond(state, c, user_id, session_id, token).await
}

/// The token response for an existing session and refresh token.
pub async fn respond(
    state: &AppState,
    c: &impl GenericClient,
    user_id: Uuid,
    session_id: Uuid,
    refresh_token: String,
) -> AuthResult<Value> {
    let user = users::json(c, user_id).await?;
    let amr: Vec<Value> = c
        .query(
            "select authentication_method, extract(epoch from created_at)::bigint
             from auth.mfa_amr_claims where session_id = $1 order by created_at",
            &[&session_id],
        )
        .await
        .map_err(AuthError::pg)?
        .iter()
        .map(|r| -> AuthResult<Value> {
            Ok(json!({"method": r.col::<String>(0)?, "timestamp": r.col::<i64>(1)?}))
        })
        .collect::<AuthResult<_>>()?;
    let aal: Option<String> = c
        .query_opt(
            "select aal from auth.sessions where id = $1",
            &[&session_id],
        )
        .await
        .map_err(AuthError::pg)?
        .map(|r| r.col::<Option<String>>(0))
        .transpose()?
        .flatten();
    let now = Utc::now().timestamp();
    let exp = now + state.config.jwt_expiry as i64;
    let claims = json!({
        "aud": user["aud"].as_str().filter(|s| !s.is_empty()).unwrap_or("authenticated"),
        "exp": exp,
        "iat": now,
        "iss": format!("{}/auth/v1", state.config.external_url()),
        "sub": user_id.to_string(),
        "email": user["email"],
        "phone": user["phone"],
        "app_metadata": user["app_metadata"],
        "user_metadata": user["user_metadata"],
        "role": user["role"].as_str().filter(|s| !s.is_empty()).unwrap_or("authenticated"),
        "aal": aal.unwrap_or_else(|| "aal1".into()),
        "amr": amr,
        "session_id": session_id.to_string(),
        "is_anonymous": user["is_anonymous"].as_bool().unwrap_or(false),
    });
    let method = amr
        .last()
        .and_then(|m| m["method"].as_str())
        .unwrap_or("password")
        .to_string();
    let claims = run_hook(state, c, user_id, claims, &method).await?;
    let access_token = state.keys.jwt.sign(&claims);
    Ok(json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": state.config.jwt_expiry,
        "expires_at": exp,
        "refresh_token": refresh_token,
        "user": user,
    }))
}

/// `grant_type=refresh_token`, GoTrue's rules: an unrevoked token is swapped for a child;
/// the revoked parent of the session's active token gets that active token back (a client
/// that lost the answer); any other revoked token is accepted within the reuse interval,
/// and after it revokes the whole session and answers refresh_token_already_used.
pub async fn refresh(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    token: &str,
) -> AuthResult<Value> {
    let not_found = || {
        AuthError::bad_request(
            "refresh_token_not_found",
            "Invalid Refresh Token: Refresh Token Not Found",
        )
    };
    if token.is_empty() || token.len() > 255 {
        return Err(not_found());
    }
    let Some(row) = tx
        .query_opt(
            "select id, token, revoked, updated_at, session_id, user_id
             from auth.refresh_tokens where token = $1",
            &[&token],
        )
        .await
        .map_err(AuthError::pg)?
    else {
        return Err(not_found());
    };
    let rt_id: i64 = row.col(0)?;
    let revoked: bool = row.col::<Option<bool>>(2)?.unwrap_or(false);
    let updated_at: Option<DateTime<Utc>> = row.col(3)?;
    let Some(session_id) = row.col::<Option<Uuid>>(4)? else {
        return Err(not_found());
    };
    let user_id = lock_live_session(state, tx, session_id)
        .await?
        .ok_or_else(not_found)?;
    let Some(user) = users::by_id(tx, user_id).await? else {
        return Err(not_found());
    };
    if user.deleted_at.is_some() {
        return Err(not_found());
    }
    if user.is_banned() {
        return Err(AuthError::bad_request("user_banned", "User is banned"));
    }
    // Re-read under the session lock.
    let revoked = tx
        .query_one(
            "select coalesce(revoked, false) from auth.refresh_tokens where id = $1",
            &[&rt_id],
        )
        .await
        .ok()
        .and_then(|r| r.col::<bool>(0).ok())
        .unwrap_or(revoked);
    if revoked {
        if let Some(answer) = reused(state, tx, token, session_id, user_id, updated_at).await? {
            return Ok(answer);
        }
    }
    tx.execute(
        "update auth.refresh_tokens set revoked = true, updated_at = now() where id = $1",
        &[&rt_id],
    )
    .await
    .map_err(AuthError::pg)?;
    let new_token = util::refresh_token();
    tx.execute(
        "insert into auth.refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id)
         values ('00000000-0000-0000-0000-000000000000', $1, $2, false, now(), now(), $3, $4)",
        &[&new_token, &user_id.to_string(), &token, &session_id],
    )
    .await.map_err(AuthError::pg)?;
    touch_session(tx, session_id).await?;
    respond(state, tx, user_id, session_id, new_token).await
}

/// Lock the session (concurrent refreshes of one session serialize here) and check it has
/// not expired; its user, or None when there is no such session.
async fn lock_live_session(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    session_id: Uuid,
) -> AuthResult<Option<Uuid>> {
    let Some(sess) = tx
        .query_opt(
            "select user_id, not_after,
                    extract(epoch from now() - created_at)::bigint,
                    extract(epoch from now() - coalesce(refreshed_at at time zone 'utc', created_at))::bigint
             from auth.sessions where id = $1 for update",
            &[&session_id],
        )
        .await.map_err(AuthError::pg)?
    else {
        return Ok(None);
    };
    let user_id: Uuid = sess.col(0)?;
    let not_after: Option<DateTime<Utc>> = sess.col(1)?;
    let (age, idle): (Option<i64>, Option<i64>) = (sess.col(2)?, sess.col(3)?);
    let cfg = &state.config.auth;
    let timeboxed = cfg.session_timebox > 0 && age.unwrap_or(0) > cfg.session_timebox as i64;
    if not_after.is_some_and(|n| n < Utc::now()) || timeboxed {
        return Err(AuthError::bad_request(
            "session_expired",
            "Invalid Refresh Token: Session Expired",
        ));
    }
    if cfg.session_inactivity_timeout > 0
        && idle.unwrap_or(0) > cfg.session_inactivity_timeout as i64
    {
        return Err(AuthError::bad_request(
            "session_expired",
            "Invalid Refresh Token: Session Expired (Inactivity)",
        ));
    }
    Ok(Some(user_id))
}

/// A revoked token presented again: the parent of the session's active token gets that
/// token back (Some answer); any other is let through within the reuse interval (None);
/// after it the whole session is revoked.
async fn reused(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    token: &str,
    session_id: Uuid,
    user_id: Uuid,
    updated_at: Option<DateTime<Utc>>,
) -> AuthResult<Option<Value>> {
    let active = tx
        .query_opt(
            "select token, parent from auth.refresh_tokens
             where session_id = $1 and revoked = false order by id desc limit 1",
            &[&session_id],
        )
        .await
        .map_err(AuthError::pg)?;
    if let Some(a) = &active {
        if a.col::<Option<String>>(1)?.as_deref() == Some(token) {
            let active_token: String = a.col(0)?;
            touch_session(tx, session_id).await?;
            return respond(state, tx, user_id, session_id, active_token)
                .await
                .map(Some);
        }
    }
    let reuse_until = updated_at.unwrap_or_else(Utc::now)
        + chrono::Duration::seconds(state.config.auth.refresh_token_reuse_interval as i64);
    if Utc::now() > reuse_until {
        tx.execute(
            "update auth.refresh_tokens set revoked = true, updated_at = now()
             where session_id = $1 and revoked = false",
            &[&session_id],
        )
        .await
        .map_err(AuthError::pg)?;
        return Err(AuthError::bad_request(
            "refresh_token_already_used",
            "Invalid Refresh Token: Already Used",
        )
        .keep_commit());
    }
    Ok(None)
}

async fn touch_session(c: &impl GenericClient, session_id: Uuid) -> AuthResult<()> {
    c.execute(
        "update auth.sessions set refreshed_at = now() at time zone 'utc', updated_at = now() where id = $1",
        &[&session_id],
    )
    .await.map_err(AuthError::pg)?;
    Ok(())
}

/// Supabase's custom access token hook: a SQL function gets
/// `{user_id, claims, authentication_method}` and returns `{claims}` (or `{error}`).
async fn run_hook(
    state: &AppState,
    c: &impl GenericClient,
    user_id: Uuid,
    claims: Value,
    method: &str,
) -> AuthResult<Value> {
    let spec = &state.config.auth.custom_access_token_hook;
    let Some((schema, func)) = util::hook_function(spec) else {
        return Ok(claims);
    };
    let event = json!({"user_id": user_id, "claims": claims, "authentication_method": method});
    let sql = format!(
        "select {}.{}($1::jsonb)",
        util::quote_ident(&schema),
        util::quote_ident(&func)
    );
    let out: Value = c
        .query_one(&sql, &[&event])
        .await
        .map_err(|e| {
            AuthError::internal(
                "Error invoking access token hook.",
                crate::db::error_text(&e),
            )
        })?
        .col::<Option<Value>>(0)?
        .unwrap_or(Value::Null);
    if let Some(err) = out.get("error") {
        let status = err["http_code"]
            .as_u64()
            .and_then(|s| http::StatusCode::from_u16(s as u16).ok())
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(http::StatusCode::BAD_REQUEST);
        let msg = err["message"]
            .as_str()
            .unwrap_or("Error running hook URI")
            .to_string();
        return Err(AuthError::new(status, "unexpected_failure", msg));
    }
    let new = &out["claims"];
    const REQUIRED: &[&str] = &[
        "iss",
        "aud",
        "exp",
        "iat",
        "sub",
        "role",
        "aal",
        "session_id",
        "email",
        "phone",
        "is_anonymous",
    ];
    if !new.is_object() || REQUIRED.iter().any(|k| new.get(*k).is_none()) {
        return Err(AuthError::internal(
            "output claims do not conform to the expected schema",
            format!("custom access token hook {spec} returned claims without the required ones"),
        ));
    }
    Ok(new.clone())
}
