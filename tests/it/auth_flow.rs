//! /auth/v1 end to end: sign-up, profile trigger, sign-in, RLS with the issued token,
//! refresh rotation, user updates, logout, anonymous users, OTP and links via the local
//! inbox, the admin API, asymmetric signing and rate limits.

use crate::common;

use common::{TestServer, ANON_KEY, SERVICE_KEY};
use serde_json::{json, Value};

struct Api<'a> {
    t: &'a TestServer,
}

/// The tokens and user id of a session the API issued.
struct Session {
    access: String,
    refresh: String,
    uid: String,
}

impl Session {
    fn of(v: &Value) -> Session {
        let text = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("no session: {v}"))
                .to_string()
        };
        Session {
            access: text(&v["access_token"]),
            refresh: text(&v["refresh_token"]),
            uid: text(&v["user"]["id"]),
        }
    }
}

impl Api<'_> {
    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Value,
    ) -> (u16, Value, common::reqwest_like::Response) {
        let url = format!("{}/auth/v1/{path}", self.t.url);
        let auth = format!("Bearer {bearer}");
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = self
            .t
            .http
            .send(
                method,
                &url,
                &[
                    ("apikey", ANON_KEY),
                    ("authorization", &auth),
                    ("content-type", "application/json;charset=UTF-8"),
                    ("x-supabase-api-version", "2024-01-01"),
                ],
                body,
            )
            .await;
        assert_eq!(
            r.header("x-supabase-api-version"),
            Some("2024-01-01"),
            "{method} {path}"
        );
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, v, r)
    }
    async fn post(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self.call("POST", path, bearer, body).await;
        (s, v)
    }
    async fn get(&self, path: &str, bearer: &str) -> (u16, Value) {
        let (s, v, _) = self.call("GET", path, bearer, Value::Null).await;
        (s, v)
    }
    async fn put(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = self.call("PUT", path, bearer, body).await;
        (s, v)
    }
    async fn delete(&self, path: &str, bearer: &str) -> (u16, Value) {
        let (s, v, _) = self.call("DELETE", path, bearer, Value::Null).await;
        (s, v)
    }
    /// Sign up with an email and the tests' usual password.
    async fn signup(&self, email: &str) -> (u16, Value) {
        self.post(
            "signup",
            ANON_KEY,
            json!({"email": email, "password": "hunter22"}),
        )
        .await
    }
    /// Sign up with the usual password (autoconfirm on) and return the session.
    async fn signed_up(&self, email: &str) -> Session {
        let (s, v) = self.signup(email).await;
        assert_eq!(s, 200, "{v}");
        Session::of(&v)
    }
    async fn sign_in(&self, email: &str, password: &str) -> (u16, Value) {
        self.post(
            "token?grant_type=password",
            ANON_KEY,
            json!({"email": email, "password": password}),
        )
        .await
    }
    async fn refresh(&self, refresh_token: impl serde::Serialize) -> (u16, Value) {
        self.post(
            "token?grant_type=refresh_token",
            ANON_KEY,
            json!({ "refresh_token": refresh_token }),
        )
        .await
    }
    async fn inbox(&self, email: &str) -> Vec<Value> {
        let (s, v) = self.get(&format!("inbox?email={email}"), SERVICE_KEY).await;
        assert_eq!(s, 200, "{v}");
        v["messages"].as_array().unwrap().clone()
    }
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn fast(cfg: &mut oxibase::Config) {
    cfg.auth.password_hash_cost = 4;
}

#[tokio::test]
async fn signup_profile_signin_rls_refresh_update_logout() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    let (s, v) = a
        .post(
            "signup",
            ANON_KEY,
            json!({"email": "Alice@Example.com", "password": "hunter22",
                   "data": {"username": "alice", "full_name": "Alice A"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for k in ["access_token", "refresh_token", "expires_in", "expires_at"] {
        assert!(!v[k].is_null(), "{k} missing: {v}");
    }
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["refresh_token"].as_str().unwrap().len(), 12);
    let uid = v["user"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["user"]["email"], "alice@example.com");
    assert_eq!(v["user"]["app_metadata"]["provider"], "email");
    assert_eq!(v["user"]["identities"].as_array().unwrap().len(), 1);
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], uid);
    assert_eq!(c["role"], "authenticated");
    assert_eq!(c["aud"], "authenticated");
    assert_eq!(c["aal"], "aal1");
    assert_eq!(c["amr"][0]["method"], "password");
    assert_eq!(c["is_anonymous"], false);
    assert_eq!(c["user_metadata"]["username"], "alice");
    assert!(c["iss"].as_str().unwrap().ends_with("/auth/v1"));
    assert!(c["session_id"].as_str().unwrap().len() == 36);

    // The app's trigger made a profile.
    let rows = t
        .sql(&format!(
            "select username, full_name from public.profiles where id = '{uid}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].get::<_, Option<String>>(0).as_deref(),
        Some("alice")
    );

    // Signing up again is refused; wrong password and unknown user look alike.
    let (s, v) = a.signup("alice@example.com").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("user_already_exists")),
        "{v}"
    );
    assert_eq!(v["msg"], "User already registered");
    let (s1, v1) = a.sign_in("alice@example.com", "nope-nope").await;
    let (s2, v2) = a.sign_in("nobody@example.com", "nope-nope").await;
    assert_eq!((s1, s2), (400, 400));
    assert_eq!(v1, v2);
    assert_eq!(v1["code"], "invalid_credentials");
    assert_eq!(v1["message"], "Invalid login credentials");

    // Sign in and read as the user through begin_as: RLS scopes rows to auth.uid().
    let (s, v) = a.sign_in("ALICE@example.com", "hunter22").await;
    assert_eq!(s, 200, "{v}");
    let Session {
        access,
        refresh: r1,
        ..
    } = Session::of(&v);
    let bob_id = a.signed_up("bob@example.com").await.uid;
    {
        let state = &t.server.state;
        let mut c = state.pool.get().await.unwrap();
        let ctx = state.keys.resolve(&access).unwrap();
        let tx = oxibase::db::begin_as(&mut c, &ctx, &Default::default(), true)
            .await
            .unwrap();
        let rows = tx
            .query("select id::text from public.profiles order by 1", &[])
            .await
            .unwrap();
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            ids,
            vec![uid.clone()],
            "bob's profile {bob_id} must be hidden"
        );
        let me: String = tx
            .query_one("select auth.uid()::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(me, uid);
    }

    // GET /user with the token.
    let (s, v) = a.get("user", &access).await;
    assert_eq!((s, v["id"].as_str()), (200, Some(uid.as_str())));
    let (s, v) = a.get("user", ANON_KEY).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("bad_jwt")), "{v}");

    // Refresh rotates; the old token's immediate child comes back while it is current.
    let (s, v) = a.refresh(&r1).await;
    assert_eq!(s, 200, "{v}");
    let r2 = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    let (s, v) = a.refresh(&r1).await;
    assert_eq!(
        (s, v["refresh_token"].as_str()),
        (200, Some(r2.as_str())),
        "{v}"
    );

    // Update metadata and password.
    let (s, v) = a
        .put(
            "user",
            &access,
            json!({"data": {"theme": "dark", "username": null}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user_metadata"]["theme"], "dark");
    assert!(v["user_metadata"].get("username").is_none());
    let (s, v) = a
        .put("user", &access, json!({"password": "hunter22"}))
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("same_password")));
    let (s, v) = a.put("user", &access, json!({"password": "abc"})).await;
    assert_eq!((s, v["code"].as_str()), (422, Some("weak_password")));
    assert_eq!(v["weak_password"]["reasons"], json!(["length"]));
    let (s, v) = a
        .put("user", &access, json!({"app_metadata": {"admin": true}}))
        .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("not_admin")));
    let (s, _) = a
        .put("user", &access, json!({"password": "new-password-1"}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = a.sign_in("alice@example.com", "new-password-1").await;
    assert_eq!(s, 200);

    // Logout (global) revokes every session and its refresh tokens.
    let (s, v, _) = a
        .call("POST", "logout?scope=global", &access, Value::Null)
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = a.refresh(&r2).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("refresh_token_not_found")),
        "{v}"
    );
    let (s, v) = a.get("user", &access).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("session_not_found")));
    t.server.shutdown().await;
}

#[tokio::test]
async fn refresh_reuse_outside_interval_revokes_the_family() {
    let t = TestServer::start_with(|c| {
        fast(c);
        c.auth.refresh_token_reuse_interval = 0;
    })
    .await;
    let a = Api { t: &t };
    let r1 = a.signed_up("r@example.com").await.refresh;
    let refresh = |tok: String| {
        let a = &a;
        async move { a.refresh(&tok).await }
    };
    let (_, v) = refresh(r1.clone()).await;
    let r2 = v["refresh_token"].as_str().unwrap().to_string();
    let (_, v) = refresh(r2.clone()).await;
    let r3 = v["refresh_token"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, v) = refresh(r1.clone()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("refresh_token_already_used")),
        "{v}"
    );
    assert_eq!(v["message"], "Invalid Refresh Token: Already Used");
    // Replay detected: the current token of that session is dead too.
    let (s, v) = refresh(r3).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("refresh_token_already_used")),
        "{v}"
    );
    let (s, v) = refresh("nonexistent0".into()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("refresh_token_not_found"))
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn anonymous_users_and_bad_input() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    let (s, v) = a.post("signup", ANON_KEY, json!({"data": {}})).await;
    assert_eq!(s, 200, "{v}");
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["is_anonymous"], true);
    assert_eq!(c["amr"][0]["method"], "anonymous");
    assert_eq!(v["user"]["app_metadata"]["provider"], "anonymous");
    let access = v["access_token"].as_str().unwrap().to_string();
    // An anonymous user cannot set a password without an email...
    let (s, _) = a
        .put("user", &access, json!({"password": "hunter22"}))
        .await;
    assert_eq!(s, 422);
    // ...but adding an email (autoconfirm) makes it permanent.
    let (s, v) = a
        .put("user", &access, json!({"email": "anon@example.com"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["email"], "anon@example.com");
    assert_eq!(v["is_anonymous"], false);
    assert_eq!(v["app_metadata"]["provider"], "email");
    assert_eq!(v["app_metadata"]["providers"], json!(["email"]));

    for (body, code) in [
        (
            json!({"email": "xx:;x@x.x", "password": "hunter22"}),
            "email_address_invalid",
        ),
        (json!({"email": "ok@example.com"}), "validation_failed"),
        (
            json!({"email": "ok@example.com", "password": "123"}),
            "weak_password",
        ),
        (
            json!({"email": "ok@example.com", "phone": "123456789", "password": "hunter22"}),
            "validation_failed",
        ),
        (
            json!({"email": "ok@example.com", "password": "hunter22", "data": {"x": "y".repeat(70_000)}}),
            "validation_failed",
        ),
        (
            json!({"email": "ok@example.com", "password": "hunter22", "data": "nope"}),
            "bad_json",
        ),
    ] {
        let (s, v) = a.post("signup", ANON_KEY, body).await;
        assert!((400..500).contains(&s), "{s} {v}");
        assert_eq!(v["code"], code, "{v}");
    }
    let (s, v, _) = a.call("POST", "signup", ANON_KEY, Value::Null).await;
    assert_eq!(s, 200, "an empty body is an anonymous sign-in: {v}");
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/auth/v1/signup", t.url),
            &[("content-type", "application/json")],
            "{not json",
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "bad_json");
    let (s, v) = a.post("token?grant_type=nope", ANON_KEY, json!({})).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = a.get("settings", ANON_KEY).await;
    assert_eq!((s, v["external"]["email"].as_bool()), (200, Some(true)));
    let (s, v) = a.get("health", ANON_KEY).await;
    assert_eq!((s, v["name"].as_str()), (200, Some("GoTrue")));
    let (s, v) = a.get("user", "garbage").await;
    assert_eq!((s, v["code"].as_str()), (403, Some("bad_jwt")));
    assert!(v["message"].as_str().unwrap().starts_with("invalid JWT"));

    // Anonymous sign-ins can be switched off.
    let t2 = TestServer::start_with(|c| {
        fast(c);
        c.auth.anonymous_sign_ins = false;
        c.auth.disable_signup = false;
    })
    .await;
    let (s, v) = Api { t: &t2 }.post("signup", ANON_KEY, json!({})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("anonymous_provider_disabled"))
    );
    t2.server.shutdown().await;
    t.server.shutdown().await;
}

#[tokio::test]
async fn otp_magic_link_recovery_and_pkce_through_the_inbox() {
    let t = TestServer::start_with(|c| {
        fast(c);
        c.auth.autoconfirm = false;
        c.auth.email_max_frequency = 0;
    })
    .await;
    let a = Api { t: &t };
    // Confirmations on: sign-up returns the bare user and mails a code.
    let (s, v) = a.signup("carol@example.com").await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("access_token").is_none());
    assert!(v["confirmation_sent_at"].is_string());
    let (s, v) = a.sign_in("carol@example.com", "hunter22").await;
    assert_eq!((s, v["code"].as_str()), (400, Some("email_not_confirmed")));
    // A second sign-up for a registered address does not reveal it.
    let mail = a.inbox("carol@example.com").await;
    assert_eq!(mail[0]["type"], "signup");
    let otp = mail[0]["otp"].as_str().unwrap().to_string();
    let (s, v) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"email": "carol@example.com", "token": "000000", "type": "email"}),
        )
        .await;
    if otp != "000000" {
        assert_eq!((s, v["code"].as_str()), (403, Some("otp_expired")));
        assert_eq!(v["message"], "Token has expired or is invalid");
    }
    let (s, v) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"email": "carol@example.com", "token": otp, "type": "email"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["user"]["email_confirmed_at"].is_string());
    // Used once only.
    let (s, _) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"email": "carol@example.com", "token": otp, "type": "email"}),
        )
        .await;
    assert_eq!(s, 403);

    // Magic link for the now-confirmed user: GET /verify redirects with the session.
    let (s, v) = a
        .post(
            "otp",
            ANON_KEY,
            json!({"email": "carol@example.com", "create_user": false}),
        )
        .await;
    assert_eq!((s, v), (200, json!({})));
    let mail = a.inbox("carol@example.com").await;
    assert_eq!(mail[0]["type"], "magiclink");
    let link = mail[0]["action_link"].as_str().unwrap().to_string();
    let path = link.split("/auth/v1/").nth(1).unwrap().to_string();
    let (s, _, r) = a.call("GET", &path, ANON_KEY, Value::Null).await;
    assert_eq!(s, 303);
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with("http://localhost:3000#access_token="),
        "{loc}"
    );
    assert!(loc.contains("&type=magiclink"), "{loc}");
    // The link is spent.
    let (_, _, r) = a.call("GET", &path, ANON_KEY, Value::Null).await;
    assert!(r
        .header("location")
        .unwrap()
        .contains("error_code=otp_expired"));

    // OTP for an unknown address without create_user.
    let (s, v) = a
        .post(
            "otp",
            ANON_KEY,
            json!({"email": "dave@example.com", "create_user": false}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("otp_disabled")));

    // Recovery never tells whether the address exists.
    let (s, v) = a
        .post("recover", ANON_KEY, json!({"email": "nobody@example.com"}))
        .await;
    assert_eq!((s, v), (200, json!({})));
    assert!(a.inbox("nobody@example.com").await.is_empty());
    // PKCE recovery: the link redirects with ?code=, exchanged with the verifier.
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let (s, _) = a
        .post(
            "recover?redirect_to=http://localhost:3000/reset",
            ANON_KEY,
            json!({"email": "carol@example.com", "code_challenge": challenge, "code_challenge_method": "s256"}),
        )
        .await;
    assert_eq!(s, 200);
    let mail = a.inbox("carol@example.com").await;
    assert_eq!(mail[0]["type"], "recovery");
    let path = mail[0]["action_link"]
        .as_str()
        .unwrap()
        .split("/auth/v1/")
        .nth(1)
        .unwrap()
        .to_string();
    let (s, _, r) = a.call("GET", &path, ANON_KEY, Value::Null).await;
    assert_eq!(s, 303);
    let loc = r.header("location").unwrap().to_string();
    let code = loc
        .split("code=")
        .nth(1)
        .unwrap_or_else(|| panic!("{loc}"))
        .to_string();
    assert!(
        loc.starts_with("http://localhost:3000/reset?code="),
        "{loc}"
    );
    let (s, v) = a
        .post("token?grant_type=pkce", ANON_KEY, json!({"auth_code": code, "code_verifier": "wrong-verifier-wrong-verifier-wrong-verifier"}))
        .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("bad_code_verifier")));
    let (s, v) = a
        .post(
            "token?grant_type=pkce",
            ANON_KEY,
            json!({"auth_code": code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["amr"][0]["method"],
        "recovery"
    );
    let access = v["access_token"].as_str().unwrap().to_string();

    // A (secure) email change needs the codes sent to both addresses.
    let (s, v) = a
        .put("user", &access, json!({"email": "carol2@example.com"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["new_email"], "carol2@example.com");
    let new_otp = a.inbox("carol2@example.com").await[0]["otp"]
        .as_str()
        .unwrap()
        .to_string();
    let old_mail = a.inbox("carol@example.com").await;
    assert_eq!(old_mail[0]["type"], "email_change");
    let old_otp = old_mail[0]["otp"].as_str().unwrap().to_string();
    let (s, v) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"email": "carol2@example.com", "token": new_otp, "type": "email_change"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .starts_with("Confirmation link accepted"),
        "{v}"
    );
    assert_eq!(
        t.sql("select email from auth.users where email = 'carol@example.com'")
            .await
            .len(),
        1
    );
    let (s, v) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"email": "carol@example.com", "token": old_otp, "type": "email_change"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user"]["email"], "carol2@example.com");

    // Reauthentication sends a nonce that a password change may carry.
    let (s, _) = a.get("reauthenticate", &access).await;
    assert_eq!(s, 200);
    let nonce = a.inbox("carol2@example.com").await[0]["otp"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = a
        .put(
            "user",
            &access,
            json!({"password": "another-pw-1", "nonce": "111111"}),
        )
        .await;
    if nonce != "111111" {
        assert_eq!(
            (s, v["code"].as_str()),
            (422, Some("reauthentication_not_valid"))
        );
    }
    let (s, v) = a
        .put(
            "user",
            &access,
            json!({"password": "another-pw-1", "nonce": nonce}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // The inbox is service_role only.
    let (s, v) = a.get("inbox?email=carol2@example.com", ANON_KEY).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("not_admin")));
    t.server.shutdown().await;
}

#[tokio::test]
async fn admin_api() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    // The anon key and users are not admins.
    let (s, v) = a.get("admin/users", ANON_KEY).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("not_admin")));
    let (s, v) = a
        .post(
            "admin/users",
            SERVICE_KEY,
            json!({"email": "e1@example.com", "password": "hunter22", "email_confirm": true,
                   "user_metadata": {"full_name": "E One"}, "app_metadata": {"roles": ["x"]}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["app_metadata"]["provider"], "email");
    assert_eq!(v["app_metadata"]["roles"], json!(["x"]));
    assert!(v["email_confirmed_at"].is_string());
    let (s, v) = a
        .post(
            "admin/users",
            SERVICE_KEY,
            json!({"email": "e1@example.com"}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("email_exists")));
    // Updating a user to another user's address is refused in GoTrue's words.
    let (s, v) = a
        .post(
            "admin/users",
            SERVICE_KEY,
            json!({"phone": "15550001111", "phone_confirm": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let with_phone = v["id"].as_str().unwrap().to_string();
    let (s, v) = a
        .put(
            &format!("admin/users/{id}"),
            SERVICE_KEY,
            json!({"phone": "15550001111"}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("phone_exists")), "{v}");
    assert_eq!(
        v["msg"],
        "A user with this phone number has already been registered"
    );
    let (s, v) = a
        .put(
            &format!("admin/users/{with_phone}"),
            SERVICE_KEY,
            json!({"email": "E1@example.com"}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("email_exists")), "{v}");
    let (s, _, _) = a
        .call(
            "DELETE",
            &format!("admin/users/{with_phone}"),
            SERVICE_KEY,
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = a
        .post(
            "admin/users",
            SERVICE_KEY,
            json!({"email": "xx:;x@x.x", "password": "password123"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["message"],
        "Unable to validate email address: invalid format"
    );
    let (_, v) = a
        .post(
            "admin/users",
            SERVICE_KEY,
            json!({"email": "unconf@example.com", "password": "hunter22"}),
        )
        .await;
    let unconf = v["id"].as_str().unwrap().to_string();
    let (s, v) = a.sign_in("unconf@example.com", "hunter22").await;
    assert_eq!((s, v["code"].as_str()), (400, Some("email_not_confirmed")));
    let (s, _, _) = a
        .call(
            "DELETE",
            &format!("admin/users/{unconf}"),
            SERVICE_KEY,
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    for i in 2..=4 {
        let (s, _) = a
            .post(
                "admin/users",
                SERVICE_KEY,
                json!({"email": format!("e{i}@example.com")}),
            )
            .await;
        assert_eq!(s, 200);
    }
    // Pagination headers as auth-js parses them.
    let (s, v, r) = a
        .call(
            "GET",
            "admin/users?page=&per_page=",
            SERVICE_KEY,
            Value::Null,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["users"].as_array().unwrap().len(), 4);
    assert_eq!(v["aud"], "authenticated");
    assert_eq!(r.header("x-total-count"), Some("4"));
    let (_, v, r) = a
        .call(
            "GET",
            "admin/users?page=1&per_page=3",
            SERVICE_KEY,
            Value::Null,
        )
        .await;
    assert_eq!(v["users"].as_array().unwrap().len(), 3);
    let link = r.header("link").unwrap().to_string();
    let first = link.split(',').next().unwrap();
    assert!(
        first.contains("?page=2&per_page=3>; rel=\"next\""),
        "{link}"
    );
    assert!(link.contains("?page=2&per_page=3>; rel=\"last\""), "{link}");
    let (s, _) = a.get("admin/users?page=-1&per_page=10", SERVICE_KEY).await;
    assert_eq!(s, 400);

    let (s, v) = a.get(&format!("admin/users/{id}"), SERVICE_KEY).await;
    assert_eq!((s, v["email"].as_str()), (200, Some("e1@example.com")));
    let (s, v) = a
        .get(
            "admin/users/83fd9e20-7a80-46e4-bf29-a86e3d6bbf66",
            SERVICE_KEY,
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("user_not_found")));
    let (s, _) = a.get("admin/users/not-a-uuid", SERVICE_KEY).await;
    assert_eq!(s, 404);

    let (s, v) = a
        .put(
            &format!("admin/users/{id}"),
            SERVICE_KEY,
            json!({"email": "new_e1@example.com", "user_metadata": {"favorite_color": "yellow"},
                    "app_metadata": {"roles": ["admin"]}, "ban_duration": "24h"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["email"], "new_e1@example.com");
    assert_eq!(v["user_metadata"]["favorite_color"], "yellow");
    assert_eq!(v["user_metadata"]["full_name"], "E One");
    assert_eq!(v["app_metadata"]["roles"], json!(["admin"]));
    assert!(v["banned_until"].is_string());
    let (s, v) = a.sign_in("new_e1@example.com", "hunter22").await;
    assert_eq!((s, v["code"].as_str()), (400, Some("user_banned")));
    let (s, _) = a
        .put(
            &format!("admin/users/{id}"),
            SERVICE_KEY,
            json!({"ban_duration": "none"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = a.sign_in("new_e1@example.com", "hunter22").await;
    assert_eq!(s, 200, "{v}");
    let access = v["access_token"].as_str().unwrap().to_string();
    let (s, _) = a
        .put(
            &format!("admin/users/{id}"),
            SERVICE_KEY,
            json!({"ban_duration": "soon"}),
        )
        .await;
    assert_eq!(s, 400);

    // generate_link + verify with the hashed token.
    let (s, v) = a
        .post("admin/generate_link", SERVICE_KEY,
              json!({"type": "signup", "email": "gl@example.com", "password": "hunter22", "data": {"status": "alpha"},
                     "redirect_to": "http://localhost:3000/welcome"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user_metadata"], json!({"status": "alpha"}));
    assert_eq!(v["verification_type"], "signup");
    let al = v["action_link"].as_str().unwrap();
    assert!(
        al.contains("?token=") && al.contains("type=signup") && al.contains("redirect_to="),
        "{al}"
    );
    assert!(
        a.inbox("gl@example.com").await.is_empty(),
        "generate_link sends nothing"
    );
    let (s, v) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"token_hash": v["hashed_token"], "type": "signup"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = a
        .post("admin/generate_link", SERVICE_KEY, json!({"type": "email_change_current", "email": "gl@example.com", "new_email": "gl2@example.com"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["new_email"], "gl2@example.com");
    // as GoTrue: the requested type (supabase-py's GenerateLinkProperties accepts no other)
    assert_eq!(v["verification_type"], "email_change_current");
    assert!(v["action_link"]
        .as_str()
        .unwrap()
        .contains("type=email_change"));
    let (s, v) = a
        .post(
            "admin/generate_link",
            SERVICE_KEY,
            json!({"type": "recovery", "email": "zz@example.com"}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("user_not_found")));

    // Invite mails a link and marks invited_at.
    let (s, v) = a
        .post(
            "invite",
            SERVICE_KEY,
            json!({"email": "inv@example.com", "data": {"status": "alpha"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["invited_at"].is_string());
    assert_eq!(a.inbox("inv@example.com").await[0]["type"], "invite");
    let (s, _) = a
        .post("invite", ANON_KEY, json!({"email": "inv2@example.com"}))
        .await;
    assert_eq!(s, 403);

    // Soft delete keeps the row, hides the user; the user's token stops working.
    let (s, v, _) = a
        .call(
            "DELETE",
            &format!("admin/users/{id}"),
            SERVICE_KEY,
            json!({"should_soft_delete": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let rows = t
        .sql(&format!(
            "select deleted_at is not null from auth.users where id = '{id}'"
        ))
        .await;
    assert!(rows[0].get::<_, bool>(0));
    let (s, v) = a.get("user", &access).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("user_not_found")));
    let (_, v) = a.get("admin/users", SERVICE_KEY).await;
    assert!(!v["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["id"] == id.as_str()));
    // Hard delete removes it (and the profile, by cascade).
    let (_, v) = a.get("admin/users?per_page=1", SERVICE_KEY).await;
    let other = v["users"][0]["id"].as_str().unwrap().to_string();
    let (s, _, _) = a
        .call(
            "DELETE",
            &format!("admin/users/{other}"),
            SERVICE_KEY,
            json!({"should_soft_delete": false}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(t
        .sql(&format!("select 1 from auth.users where id = '{other}'"))
        .await
        .is_empty());
    let (s, v, _) = a
        .call(
            "DELETE",
            &format!("admin/users/{other}"),
            SERVICE_KEY,
            json!({}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("user_not_found")));

    // The audit log saw it all, newest first, filterable, admin only.
    let (s, v, r) = a
        .call("GET", "admin/audit?per_page=1000", SERVICE_KEY, Value::Null)
        .await;
    assert_eq!(s, 200, "{v}");
    let actions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["action"].as_str().unwrap())
        .collect();
    for want in ["user_signedup", "login", "user_invited", "user_deleted"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(r.header("x-total-count").unwrap().parse::<u32>().unwrap() >= 5);
    let (_, v) = a.get("admin/audit?query=action:login", SERVICE_KEY).await;
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["payload"]["action"] == "login"));
    assert_eq!(v[0]["payload"]["log_type"], "account");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["payload"]["actor_username"] == "new_e1@example.com"));
    let (s, _) = a.get("admin/audit?query=bogus:x", SERVICE_KEY).await;
    assert_eq!(s, 400);
    let (s, _) = a.get("admin/audit", ANON_KEY).await;
    assert_eq!(s, 403);

    // A password set before the rules got stricter still signs in, flagged as weak.
    t.batch("insert into auth.users (id, aud, role, email, encrypted_password, email_confirmed_at, created_at, updated_at, raw_app_meta_data, raw_user_meta_data)
             values ('9a0c3f4e-1111-4a2b-8c3d-000000000002', 'authenticated', 'authenticated', 'short@example.com',
                     extensions.crypt('abc', extensions.gen_salt('bf')), now(), now(), now(), '{}', '{}')").await;
    let (s, v) = a
        .post(
            "token?grant_type=password",
            ANON_KEY,
            json!({"email": "short@example.com", "password": "abc"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["weak_password"]["reasons"], json!(["length"]));
    assert!(v["weak_password"]["message"].is_string());

    // A user imported with a pgcrypto bcrypt hash signs in.
    t.batch("insert into auth.users (id, aud, role, email, encrypted_password, email_confirmed_at, created_at, updated_at, raw_app_meta_data, raw_user_meta_data)
             values ('9a0c3f4e-1111-4a2b-8c3d-000000000001', 'authenticated', 'authenticated', 'imported@example.com',
                     extensions.crypt('imported-pw', extensions.gen_salt('bf')), now(), now(), now(), '{}', '{}')").await;
    let (s, v) = a.sign_in("imported@example.com", "imported-pw").await;
    assert_eq!(s, 200, "{v}");
    t.server.shutdown().await;
}

const ES256_JWK: &str = r#"{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "oxibase-test-es256", "use": "sig", "x": "L6NrnM4kRlaFwZPPYzgNdAz_W3BaDLhlMdzhh_iXAZk", "y": "SzNa6WH4gU-0jMvC5qvi7JPhn9jNmRIsWTaN0cZB-Yk", "d": "ZzQcbjAaEHNEuxYQg5h9MiqMjIi7koJnZT3b0HQLRbs"}"#;

#[tokio::test]
async fn asymmetric_signing_and_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(&path, format!("[{ES256_JWK}]")).unwrap();
    let p2 = path.clone();
    let t = TestServer::start_with(move |c| {
        fast(c);
        c.jwt_keys_file = Some(p2);
    })
    .await;
    let a = Api { t: &t };
    let (s, v) = a.get(".well-known/jwks.json", ANON_KEY).await;
    assert_eq!(s, 200);
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], "oxibase-test-es256");
    assert!(keys[0].get("d").is_none(), "private part must not leak");
    let (s, v) = a.signup("es@example.com").await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some("oxibase-test-es256"));
    // Verify with the published key alone.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys[0].clone()).unwrap();
    let mut val = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    val.set_audience(&["authenticated"]);
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &val,
    )
    .unwrap();
    assert_eq!(data.claims["email"], "es@example.com");
    let (s, _) = a.get("user", token).await;
    assert_eq!(s, 200);
    // HS256 tokens (the CLI's keys) are still accepted.
    let (s, _) = a.get("admin/users", SERVICE_KEY).await;
    assert_eq!(s, 200);
    t.server.shutdown().await;
}

#[tokio::test]
async fn rate_limits_answer_429() {
    let t = TestServer::start_with(|c| {
        fast(c);
        c.auth.rate_limit_per_hour = 3;
        c.auth.email_rate_limit_per_hour = 2;
        c.auth.refresh_rate_limit_per_hour = 2;
        c.auth.trust_forwarded_for = true;
        c.auth.email_max_frequency = 0;
    })
    .await;
    let a = Api { t: &t };
    for i in 0..3 {
        let (s, _) = a
            .post(
                "token?grant_type=password",
                ANON_KEY,
                json!({"email": format!("x{i}@example.com"), "password": "hunter22"}),
            )
            .await;
        assert_eq!(s, 400);
    }
    let (s, v) = a.sign_in("x@example.com", "hunter22").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (429, Some("over_request_rate_limit")),
        "{v}"
    );
    // Refreshes have their own, separate budget.
    let mut statuses = vec![];
    for _ in 0..3 {
        let (s, _) = a.refresh("nope-nope-no").await;
        statuses.push(s);
    }
    assert_eq!(statuses, vec![400, 400, 429]);
    // Counters live in PostgreSQL.
    let rows = t
        .sql("select hits from auth.oxibase_rate_limits where key like 'ip:signin:%'")
        .await;
    assert_eq!(rows[0].get::<_, i32>(0), 4);
    // Per-address email limit (otp has its own IP bucket).
    let (s, _) = a
        .post(
            "admin/users",
            SERVICE_KEY,
            json!({"email": "m@example.com", "email_confirm": true}),
        )
        .await;
    assert_eq!(s, 200);
    let (s1, _) = a
        .post("recover", ANON_KEY, json!({"email": "m@example.com"}))
        .await;
    let (s2, _) = a
        .post("recover", ANON_KEY, json!({"email": "m@example.com"}))
        .await;
    let (s3, v) = a
        .post("recover", ANON_KEY, json!({"email": "m@example.com"}))
        .await;
    assert_eq!((s1, s2, s3), (200, 200, 429), "{v}");
    assert_eq!(v["code"], "over_email_send_rate_limit");
    // An unregistered address is limited alike, so 429 does not reveal registration.
    // (From another client address, so the per-IP limit is not what answers.)
    let mut codes = vec![];
    for _ in 0..3 {
        let r = t
            .http
            .send(
                "POST",
                &format!("{}/auth/v1/recover", t.url),
                &[
                    ("content-type", "application/json"),
                    ("x-forwarded-for", "192.0.2.7"),
                ],
                json!({"email": "ghost@example.com"}).to_string(),
            )
            .await;
        codes.push((r.status, r.json()["code"].as_str().map(String::from)));
    }
    assert_eq!(codes[1].0, 200);
    assert_eq!(codes[2], (429, Some("over_email_send_rate_limit".into())));
    t.server.shutdown().await;
}

fn totp_now(secret: &str) -> String {
    use hmac::{Hmac, Mac};
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut key, mut buf, mut bits) = (vec![], 0u32, 0u32);
    for c in secret.bytes() {
        buf = (buf << 5) | B32.iter().position(|&x| x == c).unwrap() as u32;
        bits += 5;
        if bits >= 8 {
            key.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    let step = (chrono::Utc::now().timestamp() / 30) as u64;
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
    m.update(&step.to_be_bytes());
    let h = m.finalize().into_bytes();
    let o = (h[19] & 15) as usize;
    let n = u32::from_be_bytes([h[o] & 0x7f, h[o + 1], h[o + 2], h[o + 3]]) % 1_000_000;
    format!("{n:06}")
}

#[tokio::test]
async fn totp_mfa_raises_the_session_to_aal2() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    let Session { access, uid, .. } = a.signed_up("mfa@example.com").await;
    let (s, v) = a
        .post("factors", ANON_KEY, json!({"factor_type": "totp"}))
        .await;
    assert_eq!(s, 403, "the anon key is not a user: {v}");
    let (s, v) = a
        .post(
            "factors",
            &access,
            json!({"factor_type": "totp", "friendly_name": "phone app"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let fid = v["id"].as_str().unwrap().to_string();
    let secret = v["totp"]["secret"].as_str().unwrap().to_string();
    assert!(v["totp"]["qr_code"].as_str().unwrap().contains("<svg"));
    assert!(v["totp"]["uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/"));
    let (s, v) = a
        .post(
            "factors",
            &access,
            json!({"factor_type": "totp", "friendly_name": "phone app"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("mfa_factor_name_conflict"))
    );
    let (s, v) = a
        .post(&format!("factors/{fid}/challenge"), &access, json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let cid = v["id"].as_str().unwrap().to_string();
    let code = totp_now(&secret);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (s, v) = a
        .post(
            &format!("factors/{fid}/verify"),
            &access,
            json!({"challenge_id": cid, "code": wrong}),
        )
        .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (422, Some("Invalid TOTP code entered"))
    );
    let (s, v) = a
        .post(
            &format!("factors/{fid}/verify"),
            &access,
            json!({"challenge_id": cid, "code": code}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["aal"], "aal2");
    assert!(c["amr"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["method"] == "totp"));
    assert_eq!(v["user"]["factors"][0]["status"], "verified");
    let aal2 = v["access_token"].as_str().unwrap().to_string();
    // Refresh keeps aal2.
    let (_, r) = a.refresh(&v["refresh_token"]).await;
    assert_eq!(claims(r["access_token"].as_str().unwrap())["aal"], "aal2");
    // A fresh aal1 sign-in cannot remove the verified factor; the aal2 session can.
    let (_, p) = a.sign_in("mfa@example.com", "hunter22").await;
    let (s, v) = a
        .delete(
            &format!("factors/{fid}"),
            p["access_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("insufficient_aal")));
    let (s, v) = a
        .get(&format!("admin/users/{uid}/factors"), SERVICE_KEY)
        .await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)));
    let (s, v) = a.delete(&format!("factors/{fid}"), &aal2).await;
    assert_eq!((s, v["id"].as_str()), (200, Some(fid.as_str())));
    // WebAuthn factors can be enrolled (unverified) and removed by the admin.
    let (s, v) = a
        .post(
            "factors",
            &aal2,
            json!({"factor_type": "webauthn", "friendly_name": "key"}),
        )
        .await;
    assert_eq!((s, v["type"].as_str()), (200, Some("webauthn")));
    let wid = v["id"].as_str().unwrap().to_string();
    let (s, v) = a
        .delete(&format!("admin/users/{uid}/factors/{wid}"), SERVICE_KEY)
        .await;
    assert_eq!((s, v["id"].as_str()), (200, Some(wid.as_str())));
    let (s, _) = a
        .get(
            "admin/users/83fd9e20-7a80-46e4-bf29-a86e3d6bbf66/factors",
            SERVICE_KEY,
        )
        .await;
    assert_eq!(s, 404);
    t.server.shutdown().await;
}

#[tokio::test]
async fn oauth_client_admin() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    let (s, v) = a
        .post(
            "admin/oauth/clients",
            SERVICE_KEY,
            json!({"client_name": "bad", "redirect_uris": []}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("redirect_uris"));
    let (s, v) = a
        .post(
            "admin/oauth/clients",
            ANON_KEY,
            json!({"client_name": "x", "redirect_uris": ["https://a.test/cb"]}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (403, Some("not_admin")));
    let (s, v) = a
        .post("admin/oauth/clients", SERVICE_KEY, json!({"client_name": "App", "redirect_uris": ["https://a.test/cb", "http://localhost:3000/cb"]}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["client_id"].as_str().unwrap().to_string();
    let secret = v["client_secret"].as_str().unwrap().to_string();
    assert_eq!(
        v["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        v["redirect_uris"],
        json!(["https://a.test/cb", "http://localhost:3000/cb"])
    );
    let (s, v) = a
        .get(&format!("admin/oauth/clients/{id}"), SERVICE_KEY)
        .await;
    assert_eq!(s, 200);
    assert!(v.get("client_secret").is_none());
    let (s, v) = a
        .put(
            &format!("admin/oauth/clients/{id}"),
            SERVICE_KEY,
            json!({"logo_uri": "https://a.test/l.png"}),
        )
        .await;
    assert_eq!(
        (s, v["client_name"].as_str(), v["logo_uri"].as_str()),
        (200, Some("App"), Some("https://a.test/l.png"))
    );
    let (s, v) = a
        .post(
            &format!("admin/oauth/clients/{id}/regenerate_secret"),
            SERVICE_KEY,
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    assert_ne!(v["client_secret"].as_str().unwrap(), secret);
    let (s, v, r) = a
        .call(
            "GET",
            "admin/oauth/clients?page=1&per_page=1",
            SERVICE_KEY,
            Value::Null,
        )
        .await;
    assert_eq!((s, v["clients"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(r.header("x-total-count"), Some("1"));
    let (s, _) = a
        .delete(&format!("admin/oauth/clients/{id}"), SERVICE_KEY)
        .await;
    assert_eq!(s, 204);
    let (s, v) = a
        .get(&format!("admin/oauth/clients/{id}"), SERVICE_KEY)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("oauth_client_not_found"))
    );
    t.server.shutdown().await;
}

/// A software authenticator (ES256, attestation "none") for the passkey ceremonies.
struct SoftKey {
    pair: ring::signature::EcdsaKeyPair,
    cred_id: Vec<u8>,
    user_handle: Vec<u8>,
    count: u32,
}

impl SoftKey {
    fn new() -> SoftKey {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        SoftKey {
            pair,
            cred_id: uuid::Uuid::new_v4().as_bytes().to_vec(),
            user_handle: vec![],
            count: 0,
        }
    }
    fn b64(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
    fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
        json!({"type": kind, "challenge": challenge, "origin": origin})
            .to_string()
            .into_bytes()
    }
    fn create(&mut self, options: &Value, origin: &str) -> Value {
        use base64::Engine;
        use ring::signature::KeyPair;
        self.user_handle = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(options["user"]["id"].as_str().unwrap())
            .unwrap();
        let point = self.pair.public_key().as_ref();
        let bstr = |b: &[u8]| [vec![0x58, b.len() as u8], b.to_vec()].concat();
        // COSE_Key {1: 2, 3: -7, -1: 1, -2: x, -3: y}
        let cose = [
            vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21],
            bstr(&point[1..33]),
            vec![0x22],
            bstr(&point[33..65]),
        ]
        .concat();
        let rp = sha2::Sha256::digest_bytes("localhost");
        let mut ad = rp.to_vec();
        ad.push(0x45);
        ad.extend([0, 0, 0, 0]);
        ad.extend([0u8; 16]);
        ad.extend((self.cred_id.len() as u16).to_be_bytes());
        ad.extend(&self.cred_id);
        ad.extend(cose);
        // {"fmt": "none", "attStmt": {}, "authData": ad}
        let mut att = vec![0xa3, 0x63, b'f', b'm', b't', 0x64, b'n', b'o', b'n', b'e'];
        att.extend([0x67, b'a', b't', b't', b'S', b't', b'm', b't', 0xa0]);
        att.extend([0x68, b'a', b'u', b't', b'h', b'D', b'a', b't', b'a', 0x59]);
        att.extend((ad.len() as u16).to_be_bytes());
        att.extend(ad);
        let cd = Self::client_data(
            "webauthn.create",
            options["challenge"].as_str().unwrap(),
            origin,
        );
        json!({"id": Self::b64(&self.cred_id), "rawId": Self::b64(&self.cred_id), "type": "public-key",
               "response": {"attestationObject": Self::b64(&att), "clientDataJSON": Self::b64(&cd)}})
    }
    fn get(&mut self, options: &Value, origin: &str) -> Value {
        self.count += 1;
        let mut ad = sha2::Sha256::digest_bytes("localhost").to_vec();
        ad.push(0x05);
        ad.extend(self.count.to_be_bytes());
        let cd = Self::client_data(
            "webauthn.get",
            options["challenge"].as_str().unwrap(),
            origin,
        );
        let mut msg = ad.clone();
        msg.extend(sha2::Sha256::digest_bytes(&cd));
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), &msg)
            .unwrap();
        json!({"id": Self::b64(&self.cred_id), "rawId": Self::b64(&self.cred_id), "type": "public-key",
               "response": {"authenticatorData": Self::b64(&ad), "clientDataJSON": Self::b64(&cd),
                            "signature": Self::b64(sig.as_ref()), "userHandle": Self::b64(&self.user_handle)}})
    }
}

trait DigestBytes {
    fn digest_bytes(b: impl AsRef<[u8]>) -> Vec<u8>;
}
impl DigestBytes for sha2::Sha256 {
    fn digest_bytes(b: impl AsRef<[u8]>) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(b.as_ref()).to_vec()
    }
}

#[tokio::test]
async fn passkey_registration_and_sign_in() {
    let origin = "http://localhost:5173";
    let t = TestServer::start_with(|c| {
        fast(c);
        c.auth.webauthn_rp_id = "localhost".into();
        c.auth.webauthn_rp_origins = vec!["http://localhost:5173".into()];
    })
    .await;
    let a = Api { t: &t };
    let Session { access, uid, .. } = a.signed_up("pk@example.com").await;
    let (s, _) = a
        .post("passkeys/registration/options", ANON_KEY, json!({}))
        .await;
    assert_eq!(s, 403, "registration needs a user session");
    let (s, o) = a
        .post("passkeys/registration/options", &access, json!({}))
        .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["options"]["rp"]["id"], "localhost");
    let mut key = SoftKey::new();
    // A foreign origin is refused, and the failure spends nothing but that attempt.
    let bad = key.create(&o["options"], "https://evil.test");
    let (s, v) = a
        .post(
            "passkeys/registration/verify",
            &access,
            json!({"challenge_id": o["challenge_id"], "credential": bad}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("webauthn_verification_failed"))
    );
    let (_, o) = a
        .post("passkeys/registration/options", &access, json!({}))
        .await;
    let cred = key.create(&o["options"], origin);
    let (s, v) = a
        .post(
            "passkeys/registration/verify",
            &access,
            json!({"challenge_id": o["challenge_id"], "credential": cred}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let pid = v["id"].as_str().unwrap().to_string();

    // Sign in without a password.
    let (s, o) = a
        .post("passkeys/authentication/options", ANON_KEY, json!({}))
        .await;
    assert_eq!(s, 200);
    let assertion = key.get(&o["options"], origin);
    let body = json!({"challenge_id": o["challenge_id"], "credential": assertion});
    let (s, v) = a
        .post("passkeys/authentication/verify", ANON_KEY, body.clone())
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user"]["id"], uid.as_str());
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["amr"][0]["method"],
        "passkey"
    );
    let (s, v) = a
        .post("passkeys/authentication/verify", ANON_KEY, body)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("webauthn_challenge_not_found"))
    );
    // A tampered signature fails.
    let (_, o) = a
        .post("passkeys/authentication/options", ANON_KEY, json!({}))
        .await;
    let mut assertion = key.get(&o["options"], origin);
    assertion["response"]["signature"] = json!(SoftKey::b64(b"not a signature"));
    let (s, v) = a
        .post(
            "passkeys/authentication/verify",
            ANON_KEY,
            json!({"challenge_id": o["challenge_id"], "credential": assertion}),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("webauthn_verification_failed"))
    );

    let (s, v) = a.get("passkeys", &access).await;
    assert_eq!((s, v[0]["id"].as_str()), (200, Some(pid.as_str())));
    assert!(v[0]["last_used_at"].is_string());
    let (s, v, _) = a
        .call(
            "PATCH",
            &format!("passkeys/{pid}"),
            &access,
            json!({"friendly_name": "laptop"}),
        )
        .await;
    assert_eq!((s, v["friendly_name"].as_str()), (200, Some("laptop")));
    let (s, v) = a
        .get(&format!("admin/users/{uid}/passkeys"), SERVICE_KEY)
        .await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)));
    let (s, _) = a.delete(&format!("passkeys/{pid}"), &access).await;
    assert_eq!(s, 204);
    let (s, _) = a.delete(&format!("passkeys/{pid}"), &access).await;
    assert_eq!(s, 404);
    t.server.shutdown().await;
}

#[tokio::test]
async fn phone_sign_up_and_otp_without_a_provider() {
    // Default: no provider, so sending an SMS is refused as GoTrue does.
    let t0 = TestServer::start_with(fast).await;
    let (s, v) = Api { t: &t0 }
        .post("otp", ANON_KEY, json!({"phone": "+1 555 000 2222"}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("phone_provider_disabled"))
    );
    // Phone + password sign-up with autoconfirm needs no SMS.
    let (s, v) = Api { t: &t0 }
        .post(
            "signup",
            ANON_KEY,
            json!({"phone": "+15550003333", "password": "hunter22"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user"]["phone"], "15550003333");
    let (s, _) = Api { t: &t0 }
        .post(
            "token?grant_type=password",
            ANON_KEY,
            json!({"phone": "+1 (555) 000-3333", "password": "hunter22"}),
        )
        .await;
    assert_eq!(s, 200);
    t0.server.shutdown().await;

    let t = TestServer::start_with(|c| {
        fast(c);
        c.auth.autoconfirm = false;
        c.auth.sms_to_inbox = true;
        c.auth
            .sms_test_otp
            .insert("15550001111".into(), "123456".into());
    })
    .await;
    let a = Api { t: &t };
    let (s, v) = a
        .post(
            "signup",
            ANON_KEY,
            json!({"phone": "+15550004444", "password": "hunter22"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("access_token").is_none());
    let (s, v) = a
        .post(
            "token?grant_type=password",
            ANON_KEY,
            json!({"phone": "15550004444", "password": "hunter22"}),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (400, Some("phone_not_confirmed")));
    let sms = a.inbox("15550004444").await;
    assert_eq!(sms[0]["type"], "sms");
    let (s, v) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"phone": "+15550004444", "token": sms[0]["otp"], "type": "sms"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["user"]["phone_confirmed_at"].is_string());
    // A test number gets its fixed code and no message.
    let (s, _) = a
        .post("otp", ANON_KEY, json!({"phone": "+15550001111"}))
        .await;
    assert_eq!(s, 200);
    assert!(a.inbox("15550001111").await.is_empty());
    let (s, v) = a
        .post(
            "verify",
            ANON_KEY,
            json!({"phone": "15550001111", "token": "123456", "type": "sms"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        claims(v["access_token"].as_str().unwrap())["phone"],
        "15550001111"
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn custom_access_token_hook_rewrites_claims() {
    let t = TestServer::start_with(|c| {
        fast(c);
        c.auth.custom_access_token_hook =
            "pg-functions://postgres/public/custom_access_token_hook".into();
    })
    .await;
    t.batch(
        "create function public.custom_access_token_hook(event jsonb) returns jsonb language plpgsql as $$
         begin
           if event->'claims'->>'email' = 'blocked@example.com' then
             return jsonb_build_object('error', jsonb_build_object('http_code', 403, 'message', 'no entry'));
           end if;
           return jsonb_build_object('claims', (event->'claims') || jsonb_build_object(
             'user_role', 'editor', 'hook_method', event->>'authentication_method'));
         end $$;
         grant usage on schema public to supabase_auth_admin;
         grant execute on function public.custom_access_token_hook(jsonb) to supabase_auth_admin;",
    )
    .await;
    let a = Api { t: &t };
    let (s, v) = a.signup("hook@example.com").await;
    assert_eq!(s, 200, "{v}");
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["user_role"], "editor");
    assert_eq!(c["hook_method"], "password");
    // Refreshed tokens go through the hook too.
    let (_, r) = a.refresh(&v["refresh_token"]).await;
    assert_eq!(
        claims(r["access_token"].as_str().unwrap())["user_role"],
        "editor"
    );
    let (s, v) = a.signup("blocked@example.com").await;
    assert_eq!((s, v["message"].as_str()), (403, Some("no entry")));
    assert!(
        t.sql("select 1 from auth.users where email = 'blocked@example.com'")
            .await
            .is_empty(),
        "a refused token rolls the sign-up back"
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn junk_input_never_gets_a_500() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    let Session {
        access: user, uid, ..
    } = a.signed_up("junk@example.com").await;
    let routes = [
        ("POST", "signup".to_string()),
        ("POST", "token?grant_type=password".into()),
        ("POST", "token?grant_type=refresh_token".into()),
        ("POST", "token?grant_type=pkce".into()),
        ("POST", "token?grant_type=id_token".into()),
        ("GET", "user".into()),
        ("PUT", "user".into()),
        ("POST", "logout?scope=local".into()),
        ("POST", "logout?scope=bogus".into()),
        ("POST", "otp".into()),
        ("POST", "verify".into()),
        ("GET", "verify?token=x&type=signup".into()),
        ("GET", "verify?type=nope".into()),
        ("POST", "recover".into()),
        ("POST", "resend".into()),
        ("GET", "reauthenticate".into()),
        ("POST", "invite".into()),
        ("GET", "admin/users?page=x".into()),
        ("POST", "admin/users".into()),
        ("GET", format!("admin/users/{uid}")),
        ("PUT", format!("admin/users/{uid}")),
        (
            "DELETE",
            "admin/users/83fd9e20-7a80-46e4-bf29-a86e3d6bbf66".into(),
        ),
        ("POST", "admin/generate_link".into()),
        ("GET", format!("admin/users/{uid}/factors")),
        ("POST", "admin/oauth/clients".into()),
        (
            "PUT",
            "admin/oauth/clients/83fd9e20-7a80-46e4-bf29-a86e3d6bbf66".into(),
        ),
        ("POST", "factors".into()),
        (
            "POST",
            "factors/83fd9e20-7a80-46e4-bf29-a86e3d6bbf66/verify".into(),
        ),
        ("POST", "passkeys/registration/verify".into()),
        ("POST", "passkeys/authentication/verify".into()),
        ("PATCH", "passkeys/nope".into()),
        ("GET", "inbox?email=x".into()),
        ("GET", "nope".into()),
    ];
    let bodies = [
        Value::Null,
        json!({}),
        json!([1, 2]),
        json!("text"),
        json!({"email": {"a": 1}, "password": 5}),
        json!({"email": "a@b.co", "password": "x".repeat(5000), "data": [1]}),
        json!({"phone": "++--", "token": "", "type": "sms", "challenge_id": "x", "credential": {"response": 1}}),
        json!({"refresh_token": "z".repeat(300), "auth_code": "x", "code_verifier": "y", "user_metadata": 3}),
        json!({"type": "signup", "email": "a@b.co", "redirect_to": "javascript:alert(1)", "redirect_uris": "x"}),
        json!({"ban_duration": "99999999999999h", "email_confirm": "yes"}),
        json!({"ban_duration": "99999999999999h"}),
        json!({"email": "nul@b.co", "password": "hunter22", "data": {"x": "a\u{0}b"}, "friendly_name": "\u{0}"}),
        json!({"email": "long@b.co", "role": "r".repeat(300), "friendly_name": "f".repeat(5000), "factor_type": "totp"}),
        json!({"ban_duration": "-5h", "id": "00000000-0000-0000-0000-000000000000", "email": "x@y.co"}),
        json!({"email": "a@b.co", "password": "hunter22", "id": "not-a-uuid", "password_hash": "$2a$10$short"}),
    ];
    for (m, path) in &routes {
        for key in [ANON_KEY, SERVICE_KEY, user.as_str()] {
            for b in &bodies {
                let (s, v, _) = a.call(m, path, key, b.clone()).await;
                assert!(s < 500, "{m} {path} {b} -> {s} {v}");
                if s >= 400 {
                    assert!(
                        v["code"].is_string() && v["message"].is_string(),
                        "{m} {path} -> {v}"
                    );
                }
            }
        }
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_agree() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    let r1 = a.signed_up("race@example.com").await.refresh;
    let calls = (0..6).map(|_| {
        let (a, r1) = (&a, r1.clone());
        async move { a.refresh(&r1).await }
    });
    let results = futures::future::join_all(calls).await;
    let tokens: std::collections::BTreeSet<String> = results
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 200, "{v}");
            v["refresh_token"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "one rotation, shared by every concurrent caller: {tokens:?}"
    );
    let rows = t
        .sql("select count(*) from auth.refresh_tokens where revoked = false")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    t.server.shutdown().await;
}

/// A minimal SMTP server that records what it is sent.
async fn fake_smtp() -> (u16, std::sync::Arc<tokio::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            g.lock().await.push(data.take().unwrap());
                            w.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let cmd = line.to_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-fake\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("AUTH") {
                        b"235 authenticated\r\n"
                    } else if cmd.starts_with("DATA") {
                        data = Some(String::new());
                        b"354 go on\r\n"
                    } else if cmd.starts_with("QUIT") {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, got)
}

#[tokio::test]
async fn smtp_delivery_clears_the_secret_parts_of_the_outbox() {
    let (port, got) = fake_smtp().await;
    let t = TestServer::start_with(move |c| {
        fast(c);
        c.auth.smtp_url = Some(oxibase::config::Secret(format!(
            "smtp://user:pw@127.0.0.1:{port}"
        )));
        c.auth.smtp_sender = "Oxibase <noreply@example.com>".into();
    })
    .await;
    let a = Api { t: &t };
    let (s, _) = a
        .post("otp", ANON_KEY, json!({"email": "mailme@example.com"}))
        .await;
    assert_eq!(s, 200);
    let mut sent = vec![];
    for _ in 0..50 {
        sent = got.lock().await.clone();
        if !sent.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let err = t
        .sql("select coalesce(error, '') from auth.oxibase_outbox")
        .await;
    assert_eq!(
        sent.len(),
        1,
        "one message reached SMTP: {:?}",
        err.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    );
    assert!(sent[0].contains("To: mailme@example.com"), "{}", sent[0]);
    assert!(
        sent[0].contains("Subject: Confirm Your Signup"),
        "{}",
        sent[0]
    );
    // Delivered: the outbox keeps the record, not the code.
    let row = first_row_once(
        &t,
        "select sent_at is not null, otp is null from auth.oxibase_outbox",
        25,
        |r| r.get::<_, bool>(0),
    )
    .await
    .expect("outbox row never marked sent");
    assert!(row.get::<_, bool>(1));
    t.server.shutdown().await;
}

/// The first row of `sql` once `done` holds for it, polled every 200 ms up to `tries` times.
async fn first_row_once(
    t: &TestServer,
    sql: &str,
    tries: usize,
    done: impl Fn(&tokio_postgres::Row) -> bool,
) -> Option<tokio_postgres::Row> {
    for _ in 0..tries {
        let row = t.sql(sql).await.swap_remove(0);
        if done(&row) {
            return Some(row);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test]
async fn smtp_failures_are_kept_for_retry() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = TestServer::start_with(move |c| {
        fast(c);
        c.auth.smtp_url = Some(oxibase::config::Secret(format!("smtp://127.0.0.1:{port}")));
    })
    .await;
    let a = Api { t: &t };
    let (s, _) = a
        .post("otp", ANON_KEY, json!({"email": "retry@example.com"}))
        .await;
    assert_eq!(s, 200, "the request does not wait for SMTP");
    let row = first_row_once(
        &t,
        "select attempts, error is not null, sent_at is null, otp is not null from auth.oxibase_outbox",
        50,
        |r| r.get::<_, i32>(0) >= 1,
    )
    .await
    .expect("no delivery attempt recorded");
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2) && row.get::<_, bool>(3));
    t.server.shutdown().await;
}

#[tokio::test]
async fn sessions_end_by_inactivity_and_timebox() {
    for (inactivity, timebox, message) in [
        (1, 0, "Invalid Refresh Token: Session Expired (Inactivity)"),
        (0, 1, "Invalid Refresh Token: Session Expired"),
    ] {
        let t = TestServer::start_with(move |c| {
            fast(c);
            c.auth.session_inactivity_timeout = inactivity;
            c.auth.session_timebox = timebox;
        })
        .await;
        let a = Api { t: &t };
        let r1 = a.signed_up("s@example.com").await.refresh;
        // At once: fine.
        let (s, v) = a.refresh(&r1).await;
        assert_eq!(s, 200, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let (s, v) = a.refresh(&v["refresh_token"]).await;
        assert_eq!(
            (s, v["code"].as_str(), v["message"].as_str()),
            (400, Some("session_expired"), Some(message))
        );
        t.server.shutdown().await;
    }
}

#[tokio::test]
async fn custom_email_templates_and_subjects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("confirmation.html"),
        "<p>Hi {{ .Email }}</p><a href=\"{{ .ConfirmationURL }}\">Confirm</a> or {{.Token}} at {{ .SiteURL }}",
    )
    .unwrap();
    let p = dir.path().to_path_buf();
    let t = TestServer::start_with(move |c| {
        fast(c);
        c.auth.email_templates_dir = Some(p);
        c.auth
            .email_subjects
            .insert("confirmation".into(), "Welcome aboard".into());
    })
    .await;
    let a = Api { t: &t };
    let (s, _) = a
        .post("otp", ANON_KEY, json!({"email": "tpl@example.com"}))
        .await;
    assert_eq!(s, 200);
    let m = &a.inbox("tpl@example.com").await[0];
    assert_eq!(m["subject"], "Welcome aboard");
    assert_eq!(m["html"], true);
    let body = m["body"].as_str().unwrap();
    let link = m["action_link"].as_str().unwrap();
    let otp = m["otp"].as_str().unwrap();
    assert_eq!(
        body,
        format!("<p>Hi tpl@example.com</p><a href=\"{link}\">Confirm</a> or {otp} at http://localhost:3000")
    );
    // Kinds without a template keep the built-in text.
    let (s, _) = a
        .post(
            "admin/users",
            SERVICE_KEY,
            json!({"email": "plain@example.com", "email_confirm": true}),
        )
        .await;
    assert_eq!(s, 200);
    a.post("recover", ANON_KEY, json!({"email": "plain@example.com"}))
        .await;
    let m = &a.inbox("plain@example.com").await[0];
    assert_eq!(
        (m["subject"].as_str(), m["html"].as_bool()),
        (Some("Reset Your Password"), Some(false))
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_sign_ups_for_one_address() {
    let t = TestServer::start_with(fast).await;
    let a = Api { t: &t };
    let calls = (0..5).map(|_| {
        let a = &a;
        async move {
            a.post(
                "signup",
                ANON_KEY,
                json!({"email": "twin@example.com", "password": "hunter22"}),
            )
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{results:?}");
    for (s, v) in results.iter().filter(|(s, _)| *s != 200) {
        assert_eq!((*s, v["code"].as_str()), (422, Some("user_already_exists")));
    }
    assert_eq!(
        t.sql("select 1 from auth.users where email = 'twin@example.com'")
            .await
            .len(),
        1
    );
    t.server.shutdown().await;
}
