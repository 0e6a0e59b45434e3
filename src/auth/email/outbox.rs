//! The outbox: the local inbox (GET /inbox) and SMTP delivery.

use chrono::Utc;
use serde_json::{json, Value};

use crate::auth::error::{AuthError, AuthResult, RowExt};
use crate::auth::tx::{as_admin, begin};
use crate::auth::{ok, Call};
use crate::http::Resp;
use crate::state::AppState;

// ------------------------------------------------------------------ inbox and SMTP

/// GET /auth/v1/inbox?email=...: the local inbox (service_role only), newest first.
pub async fn inbox(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let ctx = crate::auth::caller(state, call)?;
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
