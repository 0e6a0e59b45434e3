//! The loop that drains `net.http_request_queue`: woken by NOTIFY, bounded in flight,
//! responses stored as pg_net stores them, expired responses deleted.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;
use std::sync::OnceLock;
use tokio::sync::Semaphore;
use tokio_postgres::Client;

use super::http::{execute, Outcome, Queued};
use crate::state::AppState;

/// How the worker runs. `pg_net.ttl` and `pg_net.batch_size`, when set in the database
/// (as on Supabase), take precedence over the defaults here, which are pg_net's.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub batch_size: i32,
    pub ttl: String,
    /// Looks at the queue this often even without a NOTIFY.
    pub poll: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 32,
            batch_size: 200,
            ttl: "6 hours".into(),
            poll: Duration::from_secs(2),
        }
    }
}

const CHANNEL: &str = "oxibase_net";
const APPLICATION_NAME: &str = "oxibase pg_net";

pub fn spawn_background(state: &AppState) {
    let pool = state.pool.clone();
    let mut cfg = state.db_config.clone();
    cfg.application_name(APPLICATION_NAME);
    tokio::spawn(run(pool, cfg, WorkerSettings::default()));
}

async fn run(pool: Pool, listen_cfg: tokio_postgres::Config, settings: WorkerSettings) {
    // Built on the first queued request: its TLS setup costs memory that an idle
    // server whose SQL never calls pg_net should not carry.
    let client: OnceLock<reqwest::Client> = OnceLock::new();
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut backoff = crate::db::Backoff::new(Duration::from_secs(10));
    loop {
        if pool.is_closed() {
            return;
        }
        // One connection of its own (not the API pool): LISTEN, queue and responses.
        let (db, mut wake) = match crate::db::listen(&listen_cfg, CHANNEL).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "pg_net: cannot listen; retrying");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        let db = Arc::new(db);
        loop {
            if let Err(e) = drain(&db, &client, &slots, &settings).await {
                if pool.is_closed() || db.is_closed() {
                    break;
                }
                tracing::warn!(error = %e, "pg_net: processing the request queue failed");
            }
            tokio::select! {
                m = wake.recv() => if m.is_none() { break },
                _ = tokio::time::sleep(settings.poll) => {}
            }
        }
    }
}

/// Expires old responses, then takes and starts queued requests until the queue is empty.
async fn drain(
    db: &Arc<Client>,
    client: &OnceLock<reqwest::Client>,
    slots: &Arc<Semaphore>,
    s: &WorkerSettings,
) -> Result<(), String> {
    let err = |e: tokio_postgres::Error| crate::db::error_text(&e);
    db.execute(
        "with rows as (
           select ctid from net._http_response
           where created < now() - coalesce(nullif(current_setting('pg_net.ttl', true), ''), $1)::interval
           order by created limit coalesce(nullif(current_setting('pg_net.batch_size', true), '')::int, $2))
         delete from net._http_response r using rows where r.ctid = rows.ctid",
        &[&s.ttl, &s.batch_size],
    )
    .await
    .map_err(err)?;
    loop {
        // Wait for a free slot, then take no more than there are free slots.
        drop(slots.acquire().await.map_err(|e| e.to_string())?);
        let free = slots.available_permits().min(s.batch_size.max(1) as usize) as i64;
        let rows = db
            .query(
                "with rows as (select id from net.http_request_queue order by id limit $1)
                 delete from net.http_request_queue q using rows where q.id = rows.id
                 returning q.id, q.method::text, q.url, q.headers, q.body, q.timeout_milliseconds",
                &[&free],
            )
            .await
            .map_err(err)?;
        if rows.is_empty() {
            return Ok(());
        }
        let client = match client.get() {
            Some(c) => c,
            None => {
                let built = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::limited(10))
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
                client.get_or_init(|| built)
            }
        };
        for row in rows {
            let q = Queued {
                id: row.get(0),
                method: row.get(1),
                url: row.get(2),
                headers: row.get::<_, Option<Value>>(3),
                body: row.get(4),
                timeout_ms: row.get(5),
            };
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let (db, client) = (db.clone(), client.clone());
            tokio::spawn(async move {
                let outcome = execute(&client, &q).await;
                if let Err(e) = store(&db, q.id, &outcome).await {
                    tracing::warn!(id = q.id, error = %e, "pg_net: cannot store the response");
                }
                drop(permit);
            });
        }
    }
}

async fn store(db: &Client, id: i64, o: &Outcome) -> Result<(), String> {
    db.execute(
        "insert into net._http_response
           (id, status_code, content, headers, content_type, timed_out, error_msg)
         values ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &id,
            &o.status_code,
            &o.content,
            &o.headers,
            &o.content_type,
            &o.timed_out,
            &o.error_msg,
        ],
    )
    .await
    .map_err(|e| crate::db::error_text(&e))?;
    Ok(())
}
