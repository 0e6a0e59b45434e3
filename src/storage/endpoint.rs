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
mod tests {
    use super::*;

    fn o(b: &str, n: &str) -> ObjectRef {
        ObjectRef {
            bucket: b.into(),
            name: n.into(),
        }
    }

    fn p(m: &str, path: &str) -> Result<Endpoint, StorageError> {
        parse(&Method::from_bytes(m.as_bytes()).unwrap(), path)
    }

    #[test]
    fn every_route_parses_to_its_endpoint_and_row_ops() {
        use Endpoint::*;
        let a = Access::Authenticated;
        let table: Vec<(&str, &str, Endpoint, &[RowOp])> = vec![
            ("GET", "bucket", ListBuckets, &[]),
            ("GET", "bucket/", ListBuckets, &[]),
            ("POST", "bucket", CreateBucket, &[]),
            ("GET", "bucket/avatars", GetBucket("avatars".into()), &[]),
            ("PUT", "bucket/avatars", UpdateBucket("avatars".into()), &[]),
            (
                "DELETE",
                "bucket/avatars",
                DeleteBucket("avatars".into()),
                &[],
            ),
            (
                "POST",
                "bucket/avatars/empty",
                EmptyBucket("avatars".into()),
                &[RowOp::Select, RowOp::Delete],
            ),
            (
                "POST",
                "object/list/chat-files",
                ListObjects("chat-files".into()),
                &[RowOp::Select],
            ),
            (
                "POST",
                "object/list-v2/chat-files",
                ListObjectsV2("chat-files".into()),
                &[RowOp::Select],
            ),
            (
                "POST",
                "object/move",
                MoveObject,
                &[RowOp::Select, RowOp::Update],
            ),
            (
                "POST",
                "object/copy",
                CopyObject,
                &[RowOp::Select, RowOp::Insert],
            ),
            (
                "POST",
                "object/sign/b/a/c.png",
                SignUrl(o("b", "a/c.png")),
                &[RowOp::Select],
            ),
            (
                "POST",
                "object/sign/b",
                SignUrls("b".into()),
                &[RowOp::Select],
            ),
            (
                "GET",
                "object/sign/b/a/c.png",
                GetSigned(o("b", "a/c.png")),
                &[],
            ),
            (
                "POST",
                "object/upload/sign/b/x.txt",
                SignUpload(o("b", "x.txt")),
                &[RowOp::Insert],
            ),
            (
                "PUT",
                "object/upload/sign/b/x.txt",
                UploadSigned(o("b", "x.txt")),
                UPSERT,
            ),
            (
                "GET",
                "object/public/b/x.txt",
                GetObject {
                    obj: o("b", "x.txt"),
                    access: Access::Public,
                    head: false,
                },
                &[],
            ),
            (
                "HEAD",
                "object/public/b/x.txt",
                GetObject {
                    obj: o("b", "x.txt"),
                    access: Access::Public,
                    head: true,
                },
                &[],
            ),
            (
                "GET",
                "object/authenticated/b/x.txt",
                GetObject {
                    obj: o("b", "x.txt"),
                    access: a,
                    head: false,
                },
                &[RowOp::Select],
            ),
            (
                "GET",
                "object/info/b/x.txt",
                Info {
                    obj: o("b", "x.txt"),
                    access: a,
                },
                &[RowOp::Select],
            ),
            (
                "GET",
                "object/info/public/b/x.txt",
                Info {
                    obj: o("b", "x.txt"),
                    access: Access::Public,
                },
                &[],
            ),
            (
                "GET",
                "object/info/authenticated/b/x.txt",
                Info {
                    obj: o("b", "x.txt"),
                    access: a,
                },
                &[RowOp::Select],
            ),
            (
                "GET",
                "object/b/dir/x.txt",
                GetObject {
                    obj: o("b", "dir/x.txt"),
                    access: a,
                    head: false,
                },
                &[RowOp::Select],
            ),
            (
                "HEAD",
                "object/b/x.txt",
                GetObject {
                    obj: o("b", "x.txt"),
                    access: a,
                    head: true,
                },
                &[RowOp::Select],
            ),
            (
                "POST",
                "object/b/x.txt",
                Upload {
                    obj: o("b", "x.txt"),
                    update: false,
                },
                &[RowOp::Insert],
            ),
            (
                "PUT",
                "object/b/x.txt",
                Upload {
                    obj: o("b", "x.txt"),
                    update: true,
                },
                UPSERT,
            ),
            (
                "DELETE",
                "object/b/x.txt",
                DeleteObject(o("b", "x.txt")),
                &[RowOp::Select, RowOp::Delete],
            ),
            (
                "DELETE",
                "object/b",
                DeleteObjects("b".into()),
                &[RowOp::Select, RowOp::Delete],
            ),
            (
                "GET",
                "object/b/a%20b.txt",
                GetObject {
                    obj: o("b", "a b.txt"),
                    access: a,
                    head: false,
                },
                &[RowOp::Select],
            ),
            // A bucket called "list" is still reachable by GET, as in Supabase.
            (
                "GET",
                "object/list/x.txt",
                GetObject {
                    obj: o("list", "x.txt"),
                    access: a,
                    head: false,
                },
                &[RowOp::Select],
            ),
            (
                "GET",
                "render/image/authenticated/b/i.jpg",
                Render {
                    obj: o("b", "i.jpg"),
                    access: a,
                },
                &[RowOp::Select],
            ),
            (
                "GET",
                "render/image/public/b/i.jpg",
                Render {
                    obj: o("b", "i.jpg"),
                    access: Access::Public,
                },
                &[],
            ),
            (
                "GET",
                "render/image/sign/b/i.jpg",
                Render {
                    obj: o("b", "i.jpg"),
                    access: Access::Signed,
                },
                &[],
            ),
            ("POST", "upload/resumable", TusCreate, &[RowOp::Insert]),
            ("POST", "upload/resumable/", TusCreate, &[RowOp::Insert]),
            ("OPTIONS", "upload/resumable", TusOptions, &[]),
            ("HEAD", "upload/resumable/abc", TusHead("abc".into()), &[]),
            (
                "PATCH",
                "upload/resumable/abc",
                TusPatch("abc".into()),
                UPSERT,
            ),
            (
                "DELETE",
                "upload/resumable/abc",
                TusDelete("abc".into()),
                &[],
            ),
        ];
        for (m, path, want, ops) in table {
            let got = p(m, path).unwrap_or_else(|e| panic!("{m} {path}: {e:?}"));
            assert_eq!(got, want, "{m} {path}");
            assert_eq!(got.row_ops(false), ops, "{m} {path}");
            // x-upsert only widens what creates (an upload, a signed upload URL, a copy).
            let creates = matches!(
                got,
                Upload { update: false, .. } | SignUpload(_) | TusCreate | CopyObject
            );
            let want = if creates { UPSERT } else { ops };
            assert_eq!(got.row_ops(true), want, "{m} {path} with x-upsert");
        }
    }

    #[tokio::test]
    async fn undeclared_writes_are_refused_inside_a_request_only() {
        let reads = with_declared(&[RowOp::Select], async {
            (
                check_declared(RowOp::Delete),
                check_declared_insert(false),
                check_declared(RowOp::Select),
            )
        })
        .await;
        assert!(matches!(reads.0, Err(StorageError::Internal(_))));
        assert!(matches!(reads.1, Err(StorageError::Internal(_))));
        assert!(reads.2.is_ok());
        let create = with_declared(&[RowOp::Insert], async {
            (check_declared_insert(false), check_declared_insert(true))
        })
        .await;
        assert!(create.0.is_ok());
        assert!(matches!(create.1, Err(StorageError::Internal(_))));
        assert!(with_declared(UPSERT, async { check_declared_insert(true) })
            .await
            .is_ok());
        // The server's own work (no request, nothing declared) is not limited.
        assert!(check_declared(RowOp::Delete).is_ok());
    }

    #[test]
    fn unknown_routes_are_404() {
        for (m, path) in [
            ("PATCH", "bucket"),
            ("POST", "bucket/x"),
            ("GET", "bucket/x/y"),
            ("GET", "nope"),
            ("GET", "object"),
            ("GET", "object/b"),
            ("PATCH", "object/b/x"),
            ("POST", "render/image/public/b/x"),
            ("GET", "render/image/other/b/x"),
            ("GET", "upload/resumable"),
            ("DELETE", "object/upload/sign/b/x"),
        ] {
            match p(m, path) {
                Err(StorageError::RouteNotFound(_)) => {}
                other => panic!("{m} {path}: {other:?}"),
            }
        }
    }

    #[test]
    fn traversal_and_bad_keys_are_invalid_key() {
        for path in [
            "object/b/../etc/passwd",
            "object/b/a/../../x",
            "object/b/%2e%2e/x",
            "object/b/%2E%2E%2Fx",
            "object/b/.",
            "object/b//abs",
            "object/b/%2Fabs",
            "object/b/a%00b",
            "object/b/a//b",
            "object/b/%ff",
            "object/b/caf%C3%A9",
        ] {
            match p("GET", path) {
                Err(StorageError::InvalidKey(_)) => {}
                other => panic!("{path}: {other:?}"),
            }
        }
        let long = format!("object/b/{}", "a".repeat(MAX_KEY_BYTES + 1));
        assert!(matches!(p("POST", &long), Err(StorageError::InvalidKey(_))));
        let ok = format!("object/b/{}", "a".repeat(MAX_KEY_BYTES));
        assert!(p("POST", &ok).is_ok());
        for path in [
            "object/%2e%2e/x",
            "object/a%2Fb/x",
            "bucket/..",
            "bucket/%00",
        ] {
            match p("GET", path) {
                Err(StorageError::InvalidBucketName(_)) => {}
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn folder_placeholders_keep_their_trailing_slash() {
        assert!(validate_key("folder/.emptyFolderPlaceholder").is_ok());
        assert!(validate_key("a/b/").is_ok());
        assert!(validate_key("/a").is_err());
        assert!(validate_key("").is_err());
    }
}
