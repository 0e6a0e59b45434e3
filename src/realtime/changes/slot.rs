//! The capture task: one logical replication slot per process, created on demand, streamed
//! over the replication protocol (no polling: an idle server makes no queries), its
//! confirmed position moved only after a transaction's changes were fanned out, resumed
//! from the slot after the connection or PostgreSQL itself went away, and dropped when
//! nobody listens.
//!
//! The slot is persistent (a temporary one dies with its connection, and with it every
//! change committed until a new one exists). Delivery is at least once: after a crash of
//! PostgreSQL the slot may restart from its last checkpointed position and send a few
//! transactions again. Slots of processes that are gone are dropped by the next capture
//! that starts on the same machine (see `sweep`); a machine that never runs oxibase again
//! leaves its slot for an operator (or `max_slot_wal_keep_size`) to end.

use deadpool_postgres::Pool;
use sha2::Digest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::dispatch::dispatch;
use super::pgoutput::{Change, Decoder};
use super::stream::{lsn_text, Frame, ReplConn, ReplError};
use crate::db::wire::WireConfig;
use crate::state::AppState;

/// With no postgres_changes subscriber for this long, the slot is dropped.
const IDLE: Duration = Duration::from_secs(30);
/// A transaction this large is fanned out in parts (its position is confirmed at commit).
const CHUNK: usize = 1000;
/// Confirmed positions go back to PostgreSQL at most this often (and when it asks).
const STATUS_EVERY: Duration = Duration::from_millis(100);
const SLOT_PREFIX: &str = "oxibase_rt_";

/// Slots held by live captures of this process (several servers may share one process, as
/// in the tests): `sweep` never drops those.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A slot name registered in `LIVE` for as long as this value lives.
struct LiveSlot(String);

impl LiveSlot {
    fn new(name: String) -> LiveSlot {
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        LiveSlot(name)
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| n != &self.0);
    }
}

/// The capture task's state, kept in the realtime `State`.
pub struct Capture {
    running: tokio::sync::Mutex<bool>,
    /// When a join last asked for capture (the task idles out only well after that).
    last_demand: Mutex<Instant>,
    /// The replication login; `None` when the database is not reachable over plain TCP.
    login: Option<WireConfig>,
    /// Bytes of WAL the server has and whose changes are not fanned out yet.
    pub lag_bytes: AtomicU64,
    /// Connections of capture's own (the request pool's login, made on first use) for
    /// describing relations and the RLS checks of every change: requests queueing for the
    /// request pool never hold up delivery, nor can a burst of them starve it.
    pub checks: Pool,
}

impl Capture {
    pub fn new(login: Option<WireConfig>, checks: Pool) -> Capture {
        Capture {
            running: tokio::sync::Mutex::new(false),
            last_demand: Mutex::new(Instant::now()),
            login,
            lag_bytes: AtomicU64::new(0),
            checks,
        }
    }
}

fn new_slot_name() -> String {
    format!(
        "{SLOT_PREFIX}{}_{}_{}",
        host_tag(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// This machine in slot names (8 hex digits of its machine id, else its host name): a
/// process id only means something on the machine it came from.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let id = ["/etc/machine-id", "/proc/sys/kernel/hostname"]
            .iter()
            .find_map(|f| {
                std::fs::read_to_string(f)
                    .ok()
                    .filter(|s| !s.trim().is_empty())
            })
            .unwrap_or_default();
        let h = sha2::Sha256::digest(id.trim().as_bytes());
        h[..4].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Is this inactive slot of ours left over? It was made on this machine and its process
/// is gone, or it is this process's and no live capture holds it. Slots of other machines
/// are theirs to sweep (a process there may be between two connections).
fn is_stale(name: &str) -> bool {
    let mut parts = name.strip_prefix(SLOT_PREFIX).unwrap_or("").split('_');
    let (Some(host), Some(pid)) = (
        parts.next(),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    ) else {
        return false;
    };
    if host != host_tag() {
        return false;
    }
    if pid == std::process::id() {
        return !LIVE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n == name);
    }
    let proc = std::path::Path::new("/proc");
    proc.is_dir() && !proc.join(pid.to_string()).exists()
}

/// Drop the inactive slots of this server left behind by processes that are gone.
async fn sweep(conn: &mut ReplConn) {
    let rows = conn
        .simple(
            "select slot_name::text from pg_catalog.pg_replication_slots
              where slot_type = 'logical' and not active and slot_name like 'oxibase\\_rt\\_%'",
        )
        .await
        .unwrap_or_default();
    for name in rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
    {
        if is_stale(&name) {
            match conn.drop_slot(&name).await {
                Ok(()) => {
                    tracing::info!(slot = %name, "realtime: dropped a slot left by a stopped process")
                }
                Err(e) => {
                    tracing::debug!(slot = %name, error = %e, "realtime: cannot drop a stale slot")
                }
            }
        }
    }
}

/// A replication session on a new slot, streaming. Creating a slot waits for every
/// transaction already running in the cluster; a session left idle in a transaction must
/// not hang the join that asked for capture.
async fn open_new(login: &WireConfig) -> Result<(ReplConn, LiveSlot), String> {
    let work = async {
        let mut conn = ReplConn::connect(login).await?;
        sweep(&mut conn).await;
        let name = new_slot_name();
        conn.create_slot(&name).await?;
        let slot = LiveSlot::new(name);
        conn.start(&slot.0).await?;
        Ok::<_, ReplError>((conn, slot))
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("cannot start change capture: {e}")),
        Err(_) => Err("cannot start change capture: creating the replication slot timed out (a transaction left open?)".into()),
    }
}

/// Stream an existing slot again (after a reconnect) from its confirmed position; a slot
/// that no longer exists (the cluster was recreated) is made anew.
async fn reopen(login: &WireConfig, slot: &LiveSlot) -> Result<ReplConn, ReplError> {
    let mut conn = ReplConn::connect(login).await?;
    match conn.start(&slot.0).await {
        Ok(()) => Ok(conn),
        Err(e) if e.code() == Some("42704") => {
            tracing::warn!(slot = %slot.0, "realtime: the replication slot is gone; changes committed meanwhile are not delivered");
            let mut conn = ReplConn::connect(login).await?;
            conn.create_slot(&slot.0).await?;
            conn.start(&slot.0).await?;
            Ok(conn)
        }
        Err(e) => Err(e),
    }
}

/// Start the capture task if it is not running; returns once the slot exists, so every
/// change committed after a join reply is seen.
pub async fn ensure_started(state: &AppState) -> Result<(), String> {
    let cap = &state.realtime.capture;
    *cap.last_demand.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    let mut running = cap.running.lock().await;
    if *running {
        return Ok(());
    }
    let Some(login) = &cap.login else {
        return Err(
            "postgres_changes needs the database over plain TCP (no Unix socket, no required TLS)"
                .into(),
        );
    };
    let (conn, slot) = open_new(login).await?;
    tracing::info!(slot = %slot.0, "realtime: change capture started (streaming)");
    *running = true;
    tokio::spawn(capture(state.clone(), conn, slot));
    Ok(())
}

/// No postgres_changes subscriber now, and no join asked for one within `IDLE`.
fn idle(st: &AppState) -> bool {
    !st.realtime.hub.has_pg_subscribers()
        && st
            .realtime
            .capture
            .last_demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > IDLE
}

/// Where the stream stands.
#[derive(Default)]
struct Position {
    decoder: Decoder,
    /// Changes not fanned out yet (of the open transaction and of committed ones kept to
    /// go out together with the next).
    pending: Vec<Change>,
    in_tx: bool,
    /// End of the last commit whose changes are in `pending` (confirmed once they are out).
    ready_end: Option<u64>,
    /// Everything up to here is fanned out (or holds nothing for us).
    confirmed: u64,
    /// What PostgreSQL was last told.
    reported: u64,
    /// The server's WAL end, as far as we know.
    server_end: u64,
}

/// Why streaming stopped.
enum Stop {
    Idle,
    Lost(ReplError),
}

async fn capture(st: AppState, mut conn: ReplConn, slot: LiveSlot) {
    let mut pos = Position::default();
    loop {
        match stream(&st, &mut conn, &mut pos).await {
            Stop::Idle => {
                let mut running = st.realtime.capture.running.lock().await;
                // Re-checked under the lock a join takes before it subscribes.
                if !idle(&st) {
                    continue;
                }
                *running = false;
                drop(running);
                drop(conn);
                tracing::info!(slot = %slot.0, "realtime: no postgres_changes subscribers; capture stopped");
                drop_slot(&st, &slot).await;
                // Its check connections close too (the next start makes them again).
                st.realtime.capture.checks.retain(|_, _| false);
                return;
            }
            Stop::Lost(_) if st.pool.is_closed() => {
                // The server is stopping: the slot stays for the next start to resume or
                // sweep.
                *st.realtime.capture.running.lock().await = false;
                return;
            }
            Stop::Lost(e) => {
                tracing::warn!(error = %e, confirmed = %lsn_text(pos.confirmed), "realtime: change capture lost its replication connection; reconnecting");
                match reconnect(&st, &slot).await {
                    Some(c) => {
                        conn = c;
                        // The stream starts again at the slot's confirmed position; the
                        // relations are sent again before their first change.
                        pos = Position {
                            confirmed: pos.confirmed,
                            reported: pos.confirmed,
                            ..Position::default()
                        };
                    }
                    None => {
                        *st.realtime.capture.running.lock().await = false;
                        drop_slot(&st, &slot).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Best effort: the slot would otherwise hold WAL until the next start sweeps it.
async fn drop_slot(st: &AppState, slot: &LiveSlot) {
    let Some(login) = &st.realtime.capture.login else {
        return;
    };
    let work = async {
        let mut c = ReplConn::connect(login).await?;
        c.drop_slot(&slot.0).await
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(slot = %slot.0, error = %e, "realtime: cannot drop the slot"),
        Err(_) => tracing::debug!(slot = %slot.0, "realtime: dropping the slot timed out"),
    }
}

/// A new session on the same slot, with backoff, while anyone listens; `None` when nobody
/// does any more or the server stops.
async fn reconnect(st: &AppState, slot: &LiveSlot) -> Option<ReplConn> {
    let login = st.realtime.capture.login.as_ref()?;
    let mut backoff = crate::db::Backoff::new(Duration::from_secs(2));
    let mut attempt = 0u32;
    loop {
        if st.pool.is_closed() || !st.realtime.hub.has_pg_subscribers() {
            return None;
        }
        attempt += 1;
        match reopen(login, slot).await {
            Ok(c) => {
                tracing::info!(attempt, slot = %slot.0, "realtime: change capture resumed");
                return Some(c);
            }
            Err(e) if attempt == 1 || attempt.is_multiple_of(10) => {
                tracing::warn!(attempt, error = %e, "realtime: change capture unavailable; retrying");
            }
            Err(e) => {
                tracing::debug!(attempt, error = %e, "realtime: change capture unavailable; retrying");
            }
        }
        backoff.wait().await;
    }
}

/// Read the stream until it breaks or capture idles out.
async fn stream(st: &AppState, conn: &mut ReplConn, pos: &mut Position) -> Stop {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = Instant::now();
    loop {
        let mut reply = false;
        tokio::select! {
            f = conn.frame() => match f {
                Ok(Frame::XLogData { start, data }) => {
                    pos.server_end = pos.server_end.max(start);
                    handle(st, pos, &data).await;
                }
                Ok(Frame::Keepalive { wal_end, reply: asked }) => {
                    pos.server_end = pos.server_end.max(wal_end);
                    // Between transactions everything sent so far is handled.
                    if !pos.in_tx && pos.pending.is_empty() && pos.ready_end.is_none() {
                        pos.confirmed = pos.confirmed.max(wal_end);
                    }
                    reply = asked;
                }
                Err(e) => return Stop::Lost(e),
            },
            _ = tick.tick() => {
                if idle(st) {
                    return Stop::Idle;
                }
            }
        }
        // Committed transactions go out when nothing more is at hand: those that arrived
        // together are checked and sent together.
        if pos.ready_end.is_some() && !conn.has_buffered() {
            flush(st, pos).await;
        }
        st.realtime.capture.lag_bytes.store(
            pos.server_end.saturating_sub(pos.confirmed),
            Ordering::Relaxed,
        );
        let due = pos.confirmed > pos.reported && last_status.elapsed() >= STATUS_EVERY;
        if reply || due {
            if let Err(e) = conn.status(pos.confirmed).await {
                return Stop::Lost(e);
            }
            pos.reported = pos.confirmed;
            last_status = Instant::now();
        }
    }
}

/// One pgoutput message: a change joins its transaction; a commit fans the transaction out
/// and confirms its end.
async fn handle(st: &AppState, pos: &mut Position, data: &[u8]) {
    match data.first() {
        Some(b'B') => pos.in_tx = true,
        Some(b'C') => {
            // Commit: flags (1), commit LSN (8), end LSN (8), timestamp (8).
            let end = data
                .get(10..18)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8")));
            pos.in_tx = false;
            if let Some(end) = end {
                pos.ready_end = Some(end);
            }
            if pos.pending.is_empty() {
                // Nothing of ours in it: confirmed as is.
                confirm(pos);
            }
            return;
        }
        _ => {}
    }
    match pos.decoder.message(data) {
        Ok(Some(c)) => {
            pos.pending.push(c);
            if pos.pending.len() >= CHUNK {
                flush(st, pos).await;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "realtime: undecodable pgoutput message"),
    }
}

/// Fan out the pending changes (relations described first); the commits among them are
/// then confirmed.
async fn flush(st: &AppState, pos: &mut Position) {
    for rel in pos.decoder.take_new_relations() {
        describe(st, &mut pos.decoder, rel).await;
    }
    if !pos.pending.is_empty() {
        let changes = std::mem::take(&mut pos.pending);
        dispatch(st, &pos.decoder, changes).await;
    }
    confirm(pos);
}

fn confirm(pos: &mut Position) {
    if let Some(end) = pos.ready_end.take() {
        pos.confirmed = pos.confirmed.max(end);
    }
}

/// Describe a relation (column types, RLS, primary key) before its changes go out: without
/// it values would go out untyped and no RLS check could run. Tried a few times (right
/// after a restart the pool may still be reconnecting); a relation still undescribed is
/// retried with the next transaction and its changes go out failing closed (RLS assumed).
async fn describe(st: &AppState, decoder: &mut Decoder, rel: u32) {
    let mut last = String::new();
    for attempt in 0..4u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        match st.realtime.capture.checks.get().await {
            Ok(c) => match decoder.describe(&c, rel).await {
                Ok(()) => return,
                Err(e) => last = e,
            },
            Err(e) => last = e.to_string(),
        }
    }
    tracing::warn!(error = %last, "realtime: cannot describe a relation; retrying with the next transaction");
    decoder.fresh.push(rel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machines_leftover_slots_are_stale() {
        let here = host_tag();
        assert_eq!(here.len(), 8);
        let mine = new_slot_name();
        assert!(mine.len() <= 63 && mine.starts_with(&format!("{SLOT_PREFIX}{here}_")));
        // Ours and unheld (no live capture in this test), a dead process of this machine.
        assert!(is_stale(&mine));
        let dead = format!("{SLOT_PREFIX}{here}_4294967294_0123abcd");
        assert!(is_stale(&dead));
        let held = LiveSlot::new(mine.clone());
        assert!(!is_stale(&held.0));
        // Another machine's slot, even with a process id that is dead here, is left alone.
        let other = if here == "00000000" {
            "11111111"
        } else {
            "00000000"
        };
        assert!(!is_stale(&format!(
            "{SLOT_PREFIX}{other}_4294967294_0123abcd"
        )));
        // Names of the old layout (no machine) and foreign names are never dropped.
        assert!(!is_stale(&format!("{SLOT_PREFIX}4294967294_0123abcd")));
        assert!(!is_stale("oxibase_rt_"));
    }
}
