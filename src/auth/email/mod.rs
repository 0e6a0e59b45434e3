//! Everything that goes by mail (or SMS): one-time codes and links for sign-up
//! confirmation, magic link / email OTP, recovery, invite, email change and
//! reauthentication; POST /otp, /verify (and GET /verify for links), /recover, /resend;
//! the outbox, the local inbox and SMTP delivery.
//!
//! Codes are stored as GoTrue stores them: sha224 hex of address + code, in the token
//! columns of auth.users (mirrored in auth.one_time_tokens); links carry that hash.

use chrono::Utc;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::error::{AuthError, AuthResult};
use super::users::User;
use super::{ratelimit, util};
use crate::state::AppState;

mod otp;
mod outbox;
mod verify;

pub use otp::{otp, recover, resend};
pub use outbox::{deliver_pending, inbox, Smtp};
pub use verify::{ensure_email_identity, verify_get, verify_post};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Signup,
    Invite,
    MagicLink,
    Recovery,
    EmailChange,
    /// The code sent to the current address when the change needs both confirmations.
    EmailChangeCurrent,
    Reauthentication,
    Sms,
    PhoneChange,
}

impl Kind {
    /// (token column, sent_at column, one_time_tokens type)
    fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Signup | Kind::Invite | Kind::Sms => (
                "confirmation_token",
                "confirmation_sent_at",
                "confirmation_token",
            ),
            Kind::MagicLink | Kind::Recovery => {
                ("recovery_token", "recovery_sent_at", "recovery_token")
            }
            Kind::EmailChange => (
                "email_change_token_new",
                "email_change_sent_at",
                "email_change_token_new",
            ),
            Kind::EmailChangeCurrent => (
                "email_change_token_current",
                "email_change_sent_at",
                "email_change_token_current",
            ),
            Kind::Reauthentication => (
                "reauthentication_token",
                "reauthentication_sent_at",
                "reauthentication_token",
            ),
            Kind::PhoneChange => (
                "phone_change_token",
                "phone_change_sent_at",
                "phone_change_token",
            ),
        }
    }
    pub fn link_type(self) -> &'static str {
        match self {
            Kind::Signup => "signup",
            Kind::Invite => "invite",
            Kind::MagicLink => "magiclink",
            Kind::Recovery => "recovery",
            Kind::EmailChange | Kind::EmailChangeCurrent => "email_change",
            Kind::Reauthentication => "reauthentication",
            Kind::Sms => "sms",
            Kind::PhoneChange => "phone_change",
        }
    }
    fn subject(self) -> &'static str {
        match self {
            Kind::Signup => "Confirm Your Signup",
            Kind::Invite => "You have been invited",
            Kind::MagicLink => "Your Magic Link",
            Kind::Recovery => "Reset Your Password",
            Kind::EmailChange | Kind::EmailChangeCurrent => "Confirm Email Change",
            Kind::Reauthentication => "Confirm Reauthentication",
            Kind::Sms | Kind::PhoneChange => "Your code",
        }
    }
    /// The template (and subject) name Supabase uses for this kind of mail.
    pub fn template(self) -> Option<&'static str> {
        match self {
            Kind::Signup => Some("confirmation"),
            Kind::Invite => Some("invite"),
            Kind::MagicLink => Some("magic_link"),
            Kind::Recovery => Some("recovery"),
            Kind::EmailChange | Kind::EmailChangeCurrent => Some("email_change"),
            Kind::Reauthentication => Some("reauthentication"),
            Kind::Sms | Kind::PhoneChange => None,
        }
    }
    /// Sent as a text message (to a phone), not a mail.
    fn is_sms(self) -> bool {
        matches!(self, Kind::Sms | Kind::PhoneChange)
    }
    fn sent_at(self, u: &User) -> Option<chrono::DateTime<Utc>> {
        match self {
            Kind::Signup | Kind::Invite | Kind::Sms => u.confirmation_sent_at,
            Kind::MagicLink | Kind::Recovery => u.recovery_sent_at,
            Kind::EmailChange | Kind::EmailChangeCurrent => u.email_change_sent_at,
            Kind::Reauthentication => u.reauthentication_sent_at,
            Kind::PhoneChange => u.phone_change_sent_at,
        }
    }
}

/// What a generated code looks like to its recipient.
pub struct Sent {
    pub otp: String,
    pub token_hash: String,
    pub action_link: String,
}

/// Generate a code for `u` of `kind` addressed to `to`, store its hash, and (when `deliver`)
/// queue the message, subject to the per-kind frequency and the per-address hourly limit.
pub async fn send(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    u: &User,
    kind: Kind,
    to: &str,
    redirect: &str,
    deliver: bool,
) -> AuthResult<Sent> {
    let cfg = &state.config.auth;
    let sms = kind.is_sms();
    let test_otp = if sms {
        cfg.sms_test_otp.get(to).cloned()
    } else {
        None
    };
    // Test numbers get their fixed code and nothing is sent.
    let deliver = deliver && test_otp.is_none();
    if deliver && sms && !cfg.sms_to_inbox {
        // No SMS provider is built in (as `supabase start` without Twilio & co).
        return Err(AuthError::bad_request(
            "phone_provider_disabled",
            "Unsupported phone provider",
        ));
    }
    if deliver {
        check_limits(state, tx, u, kind, to).await?;
    }
    let otp = test_otp.unwrap_or_else(util::otp);
    let token_hash = util::token_hash(to, &otp);
    let (col, sent_col, ott) = kind.columns();
    // Column names come from the fixed table above, never from input.
    tx.execute(
        &format!("update auth.users set {col} = $2, {sent_col} = now(), updated_at = now() where id = $1"),
        &[&u.id, &token_hash],
    )
    .await.map_err(AuthError::pg)?;
    tx.execute(
        "insert into auth.one_time_tokens (id, user_id, token_type, token_hash, relates_to)
         values ($1, $2, $3, $4, $5)
         on conflict (user_id, token_type) do update set token_hash = excluded.token_hash,
           relates_to = excluded.relates_to, updated_at = now()",
        &[&Uuid::new_v4(), &u.id, &ott, &token_hash, &to],
    )
    .await
    .map_err(AuthError::pg)?;
    let action_link = format!(
        "{}/auth/v1/verify?token={}&type={}&redirect_to={}",
        state.config.external_url(),
        token_hash,
        kind.link_type(),
        percent_encoding::utf8_percent_encode(redirect, percent_encoding::NON_ALPHANUMERIC)
    );
    let sent = Sent {
        otp,
        token_hash,
        action_link,
    };
    if deliver {
        queue(state, tx, u, kind, to, redirect, &sent).await?;
    }
    Ok(sent)
}

/// Refuse a message sent again sooner than the per-kind frequency allows, or over the
/// per-address and global hourly limits.
async fn check_limits(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    u: &User,
    kind: Kind,
    to: &str,
) -> AuthResult<()> {
    let cfg = &state.config.auth;
    if let Some(at) = kind.sent_at(u) {
        let wait = cfg.email_max_frequency as i64 - (Utc::now() - at).num_seconds();
        if wait > 0 {
            return Err(AuthError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "over_email_send_rate_limit",
                format!("For security purposes, you can only request this after {wait} seconds."),
            ));
        }
    }
    ratelimit::check_email(state, tx, to).await?;
    if kind.is_sms() {
        ratelimit::check_sms(state, tx).await?;
    } else {
        ratelimit::check_email_sent(state, tx).await?;
    }
    Ok(())
}

/// Put the message for `sent` in the outbox (the SMTP sender or the local inbox takes it
/// from there), in the project's template when it has one.
async fn queue(
    state: &AppState,
    tx: &tokio_postgres::Transaction<'_>,
    u: &User,
    kind: Kind,
    to: &str,
    redirect: &str,
    sent: &Sent,
) -> AuthResult<()> {
    let cfg = &state.config.auth;
    let name = kind.template();
    let subject = name
        .and_then(|n| cfg.email_subjects.get(n))
        .map(String::as_str)
        .unwrap_or(kind.subject());
    let custom = name.and_then(|n| state.auth.templates.get(n));
    let body = match (custom, kind) {
        (Some(tpl), _) => {
            let new_email = if matches!(kind, Kind::EmailChange | Kind::EmailChangeCurrent) {
                if kind == Kind::EmailChange {
                    to.to_string()
                } else {
                    u.email_change.clone()
                }
            } else {
                String::new()
            };
            render(
                tpl,
                &[
                    ("ConfirmationURL", &sent.action_link),
                    ("Token", &sent.otp),
                    ("TokenHash", &sent.token_hash),
                    ("SiteURL", &cfg.site_url),
                    ("RedirectTo", redirect),
                    ("Email", u.email.as_deref().unwrap_or(to)),
                    ("NewEmail", &new_email),
                ],
            )
        }
        (None, Kind::Reauthentication | Kind::Sms | Kind::PhoneChange) => {
            format!("Enter the code: {}", sent.otp)
        }
        (None, _) => format!(
            "{}\n\nFollow this link: {}\n\nOr enter the code: {}\n",
            kind.subject(),
            sent.action_link,
            sent.otp
        ),
    };
    tx.execute(
        "insert into auth.oxibase_outbox (recipient, kind, subject, body, html, otp, token_hash, action_link)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[&to, &kind.link_type(), &subject, &body, &custom.is_some(), &sent.otp, &sent.token_hash, &sent.action_link],
    )
    .await.map_err(AuthError::pg)?;
    if state.auth.smtp.is_none() {
        tracing::info!(
            kind = kind.link_type(),
            "mail queued in the local inbox (GET /auth/v1/inbox)"
        );
    }
    Ok(())
}

/// Substitute Supabase's template variables (`{{ .Name }}`, spacing optional).
fn render(tpl: &str, vars: &[(&str, &str)]) -> String {
    let mut out = tpl.to_string();
    for (name, value) in vars {
        for pat in [format!("{{{{ .{name} }}}}"), format!("{{{{.{name}}}}}")] {
            out = out.replace(&pat, value);
        }
    }
    out
}

/// Read `<dir>/<name>.html` for every template name; absent files are skipped.
pub fn load_templates(
    dir: Option<&std::path::Path>,
) -> Result<std::collections::HashMap<String, String>, String> {
    let mut m = std::collections::HashMap::new();
    let Some(dir) = dir else {
        return Ok(m);
    };
    for name in [
        "confirmation",
        "invite",
        "magic_link",
        "recovery",
        "email_change",
        "reauthentication",
    ] {
        let p = dir.join(format!("{name}.html"));
        match std::fs::read_to_string(&p) {
            Ok(t) => {
                m.insert(name.to_string(), t);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("auth.email_templates_dir: {}: {e}", p.display())),
        }
    }
    Ok(m)
}

pub async fn create_flow_state(
    c: &impl GenericClient,
    user_id: Uuid,
    (challenge, method): &(String, String),
    auth_method: &str,
) -> AuthResult<Uuid> {
    let code = Uuid::new_v4();
    c.execute(
        "insert into auth.flow_state (id, user_id, auth_code, code_challenge_method, code_challenge,
           provider_type, created_at, updated_at, authentication_method)
         values ($1, $2, $3, $4, $5, 'email', now(), now(), $6)",
        &[&Uuid::new_v4(), &user_id, &code.to_string(), method, challenge, &auth_method],
    )
    .await.map_err(AuthError::pg)?;
    Ok(code)
}
