//! The server side of a WebSocket upgrade, shared by the realtime socket and the
//! websocket-handler function: the request's key, the 101 answer with its
//! `Sec-WebSocket-Accept`, and the task that wraps the upgraded connection.

use std::future::Future;

use http::{HeaderValue, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::http::{empty, Req, Resp};

/// A server-side WebSocket over an upgraded HTTP connection.
pub type WsStream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The request's `Sec-WebSocket-Key` when it asks for a WebSocket upgrade.
pub fn upgrade_key(req: &Req) -> Option<HeaderValue> {
    let h = req.headers();
    let is_ws = h
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    h.get("sec-websocket-key").filter(|_| is_ws).cloned()
}

/// Answers 101 and spawns `run`, which gets the WebSocket once the connection is upgraded
/// (`None` when the upgrade failed; `what` names the endpoint in that log line).
pub fn accept<F, Fut>(
    req: &mut Req,
    key: &[u8],
    cfg: WebSocketConfig,
    what: &'static str,
    run: F,
) -> Resp
where
    F: FnOnce(Option<WsStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accept = derive_accept_key(key);
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let ws = match on_upgrade.await {
            Ok(upgraded) => Some(
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg))
                    .await,
            ),
            Err(e) => {
                tracing::debug!(error = %e, "{what}: upgrade failed");
                None
            }
        };
        run(ws).await;
    });
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hs.insert("sec-websocket-accept", v);
    }
    r
}
