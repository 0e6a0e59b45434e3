//! Deleting objects, and sweeping stored bytes no row points at.

use chrono::Utc;
use serde_json::{json, Value};
use tokio_postgres::Row;

use crate::http::Resp;
use crate::identity::AuthContext;
use crate::state::AppState;
use crate::storage::endpoint::ObjectRef;
use crate::storage::error::StorageError;
use crate::storage::store::Store;
use crate::storage::{caller_tx, client, name_list, ok, ts};

use super::rules::is_our_version;

pub async fn delete_one(
    state: &AppState,
    ctx: &AuthContext,
    obj: ObjectRef,
) -> Result<Resp, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    crate::storage::endpoint::check_declared(crate::storage::endpoint::RowOp::Delete)?;
    let row = tx
        .query_opt(
            "delete from storage.objects where bucket_id = $1 and name = $2 returning version",
            &[&obj.bucket, &obj.name],
        )
        .await
        .map_err(StorageError::pg)?
        .ok_or(StorageError::NoSuchKey)?;
    tx.commit().await.map_err(StorageError::pg)?;
    if let Some(v) = row
        .get::<_, Option<String>>(0)
        .filter(|v| is_our_version(v))
    {
        state
            .storage
            .store
            .delete_later(vec![Store::object_key(&v)]);
    }
    Ok(ok(&json!({"message": "Successfully deleted"})))
}

pub async fn delete_many(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
    bucket: &str,
) -> Result<Resp, StorageError> {
    let prefixes = name_list(&body, "prefixes")?;
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    crate::storage::endpoint::check_declared(crate::storage::endpoint::RowOp::Delete)?;
    let sql = format!(
        "delete from storage.objects where bucket_id = $1 and name = any($2) \
         returning version, json_build_object('bucket_id', bucket_id, 'name', name, 'id', id, \
           'owner', owner, 'owner_id', owner_id, 'version', version, 'metadata', metadata, \
           'user_metadata', user_metadata, 'created_at', {}, 'updated_at', {}, 'last_accessed_at', {})",
        ts("created_at"),
        ts("updated_at"),
        ts("last_accessed_at")
    );
    let rows = tx
        .query(&sql, &[&bucket, &prefixes])
        .await
        .map_err(StorageError::pg)?;
    tx.commit().await.map_err(StorageError::pg)?;
    delete_versions_later(state, &rows);
    Ok(ok(&Value::Array(rows.iter().map(|r| r.get(1)).collect())))
}

/// Queue the stored bytes of deleted rows for deletion: the rows' first column is their
/// version, and only versions this server wrote have bytes in the store.
pub fn delete_versions_later(state: &AppState, rows: &[Row]) {
    let keys = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .filter(|v| is_our_version(v))
        .map(|v| Store::object_key(&v))
        .collect();
    state.storage.store.delete_later(keys);
}

/// Delete stored bytes that no row points at and that are older than `min_age` (so an
/// upload still in flight is never touched).
pub async fn sweep_orphans(state: &AppState, min_age: chrono::Duration) -> Result<usize, String> {
    sweep_orphans_in(&state.storage.store, &state.pool, min_age).await
}

pub async fn sweep_orphans_in(
    store: &Store,
    pool: &deadpool_postgres::Pool,
    min_age: chrono::Duration,
) -> Result<usize, String> {
    let keys = store.list("objects").await.map_err(|e| e.to_string())?;
    let cutoff = Utc::now() - min_age;
    let candidates: Vec<String> = keys
        .iter()
        .filter(|(_, t, _)| *t < cutoff)
        .filter_map(|(p, _, _)| p.filename().map(str::to_string))
        .filter(|v| is_our_version(v))
        .collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut c = pool.get().await.map_err(|e| e.to_string())?;
    let tx = crate::storage::background_admin_tx(&mut c).await?;
    let live: std::collections::HashSet<String> = tx
        .query(
            "select version from storage.objects where version = any($1)",
            &[&candidates],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect();
    tx.commit().await.map_err(|e| crate::db::error_text(&e))?;
    let mut n = 0;
    for v in candidates.iter().filter(|v| !live.contains(*v)) {
        if store.delete(&Store::object_key(v)).await.is_ok() {
            n += 1;
        }
    }
    if n > 0 {
        tracing::info!(count = n, "removed orphaned object bytes");
    }
    Ok(n)
}
