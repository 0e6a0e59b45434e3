//! Who may use the dashboard: sessions, the sign-in password, CSRF tokens.
//!
//! Open (a session made without a password) only when all hold: `trust_loopback`, the JWT
//! secret is the well-known local one, the TCP peer is a loopback address, and the request
//! carries no proxy header (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`): behind a reverse
//! proxy on the same host the peer is loopback but the user is not. Anywhere else a session
//! starts only by signing in with `[dashboard] password` (kept as a bcrypt hash; failed
//! attempts are limited per client address). The session cookie is HttpOnly,
//! SameSite=Strict, Secure when the request came over TLS (X-Forwarded-Proto: https); every
//! request that is not a GET carries the session's CSRF token (form field `_csrf` or header
//! `X-CSRF-Token`), and so does every `api/` read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, StatusCode};
use maud::html;

use super::{html as html_resp, json, layout, redirect, DashReq, PREFIX};
use crate::config::{DashboardConfig, DEFAULT_JWT_SECRET};
use crate::http::Resp;
use crate::state::AppState;

const COOKIE: &str = "oxibase_dash";
const PRE_COOKIE: &str = "oxibase_dash_pre";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 1000;
/// Failed sign-ins allowed per client address in [`FAIL_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
const FAIL_WINDOW: Duration = Duration::from_secs(15 * 60);

struct Session {
    csrf: String,
    expires: Instant,
    /// Made without a password (loopback): valid only while requests still qualify.
    open: bool,
}

pub struct Access {
    password_hash: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

pub enum Verdict {
    /// Serve the page; set this cookie (a session just made) on the answer.
    Proceed(Option<String>),
    Answer(Resp),
}

impl Access {
    pub fn new(cfg: &DashboardConfig) -> Result<Access, String> {
        let password_hash = match cfg.password.as_ref().map(|p| p.expose().as_str()) {
            None | Some("") => None,
            Some(p) if p.starts_with("$2") => Some(p.to_string()),
            Some(p) => Some(bcrypt::hash(p, 10).map_err(|e| format!("dashboard password: {e}"))?),
        };
        Ok(Access {
            password_hash,
            sessions: Mutex::default(),
            failures: Mutex::default(),
        })
    }

    fn new_session(&self, open: bool) -> (String, String) {
        let token = random_token();
        let csrf = random_token();
        if let Ok(mut s) = self.sessions.lock() {
            let now = Instant::now();
            s.retain(|_, v| v.expires > now);
            if s.len() >= MAX_SESSIONS {
                // Full of live sessions: drop the one closest to expiry.
                if let Some(k) = s
                    .iter()
                    .min_by_key(|(_, v)| v.expires)
                    .map(|(k, _)| k.clone())
                {
                    s.remove(&k);
                }
            }
            s.insert(
                token.clone(),
                Session {
                    csrf: csrf.clone(),
                    expires: now + SESSION_TTL,
                    open,
                },
            );
        }
        (token, csrf)
    }

    /// The session's CSRF token, when `token` is a live session usable by this request.
    fn session(&self, token: &str, open_now: bool) -> Option<String> {
        let s = self.sessions.lock().ok()?;
        let v = s.get(token)?;
        (v.expires > Instant::now() && (!v.open || open_now)).then(|| v.csrf.clone())
    }

    /// Whether `ip` may try a password now; when not, the seconds to wait.
    fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let f = self.failures.lock().ok()?;
        let (n, since) = f.get(&ip)?;
        let left = FAIL_WINDOW.checked_sub(since.elapsed())?;
        (*n >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    fn failed(&self, ip: IpAddr) {
        if let Ok(mut f) = self.failures.lock() {
            if f.len() > 10_000 {
                f.retain(|_, (_, since)| since.elapsed() < FAIL_WINDOW);
            }
            let e = f.entry(ip).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAIL_WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }
}

fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal without an early exit (token comparisons).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie_value(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn over_tls(h: &http::HeaderMap) -> bool {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    get("x-forwarded-proto").eq_ignore_ascii_case("https")
        || get("forwarded")
            .to_ascii_lowercase()
            .contains("proto=https")
}

fn set_cookie(h: &http::HeaderMap, name: &str, value: &str, max_age: u64) -> String {
    let secure = if over_tls(h) { "; Secure" } else { "" };
    format!("{name}={value}; Path={PREFIX}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The host of a `Host` header or an `Origin` URL, without port or brackets.
fn host_part(v: &str) -> &str {
    let v = v.split_once("://").map_or(v, |x| x.1);
    let v = v.split('/').next().unwrap_or("");
    match v.strip_prefix('[') {
        Some(six) => six.split(']').next().unwrap_or(""),
        None => v.rsplit_once(':').map_or(v, |x| x.0),
    }
}

/// A name only this machine answers to. A page on another site can point its own name at
/// 127.0.0.1 (DNS rebinding) and so reach a loopback server as "same origin": such a
/// request carries that other name in `Host`, and is not opened.
fn local_host(host: &str) -> bool {
    let h = host_part(host).to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether this request may have a session without a password.
pub fn open_access(state: &AppState, r: &DashReq) -> bool {
    let proxied = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| r.headers.contains_key(*h));
    let host = r
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    state.config.dashboard.trust_loopback
        && state.config.jwt_secret.expose() == DEFAULT_JWT_SECRET
        && r.peer.ip().to_canonical().is_loopback()
        && !proxied
        && local_host(host)
}

/// A change sent by a page of another origin (an `Origin` whose host is not the `Host`):
/// refused whatever its cookie and token, on top of SameSite=Strict.
fn cross_origin(r: &DashReq) -> bool {
    let get = |n: header::HeaderName| r.headers.get(n).and_then(|v| v.to_str().ok());
    match (get(header::ORIGIN), get(header::HOST)) {
        (Some(o), Some(h)) => o == "null" || o.split_once("://").is_none_or(|x| x.1 != h),
        _ => false,
    }
}

pub async fn check(state: &AppState, r: &mut DashReq) -> Verdict {
    let access = &state.dashboard.access;
    if r.method != Method::GET && cross_origin(r) {
        return Verdict::Answer(forbidden(r));
    }
    let open = open_access(state, r);
    let session = cookie_value(&r.headers, COOKIE).and_then(|t| access.session(&t, open));
    let Some(csrf) = session else {
        if open {
            let (token, csrf) = access.new_session(true);
            r.csrf = csrf;
            if r.method != Method::GET {
                // No token can have been sent for a session that did not exist.
                return Verdict::Answer(forbidden(r));
            }
            let cookie = set_cookie(&r.headers, COOKIE, &token, SESSION_TTL.as_secs());
            return Verdict::Proceed(Some(cookie));
        }
        return Verdict::Answer(signed_out(state, r).await);
    };
    r.csrf = csrf;
    if r.path == "signin" {
        return Verdict::Answer(redirect(PREFIX));
    }
    let needs_token = r.method != Method::GET || r.path.starts_with("api/");
    if needs_token {
        let sent = r
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| r.f("_csrf").map(str::to_string));
        if !sent.is_some_and(|s| same(&s, &r.csrf)) {
            return Verdict::Answer(forbidden(r));
        }
    }
    Verdict::Proceed(None)
}

fn forbidden(r: &DashReq) -> Resp {
    if r.path.starts_with("api/") {
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "missing or wrong CSRF token"}),
        );
    }
    super::text(
        StatusCode::FORBIDDEN,
        "Forbidden: missing or wrong CSRF token. Reload the page and try again.",
    )
}

/// Requests without a session: the sign-in page and its form; everything else is refused.
async fn signed_out(state: &AppState, r: &DashReq) -> Resp {
    let access = &state.dashboard.access;
    if access.password_hash.is_none() {
        let body = html! {
            div.card.signin {
                h1 { "oxibase dashboard" }
                p { "The dashboard needs a password here. Set " code { "[dashboard] password" }
                    " in the config file or " code { "OXIBASE_DASHBOARD__PASSWORD" } ", then restart." }
            }
        };
        return html_resp(StatusCode::FORBIDDEN, layout::bare("Dashboard", body));
    }
    match (r.path.as_str(), &r.method) {
        ("signin", &Method::GET) => signin_form(r, None, StatusCode::OK),
        ("signin", &Method::POST) => sign_in(state, r).await,
        (p, _) if p.starts_with("api/") || r.method != Method::GET => json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": "sign in to the dashboard first"}),
        ),
        _ => redirect(&format!("{PREFIX}signin")),
    }
}

fn signin_form(r: &DashReq, error: Option<&str>, status: StatusCode) -> Resp {
    // Login CSRF: a pre-session token in a cookie and in the form (double submit).
    let pre = random_token();
    let body = html! {
        form.card.signin method="post" action={ (PREFIX) "signin" } {
            h1 { "oxibase" }
            p.muted { "Sign in to the dashboard" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            input type="hidden" name="_pre" value=(pre);
            label { "Password" input type="password" name="password" autocomplete="current-password" autofocus required; }
            button.primary type="submit" { "Sign in" }
        }
    };
    let mut resp = html_resp(status, layout::bare("Sign in", body));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&r.headers, PRE_COOKIE, &pre, 3600)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn sign_in(state: &AppState, r: &DashReq) -> Resp {
    let access = &state.dashboard.access;
    // Failures count per client, as auth's limits do: behind a trusted proxy, per the
    // address it forwards (else every client would share the proxy's).
    let trust = state.config.auth.trust_forwarded_for;
    let ip = crate::http::client_ip(trust, &r.headers, Some(r.peer))
        .unwrap_or(r.peer.ip())
        .to_canonical();
    let pre_ok = match (cookie_value(&r.headers, PRE_COOKIE), r.f("_pre")) {
        (Some(c), Some(f)) => same(&c, f),
        _ => false,
    };
    if !pre_ok {
        return forbidden(r);
    }
    if let Some(wait) = access.blocked(ip) {
        let mut resp = signin_form(
            r,
            Some("Too many failed sign-ins. Try again later."),
            StatusCode::TOO_MANY_REQUESTS,
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let given = r.fs("password");
    let hash = access.password_hash.clone().unwrap_or_default();
    let ok = tokio::task::spawn_blocking(move || bcrypt::verify(given, &hash).unwrap_or(false))
        .await
        .unwrap_or(false);
    if !ok {
        access.failed(ip);
        tracing::warn!(peer = %ip, "dashboard sign-in failed");
        return signin_form(r, Some("Wrong password."), StatusCode::UNAUTHORIZED);
    }
    if let Ok(mut f) = access.failures.lock() {
        f.remove(&ip);
    }
    let (token, _) = access.new_session(false);
    let mut resp = redirect(PREFIX);
    let h = resp.headers_mut();
    for c in [
        set_cookie(&r.headers, COOKIE, &token, SESSION_TTL.as_secs()),
        set_cookie(&r.headers, PRE_COOKIE, "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

pub fn sign_out(state: &AppState, r: &DashReq) -> Resp {
    if let Some(t) = cookie_value(&r.headers, COOKIE) {
        if let Ok(mut s) = state.dashboard.access.sessions.lock() {
            s.remove(&t);
        }
    }
    let mut resp = redirect(&format!("{PREFIX}signin"));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&r.headers, COOKIE, "", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_tokens() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; oxibase_dash=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE).as_deref(), Some("xyz"));
        assert!(!set_cookie(&h, COOKIE, "t", 1).contains("Secure"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let c = set_cookie(&h, COOKIE, "t", 1);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn local_hosts() {
        for h in [
            "localhost:54321",
            "127.0.0.1:1",
            "[::1]:54321",
            "app.localhost",
            "127.0.0.1",
        ] {
            assert!(local_host(h), "{h}");
        }
        for h in [
            "evil.example:54321",
            "localhost.evil.example",
            "10.0.0.1:80",
            "",
            "[::2]:1",
        ] {
            assert!(!local_host(h), "{h}");
        }
    }

    #[test]
    fn failures_block_after_the_limit() {
        let a = Access::new(&DashboardConfig::default()).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(a.blocked(ip).is_none());
            a.failed(ip);
        }
        assert!(a.blocked(ip).is_some());
        assert!(a.blocked("10.0.0.2".parse().unwrap()).is_none());
    }
}
