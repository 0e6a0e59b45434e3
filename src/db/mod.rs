//! The database: embedded PostgreSQL, migrations, the request pool, and the one place that
//! hands a request's role and claims to PostgreSQL.

pub mod embedded_pg;
pub mod migrate;
pub mod wire;

use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::http::apikey::AuthContext;

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
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .build()
        .expect("pool config is valid")
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
