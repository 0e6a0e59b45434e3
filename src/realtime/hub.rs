//! The in-process hub: which channel (one joined topic on one socket) listens to which topic,
//! presence per topic, and delivery into each socket's bounded queue. Public and private
//! channels of the same name are different topics (as in Supabase Realtime).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::changes::PgBinding;
use super::phoenix::UserBroadcast;
use crate::identity::AuthContext;

pub type ChanId = u64;

/// A topic: (subtopic without `realtime:`, private?).
pub type TopicKey = (String, bool);

/// A broadcast as it travels through the hub.
#[derive(Debug, Clone)]
pub enum Broadcast {
    /// A JSON broadcast: the payload is `{type:"broadcast",event,payload,...}`.
    Json(Value),
    /// A user broadcast with a byte payload (vsn 2.0.0 push or HTTP single broadcast).
    User(UserBroadcast),
}

/// What a socket receives from the hub; each names the channel it is for.
#[derive(Debug, Clone)]
pub enum Out {
    Broadcast {
        chan: ChanId,
        msg: Arc<Broadcast>,
    },
    /// A push with a JSON payload (presence_state, presence_diff, postgres_changes, system).
    Push {
        chan: ChanId,
        event: &'static str,
        payload: Value,
    },
}

/// Message counts of this process's realtime sockets (read by `/metrics`).
#[derive(Default, Debug)]
pub struct Counters {
    /// Frames received from clients.
    pub messages_in: AtomicU64,
    /// Frames sent to clients.
    pub messages_out: AtomicU64,
    /// Messages not queued because the socket's queue was full.
    pub dropped: AtomicU64,
    /// Sockets closed because their queue overflowed.
    pub overflow_closes: AtomicU64,
}

/// The sending side of one socket's bounded queue. Nothing waits on a slow socket: a full
/// queue refuses the message, counts it as dropped and marks the socket overflowed, and the
/// socket then tells its channels and closes (see `socket.rs`), so the client reconnects and
/// rejoins rather than silently missing messages. Other sockets are never held up.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    overflowed: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Outbox {
    pub fn new(tx: mpsc::Sender<Out>, counters: Arc<Counters>) -> Outbox {
        Outbox {
            tx,
            overflowed: Arc::new(AtomicBool::new(false)),
            counters,
        }
    }

    /// Queue `out`; false when the socket is gone or overflowed (then it is counted).
    pub fn send(&self, out: Out) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.overflowed.store(true, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Has a message been refused because the queue was full?
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// A queue whose overflow only counts (for sockets that do not close on overflow).
impl From<mpsc::Sender<Out>> for Outbox {
    fn from(tx: mpsc::Sender<Out>) -> Outbox {
        Outbox::new(tx, Arc::default())
    }
}

pub struct Sub {
    pub tx: Outbox,
    pub self_broadcast: bool,
    /// False on a private channel whose caller may not read broadcasts.
    pub broadcast_read: bool,
    /// False on a private channel whose caller may not read presence.
    pub presence_read: bool,
    /// postgres_changes bindings and the claims they are checked with.
    pub pg: Vec<PgBinding>,
    pub ctx: AuthContext,
}

/// Who tracked a presence: a channel here, or one in another process (fan-out).
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    Local(ChanId),
    Remote { origin: String, chan: u64 },
}

#[derive(Clone)]
struct PresenceEntry {
    owner: Owner,
    meta: Map<String, Value>,
    /// Last time a remote owner announced it (remote entries expire).
    seen: Instant,
}

/// A local presence change, for the fan-out to announce.
pub enum PresenceChange {
    Track {
        chan: ChanId,
        pkey: String,
        meta: Map<String, Value>,
    },
    Untrack {
        chan: ChanId,
    },
}

type PresenceHook = Box<dyn Fn(&TopicKey, PresenceChange) + Send + Sync>;

#[derive(Default)]
struct Topic {
    subs: HashMap<ChanId, Sub>,
    presence: BTreeMap<String, Vec<PresenceEntry>>,
}

#[derive(Default)]
pub struct Hub {
    topics: Mutex<HashMap<TopicKey, Topic>>,
    next: AtomicU64,
    /// Open sockets (one [`HubGuard`] each).
    sockets: AtomicU64,
    /// Told about local presence changes (set by the fan-out).
    pub on_presence: std::sync::OnceLock<PresenceHook>,
    pub counters: Arc<Counters>,
}

fn meta_value(e: &PresenceEntry) -> Value {
    Value::Object(e.meta.clone())
}

fn new_phx_ref() -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&n.to_be_bytes()[..12])
}

impl Hub {
    /// The topic table. Nothing under this lock panics by design (map and vector edits and
    /// `try_send`s); if something ever did, the table is still consistent enough to serve
    /// (at worst a presence entry is missing), so a poisoned lock is taken over rather than
    /// turning every later join and broadcast into a panic.
    fn topics(&self) -> MutexGuard<'_, HashMap<TopicKey, Topic>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open sockets on this process.
    pub fn sockets(&self) -> u64 {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Topics with a local channel, and the local channels (for metrics, at scrape time).
    pub fn counts(&self) -> (usize, usize) {
        let t = self.topics();
        let topics = t.values().filter(|t| !t.subs.is_empty()).count();
        (topics, t.values().map(|t| t.subs.len()).sum())
    }

    pub fn new_chan_id(&self) -> ChanId {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn subscribe(&self, key: TopicKey, chan: ChanId, sub: Sub) {
        let mut t = self.topics();
        t.entry(key).or_default().subs.insert(chan, sub);
    }

    /// Remove a channel; its presences leave (with a diff to the others).
    pub fn unsubscribe(&self, key: &TopicKey, chan: ChanId) {
        self.untrack(key, chan);
        let mut t = self.topics();
        if let Some(topic) = t.get_mut(key) {
            topic.subs.remove(&chan);
            if topic.subs.is_empty() && topic.presence.is_empty() {
                t.remove(key);
            }
        }
    }

    pub fn update_sub(&self, key: &TopicKey, chan: ChanId, f: impl FnOnce(&mut Sub)) {
        let mut t = self.topics();
        if let Some(s) = t.get_mut(key).and_then(|t| t.subs.get_mut(&chan)) {
            f(s);
        }
    }

    /// Deliver a broadcast to a topic's channels (`from` is skipped unless it asked for self).
    pub fn broadcast(&self, key: &TopicKey, from: Option<ChanId>, msg: Broadcast) -> usize {
        let msg = Arc::new(msg);
        let t = self.topics();
        let Some(topic) = t.get(key) else { return 0 };
        let mut n = 0;
        for (id, s) in &topic.subs {
            if !s.broadcast_read || (Some(*id) == from && !s.self_broadcast) {
                continue;
            }
            if s.tx.send(Out::Broadcast {
                chan: *id,
                msg: msg.clone(),
            }) {
                n += 1;
            }
        }
        n
    }

    fn push_all(topic: &Topic, event: &'static str, payload: &Value) {
        for (id, s) in topic.subs.iter().filter(|(_, s)| s.presence_read) {
            let _ = s.tx.send(Out::Push {
                chan: *id,
                event,
                payload: payload.clone(),
            });
        }
    }

    /// The current presence state of a topic, `{key:{metas:[...]}}`.
    pub fn presence_state(&self, key: &TopicKey) -> Value {
        let t = self.topics();
        let mut out = Map::new();
        if let Some(topic) = t.get(key) {
            for (k, entries) in &topic.presence {
                out.insert(
                    k.clone(),
                    json!({"metas": entries.iter().map(meta_value).collect::<Vec<_>>()}),
                );
            }
        }
        Value::Object(out)
    }

    /// Remove `owner`'s presence from a topic; the leaves of a diff, and the old entry's
    /// (key, phx_ref).
    fn remove_owner(
        topic: &mut Topic,
        owner: &Owner,
    ) -> (Map<String, Value>, Option<(String, Value)>) {
        let mut leaves = Map::new();
        let mut old_ref = None;
        for (k, entries) in topic.presence.iter_mut() {
            if let Some(pos) = entries.iter().position(|e| &e.owner == owner) {
                let old = entries.remove(pos);
                if let Some(r) = old.meta.get("phx_ref") {
                    old_ref = Some((k.clone(), r.clone()));
                }
                leaves.insert(k.clone(), json!({"metas": [meta_value(&old)]}));
            }
        }
        topic.presence.retain(|_, v| !v.is_empty());
        (leaves, old_ref)
    }

    fn put(
        topic: &mut Topic,
        owner: Owner,
        pkey: &str,
        meta: Map<String, Value>,
        leaves: Map<String, Value>,
    ) {
        let entry = PresenceEntry {
            owner,
            meta,
            seen: Instant::now(),
        };
        let joins = json!({pkey: {"metas": [meta_value(&entry)]}});
        topic
            .presence
            .entry(pkey.to_string())
            .or_default()
            .push(entry);
        Self::push_all(
            topic,
            "presence_diff",
            &json!({"joins": joins, "leaves": Value::Object(leaves)}),
        );
    }

    /// Track (or update) a channel's presence under `pkey`; sends presence_diff to the topic.
    pub fn track(&self, key: &TopicKey, chan: ChanId, pkey: &str, payload: Map<String, Value>) {
        let meta = {
            let mut t = self.topics();
            let topic = t.entry(key.clone()).or_default();
            // A channel tracks one presence: an earlier one (under any key) leaves.
            let (leaves, old) = Self::remove_owner(topic, &Owner::Local(chan));
            let mut meta = payload;
            meta.insert("phx_ref".into(), Value::String(new_phx_ref()));
            if let Some((_, r)) = old.filter(|(k, _)| k == pkey) {
                meta.insert("phx_ref_prev".into(), r);
            }
            Self::put(topic, Owner::Local(chan), pkey, meta.clone(), leaves);
            meta
        };
        if let Some(hook) = self.on_presence.get() {
            hook(
                key,
                PresenceChange::Track {
                    chan,
                    pkey: pkey.to_string(),
                    meta,
                },
            );
        }
    }

    /// Remove a channel's presence (if any); sends presence_diff to the topic.
    pub fn untrack(&self, key: &TopicKey, chan: ChanId) {
        let removed = {
            let mut t = self.topics();
            let Some(topic) = t.get_mut(key) else { return };
            let (leaves, _) = Self::remove_owner(topic, &Owner::Local(chan));
            if leaves.is_empty() {
                false
            } else {
                Self::push_all(
                    topic,
                    "presence_diff",
                    &json!({"joins": {}, "leaves": Value::Object(leaves)}),
                );
                true
            }
        };
        if removed {
            if let Some(hook) = self.on_presence.get() {
                hook(key, PresenceChange::Untrack { chan });
            }
        }
    }

    /// A presence announced by another process (new, changed, or a refresh of a known one).
    pub fn remote_track(&self, key: &TopicKey, owner: Owner, pkey: &str, meta: Map<String, Value>) {
        let mut t = self.topics();
        let topic = t.entry(key.clone()).or_default();
        if let Some(e) = topic
            .presence
            .get_mut(pkey)
            .and_then(|es| es.iter_mut().find(|e| e.owner == owner))
        {
            if e.meta.get("phx_ref") == meta.get("phx_ref") {
                e.seen = Instant::now();
                return;
            }
        }
        let (leaves, _) = Self::remove_owner(topic, &owner);
        Self::put(topic, owner, pkey, meta, leaves);
    }

    pub fn remote_untrack(&self, key: &TopicKey, owner: &Owner) {
        let mut t = self.topics();
        let Some(topic) = t.get_mut(key) else { return };
        let (leaves, _) = Self::remove_owner(topic, owner);
        if !leaves.is_empty() {
            Self::push_all(
                topic,
                "presence_diff",
                &json!({"joins": {}, "leaves": Value::Object(leaves)}),
            );
        }
        if topic.subs.is_empty() && topic.presence.is_empty() {
            t.remove(key);
        }
    }

    /// Drop remote presences not announced for `max_age` (their process is gone).
    pub fn expire_remote(&self, max_age: Duration) {
        let mut t = self.topics();
        for topic in t.values_mut() {
            let mut leaves = Map::new();
            for (k, entries) in topic.presence.iter_mut() {
                let (stale, keep): (Vec<_>, Vec<_>) = entries.drain(..).partition(|e| {
                    matches!(e.owner, Owner::Remote { .. }) && e.seen.elapsed() > max_age
                });
                *entries = keep;
                if !stale.is_empty() {
                    leaves.insert(
                        k.clone(),
                        json!({"metas": stale.iter().map(meta_value).collect::<Vec<_>>()}),
                    );
                }
            }
            topic.presence.retain(|_, v| !v.is_empty());
            if !leaves.is_empty() {
                Self::push_all(
                    topic,
                    "presence_diff",
                    &json!({"joins": {}, "leaves": Value::Object(leaves)}),
                );
            }
        }
        t.retain(|_, topic| !(topic.subs.is_empty() && topic.presence.is_empty()));
    }

    /// Every presence tracked by a local channel (for the periodic announcement).
    pub fn local_presences(&self) -> Vec<(TopicKey, ChanId, String, Map<String, Value>)> {
        let t = self.topics();
        let mut out = vec![];
        for (key, topic) in t.iter() {
            for (k, entries) in &topic.presence {
                for e in entries {
                    if let Owner::Local(chan) = e.owner {
                        out.push((key.clone(), chan, k.clone(), e.meta.clone()));
                    }
                }
            }
        }
        out
    }

    pub fn has_pg_subscribers(&self) -> bool {
        let t = self.topics();
        t.values()
            .any(|topic| topic.subs.values().any(|s| !s.pg.is_empty()))
    }

    /// Every channel with postgres_changes bindings: (chan, sender, bindings, claims).
    pub fn pg_subscribers(&self) -> Vec<(ChanId, Outbox, Vec<PgBinding>, AuthContext)> {
        let t = self.topics();
        t.values()
            .flat_map(|topic| topic.subs.iter())
            .filter(|(_, s)| !s.pg.is_empty())
            .map(|(id, s)| (*id, s.tx.clone(), s.pg.clone(), s.ctx.clone()))
            .collect()
    }
}

/// The hub channels of one socket, taken out of the hub however the socket task ends.
pub struct HubGuard {
    hub: Arc<Hub>,
    chans: Vec<(TopicKey, ChanId)>,
}

impl HubGuard {
    pub fn new(hub: Arc<Hub>) -> Self {
        hub.sockets.fetch_add(1, Ordering::Relaxed);
        HubGuard { hub, chans: vec![] }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Remembers a channel the socket has just subscribed.
    pub fn add(&mut self, key: TopicKey, chan: ChanId) {
        self.chans.push((key, chan));
    }

    /// Takes one channel out of the hub now.
    pub fn unsubscribe(&mut self, key: &TopicKey, chan: ChanId) {
        self.hub.unsubscribe(key, chan);
        self.chans.retain(|(_, id)| *id != chan);
    }
}

impl Drop for HubGuard {
    fn drop(&mut self) {
        for (k, id) in self.chans.drain(..) {
            self.hub.unsubscribe(&k, id);
        }
        self.hub.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(tx: mpsc::Sender<Out>, self_broadcast: bool) -> Sub {
        Sub {
            tx: tx.into(),
            self_broadcast,
            broadcast_read: true,
            presence_read: true,
            pg: vec![],
            ctx: AuthContext::anon(),
        }
    }

    #[tokio::test]
    async fn broadcast_respects_self_and_topics() {
        let hub = Hub::default();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        let k = ("room".to_string(), false);
        hub.subscribe(k.clone(), 1, sub(tx1, false));
        hub.subscribe(k.clone(), 2, sub(tx2, true));
        hub.subscribe(("room".into(), true), 3, sub(mpsc::channel(1).0, true));
        assert_eq!(hub.broadcast(&k, Some(1), Broadcast::Json(json!({}))), 1);
        assert!(rx1.try_recv().is_err());
        assert!(matches!(rx2.try_recv(), Ok(Out::Broadcast { chan: 2, .. })));
        assert_eq!(hub.broadcast(&k, Some(2), Broadcast::Json(json!({}))), 2);
        hub.unsubscribe(&k, 2);
        assert_eq!(hub.broadcast(&k, None, Broadcast::Json(json!({}))), 1);
    }

    #[tokio::test]
    async fn presence_track_update_untrack() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(16);
        let k = ("p".to_string(), false);
        hub.subscribe(k.clone(), 1, sub(tx, false));
        let mut m = Map::new();
        m.insert("user".into(), json!("a"));
        hub.track(&k, 1, "u1", m.clone());
        let Ok(Out::Push { event, payload, .. }) = rx.try_recv() else {
            panic!()
        };
        assert_eq!(event, "presence_diff");
        assert_eq!(payload["joins"]["u1"]["metas"][0]["user"], "a");
        let st = hub.presence_state(&k);
        assert_eq!(st["u1"]["metas"].as_array().unwrap().len(), 1);
        m.insert("user".into(), json!("b"));
        hub.track(&k, 1, "u1", m);
        let Ok(Out::Push { payload, .. }) = rx.try_recv() else {
            panic!()
        };
        assert_eq!(payload["leaves"]["u1"]["metas"][0]["user"], "a");
        assert!(payload["joins"]["u1"]["metas"][0]["phx_ref_prev"].is_string());
        // A channel that may not read presence gets no diffs.
        let (tx2, mut rx2) = mpsc::channel(4);
        let mut blind = sub(tx2, false);
        blind.presence_read = false;
        hub.subscribe(k.clone(), 2, blind);
        hub.untrack(&k, 1);
        assert!(rx2.try_recv().is_err());
        let Ok(Out::Push { payload, .. }) = rx.try_recv() else {
            panic!()
        };
        assert_eq!(payload["leaves"]["u1"]["metas"][0]["user"], "b");
        assert_eq!(hub.presence_state(&k), json!({}));
    }

    #[tokio::test]
    async fn remote_presences_join_refresh_and_expire() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(16);
        let k = ("p".to_string(), false);
        hub.subscribe(k.clone(), 1, sub(tx, false));
        let owner = Owner::Remote {
            origin: "other".into(),
            chan: 9,
        };
        let mut m = Map::new();
        m.insert("phx_ref".into(), json!("r1"));
        hub.remote_track(&k, owner.clone(), "bob", m.clone());
        let Ok(Out::Push { payload, .. }) = rx.try_recv() else {
            panic!()
        };
        assert_eq!(payload["joins"]["bob"]["metas"][0]["phx_ref"], "r1");
        // A refresh with the same ref changes nothing.
        hub.remote_track(&k, owner.clone(), "bob", m);
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.local_presences().len(), 0);
        hub.expire_remote(Duration::from_secs(60));
        assert!(rx.try_recv().is_err());
        hub.expire_remote(Duration::ZERO);
        let Ok(Out::Push { payload, .. }) = rx.try_recv() else {
            panic!()
        };
        assert_eq!(payload["leaves"]["bob"]["metas"][0]["phx_ref"], "r1");
        assert_eq!(hub.presence_state(&k), json!({}));
    }
}
