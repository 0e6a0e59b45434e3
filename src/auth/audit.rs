//! GoTrue's audit log: auth.audit_log_entries rows written in the request's transaction
//! (so a rolled-back action leaves no entry), and GET /admin/audit to read them.

use serde_json::{json, Value};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::error::{AuthError, AuthResult, RowExt};
use super::page::Page;
use super::tx::as_admin;
use super::Call;
use crate::http::Resp;
use crate::state::AppState;

/// GoTrue's grouping of actions.
fn log_type(action: &str) -> &'static str {
    match action {
        "login" | "logout" | "invite_accepted" => "account",
        "user_signedup" | "user_invited" | "user_deleted" => "team",
        "token_revoked" | "token_refreshed" => "token",
        a if a.starts_with("factor_")
            || a == "challenge_created"
            || a == "verification_attempted" =>
        {
            "factor"
        }
        _ => "user",
    }
}

/// Record `action` by `actor` (a user id; None for the service role).
pub async fn record(
    c: &impl GenericClient,
    ip: &str,
    actor: Option<Uuid>,
    action: &str,
    traits: Option<Value>,
) -> AuthResult<()> {
    let ip: String = if ip == "unknown" {
        String::new()
    } else {
        ip.chars().take(64).collect()
    };
    c.execute(
        "insert into auth.audit_log_entries (instance_id, id, payload, created_at, ip_address)
         select '00000000-0000-0000-0000-000000000000', $1,
           (jsonb_build_object(
              'actor_id', coalesce($2::uuid::text, '00000000-0000-0000-0000-000000000000'),
              'actor_username', coalesce((select coalesce(nullif(u.email, ''), u.phone) from auth.users u where u.id = $2),
                                         case when $2::uuid is null then 'service_role' else '' end),
              'actor_via_sso', false,
              'action', $3::text,
              'log_type', $4::text)
            || case when $5::jsonb is null then '{}'::jsonb else jsonb_build_object('traits', $5::jsonb) end)::json,
           now(), $6",
        &[&Uuid::new_v4(), &actor, &action, &log_type(action), &traits, &ip],
    )
    .await.map_err(AuthError::pg)?;
    Ok(())
}

/// GET /admin/audit?page=&per_page=&query=author:x|action:x|type:x
pub async fn list(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let pg = Page::from_call(call)?;
    let (cols, value): (&[&str], String) = match call.q("query").filter(|q| !q.is_empty()) {
        None => (&[], String::new()),
        Some(q) => {
            let (scope, v) = q
                .split_once(':')
                .ok_or_else(|| AuthError::validation(format!("Invalid query scope: {q}")))?;
            let cols: &[&str] = match scope {
                "author" => &["actor_username", "actor_name"],
                "action" => &["action"],
                "type" => &["log_type"],
                _ => return Err(AuthError::validation(format!("Invalid query scope: {q}"))),
            };
            (cols, v.to_string())
        }
    };
    // Column names come from the fixed table above; the value is bound.
    let filter = if cols.is_empty() || value.is_empty() {
        "true".to_string()
    } else {
        cols.iter()
            .map(|c| format!("payload->>'{c}' ilike '%' || $1 || '%'"))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let r = as_admin(state, async |tx| {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = if filter == "true" {
            vec![]
        } else {
            vec![&value]
        };
        let total: i64 = tx
            .query_one(
                &format!("select count(*) from auth.audit_log_entries where {filter}"),
                &params,
            )
            .await
            .map_err(AuthError::pg)?
            .col(0)?;
        // limit/offset are integers computed here, not input text.
        let rows = tx
            .query(
                &format!(
                    "select id, payload::jsonb, created_at, ip_address from auth.audit_log_entries
                     where {filter} order by created_at desc limit {} offset {}",
                    pg.per_page,
                    pg.offset()
                ),
                &params,
            )
            .await
            .map_err(AuthError::pg)?;
        let entries: Vec<Value> = rows
            .iter()
            .map(|r| -> AuthResult<Value> {
                Ok(json!({
                    "id": r.col::<Uuid>(0)?,
                    "payload": r.col::<Option<Value>>(1)?,
                    "created_at": r.col::<Option<chrono::DateTime<chrono::Utc>>>(2)?,
                    "ip_address": r.col::<String>(3)?,
                }))
            })
            .collect::<AuthResult<_>>()?;
        Ok((total, entries))
    })
    .await;
    let (total, entries) = r?;
    let body = Value::Array(entries);
    Ok(pg.response(state, "admin/audit", total, &body))
}
