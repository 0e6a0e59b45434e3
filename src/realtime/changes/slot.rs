//! The capture task: one temporary logical replication slot per process, opened on demand,
//! polled, reopened after the database comes back and dropped when nobody listens.

use std::time::Duration;

use super::dispatch::dispatch;
use super::pgoutput::Decoder;
use crate::state::AppState;

/// How often the slot is read.
const POLL: Duration = Duration::from_millis(50);

/// The capture task's state, kept in the realtime `State`.
pub struct Capture {
    running: tokio::sync::Mutex<bool>,
    /// When a join last asked for capture (the task idles out only well after that).
    last_demand: std::sync::Mutex<std::time::Instant>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            running: tokio::sync::Mutex::new(false),
            last_demand: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }
}

/// With no postgres_changes subscriber for this long, the slot is dropped.
const IDLE: Duration = Duration::from_secs(30);

/// A capture session: its client, slot, and whether each poll must first flush the WAL.
struct Session {
    client: deadpool_postgres::ClientWrapper,
    slot: String,
    /// With `synchronous_commit = off` (e.g. fsync off in tests), commits reach the decoder
    /// only when the WAL writer flushes (up to 200 ms); a synchronous commit of our own that
    /// wrote WAL (a logical message, ignored by pgoutput) flushes everything before it.
    force_flush: bool,
}

/// A session of its own holding a temporary slot (dropped with the session).
async fn open_slot(state: &AppState) -> Result<Session, String> {
    let obj = state.pool.get().await.map_err(|e| e.to_string())?;
    // Detached from the pool: the temporary slot belongs to this session.
    let client = deadpool_postgres::Object::take(obj);
    // The owner role of `realtime` has REPLICATION (0400); a superuser URL works as is.
    if let Err(e) = client
        .batch_execute(&crate::identity::ServerRole::RealtimeAdmin.set_sql(false))
        .await
    {
        tracing::debug!(error = %crate::db::error_text(&e), "realtime: staying in the login role for capture");
    }
    let slot = format!(
        "oxibase_rt_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // Creating a slot waits for every transaction already running in the cluster; a session
    // left idle in a transaction must not hang the join that asked for capture.
    let created = async {
        client
            .batch_execute("set statement_timeout = '10s'")
            .await?;
        client
            .query(
                "select pg_create_logical_replication_slot($1, 'pgoutput', true)",
                &[&slot],
            )
            .await?;
        client.batch_execute("set statement_timeout = 0").await
    }
    .await;
    created.map_err(|e| {
        format!(
            "cannot create the replication slot: {}",
            crate::db::error_text(&e)
        )
    })?;
    let force_flush = client
        .query_one("show synchronous_commit", &[])
        .await
        .map(|r| r.get::<_, String>(0) == "off")
        .unwrap_or(false);
    if force_flush {
        let _ = client.batch_execute("set synchronous_commit = on").await;
    }
    tracing::info!(%slot, "realtime: change capture started");
    Ok(Session {
        client,
        slot,
        force_flush,
    })
}

/// Start the capture task if it is not running; returns once the slot exists, so every
/// change committed after a join reply is seen.
pub async fn ensure_started(state: &AppState) -> Result<(), String> {
    *state
        .realtime
        .capture
        .last_demand
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    let mut running = state.realtime.capture.running.lock().await;
    if *running {
        return Ok(());
    }
    let session = open_slot(state).await?;
    *running = true;
    tokio::spawn(capture(state.clone(), session));
    Ok(())
}

/// No postgres_changes subscriber now, and no join asked for one within `IDLE`.
fn idle(st: &AppState) -> bool {
    !st.realtime.hub.has_pg_subscribers()
        && st
            .realtime
            .capture
            .last_demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > IDLE
}

async fn capture(st: AppState, mut session: Session) {
    let mut decoder = Decoder::default();
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if idle(&st) {
            let mut running = st.realtime.capture.running.lock().await;
            // Re-checked under the lock a join takes before it subscribes.
            if idle(&st) {
                *running = false;
                tracing::info!(slot = %session.slot, "realtime: no postgres_changes subscribers; capture stopped");
                return;
            }
        }
        if session.force_flush {
            // Only when something is written but not yet flushed (no WAL while idle).
            let _ = session
                .client
                .simple_query(
                    "select case when pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()
                       then pg_logical_emit_message(true, 'oxibase', '') end",
                )
                .await;
        }
        let rows = session
            .client
            .query(
                "select data from pg_logical_slot_get_binary_changes($1, NULL, 2000,
                   'proto_version', '1', 'publication_names', 'supabase_realtime')",
                &[&session.slot],
            )
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                if !session.client.is_closed() && !crate::db::is_connection_error(&e) {
                    tracing::error!(error = %crate::db::error_text(&e), "realtime: reading the replication slot failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // The session (and its temporary slot) is gone, e.g. the database restarted:
                // open a new one while anyone listens. Changes committed before the new
                // slot exists are not delivered (as in Supabase Realtime).
                if st.pool.is_closed() {
                    *st.realtime.capture.running.lock().await = false;
                    return;
                }
                tracing::warn!(error = %crate::db::error_text(&e), "realtime: change capture lost its database connection; reconnecting");
                let mut backoff = crate::db::Backoff::new(Duration::from_secs(2));
                let mut attempt = 0u32;
                loop {
                    if st.pool.is_closed() || !st.realtime.hub.has_pg_subscribers() {
                        *st.realtime.capture.running.lock().await = false;
                        return;
                    }
                    attempt += 1;
                    match open_slot(&st).await {
                        Ok(s) => {
                            session = s;
                            decoder = Decoder::default();
                            tracing::info!(attempt, "realtime: change capture resumed");
                            break;
                        }
                        Err(e) if attempt == 1 || attempt.is_multiple_of(10) => {
                            tracing::warn!(attempt, error = %e, "realtime: change capture unavailable; retrying");
                        }
                        Err(e) => {
                            tracing::debug!(attempt, error = %e, "realtime: change capture unavailable; retrying");
                        }
                    }
                    backoff.wait().await;
                }
                continue;
            }
        };
        if rows.is_empty() {
            continue;
        }
        let mut changes = vec![];
        for r in &rows {
            let data: &[u8] = r.get(0);
            match decoder.message(data) {
                Ok(Some(c)) => changes.push(c),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "realtime: undecodable pgoutput message"),
            }
        }
        for rel in decoder.take_new_relations() {
            describe(&st, &session.client, &mut decoder, rel).await;
        }
        if !changes.is_empty() {
            dispatch(&st, &decoder, changes).await;
        }
    }
}

/// Describe a relation (column types, RLS, primary key) before its changes go out: without
/// it values would go out untyped and no RLS check could run. Right after a reconnect the
/// capture session may fail where a pooled connection works, so that is tried too, a few
/// times; a relation still undescribed is retried with the next batch.
async fn describe(
    st: &AppState,
    session: &tokio_postgres::Client,
    decoder: &mut Decoder,
    rel: u32,
) {
    let mut last = match decoder.describe(session, rel).await {
        Ok(()) => return,
        Err(e) => e,
    };
    for attempt in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        match st.pool.get().await {
            Ok(c) => match decoder.describe(&c, rel).await {
                Ok(()) => return,
                Err(e) => last = e,
            },
            Err(e) => last = e.to_string(),
        }
    }
    tracing::warn!(error = %last, "realtime: cannot describe a relation; retrying with the next batch");
    decoder.fresh.push(rel);
}
