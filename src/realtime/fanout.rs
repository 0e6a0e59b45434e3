//! Broadcasts across oxibase processes that share one database: each broadcast is also sent
//! with `pg_notify` on one channel, and every process LISTENs there and delivers what other
//! processes published to its own subscribers. NOTIFY payloads are capped by PostgreSQL
//! (8000 bytes), so a larger broadcast goes out as numbered chunks notified in one
//! transaction (delivered contiguously and in order) and is reassembled on arrival.
//! Presence travels the same way: each process announces its channels' presences when they
//! change and again every few seconds; remote presences not announced for a while are
//! dropped (their process is gone), with the usual leave diffs.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::hub::{Broadcast, Owner, PresenceChange, TopicKey};
use super::phoenix::UserBroadcast;
use crate::state::AppState;

pub const CHANNEL: &str = "oxibase_realtime";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;
/// Chunk size (bytes of the encoded message) for larger broadcasts: escaping inside the
/// chunk wrapper at most doubles it, which still fits a NOTIFY.
const CHUNK: usize = 3800;

pub struct Fanout {
    /// This process's id, so it ignores its own notifications.
    pub origin: String,
    /// Each item: the NOTIFY payloads of one broadcast (one, or its chunks in order).
    tx: mpsc::Sender<Vec<String>>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Vec<String>>>>,
    /// Fan-out to other processes on (the LISTEN connection uses `AppState::db_config`).
    enabled: bool,
}

impl Fanout {
    pub fn new(enabled: bool) -> Fanout {
        let (tx, rx) = mpsc::channel(4096);
        Fanout {
            origin: uuid::Uuid::new_v4().simple().to_string(),
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            enabled,
        }
    }

    /// Queue a broadcast for the other processes (never blocks the caller).
    pub fn publish(&self, key: &TopicKey, msg: &Broadcast) {
        if !self.enabled {
            return;
        }
        let body = encode(&self.origin, key, msg);
        let parts = if body.len() <= MAX_PAYLOAD {
            vec![body]
        } else {
            chunks(&self.origin, &body)
        };
        if self.tx.try_send(parts).is_err() {
            tracing::warn!("realtime: fan-out queue full; a broadcast stayed local");
        }
    }
}

/// How often local presences are announced, and when unannounced remote ones expire.
const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
const PRESENCE_EXPIRY: Duration = Duration::from_secs(35);

fn presence_payload(origin: &str, key: &TopicKey, change: &PresenceChange) -> String {
    match change {
        PresenceChange::Track { chan, pkey, meta } => {
            json!({"o": origin, "t": key.0, "p": key.1, "pr": "track", "c": chan, "k": pkey, "m": meta})
        }
        PresenceChange::Untrack { chan } => {
            json!({"o": origin, "t": key.0, "p": key.1, "pr": "untrack", "c": chan})
        }
    }
    .to_string()
}

/// Apply a presence announcement from another process; false if it is not one.
fn apply_presence(state: &AppState, me: &str, v: &Value) -> Option<bool> {
    let op = v.get("pr")?.as_str()?;
    let origin = v.get("o")?.as_str()?;
    if origin == me {
        return Some(true);
    }
    let key = (v.get("t")?.as_str()?.to_string(), v.get("p")?.as_bool()?);
    let owner = Owner::Remote {
        origin: origin.to_string(),
        chan: v.get("c")?.as_u64()?,
    };
    let hub = &state.realtime.hub;
    match op {
        "track" => {
            let pkey = v.get("k")?.as_str()?;
            let meta = v.get("m")?.as_object()?.clone();
            hub.remote_track(&key, owner, pkey, meta);
        }
        _ => hub.remote_untrack(&key, &owner),
    }
    Some(true)
}

async fn purge_old_messages(state: &AppState) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| crate::db::error_text(&e);
    let mut client = state.pool.get().await.map_err(|e| e.to_string())?;
    let tx = super::authz::admin_tx(&mut client, false)
        .await
        .map_err(e)?;
    tx.batch_execute(
        "delete from realtime.messages where inserted_at < now()::timestamp - interval '72 hours'",
    )
    .await
    .map_err(e)?;
    tx.commit().await.map_err(e)
}

/// Read a committed realtime.messages row and broadcast it here (meta `{id}`, as Supabase).
async fn deliver_db_message(state: &AppState, id: &str) -> Result<(), String> {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Ok(());
    };
    let e = |e: tokio_postgres::Error| crate::db::error_text(&e);
    let mut client = state.pool.get().await.map_err(|e| e.to_string())?;
    let tx = super::authz::admin_tx(&mut client, true).await.map_err(e)?;
    let row = tx
        .query_opt(
            "select topic, coalesce(event, ''), payload::text, coalesce(private, false)
               from realtime.messages where id = $1 limit 1",
            &[&id],
        )
        .await
        .map_err(e)?;
    let _ = tx.commit().await;
    let Some(row) = row else { return Ok(()) };
    let (topic, event, payload, private): (String, String, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let msg = Broadcast::User(UserBroadcast {
        event,
        json: true,
        data: payload.into_bytes().into(),
        meta: Some(json!({ "id": id }).to_string()),
    });
    state.realtime.hub.broadcast(&(topic, private), None, msg);
    Ok(())
}

/// Split an encoded message into chunk payloads `{o,x,i,n,c}`.
fn chunks(origin: &str, body: &str) -> Vec<String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut pieces = vec![];
    let mut rest = body;
    while !rest.is_empty() {
        let mut end = CHUNK.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    let n = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, c)| json!({"o": origin, "x": id, "i": i, "n": n, "c": c}).to_string())
        .collect()
}

/// Reassembles chunked messages; whole messages pass straight through.
#[derive(Default)]
struct Assembler {
    partial: std::collections::HashMap<String, Vec<Option<String>>>,
}

impl Assembler {
    fn push(&mut self, payload: String) -> Option<String> {
        let v: Value = serde_json::from_str(&payload).ok()?;
        let Some(id) = v.get("x").and_then(Value::as_str) else {
            return Some(payload);
        };
        let key = format!("{}:{id}", v.get("o")?.as_str()?);
        let n = v.get("n")?.as_u64()? as usize;
        let i = v.get("i")?.as_u64()? as usize;
        if n == 0 || i >= n || n > 100_000 {
            return None;
        }
        // A sender that died mid-message leaves a partial entry: keep the map bounded.
        if self.partial.len() > 256 {
            self.partial.clear();
        }
        let slots = self
            .partial
            .entry(key.clone())
            .or_insert_with(|| vec![None; n]);
        if slots.len() != n {
            self.partial.remove(&key);
            return None;
        }
        slots[i] = Some(v.get("c")?.as_str()?.to_string());
        if slots.iter().all(Option::is_some) {
            let parts = self.partial.remove(&key)?;
            return Some(parts.into_iter().flatten().collect());
        }
        None
    }
}

fn encode(origin: &str, key: &TopicKey, msg: &Broadcast) -> String {
    match msg {
        Broadcast::Json(v) => json!({"o": origin, "t": key.0, "p": key.1, "v": v}),
        Broadcast::User(ub) => json!({
            "o": origin, "t": key.0, "p": key.1, "e": ub.event, "j": ub.json,
            "d": base64::engine::general_purpose::STANDARD.encode(&ub.data),
        }),
    }
    .to_string()
}

/// (origin, topic, message) of a notification payload.
fn decode(s: &str) -> Option<(String, TopicKey, Broadcast)> {
    let v: Value = serde_json::from_str(s).ok()?;
    let origin = v.get("o")?.as_str()?.to_string();
    let key = (v.get("t")?.as_str()?.to_string(), v.get("p")?.as_bool()?);
    let msg = match v.get("v") {
        Some(j) => Broadcast::Json(j.clone()),
        None => Broadcast::User(UserBroadcast {
            event: v.get("e")?.as_str()?.to_string(),
            json: v.get("j")?.as_bool()?,
            data: base64::engine::general_purpose::STANDARD
                .decode(v.get("d")?.as_str()?)
                .ok()?
                .into(),
            meta: None,
        }),
    };
    Some((origin, key, msg))
}

/// At shutdown, before the pool closes: tell the other processes that this one's presences
/// are gone. Without it they would show them until they expire ([`PRESENCE_EXPIRY`]), beside
/// the same users tracked again on a live process after their clients reconnect.
pub async fn withdraw_presences(state: &AppState) {
    let fan = &state.realtime.fanout;
    if !fan.enabled {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    let untracks: Vec<String> = state
        .realtime
        .hub
        .local_presences()
        .into_iter()
        .filter(|(key, chan, _, _)| seen.insert((key.clone(), *chan)))
        .map(|(key, chan, _, _)| {
            presence_payload(&fan.origin, &key, &PresenceChange::Untrack { chan })
        })
        .collect();
    if untracks.is_empty() {
        return;
    }
    let sent = async {
        let c = state.pool.get().await.map_err(|e| e.to_string())?;
        for batch in untracks.chunks(500) {
            c.execute(
                "select pg_notify('oxibase_realtime', m) from unnest($1::text[]) m",
                &[&batch],
            )
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), sent).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "realtime: withdrawing presences at shutdown failed")
        }
        Err(_) => tracing::warn!("realtime: withdrawing presences at shutdown timed out"),
    }
}

/// Start the publisher (through the pool) and the listener (its own connection).
pub fn start(state: &AppState) {
    if !state.realtime.fanout.enabled {
        return;
    }
    let url = state.db_config.clone();
    let Some(mut rx) = state
        .realtime
        .fanout
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    // Local presence changes are announced as they happen, and all of them periodically;
    // remote ones that stop being announced expire.
    let (origin, tx) = (
        state.realtime.fanout.origin.clone(),
        state.realtime.fanout.tx.clone(),
    );
    let _ = state
        .realtime
        .hub
        .on_presence
        .set(Box::new(move |key, change| {
            let _ = tx.try_send(vec![presence_payload(&origin, key, &change)]);
        }));
    let st = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRESENCE_REFRESH);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            if st.pool.is_closed() {
                break;
            }
            n += 1;
            // Hourly: stored broadcasts are kept 72 hours, as in Supabase.
            if n % 360 == 1 {
                if let Err(e) = purge_old_messages(&st).await {
                    tracing::warn!(error = %e, "realtime: purging old realtime.messages failed");
                }
            }
            let fan = &st.realtime.fanout;
            let all: Vec<String> = st
                .realtime
                .hub
                .local_presences()
                .into_iter()
                .map(|(key, chan, pkey, meta)| {
                    presence_payload(
                        &fan.origin,
                        &key,
                        &PresenceChange::Track { chan, pkey, meta },
                    )
                })
                .collect();
            for batch in all.chunks(100) {
                let _ = fan.tx.try_send(batch.to_vec());
            }
            st.realtime.hub.expire_remote(PRESENCE_EXPIRY);
        }
    });
    let st = state.clone();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Several broadcasts per statement; a chunked one always stays within one.
            let mut batch = first;
            while batch.len() < 200 {
                match rx.try_recv() {
                    Ok(m) => batch.extend(m),
                    Err(_) => break,
                }
            }
            let sent = async {
                let c = st.pool.get().await.map_err(|e| e.to_string())?;
                c.execute(
                    "select pg_notify('oxibase_realtime', m) from unnest($1::text[]) m",
                    &[&batch],
                )
                .await
                .map_err(|e| crate::db::error_text(&e))
            }
            .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "realtime: fan-out publish failed");
            }
        }
    });
    let st = state.clone();
    tokio::spawn(async move {
        // Reconnects with backoff when the database goes away (restart, crash); a warning
        // when the connection is lost, then quiet retries until it is back.
        let mut backoff = crate::db::Backoff::new(Duration::from_secs(5));
        let mut down = false;
        loop {
            let r = listen(&st, &url, &mut down, &mut backoff).await;
            if st.pool.is_closed() {
                break;
            }
            match r {
                Err(e) if !down => {
                    down = true;
                    tracing::warn!(error = %e, "realtime: fan-out listener stopped; reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, "realtime: fan-out listener still down"),
                Ok(()) => {}
            }
            backoff.wait().await;
        }
    });
}

async fn listen(
    state: &AppState,
    url: &tokio_postgres::Config,
    down: &mut bool,
    backoff: &mut crate::db::Backoff,
) -> Result<(), String> {
    let (_client, mut rx) = crate::db::listen(url, CHANNEL).await?;
    if std::mem::take(down) {
        tracing::info!("realtime: fan-out listener reconnected");
    }
    backoff.reset();
    let me = state.realtime.fanout.origin.clone();
    let mut asm = Assembler::default();
    while let Some(p) = rx.recv().await {
        let Some(p) = asm.push(p) else { continue };
        if let Ok(v) = serde_json::from_str::<Value>(&p) {
            if v.get("pr").is_some() {
                apply_presence(state, &me, &v);
                continue;
            }
            // A broadcast row committed in realtime.messages (realtime.send and friends).
            if v.get("o").and_then(Value::as_str) == Some("db") {
                if let Some(id) = v.get("m").and_then(Value::as_str) {
                    if let Err(e) = deliver_db_message(state, id).await {
                        tracing::warn!(error = %e, "realtime: cannot deliver a database broadcast");
                    }
                }
                continue;
            }
        }
        if let Some((origin, key, msg)) = decode(&p) {
            if origin != me {
                state.realtime.hub.broadcast(&key, None, msg);
            }
        }
    }
    Err("connection closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let k = ("room".to_string(), true);
        let j = Broadcast::Json(json!({"type":"broadcast","event":"e","payload":{"a":1}}));
        let (o, key, m) = decode(&encode("me", &k, &j)).unwrap();
        assert_eq!((o.as_str(), &key), ("me", &k));
        assert!(matches!(m, Broadcast::Json(v) if v["payload"]["a"] == 1));
        let u = Broadcast::User(UserBroadcast {
            event: "b".into(),
            json: false,
            data: bytes::Bytes::from_static(&[0, 1, 255]),
            meta: None,
        });
        let (_, _, m) = decode(&encode("me", &k, &u)).unwrap();
        let Broadcast::User(ub) = m else { panic!() };
        assert_eq!(&ub.data[..], &[0, 1, 255]);
        assert!(!ub.json);
        assert!(decode("{}").is_none());
    }

    #[test]
    fn large_messages_are_chunked_and_reassembled() {
        let k = ("big".to_string(), false);
        let big = format!("{}{}", "é".repeat(20_000), "\"\\".repeat(5_000));
        let body = encode("me", &k, &Broadcast::Json(json!({"payload": big})));
        let parts = chunks("me", &body);
        assert!(parts.len() > 3);
        assert!(parts.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let mut asm = Assembler::default();
        let mut out = None;
        for p in parts {
            assert!(out.is_none());
            out = asm.push(p);
        }
        assert_eq!(out.unwrap(), body);
        // Whole messages pass through.
        assert_eq!(asm.push("{\"o\":\"a\"}".into()).unwrap(), "{\"o\":\"a\"}");
    }
}
