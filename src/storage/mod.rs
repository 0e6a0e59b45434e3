//! /storage/v1: Supabase Storage on `object_store`, with RLS on `storage.objects` and
//! `storage.buckets` deciding what each caller may do.
//!
//! Flow: [`endpoint::parse`] (no I/O) → authenticate → a handler that runs the caller's row
//! work through `begin_as` and moves bytes through [`store::Store`] → one error mapping.

pub(crate) mod buckets;
pub(crate) mod coerce;
pub mod endpoint;
pub(crate) mod error;
pub mod fuzz;
pub mod objects;
pub(crate) mod render;
pub(crate) mod signed;
pub mod store;
pub(crate) mod tus;

use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::{Pool, Transaction};
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::config::Config;
use crate::db::RequestGucs;
use crate::http::{error_response, json_response, Req, Resp};
use crate::identity::{AuthContext, ServerRole};
use crate::state::AppState;
use endpoint::{Access, Endpoint};
use error::StorageError;
use store::Store;

/// This API's share of the application state.
pub struct State {
    pub store: Arc<Store>,
    /// Serializes image transformations (bounded CPU).
    pub render_permits: Arc<tokio::sync::Semaphore>,
}

pub async fn init(config: &Config, pool: &Pool) -> Result<State, String> {
    let store = Store::open(config)?;
    tracing::info!(store = %store.describe, "storage backend ready");
    // The default store lives in the data dir, whose lock we hold (embedded database): no
    // upload can be in flight, so what a crash left behind (a half-written staging file,
    // bytes whose row never committed) goes now rather than in an hour.
    if config.storage.url.is_none() && config.database_url.is_none() {
        let staged = store::remove_staged_files(&config.storage_dir());
        if staged > 0 {
            tracing::info!(
                count = staged,
                "removed half-written files of interrupted uploads"
            );
        }
        if let Err(e) = objects::sweep_orphans_in(&store, pool, chrono::Duration::zero()).await {
            tracing::warn!(error = %e, "storage sweep at start failed");
        }
    }
    Ok(State {
        store: Arc::new(store),
        render_permits: Arc::new(tokio::sync::Semaphore::new(2)),
    })
}

/// Background work: a sweeper that removes bytes no row points at (interrupted uploads,
/// a crash between writing bytes and committing the row) and expired TUS uploads.
pub fn spawn_background(state: &AppState) {
    let st = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            tick.tick().await;
            if let Err(e) = objects::sweep_orphans(&st, chrono::Duration::hours(1)).await {
                tracing::warn!(error = %e, "storage sweep failed");
            }
            if let Err(e) = tus::sweep(&st).await {
                tracing::warn!(error = %e, "resumable upload sweep failed");
            }
        }
    });
}

pub async fn handle(state: &AppState, req: Req, path: &str) -> Resp {
    match route(state, req, path).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn route(state: &AppState, req: Req, path: &str) -> Result<Resp, StorageError> {
    let ep = endpoint::parse(req.method(), path)?;
    let ops = ep.row_ops(objects::wants_upsert(&req));
    endpoint::with_declared(ops, dispatch(state, req, ep)).await
}

async fn dispatch(st: &AppState, req: Req, ep: Endpoint) -> Result<Resp, StorageError> {
    match ep {
        // Reads that need no caller identity.
        Endpoint::GetObject {
            obj,
            access: Access::Public,
            head,
        } => objects::download(st, req, None, obj, Access::Public, head).await,
        Endpoint::Info {
            obj,
            access: Access::Public,
        } => objects::info(st, None, obj, Access::Public).await,
        Endpoint::GetSigned(obj) => signed::get_signed(st, req, obj).await,
        Endpoint::UploadSigned(obj) => signed::upload_signed(st, req, obj).await,
        Endpoint::Render {
            obj,
            access: Access::Public,
        } => render::render(st, req, None, obj, Access::Public).await,
        Endpoint::Render {
            obj,
            access: Access::Signed,
        } => render::render(st, req, None, obj, Access::Signed).await,
        Endpoint::TusOptions => Ok(tus::options()),
        ep => {
            let ctx = authenticate(st, req.headers())?;
            match ep {
                Endpoint::ListBuckets => buckets::list(st, &ctx, &req).await,
                Endpoint::CreateBucket => {
                    buckets::create(st, &ctx, json_body(st, req).await?).await
                }
                Endpoint::GetBucket(id) => buckets::get(st, &ctx, &id).await,
                Endpoint::UpdateBucket(id) => {
                    buckets::update(st, &ctx, json_body(st, req).await?, &id).await
                }
                Endpoint::DeleteBucket(id) => buckets::delete(st, &ctx, &id).await,
                Endpoint::EmptyBucket(id) => buckets::empty(st, &ctx, &id).await,
                Endpoint::ListObjects(b) => {
                    objects::list(st, &ctx, json_body(st, req).await?, &b).await
                }
                Endpoint::ListObjectsV2(b) => {
                    objects::list_v2(st, &ctx, json_body(st, req).await?, &b).await
                }
                Endpoint::MoveObject => {
                    objects::move_object(st, &ctx, json_body(st, req).await?).await
                }
                Endpoint::CopyObject => objects::copy_object(st, &ctx, req).await,
                Endpoint::SignUrl(obj) => {
                    signed::sign_one(st, &ctx, json_body(st, req).await?, obj).await
                }
                Endpoint::SignUrls(b) => {
                    signed::sign_many(st, &ctx, json_body(st, req).await?, &b).await
                }
                Endpoint::SignUpload(obj) => signed::sign_upload(st, &ctx, req, obj).await,
                Endpoint::GetObject { obj, head, .. } => {
                    objects::download(st, req, Some(&ctx), obj, Access::Authenticated, head).await
                }
                Endpoint::Info { obj, .. } => {
                    objects::info(st, Some(&ctx), obj, Access::Authenticated).await
                }
                Endpoint::Upload { obj, update } => {
                    objects::upload(st, &ctx, req, obj, update).await
                }
                Endpoint::DeleteObject(obj) => objects::delete_one(st, &ctx, obj).await,
                Endpoint::DeleteObjects(b) => {
                    objects::delete_many(st, &ctx, json_body(st, req).await?, &b).await
                }
                Endpoint::Render { obj, .. } => {
                    render::render(st, req, Some(&ctx), obj, Access::Authenticated).await
                }
                Endpoint::TusCreate => tus::create(st, &ctx, req).await,
                Endpoint::TusHead(id) => tus::head(st, &ctx, &id).await,
                Endpoint::TusPatch(id) => tus::patch(st, &ctx, req, &id).await,
                Endpoint::TusDelete(id) => tus::delete(st, &ctx, &id).await,
                // Handled above.
                Endpoint::TusOptions | Endpoint::GetSigned(_) | Endpoint::UploadSigned(_) => {
                    Err(StorageError::internal("unreachable route"))
                }
            }
        }
    }
}

/// The caller's role and claims. As Supabase Storage, a JWT is required (the gateway's
/// `apikey` counts when no `Authorization` is sent): none at all, or a bad one, is
/// refused rather than treated as anon.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<AuthContext, StorageError> {
    let has_auth = crate::identity::bearer(headers).is_some()
        || headers
            .get("apikey")
            .is_some_and(|v| !v.as_bytes().is_empty());
    if !has_auth {
        return Err(StorageError::AccessDenied("Invalid Compact JWS".into()));
    }
    state
        .keys
        .authenticate(headers, None)
        .map_err(|e| StorageError::AccessDenied(e.to_string()))
}

/// A transaction running as the caller (RLS applies); read-only when asked, and always
/// when the endpoint being served declared reads only ([`endpoint::with_declared`]).
pub async fn caller_tx<'c>(
    client: &'c mut deadpool_postgres::Client,
    ctx: &AuthContext,
    read_only: bool,
) -> Result<Transaction<'c>, StorageError> {
    let gucs = RequestGucs {
        method: "",
        path: "",
        ..Default::default()
    };
    let read_only = read_only || endpoint::declared_read_only();
    crate::db::begin_as(client, ctx, &gucs, read_only)
        .await
        .map_err(StorageError::pg)
}

/// One read-only query as the caller (RLS applies), in a transaction of its own.
pub async fn query_as_caller(
    state: &AppState,
    ctx: &AuthContext,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, true).await?;
    tx.query(sql, params).await.map_err(StorageError::pg)
}

/// Commit and answer `{"message": message}`.
pub async fn commit_with_message(tx: Transaction<'_>, message: &str) -> Result<Resp, StorageError> {
    tx.commit().await.map_err(StorageError::pg)?;
    Ok(ok(&serde_json::json!({ "message": message })))
}

/// A body's list of object names (`prefixes`, `paths`): required, 1 to 1000 entries,
/// coerced as storage-api's schema validation does (a single value is a one-entry list,
/// numbers and booleans become strings; an object is refused).
pub fn name_list(body: &Value, key: &str) -> Result<Vec<String>, StorageError> {
    let names = match body.get(key) {
        None | Some(Value::Null) => return Err(StorageError::MissingParameter(key.into())),
        Some(v) => {
            coerce::string_list(v).ok_or_else(|| StorageError::InvalidParameter(key.into()))?
        }
    };
    if names.is_empty() || names.len() > 1000 {
        return Err(StorageError::InvalidParameter(key.into()));
    }
    Ok(names)
}

/// A string field of a JSON body, `""` when absent or not a string.
pub fn str_field<'a>(body: &'a Value, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Switch the transaction to the storage admin role (server bookkeeping: bucket lookups,
/// locks, the previous version of a row the caller may not be allowed to see).
pub async fn as_admin(tx: &Transaction<'_>) -> Result<(), StorageError> {
    crate::db::become_server(&**tx, ServerRole::StorageAdmin)
        .await
        .map_err(StorageError::pg)
}

/// A transaction as the storage admin for background bookkeeping (errors as text).
pub async fn background_admin_tx(
    c: &mut deadpool_postgres::Client,
) -> Result<Transaction<'_>, String> {
    crate::db::begin_as_server(c, ServerRole::StorageAdmin, false)
        .await
        .map_err(|e| crate::db::error_text(&e))
}

/// Back to the caller's role (claims are still set).
pub async fn as_caller(tx: &Transaction<'_>, ctx: &AuthContext) -> Result<(), StorageError> {
    tx.execute("select set_config('role', $1, true)", &[&ctx.role.as_str()])
        .await
        .map(|_| ())
        .map_err(StorageError::pg)
}

pub async fn client(state: &AppState) -> Result<deadpool_postgres::Client, StorageError> {
    state
        .pool
        .get()
        .await
        .map_err(|e| StorageError::from_pool(&e))
}

/// A JSON request body (`{}` when empty). DELETE carries one too (supabase-js sends `{}`).
pub async fn json_body(state: &AppState, req: Req) -> Result<Value, StorageError> {
    let bytes: Bytes =
        crate::http::body::read_limited(req.into_body(), state.config.max_body_bytes)
            .await
            .map_err(|e| StorageError::InvalidRequest(e.to_string()))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| StorageError::InvalidRequest(format!("body is not valid JSON: {e}")))
}

pub fn ok(value: &Value) -> Resp {
    json_response(StatusCode::OK, value)
}

/// ISO-8601 with milliseconds and `Z`, as Supabase Storage (node) renders timestamps.
pub const TS: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;

pub fn ts(col: &str) -> String {
    format!("to_char({col} at time zone 'UTC', {TS})")
}
