//! One websocket-handler connection: a `select!` over the client's frames, the realtime
//! hub's queue for this socket, and a one-second tick (keepalive pings, idle timeout, token
//! expiry, server shutdown, throttled `last_seen_at`). A guard takes the socket's hub
//! channels out however the task ends, so the others see it leave.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

use super::frames::{self, error_frame, Frame, Refusal};
use super::sessions;
use crate::db::RequestGucs;
use crate::identity::AuthContext;
use crate::realtime::changes::{Filter, FilterOp, PgBinding};
use crate::realtime::hub::{Broadcast, ChanId, Hub, HubGuard, Out, Sub, TopicKey};
use crate::realtime::upgrade::WsStream;
use crate::state::AppState;

/// `last_seen_at` is written at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(30);
/// Frames the hub may queue for one socket before dropping (a slow client misses some).
const QUEUE: usize = 256;
/// Conversations one socket may have joined at once.
const MAX_ROOMS: usize = 50;
/// Client frames per second before `rate_limited`.
const MAX_FRAMES_PER_SEC: u32 = 50;

/// The hub topic of a conversation (always private: realtime clients reach it only through
/// the RLS policies on `realtime.messages`).
pub const TOPIC_PREFIX: &str = "oxibase.ws:";
/// The hub broadcast event that carries typing.
const TYPING_EVENT: &str = "oxibase.ws.typing";

type Sink = futures::stream::SplitSink<WsStream, Message>;

fn gucs(method: &'static str) -> RequestGucs<'static> {
    RequestGucs {
        method,
        path: "/functions/v1/websocket-handler",
        ..Default::default()
    }
}

struct Room {
    chan: ChanId,
    key: TopicKey,
    /// The user list this socket last saw (a presence frame goes out when it changes).
    users: Vec<String>,
    /// The user said they are typing here (others are told they stopped when it leaves).
    typing: bool,
}

/// Takes the socket's channels out of the hub when the task ends (presence leaves).
struct Conn {
    state: AppState,
    ctx: AuthContext,
    user: Uuid,
    sink: Sink,
    tx: mpsc::Sender<Out>,
    rooms: HashMap<Uuid, Room>,
    by_chan: HashMap<ChanId, Uuid>,
    guard: HubGuard,
}

fn close_frame(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

pub async fn run(state: AppState, ws: WsStream, ctx: AuthContext, user: Uuid, session: Uuid) {
    let (sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Out>(QUEUE);
    let hub = state.realtime.hub.clone();
    let exp = ctx.claims.get("exp").and_then(Value::as_i64);
    let mut c = Conn {
        guard: HubGuard::new(hub),
        state,
        ctx,
        user,
        sink,
        tx,
        rooms: HashMap::new(),
        by_chan: HashMap::new(),
    };
    // A client that sends nothing (not even the pongs to our WebSocket pings, which clients
    // answer by themselves) for the idle timeout is dropped.
    let ws = &c.state.functions.ws;
    let ping_every = Duration::from_millis(ws.ping_every_ms.load(Ordering::Relaxed));
    let idle_timeout = Duration::from_millis(ws.idle_timeout_ms.load(Ordering::Relaxed));
    let mut tick = tokio::time::interval(ping_every.min(Duration::from_secs(1)));
    let (mut last_seen, mut last_ping, mut last_touch) =
        (Instant::now(), Instant::now(), Instant::now());
    let mut traffic = false;
    let (mut window, mut frames_in_window) = (Instant::now(), 0u32);
    loop {
        tokio::select! {
            m = stream.next() => {
                let m = match m {
                    None => break,
                    Some(Ok(m)) => m,
                    Some(Err(WsError::Capacity(_))) => {
                        let _ = c.text(error_frame("payload_too_large",
                            &format!("Frames are limited to {} bytes.", super::MAX_FRAME))).await;
                        let _ = c.sink.send(close_frame(CloseCode::Size, "frame too large")).await;
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket-handler: socket error");
                        break;
                    }
                };
                last_seen = Instant::now();
                traffic = true;
                let ok = match m {
                    Message::Text(t) => {
                        if window.elapsed() >= Duration::from_secs(1) {
                            (window, frames_in_window) = (Instant::now(), 0);
                        }
                        frames_in_window += 1;
                        if frames_in_window > MAX_FRAMES_PER_SEC {
                            c.text(error_frame("rate_limited", "Too many frames; slow down.")).await
                        } else {
                            c.handle(&t).await
                        }
                    }
                    Message::Binary(_) => {
                        c.text(error_frame("invalid_frame", "Frames must be JSON text.")).await
                    }
                    Message::Close(_) => break,
                    // Pings are answered by tungstenite itself.
                    _ => true,
                };
                if !ok { break }
            }
            Some(out) = rx.recv() => {
                if !c.deliver(out).await { break }
            }
            _ = tick.tick() => {
                if c.state.pool.is_closed() {
                    let _ = c.sink.send(close_frame(CloseCode::Away, "server shutting down")).await;
                    break;
                }
                if last_seen.elapsed() > idle_timeout {
                    let _ = c.sink.send(close_frame(CloseCode::Away, "idle timeout")).await;
                    break;
                }
                if exp.is_some_and(|e| e < chrono::Utc::now().timestamp()) {
                    let _ = c.text(error_frame("token_expired", "The access token has expired; reconnect with a new one.")).await;
                    let _ = c.sink.send(close_frame(CloseCode::Policy, "token expired")).await;
                    break;
                }
                if last_ping.elapsed() >= ping_every {
                    last_ping = Instant::now();
                    if c.sink.send(Message::Ping(vec![])).await.is_err() { break }
                }
                if traffic && last_touch.elapsed() >= TOUCH_EVERY {
                    (traffic, last_touch) = (false, Instant::now());
                    let st = c.state.clone();
                    tokio::spawn(async move { sessions::touch(&st, session).await });
                }
            }
        }
    }
    let rooms: Vec<Uuid> = c.rooms.keys().copied().collect();
    for id in rooms {
        c.stop_typing(id);
    }
    drop(c.guard);
    let _ = c.sink.close().await;
}

/// The users present in a hub topic (presence keys are user ids).
fn users(hub: &Hub, key: &TopicKey) -> Vec<String> {
    match hub.presence_state(key) {
        Value::Object(m) => m
            .keys()
            .filter(|k| Uuid::parse_str(k).is_ok())
            .cloned()
            .collect(),
        _ => vec![],
    }
}

impl Conn {
    async fn text(&mut self, s: String) -> bool {
        self.sink.send(Message::Text(s)).await.is_ok()
    }

    async fn refuse(&mut self, r: Refusal) -> bool {
        self.text(r.to_frame()).await
    }

    /// One client frame; false ends the connection.
    async fn handle(&mut self, text: &str) -> bool {
        let r = match frames::parse(text) {
            Ok(Frame::Ping) => return self.text(json!({"type": "pong"}).to_string()).await,
            Ok(Frame::Join(id)) => self.join(id).await,
            Ok(Frame::Leave(id)) => self.leave(id),
            Ok(Frame::Typing(id, b)) => self.typing(id, b),
            Ok(Frame::Message(id, content)) => self.message(id, content).await,
            Err(r) => Err(r),
        };
        match r {
            Ok(Some(reply)) => self.text(reply.to_string()).await,
            Ok(None) => true,
            Err(r) => self.refuse(r).await,
        }
    }

    /// Can the caller read the conversation (RLS)?
    async fn can_read(&self, id: Uuid) -> Result<bool, String> {
        let mut client = self.state.pool.get().await.map_err(|e| e.to_string())?;
        let tx = crate::db::begin_as(&mut client, &self.ctx, &gucs("GET"), true)
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        let row = tx
            .query_one(
                "select exists(select 1 from public.conversations where id = $1)",
                &[&id],
            )
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        let _ = tx.rollback().await;
        Ok(row.get(0))
    }

    async fn join(&mut self, id: Uuid) -> Result<Option<Value>, Refusal> {
        if let Some(room) = self.rooms.get_mut(&id) {
            let u = users(self.guard.hub(), &room.key);
            room.users = u.clone();
            return Ok(Some(
                json!({"type": "joined", "conversation_id": id, "users": u}),
            ));
        }
        if self.rooms.len() >= MAX_ROOMS {
            return Err(frames::refusal(
                "too_many_conversations",
                format!("A connection may join at most {MAX_ROOMS} conversations."),
            ));
        }
        match self.can_read(id).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(frames::refusal(
                    "forbidden",
                    "The conversation does not exist or you may not read it.",
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "websocket-handler: join check failed");
                return Err(frames::refusal(
                    "internal_error",
                    "An internal error occurred.",
                ));
            }
        }
        // The change capture runs before the channel exists, so every row committed after
        // the `joined` answer reaches it.
        if let Err(e) = crate::realtime::changes::ensure_started(&self.state).await {
            tracing::error!(error = %e, "websocket-handler: change capture unavailable");
            return Err(frames::refusal(
                "unavailable",
                "New messages cannot be delivered right now; try again later.",
            ));
        }
        let key: TopicKey = (format!("{TOPIC_PREFIX}{id}"), true);
        let hub = self.guard.hub().clone();
        let chan = hub.new_chan_id();
        let binding = PgBinding {
            id: 1,
            action: "INSERT".into(),
            schema: "public".into(),
            table: "messages".into(),
            filters: vec![Filter {
                column: "conversation_id".into(),
                op: FilterOp::Eq,
                value: id.to_string(),
                negate: false,
            }],
            select: None,
        };
        hub.subscribe(
            key.clone(),
            chan,
            Sub {
                tx: self.tx.clone().into(),
                self_broadcast: false,
                broadcast_read: true,
                presence_read: true,
                pg: vec![binding],
                ctx: self.ctx.clone(),
            },
        );
        self.guard.add(key.clone(), chan);
        let mut meta = serde_json::Map::new();
        meta.insert("user_id".into(), json!(self.user));
        hub.track(&key, chan, &self.user.to_string(), meta);
        let u = users(&hub, &key);
        self.rooms.insert(
            id,
            Room {
                chan,
                key,
                users: u.clone(),
                typing: false,
            },
        );
        self.by_chan.insert(chan, id);
        Ok(Some(
            json!({"type": "joined", "conversation_id": id, "users": u}),
        ))
    }

    fn leave(&mut self, id: Uuid) -> Result<Option<Value>, Refusal> {
        self.stop_typing(id);
        let Some(room) = self.rooms.remove(&id) else {
            return Err(frames::refusal(
                "not_joined",
                "This connection has not joined the conversation.",
            ));
        };
        self.by_chan.remove(&room.chan);
        self.guard.unsubscribe(&room.key, room.chan);
        Ok(None)
    }

    /// A socket that leaves while typing tells the others it stopped.
    fn stop_typing(&mut self, id: Uuid) {
        if self.rooms.get(&id).is_some_and(|r| r.typing) {
            let _ = self.typing(id, false);
        }
    }

    fn typing(&mut self, id: Uuid, is_typing: bool) -> Result<Option<Value>, Refusal> {
        let Some(room) = self.rooms.get_mut(&id) else {
            return Err(frames::refusal(
                "not_joined",
                "Join the conversation before sending typing.",
            ));
        };
        room.typing = is_typing;
        let payload = json!({"type": "typing", "conversation_id": id, "user_id": self.user, "is_typing": is_typing});
        let msg = Broadcast::Json(
            json!({"type": "broadcast", "event": TYPING_EVENT, "payload": payload}),
        );
        crate::realtime::broadcast(&self.state, &room.key, Some(room.chan), msg);
        Ok(None)
    }

    /// Insert as the caller (RLS applies); the row comes back to every joined socket
    /// (this one included) through the change capture.
    async fn message(&mut self, id: Uuid, content: String) -> Result<Option<Value>, Refusal> {
        let internal = |e: String| {
            tracing::error!(error = %e, "websocket-handler: storing a message failed");
            frames::refusal("internal_error", "An internal error occurred.")
        };
        let mut client = self
            .state
            .pool
            .get()
            .await
            .map_err(|e| internal(e.to_string()))?;
        let tx = crate::db::begin_as(&mut client, &self.ctx, &gucs("POST"), false)
            .await
            .map_err(|e| internal(crate::db::error_text(&e)))?;
        let r = tx
            .execute(
                "insert into public.messages (conversation_id, user_id, role, content) \
                 values ($1, $2, 'user', $3)",
                &[&id, &self.user, &content],
            )
            .await;
        match r {
            Ok(_) => {
                tx.commit()
                    .await
                    .map_err(|e| internal(crate::db::error_text(&e)))?;
                Ok(None)
            }
            Err(e) => {
                use crate::db::error::{DbClass, DbError};
                let _ = tx.rollback().await;
                let d = DbError::of(&e);
                match d.class {
                    DbClass::InsufficientPrivilege | DbClass::RowLevelSecurity => {
                        Err(frames::refusal(
                            "forbidden",
                            "You may not post messages to this conversation.",
                        ))
                    }
                    DbClass::ForeignKeyViolation => Err(frames::refusal(
                        "not_found",
                        "The conversation does not exist.",
                    )),
                    _ => Err(internal(d.log)),
                }
            }
        }
    }

    /// Something the hub queued for one of this socket's channels.
    async fn deliver(&mut self, out: Out) -> bool {
        let chan = match &out {
            Out::Broadcast { chan, .. } | Out::Push { chan, .. } => *chan,
        };
        let Some(conv) = self.by_chan.get(&chan).copied() else {
            return true;
        };
        let frame = match out {
            Out::Broadcast { msg, .. } => match &*msg {
                Broadcast::Json(v)
                    if v.get("event").and_then(Value::as_str) == Some(TYPING_EVENT) =>
                {
                    let p = &v["payload"];
                    match (p["user_id"].as_str(), p["is_typing"].as_bool()) {
                        (Some(u), Some(b))
                            if p["conversation_id"].as_str() == Some(&conv.to_string()) =>
                        {
                            json!({"type": "typing", "conversation_id": conv, "user_id": u, "is_typing": b})
                        }
                        _ => return true,
                    }
                }
                _ => return true,
            },
            Out::Push {
                event: "presence_diff",
                ..
            } => {
                let Some(room) = self.rooms.get_mut(&conv) else {
                    return true;
                };
                let u = users(self.guard.hub(), &room.key);
                if u == room.users {
                    return true;
                }
                room.users = u.clone();
                json!({"type": "presence", "conversation_id": conv, "users": u})
            }
            Out::Push {
                event: "postgres_changes",
                payload,
                ..
            } => {
                let data = &payload["data"];
                if data["type"] != "INSERT" || data["table"] != "messages" {
                    return true;
                }
                json!({"type": "message", "message": data["record"]})
            }
            Out::Push { .. } => return true,
        };
        self.text(frame.to_string()).await
    }
}
