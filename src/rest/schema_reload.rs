//! The schema cache's life: loaded at start, reloaded on `LISTEN pgrst` (DDL event
//! trigger, `NOTIFY pgrst, 'reload schema'`), after a reconnect, and on a miss.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use super::schema::{self, SchemaCache};
use crate::config::Config;
use crate::state::AppState;

/// This API's share of the application state: the schema cache.
pub struct State {
    cache: RwLock<Arc<SchemaCache>>,
    last_reload: Mutex<Instant>,
    miss_lock: tokio::sync::Mutex<()>,
    pub(super) schemas: Vec<String>,
    /// `pg_timezone_names`, for `Prefer: timezone=` (loaded once: the list changes only
    /// with PostgreSQL's tz data).
    pub(super) timezones: std::collections::HashSet<String>,
}

impl State {
    pub fn cache(&self) -> Arc<SchemaCache> {
        self.cache.read().map(|c| c.clone()).unwrap_or_default()
    }
}

pub async fn init(config: &Config, pool: &Pool) -> Result<State, String> {
    let schemas = config.rest.schemas.clone();
    let client = pool
        .get()
        .await
        .map_err(|e| format!("rest: database: {e}"))?;
    let sc = schema::load(&**client, &schemas).await.map_err(|e| {
        format!(
            "rest: loading the schema cache: {}",
            crate::db::error_text(&e)
        )
    })?;
    let timezones = client
        .query("select name from pg_catalog.pg_timezone_names", &[])
        .await
        .map_err(|e| format!("rest: time zones: {}", crate::db::error_text(&e)))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    Ok(State {
        timezones,
        cache: RwLock::new(Arc::new(sc)),
        last_reload: Mutex::new(Instant::now()),
        miss_lock: tokio::sync::Mutex::new(()),
        schemas,
    })
}

/// Reload the schema cache now.
pub async fn reload(state: &AppState) -> Result<(), String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let sc = schema::load(&**client, &state.rest.schemas)
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    if let Ok(mut w) = state.rest.cache.write() {
        *w = Arc::new(sc);
    }
    if let Ok(mut t) = state.rest.last_reload.lock() {
        *t = Instant::now();
    }
    Ok(())
}

/// Reload after a miss (unknown table/function/relationship), so a request right after
/// DDL does not race the NOTIFY. Misses are serialized, and reloads are at most every 50 ms
/// (a stream of bad names cannot turn into a stream of catalog scans).
pub(super) async fn reload_on_miss(state: &AppState) -> bool {
    let started = Instant::now();
    let _guard = state.rest.miss_lock.lock().await;
    let last = state.rest.last_reload.lock().map(|t| *t).unwrap_or(started);
    if last > started {
        // Someone reloaded while we waited: use theirs.
        return true;
    }
    let since = last.elapsed();
    if since < Duration::from_millis(50) {
        tokio::time::sleep(Duration::from_millis(50) - since).await;
    }
    reload(state).await.is_ok()
}

/// LISTEN on `pgrst` (DDL event trigger and `NOTIFY pgrst, 'reload schema'`) on a
/// dedicated connection and reload the cache on each message. When the connection is lost
/// (the database restarted), it is made again with backoff and the cache is reloaded once,
/// since DDL may have run while nobody listened.
pub fn spawn_background(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        let url = state.db_config.clone();
        let mut backoff = crate::db::Backoff::new(Duration::from_secs(5));
        let mut lost = false;
        loop {
            if state.pool.is_closed() {
                return;
            }
            match crate::db::listen(&url, "pgrst").await {
                Ok((client, rx)) => {
                    backoff.reset();
                    if lost {
                        tracing::info!(
                            "rest: schema listener reconnected; reloading the schema cache"
                        );
                        if let Err(e) = reload(&state).await {
                            tracing::warn!(error = %e, "rest: schema cache reload failed");
                        }
                    }
                    listen(&state, rx).await;
                    drop(client);
                    if state.pool.is_closed() {
                        return;
                    }
                    lost = true;
                    tracing::warn!(
                        "rest: schema listener lost its database connection; reconnecting"
                    );
                    backoff.wait().await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "rest: schema listener cannot connect yet");
                    lost = true;
                    backoff.wait().await;
                }
            }
        }
    });
}

/// Until the connection ends.
async fn listen(state: &AppState, mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) {
    while let Some(payload) = rx.recv().await {
        if payload.is_empty()
            || payload.starts_with("reload schema")
            || payload.starts_with("reload config")
        {
            // Coalesce bursts of DDL into one reload.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while rx.try_recv().is_ok() {}
            if let Err(e) = reload(state).await {
                tracing::warn!(error = %e, "rest: schema cache reload failed");
            }
        }
    }
}
