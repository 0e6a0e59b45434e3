//! The built-in dashboard at `/_/`: who gets in (loopback with the local secret, else a
//! password; proxied requests never count as loopback), CSRF on every change, the security
//! headers, rate-limited sign-in, and user-controlled values rendered as text.
use crate::common;

use common::{Client, TestServer, SERVICE_KEY};

/// A browser-like session: its cookie and its CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn cookie_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// The `content` of `<meta name="csrf-token">`.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf-token\" content=\"")
        .expect("csrf meta")
        + 27;
    html[at..].split('"').next().unwrap().to_string()
}

/// Opens the dashboard as a loopback client (no password: default secret).
async fn open_session(s: &TestServer) -> Session {
    let r = s.http.get(&format!("{}/_/", s.url), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sc = r.header("set-cookie").expect("session cookie").to_string();
    Session {
        cookie: cookie_of(&sc),
        csrf: csrf_of(&r.text()),
    }
}

async fn page(s: &TestServer, sess: &Session, path: &str) -> common::reqwest_like::Response {
    s.http
        .get(&format!("{}/_/{path}", s.url), &[("cookie", &sess.cookie)])
        .await
}

async fn post_form(
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
    let r = s
        .http
        .send(
            "POST",
            &sql_url,
            &[
                ("cookie", &sess.cookie),
                json_h,
                ("x-csrf-token", &sess.csrf),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.sql("select 1 from pg_tables where tablename = 'dash_t'")
            .await
            .len(),
        1
    );
    // A query's rows; an error's position.
    let r = s
        .http
        .send(
            "POST",
            &sql_url,
            &[
                ("cookie", &sess.cookie),
                json_h,
                ("x-csrf-token", &sess.csrf),
            ],
            r#"{"sql":"select 1 as a, null::text as b"}"#,
        )
        .await;
    let j = r.json();
    assert_eq!(j["results"][0]["columns"], serde_json::json!(["a", "b"]));
    assert_eq!(j["results"][0]["rows"], serde_json::json!([["1", null]]));
    let r = s
        .http
        .send(
            "POST",
            &sql_url,
            &[
                ("cookie", &sess.cookie),
                json_h,
                ("x-csrf-token", &sess.csrf),
            ],
            "{\"sql\":\"select 1;\\nselec 2\"}",
        )
        .await;
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

fn form_body(pairs: &[(&str, &str)]) -> String {
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
    let post = async |path: &str, pairs: &[(&str, &str)]| {
        let mut p = vec![("_csrf", sess.csrf.as_str())];
        p.extend_from_slice(pairs);
        post_form(
            &s.http,
            &format!("{}/_/{path}", s.url),
            &sess.cookie,
            &form_body(&p),
        )
        .await
    };

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

/// The message of a 303 back to a page (`msg=` for success, `err=` for failure).
fn outcome(r: &common::reqwest_like::Response) -> Result<String, String> {
    let loc = r.header("location").unwrap_or("");
    let q = loc.split_once('?').map(|x| x.1).unwrap_or("");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match (get("msg"), get("err")) {
        (Some(m), _) => Ok(m),
        (_, Some(e)) => Err(e),
        _ => Err(format!("no outcome: {} {loc}", r.status)),
    }
}

#[tokio::test]
async fn rows_columns_users_and_objects_change_through_the_dashboard() {
    let s = TestServer::start().await;
    let sess = open_session(&s).await;
    let post = async |path: &str, pairs: &[(&str, &str)]| {
        let mut p = vec![("_csrf", sess.csrf.as_str())];
        p.extend_from_slice(pairs);
        post_form(
            &s.http,
            &format!("{}/_/{path}", s.url),
            &sess.cookie,
            &form_body(&p),
        )
        .await
    };
    s.batch("create table public.items (id int primary key, name text, qty int); insert into public.items values (1, 'a', 5), (2, 'b', 7), (3, 'c', 1)").await;
    let t = [("schema", "public"), ("table", "items")];
    // Filter and sort are applied by the database, with the value bound.
    let r = page(
        &s,
        &sess,
        "tables?schema=public&table=items&fcol=qty&fop=gt&fval=4&sort=qty&dir=desc",
    )
    .await;
    let html = r.text();
    assert!(html.contains("2 rows"), "filtered count");
    assert!(
        html.find(">b<").unwrap() < html.find(">a<").unwrap(),
        "sorted desc"
    );
    let r = page(
        &s,
        &sess,
        "tables?schema=public&table=items&fcol=name&fop=eq&fval=x'%20or%201=1--",
    )
    .await;
    assert!(r.text().contains("0 rows"), "a filter value is a value");
    // Edit and delete by the row's ctid.
    let ctid: String = s
        .sql("select ctid::text from public.items where id = 2")
        .await[0]
        .get(0);
    let mut upd = t.to_vec();
    upd.extend([
        ("ctid", ctid.as_str()),
        ("c:id", "2"),
        ("c:name", "bee"),
        ("c:qty", ""),
    ]);
    assert_eq!(
        outcome(&post("tables/row/update", &upd).await),
        Ok("Row saved".into())
    );
    let row = &s
        .sql("select name, qty from public.items where id = 2")
        .await[0];
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, Option<i32>>(1)),
        ("bee".into(), None)
    );
    let ctid: String = s
        .sql("select ctid::text from public.items where id = 3")
        .await[0]
        .get(0);
    let mut del = t.to_vec();
    del.push(("ctid", &ctid));
    assert!(outcome(&post("tables/row/delete", &del).await).is_ok());
    assert!(s
        .sql("select 1 from public.items where id = 3")
        .await
        .is_empty());
    // A bad value is the database's error, shown back.
    let mut bad = t.to_vec();
    bad.extend([("c:id", "9"), ("c:qty", "many")]);
    let e = outcome(&post("tables/row/insert", &bad).await).unwrap_err();
    assert!(e.contains("invalid input syntax"), "{e}");
    // A column; a type that is SQL, not a type, is refused.
    let mut col = t.to_vec();
    col.extend([
        ("name", "note"),
        ("type", "text"),
        ("default", "n/a'; drop table x"),
    ]);
    assert!(outcome(&post("tables/column", &col).await).is_ok());
    let d: String = s.sql("select column_default from information_schema.columns where table_name = 'items' and column_name = 'note'").await[0].get(0);
    assert!(d.starts_with("'n/a''; drop table x'"), "{d}");
    let mut col = t.to_vec();
    col.extend([("name", "evil"), ("type", "int; drop table public.items")]);
    assert!(outcome(&post("tables/column", &col).await).is_err());
    assert_eq!(s.sql("select 1 from public.items").await.len(), 2);
    // RLS off and on again.
    let mut rls = t.to_vec();
    rls.push(("on", "1"));
    assert!(outcome(&post("tables/rls", &rls).await).is_ok());
    assert!(s
        .sql("select relrowsecurity from pg_class where relname = 'items'")
        .await[0]
        .get::<_, bool>(0));

    // Users: invite, recovery into the local inbox, ban, delete.
    assert!(outcome(&post("users/invite", &[("email", "inv@example.test")]).await).is_ok());
    let id: String = s
        .sql("select id::text from auth.users where email = 'inv@example.test'")
        .await[0]
        .get(0);
    let r = post(
        "users/recover",
        &[("id", &id), ("email", "inv@example.test")],
    )
    .await;
    assert!(outcome(&r).is_ok(), "{:?}", outcome(&r));
    let kinds: Vec<String> = s
        .sql(
            "select kind from auth.oxibase_outbox where recipient = 'inv@example.test' order by id",
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(page(&s, &sess, "users")
        .await
        .text()
        .contains("inv@example.test"));
    assert!(outcome(&post("users/ban", &[("id", &id), ("ban", "876000h")]).await).is_ok());
    assert_eq!(
        s.sql(&format!(
            "select 1 from auth.users where id = '{id}' and banned_until > now()"
        ))
        .await
        .len(),
        1
    );
    assert!(outcome(&post("users/delete", &[("id", &id)]).await).is_ok());
    assert!(s
        .sql(&format!("select 1 from auth.users where id = '{id}'"))
        .await
        .is_empty());

    // Storage: a folder, a signed URL, a download, delete, empty and delete the bucket.
    assert!(outcome(&post("storage/bucket/create", &[("name", "docs")]).await).is_ok());
    let r = s
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/docs/reports/q1.txt", s.url),
            &[
                ("authorization", &format!("Bearer {SERVICE_KEY}")),
                ("content-type", "text/plain"),
            ],
            "quarter one",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let root = page(&s, &sess, "storage?bucket=docs").await.text();
    assert!(
        root.contains("reports") && !root.contains("q1.txt"),
        "folders first"
    );
    assert!(page(&s, &sess, "storage?bucket=docs&prefix=reports")
        .await
        .text()
        .contains("q1.txt"));
    let signed = outcome(
        &post(
            "storage/object/sign",
            &[("bucket", "docs"), ("path", "reports/q1.txt")],
        )
        .await,
    )
    .unwrap();
    let url = signed.rsplit(' ').next().unwrap();
    assert_eq!(
        s.http.get(&format!("{}{url}", s.url), &[]).await.text(),
        "quarter one"
    );
    let r = page(
        &s,
        &sess,
        "storage/download?bucket=docs&path=reports/q1.txt",
    )
    .await;
    assert_eq!(r.status, 303);
    let to = r.header("location").unwrap().to_string();
    let r = s.http.get(&format!("{}{to}", s.url), &[]).await;
    assert_eq!(r.text(), "quarter one");
    assert!(r
        .header("content-disposition")
        .unwrap_or("")
        .contains("attachment"));
    let e = outcome(&post("storage/bucket/delete", &[("bucket", "docs")]).await).unwrap_err();
    assert!(e.to_lowercase().contains("not empty"), "{e}");
    assert!(outcome(
        &post(
            "storage/object/delete",
            &[("bucket", "docs"), ("path", "reports/q1.txt")]
        )
        .await
    )
    .is_ok());
    assert!(outcome(&post("storage/bucket/empty", &[("bucket", "docs")]).await).is_ok());
    assert!(outcome(&post("storage/bucket/delete", &[("bucket", "docs")]).await).is_ok());
    assert!(s
        .sql("select 1 from storage.buckets where id = 'docs'")
        .await
        .is_empty());
    s.server.shutdown().await;
}
