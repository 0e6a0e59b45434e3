//! One WebSocket connection: the HTTP upgrade, then one `select!` over the socket, the hub's
//! bounded queue and a one-second tick (token expiry, idle timeout). A Drop guard takes the
//! socket's channels out of the hub however the task ends.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::authz::{self, Policies};
use super::error::RealtimeError;
use super::hub::{Broadcast, ChanId, Hub, HubGuard, Out, Outbox, TopicKey};
use super::phoenix::{self, Msg, Payload, UserBroadcast, Vsn};
use super::token;
use super::upgrade::{self, WsStream};
use crate::http::{query_pairs, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;

mod join;

/// A client that sends nothing (not even heartbeats) for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages waiting for one socket. A socket that falls this far behind is closed (see
/// [`Outbox`]): its channels get a `system` error first, then the client reconnects.
const QUEUE: usize = 1024;
/// How long one frame may wait for a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Channels one socket may join (Supabase's default `max_channels_per_client`).
const MAX_CHANNELS: usize = 100;

/// `GET /realtime/v1/websocket`: authenticate the key, answer 101, run the socket.
pub async fn upgrade(state: &AppState, mut req: Req) -> Result<Resp, RealtimeError> {
    let key = upgrade::upgrade_key(&req).ok_or(RealtimeError::NotWebSocket)?;
    let h = req.headers();
    let q = query_pairs(req.uri().query());
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let vsn = Vsn::parse(get("vsn")).ok_or(RealtimeError::UnsupportedVsn)?;
    let apikey = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or(get("apikey"))
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .ok_or(RealtimeError::ApiKeyMissing)?;
    token::verify(state, &apikey)?;
    let cfg = WebSocketConfig {
        max_message_size: Some(state.config.max_body_bytes.max(1 << 20)),
        ..Default::default()
    };
    let state = state.clone();
    let run = move |ws| async move {
        if let Some(ws) = ws {
            run(state, ws, vsn, apikey).await;
        }
    };
    Ok(upgrade::accept(
        &mut req,
        key.as_bytes(),
        cfg,
        "realtime",
        run,
    ))
}

struct Channel {
    id: ChanId,
    join_ref: Option<String>,
    key: TopicKey,
    ack: bool,
    presence_key: String,
    presence_enabled: bool,
    token: String,
    ctx: AuthContext,
    exp: Option<i64>,
    policies: Option<Policies>,
    broadcast_write: Option<bool>,
    presence_write: Option<bool>,
    last_track: Option<Map<String, Value>>,
}

type Sink = futures::stream::SplitSink<WsStream, Message>;

struct Conn {
    state: AppState,
    hub: Arc<Hub>,
    vsn: Vsn,
    socket_token: String,
    tx: Outbox,
    sink: Sink,
    /// Joined channels by full topic (`realtime:<name>`).
    channels: HashMap<String, Channel>,
    by_id: HashMap<ChanId, String>,
    guard: HubGuard,
}

async fn run(state: AppState, ws: WsStream, vsn: Vsn, socket_token: String) {
    let (sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Out>(QUEUE);
    let hub = state.realtime.hub.clone();
    let mut c = Conn {
        guard: HubGuard::new(hub.clone()),
        tx: Outbox::new(tx, hub.counters.clone()),
        state,
        hub,
        vsn,
        socket_token,
        sink,
        channels: HashMap::new(),
        by_id: HashMap::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            m = stream.next() => {
                let Some(Ok(m)) = m else { break };
                last_seen = Instant::now();
                c.hub.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                let ok = match m {
                    Message::Text(t) => match phoenix::decode_text(c.vsn, &t) {
                        // Boxed: the handler's state (a join's database work) is large and
                        // lives only while it runs, instead of in every idle socket's task.
                        Ok(msg) => Box::pin(c.handle(msg)).await,
                        Err(e) => { tracing::debug!(error = %e.0, "realtime: undecodable frame"); true }
                    },
                    Message::Binary(b) => match phoenix::decode_binary(&b) {
                        Ok(msg) if c.vsn == Vsn::V2 => Box::pin(c.handle(msg)).await,
                        Ok(_) => true,
                        Err(e) => { tracing::debug!(error = %e.0, "realtime: undecodable binary frame"); true }
                    },
                    Message::Ping(p) => c.sink.send(Message::Pong(p)).await.is_ok(),
                    Message::Close(_) => break,
                    _ => true,
                };
                if !ok { break }
            }
            Some(out) = rx.recv() => {
                if c.tx.overflowed() {
                    c.overflow().await;
                    break;
                }
                if !c.deliver(out).await { break }
            }
            _ = tick.tick() => {
                // Idle client, or the server is shutting down (its pool is closed).
                if last_seen.elapsed() > IDLE_TIMEOUT || c.state.pool.is_closed() { break }
                if !c.expire_tokens().await { break }
            }
        }
    }
    let _ = c.sink.close().await;
}

impl Conn {
    async fn text(&mut self, s: String) -> bool {
        self.frame(Message::Text(s)).await
    }

    /// Send one frame; false ends the connection. A client that takes no data for
    /// `SEND_TIMEOUT` (its TCP window stays shut) is dropped: meanwhile nothing of this
    /// socket, not even its overflow, can be handled.
    async fn frame(&mut self, m: Message) -> bool {
        self.hub
            .counters
            .messages_out
            .fetch_add(1, Ordering::Relaxed);
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, self.sink.send(m)).await,
            Ok(Ok(()))
        )
    }

    /// The queue overflowed (messages were refused): each channel gets a `system` error and
    /// the socket closes with 1013 (try again later). The client reconnects and rejoins
    /// instead of going on with holes in its stream; the backlog is not sent.
    async fn overflow(&mut self) {
        self.hub
            .counters
            .overflow_closes
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            channels = self.channels.len(),
            "realtime: a client fell {QUEUE} messages behind; closing its socket"
        );
        let topics: Vec<(String, Option<String>, String)> = self
            .channels
            .iter()
            .map(|(t, c)| (t.clone(), c.join_ref.clone(), c.key.0.clone()))
            .collect();
        for (topic, join_ref, sub_topic) in topics {
            let sys = RealtimeError::SlowClient.system_payload(&sub_topic);
            if !self.push(&topic, join_ref.as_deref(), "system", &sys).await {
                return;
            }
        }
        let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Again,
            reason: "too many messages queued".into(),
        };
        let _ = self.frame(Message::Close(Some(close))).await;
    }

    /// An error reply to `m`.
    async fn refuse(&mut self, m: &Msg, e: RealtimeError) -> bool {
        self.reply(m, false, e.reply_payload()).await
    }

    async fn reply(&mut self, m: &Msg, ok: bool, response: Value) -> bool {
        let s = phoenix::reply(
            self.vsn,
            m.join_ref.as_deref(),
            m.reference.as_deref(),
            &m.topic,
            ok,
            response,
        );
        self.text(s).await
    }

    async fn push(
        &mut self,
        topic: &str,
        join_ref: Option<&str>,
        event: &str,
        payload: &Value,
    ) -> bool {
        let s = phoenix::encode(self.vsn, join_ref, None, topic, event, payload);
        self.text(s).await
    }

    /// System message then phx_close: the channel is shut down (e.g. expired token).
    async fn shutdown_channel(&mut self, topic: &str, e: RealtimeError) -> bool {
        let Some(ch) = self.remove_channel(topic) else {
            return true;
        };
        let sys = e.system_payload(&ch.key.0);
        self.push(topic, ch.join_ref.as_deref(), "system", &sys)
            .await
            && self
                .push(topic, ch.join_ref.as_deref(), "phx_close", &json!({}))
                .await
    }

    fn remove_channel(&mut self, topic: &str) -> Option<Channel> {
        let ch = self.channels.remove(topic)?;
        self.by_id.remove(&ch.id);
        self.guard.unsubscribe(&ch.key, ch.id);
        Some(ch)
    }

    async fn expire_tokens(&mut self) -> bool {
        let now = token::now();
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter_map(|(t, c)| c.exp.filter(|e| *e <= now).map(|e| (t.clone(), e)))
            .collect();
        for (t, e) in expired {
            let e = RealtimeError::ExpiredWhileJoined(now - e);
            if !self.shutdown_channel(&t, e).await {
                return false;
            }
        }
        true
    }

    async fn deliver(&mut self, out: Out) -> bool {
        let chan = match &out {
            Out::Broadcast { chan, .. } | Out::Push { chan, .. } => *chan,
        };
        let Some(topic) = self.by_id.get(&chan).cloned() else {
            return true;
        };
        let join_ref = self.channels.get(&topic).and_then(|c| c.join_ref.clone());
        match out {
            Out::Push { event, payload, .. } => {
                self.push(&topic, join_ref.as_deref(), event, &payload)
                    .await
            }
            Out::Broadcast { msg, .. } => match (&*msg, self.vsn) {
                (Broadcast::Json(p), _) => self.push(&topic, None, "broadcast", p).await,
                (Broadcast::User(ub), Vsn::V2) => {
                    match phoenix::encode_user_broadcast(&topic, ub) {
                        Some(b) => self.frame(Message::Binary(b.to_vec())).await,
                        None => true,
                    }
                }
                (Broadcast::User(ub), Vsn::V1) => match phoenix::user_broadcast_as_json(ub) {
                    Some(p) => self.push(&topic, None, "broadcast", &p).await,
                    None => true,
                },
            },
        }
    }

    /// Handle one client message; false ends the connection.
    async fn handle(&mut self, m: Msg) -> bool {
        if m.topic == "phoenix" {
            return if m.event == "heartbeat" {
                self.reply(&m, true, json!({})).await
            } else {
                self.refuse(&m, RealtimeError::UnmatchedTopic).await
            };
        }
        match m.event.as_str() {
            "phx_join" => return self.join(m).await,
            "phx_leave" => {
                self.remove_channel(&m.topic);
                return self.reply(&m, true, json!({})).await;
            }
            _ => {}
        }
        if !self.channels.contains_key(&m.topic) {
            return self.refuse(&m, RealtimeError::UnmatchedTopic).await;
        }
        match m.event.as_str() {
            "broadcast" => self.broadcast(m).await,
            "presence" => self.presence(m).await,
            "access_token" => self.access_token(m).await,
            other => {
                self.refuse(&m, RealtimeError::UnexpectedEvent(other.to_string()))
                    .await
            }
        }
    }

    /// May this connection write `extension` messages on the private channel `topic`?
    /// Asked once and kept in the channel's `cache` slot; a failed query denies.
    async fn may_write(
        &mut self,
        topic: &str,
        extension: &str,
        cache: fn(&mut Channel) -> &mut Option<bool>,
    ) -> bool {
        let Some(ch) = self.channels.get_mut(topic) else {
            return false;
        };
        if let Some(a) = *cache(ch) {
            return a;
        }
        let (ctx, sub_topic) = (ch.ctx.clone(), ch.key.0.clone());
        let a = authz::can_write(&self.state, &ctx, &sub_topic, extension)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, extension, "realtime: authorization query failed");
                false
            });
        if let Some(ch) = self.channels.get_mut(topic) {
            *cache(ch) = Some(a);
        }
        a
    }

    async fn broadcast(&mut self, m: Msg) -> bool {
        let Some(ch) = self.channels.get(&m.topic) else {
            return true;
        };
        let (key, id, ack) = (ch.key.clone(), ch.id, ch.ack);
        // Supabase answers nothing to an unauthorized broadcast (an acked send times out).
        if key.1
            && !self
                .may_write(&m.topic, "broadcast", |c| &mut c.broadcast_write)
                .await
        {
            return true;
        }
        // Frame metadata (e.g. persist) is not forwarded, as in Supabase.
        let msg = match m.payload.clone() {
            Payload::UserBroadcast(ub) => Broadcast::User(UserBroadcast { meta: None, ..ub }),
            Payload::Json(v) => Broadcast::Json(v),
        };
        super::broadcast(&self.state, &key, Some(id), msg);
        if ack {
            return self.reply(&m, true, json!({})).await;
        }
        true
    }

    async fn presence(&mut self, m: Msg) -> bool {
        let Payload::Json(p) = &m.payload else {
            return self.refuse(&m, RealtimeError::Refused).await;
        };
        let event = p
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let Some(ch) = self.channels.get(&m.topic) else {
            return true;
        };
        let (key, id, pkey) = (ch.key.clone(), ch.id, ch.presence_key.clone());
        match event.as_str() {
            "track" => {
                let data = p.get("payload").cloned().unwrap_or(json!({}));
                let Value::Object(data) = data else {
                    return self.refuse(&m, RealtimeError::PresenceNotMap).await;
                };
                if key.1
                    && !self
                        .may_write(&m.topic, "presence", |c| &mut c.presence_write)
                        .await
                {
                    return self.refuse(&m, RealtimeError::Refused).await;
                }
                let Some(ch) = self.channels.get_mut(&m.topic) else {
                    return true;
                };
                ch.presence_enabled = true;
                if ch.last_track.as_ref() != Some(&data) {
                    ch.last_track = Some(data.clone());
                    self.hub.track(&key, id, &pkey, data);
                }
                self.reply(&m, true, json!({})).await
            }
            "untrack" => {
                if let Some(ch) = self.channels.get_mut(&m.topic) {
                    ch.last_track = None;
                }
                self.hub.untrack(&key, id);
                self.reply(&m, true, json!({})).await
            }
            _ => self.refuse(&m, RealtimeError::Refused).await,
        }
    }

    async fn access_token(&mut self, m: Msg) -> bool {
        let new = match &m.payload {
            Payload::Json(p) => p
                .get("access_token")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let Some(ch) = self.channels.get(&m.topic) else {
            return true;
        };
        let new = match new {
            Some(t) if !t.starts_with("sb_") && t != ch.token => t,
            _ => return self.reply(&m, true, json!({})).await,
        };
        let (ctx, exp) = match token::verify(&self.state, &new) {
            Ok(x) => x,
            Err(e) => {
                return self
                    .shutdown_channel(&m.topic.clone(), RealtimeError::Token(e))
                    .await
            }
        };
        let (key, id) = (ch.key.clone(), ch.id);
        let old_policies = ch.policies;
        let mut policies = None;
        if key.1 {
            match authz::read_policies(&self.state, &ctx, &key.0).await {
                Ok(p) => {
                    let revoked = old_policies.is_some_and(|o| {
                        (o.broadcast_read && !p.broadcast_read)
                            || (o.presence_read && !p.presence_read)
                    });
                    if revoked {
                        let e = RealtimeError::ReadRevoked(key.0.clone());
                        return self.shutdown_channel(&m.topic.clone(), e).await;
                    }
                    policies = Some(p);
                }
                Err(_) => {
                    return self
                        .shutdown_channel(&m.topic.clone(), RealtimeError::PoliciesUnavailable)
                        .await
                }
            }
        }
        let Some(ch) = self.channels.get_mut(&m.topic) else {
            return true;
        };
        ch.token = new;
        ch.ctx = ctx.clone();
        ch.exp = exp;
        ch.policies = policies.or(ch.policies);
        ch.broadcast_write = None;
        ch.presence_write = None;
        let broadcast_read = ch.policies.map(|p| p.broadcast_read).unwrap_or(true);
        let presence_read = ch.policies.map(|p| p.presence_read).unwrap_or(true);
        self.hub.update_sub(&key, id, |s| {
            s.ctx = ctx;
            s.broadcast_read = broadcast_read;
            s.presence_read = presence_read;
        });
        self.reply(&m, true, json!({})).await
    }
}
