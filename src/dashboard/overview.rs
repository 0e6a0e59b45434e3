//! Overview and settings: URLs, keys (revealed on click), version, uptime, request rate
//! and latency (sampled from the Prometheus registry), database and storage size.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;
use maud::{html, Markup};
use serde_json::json;

use super::layout::{self, size, sparkline};
use super::{db, DashReq, DashResult};
use crate::http::Resp;
use crate::state::AppState;

const EVERY: Duration = Duration::from_secs(5);
const KEEP: usize = 120;

/// (requests, latency sum seconds, latency count) every [`EVERY`], newest last.
#[derive(Default)]
pub struct Samples(Mutex<VecDeque<(u64, f64, u64)>>);

impl Samples {
    fn push(&self, v: (u64, f64, u64)) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() >= KEEP {
                q.pop_front();
            }
            q.push_back(v);
        }
    }

    /// Requests per second and mean latency (ms) per interval.
    fn series(&self) -> (Vec<f64>, Vec<f64>) {
        let q = match self.0.lock() {
            Ok(q) => q.clone(),
            Err(_) => return (vec![], vec![]),
        };
        let mut rps = vec![];
        let mut lat = vec![];
        for (a, b) in q.iter().zip(q.iter().skip(1)) {
            rps.push(b.0.saturating_sub(a.0) as f64 / EVERY.as_secs_f64());
            let n = b.2.saturating_sub(a.2);
            lat.push(if n == 0 {
                0.0
            } else {
                (b.1 - a.1) / n as f64 * 1000.0
            });
        }
        (rps, lat)
    }
}

pub fn spawn_sampler(state: &AppState) {
    let st = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            st.dashboard.samples.push(st.metrics.totals());
        }
    });
}

fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h) {
        (0, 0) => format!("{m}m {s}s"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The database URL as shown: the password left out.
fn db_url_shown(state: &AppState) -> String {
    let url = match &state.config.database_url {
        Some(u) => u.expose().clone(),
        None => crate::display_db_url(&state.config),
    };
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:[password]{}", &url[..s + 3], &url[at..])
        }
        _ => url,
    }
}

fn api_url(state: &AppState, r: &DashReq) -> String {
    match &state.config.api_external_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let host = r
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("127.0.0.1");
            format!("http://{host}")
        }
    }
}

pub async fn page(state: &AppState, r: &DashReq) -> DashResult<Markup> {
    let sizes = async {
        let c = db::connect(state).await?;
        let row = c
            .query_one(
                "select pg_database_size(current_database()), \
                 (select coalesce(sum((metadata->>'size')::bigint), 0)::bigint from storage.objects), \
                 (select count(*) from auth.users), (select count(*) from storage.buckets), \
                 current_setting('server_version')",
                &[],
            )
            .await
            .map_err(|e| db::err(&e))?;
        Ok::<_, String>((
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
            row.get::<_, String>(4),
        ))
    }
    .await;
    let (rps, lat) = state.dashboard.samples.series();
    let (total, sum, count) = state.metrics.totals();
    let up = state.dashboard.started.elapsed().as_secs();
    let url = api_url(state, r);
    let body = html! {
        div.grid {
            div.card.stat { span.label { "Version" } span.value { "oxibase " (env!("CARGO_PKG_VERSION")) } }
            div.card.stat { span.label { "Uptime" } span.value { (uptime(up)) } }
            @match &sizes {
                Ok((dbs, sts, users, buckets, pgv)) => {
                    div.card.stat { span.label { "Database size" } span.value { (size(*dbs)) } span.muted { "PostgreSQL " (pgv) } }
                    div.card.stat { span.label { "Storage size" } span.value { (size(*sts)) } span.muted { (buckets) " buckets" } }
                    div.card.stat { span.label { "Users" } span.value { (users) } }
                }
                Err(e) => { div.card { p.error { (e) } } }
            }
            div.card.stat { span.label { "Requests" } span.value { (total) }
                span.muted { @if count > 0 { "mean " (format!("{:.1}", sum / count as f64 * 1000.0)) " ms" } } }
        }
        div.grid.two {
            div.card {
                h2 { "Requests / s" }
                @if rps.is_empty() { p.muted { "Collecting (every 5 s)…" } } @else {
                    (sparkline(&rps, "requests per second"))
                    p.muted { "last " (format!("{:.2}", rps.last().copied().unwrap_or(0.0))) "/s, peak " (format!("{:.2}", rps.iter().cloned().fold(0.0, f64::max))) "/s" }
                }
            }
            div.card {
                h2 { "Latency (mean, ms)" }
                @if lat.is_empty() { p.muted { "Collecting (every 5 s)…" } } @else {
                    (sparkline(&lat, "mean latency in milliseconds"))
                    p.muted { "last " (format!("{:.1}", lat.last().copied().unwrap_or(0.0))) " ms" }
                }
            }
        }
        div.card {
            h2 { "Connect" }
            dl.settings {
                dt { "API URL" } dd { code #api-url { (url) } }
                dt { "Database URL" } dd { code { (db_url_shown(state)) } }
                @for (k, label) in [("anon", "anon key"), ("service_role", "service_role key"), ("publishable", "Publishable key"), ("secret", "Secret key")] {
                    dt { (label) }
                    dd { code.secret data-key=(k) { "••••••••••••••••" } " "
                         button.small type="button" data-reveal=(k) { "Reveal" } }
                }
            }
            p.muted { "The service_role and secret keys bypass Row Level Security: keep them on servers." }
        }
    };
    Ok(layout::page(r, "Overview", "", body))
}

/// The keys (for the reveal buttons and the pages whose JS calls the APIs).
pub fn keys(state: &AppState) -> Resp {
    let (anon, service) = crate::cli::api_keys(&state.config);
    let opaque = &state.keys.opaque;
    super::json(
        StatusCode::OK,
        &json!({"anon": anon, "service_role": service,
                "publishable": opaque.publishable, "secret": opaque.secret}),
    )
}

pub fn metrics_json(state: &AppState) -> Resp {
    let (rps, lat) = state.dashboard.samples.series();
    super::json(StatusCode::OK, &json!({"rps": rps, "latency_ms": lat}))
}

#[cfg(test)]
mod tests {
    use super::uptime;

    #[test]
    fn uptimes() {
        assert_eq!(uptime(65), "1m 5s");
        assert_eq!(uptime(3 * 3600 + 120), "3h 2m");
        assert_eq!(uptime(2 * 86400 + 3600), "2d 1h");
    }
}
