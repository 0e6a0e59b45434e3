//! The database: embedded PostgreSQL, migrations, the request pool, and the one place that
//! hands a request's role and claims to PostgreSQL.

pub mod embedded_pg;
pub mod error;
pub mod migrate;
pub mod wire;

use std::time::Duration;

use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::identity::{AuthContext, ServerRole};

/// A dedicated connection that LISTENs on `channel`: the notifications' payloads arrive on
/// the receiver, which ends when the connection does. Keep the client alive while reading
/// (dropping it closes the connection).
pub async fn listen(
    cfg: &tokio_postgres::Config,
    channel: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ),
    String,
> {
    use futures::StreamExt;
    let (client, mut conn) = cfg.connect(NoTls).await.map_err(|e| error_text(&e))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, channel = "listen", "notification connection ended");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("listen {}", quote_ident(channel)))
        .await
        .map_err(|e| error_text(&e))?;
    Ok((client, rx))
}

/// An identifier as SQL: `"name"` with embedded quotes doubled. The one quoting function
/// every API uses for names that come from requests or the catalog.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A PostgreSQL error as one line: message, then detail and hint when present.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(w) = db.where_() {
                s.push_str(&format!("; at {w}"));
            }
            s
        }
        None => e.to_string(),
    }
}

pub fn make_pool(cfg: tokio_postgres::Config, size: usize) -> Pool {
    make_pool_with(cfg, size, PoolTimeouts::default())
}

/// The request pool with its timeouts: a request waits at most `wait` for a free
/// connection and a new connection gets `create` to be made (an exhausted pool or an
/// unreachable database answers instead of hanging).
pub fn make_pool_with(cfg: tokio_postgres::Config, size: usize, t: PoolTimeouts) -> Pool {
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .timeouts(t.deadpool())
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .expect("pool config is valid")
}

/// How long a request waits for a pooled connection, and for a new one to be made
/// (config `db_pool_wait_timeout_ms`, `db_pool_create_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    pub wait: Duration,
    pub create: Duration,
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        PoolTimeouts {
            wait: Duration::from_secs(10),
            create: Duration::from_secs(5),
        }
    }
}

impl PoolTimeouts {
    pub fn from_config(cfg: &crate::config::Config) -> PoolTimeouts {
        PoolTimeouts {
            wait: Duration::from_millis(cfg.db_pool_wait_timeout_ms),
            create: Duration::from_millis(cfg.db_pool_create_timeout_ms),
        }
    }

    pub fn deadpool(&self) -> deadpool_postgres::Timeouts {
        deadpool_postgres::Timeouts {
            wait: Some(self.wait),
            create: Some(self.create),
            // Recycling a pooled connection is a local check (no round trip).
            recycle: Some(self.create),
        }
    }
}

/// A query failed because the connection or the database went away (not because of
/// the query); see [`error::DbClass::ConnectionLost`].
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    error::DbError::of(e).class == error::DbClass::ConnectionLost
}

/// Retry pacing for reconnect loops: 250 ms, doubling up to `max`.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);

    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The delay to wait now (the next one is longer).
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }
}

/// Connection settings for a database that may go away: a bounded connect, and TCP
/// keepalives that notice a vanished server on idle connections (LISTEN) in about a
/// minute rather than hours. Values the URL sets itself are kept.
pub fn harden_config(cfg: &mut tokio_postgres::Config, t: PoolTimeouts) {
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(t.create);
    }
    if cfg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        cfg.keepalives_idle(Duration::from_secs(30));
    }
    if cfg.get_keepalives_interval().is_none() {
        cfg.keepalives_interval(Duration::from_secs(10));
    }
    if cfg.get_keepalives_retries().is_none() {
        cfg.keepalives_retries(3);
    }
}

/// Extra request GUCs (PostgREST sets these so SQL can read the request).
#[derive(Default)]
pub struct RequestGucs<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// JSON object of lower-cased request headers.
    pub headers: Option<&'a str>,
    pub search_path: Option<&'a str>,
    /// statement_timeout in ms, or None to leave it.
    pub statement_timeout_ms: Option<u64>,
}

/// Begin the request's transaction and, in the same round trip, become its role with its
/// claims. Every API that runs caller work goes through here, so RLS always sees
/// `auth.uid()`, `auth.role()` and `auth.jwt()`.
pub async fn begin_as<'c>(
    client: &'c mut deadpool_postgres::Client,
    ctx: &AuthContext,
    gucs: &RequestGucs<'_>,
    read_only: bool,
) -> Result<Transaction<'c>, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .read_only(read_only)
        .start()
        .await?;
    set_role_and_claims(&*tx, ctx, gucs).await?;
    Ok(tx)
}

/// Begin a transaction as one of the server's own roles (its bookkeeping, never caller
/// work). Every server transaction goes through here or [`become_server`].
pub async fn begin_as_server(
    client: &mut deadpool_postgres::Client,
    role: ServerRole,
    read_only: bool,
) -> Result<Transaction<'_>, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .read_only(read_only)
        .start()
        .await?;
    become_server(&*tx, role).await?;
    Ok(tx)
}

/// Switch an open transaction to a server role (until it ends or switches back).
pub async fn become_server<C: tokio_postgres::GenericClient + Sync>(
    tx: &C,
    role: ServerRole,
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(&role.set_sql(true)).await
}

/// Begin a transaction without setting the role: the caller must run
/// [`set_role_and_claims`] before any caller work, and may pipeline it with that work
/// (both are sent in one round trip; if it fails, the work fails with it).
pub async fn begin<'c>(
    client: &'c mut deadpool_postgres::Client,
    read_only: bool,
) -> Result<Transaction<'c>, tokio_postgres::Error> {
    client
        .build_transaction()
        .read_only(read_only)
        .start()
        .await
}

/// The one statement that makes a transaction the caller's: role, claims and the request
/// GUCs PostgREST sets, as `set_config(..., true)` (local to the transaction). Its eight
/// parameters are [`RoleAndClaims::params`].
pub const SET_ROLE_AND_CLAIMS: &str = "select set_config('role', $1, true),
                set_config('request.jwt.claims', $2, true),
                set_config('request.jwt.claim.sub', $3, true),
                set_config('request.jwt.claim.role', $1, true),
                set_config('request.method', $4, true),
                set_config('request.path', $5, true),
                set_config('request.headers', $6, true),
                case when $7 = '' then '' else set_config('search_path', $7, true) end,
                case when $8 = '' then '' else set_config('statement_timeout', $8, true) end";

/// The parameters of [`SET_ROLE_AND_CLAIMS`] for one request.
pub struct RoleAndClaims<'a> {
    ctx: &'a AuthContext,
    gucs: &'a RequestGucs<'a>,
    claims: String,
    timeout: String,
}

impl<'a> RoleAndClaims<'a> {
    pub fn new(ctx: &'a AuthContext, gucs: &'a RequestGucs<'a>) -> Self {
        RoleAndClaims {
            ctx,
            gucs,
            claims: ctx.claims.to_string(),
            timeout: gucs
                .statement_timeout_ms
                .map(|t| t.to_string())
                .unwrap_or_default(),
        }
    }

    pub fn params(&self) -> [&str; 8] {
        [
            self.ctx.role.as_str(),
            &self.claims,
            self.ctx
                .claims
                .get("sub")
                .and_then(|v| v.as_str())
                .unwrap_or(""),
            self.gucs.method,
            self.gucs.path,
            self.gucs.headers.unwrap_or("{}"),
            self.gucs.search_path.unwrap_or(""),
            &self.timeout,
        ]
    }
}

/// Works on a transaction, or on a bare client inside a BEGIN that the caller pipelines
/// ahead of it (see the REST fast path).
pub async fn set_role_and_claims<C: tokio_postgres::GenericClient + Sync>(
    tx: &C,
    ctx: &AuthContext,
    gucs: &RequestGucs<'_>,
) -> Result<(), tokio_postgres::Error> {
    // query_typed: parameter types are given, so there is no separate prepare round trip
    // (this statement runs on every request).
    use tokio_postgres::types::{ToSql, Type};
    let rc = RoleAndClaims::new(ctx, gucs);
    let p = rc.params();
    let params: Vec<(&(dyn ToSql + Sync), Type)> = p
        .iter()
        .map(|v| (v as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    tx.query_typed(SET_ROLE_AND_CLAIMS, &params).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let steps: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [250, 500, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.step(), Backoff::FIRST);
    }
}
