//! The built-in dashboard at `/_/`: server-rendered pages (maud escapes every value) with
//! a little progressive JavaScript, CSS and JS embedded in the binary.
//!
//! Every request passes [`access`] first: a session (signed in, or opened for loopback with
//! the local secret), and for every state-changing request its CSRF token. Changes go
//! through the APIs' own code (auth admin routes, storage bucket functions, the storage
//! and realtime APIs from the page's JS); the SQL and table editors work as the database
//! superuser, as Supabase Studio's SQL editor does, with identifiers quoted and values bound.

mod access;
mod db;
mod functions;
mod layout;
mod logs;
mod overview;
mod realtime;
mod sql;
mod storage;
mod tables;
mod tables_edit;
mod users;

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use maud::Markup;
use serde_json::Value;

use crate::http::{full, Req, Resp};
use crate::state::AppState;

pub use logs::LogEntry;

/// The path the dashboard is served under.
pub const PREFIX: &str = "/_/";

/// What the dashboard keeps while the server runs.
pub struct State {
    pub started: Instant,
    access: access::Access,
    /// Recent requests, fed where the request log line is written.
    pub log: logs::Ring,
    samples: overview::Samples,
}

pub fn init(cfg: &crate::Config) -> Result<State, String> {
    Ok(State {
        started: Instant::now(),
        access: access::Access::new(&cfg.dashboard)?,
        log: logs::Ring::new(500),
        samples: overview::Samples::default(),
    })
}

/// Samples the request counters every few seconds for the overview's charts.
pub fn spawn_background(state: &AppState) {
    overview::spawn_sampler(state);
}

/// Whether `path` is the dashboard's.
pub fn owns(path: &str) -> bool {
    path == "/_" || path.starts_with(PREFIX)
}

/// A parsed request: what the pages need, the body read already.
pub struct DashReq {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: http::HeaderMap,
    pub form: Vec<(String, String)>,
    pub json: Value,
    pub peer: SocketAddr,
    /// The session's CSRF token (for the forms the page renders).
    pub csrf: String,
}

impl DashReq {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    /// A form field (or, for JSON bodies, a string member).
    pub fn f(&self, k: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .or_else(|| self.json.get(k).and_then(Value::as_str))
    }
    pub fn fs(&self, k: &str) -> String {
        self.f(k).unwrap_or("").trim().to_string()
    }
}

/// A page or action error: shown to the dashboard user (who is the project's admin).
#[derive(Debug)]
pub enum DashError {
    NotFound,
    Bad(String),
}

impl From<String> for DashError {
    fn from(s: String) -> Self {
        DashError::Bad(s)
    }
}

pub type DashResult<T> = Result<T, DashError>;

const BODY_LIMIT: usize = 1024 * 1024;

pub async fn handle(state: &AppState, req: Req, peer: SocketAddr) -> Resp {
    let mut resp = if !state.config.dashboard.enabled {
        text(StatusCode::NOT_FOUND, "the dashboard is disabled")
    } else {
        route(state, req, peer).await
    };
    secure_headers(resp.headers_mut());
    resp
}

/// The headers of every dashboard answer: no framing, no inline script, no caching.
fn secure_headers(h: &mut http::HeaderMap) {
    let csp =
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
               connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
               frame-ancestors 'none'";
    h.insert("content-security-policy", HeaderValue::from_static(csp));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // The API's CORS headers do not apply to the dashboard: same origin only.
    let cors: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for k in cors {
        h.remove(k);
    }
}

async fn route(state: &AppState, req: Req, peer: SocketAddr) -> Resp {
    let path = req.uri().path().to_string();
    if path == "/_" {
        return redirect(PREFIX);
    }
    let rest = path[PREFIX.len()..].trim_end_matches('/').to_string();
    let method = req.method().clone();
    // Assets are public (no data in them).
    if method == Method::GET {
        if let Some(a) = asset(&rest) {
            return a;
        }
    }
    let query = crate::http::query_pairs(req.uri().query());
    let headers = req.headers().clone();
    let body = match crate::http::body::read_limited(req.into_body(), BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
    };
    let (form, json) = parse_body(&headers, &body);
    let mut dreq = DashReq {
        method,
        path: rest,
        query,
        headers,
        form,
        json,
        peer,
        csrf: String::new(),
    };
    match access::check(state, &mut dreq).await {
        access::Verdict::Proceed(cookie) => {
            let mut resp = dispatch(state, &dreq).await;
            if let Some(c) = cookie {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        access::Verdict::Answer(resp) => resp,
    }
}

fn parse_body(headers: &http::HeaderMap, body: &Bytes) -> (Vec<(String, String)>, Value) {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") {
        (vec![], serde_json::from_slice(body).unwrap_or(Value::Null))
    } else {
        (
            form_urlencoded::parse(body).into_owned().collect(),
            Value::Null,
        )
    }
}

async fn dispatch(state: &AppState, r: &DashReq) -> Resp {
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    let page = |m: DashResult<Markup>| match m {
        Ok(m) => html(StatusCode::OK, m),
        Err(e) => error_page(r, e),
    };
    match r.path.as_str() {
        "" if get => page(overview::page(state, r).await),
        "api/keys" if get => overview::keys(state),
        "api/metrics" if get => overview::metrics_json(state),
        "signout" if post => access::sign_out(state, r),
        "sql" if get => page(sql::page(r)),
        "api/sql" if post => sql::run(state, r).await,
        "tables" if get => page(tables::page(state, r).await),
        p if post && p.starts_with("tables/") => tables::action(state, r, &p[7..]).await,
        "users" if get => page(users::page(state, r).await),
        p if post && p.starts_with("users/") => users::action(state, r, &p[6..]).await,
        "storage" if get => page(storage::page(state, r).await),
        "storage/download" if get => storage::download(state, r).await,
        p if post && p.starts_with("storage/") => storage::action(state, r, &p[8..]).await,
        "logs" if get => page(logs::page(state, r)),
        "realtime" if get => page(Ok(realtime::page(r))),
        "functions" if get => page(functions::page(state, r).await),
        _ => error_page(r, DashError::NotFound),
    }
}

fn error_page(r: &DashReq, e: DashError) -> Resp {
    let (status, msg) = match e {
        DashError::NotFound => (StatusCode::NOT_FOUND, "Not found".to_string()),
        DashError::Bad(m) => (StatusCode::BAD_REQUEST, m),
    };
    let body = maud::html! { div.card { h2 { "Something went wrong" } p.error { (msg) } } };
    html(status, layout::page(r, "Error", "", body))
}

fn asset(name: &str) -> Option<Resp> {
    let (body, ct): (&'static str, &str) = match name {
        "assets/app.css" => (include_str!("assets/app.css"), "text/css; charset=utf-8"),
        "assets/app.js" => (
            include_str!("assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "assets/icon.svg" => (include_str!("assets/icon.svg"), "image/svg+xml"),
        "assets/realtime.js" => (
            include_str!("assets/realtime.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return None,
    };
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).ok()?);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Some(r)
}

pub fn html(status: StatusCode, m: Markup) -> Resp {
    let mut r = Response::new(full(m.into_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

pub fn text(status: StatusCode, msg: &str) -> Resp {
    let mut r = Response::new(full(msg.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(status: StatusCode, v: &Value) -> Resp {
    crate::http::json_response(status, v)
}

/// 303 to a dashboard location (after a form's change).
pub fn redirect(to: &str) -> Resp {
    let mut r = Response::new(crate::http::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Back to `page` (a dashboard path with its query) with a message shown once.
pub fn back(page: &str, result: Result<String, String>) -> Resp {
    let (k, m) = match result {
        Ok(m) => ("msg", m),
        Err(m) => ("err", m),
    };
    let sep = if page.contains('?') { '&' } else { '?' };
    let enc: String = form_urlencoded::byte_serialize(m.as_bytes()).collect();
    redirect(&format!("{PREFIX}{page}{sep}{k}={enc}"))
}

/// A query string from pairs, encoded.
pub fn qs(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    s.finish()
}

/// An in-process API answer read back: `Ok(body)` for a 2xx, else the API's message.
pub async fn answer_json(resp: Resp) -> Result<Value, String> {
    use http_body_util::BodyExt;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(v)
    } else {
        Err(["msg", "message", "error_description", "error"]
            .iter()
            .find_map(|k| v.get(k).and_then(Value::as_str))
            .unwrap_or(status.as_str())
            .to_string())
    }
}
