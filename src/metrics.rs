//! Prometheus metrics at `GET /metrics` (service_role key only; `[metrics] enabled`).
//!
//! Counted on the way (cheap, in the one place every request passes): requests by API,
//! route, method and status, their latency by API, code-execution runs by status, function
//! calls with the providers' tokens and errors (where `api_usage` is written). Read at
//! scrape time (no bookkeeping on hot paths): database pools, realtime sockets and
//! channels, postgres_changes RLS round trips, process RSS and open descriptors.
//! Label values are bounded: the API (first path segment), the route template (path
//! segments outside a fixed vocabulary collapse to `:param`, and at most
//! [`MAX_ROUTES`] distinct templates are kept), a known method, the status, the four
//! function names and the providers' names.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, RwLock};

use http::{HeaderValue, Method, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde_json::json;

use crate::http::{json_response, Req, Resp};
use crate::state::AppState;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    code_runs: IntCounterVec,
    function_calls: IntCounterVec,
    llm_tokens: IntCounterVec,
    provider_errors: IntCounterVec,
    /// The route templates seen so far (bounded by [`MAX_ROUTES`]).
    routes: RwLock<HashSet<String>>,
    storage_bytes: IntCounterVec,
    pool: IntGaugeVec,
    realtime: IntGaugeVec,
    rls_round_trips: IntCounter,
    /// Realtime frames by direction: in, out, dropped (a socket's queue was full).
    rt_messages: IntCounterVec,
    rt_overflow_closes: IntCounter,
    rt_capture_lag: IntGauge,
    rss: IntGauge,
    fds: IntGauge,
    /// One scrape refreshes the read-at-scrape values at a time.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "oxibase_http_request_duration_seconds",
                "Time until the response head, by API.",
            ),
            &["api"],
        )
        .expect("valid metric");
        r.register(Box::new(duration.clone()))
            .expect("unique metric");
        let rls_round_trips = IntCounter::new(
            "oxibase_realtime_rls_round_trips_total",
            "Database visibility checks made for postgres_changes.",
        )
        .expect("valid metric");
        r.register(Box::new(rls_round_trips.clone()))
            .expect("unique metric");
        Metrics {
            requests: counter_vec(
                &r,
                "oxibase_http_requests_total",
                "HTTP requests answered, by API, route template, method and status.",
                &["api", "route", "method", "status"],
            ),
            duration,
            code_runs: counter_vec(
                &r,
                "oxibase_code_runs_total",
                "code-execution sandbox runs, by outcome.",
                &["status"],
            ),
            function_calls: counter_vec(
                &r,
                "oxibase_function_calls_total",
                "Built-in function calls, by function and outcome status (a stream that fails \
                 after its 200 counts with its failure).",
                &["function", "status"],
            ),
            llm_tokens: counter_vec(
                &r,
                "oxibase_llm_tokens_total",
                "Tokens the LLM providers reported for chat-completion, by provider and kind.",
                &["provider", "kind"],
            ),
            provider_errors: counter_vec(
                &r,
                "oxibase_llm_provider_errors_total",
                "chat-completion calls that ended in an error, by provider.",
                &["provider"],
            ),
            routes: RwLock::new(HashSet::new()),
            storage_bytes: counter_vec(
                &r,
                "oxibase_storage_bytes_total",
                "Storage API body bytes of known length (uploads in, downloads out).",
                &["direction"],
            ),
            pool: gauge_vec(
                &r,
                "oxibase_db_pool_connections",
                "Database pool connections: max, size (open), in_use, idle, waiting (callers).",
                &["pool", "state"],
            ),
            realtime: gauge_vec(
                &r,
                "oxibase_realtime_open",
                "Realtime: open sockets, joined channels and topics on this process.",
                &["kind"],
            ),
            rls_round_trips,
            rt_messages: counter_vec(
                &r,
                "oxibase_realtime_messages_total",
                "Realtime WebSocket messages: in (from clients), out (to clients), dropped \
                 (refused by a full socket queue; the socket is then closed).",
                &["direction"],
            ),
            rt_overflow_closes: {
                let c = IntCounter::new(
                    "oxibase_realtime_overflow_closes_total",
                    "Realtime sockets closed because they fell too far behind.",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            rt_capture_lag: gauge(
                &r,
                "oxibase_realtime_capture_lag_bytes",
                "postgres_changes capture: WAL bytes received or announced by PostgreSQL \
                 whose changes are not fanned out yet.",
            ),
            rss: gauge(
                &r,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            fds: gauge(&r, "process_open_fds", "Number of open file descriptors."),
            registry: r,
            scrape: Mutex::new(()),
        }
    }

    /// Requests answered, and the sum (seconds) and count of their latencies: the
    /// dashboard's charts sample these.
    pub fn totals(&self) -> (u64, f64, u64) {
        use prometheus::core::Collector;
        let mut n = 0.0;
        for mf in self.requests.collect() {
            n += mf
                .get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .sum::<f64>();
        }
        let (mut sum, mut count) = (0.0, 0);
        for mf in self.duration.collect() {
            for m in mf.get_metric() {
                sum += m.get_histogram().get_sample_sum();
                count += m.get_histogram().get_sample_count();
            }
        }
        (n as u64, sum, count)
    }

    /// One answered request (called once per request, in `http::server`).
    pub fn request(&self, api: &str, path: &str, method: &Method, status: StatusCode, secs: f64) {
        let route = self.route_label(path);
        self.requests
            .with_label_values(&[api, &route, method_label(method), status.as_str()])
            .inc();
        self.duration.with_label_values(&[api]).observe(secs);
    }

    /// A storage request's body sizes, as declared (content-length; streamed bodies of
    /// unknown length count 0).
    pub fn storage_bytes(&self, bytes_in: u64, bytes_out: u64) {
        self.storage_bytes
            .with_label_values(&["in"])
            .inc_by(bytes_in);
        self.storage_bytes
            .with_label_values(&["out"])
            .inc_by(bytes_out);
    }

    /// `path`'s route template, or `other` once [`MAX_ROUTES`] distinct ones were seen.
    fn route_label(&self, path: &str) -> String {
        let t = route_template(path);
        let seen = |r: &HashSet<String>| r.contains(&t);
        if self.routes.read().map(|r| seen(&r)).unwrap_or(false) {
            return t;
        }
        let mut w = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if w.len() < MAX_ROUTES || w.contains(&t) {
            w.insert(t.clone());
            t
        } else {
            "other".into()
        }
    }

    /// One built-in function call, as recorded in `api_usage`: its outcome, and for
    /// chat-completion the provider's tokens or its failure.
    pub fn function_call(
        &self,
        function: &str,
        status: u16,
        provider: Option<&str>,
        tokens: [Option<i32>; 2],
    ) {
        let status_label = StatusCode::from_u16(status)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| "other".into());
        self.function_calls
            .with_label_values(&[function, &status_label])
            .inc();
        let Some(p) = provider else { return };
        if status >= 400 {
            self.provider_errors.with_label_values(&[p]).inc();
        }
        for (kind, n) in ["prompt", "completion"].into_iter().zip(tokens) {
            if let Some(n) = n.and_then(|n| u64::try_from(n).ok()) {
                self.llm_tokens.with_label_values(&[p, kind]).inc_by(n);
            }
        }
    }

    /// One code-execution run finished (or was refused) with this outcome.
    pub fn code_run(&self, status: &str) {
        self.code_runs.with_label_values(&[status]).inc();
    }

    /// The exposition text, with the read-at-scrape values refreshed.
    pub fn render(&self, state: &AppState) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let s = state.pool.status();
        self.set_pool("request", s.max_size, s.size, s.available, s.waiting);
        if let Some(w) = &state.wire {
            let s = w.status();
            self.set_pool("wire", s.max_size, s.size, s.available, s.waiting);
        }
        let hub = &state.realtime.hub;
        let (topics, channels) = hub.counts();
        self.realtime
            .with_label_values(&["sockets"])
            .set(hub.sockets() as i64);
        self.realtime
            .with_label_values(&["channels"])
            .set(channels as i64);
        self.realtime
            .with_label_values(&["topics"])
            .set(topics as i64);
        let trips = state.realtime.rls_round_trips.load(Ordering::Relaxed);
        self.rls_round_trips
            .inc_by(trips.saturating_sub(self.rls_round_trips.get()));
        let c = &hub.counters;
        for (dir, n) in [
            ("in", &c.messages_in),
            ("out", &c.messages_out),
            ("dropped", &c.dropped),
        ] {
            let m = self.rt_messages.with_label_values(&[dir]);
            m.inc_by(n.load(Ordering::Relaxed).saturating_sub(m.get()));
        }
        let closes = c.overflow_closes.load(Ordering::Relaxed);
        self.rt_overflow_closes
            .inc_by(closes.saturating_sub(self.rt_overflow_closes.get()));
        let lag = state.realtime.capture.lag_bytes.load(Ordering::Relaxed);
        self.rt_capture_lag
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        if let Some(rss) = resident_bytes() {
            self.rss.set(rss as i64);
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(d.count() as i64);
        }
        let mut out = vec![];
        // Encoding a gathered registry into a Vec does not fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn set_pool(&self, pool: &str, max: usize, size: usize, idle: usize, waiting: usize) {
        for (k, v) in [
            ("max", max),
            ("size", size),
            ("in_use", size.saturating_sub(idle)),
            ("idle", idle),
            ("waiting", waiting),
        ] {
            self.pool.with_label_values(&[pool, k]).set(v as i64);
        }
    }
}

/// The method as a label: the standard ones, else `OTHER` (methods are client-chosen).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The API a path belongs to, as a bounded label.
pub fn api_label(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "rest" => "rest",
        "auth" => "auth",
        "storage" => "storage",
        "realtime" => "realtime",
        "functions" => "functions",
        _ => "other",
    }
}

/// The most distinct route templates labelled; later ones count as `other`.
pub const MAX_ROUTES: usize = 200;

/// The path segments kept as they are in a route template: the APIs' own words.
const ROUTE_WORDS: &[&str] = &[
    "rest",
    "auth",
    "storage",
    "realtime",
    "functions",
    "v1",
    "rpc",
    "token",
    "signup",
    "user",
    "logout",
    "verify",
    "otp",
    "recover",
    "magiclink",
    "resend",
    "settings",
    "health",
    "authorize",
    "callback",
    "reauthenticate",
    "factors",
    "challenge",
    "identities",
    "admin",
    "users",
    "audit",
    "generate_link",
    "invite",
    "sso",
    "saml",
    "oauth",
    "clients",
    "object",
    "bucket",
    "empty",
    "list",
    "list-v2",
    "move",
    "copy",
    "sign",
    "public",
    "authenticated",
    "info",
    "upload",
    "resumable",
    "render",
    "image",
    "s3",
    "websocket",
    "api",
    "broadcast",
    "events",
    "ping",
    "metrics",
    "chat-completion",
    "code-execution",
    "websocket-handler",
    "file-upload",
];

/// The path with every run of segments outside [`ROUTE_WORDS`] (table and bucket names,
/// ids, object paths) collapsed to one `:param`, and at most six segments.
pub fn route_template(path: &str) -> String {
    let mut out = String::new();
    let mut param = false;
    let mut n = 0;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if ROUTE_WORDS.contains(&seg) {
            param = false;
        } else if param {
            continue;
        } else {
            param = true;
        }
        n += 1;
        if n > 6 {
            out.push_str("/…");
            break;
        }
        out.push('/');
        out.push_str(if param { ":param" } else { seg });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A message's declared body length.
pub fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// VmRSS of /proc/self/status, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn message(status: StatusCode, text: &str) -> Resp {
    json_response(status, &json!({ "message": text }))
}

/// `GET /metrics`: the service_role key (apikey header or bearer) only.
pub async fn handle(state: &AppState, req: Req) -> Resp {
    if !state.config.metrics.enabled {
        return message(StatusCode::NOT_FOUND, "no Route matched with those values");
    }
    let h = req.headers();
    if crate::identity::bearer(h).is_none() && !h.contains_key("apikey") {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({
                "message": "No API key found in request",
                "hint": "No `apikey` request header or url param was found."
            }),
        );
    }
    match state.keys.authenticate(h, None) {
        Err(_) => message(
            StatusCode::UNAUTHORIZED,
            "Invalid authentication credentials",
        ),
        Ok(ctx) if !ctx.role.is_service() => message(
            StatusCode::FORBIDDEN,
            "The metrics need the service_role key",
        ),
        Ok(_) if !matches!(*req.method(), Method::GET | Method::HEAD) => {
            message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        }
        Ok(_) => {
            let mut r = http::Response::new(crate::http::full(state.metrics.render(state)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(api_label("/rest/v1/todos"), "rest");
        assert_eq!(api_label("/storage/v1/object/b/x"), "storage");
        assert_eq!(api_label("/metrics"), "other");
        assert_eq!(api_label("/../../etc"), "other");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "OTHER");
        let m = Metrics::new();
        m.request("rest", "/rest/v1/todos", &Method::GET, StatusCode::OK, 0.01);
        m.request(
            "rest",
            "/rest/v1/notes",
            &odd,
            StatusCode::IM_A_TEAPOT,
            0.01,
        );
        let text = {
            let mut out = vec![];
            TextEncoder::new()
                .encode(&m.registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(text
            .contains(r#"oxibase_http_requests_total{api="rest",method="OTHER",route="/rest/v1/:param",status="418"} 1"#));
    }

    #[test]
    fn route_templates_hide_names_and_stay_few() {
        for (path, want) in [
            ("/rest/v1/todos", "/rest/v1/:param"),
            ("/rest/v1/rpc/add_them", "/rest/v1/rpc/:param"),
            ("/rest/v1/", "/rest/v1"),
            (
                "/storage/v1/object/public/avatars/a/b/c.png",
                "/storage/v1/object/public/:param",
            ),
            (
                "/storage/v1/object/sign/b/x",
                "/storage/v1/object/sign/:param",
            ),
            (
                "/auth/v1/admin/users/0b1c5e0e-8d9e-4c4e-9a4e-1f0a6c8e2d11",
                "/auth/v1/admin/users/:param",
            ),
            (
                "/functions/v1/chat-completion",
                "/functions/v1/chat-completion",
            ),
            ("/functions/v1/my-own", "/functions/v1/:param"),
            ("/", "/"),
            ("/rest/v1/rpc/rpc/rpc/rpc/rpc", "/rest/v1/rpc/rpc/rpc/rpc/…"),
        ] {
            assert_eq!(route_template(path), want, "{path}");
        }
        let m = Metrics::new();
        for i in 0..(MAX_ROUTES + 50) {
            // Distinct templates made of the vocabulary: only MAX_ROUTES get their own label.
            let words = [
                "rpc", "user", "list", "copy", "info", "sign", "move", "ping",
            ];
            let path: String = (0..4)
                .map(|d| format!("/{}", words[(i >> (3 * d)) & 7]))
                .collect();
            m.request("other", &path, &Method::GET, StatusCode::NOT_FOUND, 0.0);
        }
        assert_eq!(m.routes.read().unwrap().len(), MAX_ROUTES);
        assert_eq!(m.route_label("/never/seen/before"), "other");
        assert_eq!(
            m.route_label("/rpc/rpc/rpc/rpc"),
            "/rpc/rpc/rpc/rpc",
            "seen first, kept"
        );
    }

    #[test]
    fn function_calls_count_tokens_and_provider_errors() {
        let m = Metrics::new();
        m.function_call("chat-completion", 200, Some("openai"), [Some(5), Some(2)]);
        m.function_call("chat-completion", 502, Some("anthropic"), [None, None]);
        m.function_call("code-execution", 200, None, [None, None]);
        let mut out = vec![];
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            r#"oxibase_function_calls_total{function="chat-completion",status="200"} 1"#,
            r#"oxibase_function_calls_total{function="chat-completion",status="502"} 1"#,
            r#"oxibase_function_calls_total{function="code-execution",status="200"} 1"#,
            r#"oxibase_llm_tokens_total{kind="prompt",provider="openai"} 5"#,
            r#"oxibase_llm_tokens_total{kind="completion",provider="openai"} 2"#,
            r#"oxibase_llm_provider_errors_total{provider="anthropic"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains(r#"oxibase_llm_provider_errors_total{provider="openai"}"#));
    }
}
