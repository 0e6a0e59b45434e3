//! Everything that goes by mail (or SMS): one-time codes and links for sign-up
//! confirmation, magic link / email OTP, recovery, invite, email change and
//! reauthentication; POST /otp, /verify (and GET /verify for links), /recover, /resend;
//! the outbox, the local inbox and SMTP delivery.
//!
//! Codes are stored as GoTrue stores them: sha224 hex of address + code, in the token
//! columns of auth.users (mirrored in auth.one_time_tokens); links carry that hash.

use chrono::Utc;
use serde_json::{json, Value};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::error::{AuthError, AuthResult, RowExt};
use super::tx::{as_admin, begin};
use super::users::{self, NewUser, User};
use super::{ok, ratelimit, session, util, Call};
use crate::http::Resp;
use crate::state::AppState;

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
    let sms = matches!(kind, Kind::Sms | Kind::PhoneChange);
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
        if let Some(at) = kind.sent_at(u) {
            let wait = cfg.email_max_frequency as i64 - (Utc::now() - at).num_seconds();
            if wait > 0 {
                return Err(AuthError::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "over_email_send_rate_limit",
                    format!(
                        "For security purposes, you can only request this after {wait} seconds."
                    ),
                ));
            }
        }
        ratelimit::check_email(state, tx, to).await?;
        if sms {
            ratelimit::check_sms(state, tx).await?;
        } else {
            ratelimit::check_email_sent(state, tx).await?;
        }
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
    if deliver {
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
                        ("ConfirmationURL", &action_link),
                        ("Token", &otp),
                        ("TokenHash", &token_hash),
                        ("SiteURL", &cfg.site_url),
                        ("RedirectTo", redirect),
                        ("Email", u.email.as_deref().unwrap_or(to)),
                        ("NewEmail", &new_email),
                    ],
                )
            }
            (None, Kind::Reauthentication | Kind::Sms | Kind::PhoneChange) => {
                format!("Enter the code: {otp}")
            }
            (None, _) => format!(
                "{}\n\nFollow this link: {action_link}\n\nOr enter the code: {otp}\n",
                kind.subject()
            ),
        };
        tx.execute(
            "insert into auth.oxibase_outbox (recipient, kind, subject, body, html, otp, token_hash, action_link)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&to, &kind.link_type(), &subject, &body, &custom.is_some(), &otp, &token_hash, &action_link],
        )
        .await.map_err(AuthError::pg)?;
        if state.auth.smtp.is_none() {
            tracing::info!(
                kind = kind.link_type(),
                "mail queued in the local inbox (GET /auth/v1/inbox)"
            );
        }
    }
    Ok(Sent {
        otp,
        token_hash,
        action_link,
    })
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
    let data = super::metadata(call, "data")?.unwrap_or_else(|| json!({}));
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
                    NewUser {
                        id: None,
                        email: email.as_deref(),
                        phone: phone.as_deref(),
                        password_hash: None,
                        user_meta: data.clone(),
                        app_meta: None,
                        role: None,
                        email_confirmed: false,
                        phone_confirmed: false,
                        is_anonymous: false,
                        invited: false,
                    },
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
async fn verify_token(
    tx: &tokio_postgres::Transaction<'_>,
    cfg: &crate::config::AuthConfig,
    vtype: &str,
    token: Option<&str>,
    token_hash: Option<&str>,
    email: Option<&str>,
    phone: Option<&str>,
) -> AuthResult<Verified> {
    let otp_expiry = cfg.otp_expiry;
    let columns: &[&str] = match vtype {
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
    let mut found: Option<(User, &str, String)> = None;
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
    let Some((u, col, hash)) = found else {
        return Err(AuthError::otp_expired());
    };
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
    let expired = sent_at.is_none_or(|s| (Utc::now() - s).num_seconds() > otp_expiry as i64);
    if expired || hash.is_empty() {
        return Err(AuthError::otp_expired());
    }
    let method = match col {
        "confirmation_token" if vtype == "sms" => {
            tx.execute(
                "update auth.users set confirmation_token = '', phone_confirmed_at = coalesce(phone_confirmed_at, now()),
                   updated_at = now() where id = $1",
                &[&u.id],
            )
            .await.map_err(AuthError::pg)?;
            "otp"
        }
        "confirmation_token" => {
            tx.execute(
                "update auth.users set confirmation_token = '', email_confirmed_at = coalesce(email_confirmed_at, now()),
                   updated_at = now() where id = $1",
                &[&u.id],
            )
            .await.map_err(AuthError::pg)?;
            if vtype == "invite" || u.invited_at.is_some() && u.email_confirmed_at.is_none() {
                "invite"
            } else if vtype == "signup" {
                "email/signup"
            } else {
                "otp"
            }
        }
        "recovery_token" => {
            tx.execute(
                "update auth.users set recovery_token = '', email_confirmed_at = coalesce(email_confirmed_at, now()),
                   updated_at = now() where id = $1",
                &[&u.id],
            )
            .await.map_err(AuthError::pg)?;
            match vtype {
                "recovery" => "recovery",
                "magiclink" => "magiclink",
                _ => "otp",
            }
        }
        "email_change_token_new" | "email_change_token_current" => {
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
                return Ok(Verified::HalfwayEmailChange);
            }
            let taken = tx
                .query_opt(
                    "select 1 from auth.users where lower(email) = lower($1) and id <> $2 and deleted_at is null",
                    &[&u.email_change, &u.id],
                )
                .await.map_err(AuthError::pg)?;
            if taken.is_some() {
                return Err(AuthError::email_exists());
            }
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
            "email_change"
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
            super::audit::record(tx, &call.ip, Some(u.id), "user_recovery_requested", None).await?;
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

// ------------------------------------------------------------------ inbox and SMTP

/// GET /auth/v1/inbox?email=...: the local inbox (service_role only), newest first.
pub async fn inbox(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let ctx = super::caller(state, call)?;
    if !ctx.role.is_service() {
        return Err(AuthError::not_admin());
    }
    let email = call.q("email").unwrap_or("").trim().to_lowercase();
    let messages: Vec<Value> = as_admin(state, async |tx| {
        let rows = tx
            .query(
                "select id, created_at, recipient, kind, subject, body, otp, token_hash, action_link, sent_at, html
                 from auth.oxibase_outbox where ($1 = '' or lower(recipient) = $1)
                 order by id desc limit 100",
                &[&email],
            )
            .await.map_err(AuthError::pg)?;
        let messages: Vec<Value> = rows
            .iter()
            .map(|r| -> AuthResult<Value> {
                Ok(json!({
                    "id": r.col::<i64>(0)?,
                    "html": r.col::<bool>(10)?,
                    "created_at": r.col::<chrono::DateTime<Utc>>(1)?,
                    "to": r.col::<String>(2)?,
                    "type": r.col::<String>(3)?,
                    "subject": r.col::<String>(4)?,
                    "body": r.col::<Option<String>>(5)?,
                    "otp": r.col::<Option<String>>(6)?,
                    "token_hash": r.col::<Option<String>>(7)?,
                    "action_link": r.col::<Option<String>>(8)?,
                    "sent_at": r.col::<Option<chrono::DateTime<Utc>>>(9)?,
                }))
            })
            .collect::<AuthResult<_>>()?;
        Ok(messages)
    })
    .await?;
    Ok(ok(json!({ "messages": messages })))
}

/// An SMTP sender (plain or STARTTLS-less; for TLS put a relay in front).
pub struct Smtp {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Smtp {
    /// `smtp://[user:pass@]host[:port]` (port 25 by default). Built without TLS to keep the
    /// build light: point it at a local relay (Mailpit, Postfix) for TLS to the world.
    pub fn new(url: &str, sender: &str) -> Result<Smtp, String> {
        use lettre::transport::smtp::authentication::Credentials;
        let rest = url
            .strip_prefix("smtp://")
            .ok_or("auth.smtp_url: expected smtp://[user:pass@]host[:port]")?;
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| "auth.smtp_url: bad port".to_string())?,
            ),
            None => (hostport, 25),
        };
        if host.is_empty() {
            return Err("auth.smtp_url: missing host".into());
        }
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .to_string()
        };
        let mut b = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
            .port(port);
        if let Some(c) = creds {
            let (u, p) = c.split_once(':').unwrap_or((c, ""));
            b = b.credentials(Credentials::new(dec(u), dec(p)));
        }
        let from = sender
            .parse()
            .map_err(|e| format!("auth.smtp_sender: {e}"))?;
        Ok(Smtp {
            transport: b.build(),
            from,
        })
    }
}

/// Hand queued messages to SMTP; several processes may run this at once (skip locked).
pub async fn deliver_pending(state: &AppState) {
    use lettre::AsyncTransport;
    let Some(smtp) = &state.auth.smtp else {
        return;
    };
    let Ok(mut c) = state.pool.get().await else {
        return;
    };
    let Ok(tx) = begin(&mut c).await else {
        return;
    };
    let rows = match tx
        .query(
            // Up to five tries, backing off a minute more after each failure.
            "select id, recipient, subject, coalesce(body, ''), html from auth.oxibase_outbox
             where sent_at is null and attempts < 5
               and (last_attempt_at is null or last_attempt_at < now() - make_interval(mins => attempts))
             order by id limit 20 for update skip locked",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %crate::db::error_text(&e), "outbox read failed");
            return;
        }
    };
    for r in rows {
        let (id, to): (i64, String) = match (r.try_get(0), r.try_get(1)) {
            (Ok(id), Ok(to)) => (id, to),
            _ => {
                tracing::warn!("outbox row unreadable");
                continue;
            }
        };
        let msg = to
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| e.to_string())
            .and_then(|mb| {
                let ct = if r.try_get::<_, bool>(4).map_err(|e| e.to_string())? {
                    lettre::message::header::ContentType::TEXT_HTML
                } else {
                    lettre::message::header::ContentType::TEXT_PLAIN
                };
                lettre::Message::builder()
                    .from(smtp.from.clone())
                    .to(mb)
                    .subject(r.try_get::<_, String>(2).map_err(|e| e.to_string())?)
                    .header(ct)
                    .body(r.try_get::<_, String>(3).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())
            });
        let result = match msg {
            Ok(m) => smtp
                .transport
                .send(m)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let _ = match result {
            Ok(()) => {
                tx.execute(
                    "update auth.oxibase_outbox set sent_at = now(), body = null, otp = null,
                       token_hash = null, action_link = null, error = null,
                       attempts = attempts + 1, last_attempt_at = now() where id = $1",
                    &[&id],
                )
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "SMTP delivery failed; will retry");
                tx.execute(
                    "update auth.oxibase_outbox set error = $2, attempts = attempts + 1,
                       last_attempt_at = now() where id = $1",
                    &[&id, &e],
                )
                .await
            }
        };
    }
    let _ = tx.commit().await;
}
