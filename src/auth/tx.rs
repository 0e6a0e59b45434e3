//! The server's own work on auth tables: one transaction per request as
//! `supabase_auth_admin` (never as the caller), timestamps in UTC, committed on success
//! or on an error that asks for it ([`AuthError::commit`]), rolled back otherwise.

use tokio_postgres::types::ToSql;

use super::error::{AuthError, AuthResult};
use crate::db::begin_as_server;
use crate::identity::ServerRole;
use crate::state::AppState;

/// Run `work` in one admin transaction on a pooled connection, then [`finish`] it.
pub async fn as_admin<T>(
    state: &AppState,
    work: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> AuthResult<T>,
) -> AuthResult<T> {
    let mut c = client(state).await?;
    let tx = begin(&mut c).await?;
    let r = work(&tx).await;
    finish(tx, r).await
}

/// A pooled connection for the server's own auth work.
pub async fn client(state: &AppState) -> AuthResult<deadpool_postgres::Object> {
    state.pool.get().await.map_err(AuthError::pool)
}

/// Begin a transaction as `supabase_auth_admin`, timestamps rendered in UTC.
pub async fn begin(
    c: &mut deadpool_postgres::Object,
) -> AuthResult<deadpool_postgres::Transaction<'_>> {
    begin_as_server(c, ServerRole::AuthAdmin, false)
        .await
        .map_err(AuthError::pg)
}

/// Commit on success (or on an error that asks for it), else roll back.
pub async fn finish<T>(tx: deadpool_postgres::Transaction<'_>, r: AuthResult<T>) -> AuthResult<T> {
    match r {
        Ok(v) => {
            tx.commit().await.map_err(AuthError::pg)?;
            Ok(v)
        }
        Err(e) if e.commit => {
            tx.commit().await.map_err(AuthError::pg)?;
            Err(e)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Run one statement in its own admin transaction; `missing()` when it touched no row.
pub async fn execute_found(
    state: &AppState,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    missing: fn() -> AuthError,
) -> AuthResult<()> {
    as_admin(state, async |tx| {
        if tx.execute(sql, params).await.map_err(AuthError::pg)? == 0 {
            return Err(missing());
        }
        Ok(())
    })
    .await
}
