//! The built-in dashboard at `/_/`: who gets in (loopback with the local secret, else a
//! password; proxied requests never count as loopback), CSRF on every change, the security
//! headers, rate-limited sign-in, and user-controlled values rendered as text.
use crate::common;

use common::{Client, TestServer, SERVICE_KEY};

/// A browser-like session: its cookie and its CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

pub fn cookie_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// The `content` of `<meta name="csrf-token">`.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf-token\" content=\"")
        .expect("csrf meta")
        + 27;
    html[at..].split('"').next().unwrap().to_string()
}

/// Opens the dashboard as a loopback client (no password: default secret).
pub async fn open_session(s: &TestServer) -> Session {
    let r = s.http.get(&format!("{}/_/", s.url), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sc = r.header("set-cookie").expect("session cookie").to_string();
    Session {
        cookie: cookie_of(&sc),
        csrf: csrf_of(&r.text()),
    }
}

pub async fn page(s: &TestServer, sess: &Session, path: &str) -> common::reqwest_like::Response {
    s.http
        .get(&format!("{}/_/{path}", s.url), &[("cookie", &sess.cookie)])
        .await
}

pub async fn post_form(
    http: &Client,
    url: &str,
    cookie: &str,
    body: &str,
) -> common::reqwest_like::Response {
    http.send(
        "POST",
        url,
        &[
            ("cookie", cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn loopback_with_local_secret_opens_with_secure_headers_and_csrf() {
    let s = TestServer::start().await;
    let r = s.http.get(&format!("{}/_/", s.url), &[]).await;
    assert_eq!(r.status, 200);
    let sc = r.header("set-cookie").unwrap();
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Strict"),
        "{sc}"
    );
    assert!(!sc.contains("Secure"), "plain HTTP: {sc}");
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(!r.text().contains("<script>"), "no inline script");
    let sess = Session {
        cookie: cookie_of(sc),
        csrf: csrf_of(&r.text()),
    };
    // Behind a TLS proxy the cookie is Secure (but such a request is not loopback).
    let r = s
        .http
        .get(
            &format!("{}/_/", s.url),
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "proxied: not loopback, no password set");
    assert!(r.text().contains("needs a password"));

    // DNS rebinding: another site's name pointed at 127.0.0.1 is not "local".
    let r = s
        .http
        .get(&format!("{}/_/", s.url), &[("host", "rebind.evil.example")])
        .await;
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());
    // A change from a page of another origin is refused, token or not.
    let r = s
        .http
        .send(
            "POST",
            &format!("{}/_/api/sql", s.url),
            &[
                ("cookie", &sess.cookie),
                ("content-type", "application/json"),
                ("x-csrf-token", &sess.csrf),
                ("origin", "http://evil.example"),
            ],
            r#"{"sql":"select 1"}"#,
        )
        .await;
    assert_eq!(r.status, 403);

    // A change without its CSRF token is refused; with it, it runs.
    let sql_url = format!("{}/_/api/sql", s.url);
    let body = r#"{"sql":"create table public.dash_t (x int)"}"#;
    let json_h = ("content-type", "application/json");
    let run_sql = async |body: &str| {
        let h = [
            ("cookie", sess.cookie.as_str()),
            json_h,
            ("x-csrf-token", sess.csrf.as_str()),
        ];
        s.http.send("POST", &sql_url, &h, body.to_string()).await
    };
    let r = s
        .http
        .send("POST", &sql_url, &[("cookie", &sess.cookie), json_h], body)
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .http
        .send(
            "POST",
            &sql_url,
            &[("cookie", &sess.cookie), json_h, ("x-csrf-token", "wrong")],
            body,
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(s
        .sql("select 1 from pg_tables where tablename = 'dash_t'")
        .await
        .is_empty());
    let r = run_sql(body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.sql("select 1 from pg_tables where tablename = 'dash_t'")
            .await
            .len(),
        1
    );
    // A query's rows; an error's position.
    let r = run_sql(r#"{"sql":"select 1 as a, null::text as b"}"#).await;
    let j = r.json();
    assert_eq!(j["results"][0]["columns"], serde_json::json!(["a", "b"]));
    assert_eq!(j["results"][0]["rows"], serde_json::json!([["1", null]]));
    let r = run_sql("{\"sql\":\"select 1;\\nselec 2\"}").await;
    let j = r.json();
    assert_eq!(j["error"]["code"], "42601", "{j}");
    assert_eq!(
        (j["error"]["line"].as_u64(), j["error"]["column"].as_u64()),
        (Some(2), Some(1))
    );
    // A form change without the token is refused too.
    let r = post_form(&s.http, &format!("{}/_/signout", s.url), &sess.cookie, "").await;
    assert_eq!(r.status, 403);
    // The keys need the token even to be read.
    assert_eq!(page(&s, &sess, "api/keys").await.status, 403);
    let r = s
        .http
        .get(
            &format!("{}/_/api/keys", s.url),
            &[("cookie", &sess.cookie), ("x-csrf-token", &sess.csrf)],
        )
        .await;
    assert_eq!(r.json()["service_role"], SERVICE_KEY);
    s.server.shutdown().await;
}

#[tokio::test]
async fn off_loopback_needs_the_password_and_wrong_ones_are_rate_limited() {
    let s = TestServer::start_with(|c| {
        c.dashboard.trust_loopback = false;
        c.dashboard.password = Some(oxibase::config::Secret("correct horse".into()));
    })
    .await;
    let base = format!("{}/_/", s.url);
    let r = s.http.get(&base, &[]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/_/signin"));
    for p in ["api/keys", "tables", "users", "sql"] {
        let r = s.http.get(&format!("{base}{p}"), &[]).await;
        assert!(r.status == 303 || r.status == 401, "{p}: {}", r.status);
        assert!(!r.text().contains("service_role"), "{p}");
    }
    let r = s
        .http
        .send(
            "POST",
            &format!("{base}api/sql"),
            &[("content-type", "application/json")],
            r#"{"sql":"select 1"}"#,
        )
        .await;
    assert_eq!(r.status, 401);

    // The sign-in form: a pre-session token in cookie and form.
    let sign_in = async |pw: &str| {
        let r = s.http.get(&format!("{base}signin"), &[]).await;
        assert_eq!(r.status, 200);
        let pre_cookie = cookie_of(r.header("set-cookie").unwrap());
        let html = r.text();
        let at = html.find("name=\"_pre\" value=\"").unwrap() + 19;
        let pre = html[at..].split('"').next().unwrap().to_string();
        let body = format!("_pre={pre}&password={}", pw.replace(' ', "+"));
        post_form(&s.http, &format!("{base}signin"), &pre_cookie, &body).await
    };
    // Behind TLS (X-Forwarded-Proto: https) the cookies are Secure.
    let r = s
        .http
        .get(&format!("{base}signin"), &[("x-forwarded-proto", "https")])
        .await;
    let c = r.header("set-cookie").unwrap();
    assert!(
        c.contains("; Secure") && c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    // Without the pre-session token: refused.
    let r = post_form(
        &s.http,
        &format!("{base}signin"),
        "",
        "password=correct+horse",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = sign_in("correct horse").await;
    assert_eq!(r.status, 303, "{}", r.text());
    let sess_cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("oxibase_dash="))
        .map(cookie_of)
        .unwrap();
    let r = s.http.get(&base, &[("cookie", &sess_cookie)]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Overview"));

    for _ in 0..5 {
        let r = sign_in("wrong").await;
        assert_eq!(r.status, 401);
        assert!(r.text().contains("Wrong password"));
    }
    let r = sign_in("wrong").await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // Blocked: even the right password waits.
    assert_eq!(sign_in("correct horse").await.status, 429);
    s.server.shutdown().await;
}

/// Behind a trusted proxy (`[auth] trust_forwarded_for`) failed sign-ins count per forwarded
/// client, as auth's limits do: one client's failures do not lock out the others.
#[tokio::test]
async fn behind_a_trusted_proxy_failures_count_per_client() {
    let s = TestServer::start_with(|c| {
        c.dashboard.password = Some(oxibase::config::Secret("correct horse".into()));
        c.auth.trust_forwarded_for = true;
    })
    .await;
    let base = format!("{}/_/", s.url);
    let sign_in = async |client: &str, pw: &str| {
        let fwd = [("x-forwarded-for", client)];
        let r = s.http.get(&format!("{base}signin"), &fwd).await;
        assert_eq!(r.status, 200);
        let pre_cookie = cookie_of(r.header("set-cookie").unwrap());
        let html = r.text();
        let at = html.find("name=\"_pre\" value=\"").unwrap() + 19;
        let pre = html[at..].split('"').next().unwrap().to_string();
        let body = format!("_pre={pre}&password={}", pw.replace(' ', "+"));
        s.http
            .send(
                "POST",
                &format!("{base}signin"),
                &[
                    ("cookie", pre_cookie.as_str()),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("x-forwarded-for", client),
                ],
                body,
            )
            .await
    };
    for _ in 0..5 {
        assert_eq!(sign_in("203.0.113.1", "wrong").await.status, 401);
    }
    assert_eq!(sign_in("203.0.113.1", "wrong").await.status, 429);
    let other = sign_in("203.0.113.2", "correct horse").await;
    assert_eq!(other.status, 303, "{}", other.text());
    s.server.shutdown().await;
}

const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "<img src=x onerror=alert(1)>";

/// No payload appears as markup; each appears escaped.
fn assert_escaped(html: &str, what: &str) {
    for raw in [SCRIPT, IMG, "<script>alert", "<img src=x"] {
        assert!(!html.contains(raw), "{what}: raw {raw} in the page");
    }
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
            || html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{what}: payload not shown escaped"
    );
}

/// POST a form to a dashboard page with the session's cookie and CSRF token.
pub async fn post_csrf(
    s: &TestServer,
    sess: &Session,
    path: &str,
    pairs: &[(&str, &str)],
) -> common::reqwest_like::Response {
    let mut p = vec![("_csrf", sess.csrf.as_str())];
    p.extend_from_slice(pairs);
    post_form(
        &s.http,
        &format!("{}/_/{path}", s.url),
        &sess.cookie,
        &form_body(&p),
    )
    .await
}

pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[tokio::test]
async fn changes_go_through_and_user_values_render_as_text() {
    let s = TestServer::start().await;
    let sess = open_session(&s).await;
    let post = async |path: &str, pairs: &[(&str, &str)]| post_csrf(&s, &sess, path, pairs).await;

    // A table made and a row inserted through the table editor, a payload in a cell.
    let r = post(
        "tables/create",
        &[
            ("schema", "public"),
            ("name", "xss"),
            ("columns", "v text"),
            ("id", "1"),
            ("rls", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(
        !r.header("location").unwrap().contains("err="),
        "{:?}",
        r.header("location")
    );
    let r = post(
        "tables/row/insert",
        &[("schema", "public"), ("table", "xss"), ("c:v", SCRIPT)],
    )
    .await;
    assert!(
        r.header("location").unwrap().contains("msg="),
        "{:?}",
        r.header("location")
    );
    s.batch(&format!("insert into public.xss (v) values ('{IMG}')"))
        .await;
    let rows = s.sql("select v from public.xss order by id").await;
    assert_eq!(rows[0].get::<_, String>(0), SCRIPT);
    let r = page(&s, &sess, "tables?schema=public&table=xss").await;
    assert_eq!(r.status, 200);
    assert_escaped(&r.text(), "table cell");
    // The RLS switch and an owner-only policy.
    let rls: bool = s
        .sql("select relrowsecurity from pg_class where relname = 'xss'")
        .await[0]
        .get(0);
    assert!(rls);
    let r = post(
        "tables/policy",
        &[
            ("schema", "public"),
            ("table", "xss"),
            ("name", "owner only"),
            ("command", "SELECT"),
            ("roles", "authenticated"),
            ("using", "true"),
            ("check", ""),
        ],
    )
    .await;
    assert!(
        r.header("location").unwrap().contains("msg="),
        "{:?}",
        r.header("location")
    );
    assert_eq!(
        s.sql("select 1 from pg_policies where policyname = 'owner only'")
            .await
            .len(),
        1
    );

    // A bucket through the bucket code, a file named with a payload through the storage API.
    let r = post(
        "storage/bucket/create",
        &[("name", "pics"), ("public", "1")],
    )
    .await;
    assert!(
        r.header("location").unwrap().contains("msg="),
        "{:?}",
        r.header("location")
    );
    // The storage API refuses `<` in a key; a row written by SQL (an import) may hold one.
    let r = s
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/pics/a%26b'(1).png", s.url),
            &[
                ("authorization", &format!("Bearer {SERVICE_KEY}")),
                ("content-type", "image/png"),
            ],
            b"\x89PNG\r\n\x1a\n".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.batch(&format!(
        "insert into storage.objects (bucket_id, name, metadata) values ('pics', '{IMG}.png', '{{\"size\": 1, \"mimetype\": \"image/png\"}}')"
    ))
    .await;
    let r = page(&s, &sess, "storage?bucket=pics").await;
    assert_eq!(r.status, 200);
    assert_escaped(&r.text(), "file name");
    assert!(r.text().contains("a&amp;b'(1).png"));
    // A bucket rule goes through the same code: an over-global limit is refused.
    let r = post(
        "storage/bucket/update",
        &[("bucket", "pics"), ("file_size_limit", "999999999999")],
    )
    .await;
    assert!(
        r.header("location").unwrap().contains("err="),
        "{:?}",
        r.header("location")
    );

    // A user made through the admin API's code, with a payload in its metadata.
    let meta = serde_json::json!({"name": SCRIPT}).to_string();
    let r = post(
        "users/create",
        &[
            ("email", "ada@example.test"),
            ("password", "secret-123"),
            ("user_metadata", &meta),
            ("email_confirm", "1"),
        ],
    )
    .await;
    let loc = r.header("location").unwrap().to_string();
    assert!(loc.contains("msg=") && loc.contains("id="), "{loc}");
    let rows = s.sql("select raw_user_meta_data->>'name', email_confirmed_at is not null from auth.users where email = 'ada@example.test'").await;
    assert_eq!(rows[0].get::<_, String>(0), SCRIPT);
    assert!(rows[0].get::<_, bool>(1));
    let r = page(&s, &sess, loc.trim_start_matches("/_/")).await;
    assert_eq!(r.status, 200);
    assert_escaped(&r.text(), "user metadata");
    // The same rules as the API: a duplicate email is refused with its message.
    let r = post("users/create", &[("email", "ada@example.test")]).await;
    assert!(
        r.header("location").unwrap().contains("err="),
        "{:?}",
        r.header("location")
    );

    // The request log saw the storage upload.
    let r = page(&s, &sess, "logs?path=/storage").await;
    assert!(r.text().contains("/storage/v1/object/pics/"), "logs");
    assert!(!r.text().contains("<img src=x"), "logs escape paths");
    for p in [
        "",
        "sql",
        "realtime",
        "functions",
        "users",
        "storage",
        "tables",
    ] {
        let r = page(&s, &sess, p).await;
        assert_eq!(r.status, 200, "/_/{p}: {}", r.text());
    }
    s.server.shutdown().await;
}

#[tokio::test]
async fn disabled_dashboard_is_not_served() {
    let s = TestServer::start_with(|c| c.dashboard.enabled = false).await;
    let r = s.http.get(&format!("{}/_/", s.url), &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.header("set-cookie").is_none());
    assert!(page_text_lacks_keys(&r.text()));
    s.server.shutdown().await;
}

fn page_text_lacks_keys(t: &str) -> bool {
    !t.contains(SERVICE_KEY) && !t.contains("csrf-token")
}
