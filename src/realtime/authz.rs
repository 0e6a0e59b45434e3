//! Private-channel authorization, as Supabase Realtime does it: RLS policies on
//! `realtime.messages` decide, evaluated as the caller with `realtime.topic()` set to the
//! channel's subtopic. Read: probe rows are inserted by the table owner, then selected as the
//! caller. Write: the caller inserts a row. Everything is rolled back.

use crate::db::error::DbError;
use crate::db::{set_role_and_claims, RequestGucs};
use crate::identity::{AuthContext, ServerRole};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policies {
    pub broadcast_read: bool,
    pub presence_read: bool,
}

#[derive(Debug)]
pub struct AuthzError(pub String);

impl std::fmt::Display for AuthzError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The request GUCs of work done for a WebSocket subscriber.
pub(super) fn gucs() -> RequestGucs<'static> {
    RequestGucs {
        method: "GET",
        path: "/realtime/v1/websocket",
        ..Default::default()
    }
}

fn db_err(e: tokio_postgres::Error) -> AuthzError {
    AuthzError(crate::db::error_text(&e))
}

async fn connection(state: &AppState) -> Result<deadpool_postgres::Object, AuthzError> {
    state
        .pool
        .get()
        .await
        .map_err(|e| AuthzError(e.to_string()))
}

/// Become the caller for the rest of `tx`, with `realtime.topic()` returning `topic`.
async fn act_as_caller(
    tx: &deadpool_postgres::Transaction<'_>,
    ctx: &AuthContext,
    topic: &str,
) -> Result<(), AuthzError> {
    set_role_and_claims(&**tx, ctx, &gucs())
        .await
        .map_err(db_err)?;
    tx.execute("select set_config('realtime.topic', $1, true)", &[&topic])
        .await
        .map_err(db_err)?;
    Ok(())
}

/// A transaction as `supabase_realtime_admin`, the owner of `realtime.messages`.
pub(super) async fn admin_tx(
    client: &mut deadpool_postgres::Object,
    read_only: bool,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    crate::db::begin_as_server(client, ServerRole::RealtimeAdmin, read_only).await
}

/// A policy that errors denies (Supabase logs RlsPolicyError and refuses).
fn policy_error(e: &tokio_postgres::Error) {
    tracing::warn!(error = %crate::db::error_text(e), "realtime: RLS policy error on realtime.messages");
}

/// Private topics the server keeps for itself (websocket-handler's conversations): no
/// client reads or writes them through the realtime API, whatever the policies on
/// `realtime.messages` allow, service role included.
pub const RESERVED_PREFIX: &str = "oxibase.";

fn reserved(topic: &str) -> bool {
    topic.starts_with(RESERVED_PREFIX)
}

/// Which of broadcast/presence the caller may read on `topic`.
pub async fn read_policies(
    state: &AppState,
    ctx: &AuthContext,
    topic: &str,
) -> Result<Policies, AuthzError> {
    if reserved(topic) {
        return Ok(Policies {
            broadcast_read: false,
            presence_read: false,
        });
    }
    let mut client = connection(state).await?;
    let tx = admin_tx(&mut client, false).await.map_err(db_err)?;
    let b_id = uuid::Uuid::new_v4();
    let p_id = uuid::Uuid::new_v4();
    tx.execute(
        "insert into realtime.messages (id, topic, extension) values ($1, $3, 'broadcast'), ($2, $3, 'presence')",
        &[&b_id, &p_id, &topic],
    )
    .await
    .map_err(db_err)?;
    act_as_caller(&tx, ctx, topic).await?;
    let rows = tx
        .query(
            "select id from realtime.messages where id = any($1)",
            &[&vec![b_id, p_id]],
        )
        .await;
    let _ = tx.rollback().await;
    let ids: Vec<uuid::Uuid> = match rows {
        Ok(r) => r.iter().map(|r| r.get(0)).collect(),
        Err(e) => {
            policy_error(&e);
            vec![]
        }
    };
    Ok(Policies {
        broadcast_read: ids.contains(&b_id),
        presence_read: ids.contains(&p_id),
    })
}

/// May the caller write `extension` ("broadcast" or "presence") messages on `topic`?
pub async fn can_write(
    state: &AppState,
    ctx: &AuthContext,
    topic: &str,
    extension: &str,
) -> Result<bool, AuthzError> {
    if reserved(topic) {
        return Ok(false);
    }
    let mut client = connection(state).await?;
    let tx = client.build_transaction().start().await.map_err(db_err)?;
    act_as_caller(&tx, ctx, topic).await?;
    let r = tx
        .execute(
            "insert into realtime.messages (topic, extension) values ($1, $2)",
            &[&topic, &extension],
        )
        .await;
    let _ = tx.rollback().await;
    match r {
        Ok(_) => Ok(true),
        Err(e) if DbError::of(&e).class.is_privilege() => Ok(false),
        Err(e) => {
            policy_error(&e);
            Ok(false)
        }
    }
}

/// Up to `limit` (1..=25) private broadcast messages of `topic` inserted since `since_ms`
/// (Unix milliseconds), oldest first: (id, event, payload).
pub async fn replay(
    state: &AppState,
    topic: &str,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<(uuid::Uuid, String, serde_json::Value)>, AuthzError> {
    let mut client = connection(state).await?;
    let tx = admin_tx(&mut client, true).await.map_err(db_err)?;
    let rows = tx
        .query(
            "select id, coalesce(event, ''), coalesce(payload, '{}'::jsonb)
               from realtime.messages
              where topic = $1 and private is true and extension = 'broadcast'
                and inserted_at >= to_timestamp($2::float8 / 1000)::timestamp
                and inserted_at < now()::timestamp + interval '1 minute'
              order by inserted_at desc limit $3",
            &[&topic, &(since_ms as f64), &limit.clamp(1, 25)],
        )
        .await
        .map_err(db_err)?;
    let _ = tx.commit().await;
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    out.reverse();
    Ok(out)
}
