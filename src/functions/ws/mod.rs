//! websocket-handler: `GET /functions/v1/websocket-handler?token=…` upgraded to a WebSocket
//! that speaks small JSON frames about conversations (join, leave, typing, message, ping).
//!
//! It runs on the realtime machinery rather than beside it. A joined conversation is a
//! channel of the realtime hub on the private topic `oxibase.ws:<conversation id>`:
//! - presence: each joined socket tracks its user id there; the hub keeps presence per
//!   topic and the realtime fan-out announces it to the other processes on the database;
//! - typing: a hub broadcast on that topic (fanned out to the other processes too);
//! - messages: the channel has a postgres_changes binding `INSERT public.messages where
//!   conversation_id = <id>`, so every committed row (over this socket, REST,
//!   chat-completion, another process) arrives once through realtime's change capture,
//!   which reads it back as the socket's user first (RLS decides who gets it).
//!
//! The gateway (`super::handle`) has already authenticated the caller.

mod frames;
pub mod sessions;
mod socket;

use std::sync::atomic::AtomicU64;

use http::{HeaderValue, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::error::FnError;
use crate::http::apikey::AuthContext;
use crate::http::{empty, Req, Resp};
use crate::state::AppState;

pub const NAME: &str = "websocket-handler";

/// Largest frame or message a client may send.
pub const MAX_FRAME: usize = 64 * 1024;

/// This function's share of the functions state.
pub struct Ws {
    /// This process's id in `user_sessions.server_id` (and its advisory lock key).
    pub server_id: i64,
    /// True once the lock is held and the start-up sweep ran (or failed).
    pub(crate) ready: tokio::sync::watch::Sender<bool>,
    /// Keepalive ping period and idle timeout of new sockets, in ms (tests shorten them).
    pub ping_every_ms: AtomicU64,
    pub idle_timeout_ms: AtomicU64,
}

impl Default for Ws {
    fn default() -> Self {
        use rand::Rng;
        Ws {
            // Positive and below 2^62, so `pg_locks` gives it back exactly.
            server_id: rand::thread_rng().gen_range(1..(1i64 << 62)),
            ready: tokio::sync::watch::channel(false).0,
            ping_every_ms: AtomicU64::new(25_000),
            idle_timeout_ms: AtomicU64::new(75_000),
        }
    }
}

/// The session lock and the sweep of sessions left open by stopped servers.
pub fn spawn_background(state: &AppState) {
    sessions::spawn_keeper(state);
}

fn header<'a>(req: &'a Req, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub async fn handle(
    state: &AppState,
    ctx: &AuthContext,
    user: Uuid,
    mut req: Req,
) -> Result<Resp, FnError> {
    if req.method() != http::Method::GET {
        return Err(FnError::method_not_allowed(req.method(), NAME));
    }
    let is_ws = header(&req, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = header(&req, "sec-websocket-key").filter(|_| is_ws);
    let Some(key) = key.map(str::to_string) else {
        let mut r = crate::http::error_response(&FnError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "This function only accepts WebSocket upgrade requests.",
        ));
        r.headers_mut()
            .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        return Ok(r);
    };
    if header(&req, "sec-websocket-version").is_some_and(|v| v.trim() != "13") {
        let mut r = crate::http::error_response(&FnError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "Only WebSocket version 13 is supported.",
        ));
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return Ok(r);
    }
    let user_agent = header(&req, "user-agent").map(|u| u.chars().take(512).collect::<String>());
    // Sessions are opened once this process holds its lock (a peer's sweep cannot close
    // them); a lock that cannot be had delays nobody more than a few seconds.
    let mut ready = state.functions.ws.ready.subscribe();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ready.wait_for(|r| *r)).await;
    // The row exists before the client sees 101.
    let session = sessions::open(state, user, user_agent)
        .await
        .map_err(|e| FnError::internal(format!("opening the user session: {e}")))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let state = state.clone();
    let ctx = ctx.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let cfg = WebSocketConfig {
                    max_message_size: Some(MAX_FRAME),
                    max_frame_size: Some(MAX_FRAME),
                    ..Default::default()
                };
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(cfg),
                )
                .await;
                socket::run(state.clone(), ws, ctx, user, session).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket-handler: upgrade failed"),
        }
        sessions::close(&state, session).await;
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
    Ok(r)
}
