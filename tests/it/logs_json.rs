//! `log_format = "json"`: one JSON object per request line with the request id, API,
//! method, path, status, latency and the caller's role and user; the JWT secret, the
//! bearer token and the apikey never reach the log.
use serde_json::{json, Value};

use crate::common::spawned::{Http, Opts, Spawned};

const SECRET: &str = "log-test-secret-0123456789-abcdefghijklmnop";

#[tokio::test]
async fn json_request_lines_carry_identity_but_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        toml: format!("log_format = \"json\"\njwt_secret = \"{SECRET}\"\n"),
        ..Opts::default()
    };
    let mut s = Spawned::start(dir.path(), &opts).await;
    let keys = oxibase::jwt::JwtKeys::new(SECRET);
    let user = uuid::Uuid::new_v4().to_string();
    let token = keys.sign_hs256(&json!({
        "sub": user, "role": "authenticated", "aud": "authenticated",
        "exp": chrono::Utc::now().timestamp() + 600,
    }));
    let anon = keys.sign_hs256(&json!({"role": "anon", "ref": "log-test"}));
    let opaque = oxibase::identity::OpaqueKeys::for_secret(SECRET);
    let http = Http::new(None);
    let bearer = format!("Bearer {token}");
    let r = http
        .get(
            &format!("{}/rest/v1/nope_table?select=id&apikey={anon}", s.url),
            &[
                ("apikey", anon.as_str()),
                ("authorization", bearer.as_str()),
                ("x-request-id", "req-log-test-1"),
            ],
        )
        .await
        .unwrap();
    let status = r.status;
    let r2 = http
        .get(
            &format!("{}/storage/v1/bucket", s.url),
            &[
                ("apikey", opaque.secret.as_str()),
                ("x-request-id", "req-log-test-2"),
            ],
        )
        .await
        .unwrap();
    assert!(s.stop(std::time::Duration::from_secs(20)), "clean stop");
    let log = s.logs();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect();
    assert!(lines.len() > 3, "JSON log lines expected:\n{log}");
    let find = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}:\n{log}"))
            .clone()
    };
    let one = find("req-log-test-1");
    assert_eq!(one["level"], "INFO");
    assert_eq!(one["api"], "rest");
    assert_eq!(one["method"], "GET");
    assert_eq!(one["path"], "/rest/v1/nope_table");
    assert_eq!(one["status"], status);
    assert!(
        one["latency_ms"].as_f64().is_some_and(|v| v >= 0.0),
        "{one}"
    );
    assert_eq!(one["role"], "authenticated");
    assert_eq!(one["user_id"], user.as_str());
    let two = find("req-log-test-2");
    assert_eq!(two["api"], "storage");
    assert_eq!(two["status"], r2.status);
    assert_eq!(two["role"], "service_role");
    assert!(two.get("user_id").is_none(), "{two}");
    // The secrets: nowhere in the whole output (stdout's banner included) ...
    let signature = token.rsplit('.').next().unwrap();
    for secret in [SECRET, token.as_str(), signature, anon.as_str()] {
        assert!(!log.contains(secret), "a secret in the log: {secret}");
    }
    // ... and the secret API key (which the banner shows by design) in no log line.
    for l in &lines {
        assert!(!l.to_string().contains(&opaque.secret), "{l}");
    }
}
