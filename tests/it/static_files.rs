//! `--static DIR`: the built site served at `/` beside the APIs: MIME types, ETag/304,
//! Cache-Control, SPA fallback, no listing, no path escape, and the APIs keep their paths.
use crate::common;

use std::path::Path;

use common::{TestServer, ANON_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INDEX: &str = "<!doctype html><title>site index</title>";
const SECRET: &str = "outside-the-root-secret";

/// A site directory with a page, hashed assets and a nested folder; beside it (outside the
/// root) a secret file and a symlink to it from inside.
fn site(base: &Path) -> std::path::PathBuf {
    let root = base.join("dist");
    std::fs::create_dir_all(root.join("assets")).unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("index.html"), INDEX).unwrap();
    std::fs::write(root.join("assets/app-AB12CD34.js"), "console.log(1)").unwrap();
    std::fs::write(root.join("assets/app-AB12CD34.css"), "body{}").unwrap();
    std::fs::write(root.join("logo.svg"), "<svg/>").unwrap();
    std::fs::write(root.join("data.json"), "{}").unwrap();
    std::fs::write(root.join("font.woff2"), [0u8, 1, 2]).unwrap();
    std::fs::write(root.join("docs/index.html"), "<p>docs</p>").unwrap();
    std::fs::write(root.join(".env"), "HIDDEN=1").unwrap();
    std::fs::write(base.join("secret.txt"), SECRET).unwrap();
    std::os::unix::fs::symlink(base.join("secret.txt"), root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(base, root.join("up")).unwrap();
    root
}

async fn start() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = site(dir.path());
    let t = TestServer::start_with(|c| {
        c.server.static_dir = Some(root);
        c.require_apikey = Some(true);
    })
    .await;
    (t, dir)
}

/// One raw HTTP/1.1 request with the path exactly as written (no client normalizes it).
async fn raw(t: &TestServer, path: &str) -> (u16, String) {
    let addr = t.url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/html\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    (status, text)
}

#[tokio::test]
async fn files_have_their_types_and_cache_rules() {
    let (t, _dir) = start().await;
    for (path, mime) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/assets/app-AB12CD34.js", "text/javascript; charset=utf-8"),
        ("/assets/app-AB12CD34.css", "text/css; charset=utf-8"),
        ("/logo.svg", "image/svg+xml"),
        ("/data.json", "application/json"),
        ("/font.woff2", "font/woff2"),
    ] {
        let r = t.http.get(&format!("{}{path}", t.url), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(mime), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
    let index = t.http.get(&format!("{}/", t.url), &[]).await;
    assert_eq!(index.text(), INDEX);
    assert_eq!(index.header("cache-control"), Some("no-cache"));
    let js = t
        .http
        .get(&format!("{}/assets/app-AB12CD34.js", t.url), &[])
        .await;
    assert_eq!(js.text(), "console.log(1)");
    assert!(js.header("cache-control").unwrap().contains("immutable"));
    let svg = t.http.get(&format!("{}/logo.svg", t.url), &[]).await;
    assert!(!svg.header("cache-control").unwrap().contains("immutable"));
    // A directory answers its own index.html, never a listing.
    let docs = t.http.get(&format!("{}/docs/", t.url), &[]).await;
    assert_eq!(docs.text(), "<p>docs</p>");
    let empty = t
        .http
        .get(&format!("{}/empty/x.js", t.url), &[("accept", "*/*")])
        .await;
    assert_eq!(empty.status, 404);
    // HEAD: the headers without the body.
    let head = t
        .http
        .send("HEAD", &format!("{}/data.json", t.url), &[], "")
        .await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("2"))
    );
    assert!(head.body.is_empty());
    let post = t.http.send("POST", &format!("{}/x", t.url), &[], "").await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn etag_answers_304() {
    let (t, _dir) = start().await;
    let url = format!("{}/assets/app-AB12CD34.js", t.url);
    let first = t.http.get(&url, &[]).await;
    let etag = first.header("etag").expect("an ETag").to_string();
    let again = t.http.get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let weak = format!("\"x\", W/{etag}");
    assert_eq!(
        t.http.get(&url, &[("if-none-match", &weak)]).await.status,
        304
    );
    let other = t.http.get(&url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text(), "console.log(1)");
}

#[tokio::test]
async fn spa_fallback_only_for_pages() {
    let (t, _dir) = start().await;
    let html = [("accept", "text/html,application/xhtml+xml")];
    let page = t
        .http
        .get(&format!("{}/chat/42/settings", t.url), &html)
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.text(), INDEX);
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    // A missing asset is a 404, not index.html served as JavaScript.
    let asset = t
        .http
        .get(&format!("{}/assets/gone.js", t.url), &html)
        .await;
    assert_eq!(asset.status, 404);
    // A client that does not accept HTML (fetch of JSON) gets the 404.
    let json = t
        .http
        .get(
            &format!("{}/chat/42", t.url),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(json.status, 404);
}

#[tokio::test]
async fn paths_never_leave_the_root() {
    let (t, _dir) = start().await;
    for path in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/secret.txt%00.html",
        "/link.txt",
        "/up/secret.txt",
        "/.env",
        "/%2eenv",
    ] {
        let (status, text) = raw(&t, path).await;
        assert!(matches!(status, 400 | 404), "{path}: {status}\n{text}");
        assert!(!text.contains(SECRET), "{path} leaked the file");
        assert!(!text.contains("HIDDEN"), "{path} leaked the dot file");
    }
}

#[tokio::test]
async fn apis_keep_their_paths_and_keys() {
    let (t, _dir) = start().await;
    let health = t.http.get(&format!("{}/health", t.url), &[]).await;
    assert_eq!(health.json()["status"], "ok");
    // An API path without a key keeps the gateway's answer (no index.html).
    let rest = t
        .http
        .get(
            &format!("{}/rest/v1/conversations", t.url),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(rest.status, 401);
    assert!(rest.text().contains("No API key"));
    let ok = t
        .http
        .get(
            &format!("{}/rest/v1/conversations", t.url),
            &[("apikey", ANON_KEY)],
        )
        .await;
    assert_eq!((ok.status, ok.text()), (200, "[]".to_string()));
    // An unknown path under an API's prefix stays a JSON 404, not the site.
    let miss = t
        .http
        .get(
            &format!("{}/auth/v2/user", t.url),
            &[("accept", "text/html"), ("apikey", ANON_KEY)],
        )
        .await;
    assert_eq!(miss.status, 404);
    assert!(!miss.text().contains("site index"));
    // The site needs no key.
    let (status, _) = raw(&t, "/").await;
    assert_eq!(status, 200);
}
