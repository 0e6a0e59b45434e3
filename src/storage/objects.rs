//! Objects: upload (raw and multipart, streamed), download (ranges, conditional),
//! info, list (v1 folders and v2 cursor pages), remove, move, copy.
//!
//! Consistency: bytes are written to a fresh key (`objects/<new version>`) first; the row
//! is then inserted or switched to that version in one transaction, under an advisory
//! lock on (bucket, name) so concurrent writers of one key serialize; only after the
//! commit are the previous version's bytes deleted. A failed or rejected upload deletes
//! its own key, and the sweeper removes keys no row points at (a crash in between).

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::endpoint::{validate_key, Access, ObjectRef};
use super::error::StorageError;
use super::store::{discard_rest, ByteStream, Store};
use super::{
    as_admin, as_caller, caller_tx, client, json_body, ok, query_as_caller, str_field, ts,
};
use crate::functions::sniff::SNIFF_BYTES;
use crate::http::apikey::AuthContext;
use crate::http::{empty, query_pairs, Req, Resp};
use crate::state::AppState;

/// Versions this server generates (UUIDs); anything else never becomes a store key.
pub fn is_our_version(v: &str) -> bool {
    Uuid::parse_str(v).is_ok()
}

pub struct BucketInfo {
    pub id: String,
    pub public: bool,
    pub limit: Option<i64>,
    pub mimes: Option<Vec<String>>,
}

/// Bucket lookup as the storage admin (uploads need the limits even when the caller may
/// not read `storage.buckets`, as in Supabase).
pub async fn bucket_info(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
) -> Result<BucketInfo, StorageError> {
    let row = tx
        .query_opt(
            "select id, coalesce(public, false), file_size_limit, allowed_mime_types \
             from storage.buckets where id = $1",
            &[&id],
        )
        .await?
        .ok_or(StorageError::NoSuchBucket)?;
    Ok(BucketInfo {
        id: row.get(0),
        public: row.get(1),
        limit: row.get(2),
        mimes: row.get(3),
    })
}

pub fn effective_limit(state: &AppState, b: &BucketInfo) -> u64 {
    let global = state.config.storage.file_size_limit;
    match b.limit {
        Some(l) if l > 0 => (l as u64).min(global),
        _ => global,
    }
}

/// `allowed_mime_types` with wildcards (`image/*`); parameters (`;charset=`) ignored. No
/// list, or an empty one, allows everything (as Supabase).
pub fn mime_allowed(mimes: &Option<Vec<String>>, content_type: &str) -> bool {
    let Some(list) = mimes.as_ref().filter(|l| !l.is_empty()) else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (ty, _) = essence.split_once('/').unwrap_or((&essence, ""));
    list.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        p == essence || p == "*/*" || p.strip_suffix("/*").is_some_and(|pt| pt == ty)
    })
}

/// A content type without its parameters, as error messages name it.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The bucket's rules for a new object's declared type and size, as every write applies
/// them (upload, signed upload, TUS, copy, move).
pub fn check_rules(
    state: &AppState,
    b: &BucketInfo,
    content_type: &str,
    size: Option<u64>,
) -> Result<(), StorageError> {
    if size.is_some_and(|n| n > effective_limit(state, b)) {
        return Err(StorageError::EntityTooLarge);
    }
    if !mime_allowed(&b.mimes, content_type) {
        return Err(StorageError::InvalidMimeType(essence(content_type)));
    }
    Ok(())
}

/// In a bucket with a MIME allow-list, the content's first bytes must not contradict the
/// declared type (HTML or another kind of file declared as an image): refused as that type.
pub fn check_content(b: &BucketInfo, content_type: &str, head: &[u8]) -> Result<(), StorageError> {
    if !sniffs(b) {
        return Ok(());
    }
    match crate::functions::sniff::contradicts(content_type, head) {
        Some(actual) => Err(StorageError::InvalidMimeType(actual)),
        None => Ok(()),
    }
}

/// Whether the bucket's rules look at the content's bytes (see [`check_content`]).
pub fn sniffs(b: &BucketInfo) -> bool {
    b.mimes.as_ref().is_some_and(|l| !l.is_empty())
}

/// Read the first `n` bytes of `stream` (fewer if it ends sooner) and put them back in front.
pub async fn peek_head(stream: &mut ByteStream, n: usize) -> Result<Bytes, StorageError> {
    let mut head = BytesMut::new();
    let mut failed = None;
    while head.len() < n {
        match stream.next().await {
            Some(Ok(c)) => head.extend_from_slice(&c),
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            None => break,
        }
    }
    let head = head.freeze();
    let rest = std::mem::replace(stream, futures::stream::empty().boxed());
    *stream = futures::stream::once(futures::future::ready(Ok(head.clone())))
        .chain(rest)
        .boxed();
    match failed {
        Some(e) => Err(e),
        None => Ok(head),
    }
}

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

fn cache_control_from(v: Option<&str>) -> String {
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
    .await?;
    tx.rollback().await?;
    Ok(bucket)
}

pub fn object_metadata(
    w: &super::store::Written,
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
pub async fn commit_row(
    state: &AppState,
    who: &WriteAs<'_>,
    obj: &ObjectRef,
    version: &str,
    metadata: &Value,
    user_metadata: &Option<Value>,
) -> Result<Uuid, StorageError> {
    commit_row_finishing(state, who, obj, version, metadata, user_metadata, None).await
}

/// [`commit_row`], also deleting the resumable upload `finishing` in the same transaction
/// (so a crash leaves either the upload still resumable or the object, never neither);
/// fails with 404 when that upload is already gone (finished by a concurrent request).
pub async fn commit_row_finishing(
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
            .await?;
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
        .await?
        .and_then(|r| r.get(0));
    as_caller(&tx, who.ctx).await?;
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
        .await?;
    tx.commit().await?;
    if let Some(old) = old.filter(|o| is_our_version(o) && o != version) {
        state
            .storage
            .store
            .delete_later(vec![Store::object_key(&old)]);
    }
    Ok(row.get(0))
}

/// Serialize writers of one key for the rest of the transaction.
async fn lock_key(
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
    .map_err(StorageError::from)
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
    match commit_row(state, who, obj, &version, &metadata, &src.user_metadata).await {
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

/// One object row as read for a download or info.
pub struct ObjectRow {
    pub id: Uuid,
    pub version: String,
    pub metadata: Value,
    pub user_metadata: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ObjectRow {
    pub fn size(&self) -> u64 {
        self.metadata
            .get("size")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }
    pub fn mimetype(&self) -> String {
        self.metadata
            .get("mimetype")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_string()
    }
    pub fn etag(&self) -> String {
        self.metadata
            .get("eTag")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("\"{}\"", self.version))
    }
    pub fn cache_control(&self) -> String {
        self.metadata
            .get("cacheControl")
            .and_then(Value::as_str)
            .unwrap_or("no-cache")
            .to_string()
    }
}

/// How a read is authorized: the caller under RLS, a public bucket, or a verified token.
pub enum Reader<'a> {
    Caller(&'a AuthContext),
    Public,
    Token,
}

pub async fn find_object(
    state: &AppState,
    who: Reader<'_>,
    obj: &ObjectRef,
) -> Result<ObjectRow, StorageError> {
    let mut c = client(state).await?;
    let anon = AuthContext::anon();
    let ctx = match &who {
        Reader::Caller(ctx) => *ctx,
        _ => &anon,
    };
    let tx = caller_tx(&mut c, ctx, true).await?;
    match who {
        Reader::Caller(_) => {}
        Reader::Public => {
            as_admin(&tx).await?;
            let b = bucket_info(&tx, &obj.bucket).await?;
            if !b.public {
                return Err(StorageError::NoSuchBucket);
            }
        }
        Reader::Token => as_admin(&tx).await?,
    }
    let row = tx
        .query_opt(
            "select id, version, metadata, user_metadata, created_at, updated_at \
             from storage.objects where bucket_id = $1 and name = $2",
            &[&obj.bucket, &obj.name],
        )
        .await?
        .ok_or(StorageError::NoSuchKey)?;
    let version: Option<String> = row.get(1);
    let version = version
        .filter(|v| is_our_version(v))
        .ok_or(StorageError::NoSuchKey)?;
    let out = ObjectRow {
        id: row.get(0),
        version,
        metadata: row.get::<_, Option<Value>>(2).unwrap_or(Value::Null),
        user_metadata: row.get::<_, Option<Value>>(3).unwrap_or_else(|| json!({})),
        created_at: row
            .get::<_, Option<DateTime<Utc>>>(4)
            .unwrap_or_else(Utc::now),
        updated_at: row
            .get::<_, Option<DateTime<Utc>>>(5)
            .unwrap_or_else(Utc::now),
    };
    tx.commit().await?;
    Ok(out)
}

/// hyper wants `Sync` bodies; object_store streams are only `Send`. Polling needs `&mut`
/// anyway, so a mutex that is never contended makes the stream `Sync`.
pub struct SyncStream<S>(std::sync::Mutex<S>);

impl<S> SyncStream<S> {
    pub fn new(s: S) -> Self {
        SyncStream(std::sync::Mutex::new(s))
    }
}

impl<S: Stream + Unpin> Stream for SyncStream<S> {
    type Item = S::Item;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        Pin::new(inner).poll_next(cx)
    }
}

fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`. `Ok(None)`: serve everything
/// (no header, or one we do not support such as several ranges).
pub fn parse_range(h: Option<&str>, size: u64) -> Result<Option<Range<u64>>, StorageError> {
    let Some(h) = h else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(StorageError::InvalidRange(size));
        }
        size.saturating_sub(n)..size
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.saturating_add(1).min(size),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(StorageError::InvalidRange(size));
        }
        start..end
    };
    Ok(Some(r))
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    if_none_match.trim() == "*" || if_none_match.split(',').any(|t| norm(t) == norm(etag))
}

pub fn content_disposition(download: &str, obj: &ObjectRef) -> String {
    let name = if download.is_empty() {
        obj.name.rsplit('/').next().unwrap_or(&obj.name).to_string()
    } else {
        download.to_string()
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let enc = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{enc}")
}

/// Whether a browser shows this type without running anything in our origin: raster
/// images, audio, video, fonts, plain text, CSV, JSON, PDF and opaque binaries. Everything
/// else (HTML, SVG, XML, JavaScript, unknown types, and a list of types, which browsers
/// read as its last entry) is served as active content: see [`serve`].
pub fn is_passive(content_type: &str) -> bool {
    let e = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((top, sub)) = e.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    if !token(top) || !token(sub) || sub.contains("xml") || sub.contains("script") {
        return false;
    }
    match top {
        "audio" | "video" | "font" => true,
        "image" => matches!(
            sub,
            "png"
                | "jpeg"
                | "jpg"
                | "pjpeg"
                | "gif"
                | "webp"
                | "avif"
                | "bmp"
                | "x-icon"
                | "vnd.microsoft.icon"
                | "tiff"
                | "heic"
                | "heif"
                | "apng"
        ),
        "text" => matches!(sub, "plain" | "csv"),
        "application" => matches!(sub, "json" | "pdf" | "octet-stream" | "zip" | "gzip"),
        _ => false,
    }
}

/// Sent with every object's bytes (download, signed URL, transform): the browser must
/// take the content type as given, never guess a scriptable one from the bytes.
pub const NOSNIFF: (&str, &str) = ("x-content-type-options", "nosniff");
/// Sent with active content (see [`is_passive`]): if a browser opens it anyway, it runs in
/// a sandbox (a unique origin, no scripts) and may load nothing.
pub const SANDBOX: (&str, &str) = ("content-security-policy", "default-src 'none'; sandbox");

/// Serve the bytes of a found object, honouring Range and conditional headers.
pub async fn serve(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    obj: &ObjectRef,
    row: ObjectRow,
    head: bool,
) -> Result<Resp, StorageError> {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let etag = row.etag();
    let last_modified = http_date(&row.updated_at);
    let mut builder = Response::builder()
        .header("etag", etag.as_str())
        .header("last-modified", last_modified.as_str())
        .header("cache-control", row.cache_control())
        .header("accept-ranges", "bytes")
        .header(NOSNIFF.0, NOSNIFF.1);
    let mimetype = row.mimetype();
    let passive = is_passive(&mimetype);
    if !passive {
        builder = builder.header(SANDBOX.0, SANDBOX.1);
    }
    let not_modified = match (h("if-none-match"), h("if-modified-since")) {
        (Some(inm), _) => etag_matches(inm, &etag),
        (None, Some(ims)) => DateTime::parse_from_rfc2822(ims)
            .map(|since| row.updated_at.timestamp() <= since.timestamp())
            .unwrap_or(false),
        _ => false,
    };
    if not_modified {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(empty())
            .map_err(StorageError::internal);
    }
    let q = query_pairs(query);
    // Active content is always a download, never a page of this origin.
    match q.iter().find(|(k, _)| k == "download") {
        Some((_, d)) => {
            builder = builder.header("content-disposition", content_disposition(d, obj))
        }
        None if !passive => {
            builder = builder.header("content-disposition", content_disposition("", obj))
        }
        None => {}
    }
    let size = row.size();
    let range = parse_range(h("range"), size)?;
    // A stored type that is not a valid header value cannot be sent as one.
    let mimetype = if http::HeaderValue::from_str(&mimetype).is_ok() {
        mimetype
    } else {
        "application/octet-stream".to_string()
    };
    builder = builder.header("content-type", mimetype);
    let (status, len) = match &range {
        Some(r) => {
            builder = builder.header(
                "content-range",
                format!("bytes {}-{}/{}", r.start, r.end - 1, size),
            );
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, size),
    };
    builder = builder.header("content-length", len);
    if head {
        return builder
            .status(status)
            .body(empty())
            .map_err(StorageError::internal);
    }
    let key = Store::object_key(&row.version);
    let stream = if len == 0 {
        futures::stream::empty().boxed()
    } else {
        state
            .storage
            .store
            .get(&key, range.clone().or(Some(0..size)))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => StorageError::NoSuchKey,
                e => StorageError::internal(format!("object store get: {e}")),
            })?
    };
    let body = crate::http::stream(SyncStream::new(stream));
    builder
        .status(status)
        .body(body)
        .map_err(StorageError::internal)
}

pub async fn download(
    state: &AppState,
    req: Req,
    ctx: Option<&AuthContext>,
    obj: ObjectRef,
    access: Access,
    head: bool,
) -> Result<Resp, StorageError> {
    // A concurrent overwrite may delete the version we just read: read the row again.
    let mut last = StorageError::NoSuchKey;
    for _ in 0..3 {
        let who = match (access, ctx) {
            (Access::Authenticated, Some(c)) => Reader::Caller(c),
            (Access::Public, _) => Reader::Public,
            _ => Reader::Token,
        };
        let row = find_object(state, who, &obj).await?;
        match serve(state, req.headers(), req.uri().query(), &obj, row, head).await {
            Err(StorageError::NoSuchKey) => last = StorageError::NoSuchKey,
            other => return other,
        }
    }
    Err(last)
}

pub fn info_json(obj: &ObjectRef, row: &ObjectRow) -> Value {
    json!({
        "id": row.id,
        "name": obj.name,
        "version": row.version,
        "bucket_id": obj.bucket,
        "size": row.size(),
        "content_type": row.mimetype(),
        "cache_control": row.cache_control(),
        "etag": row.etag(),
        "metadata": row.user_metadata,
        "last_modified": row.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "created_at": row.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

pub async fn info(
    state: &AppState,
    ctx: Option<&AuthContext>,
    obj: ObjectRef,
    access: Access,
) -> Result<Resp, StorageError> {
    let who = match (access, ctx) {
        (Access::Authenticated, Some(c)) => Reader::Caller(c),
        _ => Reader::Public,
    };
    let row = find_object(state, who, &obj).await?;
    Ok(ok(&info_json(&obj, &row)))
}

fn sort_of(
    body: &Value,
    allowed: &[&'static str],
) -> Result<(&'static str, &'static str), StorageError> {
    let sb = body.get("sortBy");
    let col = sb
        .and_then(|s| s.get("column"))
        .and_then(Value::as_str)
        .unwrap_or("name");
    let col = allowed
        .iter()
        .find(|c| **c == col)
        .copied()
        .ok_or_else(|| StorageError::InvalidParameter("sortBy.column".into()))?;
    let ord = match sb
        .and_then(|s| s.get("order"))
        .and_then(Value::as_str)
        .unwrap_or("asc")
        .to_ascii_lowercase()
        .as_str()
    {
        "asc" => "asc",
        "desc" => "desc",
        _ => return Err(StorageError::InvalidParameter("sortBy.order".into())),
    };
    Ok((col, ord))
}

fn int_field(body: &Value, k: &str, default: i64, min: i64) -> Result<i64, StorageError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= min)
            .ok_or_else(|| StorageError::InvalidParameter(k.into())),
    }
}

/// v1 list: the entries directly under `prefix` (folders have null id and metadata).
pub async fn list(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
    bucket: &str,
) -> Result<Resp, StorageError> {
    let body = json_body(state, req).await?;
    let mut prefix = str_field(&body, "prefix").to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let limit = int_field(&body, "limit", 100, 0)?;
    let offset = int_field(&body, "offset", 0, 0)?;
    let search = str_field(&body, "search");
    let (col, ord) = sort_of(
        &body,
        &["name", "updated_at", "created_at", "last_accessed_at"],
    )?;
    let order = if col == "name" {
        format!("name collate \"C\" {ord}")
    } else {
        format!("{col} {ord} nulls last, name collate \"C\" asc")
    };
    let sql = format!(
        "with s as ( \
           select split_part(substr(name, length($2) + 1), '/', 1) as seg, \
                  position('/' in substr(name, length($2) + 1)) > 0 as folder, \
                  id, updated_at, created_at, last_accessed_at, metadata \
           from storage.objects \
           where bucket_id = $1 and left(name, length($2)) = $2 and length(name) > length($2) \
         ), f as ( \
           select distinct on (seg, folder) seg as name, \
                  case when folder then null else id end as id, \
                  case when folder then null else updated_at end as updated_at, \
                  case when folder then null else created_at end as created_at, \
                  case when folder then null else last_accessed_at end as last_accessed_at, \
                  case when folder then null else metadata end as metadata \
           from s where seg <> '' and ($3 = '' or seg ilike $3 || '%') \
           order by seg, folder \
         ) \
         select json_build_object('name', name, 'id', id, 'updated_at', {}, \
           'created_at', {}, 'last_accessed_at', {}, 'metadata', metadata) \
         from f order by {order} limit $4 offset $5",
        ts("updated_at"),
        ts("created_at"),
        ts("last_accessed_at"),
    );
    let rows = query_as_caller(
        state,
        ctx,
        &sql,
        &[
            &bucket,
            &prefix,
            &super::buckets::escape_like(search),
            &limit,
            &offset,
        ],
    )
    .await?;
    Ok(ok(&Value::Array(rows.iter().map(|r| r.get(0)).collect())))
}

/// v2 list: cursor pages of objects (and folders with `with_delimiter`).
pub async fn list_v2(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
    bucket: &str,
) -> Result<Resp, StorageError> {
    let body = json_body(state, req).await?;
    let prefix = str_field(&body, "prefix");
    let delimiter = body
        .get("with_delimiter")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let limit = int_field(&body, "limit", 1000, 1)?.min(1000);
    let (mut col, mut ord) = sort_of(&body, &["name", "updated_at", "created_at"])?;
    // The cursor: base64url JSON {c: column, o: order, k: sort key (text), n: name}.
    let mut after: Option<(Option<String>, String)> = None;
    if let Some(cur) = body
        .get("cursor")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        let bad = || StorageError::InvalidParameter("cursor".into());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cur)
            .map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        col = match v.get("c").and_then(Value::as_str) {
            Some("updated_at") => "updated_at",
            Some("created_at") => "created_at",
            Some("name") => "name",
            _ => return Err(bad()),
        };
        ord = match v.get("o").and_then(Value::as_str) {
            Some("desc") => "desc",
            Some("asc") => "asc",
            _ => return Err(bad()),
        };
        let n = v
            .get("n")
            .and_then(Value::as_str)
            .ok_or_else(bad)?
            .to_string();
        let k = v.get("k").and_then(Value::as_str).map(str::to_string);
        // The sort key goes to SQL as a timestamp: refuse anything else here.
        if let Some(k) = &k {
            DateTime::parse_from_rfc3339(k).map_err(|_| bad())?;
        }
        after = Some((k, n));
    }
    let cmp = if ord == "asc" { ">" } else { "<" };
    let (sk, cursor_cond) = if col == "name" {
        (
            "null::timestamptz".to_string(),
            format!(
                "($4::text is null or ename collate \"C\" {cmp} $4) and ($5::text is null or true)"
            ),
        )
    } else {
        (
            format!("coalesce({col}, 'epoch'::timestamptz)"),
            format!(
                "($4::text is null or (sk, ename collate \"C\") {cmp} ($5::text::timestamptz, $4::text collate \"C\"))"
            ),
        )
    };
    let order = if col == "name" {
        format!("ename collate \"C\" {ord}")
    } else {
        format!("sk {ord}, ename collate \"C\" {ord}")
    };
    let sql = format!(
        "with e as ( \
           select case when $3 and position('/' in substr(name, length($2) + 1)) > 0 \
                    then $2 || split_part(substr(name, length($2) + 1), '/', 1) || '/' \
                    else name end as ename, \
                  $3 and position('/' in substr(name, length($2) + 1)) > 0 as folder, \
                  id, name, updated_at, created_at, last_accessed_at, metadata \
           from storage.objects where bucket_id = $1 and left(name, length($2)) = $2 \
         ), g as ( \
           select ename, folder, \
                  (array_agg(id))[1] as id, max(updated_at) as updated_at, \
                  max(created_at) as created_at, max(last_accessed_at) as last_accessed_at, \
                  (array_agg(metadata))[1] as metadata \
           from e group by ename, folder \
         ), s as ( \
           select *, case when folder then null else {sk} end as sk0 from g \
         ), t as (select *, coalesce(sk0, 'epoch'::timestamptz) as sk from s) \
         select ename, folder, id, {}, {}, {}, metadata, \
                to_char(sk at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
         from t where {cursor_cond} order by {order} limit $6",
        ts("updated_at"),
        ts("created_at"),
        ts("last_accessed_at"),
    );
    let (after_key, after_name) = match &after {
        Some((k, n)) => (k.clone(), Some(n.clone())),
        None => (None, None),
    };
    let rows = query_as_caller(
        state,
        ctx,
        &sql,
        &[
            &bucket,
            &prefix,
            &delimiter,
            &after_name,
            &after_key,
            &(limit + 1),
        ],
    )
    .await?;
    let has_next = rows.len() as i64 > limit;
    let mut folders = vec![];
    let mut objects = vec![];
    let mut next = None;
    for (i, r) in rows.iter().take(limit as usize).enumerate() {
        let ename: String = r.get(0);
        let folder: bool = r.get(1);
        let key = ename
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        if folder {
            folders.push(json!({"key": key, "name": ename}));
        } else {
            objects.push(json!({
                "id": r.get::<_, Option<Uuid>>(2),
                "key": key,
                "name": ename,
                "updated_at": r.get::<_, Option<String>>(3),
                "created_at": r.get::<_, Option<String>>(4),
                "last_accessed_at": r.get::<_, Option<String>>(5),
                "metadata": r.get::<_, Option<Value>>(6),
            }));
        }
        if has_next && i as i64 == limit - 1 {
            let sk: Option<String> = r.get(7);
            let cur =
                json!({"c": col, "o": ord, "n": ename, "k": if col == "name" { None } else { sk }});
            next = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cur.to_string()));
        }
    }
    let mut out = Map::new();
    out.insert("hasNext".into(), json!(has_next));
    if let Some(n) = next {
        out.insert("nextCursor".into(), json!(n));
    }
    out.insert("folders".into(), Value::Array(folders));
    out.insert("objects".into(), Value::Array(objects));
    Ok(ok(&Value::Object(out)))
}

pub async fn delete_one(
    state: &AppState,
    ctx: &AuthContext,
    obj: ObjectRef,
) -> Result<Resp, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    let row = tx
        .query_opt(
            "delete from storage.objects where bucket_id = $1 and name = $2 returning version",
            &[&obj.bucket, &obj.name],
        )
        .await?
        .ok_or(StorageError::NoSuchKey)?;
    tx.commit().await?;
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
    req: Req,
    bucket: &str,
) -> Result<Resp, StorageError> {
    let body = json_body(state, req).await?;
    let prefixes: Vec<String> = body
        .get("prefixes")
        .and_then(Value::as_array)
        .ok_or_else(|| StorageError::MissingParameter("prefixes".into()))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| StorageError::InvalidParameter("prefixes".into()))
        })
        .collect::<Result<_, _>>()?;
    if prefixes.is_empty() || prefixes.len() > 1000 {
        return Err(StorageError::InvalidParameter("prefixes".into()));
    }
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    let sql = format!(
        "delete from storage.objects where bucket_id = $1 and name = any($2) \
         returning version, json_build_object('bucket_id', bucket_id, 'name', name, 'id', id, \
           'owner', owner, 'owner_id', owner_id, 'version', version, 'metadata', metadata, \
           'user_metadata', user_metadata, 'created_at', {}, 'updated_at', {}, 'last_accessed_at', {})",
        ts("created_at"),
        ts("updated_at"),
        ts("last_accessed_at")
    );
    let rows = tx.query(&sql, &[&bucket, &prefixes]).await?;
    tx.commit().await?;
    let keys = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .filter(|v| is_our_version(v))
        .map(|v| Store::object_key(&v))
        .collect();
    state.storage.store.delete_later(keys);
    Ok(ok(&Value::Array(rows.iter().map(|r| r.get(1)).collect())))
}

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
    super::endpoint::validate_bucket_name(&bucket)?;
    super::endpoint::validate_bucket_name(&dst_bucket)?;
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
    req: Req,
) -> Result<Resp, StorageError> {
    let body = json_body(state, req).await?;
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
    let row = tx
        .query_opt(
            "update storage.objects set bucket_id = $3, name = $4, updated_at = now() \
             where bucket_id = $1 and name = $2 returning metadata, version",
            &[&m.src.bucket, &m.src.name, &m.dst.bucket, &m.dst.name],
        )
        .await?
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
    super::commit_with_message(tx, "Successfully moved").await
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
        .and_then(Value::as_bool)
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
    match commit_row(state, &who, &m.dst, &version, &metadata, &user_metadata).await {
        Ok(id) => Ok(ok(&json!({"Id": id, "Key": m.dst.full_path()}))),
        Err(e) => {
            let _ = store.delete(&key).await;
            Err(e)
        }
    }
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
    let tx = super::background_admin_tx(&mut c).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_wildcards() {
        let l = Some(vec!["image/*".to_string(), "text/plain".to_string()]);
        assert!(mime_allowed(&l, "image/png"));
        assert!(mime_allowed(&l, "text/plain;charset=UTF-8"));
        assert!(!mime_allowed(&l, "application/pdf"));
        assert!(!mime_allowed(&l, "imagex/png"));
        assert!(mime_allowed(&None, "anything/at-all"));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100).unwrap(), Some(0..10));
        assert_eq!(parse_range(Some("bytes=90-"), 100).unwrap(), Some(90..100));
        assert_eq!(parse_range(Some("bytes=-5"), 100).unwrap(), Some(95..100));
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100).unwrap(),
            Some(50..100)
        );
        assert!(parse_range(Some("bytes=100-"), 100).is_err());
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("items=0-1"), 100).unwrap(), None);
        // An end of u64::MAX (found by the range fuzz target) is the end of the object.
        assert_eq!(
            parse_range(Some("bytes=5-18446744073709551615"), 100).unwrap(),
            Some(5..100)
        );
        assert_eq!(parse_range(None, 100).unwrap(), None);
    }

    #[test]
    fn active_types_are_not_passive() {
        for t in [
            "image/png",
            "IMAGE/JPEG",
            "image/webp; q=1",
            "text/plain; charset=utf-8",
            "application/pdf",
            "video/mp4",
            "application/octet-stream",
        ] {
            assert!(is_passive(t), "{t}");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
            "text/javascript",
            "application/javascript",
            "application/x-shockwave-flash",
            "image/png,text/html",
            "image/png text/html",
            "",
            "nonsense",
            "text/",
        ] {
            assert!(!is_passive(t), "{t}");
        }
    }

    #[test]
    fn cache_control_values() {
        assert_eq!(cache_control_from(Some("max-age=3600")), "max-age=3600");
        assert_eq!(cache_control_from(Some("3600")), "max-age=3600");
        assert_eq!(cache_control_from(None), "no-cache");
        assert_eq!(cache_control_from(Some("max-age=x")), "no-cache");
    }

    #[test]
    fn disposition_is_header_safe() {
        let o = ObjectRef {
            bucket: "b".into(),
            name: "dir/a b.txt".into(),
        };
        assert_eq!(
            content_disposition("", &o),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b%2Etxt"
        );
        assert!(!content_disposition("x\"\r\ny", &o).contains('\n'));
    }
}
