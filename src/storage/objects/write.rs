//! The upload path: reading an upload, the RLS probe, writing bytes, committing the row.

use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt, TryStreamExt};
use http::HeaderMap;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::functions::sniff::SNIFF_BYTES;
use crate::http::{Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;
use crate::storage::endpoint::{validate_key, ObjectRef};
use crate::storage::error::StorageError;
use crate::storage::store::{discard_rest, ByteStream, Store};
use crate::storage::{as_admin, as_caller, caller_tx, client, ok};

use super::rules::{
    bucket_info, check_content, check_rules, effective_limit, is_our_version, peek_head, sniffs,
    BucketInfo,
};

/// `x-upsert: true`: overwrite an existing object instead of answering 409.
pub fn wants_upsert(req: &Req) -> bool {
    req.headers()
        .get("x-upsert")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// What an upload request carries, the file still unread.
pub struct UploadSource {
    pub stream: ByteStream,
    pub content_type: String,
    pub cache_control: String,
    pub user_metadata: Option<Value>,
    /// The exact size when known up front (raw body with Content-Length).
    pub content_length: Option<u64>,
}

fn body_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::InvalidRequest(format!("could not read the request body: {e}"))
}

pub(super) fn cache_control_from(v: Option<&str>) -> String {
    let v = v.unwrap_or("").trim();
    let secs = v.rsplit('=').next().unwrap_or("").trim();
    if !secs.is_empty() && secs.chars().all(|c| c.is_ascii_digit()) {
        format!("max-age={secs}")
    } else {
        "no-cache".into()
    }
}

fn parse_user_metadata(text: &str) -> Result<Value, StorageError> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(StorageError::InvalidParameter("metadata".into())),
    }
}

/// Read an upload's headers (and, for multipart, the form fields before the file part).
pub async fn read_upload(req: Req) -> Result<UploadSource, StorageError> {
    let (parts, body) = req.into_parts();
    read_upload_from(&parts.headers, http_body_util::BodyDataStream::new(body)).await
}

/// [`read_upload`] over any body stream (the fuzz target feeds it bytes).
pub async fn read_upload_from<S, E>(
    headers: &HeaderMap,
    body: S,
) -> Result<UploadSource, StorageError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display + 'static,
{
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let ct = header("content-type").unwrap_or("").to_string();
    if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(&ct)
            .map_err(|_| StorageError::InvalidRequest("invalid multipart boundary".into()))?;
        let mut mp = multer::Multipart::new(body, boundary);
        let mut cache = None;
        let mut meta = None;
        loop {
            let field = mp
                .next_field()
                .await
                .map_err(body_error)?
                .ok_or_else(|| StorageError::InvalidRequest("No content provided".into()))?;
            let is_file = field.file_name().is_some() || field.name().unwrap_or("").is_empty();
            if is_file {
                let content_type = field
                    .content_type()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "application/octet-stream".into());
                let stream = field.map_err(body_error).boxed();
                return Ok(UploadSource {
                    stream,
                    content_type,
                    cache_control: cache_control_from(cache.as_deref()),
                    user_metadata: meta,
                    content_length: None,
                });
            }
            let name = field.name().unwrap_or("").to_string();
            // Small text fields only.
            let mut text = Vec::new();
            let mut f = field;
            while let Some(chunk) = f.chunk().await.map_err(body_error)? {
                text.extend_from_slice(&chunk);
                if text.len() > 1 << 20 {
                    return Err(StorageError::InvalidRequest(format!(
                        "form field {name} is too large"
                    )));
                }
            }
            let text = String::from_utf8_lossy(&text).to_string();
            match name.as_str() {
                "cacheControl" => cache = Some(text),
                "metadata" if !text.is_empty() => meta = Some(parse_user_metadata(&text)?),
                _ => {}
            }
        }
    }
    let user_metadata = match header("x-metadata") {
        Some(b64) if !b64.is_empty() => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| StorageError::InvalidParameter("x-metadata".into()))?;
            Some(parse_user_metadata(&String::from_utf8_lossy(&raw))?)
        }
        _ => None,
    };
    Ok(UploadSource {
        stream: body.map_err(body_error).boxed(),
        content_type: if ct.is_empty() {
            "application/octet-stream".into()
        } else {
            ct
        },
        cache_control: cache_control_from(header("cache-control")),
        user_metadata,
        content_length: header("content-length").and_then(|v| v.parse().ok()),
    })
}

/// Who the row work runs as, and who the new row belongs to.
pub struct WriteAs<'a> {
    pub ctx: &'a AuthContext,
    pub owner_id: Option<String>,
    pub upsert: bool,
}

impl<'a> WriteAs<'a> {
    pub fn caller(ctx: &'a AuthContext, upsert: bool) -> Self {
        WriteAs {
            ctx,
            owner_id: ctx
                .claims
                .get("sub")
                .and_then(Value::as_str)
                .map(str::to_string),
            upsert,
        }
    }
    fn owner_uuid(&self) -> Option<Uuid> {
        self.owner_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
    }
}

const INSERT_ROW: &str = "insert into storage.objects \
    (bucket_id, name, owner, owner_id, version, metadata, user_metadata) \
    values ($1, $2, $3, $4, $5, $6, $7)";
const UPSERT_TAIL: &str = " on conflict (bucket_id, name) do update set \
    owner = excluded.owner, owner_id = excluded.owner_id, version = excluded.version, \
    metadata = excluded.metadata, user_metadata = excluded.user_metadata, \
    updated_at = now(), last_accessed_at = now()";

/// Would the caller be allowed to create (or overwrite) this row? Runs the real statement
/// under RLS and rolls it back, before any byte is read (Supabase's `canUpload`).
pub async fn check_can_write(
    state: &AppState,
    who: &WriteAs<'_>,
    obj: &ObjectRef,
) -> Result<BucketInfo, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, who.ctx, false).await?;
    as_admin(&tx).await?;
    let bucket = bucket_info(&tx, &obj.bucket).await?;
    as_caller(&tx, who.ctx).await?;
    crate::storage::endpoint::check_declared_insert(who.upsert)?;
    let sql = if who.upsert {
        format!("{INSERT_ROW}{UPSERT_TAIL}")
    } else {
        INSERT_ROW.to_string()
    };
    let probe = Uuid::new_v4().to_string();
    tx.execute(
        &sql,
        &[
            &obj.bucket,
            &obj.name,
            &who.owner_uuid(),
            &who.owner_id,
            &probe,
            &Value::Null,
            &Value::Null,
        ],
    )
    .await
    .map_err(StorageError::pg)?;
    tx.rollback().await.map_err(StorageError::pg)?;
    Ok(bucket)
}

pub fn object_metadata(
    w: &crate::storage::store::Written,
    content_type: &str,
    cache_control: &str,
) -> Value {
    json!({
        "eTag": format!("\"{}\"", w.md5),
        "size": w.size,
        "mimetype": content_type,
        "cacheControl": cache_control,
        "lastModified": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "contentLength": w.size,
        "httpStatusCode": 200,
    })
}

/// Point the (bucket, name) row at `version`, as the writer's role. Returns the row id.
/// On any failure the caller deletes the new bytes.
/// With `finishing`, also deletes that resumable upload in the same transaction
/// (so a crash leaves either the upload still resumable or the object, never neither);
/// fails with 404 when that upload is already gone (finished by a concurrent request).
pub async fn commit_row(
    state: &AppState,
    who: &WriteAs<'_>,
    obj: &ObjectRef,
    version: &str,
    metadata: &Value,
    user_metadata: &Option<Value>,
    finishing: Option<&str>,
) -> Result<Uuid, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, who.ctx, false).await?;
    as_admin(&tx).await?;
    if let Some(id) = finishing {
        let n = tx
            .execute(
                "delete from storage.resumable_uploads where id = $1",
                &[&id],
            )
            .await
            .map_err(StorageError::pg)?;
        if n == 0 {
            return Err(StorageError::Tus(404, "Upload not found".into()));
        }
    }
    lock_key(&tx, &obj.bucket, &obj.name).await?;
    let old: Option<String> = tx
        .query_opt(
            "select version from storage.objects where bucket_id = $1 and name = $2",
            &[&obj.bucket, &obj.name],
        )
        .await
        .map_err(StorageError::pg)?
        .and_then(|r| r.get(0));
    as_caller(&tx, who.ctx).await?;
    crate::storage::endpoint::check_declared_insert(who.upsert)?;
    let sql = if who.upsert {
        format!("{INSERT_ROW}{UPSERT_TAIL} returning id")
    } else {
        format!("{INSERT_ROW} returning id")
    };
    let um = user_metadata.clone().unwrap_or(Value::Null);
    let um: Option<&Value> = if um.is_null() { None } else { Some(&um) };
    let row = tx
        .query_one(
            &sql,
            &[
                &obj.bucket,
                &obj.name,
                &who.owner_uuid(),
                &who.owner_id,
                &version,
                metadata,
                &um,
            ],
        )
        .await
        .map_err(StorageError::pg)?;
    tx.commit().await.map_err(StorageError::pg)?;
    if let Some(old) = old.filter(|o| is_our_version(o) && o != version) {
        state
            .storage
            .store
            .delete_later(vec![Store::object_key(&old)]);
    }
    Ok(row.get(0))
}

/// Serialize writers of one key for the rest of the transaction.
pub(super) async fn lock_key(
    tx: &deadpool_postgres::Transaction<'_>,
    bucket: &str,
    name: &str,
) -> Result<(), StorageError> {
    tx.execute(
        "select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7001))",
        &[&bucket, &name],
    )
    .await
    .map(|_| ())
    .map_err(StorageError::pg)
}

/// The whole write path: permission probe, limits, bytes, row. Returns the row id.
/// A rejected upload's unread rest is discarded (bounded) before the error goes out.
pub async fn store_object(
    state: &AppState,
    who: &WriteAs<'_>,
    obj: &ObjectRef,
    mut src: UploadSource,
) -> Result<Uuid, StorageError> {
    let result = write_object(state, who, obj, &mut src).await;
    match &result {
        // Refused on its declared length, before reading: answer at once and let the
        // connection's lingering close take what the client still sends.
        Err(StorageError::EntityTooLarge) if src.content_length.is_some() => {}
        Err(_) => discard_rest(&mut src.stream).await,
        Ok(_) => {}
    }
    result
}

async fn write_object(
    state: &AppState,
    who: &WriteAs<'_>,
    obj: &ObjectRef,
    src: &mut UploadSource,
) -> Result<Uuid, StorageError> {
    validate_key(&obj.name)?;
    // A declared size over the global limit needs no bucket to be refused.
    if src
        .content_length
        .is_some_and(|n| n > state.config.storage.file_size_limit)
    {
        return Err(StorageError::EntityTooLarge);
    }
    let bucket = check_can_write(state, who, obj).await?;
    let limit = effective_limit(state, &bucket);
    check_rules(state, &bucket, &src.content_type, src.content_length)?;
    if sniffs(&bucket) {
        let head = peek_head(&mut src.stream, SNIFF_BYTES).await?;
        check_content(&bucket, &src.content_type, &head)?;
    }
    let version = Uuid::new_v4().to_string();
    let key = Store::object_key(&version);
    let store = &state.storage.store;
    let written = store.put_stream(&key, &mut src.stream, limit).await?;
    let metadata = object_metadata(&written, &src.content_type, &src.cache_control);
    match commit_row(
        state,
        who,
        obj,
        &version,
        &metadata,
        &src.user_metadata,
        None,
    )
    .await
    {
        Ok(id) => Ok(id),
        Err(e) => {
            if let Err(de) = store.delete(&key).await {
                tracing::warn!(error = %de, "could not delete bytes of a rejected upload");
            }
            Err(e)
        }
    }
}

pub async fn upload(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
    obj: ObjectRef,
    update: bool,
) -> Result<Resp, StorageError> {
    let upsert = update || wants_upsert(&req);
    let src = read_upload(req).await?;
    let who = WriteAs::caller(ctx, upsert);
    let id = store_object(state, &who, &obj, src).await?;
    Ok(ok(&json!({"Id": id, "Key": obj.full_path()})))
}
