//! A channel join (`phx_join`): the topic and config, the token, the private channel's
//! read policies and replay, the postgres_changes bindings, then the replies.

use serde_json::{json, Value};

use super::{Channel, Conn, MAX_CHANNELS};
use crate::identity::AuthContext;
use crate::realtime::authz::{self, Policies};
use crate::realtime::changes::{self, PgBinding};
use crate::realtime::error::RealtimeError;
use crate::realtime::hub::{Sub, TopicKey};
use crate::realtime::phoenix::{Msg, Payload};
use crate::realtime::token;
use crate::state::AppState;

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

/// What a successful join answers besides the subscription itself.
struct JoinReplies {
    echo: Vec<Value>,
    replayed: Replayed,
    /// Send the presence state (presence enabled and readable).
    presence: bool,
    /// The postgres_changes errors, when the join asked for postgres_changes.
    pg_errors: Option<Vec<String>>,
}

impl Conn {
    pub(super) async fn join(&mut self, m: Msg) -> bool {
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
        let replies = JoinReplies {
            echo: pg.echo,
            replayed,
            presence: presence_enabled && policies.is_none_or(|p| p.presence_read),
            pg_errors: pg.requested.then_some(pg.errors),
        };
        self.send_join_replies(&m, &key, &sub_topic, replies).await
    }

    /// The replies to a successful join, in Supabase's order: the join reply (echoing the
    /// postgres_changes bindings), replayed broadcasts, the presence state, and the
    /// postgres_changes system message.
    async fn send_join_replies(
        &mut self,
        m: &Msg,
        key: &TopicKey,
        sub_topic: &str,
        r: JoinReplies,
    ) -> bool {
        if !self
            .reply(m, true, json!({"postgres_changes": r.echo}))
            .await
        {
            return false;
        }
        let join_ref = m.join_ref.clone().or_else(|| m.reference.clone());
        for (id, event, payload) in r.replayed {
            let msg = json!({"type":"broadcast","event":event,"payload":payload,"meta":{"replayed":true,"id":id}});
            if !self
                .push(&m.topic, join_ref.as_deref(), "broadcast", &msg)
                .await
            {
                return false;
            }
        }
        if r.presence {
            let st = self.hub.presence_state(key);
            if !self
                .push(&m.topic, join_ref.as_deref(), "presence_state", &st)
                .await
            {
                return false;
            }
        }
        if let Some(errors) = r.pg_errors {
            let sys = if errors.is_empty() {
                json!({"extension": "postgres_changes", "status": "ok",
                       "message": "Subscribed to PostgreSQL", "channel": sub_topic})
            } else {
                RealtimeError::PostgresChanges(errors.join("; ")).system_payload(sub_topic)
            };
            if !self
                .push(&m.topic, join_ref.as_deref(), "system", &sys)
                .await
            {
                return false;
            }
        }
        true
    }
}
