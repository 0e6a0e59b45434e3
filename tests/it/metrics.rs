//! `GET /metrics`: refused without the service_role key; the text is Prometheus
//! exposition; request counters move by exactly the requests made; pool gauges present.
use std::collections::BTreeMap;

use crate::common;

use common::{TestServer, ANON_KEY, SERVICE_KEY};

/// Samples of a Prometheus text exposition: `name{labels}` → value. Panics on a line that
/// is not a comment, a blank or `name[{k="v",...}] value`, and on a sample whose family
/// has no `# TYPE`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels: {line}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE for {name}");
        out.insert(series.to_string(), value);
    }
    out
}

async fn scrape(t: &TestServer) -> BTreeMap<String, f64> {
    let r = t
        .http
        .get(&format!("{}/metrics", t.url), &[("apikey", SERVICE_KEY)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    parse(&r.text())
}

/// The sum of `name`'s samples whose labels include every one of `labels`.
fn sum(m: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .filter(|(k, _)| labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn only_the_service_key_reads_metrics() {
    let t = TestServer::start().await;
    let url = format!("{}/metrics", t.url);
    let none = t.http.get(&url, &[]).await;
    assert_eq!(none.status, 401, "{}", none.text());
    assert!(none.json()["message"].is_string());
    let anon = t.http.get(&url, &[("apikey", ANON_KEY)]).await;
    assert_eq!(anon.status, 403, "{}", anon.text());
    assert!(anon.json()["message"].is_string());
    let bearer_anon = format!("Bearer {ANON_KEY}");
    let r = t
        .http
        .get(
            &url,
            &[("apikey", SERVICE_KEY), ("authorization", &bearer_anon)],
        )
        .await;
    assert_eq!(r.status, 403, "the bearer decides, as elsewhere");
    let (_, user) = t.user().await;
    let r = t
        .http
        .get(&url, &[("authorization", &format!("Bearer {user}"))])
        .await;
    assert_eq!(r.status, 403);
    let r = t
        .http
        .get(&url, &[("authorization", "Bearer not-a-token")])
        .await;
    assert_eq!(r.status, 401);
    assert!(!r.text().contains("oxibase_http"));
    let bearer = format!("Bearer {SERVICE_KEY}");
    let r = t.http.get(&url, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("oxibase_http_requests_total"));
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let t = TestServer::start_with(|c| c.metrics.enabled = false).await;
    let r = t
        .http
        .get(&format!("{}/metrics", t.url), &[("apikey", SERVICE_KEY)])
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn request_counters_move_by_the_requests_made() {
    let t = TestServer::start().await;
    t.batch(
        "create table public.m_items (id int primary key); grant select on public.m_items to anon;",
    )
    .await;
    // Warm up, so both scrapes see every series this test reads.
    t.http
        .get(
            &format!("{}/rest/v1/m_items", t.url),
            &[("apikey", ANON_KEY)],
        )
        .await;
    let before = scrape(&t).await;
    let rest = r#"oxibase_http_requests_total{api="rest""#;
    let (get, ok) = (r#"method="GET""#, r#"status="200""#);
    for _ in 0..7 {
        let r = t
            .http
            .get(
                &format!("{}/rest/v1/m_items", t.url),
                &[("apikey", ANON_KEY)],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let missing = t
        .http
        .get(
            &format!("{}/rest/v1/m_nope", t.url),
            &[("apikey", ANON_KEY)],
        )
        .await;
    assert_eq!(missing.status, 404);
    let auth = t
        .http
        .get(
            &format!("{}/auth/v1/health", t.url),
            &[("apikey", ANON_KEY)],
        )
        .await;
    let after = scrape(&t).await;
    let name = "oxibase_http_requests_total";
    let delta = |labels: &[&str]| sum(&after, name, labels) - sum(&before, name, labels);
    assert_eq!(delta(&[r#"api="rest""#]), 8.0, "{rest}");
    assert_eq!(delta(&[r#"api="rest""#, get, ok]), 7.0);
    // Table names are not labels: both tables share one route template.
    assert_eq!(delta(&[r#"route="/rest/v1/:param""#]), 8.0);
    assert!(
        !after.keys().any(|k| k.contains("m_items")),
        "a table name became a label"
    );
    assert_eq!(delta(&[r#"api="rest""#, r#"status="404""#]), 1.0);
    let auth_status = format!(r#"status="{}""#, auth.status);
    assert_eq!(delta(&[r#"api="auth""#, &auth_status]), 1.0);
    let hist = "oxibase_http_request_duration_seconds_count";
    assert_eq!(
        sum(&after, hist, &[r#"api="rest""#]) - sum(&before, hist, &[r#"api="rest""#]),
        8.0
    );
    // Pool gauges, read at scrape time.
    for state in ["max", "size", "in_use", "idle", "waiting"] {
        let key = format!(r#"oxibase_db_pool_connections{{pool="request",state="{state}"}}"#);
        assert!(after.contains_key(&key), "{key}");
    }
    let max = after[r#"oxibase_db_pool_connections{pool="request",state="max"}"#];
    assert_eq!(max, 4.0, "the test server's pool size");
    let size = after[r#"oxibase_db_pool_connections{pool="request",state="size"}"#];
    assert!(size <= max);
    assert!(after["process_resident_memory_bytes"] > 1e6);
    assert!(after["process_open_fds"] > 3.0);
    assert!(after.contains_key(r#"oxibase_realtime_open{kind="sockets"}"#));
    assert!(after.contains_key("oxibase_realtime_rls_round_trips_total"));
}

#[tokio::test]
async fn storage_bytes_move_by_the_bodies_sent() {
    let t = TestServer::start().await;
    let key = [
        ("apikey", SERVICE_KEY),
        ("content-type", "application/json"),
    ];
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/bucket", t.url),
            &key,
            r#"{"name":"m-bytes"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = scrape(&t).await;
    let body = vec![b'x'; 1000];
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/m-bytes/a.bin", t.url),
            &[
                ("apikey", SERVICE_KEY),
                ("content-type", "application/octet-stream"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t
        .http
        .get(
            &format!("{}/storage/v1/object/m-bytes/a.bin", t.url),
            &[("apikey", SERVICE_KEY)],
        )
        .await;
    assert_eq!(r.body.len(), 1000);
    let after = scrape(&t).await;
    let name = "oxibase_storage_bytes_total";
    let delta = |l: &str| sum(&after, name, &[l]) - sum(&before, name, &[l]);
    assert_eq!(delta(r#"direction="in""#), 1000.0);
    assert!(delta(r#"direction="out""#) >= 1000.0);
}

#[tokio::test]
async fn code_runs_are_counted_by_outcome() {
    let t = TestServer::start_with(|cfg| {
        cfg.functions.code_sandbox_exe = Some(env!("CARGO_BIN_EXE_oxibase").into());
    })
    .await;
    let (_, token) = t.user().await;
    let bearer = format!("Bearer {token}");
    for code in ["print(1)", "print(2)", "1/0"] {
        let r = t
            .http
            .send(
                "POST",
                &format!("{}/functions/v1/code-execution", t.url),
                &[
                    ("authorization", bearer.as_str()),
                    ("apikey", ANON_KEY),
                    ("content-type", "application/json"),
                ],
                serde_json::json!({"language": "python", "code": code}).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let m = scrape(&t).await;
    assert_eq!(m[r#"oxibase_code_runs_total{status="success"}"#], 2.0);
    assert_eq!(m[r#"oxibase_code_runs_total{status="error"}"#], 1.0);
    // Every call is counted as its api_usage row is written (after the answer).
    let calls = r#"function="code-execution""#;
    let mut n = 0.0;
    for _ in 0..50 {
        n = sum(&scrape(&t).await, "oxibase_function_calls_total", &[calls]);
        if n >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(n, 3.0);
}
