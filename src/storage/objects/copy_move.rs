//! Copy and move: the request body, the destination's rules, the row work.

use bytes::BytesMut;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::functions::sniff::SNIFF_BYTES;
use crate::http::{Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;
use crate::storage::coerce;
use crate::storage::endpoint::{validate_key, ObjectRef};
use crate::storage::error::StorageError;
use crate::storage::store::Store;
use crate::storage::{as_admin, as_caller, caller_tx, client, json_body, ok};

use super::rules::{bucket_info, check_content, check_rules, is_our_version, sniffs, BucketInfo};
use super::serve::{find_object, Reader};
use super::write::{check_can_write, commit_row, lock_key, wants_upsert, WriteAs};

struct MoveCopy {
    src: ObjectRef,
    dst: ObjectRef,
}

fn move_copy_body(body: &Value) -> Result<MoveCopy, StorageError> {
    let s = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| StorageError::MissingParameter(k.into()))
    };
    let bucket = s("bucketId")?;
    let src_key = s("sourceKey")?;
    let dst_key = s("destinationKey")?;
    let dst_bucket = body
        .get("destinationBucket")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| bucket.clone());
    crate::storage::endpoint::validate_bucket_name(&bucket)?;
    crate::storage::endpoint::validate_bucket_name(&dst_bucket)?;
    validate_key(&src_key)?;
    validate_key(&dst_key)?;
    Ok(MoveCopy {
        src: ObjectRef {
            bucket,
            name: src_key,
        },
        dst: ObjectRef {
            bucket: dst_bucket,
            name: dst_key,
        },
    })
}

/// [`move_copy_body`] for the fuzz target: the (source, destination) a body names.
pub fn fuzz_move_copy(body: &Value) -> Result<(ObjectRef, ObjectRef), StorageError> {
    move_copy_body(body).map(|m| (m.src, m.dst))
}

/// The rules of the destination bucket for an existing object copied or moved into it,
/// applied as to an upload of the same bytes under the same declared type: size limit,
/// MIME allow-list and, with an allow-list, the content's first bytes.
async fn check_stored(
    state: &AppState,
    b: &BucketInfo,
    metadata: &Value,
    version: &str,
) -> Result<(), StorageError> {
    let mimetype = metadata
        .get("mimetype")
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream");
    let size = metadata.get("size").and_then(Value::as_u64).unwrap_or(0);
    check_rules(state, b, mimetype, Some(size))?;
    if sniffs(b) && size > 0 && is_our_version(version) {
        let read_error = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => StorageError::NoSuchKey,
            e => StorageError::internal(format!("object store get: {e}")),
        };
        let mut s = state
            .storage
            .store
            .get(
                &Store::object_key(version),
                Some(0..size.min(SNIFF_BYTES as u64)),
            )
            .await
            .map_err(read_error)?;
        let mut head = BytesMut::new();
        while let Some(c) = s.next().await {
            head.extend_from_slice(&c.map_err(read_error)?);
        }
        check_content(b, mimetype, &head)?;
    }
    Ok(())
}

/// Move renames the row (bytes are keyed by version, not name), as the caller: RLS must
/// let it update the source row and the renamed row must pass the update check.
pub async fn move_object(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
) -> Result<Resp, StorageError> {
    let m = move_copy_body(&body)?;
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    as_admin(&tx).await?;
    let bucket = bucket_info(&tx, &m.dst.bucket).await?;
    lock_key(&tx, &m.dst.bucket, &m.dst.name).await?;
    as_caller(&tx, ctx).await?;
    if m.src == m.dst {
        return Err(StorageError::KeyAlreadyExists);
    }
    crate::storage::endpoint::check_declared(crate::storage::endpoint::RowOp::Update)?;
    let row = tx
        .query_opt(
            "update storage.objects set bucket_id = $3, name = $4, updated_at = now() \
             where bucket_id = $1 and name = $2 returning metadata, version",
            &[&m.src.bucket, &m.src.name, &m.dst.bucket, &m.dst.name],
        )
        .await
        .map_err(StorageError::pg)?
        .ok_or(StorageError::NoSuchKey)?;
    let metadata: Option<Value> = row.get(0);
    let version: Option<String> = row.get(1);
    // Refused: the transaction rolls back when dropped.
    check_stored(
        state,
        &bucket,
        &metadata.unwrap_or(Value::Null),
        version.as_deref().unwrap_or(""),
    )
    .await?;
    crate::storage::commit_with_message(tx, "Successfully moved").await
}

/// Copy the bytes to a new version, then insert the destination row as the caller.
pub async fn copy_object(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
) -> Result<Resp, StorageError> {
    let upsert = wants_upsert(&req);
    let body = json_body(state, req).await?;
    let m = move_copy_body(&body)?;
    let src = find_object(state, Reader::Caller(ctx), &m.src).await?;
    let who = WriteAs::caller(ctx, upsert);
    let bucket = check_can_write(state, &who, &m.dst).await?;
    check_stored(state, &bucket, &src.metadata, &src.version).await?;
    let copy_meta = body
        .get("copyMetadata")
        .and_then(coerce::boolean)
        .unwrap_or(true);
    let user_metadata = match body.get("metadata") {
        Some(v @ Value::Object(_)) => Some(v.clone()),
        _ if copy_meta => Some(src.user_metadata.clone()),
        _ => None,
    };
    let version = Uuid::new_v4().to_string();
    let key = Store::object_key(&version);
    let store = &state.storage.store;
    store
        .copy(&Store::object_key(&src.version), &key)
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => StorageError::NoSuchKey,
            e => StorageError::internal(format!("object store copy: {e}")),
        })?;
    let mut metadata = src.metadata.clone();
    if let Some(m) = metadata.as_object_mut() {
        m.insert(
            "lastModified".into(),
            json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
    }
    match commit_row(
        state,
        &who,
        &m.dst,
        &version,
        &metadata,
        &user_metadata,
        None,
    )
    .await
    {
        Ok(id) => Ok(ok(&json!({"Id": id, "Key": m.dst.full_path()}))),
        Err(e) => {
            let _ = store.delete(&key).await;
            Err(e)
        }
    }
}
