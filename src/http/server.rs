//! The one HTTP server: a task per connection, HTTP/1.1 with upgrades, CORS and a log line
//! per request, and a graceful drain on shutdown. Connections are capped (in total and per
//! client IP, see `conns`), slow headers and idle keep-alive connections time out.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::conns::{Admission, Limiter, Over, ShedSlot, Timeouts, Tracked};
use super::limits;
use super::router::{Api, ApiRouter};
use super::static_files::StaticSite;
use super::{cors, json_response, Req, Resp};
use crate::identity::keys::{recording_caller, ServedAs};
use crate::state::AppState;

pub async fn serve(
    listeners: Vec<TcpListener>,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    let (drain_tx, drain_rx) = watch::channel(false);
    let router = std::sync::Arc::new(ApiRouter::default());
    let site = static_site(&state);
    let http_cfg = &state.config.http;
    let nofile = limits::nofile_limit();
    let limiter = Limiter::new(limits::caps(&state.config, nofile));
    let timeouts = Timeouts {
        header: Duration::from_secs(http_cfg.header_timeout_secs),
        keepalive: Duration::from_secs(http_cfg.keepalive_timeout_secs),
    };
    tracing::info!(
        descriptor_limit = nofile,
        max_connections = limiter.caps.total,
        max_connections_per_ip = limiter.caps.per_ip,
        "connection limits"
    );
    let (conn_tx, mut conn_rx) =
        tokio::sync::mpsc::channel::<(tokio::net::TcpStream, SocketAddr)>(64);
    let mut accept_tasks = vec![];
    for l in listeners {
        accept_tasks.push(tokio::spawn(accept_loop(l, conn_tx.clone())));
    }
    drop(conn_tx);
    loop {
        tokio::select! {
            Some((stream, peer)) = conn_rx.recv() => {
                let (permit, conn_state) = match limiter.admit(peer.ip()) {
                    Admission::Serve(p, s) => (p, s),
                    Admission::Refuse(why, slot) => {
                        tokio::spawn(refuse(stream, why, slot));
                        continue;
                    }
                    Admission::Drop => continue,
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let router = router.clone();
                let site = site.clone();
                let svc_conn = conn_state.clone();
                let svc = service_fn(move |req: Req| {
                    let busy = svc_conn.begin();
                    let state = state.clone();
                    let router = router.clone();
                    let site = site.clone();
                    async move {
                        let resp = handle(&state, &router, site.as_deref(), req, peer).await;
                        Ok::<_, Infallible>(busy.attach(resp))
                    }
                });
                let io = Tracked::new(super::linger::LingeringStream::new(stream), permit, conn_state.clone());
                // Header and keep-alive time are watched by `ConnState::expired` (hyper's
                // header timer would also cut idle keep-alive connections at header time).
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(None)
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades();
                let mut drain = drain_rx.clone();
                tracker.spawn(async move {
                    tokio::pin!(conn);
                    let expired = conn_state.expired(timeouts);
                    tokio::pin!(expired);
                    let result = tokio::select! {
                        r = conn.as_mut() => Some(r),
                        // Slow header, idle keep-alive or evicted: close (dropping it).
                        _ = expired.as_mut() => None,
                        _ = drain.changed() => {
                            // Finish the request in flight, then close.
                            conn.as_mut().graceful_shutdown();
                            tokio::select! {
                                r = conn.as_mut() => Some(r),
                                _ = expired.as_mut() => None,
                            }
                        }
                    };
                    // Upgraded or closing: no longer timed out or evicted as HTTP.
                    conn_state.stop_serving();
                    if let Some(Err(e)) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    for t in accept_tasks {
        t.abort();
    }
    let _ = drain_tx.send(true);
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("drain deadline passed; closing the remaining connections"),
    }
}

/// Accept forever. Out of descriptors, the waiting connection would stay queued and every
/// accept fail at once, in a loop that serves nobody: so a spare descriptor is given up
/// to take that connection and close it, then taken back.
async fn accept_loop(l: TcpListener, tx: tokio::sync::mpsc::Sender<(TcpStream, SocketAddr)>) {
    let spare = || std::fs::File::open("/dev/null").ok();
    let mut reserve = spare();
    let mut last_warn: Option<Instant> = None;
    let mut failed: u64 = 0;
    loop {
        match l.accept().await {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failed += 1;
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, failed, "accept failed");
                    last_warn = Some(Instant::now());
                    failed = 0;
                }
                let out_of_fds = matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() || code == rustix::io::Errno::NFILE.raw_os_error());
                if out_of_fds && reserve.is_some() {
                    drop(reserve.take());
                    if let Ok(Ok((s, _))) =
                        tokio::time::timeout(Duration::from_millis(10), l.accept()).await
                    {
                        drop(s);
                    }
                    reserve = spare();
                    if reserve.is_some() {
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if reserve.is_none() {
                    reserve = spare();
                }
            }
        }
    }
}

/// Refuse a connection over a cap: a short 503 the client can read, then close. The
/// answer waits for the request's header (briefly): a client that gets bytes before it
/// has sent its request takes the connection for broken rather than reading them. What
/// follows is drained for a moment so the close does not reset the answer. Bounded in
/// time and bytes; the slot bounds how many run at once.
async fn refuse(mut stream: TcpStream, why: Over, _slot: ShedSlot) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let message = match why {
        Over::Total => "Too many connections, retry later",
        Over::PerIp => "Too many connections from this address, retry later",
    };
    let body = serde_json::json!({ "message": message }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\
         access-control-allow-origin: *\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 4096];
    let mut head: Vec<u8> = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut seen = 0;
        while seen < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => seen += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The `--static` site, when configured and readable (else logged and left out).
fn static_site(state: &AppState) -> Option<Arc<StaticSite>> {
    let dir = state.config.server.static_dir.as_ref()?;
    match StaticSite::new(dir) {
        Ok(site) => {
            tracing::info!(dir = %dir.display(), "serving a static site at /");
            Some(Arc::new(site))
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "static site not served");
            None
        }
    }
}

async fn handle(
    state: &AppState,
    router: &ApiRouter,
    site: Option<&StaticSite>,
    mut req: Req,
    peer: SocketAddr,
) -> Resp {
    let start = Instant::now();
    // The peer address, for per-IP rate limits.
    req.extensions_mut().insert(peer);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let bytes_in = crate::metrics::content_length(req.headers()).unwrap_or(0);
    let served_as = ServedAs::default();
    let dashboard = crate::dashboard::owns(&path);
    let answer = async {
        if dashboard {
            // The dashboard checks its own sessions; it needs no API key.
            crate::dashboard::handle(state, req, peer).await
        } else if cors::is_preflight(&method, req.headers()) {
            cors::preflight(req.headers())
        } else if let Some(site) = site.filter(|_| StaticSite::owns(&path)) {
            // The site's paths need no API key, as any web page.
            site.serve(&method, &path, req.headers()).await
        } else if state.config.apikey_required()
            && !super::router::is_open(&method, &path)
            && !super::router::has_credential(req.headers(), &path, req.uri().query())
        {
            // As Supabase's gateway (Kong key-auth) answers.
            json_response(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({
                    "message": "No API key found in request",
                    "hint": "No `apikey` request header or url param was found."
                }),
            )
        } else {
            match router.route(&path) {
                Some((api, rest)) => {
                    let rest = rest.to_string();
                    dispatch(state, api, req, &rest).await
                }
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"message": "no Route matched with those values"}),
                ),
            }
        }
    };
    let mut resp = recording_caller(served_as.clone(), answer).await;
    let (role, user_id) = match served_as.get() {
        Some((role, user)) => (Some(role.as_str()), *user),
        None => (None, None),
    };
    if !dashboard {
        // The dashboard is same-origin only.
        cors::decorate(origin.as_ref(), &mut resp);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v.clone());
        resp.headers_mut().insert("sb-request-id", v);
    }
    let secs = start.elapsed().as_secs_f64();
    let api = crate::metrics::api_label(&path);
    state
        .metrics
        .request(api, &path, &method, resp.status(), secs);
    if api == "storage" {
        // A HEAD answer's content-length is the object's, not bytes sent.
        let out = crate::metrics::content_length(resp.headers())
            .or_else(|| http_body::Body::size_hint(resp.body()).exact())
            .filter(|_| method != http::Method::HEAD);
        state.metrics.storage_bytes(bytes_in, out.unwrap_or(0));
    }
    // The query string is left out: it can carry tokens (signed URLs, apikey); so are
    // the credentials themselves (only the role and user they resolve to are logged).
    tracing::info!(
        target: "oxibase::request",
        %method, %path, api, status = resp.status().as_u16(),
        latency_ms = (secs * 10_000.0).round() / 10.0,
        peer = %peer.ip(), request_id = %request_id,
        role, user_id = user_id.map(tracing::field::display),
    );
    if state.config.dashboard.enabled {
        // The dashboard's Logs page: a bounded ring of the same fields.
        state.dashboard.log.push(crate::dashboard::LogEntry {
            time: chrono::Utc::now(),
            method: method.to_string(),
            path,
            status: resp.status().as_u16(),
            latency_ms: secs * 1000.0,
            role: role.map(str::to_string),
        });
    }
    resp
}

async fn dispatch(state: &AppState, api: Api, req: Req, rest: &str) -> Resp {
    match api {
        Api::Health => health(state).await,
        Api::Rest => crate::rest::handle(state, req, rest).await,
        Api::Auth => crate::auth::handle(state, req, rest).await,
        Api::Storage => crate::storage::handle(state, req, rest).await,
        Api::Realtime => crate::realtime::handle(state, req, rest).await,
        Api::Functions => crate::functions::handle(state, req, rest).await,
        Api::Metrics => crate::metrics::handle(state, req).await,
    }
}

async fn health(state: &AppState) -> Resp {
    let ok = async {
        let c = tokio::time::timeout(Duration::from_secs(2), state.pool.get())
            .await
            .ok()?
            .ok()?;
        c.simple_query("select 1").await.ok()
    }
    .await
    .is_some();
    if ok {
        json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable"}),
        )
    }
}
