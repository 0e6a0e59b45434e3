//! file-upload: POST a multipart `file` (and optional `conversation_id`) into the
//! `chat-files` bucket at `<user id>/<uuid>-<safe name>` plus a `file_uploads` row; GET lists
//! the caller's uploads; DELETE removes one (object and row together).
//!
//! The object is written by the storage module's own write path as the caller (storage RLS
//! applies, same row and bytes as `/storage/v1`), streamed through [`Checked`], which counts
//! bytes (413 past the limit, nothing kept) and verifies text content on the fly. The row is
//! inserted as the caller afterwards; if that fails, the object is removed again.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::FnError;
use super::sniff::{self, Kind, TextCheck};
use crate::db::RequestGucs;
use crate::http::{json_response, query_pairs, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;
use crate::storage::endpoint::ObjectRef;
use crate::storage::error::StorageError;
use crate::storage::objects::{self, UploadSource, WriteAs};
use crate::storage::store::{ByteStream, Store};

pub const NAME: &str = "file-upload";
pub const BUCKET: &str = "chat-files";
/// Largest accepted file (the chat-files bucket's limit).
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Room for the multipart framing and small fields around the file.
const FORM_OVERHEAD: u64 = 64 * 1024;
/// Largest non-file form field, and most fields in one form.
const MAX_FIELD_BYTES: usize = 4 * 1024;
const MAX_FIELDS: usize = 16;
/// Bytes read before the type is decided.
const HEAD_BYTES: usize = 512;
/// Lifetime of the signed URLs in answers.
const SIGNED_URL_TTL: i64 = 3600;
/// Upper bound of a listing.
const LIST_LIMIT: i64 = 1000;

const COLUMNS: &str = "id, bucket, path, name, mime_type, size_bytes, conversation_id, \
    to_json(created_at) #>> '{}'";

pub async fn handle(
    state: &AppState,
    ctx: &AuthContext,
    user: Uuid,
    req: Req,
) -> Result<Resp, FnError> {
    match *req.method() {
        Method::POST => post(state, ctx, user, req).await,
        Method::GET => list(state, ctx, &req).await,
        Method::DELETE => delete(state, ctx, &req).await,
        ref m => Err(FnError::method_not_allowed(m, NAME)),
    }
}

fn gucs(method: &'static str) -> RequestGucs<'static> {
    RequestGucs {
        method,
        path: "/functions/v1/file-upload",
        ..Default::default()
    }
}

async fn client(state: &AppState) -> Result<deadpool_postgres::Client, FnError> {
    state.pool.get().await.map_err(|e| FnError::from_pool(&e))
}

fn query_param(req: &Req, key: &str) -> Option<String> {
    query_pairs(req.uri().query())
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn parse_uuid(field: &str, v: &str) -> Result<Uuid, FnError> {
    Uuid::parse_str(v).map_err(|_| FnError::bad_request(format!("{field} must be a UUID.")))
}

/// The full signed download URL of an object (the format `/storage/v1/object/sign` uses).
fn signed_url(state: &AppState, bucket: &str, path: &str) -> String {
    let obj = ObjectRef {
        bucket: bucket.to_string(),
        name: path.to_string(),
    };
    format!(
        "{}/storage/v1{}",
        state.config.external_url(),
        crate::storage::signed::download_url(state, &obj, SIGNED_URL_TTL, None)
    )
}

fn row_json(row: &tokio_postgres::Row, signed: Option<String>) -> Value {
    json!({
        "id": row.get::<_, Uuid>(0),
        "bucket": row.get::<_, String>(1),
        "path": row.get::<_, String>(2),
        "name": row.get::<_, String>(3),
        "mime_type": row.get::<_, Option<String>>(4),
        "size_bytes": row.get::<_, Option<i64>>(5),
        "conversation_id": row.get::<_, Option<Uuid>>(6),
        "created_at": row.get::<_, String>(7),
        "signed_url": signed,
    })
}

// ---------------------------------------------------------------- POST

/// An object this request wrote.
struct Stored {
    path: String,
    name: String,
    mime: &'static str,
    size: u64,
}

async fn post(state: &AppState, ctx: &AuthContext, user: Uuid, req: Req) -> Result<Resp, FnError> {
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
    let ct = header("content-type").unwrap_or("").to_string();
    let Ok(boundary) = multer::parse_boundary(&ct) else {
        let body = req.into_body();
        drain_body(body).await;
        return Err(FnError::unsupported(
            "Send the file as multipart/form-data with a `file` field.",
        ));
    };
    let declared_len: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    let mut conversation = query_param(&req, "conversation_id");
    if declared_len.is_some_and(|n| n > MAX_BYTES + FORM_OVERHEAD) {
        drain_body(req.into_body()).await;
        return Err(FnError::too_large(MAX_BYTES));
    }
    let body = http_body_util::BodyDataStream::new(req.into_body());
    let mut mp = multer::Multipart::new(body, boundary);
    let mut stored: Option<Stored> = None;
    let read = read_form(state, ctx, user, &mut mp, &mut stored, &mut conversation).await;
    let result = match read {
        Ok(()) => match &stored {
            None => Err(FnError::bad_request(
                "The form has no `file` field with the file to upload.",
            )),
            Some(s) => insert_row(state, ctx, s, conversation.as_deref()).await,
        },
        Err(e) => {
            drain_form(&mut mp).await;
            Err(e)
        }
    };
    match result {
        Ok(row) => {
            let s = stored.as_ref().expect("stored when the row was inserted");
            let url = signed_url(state, BUCKET, &s.path);
            tracing::info!(function = NAME, size = s.size, mime = s.mime, "file stored");
            Ok(json_response(
                StatusCode::CREATED,
                &row_json(&row, Some(url)),
            ))
        }
        Err(e) => {
            if let Some(s) = stored {
                remove_object(state, ctx, &s.path).await;
            }
            Err(e)
        }
    }
}

async fn read_form(
    state: &AppState,
    ctx: &AuthContext,
    user: Uuid,
    mp: &mut multer::Multipart<'static>,
    stored: &mut Option<Stored>,
    conversation: &mut Option<String>,
) -> Result<(), FnError> {
    let mut fields = 0;
    while let Some(field) = mp.next_field().await.map_err(form_error)? {
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(FnError::bad_request("The form has too many fields."));
        }
        let name = field.name().unwrap_or("").to_string();
        if name == "file" && stored.is_none() {
            *stored = Some(store_file(state, ctx, user, field).await?);
            continue;
        }
        let text = read_small(field, &name).await?;
        match name.as_str() {
            "file" => return Err(FnError::bad_request("Send one file per request.")),
            "conversation_id" if !text.trim().is_empty() => {
                *conversation = Some(text.trim().to_string())
            }
            _ => {}
        }
    }
    Ok(())
}

fn form_error(e: multer::Error) -> FnError {
    FnError::bad_request(format!("The multipart form could not be read: {e}."))
}

async fn read_small(mut field: multer::Field<'static>, name: &str) -> Result<String, FnError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(form_error)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_FIELD_BYTES {
            return Err(FnError::bad_request(format!(
                "The form field `{}` is too large.",
                name.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Why [`Checked`] stopped a stream.
#[derive(Debug)]
enum Rejection {
    TooLarge,
    NotText(&'static str),
}

/// The file's bytes on their way to the store: counted (stops past the limit) and, for text
/// types, verified as UTF-8 without NUL. A rejection ends the stream with an error and is
/// left in `verdict` for the response.
struct Checked {
    head: Option<Bytes>,
    inner: ByteStream,
    limit: u64,
    seen: Arc<AtomicU64>,
    text: Option<(TextCheck, &'static str)>,
    verdict: Arc<Mutex<Option<Rejection>>>,
    done: bool,
}

impl Checked {
    fn reject(&mut self, r: Rejection) -> Poll<Option<Result<Bytes, StorageError>>> {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.done = true;
        Poll::Ready(Some(Err(StorageError::InvalidRequest(
            "upload rejected".into(),
        ))))
    }

    fn pass(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, StorageError>>> {
        let seen = self.seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if seen > self.limit {
            return self.reject(Rejection::TooLarge);
        }
        if let Some((check, mime)) = &mut self.text {
            if !check.feed(&chunk) {
                let mime = *mime;
                return self.reject(Rejection::NotText(mime));
            }
        }
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Stream for Checked {
    type Item = Result<Bytes, StorageError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(head) = self.head.take() {
            if !head.is_empty() {
                return self.pass(head);
            }
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => self.pass(chunk),
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                match &self.text {
                    Some((check, mime)) if !check.finish() => {
                        let mime = *mime;
                        self.reject(Rejection::NotText(mime))
                    }
                    _ => Poll::Ready(None),
                }
            }
        }
    }
}

async fn store_file(
    state: &AppState,
    ctx: &AuthContext,
    user: Uuid,
    field: multer::Field<'static>,
) -> Result<Stored, FnError> {
    let original = field.file_name().unwrap_or("file").to_string();
    let declared = field.content_type().map(|m| m.essence_str().to_string());
    let mut stream: ByteStream = field
        .map_err(|e| {
            StorageError::InvalidRequest(format!("the multipart form could not be read: {e}"))
        })
        .boxed();
    // The first bytes decide (and verify) the type before anything is written.
    let mut head = BytesMut::new();
    while head.len() < HEAD_BYTES {
        match stream.next().await {
            Some(Ok(c)) => {
                head.extend_from_slice(&c);
                if head.len() as u64 > MAX_BYTES {
                    return Err(FnError::too_large(MAX_BYTES));
                }
            }
            Some(Err(e)) => return Err(FnError::from_storage(e)),
            None => break,
        }
    }
    let ty =
        sniff::classify(&original, declared.as_deref(), &head).map_err(FnError::unsupported)?;
    let path = format!("{user}/{}-{}", Uuid::new_v4(), sniff::safe_name(&original));
    let seen = Arc::new(AtomicU64::new(0));
    let verdict = Arc::new(Mutex::new(None));
    let checked = Checked {
        head: Some(head.freeze()),
        inner: stream,
        limit: MAX_BYTES,
        seen: seen.clone(),
        text: (ty.kind == Kind::Text).then(|| (TextCheck::default(), ty.mime)),
        verdict: verdict.clone(),
        done: false,
    };
    let src = UploadSource {
        stream: checked.boxed(),
        content_type: ty.mime.to_string(),
        cache_control: "max-age=3600".into(),
        user_metadata: None,
        content_length: None,
    };
    let obj = ObjectRef {
        bucket: BUCKET.into(),
        name: path.clone(),
    };
    let who = WriteAs::caller(ctx, false);
    match objects::store_object(state, &who, &obj, src).await {
        Ok(_) => Ok(Stored {
            path,
            name: sniff::display_name(&original),
            mime: ty.mime,
            size: seen.load(Ordering::Relaxed),
        }),
        Err(e) => {
            let verdict = verdict.lock().unwrap_or_else(|p| p.into_inner()).take();
            Err(match verdict {
                Some(Rejection::TooLarge) => FnError::too_large(MAX_BYTES),
                Some(Rejection::NotText(mime)) => {
                    FnError::unsupported(format!("The file's content is not {mime} text."))
                }
                None => FnError::from_storage(e),
            })
        }
    }
}

async fn insert_row(
    state: &AppState,
    ctx: &AuthContext,
    s: &Stored,
    conversation: Option<&str>,
) -> Result<tokio_postgres::Row, FnError> {
    let conversation = conversation
        .map(|c| parse_uuid("conversation_id", c))
        .transpose()?;
    let mut c = client(state).await?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs("POST"), false)
        .await
        .map_err(FnError::pg)?;
    if let Some(conv) = conversation {
        let visible = tx
            .query_opt("select 1 from public.conversations where id = $1", &[&conv])
            .await
            .map_err(FnError::pg)?;
        if visible.is_none() {
            return Err(FnError::not_found("The conversation was not found."));
        }
    }
    let row = tx
        .query_one(
            &format!(
                "insert into public.file_uploads \
                 (bucket, path, name, mime_type, size_bytes, conversation_id) \
                 values ($1, $2, $3, $4, $5, $6) returning {COLUMNS}"
            ),
            &[
                &BUCKET,
                &s.path,
                &s.name,
                &s.mime,
                &(s.size as i64),
                &conversation,
            ],
        )
        .await
        .map_err(FnError::pg)?;
    tx.commit().await.map_err(FnError::pg)?;
    Ok(row)
}

/// Remove an object this request wrote (its row as the caller, then its bytes).
async fn remove_object(state: &AppState, ctx: &AuthContext, path: &str) {
    let r = async {
        let mut c = client(state).await?;
        let tx = crate::db::begin_as(&mut c, ctx, &gucs("POST"), false)
            .await
            .map_err(FnError::pg)?;
        let version = delete_object_row(&tx, BUCKET, path).await?;
        tx.commit().await.map_err(FnError::pg)?;
        Ok::<_, FnError>(version)
    }
    .await;
    match r {
        Ok(Some(v)) => state
            .storage
            .store
            .delete_later(vec![Store::object_key(&v)]),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(function = NAME, error = ?e, "could not remove an uploaded object")
        }
    }
}

/// Delete a `storage.objects` row in the caller's transaction; its bytes' version if ours.
async fn delete_object_row(
    tx: &deadpool_postgres::Transaction<'_>,
    bucket: &str,
    path: &str,
) -> Result<Option<String>, FnError> {
    let row = tx
        .query_opt(
            "delete from storage.objects where bucket_id = $1 and name = $2 returning version",
            &[&bucket, &path],
        )
        .await
        .map_err(FnError::pg)?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .filter(|v| objects::is_our_version(v)))
}

/// Read and drop what is left of a refused request, bounded, so the client can finish
/// sending and read the answer (closing with unread data resets the connection).
async fn drain_body(body: hyper::body::Incoming) {
    let mut s = http_body_util::BodyDataStream::new(body)
        .map_err(|e| StorageError::InvalidRequest(e.to_string()))
        .boxed();
    crate::storage::store::discard_rest(&mut s).await;
}

async fn drain_form(mp: &mut multer::Multipart<'static>) {
    const MAX_BYTES_DRAINED: usize = 64 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut seen = 0;
        while let Ok(Some(mut f)) = mp.next_field().await {
            while let Ok(Some(c)) = f.chunk().await {
                seen += c.len();
                if seen > MAX_BYTES_DRAINED {
                    return;
                }
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------- GET, DELETE

async fn list(state: &AppState, ctx: &AuthContext, req: &Req) -> Result<Resp, FnError> {
    let conversation = query_param(req, "conversation_id")
        .map(|c| parse_uuid("conversation_id", &c))
        .transpose()?;
    let mut c = client(state).await?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs("GET"), true)
        .await
        .map_err(FnError::pg)?;
    // A signed URL only for objects the caller can read (rows are the caller's to write).
    let rows = tx
        .query(
            &format!(
                "select {COLUMNS}, exists (select 1 from storage.objects o \
                   where o.bucket_id = f.bucket and o.name = f.path) \
                 from public.file_uploads f \
                 where $1::uuid is null or conversation_id = $1 \
                 order by created_at desc, id desc limit {LIST_LIMIT}"
            ),
            &[&conversation],
        )
        .await
        .map_err(FnError::pg)?;
    tx.commit().await.map_err(FnError::pg)?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let signed = r
                .get::<_, bool>(8)
                .then(|| signed_url(state, &r.get::<_, String>(1), &r.get::<_, String>(2)));
            row_json(r, signed)
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(items)))
}

async fn delete(state: &AppState, ctx: &AuthContext, req: &Req) -> Result<Resp, FnError> {
    let id = query_param(req, "id")
        .ok_or_else(|| FnError::bad_request("Give the upload's id as ?id=."))
        .and_then(|v| parse_uuid("id", &v))?;
    let mut c = client(state).await?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs("DELETE"), false)
        .await
        .map_err(FnError::pg)?;
    let row = tx
        .query_opt(
            "delete from public.file_uploads where id = $1 returning bucket, path",
            &[&id],
        )
        .await
        .map_err(FnError::pg)?
        .ok_or_else(|| FnError::not_found("The upload was not found."))?;
    let (bucket, path): (String, String) = (row.get(0), row.get(1));
    let version = delete_object_row(&tx, &bucket, &path).await?;
    tx.commit().await.map_err(FnError::pg)?;
    if let Some(v) = version {
        state
            .storage
            .store
            .delete_later(vec![Store::object_key(&v)]);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": id, "bucket": bucket, "path": path, "deleted": true}),
    ))
}
