//! Rate limits kept in PostgreSQL (fixed windows), so every oxibase process on one database
//! shares the counters.
//!
//! Two families of limits apply, each counted in its own rows:
//! - GoTrue's, with the Supabase CLI's `[auth.rate_limit]` names and windows (5 minutes or
//!   an hour), per client IP (emails and SMS: in all);
//! - the per-hour keys of `[auth]` (`rate_limit_per_hour`, `refresh_rate_limit_per_hour`),
//!   per IP and action, when set; such a key stands in for the CLI defaults it overlaps.
//!
//! Besides, failed password sign-ins are counted per account (email or phone, whether or
//! not it exists, so a 429 tells nothing about registration).

use tokio_postgres::GenericClient;

use super::error::{AuthError, AuthResult, RowExt};
use super::tx::as_admin;
use super::Call;
use crate::config::{AuthConfig, AuthRateLimits as L};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    FiveMinutes,
}

impl Window {
    /// The SQL for the start of the current window.
    fn start_sql(self) -> &'static str {
        match self {
            Window::Hour => "date_trunc('hour', now())",
            Window::FiveMinutes => "date_bin('5 minutes', now(), timestamptz '2000-01-01')",
        }
    }
}

/// Count one hit on `key`; true while the window's count is within `limit`.
pub async fn hit(
    c: &impl GenericClient,
    key: &str,
    limit: u32,
    window: Window,
) -> AuthResult<bool> {
    let row = c
        .query_one(
            &format!(
                "insert into auth.oxibase_rate_limits as r (key, window_start, hits)
                 values ($1, {}, 1)
                 on conflict (key, window_start) do update set hits = r.hits + 1
                 returning hits",
                window.start_sql()
            ),
            &[&key],
        )
        .await
        .map_err(AuthError::pg)?;
    Ok(row.col::<i32>(0)? as i64 <= limit as i64)
}

/// Take back one hit on `key` in the current window.
async fn unhit(c: &impl GenericClient, key: &str, window: Window) -> AuthResult<()> {
    c.execute(
        &format!(
            "update auth.oxibase_rate_limits set hits = greatest(hits - 1, 0)
             where key = $1 and window_start = {}",
            window.start_sql()
        ),
        &[&key],
    )
    .await
    .map_err(AuthError::pg)?;
    Ok(())
}

/// A configured limit, else the CLI's default unless an `[auth]` per-hour key replaces it.
fn pick(set: Option<u32>, default: u32, replaced_by_hourly: bool) -> Option<u32> {
    match set {
        Some(v) => Some(v),
        None if replaced_by_hourly => None,
        None => Some(default),
    }
}

/// The limits one IP action is counted against: (key family, limit, window).
fn limits_for(cfg: &AuthConfig, action: &str) -> Vec<(String, u32, Window)> {
    let r = &cfg.rate_limit;
    let hourly = if action == "refresh" {
        cfg.refresh_rate_limit_per_hour
    } else {
        cfg.rate_limit_per_hour
    };
    let mut out = vec![];
    let cli = match action {
        "signup" | "signin" | "otp" => {
            pick(r.sign_in_sign_ups, L::DEFAULT_SIGN_IN_SIGN_UPS, hourly != 0)
                .map(|l| ("sign_in_sign_ups", l, Window::FiveMinutes))
        }
        "verify" => pick(
            r.token_verifications,
            L::DEFAULT_TOKEN_VERIFICATIONS,
            hourly != 0,
        )
        .map(|l| ("token_verifications", l, Window::FiveMinutes)),
        "refresh" => pick(r.token_refresh, L::DEFAULT_TOKEN_REFRESH, hourly != 0)
            .map(|l| ("token_refresh", l, Window::FiveMinutes)),
        "anonymous" => pick(r.anonymous_users, L::DEFAULT_ANONYMOUS_USERS, hourly != 0)
            .map(|l| ("anonymous_users", l, Window::Hour)),
        _ => None,
    };
    if let Some((family, limit, window)) = cli {
        // One counter per endpoint, as GoTrue keeps one limiter per route: sign-ups,
        // password sign-ins and OTP requests each get the whole sign_in_sign_ups allowance.
        out.push((format!("rl:{family}:{action}"), limit, window));
    }
    if hourly != 0 {
        // As before the CLI's keys existed: one counter per action (anonymous sign-ins
        // count as sign-ups).
        let a = if action == "anonymous" {
            "signup"
        } else {
            action
        };
        out.push((format!("ip:{a}"), hourly, Window::Hour));
    }
    out
}

/// Per-IP limits on sign-up, sign-in, OTP, verify, refresh and anonymous sign-ins,
/// counted before any other work and outside the request's transaction (a failed attempt
/// still counts).
pub async fn check_ip(state: &AppState, call: &Call, action: &str) -> AuthResult<()> {
    let limits = limits_for(&state.config.auth, action);
    if limits.is_empty() {
        return Ok(());
    }
    let ok = as_admin(state, async |tx| {
        let mut ok = true;
        for (family, limit, window) in &limits {
            ok &= hit(tx, &format!("{family}:{}", call.ip), *limit, *window).await?;
        }
        Ok(ok)
    })
    .await?;
    if ok {
        Ok(())
    } else {
        Err(AuthError::over_request_rate_limit())
    }
}

/// Per-address limit on emails and SMS sent, inside the sending transaction.
pub async fn check_email(
    state: &AppState,
    c: &impl GenericClient,
    address: &str,
) -> AuthResult<()> {
    let limit = state.config.auth.email_rate_limit_per_hour;
    let key = format!("email:{}", address.to_lowercase());
    if hit(c, &key, limit, Window::Hour).await? {
        Ok(())
    } else {
        Err(AuthError::over_email_send_rate_limit())
    }
}

/// The CLI's `email_sent` (per hour, in all), counted only when mail really leaves
/// through SMTP (the local inbox is not limited), inside the sending transaction.
pub async fn check_email_sent(state: &AppState, c: &impl GenericClient) -> AuthResult<()> {
    if state.auth.smtp.is_none() {
        return Ok(());
    }
    let r = &state.config.auth.rate_limit;
    let limit = r.email_sent.unwrap_or(L::DEFAULT_EMAIL_SENT);
    if hit(c, "rl:email_sent", limit, Window::Hour).await? {
        Ok(())
    } else {
        Err(AuthError::over_email_send_rate_limit())
    }
}

/// The CLI's `sms_sent` (per hour, in all), inside the sending transaction.
pub async fn check_sms(state: &AppState, c: &impl GenericClient) -> AuthResult<()> {
    let r = &state.config.auth.rate_limit;
    let limit = r.sms_sent.unwrap_or(L::DEFAULT_SMS_SENT);
    if hit(c, "rl:sms_sent", limit, Window::Hour).await? {
        Ok(())
    } else {
        Err(AuthError::new(
            http::StatusCode::TOO_MANY_REQUESTS,
            "over_sms_send_rate_limit",
            "SMS rate limit exceeded",
        ))
    }
}

/// The per-account counter of failed password sign-ins, reserved before the password is
/// checked (so parallel guesses cannot slip past it) and handed back unless the password
/// turns out wrong.
pub struct AccountAttempt {
    key: Option<String>,
}

/// Reserve one attempt on `account` (`email:<lowercase>` or `phone:<digits>`); 429 when
/// the account's failures in this window reached the limit.
pub async fn begin_password_attempt(state: &AppState, account: &str) -> AuthResult<AccountAttempt> {
    let limit = state
        .config
        .auth
        .rate_limit
        .password_failures_per_account
        .unwrap_or(L::DEFAULT_PASSWORD_FAILURES_PER_ACCOUNT);
    if limit == 0 {
        return Ok(AccountAttempt { key: None });
    }
    let key = format!("acct:{account}");
    let ok = as_admin(state, async |tx| {
        hit(tx, &key, limit, Window::FiveMinutes).await
    })
    .await?;
    if ok {
        Ok(AccountAttempt { key: Some(key) })
    } else {
        Err(AuthError::over_request_rate_limit())
    }
}

impl AccountAttempt {
    /// The password was right (whatever came next): the attempt is not a failure.
    pub async fn not_failed(self, state: &AppState) {
        let Some(key) = self.key else {
            return;
        };
        let r = as_admin(state, async |tx| unhit(tx, &key, Window::FiveMinutes).await).await;
        if let Err(e) = r {
            tracing::warn!(error = ?e, "could not release a password attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(cfg: &AuthConfig, action: &str) -> Vec<(String, u32, Window)> {
        limits_for(cfg, action)
    }

    #[test]
    fn cli_defaults_unless_an_hourly_key_replaces_them() {
        let mut cfg = AuthConfig::default();
        assert_eq!(
            families(&cfg, "signin"),
            vec![("rl:sign_in_sign_ups:signin".into(), 30, Window::FiveMinutes)]
        );
        assert_eq!(families(&cfg, "refresh")[0].1, 150);
        assert_eq!(families(&cfg, "verify")[0].1, 30);
        assert_eq!(
            families(&cfg, "anonymous"),
            vec![("rl:anonymous_users:anonymous".into(), 30, Window::Hour)]
        );
        // The auth-js runner's per-hour keys: as before, and nothing else.
        cfg.rate_limit_per_hour = 1200;
        cfg.refresh_rate_limit_per_hour = 3600;
        assert_eq!(
            families(&cfg, "signup"),
            vec![("ip:signup".into(), 1200, Window::Hour)]
        );
        assert_eq!(
            families(&cfg, "anonymous"),
            vec![("ip:signup".into(), 1200, Window::Hour)]
        );
        assert_eq!(
            families(&cfg, "refresh"),
            vec![("ip:refresh".into(), 3600, Window::Hour)]
        );
        // An explicit CLI key applies beside the hourly one.
        cfg.rate_limit.sign_in_sign_ups = Some(7);
        assert_eq!(families(&cfg, "otp").len(), 2);
        assert_eq!(families(&cfg, "otp")[0].1, 7);
    }
}
