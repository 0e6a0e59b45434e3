//! Every /storage/v1 request parsed into a typed [`Endpoint`] before any I/O (method + path
//! only; bodies and query strings are read by the handlers). Bucket names and object keys
//! are percent-decoded and validated here, so no handler ever sees `..`, an absolute path,
//! a NUL or an overlong key.

use http::Method;
use percent_encoding::percent_decode_str;

use super::error::StorageError;

/// A validated bucket id and object key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub bucket: String,
    pub name: String,
}

impl ObjectRef {
    pub fn full_path(&self) -> String {
        format!("{}/{}", self.bucket, self.name)
    }
}

/// How a read is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The caller's role under RLS (service role bypasses).
    Authenticated,
    /// Anyone, when the bucket is public.
    Public,
    /// A signed URL token.
    Signed,
}

/// The row operation on `storage.objects` a request needs the caller's role to be allowed
/// (Supabase's permission model: RLS decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    Select,
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    ListBuckets,
    CreateBucket,
    GetBucket(String),
    UpdateBucket(String),
    DeleteBucket(String),
    EmptyBucket(String),
    ListObjects(String),
    ListObjectsV2(String),
    MoveObject,
    CopyObject,
    SignUrl(ObjectRef),
    SignUrls(String),
    GetSigned(ObjectRef),
    SignUpload(ObjectRef),
    UploadSigned(ObjectRef),
    GetObject {
        obj: ObjectRef,
        access: Access,
        head: bool,
    },
    Info {
        obj: ObjectRef,
        access: Access,
    },
    /// POST creates (upsert with `x-upsert: true`); PUT overwrites.
    Upload {
        obj: ObjectRef,
        update: bool,
    },
    DeleteObject(ObjectRef),
    DeleteObjects(String),
    Render {
        obj: ObjectRef,
        access: Access,
    },
    TusOptions,
    TusCreate,
    TusHead(String),
    TusPatch(String),
    TusDelete(String),
}

impl Endpoint {
    /// The `storage.objects` row operations the endpoint may perform, which are those the
    /// caller's role must be allowed under RLS (bucket endpoints check `storage.buckets` the
    /// same way). `upsert` is the request's `x-upsert: true`: an `INSERT ... ON CONFLICT DO
    /// UPDATE` needs the update (and select) policies too. Enforced at every write site
    /// ([`check_declared`]).
    pub fn row_ops(&self, upsert: bool) -> &'static [RowOp] {
        use Endpoint::*;
        match self {
            GetObject {
                access: Access::Authenticated,
                ..
            }
            | Info {
                access: Access::Authenticated,
                ..
            }
            | Render {
                access: Access::Authenticated,
                ..
            }
            | ListObjects(_)
            | ListObjectsV2(_)
            | SignUrl(_)
            | SignUrls(_) => &[RowOp::Select],
            Upload { update: false, .. } | SignUpload(_) | TusCreate if upsert => UPSERT,
            Upload { update: false, .. } | SignUpload(_) | TusCreate => &[RowOp::Insert],
            // PUT overwrites through the upsert statement; a signed upload or a finishing
            // TUS PATCH upserts when its token or upload says so.
            Upload { update: true, .. } | UploadSigned(_) | TusPatch(_) => UPSERT,
            CopyObject if upsert => UPSERT,
            CopyObject => &[RowOp::Select, RowOp::Insert],
            MoveObject => &[RowOp::Select, RowOp::Update],
            DeleteObject(_) | DeleteObjects(_) | EmptyBucket(_) => &[RowOp::Select, RowOp::Delete],
            _ => &[],
        }
    }
}

/// What `INSERT ... ON CONFLICT DO UPDATE` needs.
const UPSERT: &[RowOp] = &[RowOp::Select, RowOp::Insert, RowOp::Update];

tokio::task_local! {
    /// The row operations the endpoint being served declared ([`Endpoint::row_ops`]).
    static DECLARED: &'static [RowOp];
}

/// Serve `work` under the operations an endpoint declared: while it runs, every caller
/// transaction it opens ([`super::caller_tx`]) is read-only when the endpoint declared only
/// [`RowOp::Select`], so PostgreSQL refuses a write the declaration does not allow.
pub async fn with_declared<F: std::future::Future>(ops: &'static [RowOp], work: F) -> F::Output {
    DECLARED.scope(ops, work).await
}

/// Every statement that writes `storage.objects` asks first: inside a request, an
/// operation its endpoint did not declare is a server bug, refused before it runs (outside
/// one, as in the orphan sweeper, nothing was declared and the server's own work stands).
pub fn check_declared(op: RowOp) -> Result<(), StorageError> {
    match DECLARED.try_with(|ops| ops.contains(&op)) {
        Ok(false) => Err(StorageError::Internal(format!(
            "the storage endpoint did not declare the row operation {op:?}"
        ))),
        _ => Ok(()),
    }
}

/// The operations an `INSERT` (or, with `upsert`, `INSERT ... ON CONFLICT DO UPDATE`) into
/// `storage.objects` performs, each checked by [`check_declared`].
pub fn check_declared_insert(upsert: bool) -> Result<(), StorageError> {
    check_declared(RowOp::Insert)?;
    if upsert {
        check_declared(RowOp::Update)?;
    }
    Ok(())
}

/// Whether the endpoint being served declared reads only (no declaration: false, the
/// handler's own choice stands).
pub fn declared_read_only() -> bool {
    DECLARED
        .try_with(|ops| !ops.is_empty() && ops.iter().all(|o| *o == RowOp::Select))
        .unwrap_or(false)
}

pub fn parse(method: &Method, path: &str) -> Result<Endpoint, StorageError> {
    let not_found = || StorageError::RouteNotFound(format!("{method}:/storage/v1/{path}"));
    let path = path.trim_start_matches('/');
    let (head, rest) = match path.split_once('/') {
        Some((h, r)) => (h, r),
        None => (path, ""),
    };
    let is_get = *method == Method::GET || *method == Method::HEAD;
    match head {
        "bucket" => {
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() {
                return match *method {
                    Method::GET => Ok(Endpoint::ListBuckets),
                    Method::POST => Ok(Endpoint::CreateBucket),
                    _ => Err(not_found()),
                };
            }
            if let Some(id) = rest.strip_suffix("/empty") {
                if *method == Method::POST && !id.contains('/') {
                    return Ok(Endpoint::EmptyBucket(bucket_name(id)?));
                }
                return Err(not_found());
            }
            if rest.contains('/') {
                return Err(not_found());
            }
            let id = bucket_name(rest)?;
            match *method {
                Method::GET => Ok(Endpoint::GetBucket(id)),
                Method::PUT => Ok(Endpoint::UpdateBucket(id)),
                Method::DELETE => Ok(Endpoint::DeleteBucket(id)),
                _ => Err(not_found()),
            }
        }
        "object" => parse_object(method, rest).map_err(|e| match e {
            StorageError::RouteNotFound(_) => not_found(),
            e => e,
        }),
        "render" => {
            let Some(rest) = rest.strip_prefix("image/") else {
                return Err(not_found());
            };
            let (kind, rest) = rest.split_once('/').ok_or_else(not_found)?;
            let access = match kind {
                "authenticated" => Access::Authenticated,
                "public" => Access::Public,
                "sign" => Access::Signed,
                _ => return Err(not_found()),
            };
            if !is_get {
                return Err(not_found());
            }
            Ok(Endpoint::Render {
                obj: object_ref(rest)?,
                access,
            })
        }
        "upload" => {
            let Some(rest) = rest.strip_prefix("resumable") else {
                return Err(not_found());
            };
            let id = rest.trim_start_matches('/').trim_end_matches('/');
            if id.is_empty() {
                return match *method {
                    Method::POST => Ok(Endpoint::TusCreate),
                    Method::OPTIONS => Ok(Endpoint::TusOptions),
                    _ => Err(not_found()),
                };
            }
            if id.len() > 2048 || id.contains('/') {
                return Err(not_found());
            }
            let id = id.to_string();
            match *method {
                Method::HEAD => Ok(Endpoint::TusHead(id)),
                Method::PATCH => Ok(Endpoint::TusPatch(id)),
                Method::DELETE => Ok(Endpoint::TusDelete(id)),
                Method::OPTIONS => Ok(Endpoint::TusOptions),
                _ => Err(not_found()),
            }
        }
        _ => Err(not_found()),
    }
}

fn parse_object(method: &Method, rest: &str) -> Result<Endpoint, StorageError> {
    let nf = || StorageError::RouteNotFound(String::new());
    let is_get = *method == Method::GET || *method == Method::HEAD;
    let head = *method == Method::HEAD;
    let (first, tail) = match rest.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    // Specific routes first (as Supabase registers them); otherwise `<bucket>/<key>`.
    match (first, tail, method.clone()) {
        ("list", Some(b), Method::POST) if !b.is_empty() => {
            return Ok(Endpoint::ListObjects(bucket_name(b.trim_end_matches('/'))?))
        }
        ("list-v2", Some(b), Method::POST) if !b.is_empty() => {
            return Ok(Endpoint::ListObjectsV2(bucket_name(
                b.trim_end_matches('/'),
            )?))
        }
        ("move", None, Method::POST) => return Ok(Endpoint::MoveObject),
        ("copy", None, Method::POST) => return Ok(Endpoint::CopyObject),
        ("sign", Some(t), Method::POST) => {
            return match t.split_once('/') {
                Some((_, k)) if !k.is_empty() => Ok(Endpoint::SignUrl(object_ref(t)?)),
                _ => Ok(Endpoint::SignUrls(bucket_name(t.trim_end_matches('/'))?)),
            }
        }
        ("sign", Some(t), _) if is_get => return Ok(Endpoint::GetSigned(object_ref(t)?)),
        ("upload", Some(t), _) if t.starts_with("sign/") => {
            let t = &t["sign/".len()..];
            return match *method {
                Method::POST => Ok(Endpoint::SignUpload(object_ref(t)?)),
                Method::PUT => Ok(Endpoint::UploadSigned(object_ref(t)?)),
                _ => Err(nf()),
            };
        }
        ("public", Some(t), _) if is_get => {
            return Ok(Endpoint::GetObject {
                obj: object_ref(t)?,
                access: Access::Public,
                head,
            })
        }
        ("authenticated", Some(t), _) if is_get => {
            return Ok(Endpoint::GetObject {
                obj: object_ref(t)?,
                access: Access::Authenticated,
                head,
            })
        }
        ("info", Some(t), _) if is_get => {
            let (access, t) = if let Some(t) = t.strip_prefix("public/") {
                (Access::Public, t)
            } else if let Some(t) = t.strip_prefix("authenticated/") {
                (Access::Authenticated, t)
            } else {
                (Access::Authenticated, t)
            };
            return Ok(Endpoint::Info {
                obj: object_ref(t)?,
                access,
            });
        }
        _ => {}
    }
    match tail {
        None | Some("") => {
            if *method == Method::DELETE {
                Ok(Endpoint::DeleteObjects(bucket_name(first)?))
            } else {
                Err(nf())
            }
        }
        Some(_) => {
            let obj = object_ref(rest)?;
            match *method {
                Method::GET | Method::HEAD => Ok(Endpoint::GetObject {
                    obj,
                    access: Access::Authenticated,
                    head,
                }),
                Method::POST => Ok(Endpoint::Upload { obj, update: false }),
                Method::PUT => Ok(Endpoint::Upload { obj, update: true }),
                Method::DELETE => Ok(Endpoint::DeleteObject(obj)),
                _ => Err(nf()),
            }
        }
    }
}

fn decode(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// `<bucket>/<key...>` (still percent-encoded) into a validated reference.
pub fn object_ref(s: &str) -> Result<ObjectRef, StorageError> {
    let (b, k) = s
        .split_once('/')
        .ok_or_else(|| StorageError::InvalidKey(String::new()))?;
    let bucket = bucket_name(b)?;
    let name = decode(k).ok_or_else(|| StorageError::InvalidKey(k.to_string()))?;
    validate_key(&name)?;
    Ok(ObjectRef { bucket, name })
}

pub fn bucket_name(raw: &str) -> Result<String, StorageError> {
    let name = decode(raw).ok_or_else(|| StorageError::InvalidBucketName(raw.to_string()))?;
    validate_bucket_name(&name)?;
    Ok(name)
}

/// Supabase's S3-safe bucket alphabet, 1..=100 chars, and never `.`/`..`.
pub fn validate_bucket_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() < 101
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_!.*'() &$=@;:+,?-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidBucketName(name.to_string()))
    }
}

/// Largest key in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// Supabase's S3-safe key alphabet, plus what keeps keys unambiguous as paths: not empty,
/// no leading `/`, no empty, `.` or `..` segment, at most 1024 bytes.
pub fn validate_key(name: &str) -> Result<(), StorageError> {
    let alphabet = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_/!.*'() &$=@;:+,?-".contains(c));
    let segments_ok = name
        .split('/')
        .enumerate()
        .all(|(i, s)| (!s.is_empty() || (i > 0 && name.ends_with('/'))) && s != "." && s != "..");
    if !name.is_empty()
        && name.len() <= MAX_KEY_BYTES
        && alphabet
        && segments_ok
        && !name.starts_with('/')
        && !name.contains("//")
    {
        Ok(())
    } else {
        let shown: String = name
            .chars()
            .take(200)
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect();
        Err(StorageError::InvalidKey(shown))
    }
}

#[cfg(test)]
mod tests;
