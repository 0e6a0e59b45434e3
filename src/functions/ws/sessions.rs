//! `user_sessions` bookkeeping for WebSocket connections, written as the server
//! (`service_role`: users may only read their own rows).
//!
//! Each server process has a random `server_id` and holds a session-level advisory lock on
//! it through a dedicated connection for as long as it runs. Every session row it opens
//! carries that id. At start (and every minute after) a process closes the open sessions of
//! every server whose lock is not held: a crashed or stopped process loses its lock with its
//! connection, so its sessions are closed, while the sessions of other live processes on the
//! same database are left alone. When the server stops, `close_own` closes this process's
//! sessions before the pool closes.

use std::time::Duration;

use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::functions::as_server;
use crate::state::AppState;

/// How often a live process closes the sessions of dead ones.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn err(e: tokio_postgres::Error) -> String {
    crate::db::error_text(&e)
}

/// A new `online` session; its id.
pub async fn open(
    state: &AppState,
    user: Uuid,
    user_agent: Option<String>,
) -> Result<Uuid, String> {
    let server = state.functions.ws.server_id;
    as_server(state, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_one(
                    "insert into public.user_sessions (user_id, status, user_agent, server_id) \
                     values ($1, 'online', $2, $3) returning id",
                    &[&user, &user_agent, &server],
                )
                .await?;
            Ok(row.get::<_, Uuid>(0))
        })
    })
    .await
}

/// Traffic was seen on the session.
pub async fn touch(state: &AppState, id: Uuid) {
    let r = as_server(state, move |tx| {
        Box::pin(async move {
            tx.execute(
                "update public.user_sessions set last_seen_at = now() \
                 where id = $1 and disconnected_at is null",
                &[&id],
            )
            .await
        })
    })
    .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "websocket-handler: could not update last_seen_at");
    }
}

/// The connection ended.
pub async fn close(state: &AppState, id: Uuid) {
    if state.pool.is_closed() {
        // Shutting down: the next start (of this or another process) closes it.
        return;
    }
    let r = as_server(state, move |tx| {
        Box::pin(async move {
            tx.execute(
                "update public.user_sessions \
                 set status = 'offline', disconnected_at = now(), last_seen_at = now() \
                 where id = $1 and disconnected_at is null",
                &[&id],
            )
            .await
        })
    })
    .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "websocket-handler: could not close a user session");
    }
}

/// At shutdown, before the pool closes: this process's open sessions end now (if this
/// fails, the next start's sweep closes them).
pub async fn close_own(state: &AppState) {
    let id = state.functions.ws.server_id;
    let r = as_server(state, move |tx| {
        Box::pin(async move {
            tx.execute(
                "update public.user_sessions \
                 set status = 'offline', disconnected_at = now() \
                 where server_id = $1 and disconnected_at is null",
                &[&id],
            )
            .await
        })
    });
    match tokio::time::timeout(Duration::from_secs(2), r).await {
        Ok(Ok(_)) => {}
        // Without the app schema there is no user_sessions: nothing to close.
        Ok(Err(e)) if e.contains("(42P01)") => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket-handler: closing sessions at shutdown failed")
        }
        Err(_) => tracing::debug!("websocket-handler: closing sessions at shutdown timed out"),
    }
}

/// Close the open sessions of every server that no longer holds its lock (and of rows no
/// server claims). Returns how many were closed.
pub async fn sweep(state: &AppState) -> Result<u64, String> {
    let me = state.functions.ws.server_id;
    as_server(state, move |tx| {
        Box::pin(async move {
            tx.execute(
                "update public.user_sessions s \
                 set status = 'offline', disconnected_at = greatest(s.last_seen_at, s.connected_at) \
                 where s.disconnected_at is null \
                   and s.server_id is distinct from $1 \
                   and not exists ( \
                     select 1 from pg_catalog.pg_locks l \
                      where l.locktype = 'advisory' and l.granted and l.objsubid = 1 \
                        and l.database = (select oid from pg_catalog.pg_database \
                                           where datname = current_database()) \
                        and ((l.classid::int8 << 32) | l.objid::int8) = s.server_id)",
                &[&me],
            )
            .await
        })
    })
    .await
}

/// Hold this process's lock for its lifetime (reconnecting if the connection drops), and
/// sweep at start and every [`SWEEP_EVERY`]. Ends when the server shuts down (its pool is
/// closed), which releases the lock.
pub fn spawn_keeper(state: &AppState) {
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            match hold_lock(&st).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "websocket-handler: session lock connection failed; retrying");
                    let _ = st.functions.ws.ready.send_replace(true);
                }
            }
            if st.pool.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

async fn hold_lock(st: &AppState) -> Result<(), String> {
    let (client, conn) = st.db_config.connect(NoTls).await.map_err(err)?;
    let conn = tokio::spawn(conn);
    let id = st.functions.ws.server_id;
    let got: bool = client
        .query_one("select pg_try_advisory_lock($1)", &[&id])
        .await
        .map_err(err)?
        .get(0);
    if !got {
        tracing::error!("websocket-handler: another process holds this server's session lock");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_sweep: Option<std::time::Instant> = None;
    loop {
        if st.pool.is_closed() {
            // The server is stopping: `close_own` already closed this process's sessions
            // (or, if it could not, the next start's sweep will); release the lock.
            drop(client);
            let _ = conn.await;
            return Ok(());
        }
        if client.is_closed() {
            return Err("connection closed".into());
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            last_sweep = Some(std::time::Instant::now());
            match sweep(st).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    closed = n,
                    "websocket-handler: closed sessions of stopped servers"
                ),
                // Without the app schema (`app_schema = false`) there is no user_sessions.
                Err(e) if e.contains("(42P01)") => {
                    tracing::debug!(error = %e, "websocket-handler: no user_sessions table")
                }
                Err(e) => tracing::warn!(error = %e, "websocket-handler: session sweep failed"),
            }
            let _ = st.functions.ws.ready.send_replace(true);
        }
        tick.tick().await;
    }
}
