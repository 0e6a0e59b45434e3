//! Forged and stale tokens against every API: REST, Auth's /user, Storage, a realtime
//! channel join and a function. The server trusts an ES256 and an RS256 key (jwt_keys_file)
//! beside the HS256 secret; each attack must be refused with that API's own status and shape. The
//! results are printed as a table (`cargo test --test it token_attacks:: -- --nocapture`).

use crate::common;

use std::time::Duration;

use common::{TestServer, ANON_KEY};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The server's own signing key (a test key).
const SERVER_JWK: &str = r#"{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "oxibase-test-es256", "use": "sig", "x": "L6NrnM4kRlaFwZPPYzgNdAz_W3BaDLhlMdzhh_iXAZk", "y": "SzNa6WH4gU-0jMvC5qvi7JPhn9jNmRIsWTaN0cZB-Yk", "d": "ZzQcbjAaEHNEuxYQg5h9MiqMjIi7koJnZT3b0HQLRbs"}"#;

/// A trusted RS256 public key (verification only; its private half was never kept), and its
/// PEM, the material an HS/RS confusion attack would use as an HMAC secret.
const SERVER_RSA_JWK: &str = r#"{"kty":"RSA","alg":"RS256","kid":"oxibase-test-rs256","use":"sig","n":"yR9RAFw5NbJ_FbNgoLJ3qyUk_oyLQUF3nF53H8_vQ0NnpnKbFqze4tmGH-kX8rGKIB9V3j_s_L05NSqs938LG5FhA-v6H4hPyYCJNCHHLGbpRgkgtfV_USmolqW_zFvCDTJtjfo0ywexi6qhN3gcLSkyFzO5lzRioSFtAzSsN3kuVzQEjihHgUgOXGMofeupDgl_wvorxQCQHizHMu7tIK3938V-1ef_jDTAbRQO6l32ClgB5085GYBDdcSH0Ac4vYz2bFbNnF1clMeiCoeh8yedOVPlsCGGPIZtC4zkXEl6mbU8NOWJAUWlqzbJobRPxktHQWNLg4gYxU8Lb1ULQQ","e":"AQAB"}"#;
const SERVER_RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyR9RAFw5NbJ/FbNgoLJ3
qyUk/oyLQUF3nF53H8/vQ0NnpnKbFqze4tmGH+kX8rGKIB9V3j/s/L05NSqs938L
G5FhA+v6H4hPyYCJNCHHLGbpRgkgtfV/USmolqW/zFvCDTJtjfo0ywexi6qhN3gc
LSkyFzO5lzRioSFtAzSsN3kuVzQEjihHgUgOXGMofeupDgl/wvorxQCQHizHMu7t
IK3938V+1ef/jDTAbRQO6l32ClgB5085GYBDdcSH0Ac4vYz2bFbNnF1clMeiCoeh
8yedOVPlsCGGPIZtC4zkXEl6mbU8NOWJAUWlqzbJobRPxktHQWNLg4gYxU8Lb1UL
QQIDAQAB
-----END PUBLIC KEY-----
";

/// An attacker's key pair (a test key the server never trusts).
const ATTACKER_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgPwZKMmkUG3ZphYSw
NE7Ft47s3z/RIIO66Ijx+rAd/C2hRANCAAT7OD5LBvoIYOYwoKtYkF4B+PZv8mtu
MuO+ormcSzRHKwr8CtnsUBglMdqPoPN9Fr9lT6lJouyEFsyaFueMH+sV
-----END PRIVATE KEY-----
";
const ATTACKER_JWK: &str = r#"{"kty":"EC","crv":"P-256","alg":"ES256","kid":"attacker","x":"-zg-Swb6CGDmMKCrWJBeAfj2b_JrbjLjvqK5nEs0Rys","y":"CvwK2exQGCUx2o-g830Wv2VPqUmi7IQWzJoW54wf6xU"}"#;

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn claims(sub: &str, role: &str, exp_in: i64) -> Value {
    json!({
        "sub": sub, "role": role, "aud": "authenticated",
        "exp": chrono::Utc::now().timestamp() + exp_in,
        "iat": chrono::Utc::now().timestamp(),
    })
}

fn attacker_signed(header: Header, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(ATTACKER_PEM.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// The attacks: (name, token). `user` exists; `gone` was deleted.
fn attacks(t: &TestServer, user: &str, gone: &str, jwks_text: &str) -> Vec<(&'static str, String)> {
    let keys = &t.server.state.keys.jwt;
    let good = claims(user, "authenticated", 600);
    let mut out = vec![];
    out.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims(user, "service_role", 600).to_string().as_bytes())
        ),
    ));
    out.push((
        "wrong HS256 key",
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"not-the-server-secret-not-the-server-secret"),
        )
        .unwrap(),
    ));
    out.push(("expired", keys.sign(&claims(user, "authenticated", -3600))));
    // A real token whose payload was swapped for service_role (signature left as is).
    let real = keys.sign(&good);
    let mut parts: Vec<&str> = real.split('.').collect();
    let forged_payload = b64(claims(user, "service_role", 600).to_string().as_bytes());
    parts[1] = &forged_payload;
    out.push(("forged role", parts.join(".")));
    // HS/RS confusion: HS256 "signed" with the server's published public key material.
    let public: Value = serde_json::from_str(jwks_text).unwrap();
    let jwk = &public["keys"][0];
    let rsa = public["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap();
    for (name, kid, secret) in [
        ("HS256 w/ EC JWK", &jwk["kid"], jwk.to_string().into_bytes()),
        (
            "HS256 w/ RSA JWK",
            &rsa["kid"],
            rsa.to_string().into_bytes(),
        ),
        (
            "HS256 w/ RSA PEM",
            &rsa["kid"],
            SERVER_RSA_PEM.as_bytes().to_vec(),
        ),
        (
            "HS256 w/ JWKS text",
            &jwk["kid"],
            jwks_text.as_bytes().to_vec(),
        ),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.as_str().map(str::to_string);
        out.push((
            name,
            jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(&secret)).unwrap(),
        ));
    }
    // The attacker's key carried in the header (jwk), or pointed at (jku).
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("oxibase-test-es256".into());
    h.jwk = Some(serde_json::from_str(ATTACKER_JWK).unwrap());
    out.push(("embedded jwk", attacker_signed(h, &good)));
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("attacker".into());
    h.jku = Some("http://127.0.0.1:9/.well-known/jwks.json".into());
    out.push(("jku header", attacker_signed(h, &good)));
    out.push((
        "deleted user",
        keys.sign(&claims(gone, "authenticated", 600)),
    ));
    out
}

async fn rest(t: &TestServer, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/conversations?select=id", t.url),
            &[("apikey", ANON_KEY), ("authorization", &auth)],
        )
        .await;
    let v = r.json();
    if r.status == 200 {
        return (200, format!("{} rows", v.as_array().map_or(0, Vec::len)));
    }
    assert!(
        v["message"].is_string() && v.get("details").is_some() && v.get("hint").is_some(),
        "{v}"
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer")),
        "{v}"
    );
    (r.status, v["code"].as_str().unwrap_or("").to_string())
}

async fn auth_user(t: &TestServer, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let r = t
        .http
        .get(
            &format!("{}/auth/v1/user", t.url),
            &[("apikey", ANON_KEY), ("authorization", &auth)],
        )
        .await;
    let v = r.json();
    if r.status == 200 {
        return (200, "user".into());
    }
    assert!(v["code"] == r.status || v["code"] == v["error_code"], "{v}");
    assert!(v["msg"].is_string(), "{v}");
    (r.status, v["error_code"].as_str().unwrap_or("").to_string())
}

async fn storage(t: &TestServer, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let r = t
        .http
        .get(
            &format!("{}/storage/v1/bucket", t.url),
            &[("apikey", ANON_KEY), ("authorization", &auth)],
        )
        .await;
    let v = r.json();
    if r.status == 200 {
        return (200, "buckets".into());
    }
    assert!(
        v["statusCode"].is_string() && v["error"].is_string() && v["message"].is_string(),
        "{v}"
    );
    (r.status, v["error"].as_str().unwrap().to_string())
}

async fn function(t: &TestServer, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let r = t
        .http
        .get(
            &format!("{}/functions/v1/file-upload", t.url),
            &[("apikey", ANON_KEY), ("authorization", &auth)],
        )
        .await;
    let v = r.json();
    if r.status == 200 {
        return (200, "listed".into());
    }
    assert!(v["error"]["message"].is_string(), "{v}");
    (
        r.status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// Join a public channel with `token` as the access token: the reply's status and reason.
async fn realtime_join(t: &TestServer, token: &str) -> (u16, String) {
    let url = format!(
        "{}/realtime/v1/websocket?apikey={ANON_KEY}&vsn=1.0.0",
        t.url.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let join = json!({
        "topic": "realtime:attack-room", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"broadcast": {"self": false}, "presence": {"key": ""}, "private": false}, "access_token": token},
    });
    ws.send(Message::Text(join.to_string())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(s) = m {
                let v: Value = serde_json::from_str(&s).unwrap();
                if v["event"] == "phx_reply" && v["ref"] == "1" {
                    return v;
                }
            }
        }
        panic!("socket closed before the join reply")
    })
    .await
    .expect("a join reply");
    let _ = ws.close(None).await;
    let status = &reply["payload"]["status"];
    if status == "ok" {
        return (200, "joined".into());
    }
    assert_eq!(status, "error", "{reply}");
    let reason = reply["payload"]["response"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    // Realtime's reasons are "Kind: sentence"; the table shows the kind.
    (0, reason.split(':').next().unwrap_or("").to_string())
}

#[tokio::test]
async fn forged_and_stale_tokens_are_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, format!("[{SERVER_JWK}, {SERVER_RSA_JWK}]")).unwrap();
    let t = TestServer::start_with(|c| c.jwt_keys_file = Some(keys_file.clone())).await;
    let (user, user_token) = t.user().await;
    let (gone, _) = t.user().await;
    t.batch(&format!("delete from auth.users where id = '{gone}'"))
        .await;
    let jwks = t
        .http
        .get(&format!("{}/auth/v1/.well-known/jwks.json", t.url), &[])
        .await
        .text();

    // The control: the user's real token is accepted by each API.
    let control = t
        .server
        .state
        .keys
        .jwt
        .sign(&claims(&user, "authenticated", 600));
    assert_eq!(rest(&t, &control).await.0, 200);
    assert_eq!(auth_user(&t, &control).await.0, 200);
    assert_eq!(storage(&t, &control).await.0, 200);
    assert_eq!(function(&t, &control).await.0, 200);
    assert_eq!(realtime_join(&t, &control).await.0, 200);
    // (and the harness's HS256 token too)
    assert_eq!(rest(&t, &user_token).await.0, 200);

    let mut table = vec![format!(
        "{:<20} | {:<14} | {:<24} | {:<19} | {:<21} | {}",
        "attack", "rest", "auth /user", "storage", "function", "realtime join"
    )];
    let mut failures = vec![];
    for (name, token) in attacks(&t, &user, &gone, &jwks) {
        let r = rest(&t, &token).await;
        let a = auth_user(&t, &token).await;
        let s = storage(&t, &token).await;
        let f = function(&t, &token).await;
        let rt = realtime_join(&t, &token).await;
        let cell = |(s, c): &(u16, String)| {
            if *s == 0 {
                format!("error {c}")
            } else {
                format!("{s} {c}")
            }
        };
        table.push(format!(
            "{:<20} | {:<14} | {:<24} | {:<19} | {:<21} | {}",
            name,
            cell(&r),
            cell(&a),
            cell(&s),
            cell(&f),
            cell(&rt)
        ));
        if name == "deleted user" {
            // As Supabase: PostgREST and Storage run the request as the token's role (RLS
            // sees no user rows), Realtime joins a public channel on a valid token; GoTrue
            // and the functions refuse a user who no longer exists.
            let ok = r == (200, "0 rows".into())
                && a == (403, "user_not_found".into())
                && s.0 == 200
                && f == (401, "unauthorized".into())
                && rt.0 == 200;
            if !ok {
                failures.push(name);
            }
            continue;
        }
        let expected_rest = if name == "expired" {
            "PGRST303"
        } else {
            "PGRST301"
        };
        let ok = r == (401, expected_rest.into())
            && a == (403, "bad_jwt".into())
            && matches!(s.0, 400 | 401 | 403)
            && f == (401, "unauthorized".into())
            && rt.0 == 0
            && matches!(
                rt.1.as_str(),
                "InvalidJWTToken" | "JwtSignatureError" | "MalformedJWT"
            );
        if !ok {
            failures.push(name);
        }
    }
    println!("\n{}\n", table.join("\n"));
    assert!(
        failures.is_empty(),
        "not refused as expected: {failures:?}\n{}",
        table.join("\n")
    );
}
