//! Rate limits kept in PostgreSQL (fixed one-hour windows), so every oxibase process on
//! one database shares the counters.

use tokio_postgres::GenericClient;

use super::error::{AuthError, AuthResult};
use super::Call;
use crate::state::AppState;

/// Count one hit on `key`; true while the window's count is within `limit`.
pub async fn hit(c: &impl GenericClient, key: &str, limit: u32) -> AuthResult<bool> {
    let row = c
        .query_one(
            "insert into auth.oxibase_rate_limits as r (key, window_start, hits)
             values ($1, date_trunc('hour', now()), 1)
             on conflict (key, window_start) do update set hits = r.hits + 1
             returning hits",
            &[&key],
        )
        .await?;
    Ok(row.get::<_, i32>(0) as i64 <= limit as i64)
}

/// Per-IP limit on sign-up, sign-in, OTP and verify, counted before any other work and
/// outside the request's transaction (a failed attempt still counts).
pub async fn check_ip(state: &AppState, call: &Call, action: &str) -> AuthResult<()> {
    let limit = if action == "refresh" {
        state.config.auth.refresh_rate_limit_per_hour
    } else {
        state.config.auth.rate_limit_per_hour
    };
    let mut c = super::client(state).await?;
    let tx = super::begin(&mut c).await?;
    let ok = hit(&*tx, &format!("ip:{action}:{}", call.ip), limit).await?;
    tx.commit().await?;
    if ok {
        Ok(())
    } else {
        Err(AuthError::over_request_rate_limit())
    }
}

/// Per-address limit on emails sent, inside the sending transaction.
pub async fn check_email(
    state: &AppState,
    c: &impl GenericClient,
    address: &str,
) -> AuthResult<()> {
    let limit = state.config.auth.email_rate_limit_per_hour;
    if hit(c, &format!("email:{}", address.to_lowercase()), limit).await? {
        Ok(())
    } else {
        Err(AuthError::over_email_send_rate_limit())
    }
}
