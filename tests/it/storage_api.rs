//! Storage invariants seen from the outside: what bytes are on disk after accepted,
//! rejected and overwritten uploads, the orphan sweeper, and the memory backend.

use crate::common;

use common::{files_under, TestServer, SERVICE_KEY};

/// Version UUIDs of the files under <data>/storage/objects.
fn stored_versions(t: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = files_under(&t.path().join("storage").join("objects"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

async fn row_versions(t: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = t
        .sql("select version from storage.objects where version is not null")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// Old bytes are deleted in the background right after a commit: wait until the stored
/// versions are exactly the ones the rows point at.
async fn settle(t: &TestServer) {
    common::eventually("stored bytes match the rows", || async {
        stored_versions(t) == row_versions(t).await
    })
    .await;
}

#[tokio::test]
async fn rejected_uploads_leave_no_bytes_and_overwrites_keep_one_version() {
    let t = TestServer::start().await;
    let auth = format!("Bearer {SERVICE_KEY}");
    let h = |ct: &'static str| {
        vec![
            ("authorization", auth.clone()),
            ("content-type", ct.to_string()),
        ]
    };
    let send = |m: &'static str, path: String, hs: Vec<(&'static str, String)>, body: Vec<u8>| {
        let t = &t;
        async move {
            let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            t.http
                .send(m, &format!("{}/storage/v1/{path}", t.url), &hs, body)
                .await
        }
    };
    let r = send(
        "POST",
        "bucket".into(),
        h("application/json"),
        br#"{"name":"lim","file_size_limit":1000,"allowed_mime_types":["image/*"]}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let ok = send(
        "POST",
        "object/lim/a.png".into(),
        h("image/png"),
        vec![1; 1000],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let big = send(
        "POST",
        "object/lim/b.png".into(),
        h("image/png"),
        vec![1; 1001],
    )
    .await;
    assert_eq!(big.json()["statusCode"], "413");
    let mime = send(
        "POST",
        "object/lim/c.pdf".into(),
        h("application/pdf"),
        vec![1; 10],
    )
    .await;
    assert_eq!(mime.json()["statusCode"], "415");
    let dup = send(
        "POST",
        "object/lim/a.png".into(),
        h("image/png"),
        vec![2; 10],
    )
    .await;
    assert_eq!(dup.json()["statusCode"], "409");
    // Multipart: the size is only known while streaming.
    let boundary = "XyZ";
    let mut mp = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n60\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"\"; filename=\"blob\"\r\nContent-Type: image/png\r\n\r\n").into_bytes();
    mp.extend(vec![7u8; 5000]);
    mp.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let hs = vec![("authorization", auth.clone()), ("content-type", ct)];
    let mpr = send("POST", "object/lim/d.png".into(), hs, mp).await;
    assert_eq!(mpr.json()["statusCode"], "413", "{}", mpr.text());
    // RLS refusal: a user writing into someone else's folder.
    let (_, tok) = t.user().await;
    let ua = vec![
        ("authorization", format!("Bearer {tok}")),
        ("content-type", "text/plain".to_string()),
    ];
    let denied = send(
        "POST",
        "object/chat-files/someone-else/x.txt".into(),
        ua,
        b"x".to_vec(),
    )
    .await;
    assert_eq!(denied.json()["statusCode"], "403");

    settle(&t).await;
    assert_eq!(stored_versions(&t), row_versions(&t).await);
    assert_eq!(stored_versions(&t).len(), 1);

    // Overwrites: the row always points at existing bytes, old ones go away.
    let mut hs = h("image/png");
    hs.push(("x-upsert", "true".into()));
    for i in 0..5u8 {
        let r = send("POST", "object/lim/a.png".into(), hs.clone(), vec![i; 900]).await;
        assert_eq!(r.status, 200);
    }
    settle(&t).await;
    assert_eq!(stored_versions(&t), row_versions(&t).await);
    let got = t
        .http
        .get(
            &format!("{}/storage/v1/object/lim/a.png", t.url),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(got.body.as_ref(), &[4u8; 900][..]);

    // Deleting removes the bytes.
    let del = send(
        "DELETE",
        "object/lim/a.png".into(),
        h("application/json"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(del.status, 200);
    settle(&t).await;
    assert!(stored_versions(&t).is_empty());

    // Nothing was ever written outside the storage root.
    let root = t.path().join("storage");
    for f in files_under(&t.path()) {
        assert!(
            f.starts_with(&root),
            "file outside the storage root: {}",
            f.display()
        );
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn traversal_requests_are_refused_before_any_io() {
    let t = TestServer::start().await;
    let auth = format!("Bearer {SERVICE_KEY}");
    for p in [
        "../../../etc/x",
        "a/../../b",
        "%2e%2e/%2e%2e/x",
        "/abs",
        "a%00b",
    ] {
        let r = t
            .http
            .send(
                "POST",
                &format!("{}/storage/v1/object/chat-files/{p}", t.url),
                &[("authorization", &auth), ("content-type", "text/plain")],
                "x",
            )
            .await;
        assert_eq!(r.status, 400, "{p}");
        assert_eq!(r.json()["code"], "InvalidKey", "{p}: {}", r.text());
    }
    assert!(files_under(&t.path())
        .iter()
        .all(|f| f.starts_with(t.path().join("storage"))));
    assert!(stored_versions(&t).is_empty());
    t.server.shutdown().await;
}

#[tokio::test]
async fn sweeper_removes_bytes_no_row_points_at() {
    let t = TestServer::start().await;
    let auth = format!("Bearer {SERVICE_KEY}");
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/avatars/u/live.png", t.url),
            &[("authorization", &auth), ("content-type", "image/png")],
            "live",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // As if the server died between writing bytes and committing the row.
    let store = &t.server.state.storage.store;
    let orphan = oxibase::storage::store::Store::object_key(&uuid::Uuid::new_v4().to_string());
    store
        .put_bytes(&orphan, bytes::Bytes::from_static(b"orphan"))
        .await
        .unwrap();
    assert_eq!(stored_versions(&t).len(), 2);
    // Young orphans are left alone (an upload may still be committing)...
    let n = oxibase::storage::objects::sweep_orphans(&t.server.state, chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(n, 0);
    // ...old ones go.
    let n = oxibase::storage::objects::sweep_orphans(&t.server.state, chrono::Duration::zero())
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(stored_versions(&t), row_versions(&t).await);
    t.server.shutdown().await;
}

#[tokio::test]
async fn memory_backend_serves_objects() {
    let t = TestServer::start_with(|c| c.storage.url = Some("memory://".into())).await;
    let auth = format!("Bearer {SERVICE_KEY}");
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/avatars/u/m.png", t.url),
            &[("authorization", &auth), ("content-type", "image/png")],
            "in memory",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let g = t
        .http
        .get(
            &format!("{}/storage/v1/object/public/avatars/u/m.png", t.url),
            &[],
        )
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "in memory");
    assert!(files_under(&t.path().join("storage")).is_empty());
    t.server.shutdown().await;
}

/// An upload refused before its body is read (declared size over the bucket limit) must
/// still let the client send the whole body and read the 413: closing the socket with
/// unread data resets the connection, and the client sees an error instead of the answer.
#[tokio::test]
async fn oversized_upload_gets_its_413_after_the_whole_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestServer::start().await;
    t.batch(
        "insert into storage.buckets (id, name, file_size_limit) values ('tiny', 'tiny', 1000)",
    )
    .await;
    let addr = t.url.trim_start_matches("http://").to_string();
    for round in 0..3 {
        let len = 8 << 20;
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /storage/v1/object/tiny/big{round}.bin HTTP/1.1\r\nhost: {addr}\r\n\
             authorization: Bearer {SERVICE_KEY}\r\ncontent-type: application/octet-stream\r\n\
             content-length: {len}\r\nconnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![7u8; 64 << 10];
        for _ in 0..len / chunk.len() {
            s.write_all(&chunk)
                .await
                .expect("the server reads the rest of a refused body");
        }
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.expect("no reset");
        let text = String::from_utf8_lossy(&resp);
        // As Supabase Storage: HTTP 400 carrying statusCode "413".
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains(r#""statusCode":"413""#), "{text}");
    }
    assert!(stored_versions(&t).is_empty());
}

/// Storage's declared `row_ops` are enforced: under an endpoint that declared only reads,
/// a caller transaction refuses a write even when the handler asks for a writable one.
#[tokio::test]
async fn declared_read_only_endpoints_cannot_write() {
    use oxibase::identity::AuthContext;
    use oxibase::storage::endpoint::{with_declared, RowOp};
    use oxibase::storage::{caller_tx, client};
    let t = TestServer::start().await;
    let state = &t.server.state;
    let insert = "insert into storage.buckets (id, name) values ('declared_ro', 'declared_ro')";
    let refused = with_declared(&[RowOp::Select], async {
        let mut c = client(state).await.unwrap();
        let tx = caller_tx(&mut c, &AuthContext::service(), false)
            .await
            .unwrap();
        tx.execute(insert, &[]).await
    })
    .await;
    let e = refused.expect_err("a write under a read-only declaration");
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e}");
    // The same write under a declaration that allows it goes through.
    with_declared(&[RowOp::Select, RowOp::Insert], async {
        let mut c = client(state).await.unwrap();
        let tx = caller_tx(&mut c, &AuthContext::service(), false)
            .await
            .unwrap();
        tx.execute(insert, &[]).await.unwrap();
        tx.rollback().await.unwrap();
    })
    .await;
    t.server.shutdown().await;
}
