//! The one HTTP server: a task per connection, HTTP/1.1 with upgrades, CORS and a log line
//! per request, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::router::{Api, ApiRouter};
use super::{cors, json_response, Req, Resp};
use crate::state::AppState;

pub async fn serve(
    listeners: Vec<TcpListener>,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    let (drain_tx, drain_rx) = watch::channel(false);
    let router = std::sync::Arc::new(ApiRouter::default());
    let (conn_tx, mut conn_rx) =
        tokio::sync::mpsc::channel::<(tokio::net::TcpStream, SocketAddr)>(64);
    let mut accept_tasks = vec![];
    for l in listeners {
        let tx = conn_tx.clone();
        accept_tasks.push(tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok(c) => {
                        if tx.send(c).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    drop(conn_tx);
    loop {
        tokio::select! {
            Some((stream, peer)) = conn_rx.recv() => {
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let router = router.clone();
                let svc = service_fn(move |req: Req| {
                    let state = state.clone();
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(handle(&state, &router, req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(super::linger::LingeringStream::new(stream)), svc)
                    .with_upgrades();
                let mut drain = drain_rx.clone();
                tracker.spawn(async move {
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = drain.changed() => {
                            // Finish the request in flight, then close.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
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

async fn handle(state: &AppState, router: &ApiRouter, mut req: Req, peer: SocketAddr) -> Resp {
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
    let mut resp = if cors::is_preflight(&method, req.headers()) {
        cors::preflight(req.headers())
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
    };
    cors::decorate(origin.as_ref(), &mut resp);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v.clone());
        resp.headers_mut().insert("sb-request-id", v);
    }
    // The query string is left out: it can carry tokens (signed URLs, apikey).
    tracing::info!(
        target: "oxibase::request",
        %method, %path, status = resp.status().as_u16(),
        ms = format!("{:.1}", start.elapsed().as_secs_f64() * 1000.0),
        peer = %peer.ip(), request_id = %request_id,
    );
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
