//! One WebSocket connection: the HTTP upgrade, then one `select!` over the socket, the hub's
//! bounded queue and a one-second tick (token expiry, idle timeout). A Drop guard takes the
//! socket's channels out of the hub however the task ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::authz::{self, Policies};
use super::changes::{self, PgBinding};
use super::error::RealtimeError;
use super::hub::{Broadcast, ChanId, Hub, HubGuard, Out, Sub, TopicKey};
use super::phoenix::{self, Msg, Payload, UserBroadcast, Vsn};
use super::token;
use super::upgrade::{self, WsStream};
use crate::http::{query_pairs, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;

/// A client that sends nothing (not even heartbeats) for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const QUEUE: usize = 1024;
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
    tx: mpsc::Sender<Out>,
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
        state,
        hub,
        vsn,
        socket_token,
        tx,
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
                let ok = match m {
                    Message::Text(t) => match phoenix::decode_text(c.vsn, &t) {
                        Ok(msg) => c.handle(msg).await,
                        Err(e) => { tracing::debug!(error = %e.0, "realtime: undecodable frame"); true }
                    },
                    Message::Binary(b) => match phoenix::decode_binary(&b) {
                        Ok(msg) if c.vsn == Vsn::V2 => c.handle(msg).await,
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

fn flexible_bool(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// A join's replay request (`config.broadcast.replay`): private channels only, `since` in
/// Unix milliseconds, `limit` 25 unless given.
fn replay_request(config: &Value, private: bool) -> Result<Option<(i64, i64)>, RealtimeError> {
    let r = match config.pointer("/broadcast/replay") {
        None | Some(Value::Null) => return Ok(None),
        Some(r) => r,
    };
    if !private {
        return Err(RealtimeError::ReplayPublic);
    }
    match (r.get("since").and_then(Value::as_i64), r.get("limit")) {
        (Some(since), None | Some(Value::Null)) => Ok(Some((since, 25))),
        (Some(since), Some(l)) if l.is_i64() => Ok(Some((since, l.as_i64().unwrap_or(25)))),
        _ => Err(RealtimeError::ReplayParams),
    }
}

/// Stored broadcasts replayed to a joining channel: (id, event, payload).
type Replayed = Vec<(uuid::Uuid, String, Value)>;

/// The read policies of a private channel's join (`None` for a public one) and the
/// broadcasts it asked to replay.
async fn authorize(
    state: &AppState,
    ctx: &AuthContext,
    sub_topic: &str,
    private: bool,
    presence_enabled: bool,
    replay: Option<(i64, i64)>,
) -> Result<(Option<Policies>, Replayed), RealtimeError> {
    let mut policies = None;
    if private {
        match authz::read_policies(state, ctx, sub_topic).await {
            // Presence read counts only when presence is enabled (as in Supabase).
            Ok(p) if p.broadcast_read || (presence_enabled && p.presence_read) => {
                policies = Some(p)
            }
            Ok(_) => return Err(RealtimeError::ReadDenied(sub_topic.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "realtime: authorization query failed");
                return Err(RealtimeError::PoliciesUnavailable);
            }
        }
    }
    let Some((since, limit)) = replay else {
        return Ok((policies, vec![]));
    };
    if !policies.is_some_and(|p| p.broadcast_read) {
        return Err(RealtimeError::ReadDenied(sub_topic.to_string()));
    }
    match authz::replay(state, sub_topic, since, limit).await {
        Ok(r) => Ok((policies, r)),
        Err(e) => {
            tracing::error!(error = %e, "realtime: replay query failed");
            Err(RealtimeError::ReplayFailed)
        }
    }
}

/// The postgres_changes part of a join: every entry echoed (same order, same fields) with
/// its id; invalid or unpublished ones are reported afterwards with a system message, as
/// Supabase does.
struct PgJoin {
    /// The join asked for postgres_changes at all.
    requested: bool,
    echo: Vec<Value>,
    bindings: Vec<PgBinding>,
    errors: Vec<String>,
}

impl PgJoin {
    async fn new(state: &AppState, config: &Value) -> PgJoin {
        let params: Vec<Value> = config
            .get("postgres_changes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !v.is_null())
            .collect();
        let mut pg = PgJoin {
            requested: !params.is_empty(),
            echo: vec![],
            bindings: vec![],
            errors: vec![],
        };
        for p in &params {
            let id = changes::binding_id(p);
            let mut e = p.clone();
            if let Some(o) = e.as_object_mut() {
                o.insert("id".into(), json!(id));
            }
            pg.echo.push(e);
            match changes::parse_binding(p, id) {
                Ok(b) => pg.bindings.push(b),
                Err(msg) => pg.errors.push(msg),
            }
        }
        if pg.bindings.is_empty() {
            return pg;
        }
        if let Err(e) = changes::ensure_started(state).await {
            tracing::error!(error = %e, "realtime: change capture unavailable");
            pg.errors
                .push(format!("Unable to subscribe to changes: {e}"));
            pg.bindings.clear();
            return pg;
        }
        let mut ok = vec![];
        for b in std::mem::take(&mut pg.bindings) {
            match changes::check_published(state, &b).await {
                Ok(()) => ok.push(b),
                Err(e) => pg.errors.push(e),
            }
        }
        pg.bindings = ok;
        pg
    }
}

impl Conn {
    async fn text(&mut self, s: String) -> bool {
        self.sink.send(Message::Text(s)).await.is_ok()
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
    async fn shutdown_channel(&mut self, topic: &str, message: &str) -> bool {
        let Some(ch) = self.remove_channel(topic) else {
            return true;
        };
        let sys =
            json!({"extension":"system","status":"error","message":message,"channel":ch.key.0});
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
            let msg = format!("Token has expired {} seconds ago", now - e);
            if !self.shutdown_channel(&t, &msg).await {
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
                        Some(b) => self.sink.send(Message::Binary(b.to_vec())).await.is_ok(),
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

    async fn join(&mut self, m: Msg) -> bool {
        let Some(sub_topic) = m.topic.strip_prefix("realtime:").map(str::to_string) else {
            return self.refuse(&m, RealtimeError::UnmatchedTopic).await;
        };
        if sub_topic.is_empty() {
            return self.refuse(&m, RealtimeError::TopicNameRequired).await;
        }
        let payload = match &m.payload {
            Payload::Json(v) => v.clone(),
            Payload::UserBroadcast(_) => json!({}),
        };
        let config = payload.get("config").cloned().unwrap_or(json!({}));
        let private = flexible_bool(config.get("private"));
        let self_broadcast = flexible_bool(config.pointer("/broadcast/self"));
        let ack = flexible_bool(config.pointer("/broadcast/ack"));
        let presence_enabled = flexible_bool(config.pointer("/presence/enabled"));
        let presence_key = config
            .pointer("/presence/key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if self.channels.len() >= MAX_CHANNELS && !self.channels.contains_key(&m.topic) {
            return self.refuse(&m, RealtimeError::TooManyChannels).await;
        }
        // Rejoining a joined topic replaces the old channel.
        if let Some(old) = self.remove_channel(&m.topic) {
            if !self
                .push(&m.topic, old.join_ref.as_deref(), "phx_close", &json!({}))
                .await
            {
                return false;
            }
        }
        let token = match payload
            .get("access_token")
            .or_else(|| payload.get("user_token"))
            .and_then(Value::as_str)
        {
            Some(t) if !t.starts_with("sb_") => t.to_string(),
            _ => self.socket_token.clone(),
        };
        let (ctx, exp) = match token::verify(&self.state, &token) {
            Ok(x) => x,
            Err(e) => return self.refuse(&m, e.into()).await,
        };
        let access = match replay_request(&config, private) {
            Ok(replay) => {
                let topic = &sub_topic;
                authorize(&self.state, &ctx, topic, private, presence_enabled, replay).await
            }
            Err(e) => Err(e),
        };
        let (policies, replayed) = match access {
            Ok(x) => x,
            Err(e) => return self.refuse(&m, e).await,
        };
        let pg = PgJoin::new(&self.state, &config).await;
        let id = self.hub.new_chan_id();
        let key: TopicKey = (sub_topic.clone(), private);
        let broadcast_read = policies.map(|p| p.broadcast_read).unwrap_or(true);
        let presence_read = policies.map(|p| p.presence_read).unwrap_or(true);
        self.hub.subscribe(
            key.clone(),
            id,
            Sub {
                tx: self.tx.clone(),
                self_broadcast,
                broadcast_read,
                presence_read,
                pg: pg.bindings,
                ctx: ctx.clone(),
            },
        );
        self.guard.add(key.clone(), id);
        self.by_id.insert(id, m.topic.clone());
        self.channels.insert(
            m.topic.clone(),
            Channel {
                id,
                join_ref: m.join_ref.clone().or_else(|| m.reference.clone()),
                key: key.clone(),
                ack,
                presence_key,
                presence_enabled,
                token,
                ctx,
                exp,
                policies,
                broadcast_write: None,
                presence_write: None,
                last_track: None,
            },
        );
        if !self
            .reply(&m, true, json!({"postgres_changes": pg.echo}))
            .await
        {
            return false;
        }
        let join_ref = m.join_ref.clone().or_else(|| m.reference.clone());
        for (id, event, payload) in replayed {
            let msg = json!({"type":"broadcast","event":event,"payload":payload,"meta":{"replayed":true,"id":id}});
            if !self
                .push(&m.topic, join_ref.as_deref(), "broadcast", &msg)
                .await
            {
                return false;
            }
        }
        if presence_enabled && policies.is_none_or(|p| p.presence_read) {
            let st = self.hub.presence_state(&key);
            if !self
                .push(&m.topic, join_ref.as_deref(), "presence_state", &st)
                .await
            {
                return false;
            }
        }
        if pg.requested {
            let (status, message) = if pg.errors.is_empty() {
                ("ok", "Subscribed to PostgreSQL".to_string())
            } else {
                ("error", pg.errors.join("; "))
            };
            let sys = json!({"extension":"postgres_changes","status":status,"message":message,"channel":sub_topic});
            if !self
                .push(&m.topic, join_ref.as_deref(), "system", &sys)
                .await
            {
                return false;
            }
        }
        true
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
            Err(e) => return self.shutdown_channel(&m.topic.clone(), &e.message()).await,
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
                        let msg = format!(
                            "You no longer have permission to read from this Channel topic: {}",
                            key.0
                        );
                        return self.shutdown_channel(&m.topic.clone(), &msg).await;
                    }
                    policies = Some(p);
                }
                Err(_) => {
                    return self
                        .shutdown_channel(
                            &m.topic.clone(),
                            "Realtime was unable to connect to the project database",
                        )
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
