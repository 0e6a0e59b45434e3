//! Prometheus metrics at `GET /metrics` (service_role key only; `[metrics] enabled`).
//!
//! Counted on the way (cheap, in the one place every request passes): requests by API,
//! method and status, their latency by API, code-execution runs by status. Read at
//! scrape time (no bookkeeping on hot paths): database pools, realtime sockets and
//! channels, postgres_changes RLS round trips, process RSS and open descriptors.
//! Label values are bounded: the API (first path segment), a known method, the status.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

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
                "HTTP requests answered, by API, method and status.",
                &["api", "method", "status"],
            ),
            duration,
            code_runs: counter_vec(
                &r,
                "oxibase_code_runs_total",
                "code-execution sandbox runs, by outcome.",
                &["status"],
            ),
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

    /// One answered request (called once per request, in `http::server`).
    pub fn request(&self, api: &str, method: &Method, status: StatusCode, secs: f64) {
        self.requests
            .with_label_values(&[api, method_label(method), status.as_str()])
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
        m.request("rest", &Method::GET, StatusCode::OK, 0.01);
        m.request("rest", &odd, StatusCode::IM_A_TEAPOT, 0.01);
        let text = {
            let mut out = vec![];
            TextEncoder::new()
                .encode(&m.registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(text
            .contains(r#"oxibase_http_requests_total{api="rest",method="OTHER",status="418"} 1"#));
    }
}
