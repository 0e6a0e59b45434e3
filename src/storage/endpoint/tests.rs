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
