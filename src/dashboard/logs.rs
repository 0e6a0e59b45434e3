//! Logs: the last requests (a bounded ring fed where the request log line is written),
//! filterable by path, method, status class and role.

use std::collections::VecDeque;
use std::sync::Mutex;

use maud::{html, Markup};

use super::layout;
use super::{DashReq, DashResult, PREFIX};

#[derive(Clone, Debug)]
pub struct LogEntry {
    pub time: chrono::DateTime<chrono::Utc>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub latency_ms: f64,
    pub role: Option<String>,
}

pub struct Ring {
    cap: usize,
    q: Mutex<VecDeque<LogEntry>>,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            cap,
            q: Mutex::new(VecDeque::with_capacity(cap)),
        }
    }

    pub fn push(&self, e: LogEntry) {
        if let Ok(mut q) = self.q.lock() {
            if q.len() >= self.cap {
                q.pop_front();
            }
            q.push_back(e);
        }
    }

    /// Newest first.
    pub fn snapshot(&self) -> Vec<LogEntry> {
        self.q
            .lock()
            .map(|q| q.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

fn keep(e: &LogEntry, r: &DashReq) -> bool {
    let path_ok = r.q("path").is_none_or(|p| e.path.contains(p));
    let method_ok = r
        .q("method")
        .is_none_or(|m| e.method.eq_ignore_ascii_case(m));
    let status_ok = match r.q("status") {
        Some("2xx") => (200..300).contains(&e.status),
        Some("3xx") => (300..400).contains(&e.status),
        Some("4xx") => (400..500).contains(&e.status),
        Some("5xx") => e.status >= 500,
        Some("errors") => e.status >= 400,
        _ => true,
    };
    let role_ok = r
        .q("role")
        .is_none_or(|x| e.role.as_deref().unwrap_or("-") == x);
    // The dashboard's own requests are noise here unless asked for.
    let own_ok = r.q("own").is_some() || !super::owns(&e.path);
    path_ok && method_ok && status_ok && role_ok && own_ok
}

pub fn page(state: &crate::state::AppState, r: &DashReq) -> DashResult<Markup> {
    let all = state.dashboard.log.snapshot();
    let rows: Vec<&LogEntry> = all.iter().filter(|e| keep(e, r)).take(200).collect();
    let sel = |k: &str, v: &str| r.q(k) == Some(v);
    let body = html! {
        form.card.filters method="get" action={ (PREFIX) "logs" } {
            input type="search" name="path" placeholder="path contains…" value=[r.q("path")];
            select name="method" {
                option value="" { "any method" }
                @for m in ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"] {
                    option value=(m) selected[sel("method", m)] { (m) }
                }
            }
            select name="status" {
                option value="" { "any status" }
                @for s in ["2xx", "3xx", "4xx", "5xx", "errors"] {
                    option value=(s) selected[sel("status", s)] { (s) }
                }
            }
            select name="role" {
                option value="" { "any role" }
                @for s in ["anon", "authenticated", "service_role", "-"] {
                    option value=(s) selected[sel("role", s)] { (s) }
                }
            }
            label.check { input type="checkbox" name="own" value="1" checked[r.q("own").is_some()]; " dashboard's own" }
            button type="submit" { "Filter" }
        }
        div.card.scroll {
            p.muted { (rows.len()) " of the last " (all.len()) " requests (newest first)" }
            table.grid #log-table {
                thead { tr { th { "Time (UTC)" } th { "Method" } th { "Path" } th { "Status" } th { "Latency" } th { "Role" } } }
                tbody {
                    @for e in &rows {
                        tr.err[e.status >= 400] {
                            td.mono { (e.time.format("%H:%M:%S%.3f")) }
                            td { (e.method) }
                            td.mono.path { (e.path) }
                            td { span class={ "badge s" (e.status / 100) } { (e.status) } }
                            td { (format!("{:.1}", e.latency_ms)) " ms" }
                            td { (e.role.as_deref().unwrap_or("-")) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(r, "Logs", "logs", body))
}
