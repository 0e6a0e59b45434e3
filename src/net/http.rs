//! One queued request, executed: what pg_net's curl handle does, with reqwest.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// pg_net adds this User-Agent to every request.
pub const USER_AGENT: &str = "pg_net/0.20.0";

/// A row taken off `net.http_request_queue`.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub method: String,
    pub url: String,
    pub headers: Option<Value>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: i32,
}

/// A row for `net._http_response` (besides `id` and `created`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub status_code: Option<i32>,
    pub content_type: Option<String>,
    pub headers: Option<Value>,
    pub content: Option<String>,
    pub timed_out: bool,
    pub error_msg: Option<String>,
}

impl Outcome {
    fn error(msg: &str) -> Outcome {
        Outcome {
            error_msg: Some(msg.to_string()),
            ..Outcome::default()
        }
    }
}

fn timeout_message(timeout_ms: i32, started: Instant) -> String {
    let total = started.elapsed().as_secs_f64() * 1000.0;
    // The phases curl reports are not visible through reqwest: the whole time is
    // attributed to the request/response step.
    format!(
        "Timeout of {timeout_ms} ms reached. Total time: {total:.6} ms (DNS time: {:.6} ms, \
         TCP/SSL handshake time: {:.6} ms, HTTP Request/Response time: {total:.6} ms)",
        0.0, 0.0
    )
}

/// The outcome of a request that failed while sending or while reading the body.
fn failure(e: &reqwest::Error, timeout_ms: i32, started: Instant) -> Outcome {
    if e.is_timeout() {
        Outcome {
            timed_out: true,
            error_msg: Some(timeout_message(timeout_ms, started)),
            ..Outcome::default()
        }
    } else {
        Outcome::error(error_message(e))
    }
}

/// curl's words for the failures a request can meet (pg_net stores `curl_easy_strerror`).
fn error_message(e: &reqwest::Error) -> &'static str {
    let chain = {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(x) = src {
            s.push_str(": ");
            s.push_str(&x.to_string());
            src = x.source();
        }
        s.to_lowercase()
    };
    if e.is_builder() {
        "URL using bad/illegal format or missing URL"
    } else if e.is_redirect() {
        "Number of redirects hit maximum amount"
    } else if chain.contains("dns") || chain.contains("failed to lookup") {
        "Couldn't resolve host name"
    } else if e.is_connect() {
        "Couldn't connect to server"
    } else {
        "Failure when receiving data from the peer"
    }
}

pub async fn execute(client: &reqwest::Client, q: &Queued) -> Outcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(q.timeout_ms.max(0) as u64);
    let Ok(url) = reqwest::Url::parse(&q.url) else {
        return Outcome::error("URL using bad/illegal format or missing URL");
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Outcome::error("Unsupported protocol");
    }
    let method = match q.method.to_ascii_uppercase().as_str() {
        "GET" => reqwest::Method::GET,
        "POST" => reqwest::Method::POST,
        "DELETE" => reqwest::Method::DELETE,
        other => return Outcome::error(&format!("Unsupported request method {other}")),
    };
    let mut req = client.request(method, url).header("User-Agent", USER_AGENT);
    if let Some(Value::Object(h)) = &q.headers {
        for (k, v) in h {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            req = req.header(k.as_str(), v);
        }
    }
    if let Some(b) = &q.body {
        req = req.body(b.clone());
    }
    if q.timeout_ms > 0 {
        req = req.timeout(timeout);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return failure(&e, q.timeout_ms, started),
    };
    let status = resp.status().as_u16() as i32;
    let mut headers = Map::new();
    for (k, v) in resp.headers() {
        headers.insert(
            k.as_str().to_string(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return failure(&e, q.timeout_ms, started),
    };
    // Stored as text, like pg_net (which keeps the bytes up to the first NUL).
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    let content = (end > 0).then(|| String::from_utf8_lossy(&body[..end]).into_owned());
    Outcome {
        status_code: Some(status),
        content_type,
        headers: Some(Value::Object(headers)),
        content,
        timed_out: false,
        error_msg: None,
    }
}
