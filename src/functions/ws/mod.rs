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

use http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

use super::error::FnError;
use crate::http::{Req, Resp};
use crate::identity::AuthContext;
use crate::realtime::upgrade::{accept, upgrade_key};
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
    let key = upgrade_key(&req).filter(|k| k.to_str().is_ok());
    let Some(key) = key else {
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
    let cfg = WebSocketConfig {
        max_message_size: Some(MAX_FRAME),
        max_frame_size: Some(MAX_FRAME),
        ..Default::default()
    };
    let state = state.clone();
    let ctx = ctx.clone();
    let run = move |ws| async move {
        if let Some(ws) = ws {
            socket::run(state.clone(), ws, ctx, user, session).await;
        }
        sessions::close(&state, session).await;
    };
    Ok(accept(
        &mut req,
        key.as_bytes(),
        cfg,
        "websocket-handler",
        run,
    ))
}
