//! Every open client connection, by client IP: admission against the caps, the timeouts of
//! a connection that is not serving a request, and eviction of such a connection when a
//! new one needs its place.
//!
//! A connection is counted from accept until its socket closes: the [`Permit`] lives in
//! the socket's stream wrapper ([`Tracked`]), so it follows a WebSocket upgrade and a
//! long-lived socket stays counted. Only connections whose HTTP task still runs, with no
//! request in flight, can time out or be evicted: a WebSocket never is.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::limits::{Caps, SHED_SLOTS};
use super::{Body, BoxError, Resp};

/// A connection younger than this (or idle for less) is not evicted: a client that just
/// connected gets the time to send its request.
const EVICT_GRACE: Duration = Duration::from_millis(500);
/// Connections of one client looked at for an idle one to evict.
const EVICT_SCAN: usize = 256;
/// Refusals are logged at most this often (a flood would fill the log otherwise).
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accept, or from a request's first byte, to its whole header.
    pub header: Duration,
    /// Between the end of a response and the next request's first byte.
    pub keepalive: Duration,
}

struct Phase {
    /// Requests being handled (their response body not yet sent).
    in_flight: u32,
    /// Requests started on this connection.
    started: u64,
    /// Accept, or the end of the last response.
    since: Instant,
    /// The first byte of the next request, read while idle.
    header_from: Option<Instant>,
    /// The HTTP task runs (false once it ended: upgraded or closing).
    serving: bool,
    evicted: bool,
}

/// What the HTTP task, the socket and the registry share about one connection.
pub struct ConnState {
    phase: Mutex<Phase>,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnState {
    fn new(now: Instant) -> Self {
        ConnState {
            phase: Mutex::new(Phase {
                in_flight: 0,
                started: 0,
                since: now,
                header_from: None,
                serving: true,
                evicted: false,
            }),
            changed: Notify::new(),
        }
    }

    /// A request's header is complete: the connection is busy until the returned guard
    /// (moved into the response body) is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        let mut p = lock(&self.phase);
        p.in_flight += 1;
        p.started += 1;
        p.header_from = None;
        drop(p);
        self.changed.notify_one();
        Busy(self.clone())
    }

    fn end(&self) {
        let mut p = lock(&self.phase);
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 {
            p.since = Instant::now();
            p.header_from = None;
        }
        drop(p);
        self.changed.notify_one();
    }

    fn on_read(&self) {
        let mut p = lock(&self.phase);
        if p.in_flight == 0 && p.started > 0 && p.header_from.is_none() {
            p.header_from = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    /// The HTTP task ended (closed, or handed the socket to a WebSocket).
    pub fn stop_serving(&self) {
        lock(&self.phase).serving = false;
    }

    fn evictable(&self, now: Instant) -> bool {
        let p = lock(&self.phase);
        p.serving && !p.evicted && p.in_flight == 0 && now.duration_since(p.since) >= EVICT_GRACE
    }

    fn evict(&self) {
        lock(&self.phase).evicted = true;
        self.changed.notify_one();
    }

    /// When the connection should be closed if nothing changes; None while busy.
    fn deadline(&self, t: Timeouts) -> Option<Instant> {
        let p = lock(&self.phase);
        if p.evicted {
            return Some(p.since);
        }
        if p.in_flight > 0 {
            return None;
        }
        Some(match (p.started, p.header_from) {
            (0, _) => p.since + t.header,
            (_, Some(first_byte)) => first_byte + t.header,
            (_, None) => p.since + t.keepalive,
        })
    }

    /// Resolves when the connection must close: its header or keep-alive time ran out, or
    /// it was evicted. Never while a request is in flight.
    pub async fn expired(&self, t: Timeouts) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline(t) {
                None => changed.await,
                Some(d) if d <= Instant::now() => return,
                Some(d) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(d.into()) => {}
                    }
                }
            }
        }
    }
}

/// A request in flight; dropping it (with the response body) makes the connection idle.
pub struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl Busy {
    /// Keep the connection busy until the response body is sent or dropped.
    pub fn attach(self, resp: Resp) -> Resp {
        resp.map(|inner| Body::new(BusyBody { inner, _busy: self }))
    }
}

struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct Registry {
    total: usize,
    by_ip: HashMap<IpAddr, BTreeMap<u64, Arc<ConnState>>>,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Total,
    PerIp,
}

pub enum Admission {
    Serve(Permit, Arc<ConnState>),
    /// Answer a short 503 and close; the slot counts the refusal in progress.
    Refuse(Over, ShedSlot),
    /// Close at once: even a refusal would take descriptors we do not have.
    Drop,
}

pub struct Limiter {
    pub caps: Caps,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    shedding: AtomicUsize,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Limiter {
    pub fn new(caps: Caps) -> Arc<Limiter> {
        Arc::new(Limiter {
            caps,
            registry: Mutex::new(Registry {
                total: 0,
                by_ip: HashMap::new(),
            }),
            next_id: AtomicU64::new(0),
            shedding: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
        })
    }

    /// Open connections (WebSockets included).
    pub fn open(&self) -> usize {
        lock(&self.registry).total
    }

    /// Admit a new connection from `ip`. Over a cap, the oldest idle connection of the same
    /// client (or, over the total, of the client holding the most) is evicted to make room;
    /// with none to evict, the new one is refused.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let now = Instant::now();
        let mut reg = lock(&self.registry);
        // Evictions in progress may overshoot the cap briefly; never by more than this.
        if reg.total >= self.caps.total + SHED_SLOTS {
            drop(reg);
            return self.refuse(Over::Total, true);
        }
        let of_ip = reg.by_ip.get(&ip).map_or(0, |m| m.len());
        let over = if of_ip >= self.caps.per_ip {
            Some((Over::PerIp, ip))
        } else if reg.total >= self.caps.total {
            let biggest = reg
                .by_ip
                .iter()
                .max_by_key(|(_, m)| m.len())
                .map(|(ip, _)| *ip);
            biggest.map(|b| (Over::Total, b))
        } else {
            None
        };
        if let Some((why, victim_ip)) = over {
            let victim = reg.by_ip.get(&victim_ip).and_then(|m| {
                m.values()
                    .take(EVICT_SCAN)
                    .find(|c| c.evictable(now))
                    .cloned()
            });
            match victim {
                Some(v) => v.evict(),
                None => {
                    drop(reg);
                    return self.refuse(why, false);
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(now));
        reg.by_ip.entry(ip).or_default().insert(id, state.clone());
        reg.total += 1;
        Admission::Serve(
            Permit {
                limiter: self.clone(),
                ip,
                id,
            },
            state,
        )
    }

    fn refuse(self: &Arc<Self>, why: Over, ceiling: bool) -> Admission {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut last = lock(&self.last_log);
            if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                *last = Some(Instant::now());
                self.refused.store(0, Ordering::Relaxed);
                tracing::warn!(
                    refused = n,
                    open = self.open(),
                    max_connections = self.caps.total,
                    max_connections_per_ip = self.caps.per_ip,
                    "too many connections: refusing new ones (see [http] in the config)"
                );
            }
        }
        if ceiling {
            return Admission::Drop;
        }
        let shedding = self.shedding.fetch_add(1, Ordering::AcqRel);
        if shedding >= SHED_SLOTS {
            self.shedding.fetch_sub(1, Ordering::AcqRel);
            return Admission::Drop;
        }
        Admission::Refuse(
            why,
            ShedSlot {
                limiter: self.clone(),
            },
        )
    }
}

/// One counted connection; dropping it (with the socket) frees its place.
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
    id: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut reg = lock(&self.limiter.registry);
        if let Some(m) = reg.by_ip.get_mut(&self.ip) {
            if m.remove(&self.id).is_some() {
                reg.total -= 1;
            }
            if reg.by_ip.get(&self.ip).is_some_and(|m| m.is_empty()) {
                reg.by_ip.remove(&self.ip);
            }
        }
    }
}

/// A refusal in progress.
pub struct ShedSlot {
    limiter: Arc<Limiter>,
}

impl Drop for ShedSlot {
    fn drop(&mut self) {
        self.limiter.shedding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client socket that holds its [`Permit`] and tells its [`ConnState`] when bytes arrive.
pub struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
    _permit: Permit,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, permit: Permit, state: Arc<ConnState>) -> Self {
        Tracked {
            inner,
            state,
            _permit: permit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    super::forward_writes!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        keepalive: Duration::from_secs(60),
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn serve(a: Admission) -> (Permit, Arc<ConnState>) {
        match a {
            Admission::Serve(p, s) => (p, s),
            _ => panic!("expected admission"),
        }
    }

    fn age(s: &ConnState) {
        lock(&s.phase).since -= EVICT_GRACE * 2;
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let now = Instant::now();
        let s = Arc::new(ConnState::new(now));
        assert_eq!(s.deadline(T), Some(now + T.header), "fresh: header time");
        let busy = s.begin();
        assert_eq!(s.deadline(T), None, "busy: no deadline");
        drop(busy);
        let since = lock(&s.phase).since;
        assert_eq!(s.deadline(T), Some(since + T.keepalive), "idle: keep-alive");
        s.on_read();
        let from = lock(&s.phase).header_from.unwrap();
        assert_eq!(s.deadline(T), Some(from + T.header), "next header started");
        s.evict();
        assert!(s.deadline(T).unwrap() <= Instant::now(), "evicted: now");
    }

    #[test]
    fn over_the_per_ip_cap_an_idle_connection_makes_room() {
        let l = Limiter::new(Caps {
            total: 10,
            per_ip: 2,
        });
        let (_p1, s1) = serve(l.admit(ip("10.0.0.1")));
        let (_p2, s2) = serve(l.admit(ip("10.0.0.1")));
        // Both too young to evict: refused with a 503.
        assert!(matches!(
            l.admit(ip("10.0.0.1")),
            Admission::Refuse(Over::PerIp, _)
        ));
        // Another client is not affected.
        let (p3, _) = serve(l.admit(ip("10.0.0.2")));
        drop(p3);
        // One busy, one idle for long enough: the idle one is evicted for the newcomer.
        let _busy = s1.begin();
        age(&s1);
        age(&s2);
        let (_p4, _) = serve(l.admit(ip("10.0.0.1")));
        assert!(lock(&s2.phase).evicted);
        assert!(!lock(&s1.phase).evicted);
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn over_the_total_the_biggest_client_pays_and_refusals_are_bounded() {
        let l = Limiter::new(Caps {
            total: 3,
            per_ip: 3,
        });
        let a: Vec<_> = (0..2).map(|_| serve(l.admit(ip("10.0.0.1")))).collect();
        let (_pb, sb) = serve(l.admit(ip("10.0.0.2")));
        for (_, s) in &a {
            age(s);
        }
        age(&sb);
        let (_pc, _) = serve(l.admit(ip("10.0.0.3")));
        assert!(lock(&a[0].1.phase).evicted, "the oldest of the biggest");
        assert!(!lock(&sb.phase).evicted);
        // A WebSocket (no longer served as HTTP) is never evicted.
        for (_, s) in &a {
            s.stop_serving();
        }
        sb.stop_serving();
        let mut slots = vec![];
        for _ in 0..SHED_SLOTS {
            match l.admit(ip("10.0.0.4")) {
                Admission::Refuse(Over::Total, slot) => slots.push(slot),
                _ => panic!("expected a refusal"),
            }
        }
        assert!(matches!(l.admit(ip("10.0.0.4")), Admission::Drop));
        slots.pop();
        assert!(matches!(
            l.admit(ip("10.0.0.4")),
            Admission::Refuse(Over::Total, _)
        ));
    }

    #[test]
    fn permits_free_their_place() {
        let l = Limiter::new(Caps {
            total: 1,
            per_ip: 1,
        });
        let (p, _) = serve(l.admit(ip("10.0.0.1")));
        assert_eq!(l.open(), 1);
        drop(p);
        assert_eq!(l.open(), 0);
        let _ = serve(l.admit(ip("10.0.0.1")));
    }
}
