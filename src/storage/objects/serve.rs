//! Reading an object: the row lookup, Range and conditional requests, safe serving.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::http::{empty, query_pairs, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;
use crate::storage::endpoint::{Access, ObjectRef};
use crate::storage::error::StorageError;
use crate::storage::store::Store;
use crate::storage::{as_admin, caller_tx, client};

use super::rules::{bucket_info, is_our_version};

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
        .await
        .map_err(StorageError::pg)?
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
    tx.commit().await.map_err(StorageError::pg)?;
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
    // As storage-api: the name through encodeURIComponent in both parameters, which leaves
    // nothing a header could break on (no quotes, spaces, CR/LF or non-ASCII).
    let enc = percent_encoding::utf8_percent_encode(&name, URI_COMPONENT);
    format!("attachment; filename={enc}; filename*=UTF-8''{enc}")
}

/// What JavaScript's encodeURIComponent escapes: all but A-Z a-z 0-9 - _ . ! ~ * ' ( ).
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

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
