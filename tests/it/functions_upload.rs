//! The functions gateway and file-upload seen from the outside: status codes and error shape,
//! what lands in storage.objects / file_uploads / api_usage, and that refused or failed
//! uploads leave nothing behind.

use crate::common;

use common::{files_under, TestServer, ANON_KEY, SERVICE_KEY};
use serde_json::Value;

const BOUNDARY: &str = "----oxibase-test-boundary";
const MAX: usize = 10 * 1024 * 1024;

/// A multipart body: text fields, then the file.
fn form(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, ct, bytes)) = file {
        b.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{name}\"\r\ncontent-type: {ct}\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(bytes);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

async fn call(
    t: &TestServer,
    method: &str,
    query: &str,
    token: &str,
    body: Vec<u8>,
) -> common::reqwest_like::Response {
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let auth = format!("Bearer {token}");
    let mut headers = vec![("apikey", ANON_KEY), ("authorization", auth.as_str())];
    if method == "POST" {
        headers.push(("content-type", ct.as_str()));
    }
    t.http
        .send(
            method,
            &format!("{}/functions/v1/file-upload{query}", t.url),
            &headers,
            body,
        )
        .await
}

async fn upload(
    t: &TestServer,
    token: &str,
    fields: &[(&str, &str)],
    name: &str,
    ct: &str,
    bytes: &[u8],
) -> common::reqwest_like::Response {
    call(t, "POST", "", token, form(fields, Some((name, ct, bytes)))).await
}

fn assert_error(r: &common::reqwest_like::Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

async fn count(t: &TestServer, sql: &str) -> i64 {
    t.sql(sql).await[0].get(0)
}

async fn nothing_stored(t: &TestServer) {
    // Bytes of removed objects are deleted in the background.
    let objects = t.path().join("storage").join("objects");
    common::eventually("no stored bytes", || async {
        files_under(&objects).is_empty()
    })
    .await;
    assert_eq!(count(t, "select count(*) from storage.objects").await, 0);
    assert_eq!(
        count(t, "select count(*) from public.file_uploads").await,
        0
    );
    assert!(files_under(&t.path().join("storage").join("objects")).is_empty());
}

/// The signed URL's path below the server (the test server's configured port is 0).
fn local(t: &TestServer, signed: &str) -> String {
    let i = signed.find("/storage/v1/").expect("a storage URL");
    format!("{}{}", t.url, &signed[i..])
}

#[tokio::test]
async fn upload_list_and_delete() {
    let t = TestServer::start().await;
    let (uid, token) = t.user().await;
    let conv: uuid::Uuid = t
        .sql(&format!(
            "insert into public.conversations (user_id, title) values ('{uid}', 'c') returning id"
        ))
        .await[0]
        .get(0);
    let text = "# Notes\n\nsome text é\n";
    let r = upload(
        &t,
        &token,
        &[("conversation_id", &conv.to_string())],
        "../My Notes.md",
        "text/markdown",
        text.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json();
    assert_eq!(up["bucket"], "chat-files");
    assert_eq!(up["name"], "My Notes.md");
    assert_eq!(up["mime_type"], "text/markdown");
    assert_eq!(up["size_bytes"], text.len() as u64);
    assert_eq!(up["conversation_id"], conv.to_string());
    assert!(up["created_at"].as_str().is_some());
    let path = up["path"].as_str().unwrap().to_string();
    let (folder, file) = path.split_once('/').unwrap();
    assert_eq!(folder, uid);
    assert!(file.ends_with("-My_Notes.md"), "{path}");
    uuid::Uuid::parse_str(&file[..36]).expect("a uuid prefix");
    // The object row is written as /storage/v1 writes it, owned by the caller.
    let rows = t
        .sql(&format!(
            "select owner_id, metadata->>'mimetype', (metadata->>'size')::bigint from storage.objects \
             where bucket_id = 'chat-files' and name = '{path}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), uid);
    assert_eq!(rows[0].get::<_, String>(1), "text/markdown");
    assert_eq!(rows[0].get::<_, i64>(2), text.len() as i64);
    // The signed URL serves the bytes without other credentials.
    let signed = up["signed_url"].as_str().unwrap();
    assert!(
        signed.contains("/storage/v1/object/sign/chat-files/"),
        "{signed}"
    );
    let got = t.http.get(&local(&t, signed), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), text);
    // The storage API sees the same object for the caller.
    let via_storage = t
        .http
        .get(
            &format!("{}/storage/v1/object/chat-files/{path}", t.url),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(via_storage.text(), text);

    // A second upload without conversation; lists are newest first.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRrest-of-image";
    let r2 = upload(&t, &token, &[], "pic.png", "image/png", png).await;
    assert_eq!(r2.status, 201, "{}", r2.text());
    assert_eq!(r2.json()["mime_type"], "image/png");
    assert_eq!(r2.json()["conversation_id"], Value::Null);
    let all = call(&t, "GET", "", &token, vec![]).await;
    assert_eq!(all.status, 200);
    let all = all.json();
    let ids: Vec<&Value> = all.as_array().unwrap().iter().map(|v| &v["id"]).collect();
    assert_eq!(ids, vec![&r2.json()["id"], &up["id"]]);
    assert!(all[0]["signed_url"].as_str().is_some());
    let in_conv = call(
        &t,
        "GET",
        &format!("?conversation_id={conv}"),
        &token,
        vec![],
    )
    .await;
    assert_eq!(in_conv.json().as_array().unwrap().len(), 1);
    assert_eq!(in_conv.json()[0]["id"], up["id"]);
    assert_error(
        &call(&t, "GET", "?conversation_id=nope", &token, vec![]).await,
        400,
        "invalid_request",
    );

    // DELETE removes the row and the object together.
    let id = up["id"].as_str().unwrap();
    let d = call(&t, "DELETE", &format!("?id={id}"), &token, vec![]).await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(
        count(
            &t,
            &format!("select count(*) from storage.objects where name = '{path}'")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &t,
            &format!("select count(*) from public.file_uploads where id = '{id}'")
        )
        .await,
        0
    );
    assert_error(
        &call(&t, "DELETE", &format!("?id={id}"), &token, vec![]).await,
        404,
        "not_found",
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        files_under(&t.path().join("storage").join("objects")).len(),
        1
    );
}

#[tokio::test]
async fn oversized_files_get_413_and_leave_nothing() {
    let t = TestServer::start().await;
    let (_, token) = t.user().await;
    // Exactly the limit is accepted.
    let ok = upload(&t, &token, &[], "max.txt", "text/plain", &vec![b'a'; MAX]).await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    assert_eq!(ok.json()["size_bytes"], MAX as u64);
    t.batch("delete from storage.objects; delete from public.file_uploads")
        .await;
    // One byte over: refused while streaming (the declared length is within the slack).
    let r = upload(
        &t,
        &token,
        &[],
        "big.txt",
        "text/plain",
        &vec![b'a'; MAX + 1],
    )
    .await;
    assert_error(&r, 413, "payload_too_large");
    // Far over: refused from Content-Length before reading the form.
    let r = upload(
        &t,
        &token,
        &[],
        "huge.txt",
        "text/plain",
        &vec![b'a'; MAX + 1_000_000],
    )
    .await;
    assert_error(&r, 413, "payload_too_large");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count(&t, "select count(*) from storage.objects").await, 0);
    assert_eq!(
        count(&t, "select count(*) from public.file_uploads").await,
        0
    );
    // Only the accepted file's bytes (its row was deleted directly, so they are orphans
    // for the sweeper); no bytes of the refused ones.
    assert_eq!(
        files_under(&t.path().join("storage").join("objects")).len(),
        1
    );
}

#[tokio::test]
async fn content_must_match_the_type() {
    let t = TestServer::start().await;
    let (_, token) = t.user().await;
    // A PNG name with text bytes.
    let r = upload(
        &t,
        &token,
        &[],
        "cat.png",
        "image/png",
        b"just some text, honest",
    )
    .await;
    assert_error(&r, 415, "unsupported_media_type");
    // A text name with binary bytes late in the stream (past the sniffed head).
    let mut late = vec![b'a'; 200_000];
    late.extend_from_slice(&[0xFF, 0xFE, 0x00]);
    let r = upload(&t, &token, &[], "notes.txt", "text/plain", &late).await;
    assert_error(&r, 415, "unsupported_media_type");
    // A character cut off at the very end.
    let r = upload(&t, &token, &[], "cut.md", "text/markdown", b"abc\xE2\x82").await;
    assert_error(&r, 415, "unsupported_media_type");
    // Not on the allow-list at all.
    let r = upload(
        &t,
        &token,
        &[],
        "tool.exe",
        "application/octet-stream",
        b"MZ\x90\0",
    )
    .await;
    assert_error(&r, 415, "unsupported_media_type");
    // Not multipart.
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/functions/v1/file-upload", t.url),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_error(&r, 415, "unsupported_media_type");
    // No file field.
    let r = call(&t, "POST", "", &token, form(&[("x", "y")], None)).await;
    assert_error(&r, 400, "invalid_request");
    nothing_stored(&t).await;
}

#[tokio::test]
async fn a_failed_row_insert_removes_the_object() {
    let t = TestServer::start().await;
    let (_, token) = t.user().await;
    let (other, _) = t.user().await;
    let foreign: uuid::Uuid = t
        .sql(&format!(
            "insert into public.conversations (user_id) values ('{other}') returning id"
        ))
        .await[0]
        .get(0);
    // Another user's conversation (the field after the file, so the bytes are already stored).
    let mut body = form(&[], Some(("a.txt", "text/plain", b"hello")));
    let tail = format!(
        "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"conversation_id\"\r\n\r\n{foreign}\r\n--{BOUNDARY}--\r\n"
    );
    body.truncate(body.len() - format!("--{BOUNDARY}--\r\n").len());
    body.extend_from_slice(tail.as_bytes());
    let r = call(&t, "POST", "", &token, body).await;
    assert_error(&r, 404, "not_found");
    // A malformed conversation id.
    let r = upload(
        &t,
        &token,
        &[("conversation_id", "x")],
        "a.txt",
        "text/plain",
        b"hi",
    )
    .await;
    assert_error(&r, 400, "invalid_request");
    nothing_stored(&t).await;
}

#[tokio::test]
async fn gateway_auth_unknown_functions_and_usage() {
    let t = TestServer::start().await;
    let (uid, token) = t.user().await;
    let body = || form(&[], Some(("a.txt", "text/plain", b"hi")));
    // anon key only, and the service key (no user): 401.
    assert_error(
        &call(&t, "POST", "", ANON_KEY, body()).await,
        401,
        "unauthorized",
    );
    assert_error(
        &call(&t, "POST", "", SERVICE_KEY, body()).await,
        401,
        "unauthorized",
    );
    assert_error(
        &call(&t, "POST", "", "not-a-jwt", body()).await,
        401,
        "unauthorized",
    );
    let r = t
        .http
        .send(
            "GET",
            &format!("{}/functions/v1/file-upload", t.url),
            &[],
            "",
        )
        .await;
    assert_error(&r, 401, "unauthorized");
    // Unknown function.
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/functions/v1/no-such-fn", t.url),
            &[("authorization", &format!("Bearer {token}"))],
            "{}",
        )
        .await;
    assert_error(&r, 404, "not_found");
    // The other three behind auth: chat-completion and code-execution refuse an empty body,
    // websocket-handler answers GET upgrades only.
    for (f, status, code) in [
        ("chat-completion", 400, "invalid_request"),
        ("code-execution", 400, "invalid_request"),
        ("websocket-handler", 405, "method_not_allowed"),
    ] {
        let url = format!("{}/functions/v1/{f}", t.url);
        let r = t
            .http
            .send("POST", &url, &[("apikey", ANON_KEY)], "{}")
            .await;
        assert_error(&r, 401, "unauthorized");
        let r = t
            .http
            .send(
                "POST",
                &url,
                &[("authorization", &format!("Bearer {token}"))],
                "{}",
            )
            .await;
        assert_error(&r, status, code);
    }
    // websocket-handler takes the token from the query too.
    let r = t
        .http
        .get(
            &format!("{}/functions/v1/websocket-handler?token={token}", t.url),
            &[],
        )
        .await;
    assert_error(&r, 426, "upgrade_required");
    // Wrong method.
    assert_error(
        &call(&t, "PUT", "", &token, vec![]).await,
        405,
        "method_not_allowed",
    );
    // A successful upload is recorded with its user.
    assert_eq!(call(&t, "POST", "", &token, body()).await.status, 201);
    let rows = t
        .sql(
            "select endpoint, status_code, user_id::text, latency_ms from public.api_usage \
             order by id",
        )
        .await;
    let got: Vec<(String, i32, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let u = Some(uid.clone());
    assert_eq!(
        got,
        vec![
            // The 401s (no user) are logged but not recorded.
            ("chat-completion".into(), 400, u.clone()),
            ("code-execution".into(), 400, u.clone()),
            ("websocket-handler".into(), 405, u.clone()),
            ("websocket-handler".into(), 426, u.clone()),
            ("file-upload".into(), 405, u.clone()),
            ("file-upload".into(), 201, u.clone()),
        ]
    );
    assert!(rows.iter().all(|r| r.get::<_, i32>(3) >= 0));
    // Users read only their own usage rows (RLS), through REST.
    let (_, other_token) = t.user().await;
    let mine = t
        .http
        .get(
            &format!("{}/rest/v1/api_usage?select=endpoint", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .await;
    assert_eq!(mine.json().as_array().unwrap().len(), 6);
    let theirs = t
        .http
        .get(
            &format!("{}/rest/v1/api_usage?select=endpoint", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {other_token}")),
            ],
        )
        .await;
    assert_eq!(theirs.json(), serde_json::json!([]));
}

#[tokio::test]
async fn another_user_cannot_list_or_delete() {
    let t = TestServer::start().await;
    let (a_id, a) = t.user().await;
    let (b_id, b) = t.user().await;
    let up = upload(&t, &a, &[], "secret.csv", "text/csv", b"x,y\n1,2\n").await;
    assert_eq!(up.status, 201, "{}", up.text());
    let id = up.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        call(&t, "GET", "", &b, vec![]).await.json(),
        serde_json::json!([])
    );
    assert_error(
        &call(&t, "DELETE", &format!("?id={id}"), &b, vec![]).await,
        404,
        "not_found",
    );
    // A row B forges pointing at an object of A's (stored through /storage/v1) gets no
    // signed URL, and deleting it deletes nothing of A's.
    let path = format!("{a_id}/direct.txt");
    let direct = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/chat-files/{path}", t.url),
            &[
                ("authorization", &format!("Bearer {a}")),
                ("content-type", "text/plain"),
            ],
            "direct",
        )
        .await;
    assert_eq!(direct.status, 200, "{}", direct.text());
    let forged = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/file_uploads", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {b}")),
                ("content-type", "application/json"),
                ("prefer", "return=representation"),
            ],
            serde_json::json!({"bucket": "chat-files", "path": path, "name": "x"}).to_string(),
        )
        .await;
    // The policy keeps B's rows in B's folder (the same refusal for any path outside it)...
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert_eq!(forged.json()["code"], "42501");
    // ...and a row recorded before that policy existed is still harmless.
    t.batch(&format!(
        "insert into public.file_uploads (user_id, bucket, path, name) \
         values ('{b_id}', 'chat-files', '{path}', 'x')"
    ))
    .await;
    let listed = call(&t, "GET", "", &b, vec![]).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["signed_url"], Value::Null);
    let fid = listed[0]["id"].as_str().unwrap();
    let d = call(&t, "DELETE", &format!("?id={fid}"), &b, vec![]).await;
    assert_eq!(d.status, 200);
    assert_eq!(
        count(
            &t,
            &format!("select count(*) from storage.objects where name = '{path}'")
        )
        .await,
        1
    );
    // A still sees and deletes its own.
    assert_eq!(
        call(&t, "GET", "", &a, vec![])
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(&t, "DELETE", &format!("?id={id}"), &a, vec![])
            .await
            .status,
        200
    );
    assert_eq!(
        count(&t, "select count(*) from public.file_uploads").await,
        0
    );
    assert_eq!(count(&t, "select count(*) from storage.objects").await, 1);
}

/// A refused oversized upload lets the client send its whole body and read the 413 (closing
/// a socket with unread data would reset the connection and lose the answer).
#[tokio::test]
async fn oversized_upload_is_answered_without_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestServer::start().await;
    let (_, token) = t.user().await;
    let addr = t.url.trim_start_matches("http://").to_string();
    // Declared over the limit (refused up front) and within the slack (refused while streaming).
    for size in [MAX + (4 << 20), MAX + 1000] {
        let body = form(&[], Some(("big.txt", "text/plain", &vec![b'a'; size])));
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /functions/v1/file-upload HTTP/1.1\r\nhost: {addr}\r\n\
             authorization: Bearer {token}\r\n\
             content-type: multipart/form-data; boundary={BOUNDARY}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for chunk in body.chunks(64 << 10) {
            s.write_all(chunk)
                .await
                .expect("the server reads the rest of a refused body");
        }
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.expect("no reset");
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains(r#""code":"payload_too_large""#), "{text}");
    }
    nothing_stored(&t).await;
}
