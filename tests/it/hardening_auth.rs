//! Hardening against a hostile client: sign-in brute force (the Supabase CLI's per-IP
//! limits and a per-account limit on failed passwords), NUL bytes in REST identifiers, a
//! deleted user's still-valid token on the functions, and the API-key gate of Supabase's
//! gateway in both of its modes.

use crate::common;

use common::{TestServer, ANON_KEY, SERVICE_KEY};
use oxibase::config::{AuthRateLimits, Secret};
use serde_json::{json, Value};

/// Limits count in fixed 5-minute or one-hour windows: wait past a 5-minute edge (hours
/// end on one too) when one is near, so a test's requests all fall in one window.
async fn clear_of_window_edge(t: &TestServer) {
    let left: f64 = t
        .sql("select extract(epoch from date_bin('5 minutes', now(), timestamptz '2000-01-01') + interval '5 minutes' - now())::float8")
        .await[0]
        .get(0);
    if left < 15.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(left + 0.5)).await;
    }
}

async fn post(t: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = t
        .http
        .send(
            "POST",
            &format!("{}{path}", t.url),
            &[("apikey", ANON_KEY), ("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

async fn sign_in(t: &TestServer, email: &str, password: &str) -> (u16, Value) {
    post(
        t,
        "/auth/v1/token?grant_type=password",
        json!({"email": email, "password": password}),
    )
    .await
}

fn assert_rate_limited(status: u16, v: &Value) {
    assert_eq!(status, 429, "{v}");
    // GoTrue's shape: `code` is the status (or, for API version 2024-01-01 clients, the
    // error code, which this server sends to both).
    assert!(
        v["code"] == 429 || v["code"] == "over_request_rate_limit",
        "{v}"
    );
    assert_eq!(v["error_code"], "over_request_rate_limit", "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn sign_ins_per_ip_follow_the_cli_defaults() {
    // The defaults, not the harness's generous limits.
    let t = TestServer::start_with(|c| {
        c.auth.rate_limit = AuthRateLimits::default();
        c.auth.password_hash_cost = 4;
    })
    .await;
    clear_of_window_edge(&t).await;
    // 30 sign-ins per 5 minutes from one IP (each on its own account, so the per-account
    // limit stays out of the way), then 429.
    for i in 0..30 {
        let (s, v) = sign_in(&t, &format!("nobody{i}@x.test"), "wrong-password").await;
        assert_eq!(
            (s, v["error_code"].as_str()),
            (400, Some("invalid_credentials")),
            "attempt {i}: {v}"
        );
    }
    let (s, v) = sign_in(&t, "nobody-else@x.test", "wrong-password").await;
    assert_rate_limited(s, &v);
    // Sign-ups have their own allowance of the same size (GoTrue's limiters are per
    // endpoint): 30, then 429.
    for i in 0..30 {
        let body = json!({"email": format!("new{i}@x.test"), "password": "secret-pw-1"});
        let (s, v) = post(&t, "/auth/v1/signup", body).await;
        assert_eq!(s, 200, "sign-up {i}: {v}");
    }
    let body = json!({"email": "one-more@x.test", "password": "secret-pw-1"});
    let (s, v) = post(&t, "/auth/v1/signup", body).await;
    assert_rate_limited(s, &v);
}

#[tokio::test]
async fn failed_passwords_lock_the_account_not_the_others() {
    let t = TestServer::start_with(|c| c.auth.password_hash_cost = 4).await;
    clear_of_window_edge(&t).await;
    for email in ["victim@x.test", "bystander@x.test"] {
        let (s, v) = post(
            &t,
            "/auth/v1/signup",
            json!({"email": email, "password": "right-pw-1"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    // Right passwords never count.
    for _ in 0..12 {
        assert_eq!(sign_in(&t, "victim@x.test", "right-pw-1").await.0, 200);
    }
    // Ten failures per 5 minutes (by default), then the account answers 429, even to the
    // right password and whatever the address's case.
    for i in 0..10 {
        let (s, v) = sign_in(&t, "victim@x.test", &format!("guess-{i}")).await;
        assert_eq!(s, 400, "attempt {i}: {v}");
    }
    let (s, v) = sign_in(&t, "victim@x.test", "guess-10").await;
    assert_rate_limited(s, &v);
    let (s, v) = sign_in(&t, "Victim@X.test", "right-pw-1").await;
    assert_rate_limited(s, &v);
    // Another account is not locked; an address nobody has is counted all the same (a 429
    // must not tell which addresses are registered).
    assert_eq!(sign_in(&t, "bystander@x.test", "right-pw-1").await.0, 200);
    for _ in 0..10 {
        assert_eq!(sign_in(&t, "ghost@x.test", "guess").await.0, 400);
    }
    let (s, v) = sign_in(&t, "ghost@x.test", "guess").await;
    assert_rate_limited(s, &v);
}

#[tokio::test]
async fn per_account_limit_is_configurable() {
    let t = TestServer::start_with(|c| {
        c.auth.password_hash_cost = 4;
        c.auth.rate_limit.password_failures_per_account = Some(2);
    })
    .await;
    clear_of_window_edge(&t).await;
    for _ in 0..2 {
        assert_eq!(sign_in(&t, "someone@x.test", "guess").await.0, 400);
    }
    let (s, v) = sign_in(&t, "someone@x.test", "guess").await;
    assert_rate_limited(s, &v);
    // 0 turns it off.
    let t = TestServer::start_with(|c| {
        c.auth.password_hash_cost = 4;
        c.auth.rate_limit.password_failures_per_account = Some(0);
    })
    .await;
    for _ in 0..15 {
        assert_eq!(sign_in(&t, "someone@x.test", "guess").await.0, 400);
    }
}

#[tokio::test]
async fn per_hour_keys_still_stand_in_for_the_defaults() {
    // The auth-js runner's [auth] keys: per hour, replacing the CLI's 5-minute defaults.
    let cfg = oxibase::Config::from_toml(
        "[auth]\nrate_limit_per_hour = 1200\nrefresh_rate_limit_per_hour = 3600\nemail_rate_limit_per_hour = 100\npassword_hash_cost = 4\n",
    )
    .unwrap();
    let t = TestServer::start_with(|c| {
        c.auth = cfg.auth.clone();
        c.auth.rate_limit.password_failures_per_account = Some(0);
    })
    .await;
    for i in 0..40 {
        let (s, v) = sign_in(&t, &format!("n{i}@x.test"), "wrong").await;
        assert_eq!(s, 400, "attempt {i}: {v}");
    }
    let rows = t
        .sql("select sum(hits)::int from auth.oxibase_rate_limits where key like 'ip:signin:%'")
        .await;
    assert_eq!(rows[0].get::<_, i32>(0), 40);
    // Nothing else was counted for them.
    let rows = t
        .sql("select count(*) from auth.oxibase_rate_limits where key like 'rl:%'")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 0);
    // And both kinds parse side by side.
    oxibase::Config::from_toml(
        "[auth]\nrate_limit_per_hour = 6\n[auth.rate_limit]\nsign_in_sign_ups = 30\ntoken_refresh = 150\ntoken_verifications = 30\nanonymous_users = 30\nemail_sent = 2\nsms_sent = 30\nweb3 = 30\npassword_failures_per_account = 10\n",
    )
    .unwrap();
}

#[tokio::test]
async fn anonymous_sign_ins_have_their_own_limit() {
    let t = TestServer::start_with(|c| {
        c.auth.rate_limit.anonymous_users = Some(2);
        c.auth.password_hash_cost = 4;
    })
    .await;
    clear_of_window_edge(&t).await;
    for _ in 0..2 {
        assert_eq!(post(&t, "/auth/v1/signup", json!({})).await.0, 200);
    }
    let (s, v) = post(&t, "/auth/v1/signup", json!({})).await;
    assert_rate_limited(s, &v);
    let (s, v) = post(
        &t,
        "/auth/v1/signup",
        json!({"email": "real@x.test", "password": "secret-pw-1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn emails_through_smtp_and_sms_codes_have_project_wide_hourly_limits() {
    // The mail is queued for SMTP (a port nobody listens on: delivery just retries).
    let t = TestServer::start_with(|c| {
        c.auth.smtp_url = Some(Secret("smtp://127.0.0.1:9".into()));
        c.auth.sms_to_inbox = true;
        c.auth.rate_limit.email_sent = Some(2);
        c.auth.rate_limit.sms_sent = Some(1);
    })
    .await;
    clear_of_window_edge(&t).await;
    for i in 0..2 {
        let (s, v) = post(&t, "/auth/v1/otp", json!({"email": format!("m{i}@x.test")})).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = post(&t, "/auth/v1/otp", json!({"email": "m2@x.test"})).await;
    assert_eq!(
        (s, v["error_code"].as_str()),
        (429, Some("over_email_send_rate_limit")),
        "{v}"
    );
    let (s, v) = post(&t, "/auth/v1/otp", json!({"phone": "+15550001111"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&t, "/auth/v1/otp", json!({"phone": "+15550002222"})).await;
    assert_eq!(
        (s, v["error_code"].as_str()),
        (429, Some("over_sms_send_rate_limit")),
        "{v}"
    );
}

// ------------------------------------------------------------------ NUL bytes in names

#[tokio::test]
async fn nul_bytes_in_identifiers_are_parse_errors() {
    let t = TestServer::start().await;
    let bearer = format!("Bearer {SERVICE_KEY}");
    let h = [
        ("apikey", SERVICE_KEY),
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let url = |q: &str| format!("{}/rest/v1/conversations?{q}", t.url);
    for q in [
        "select=id%00",
        "select=%22id%00%22",
        "select=id,title%00:title",
        "order=id%00",
        "order=id%00.desc",
        "id%00=eq.1",
        "%22id%00%22=eq.1",
        "or=(id%00.eq.1)",
        "title-%3E%3Ea%00=eq.1",
    ] {
        let r = t.http.get(&url(q), &h).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.json()["code"], "PGRST100", "{q}: {}", r.text());
    }
    for q in [
        "on_conflict=id%00",
        "columns=id%00",
        "columns=title,%22x%00%22",
    ] {
        let r = t
            .http
            .send("POST", &url(q), &h, json!({"title": "t"}).to_string())
            .await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.json()["code"], "PGRST100", "{q}: {}", r.text());
    }
    // The server still answers normally afterwards.
    let r = t.http.get(&url("select=id"), &h).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ------------------------------------------------------------------ deleted users

#[tokio::test]
async fn a_deleted_users_token_is_refused_by_the_functions() {
    let t = TestServer::start().await;
    let (id, token) = t.user().await;
    t.batch(&format!("delete from auth.users where id = '{id}'"))
        .await;
    // The WebSocket function: refused before the upgrade, in the functions' shape.
    let url = format!(
        "{}/functions/v1/websocket-handler?token={token}",
        t.url.replace("http://", "ws://")
    );
    let e = tokio_tungstenite::connect_async(url)
        .await
        .expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = e else {
        panic!("{e:?}")
    };
    assert_eq!(resp.status(), 401);
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    // The other functions too.
    let auth = format!("Bearer {token}");
    for (method, f, body) in [
        (
            "POST",
            "chat-completion",
            json!({"provider": "openai", "message": "hi"}),
        ),
        (
            "POST",
            "code-execution",
            json!({"language": "python", "code": "print(1)"}),
        ),
        ("GET", "file-upload", json!(null)),
    ] {
        let r = t
            .http
            .send(
                method,
                &format!("{}/functions/v1/{f}", t.url),
                &[
                    ("apikey", ANON_KEY),
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                if body.is_null() {
                    String::new()
                } else {
                    body.to_string()
                },
            )
            .await;
        assert_eq!(r.status, 401, "{f}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized", "{f}");
    }
    // A soft-deleted user is gone too (as for GoTrue).
    let (soft, soft_token) = t.user().await;
    t.batch(&format!(
        "update auth.users set deleted_at = now() where id = '{soft}'"
    ))
    .await;
    let r = t
        .http
        .get(
            &format!("{}/functions/v1/file-upload", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {soft_token}")),
            ],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // GoTrue's answer for /user.
    let r = t
        .http
        .get(
            &format!("{}/auth/v1/user", t.url),
            &[("apikey", ANON_KEY), ("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error_code"], "user_not_found");
    // No session row was attempted for a user that is gone.
    let n: i64 = t
        .sql(&format!(
            "select count(*) from public.user_sessions where user_id = '{id}'"
        ))
        .await[0]
        .get(0);
    assert_eq!(n, 0);
}

// ------------------------------------------------------------------ the API-key gate

const REAL_SECRET: &str = "a-real-production-secret-of-forty-chars-xyz";

fn kong_401(r: &common::reqwest_like::Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(v["message"], "No API key found in request", "{what}: {v}");
    assert_eq!(
        v["hint"], "No `apikey` request header or url param was found.",
        "{what}: {v}"
    );
}

#[tokio::test]
async fn a_real_secret_requires_an_api_key() {
    let t = TestServer::start_with(|c| c.jwt_secret = Secret(REAL_SECRET.into())).await;
    // Make a public bucket with an object and a signed URL, with the service key.
    let keys = t.server.state.keys.opaque.clone();
    let service = keys.secret.clone();
    let service_bearer = format!("Bearer {service}");
    let sh = [
        ("apikey", service.as_str()),
        ("authorization", service_bearer.as_str()),
    ];
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/bucket", t.url),
            &[sh[0], sh[1], ("content-type", "application/json")],
            json!({"id": "pub", "name": "pub", "public": true}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/pub/a.txt", t.url),
            &[sh[0], sh[1], ("content-type", "text/plain")],
            "hello",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/sign/pub/a.txt", t.url),
            &[sh[0], sh[1], ("content-type", "application/json")],
            json!({"expiresIn": 60}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let signed = r.json()["signedURL"].as_str().unwrap().to_string();

    // No key at all: Kong's 401 everywhere but the open routes.
    for (method, path) in [
        ("GET", "/rest/v1/conversations"),
        ("GET", "/rest/v1/"),
        ("POST", "/rest/v1/rpc/anything"),
        ("GET", "/auth/v1/user"),
        ("GET", "/auth/v1/settings"),
        ("POST", "/auth/v1/signup"),
        ("POST", "/auth/v1/token?grant_type=password"),
        ("GET", "/storage/v1/bucket"),
        ("GET", "/storage/v1/object/pub/a.txt"),
        ("POST", "/storage/v1/object/sign/pub/a.txt"),
        ("GET", "/realtime/v1/websocket?vsn=1.0.0"),
        ("POST", "/functions/v1/chat-completion"),
        ("GET", "/functions/v1/websocket-handler"),
        ("GET", "/nope"),
    ] {
        let r = t
            .http
            .send(method, &format!("{}{path}", t.url), &[], "")
            .await;
        kong_401(&r, path);
    }
    // Open routes.
    let open = |p: &str| format!("{}{p}", t.url);
    assert_eq!(t.http.get(&open("/health"), &[]).await.status, 200);
    assert_eq!(
        t.http
            .get(&open("/auth/v1/.well-known/jwks.json"), &[])
            .await
            .status,
        200
    );
    let r = t
        .http
        .get(&open("/auth/v1/verify?type=signup&token=x"), &[])
        .await;
    assert_ne!(r.status, 401, "{}", r.text());
    let r = t
        .http
        .get(&open("/auth/v1/authorize?provider=github"), &[])
        .await;
    assert_ne!(r.status, 401, "{}", r.text());
    let r = t.http.get(&open("/auth/v1/callback"), &[]).await;
    assert_ne!(r.status, 401, "{}", r.text());
    let r = t
        .http
        .get(&open("/storage/v1/object/public/pub/a.txt"), &[])
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let r = t
        .http
        .get(&format!("{}/storage/v1{signed}", t.url), &[])
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let r = t
        .http
        .send(
            "OPTIONS",
            &open("/rest/v1/conversations"),
            &[
                ("origin", "http://localhost:3000"),
                ("access-control-request-method", "GET"),
            ],
            "",
        )
        .await;
    assert!(r.status < 300, "preflight: {}", r.status);
    // Any key or token gets through the gate (and then meets its API's own checks).
    let anon = keys.publishable.clone();
    let r = t
        .http
        .get(&open("/rest/v1/conversations"), &[("apikey", &anon)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t
        .http
        .get(&open(&format!("/rest/v1/conversations?apikey={anon}")), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t
        .http
        .get(
            &open("/rest/v1/conversations"),
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["code"], "PGRST301", "{}", r.text());
}

#[tokio::test]
async fn the_local_secret_keeps_keyless_requests_as_anon_unless_configured() {
    // The Supabase CLI's local stack: no key needed on /rest/v1 (the postgrest-js suite
    // sends none).
    let t = TestServer::start().await;
    let r = t
        .http
        .get(&format!("{}/rest/v1/conversations", t.url), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Explicitly required with the local secret...
    let t = TestServer::start_with(|c| c.require_apikey = Some(true)).await;
    let r = t
        .http
        .get(&format!("{}/rest/v1/conversations", t.url), &[])
        .await;
    kong_401(&r, "required");
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/conversations", t.url),
            &[("apikey", ANON_KEY)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // ...or turned off with a real one.
    let t = TestServer::start_with(|c| {
        c.jwt_secret = Secret(REAL_SECRET.into());
        c.require_apikey = Some(false);
    })
    .await;
    let r = t
        .http
        .get(&format!("{}/rest/v1/conversations", t.url), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A database value of another type than the server reads (an access token hook that
/// returns text instead of jsonb): the sign-in is answered 500 in GoTrue's shape and the
/// server goes on serving (reading the value used to panic the request's task).
#[tokio::test]
async fn unreadable_database_value_is_a_500_not_a_panic() {
    let t = TestServer::start_with(|c| {
        c.auth.custom_access_token_hook = "pg-functions://postgres/public/text_hook".into();
    })
    .await;
    t.batch(
        "create function public.text_hook(event jsonb) returns text language sql as $$ select 'x' $$;
         grant usage on schema public to supabase_auth_admin;
         grant execute on function public.text_hook(jsonb) to supabase_auth_admin;",
    )
    .await;
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/auth/v1/admin/users", t.url),
            &[
                ("apikey", SERVICE_KEY),
                ("authorization", &format!("Bearer {SERVICE_KEY}")),
                ("content-type", "application/json"),
            ],
            json!({"email": "typed@example.com", "password": "hunter22", "email_confirm": true})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (s, v) = sign_in(&t, "typed@example.com", "hunter22").await;
    assert_eq!(
        (s, v["error_code"].as_str()),
        (500, Some("unexpected_failure")),
        "{v}"
    );
    let r = t
        .http
        .get(
            &format!("{}/auth/v1/health", t.url),
            &[("apikey", ANON_KEY)],
        )
        .await;
    assert_eq!(r.status, 200);
}
