//! TUS 1.0.0 resumable uploads at /storage/v1/upload/resumable (creation,
//! creation-with-upload, termination, expiration), as Supabase serves them to
//! tus-js-client/Uppy with 6 MB chunks.
//!
//! State lives in `storage.resumable_uploads` and each accepted PATCH is stored whole as
//! its own part (`uploads/<id>/<offset>`), so an upload resumes after a client or a server
//! restart: HEAD reports the offset of the last complete part. An interrupted PATCH stores
//! nothing and the client resends from that offset. The last PATCH assembles the parts into
//! `objects/<version>` (streamed) and commits the row as the caller, under RLS.

use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use http::{Response, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use super::endpoint::{validate_key, ObjectRef};
use super::error::StorageError;
use super::objects::{self, WriteAs};
use super::store::Store;
use super::{client, endpoint};
use crate::http::{empty, Req, Resp};
use crate::identity::{AuthContext, ServerRole};
use crate::state::AppState;

const VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration";

fn tus(e: StorageError) -> StorageError {
    match e {
        StorageError::Internal(_) | StorageError::Tus(..) => e,
        e => StorageError::Tus(e.semantic(), e.message()),
    }
}

fn base() -> http::response::Builder {
    Response::builder()
        .header("tus-resumable", VERSION)
        .header("cache-control", "no-store")
        .header(objects::NOSNIFF.0, objects::NOSNIFF.1)
}

pub fn options() -> Resp {
    base()
        .status(StatusCode::NO_CONTENT)
        .header("tus-version", VERSION)
        .header("tus-extension", EXTENSIONS)
        .body(empty())
        .expect("static response")
}

struct Upload {
    bucket: String,
    name: String,
    owner_id: Option<String>,
    upsert: bool,
    length: i64,
    offset: i64,
    content_type: String,
    cache_control: String,
    user_metadata: Option<Value>,
    expires_at: chrono::DateTime<chrono::Utc>,
}

pub fn parse_metadata(h: &str) -> Result<std::collections::HashMap<String, String>, StorageError> {
    let mut out = std::collections::HashMap::new();
    for pair in h.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once(' ').unwrap_or((pair, ""));
        let v = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|_| StorageError::Tus(400, "Upload-Metadata is not valid base64".into()))?;
        out.insert(k.to_string(), String::from_utf8_lossy(&v).to_string());
    }
    Ok(out)
}

fn header<'a>(req: &'a Req, k: &str) -> Option<&'a str> {
    req.headers().get(k).and_then(|v| v.to_str().ok())
}

fn location(id: &str) -> String {
    format!("/storage/v1/upload/resumable/{id}")
}

fn owner_of(ctx: &AuthContext) -> Option<String> {
    ctx.claims
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub async fn create(state: &AppState, ctx: &AuthContext, req: Req) -> Result<Resp, StorageError> {
    create_inner(state, ctx, req).await.map_err(tus)
}

async fn create_inner(state: &AppState, ctx: &AuthContext, req: Req) -> Result<Resp, StorageError> {
    if header(&req, "upload-defer-length").is_some() {
        return Err(StorageError::Tus(
            400,
            "Upload-Defer-Length is not supported".into(),
        ));
    }
    let length: i64 = header(&req, "upload-length")
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| StorageError::Tus(400, "Upload-Length is required".into()))?;
    let meta = parse_metadata(header(&req, "upload-metadata").unwrap_or(""))?;
    let bucket = meta
        .get("bucketName")
        .ok_or_else(|| StorageError::Tus(400, "Upload-Metadata needs bucketName".into()))?;
    let name = meta
        .get("objectName")
        .ok_or_else(|| StorageError::Tus(400, "Upload-Metadata needs objectName".into()))?;
    endpoint::validate_bucket_name(bucket)?;
    validate_key(name)?;
    let obj = ObjectRef {
        bucket: bucket.clone(),
        name: name.clone(),
    };
    let upsert = objects::wants_upsert(&req);
    let who = WriteAs::caller(ctx, upsert);
    let b = objects::check_can_write(state, &who, &obj).await?;
    if length as u64 > objects::effective_limit(state, &b) {
        return Err(StorageError::EntityTooLarge);
    }
    let content_type = meta
        .get("contentType")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".into());
    // It becomes a response header on download: visible ASCII only, type/subtype.
    if !content_type.contains('/')
        || !content_type
            .chars()
            .all(|c| c.is_ascii_graphic() || c == ' ')
        || content_type.len() > 255
    {
        return Err(StorageError::InvalidParameter("contentType".into()));
    }
    if !objects::mime_allowed(&b.mimes, &content_type) {
        return Err(StorageError::InvalidMimeType(
            content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        ));
    }
    let cache_control = match meta.get("cacheControl") {
        Some(c) if c.chars().all(|x| x.is_ascii_digit()) && !c.is_empty() => format!("max-age={c}"),
        Some(c)
            if c.strip_prefix("max-age=")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|x| x.is_ascii_digit())) =>
        {
            c.clone()
        }
        _ => "no-cache".into(),
    };
    let user_metadata = match meta.get("metadata") {
        Some(m) if !m.is_empty() => Some(
            serde_json::from_str::<Value>(m)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| StorageError::InvalidParameter("metadata".into()))?,
        ),
        _ => None,
    };
    let id = Uuid::new_v4().simple().to_string();
    let mut c = client(state).await?;
    let tx = admin_tx(&mut c).await?;
    check_open_uploads(state, ctx, &tx, &who.owner_id).await?;
    let expires: chrono::DateTime<chrono::Utc> = tx
        .query_one(
            "insert into storage.resumable_uploads (id, bucket_id, name, owner_id, upsert, \
             upload_length, content_type, cache_control, user_metadata) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning expires_at",
            &[
                &id,
                &obj.bucket,
                &obj.name,
                &who.owner_id,
                &upsert,
                &length,
                &content_type,
                &cache_control,
                &user_metadata,
            ],
        )
        .await
        .map_err(StorageError::pg)?
        .get(0);
    tx.commit().await.map_err(StorageError::pg)?;
    drop(c);
    let with_body = header(&req, "content-type")
        .is_some_and(|v| v.eq_ignore_ascii_case("application/offset+octet-stream"));
    let mut offset = 0;
    if with_body || length == 0 {
        offset = write_part(state, ctx, req, &id, 0).await?;
    }
    base()
        .status(StatusCode::CREATED)
        .header("location", location(&id))
        .header("upload-offset", offset)
        .header("upload-expires", http_date(&expires))
        .body(empty())
        .map_err(StorageError::internal)
}

/// At most `max_resumable_uploads_per_user` unfinished uploads per owner (the service role
/// is not bounded), checked under a lock on the owner so concurrent creations count right.
async fn check_open_uploads(
    state: &AppState,
    ctx: &AuthContext,
    tx: &deadpool_postgres::Transaction<'_>,
    owner_id: &Option<String>,
) -> Result<(), StorageError> {
    let max = state.config.storage.max_resumable_uploads_per_user;
    if max == 0 || ctx.role.is_service() {
        return Ok(());
    }
    tx.execute(
        "select pg_advisory_xact_lock(hashtextextended('tus/' || coalesce($1, ''), 7002))",
        &[owner_id],
    )
    .await
    .map_err(StorageError::pg)?;
    let open: i64 = tx
        .query_one(
            "select count(*) from storage.resumable_uploads \
             where owner_id is not distinct from $1 and expires_at > now()",
            &[owner_id],
        )
        .await
        .map_err(StorageError::pg)?
        .get(0);
    if open >= i64::from(max) {
        return Err(StorageError::Tus(
            429,
            format!(
                "Too many unfinished resumable uploads (at most {max}): finish or terminate one first"
            ),
        ));
    }
    Ok(())
}

fn http_date(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// A transaction as the storage admin: upload rows are the server's bookkeeping.
async fn admin_tx(
    c: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StorageError> {
    crate::db::begin_as_server(c, ServerRole::StorageAdmin, false)
        .await
        .map_err(StorageError::pg)
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())
}

/// The upload, if this caller may touch it (its owner, or the service role).
async fn load(state: &AppState, ctx: &AuthContext, id: &str) -> Result<Upload, StorageError> {
    if !valid_id(id) {
        return Err(StorageError::Tus(404, "Upload not found".into()));
    }
    let mut c = client(state).await?;
    let tx = admin_tx(&mut c).await?;
    let row = tx
        .query_opt(
            "select bucket_id, name, owner_id, upsert, upload_length, upload_offset, \
             content_type, cache_control, user_metadata, expires_at \
             from storage.resumable_uploads where id = $1",
            &[&id],
        )
        .await
        .map_err(StorageError::pg)?
        .ok_or_else(|| StorageError::Tus(404, "Upload not found".into()))?;
    tx.commit().await.map_err(StorageError::pg)?;
    let up = Upload {
        bucket: row.get(0),
        name: row.get(1),
        owner_id: row.get(2),
        upsert: row.get(3),
        length: row.get(4),
        offset: row.get(5),
        content_type: row.get(6),
        cache_control: row.get(7),
        user_metadata: row.get(8),
        expires_at: row.get(9),
    };
    if !ctx.role.is_service() && owner_of(ctx) != up.owner_id {
        return Err(StorageError::Tus(404, "Upload not found".into()));
    }
    if up.expires_at < chrono::Utc::now() {
        return Err(StorageError::Tus(410, "Upload expired".into()));
    }
    Ok(up)
}

pub async fn head(state: &AppState, ctx: &AuthContext, id: &str) -> Result<Resp, StorageError> {
    let up = load(state, ctx, id).await?;
    base()
        .status(StatusCode::OK)
        .header("upload-offset", up.offset)
        .header("upload-length", up.length)
        .header("upload-expires", http_date(&up.expires_at))
        .body(empty())
        .map_err(StorageError::internal)
}

pub async fn patch(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
    id: &str,
) -> Result<Resp, StorageError> {
    let ct_ok = header(&req, "content-type")
        .is_some_and(|v| v.eq_ignore_ascii_case("application/offset+octet-stream"));
    if !ct_ok {
        return Err(StorageError::Tus(
            415,
            "Content-Type must be application/offset+octet-stream".into(),
        ));
    }
    let offset: i64 = header(&req, "upload-offset")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| StorageError::Tus(400, "Upload-Offset is required".into()))?;
    let new_offset = write_part(state, ctx, req, id, offset).await.map_err(tus)?;
    base()
        .status(StatusCode::NO_CONTENT)
        .header("upload-offset", new_offset)
        .body(empty())
        .map_err(StorageError::internal)
}

fn part_key(id: &str, offset: i64) -> object_store::path::Path {
    object_store::path::Path::from(format!("uploads/{id}/{offset:020}"))
}

/// Store this PATCH body as one part, advance the offset; finish when complete.
/// A rejected PATCH's unread rest is discarded (bounded) before the error goes out.
async fn write_part(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
    id: &str,
    offset: i64,
) -> Result<i64, StorageError> {
    let declared: Option<u64> = header(&req, "content-length").and_then(|v| v.trim().parse().ok());
    let mut body = http_body_util::BodyDataStream::new(req.into_body())
        .map_err(|e| StorageError::InvalidRequest(format!("could not read the request body: {e}")))
        .boxed();
    let result = write_part_from(state, ctx, &mut body, id, offset, declared).await;
    match &result {
        // Refused on its declared length, before reading: answer at once (the connection's
        // lingering close takes what the client still sends).
        Err(StorageError::Tus(413, _)) if declared.is_some() => {}
        Err(_) => super::store::discard_rest(&mut body).await,
        Ok(_) => {}
    }
    result
}

fn passes_length() -> StorageError {
    StorageError::Tus(413, "The PATCH passes the declared Upload-Length".into())
}

async fn write_part_from(
    state: &AppState,
    ctx: &AuthContext,
    body: &mut super::store::ByteStream,
    id: &str,
    offset: i64,
    declared: Option<u64>,
) -> Result<i64, StorageError> {
    let up = load(state, ctx, id).await?;
    if offset != up.offset {
        return Err(StorageError::Tus(
            409,
            "Upload-Offset does not match the upload".into(),
        ));
    }
    let remaining = (up.length - up.offset) as u64;
    if declared.is_some_and(|n| n > remaining) {
        return Err(passes_length());
    }
    let store = &state.storage.store;
    let key = part_key(id, offset);
    let written = match store.put_stream(&key, body, remaining).await {
        Ok(w) => w,
        Err(super::store::PutError::TooLarge) => return Err(passes_length()),
        Err(e) => return Err(e.into()),
    };
    let new_offset = offset + written.size as i64;
    if written.size == 0 && up.length > 0 {
        let _ = store.delete(&key).await;
        return Ok(offset);
    }
    if new_offset == up.length {
        // The last part: the offset is not advanced on its own. The object row and the
        // upload's removal commit together, so a crash in between leaves the upload at
        // the previous offset (the client resends this part), never "complete" with no
        // object.
        finish(state, ctx, id, &up).await?;
        return Ok(new_offset);
    }
    let mut c = client(state).await?;
    let tx = admin_tx(&mut c).await?;
    let n = tx
        .execute(
            "update storage.resumable_uploads set upload_offset = $3 \
             where id = $1 and upload_offset = $2",
            &[&id, &offset, &new_offset],
        )
        .await
        .map_err(StorageError::pg)?;
    if n == 0 {
        drop(tx);
        let _ = store.delete(&key).await;
        return Err(StorageError::Tus(
            409,
            "Upload-Offset does not match the upload".into(),
        ));
    }
    tx.commit().await.map_err(StorageError::pg)?;
    Ok(new_offset)
}

/// Assemble the parts into one object version and commit its row as the caller.
async fn finish(
    state: &AppState,
    ctx: &AuthContext,
    id: &str,
    up: &Upload,
) -> Result<(), StorageError> {
    let store = state.storage.store.clone();
    let parts = store
        .list(&format!("uploads/{id}"))
        .await
        .map_err(|e| StorageError::internal(format!("object store list: {e}")))?;
    // The parts that tile [0, length), each starting where the one before ends. Others are
    // leftovers of PATCHes whose offset never committed (a crash, a lost race): skipped.
    let by_start: std::collections::HashMap<u64, (object_store::path::Path, u64)> = parts
        .into_iter()
        .filter_map(|(p, _, size)| {
            let start: u64 = p.filename()?.parse().ok()?;
            Some((start, (p, size)))
        })
        .collect();
    let mut keys = vec![];
    let mut expect: u64 = 0;
    while expect < up.length as u64 {
        match by_start.get(&expect) {
            Some((p, size)) if *size > 0 => {
                keys.push(p.clone());
                expect += size;
            }
            _ => {
                return Err(StorageError::internal(format!(
                    "upload {id}: no part at offset {expect}"
                )))
            }
        }
    }
    if expect != up.length as u64 {
        return Err(StorageError::internal(format!(
            "upload {id}: parts hold {expect} bytes"
        )));
    }
    let s2 = store.clone();
    let mut stream = futures::stream::iter(keys)
        .then(move |k| {
            let s = s2.clone();
            async move { s.get(&k, None).await }
        })
        .try_flatten()
        .map_err(|e| StorageError::internal(format!("object store read: {e}")))
        .boxed();
    // The bucket's rules again, now with the content: a refused upload is over.
    if let Err(e) = check_finished(state, up, &mut stream).await {
        remove(state, id).await?;
        return Err(e);
    }
    let version = Uuid::new_v4().to_string();
    let key = Store::object_key(&version);
    let written = store.put_stream(&key, stream, up.length as u64).await?;
    let obj = ObjectRef {
        bucket: up.bucket.clone(),
        name: up.name.clone(),
    };
    let who = WriteAs {
        ctx,
        owner_id: up.owner_id.clone(),
        upsert: up.upsert,
    };
    let metadata = objects::object_metadata(&written, &up.content_type, &up.cache_control);
    let result = objects::commit_row(
        state,
        &who,
        &obj,
        &version,
        &metadata,
        &up.user_metadata,
        Some(id),
    )
    .await;
    if result.is_err() {
        let _ = store.delete(&key).await;
    }
    // Done either way: a rejected finish (duplicate, RLS) cannot succeed on retry.
    remove(state, id).await?;
    result.map(|_| ())
}

/// The bucket's rules for the finished upload, as for any upload: size, type and, in a
/// bucket with a MIME allow-list, the content's first bytes.
async fn check_finished(
    state: &AppState,
    up: &Upload,
    stream: &mut super::store::ByteStream,
) -> Result<(), StorageError> {
    let mut c = client(state).await?;
    let tx = admin_tx(&mut c).await?;
    let b = objects::bucket_info(&tx, &up.bucket).await?;
    tx.commit().await.map_err(StorageError::pg)?;
    drop(c);
    objects::check_rules(state, &b, &up.content_type, Some(up.length as u64))?;
    if objects::sniffs(&b) {
        let head = objects::peek_head(stream, crate::functions::sniff::SNIFF_BYTES).await?;
        objects::check_content(&b, &up.content_type, &head)?;
    }
    Ok(())
}

async fn remove(state: &AppState, id: &str) -> Result<(), StorageError> {
    let mut c = client(state).await?;
    let tx = admin_tx(&mut c).await?;
    tx.execute(
        "delete from storage.resumable_uploads where id = $1",
        &[&id],
    )
    .await
    .map_err(StorageError::pg)?;
    tx.commit().await.map_err(StorageError::pg)?;
    let store = &state.storage.store;
    if let Ok(parts) = store.list(&format!("uploads/{id}")).await {
        store.delete_later(parts.into_iter().map(|(p, _, _)| p).collect());
    }
    Ok(())
}

pub async fn delete(state: &AppState, ctx: &AuthContext, id: &str) -> Result<Resp, StorageError> {
    load(state, ctx, id).await?;
    remove(state, id).await?;
    base()
        .status(StatusCode::NO_CONTENT)
        .body(empty())
        .map_err(StorageError::internal)
}

/// Drop expired uploads and parts whose upload row is gone.
pub async fn sweep(state: &AppState) -> Result<(), String> {
    let mut c = state.pool.get().await.map_err(|e| e.to_string())?;
    let tx = super::background_admin_tx(&mut c).await?;
    tx.execute(
        "delete from storage.resumable_uploads where expires_at < now()",
        &[],
    )
    .await
    .map_err(|e| crate::db::error_text(&e))?;
    let live: std::collections::HashSet<String> = tx
        .query("select id from storage.resumable_uploads", &[])
        .await
        .map_err(|e| crate::db::error_text(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await.map_err(|e| crate::db::error_text(&e))?;
    let store = &state.storage.store;
    let parts = store.list("uploads").await.map_err(|e| e.to_string())?;
    let cutoff = chrono::Utc::now() - chrono::Duration::hours(1);
    let dead = parts
        .into_iter()
        .filter(|(p, t, _)| {
            let id = p
                .parts()
                .nth(1)
                .map(|x| x.as_ref().to_string())
                .unwrap_or_default();
            *t < cutoff && !live.contains(&id)
        })
        .map(|(p, _, _)| p)
        .collect();
    store.delete_later(dead);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_metadata_parses() {
        let m = parse_metadata("bucketName YXZhdGFycw==,objectName YS9iLnBuZw==,empty").unwrap();
        assert_eq!(m["bucketName"], "avatars");
        assert_eq!(m["objectName"], "a/b.png");
        assert_eq!(m["empty"], "");
        assert!(parse_metadata("bucketName !!!").is_err());
    }

    #[test]
    fn ids_are_strict() {
        assert!(valid_id(&Uuid::new_v4().simple().to_string()));
        assert!(!valid_id("../../etc"));
        assert!(!valid_id(""));
    }
}
