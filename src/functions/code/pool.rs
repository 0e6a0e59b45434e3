//! The runners: who may start a sandbox child, and when.
//!
//! At most `total` runs go at once, at most `per_user` of them for one user; a user may have
//! at most `queued_per_user` more requests waiting. A user past both bounds is refused at once
//! ([`Refused::UserLimit`]); a request that waits longer than its queue timeout is refused
//! with [`Refused::Busy`]. When a runner frees up, it goes to the waiting user who has the
//! fewest runs going (the oldest request first among equals), never to a user already at
//! their share: a user holding many long runs delays nobody else's first run.
//!
//! A [`Slot`] is a runner held; dropping it hands the runner on. A request dropped while it
//! waits leaves the queue (or, when a runner was handed to it in that instant, hands it on).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The user already has `per_user` runs going and `queued_per_user` waiting.
    UserLimit,
    /// No runner freed up within the queue timeout.
    Busy,
}

#[derive(Clone)]
pub struct Runners {
    shared: Arc<Shared>,
}

struct Shared {
    total: usize,
    per_user: usize,
    queued_per_user: usize,
    state: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: usize,
    users: HashMap<Uuid, UserRuns>,
    next_ticket: u64,
}

#[derive(Default)]
struct UserRuns {
    running: usize,
    /// (ticket, wake-up) of each waiting request, oldest first.
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// A runner held by one run; dropping it hands the runner on.
pub struct Slot {
    shared: Arc<Shared>,
    user: Uuid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        self.shared.release(&mut g, self.user);
    }
}

/// A request in the queue; see [`Runners::acquire`].
struct Waiting {
    shared: Arc<Shared>,
    user: Uuid,
    ticket: u64,
    armed: bool,
}

impl Waiting {
    /// Leave the queue. True when a runner had been handed over already (it is then ours).
    fn cancel(&mut self) -> bool {
        self.armed = false;
        let mut g = self.shared.lock();
        let Some(u) = g.users.get_mut(&self.user) else {
            return true;
        };
        match u.waiting.iter().position(|(t, _)| *t == self.ticket) {
            Some(i) => {
                u.waiting.remove(i);
                if u.running == 0 && u.waiting.is_empty() {
                    g.users.remove(&self.user);
                }
                false
            }
            None => true,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.armed && self.cancel() {
            let mut g = self.shared.lock();
            self.shared.release(&mut g, self.user);
        }
    }
}

impl Runners {
    /// `per_user` is clamped to 1..=`total`.
    pub fn new(total: usize, per_user: usize, queued_per_user: usize) -> Runners {
        let total = total.max(1);
        Runners {
            shared: Arc::new(Shared {
                total,
                per_user: per_user.clamp(1, total),
                queued_per_user,
                state: Mutex::new(Inner::default()),
            }),
        }
    }

    /// The default share of one user: half the runners, at least one.
    pub fn default_share(total: usize) -> usize {
        (total / 2).max(1)
    }

    pub fn per_user(&self) -> usize {
        self.shared.per_user
    }

    pub fn queued_per_user(&self) -> usize {
        self.shared.queued_per_user
    }

    /// A runner for `user`, now or after waiting at most `wait`.
    pub async fn acquire(&self, user: Uuid, wait: Duration) -> Result<Slot, Refused> {
        let s = &self.shared;
        let rx = {
            let mut g = s.lock();
            let inner = &mut *g;
            let free = inner.running < s.total;
            let u = inner.users.entry(user).or_default();
            if u.running + u.waiting.len() >= s.per_user + s.queued_per_user {
                return Err(Refused::UserLimit);
            }
            if free && u.running < s.per_user && u.waiting.is_empty() {
                u.running += 1;
                inner.running += 1;
                return Ok(self.slot(user));
            }
            let ticket = inner.next_ticket;
            inner.next_ticket += 1;
            let (tx, rx) = oneshot::channel();
            u.waiting.push_back((ticket, tx));
            // Created before any await: a request dropped from here on leaves the queue.
            (
                rx,
                Waiting {
                    shared: s.clone(),
                    user,
                    ticket,
                    armed: true,
                },
            )
        };
        let (rx, mut waiting) = rx;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(())) => {
                waiting.armed = false;
                Ok(self.slot(user))
            }
            // Timed out; a runner handed over in that very instant is still taken.
            _ => match waiting.cancel() {
                true => Ok(self.slot(user)),
                false => Err(Refused::Busy),
            },
        }
    }

    fn slot(&self, user: Uuid) -> Slot {
        Slot {
            shared: self.shared.clone(),
            user,
        }
    }

    #[cfg(test)]
    fn counts(&self, user: Uuid) -> (usize, usize, usize) {
        let g = self.shared.lock();
        let u = g.users.get(&user);
        (
            g.running,
            u.map_or(0, |u| u.running),
            u.map_or(0, |u| u.waiting.len()),
        )
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent between statements: a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run of `user` ended: hand its runner to whoever should have it next.
    fn release(&self, g: &mut Inner, user: Uuid) {
        g.running = g.running.saturating_sub(1);
        if let Some(u) = g.users.get_mut(&user) {
            u.running = u.running.saturating_sub(1);
            if u.running == 0 && u.waiting.is_empty() {
                g.users.remove(&user);
            }
        }
        self.dispatch(g);
    }

    /// Hand free runners to waiting users: fewest runs going first, then the oldest request.
    fn dispatch(&self, g: &mut Inner) {
        while g.running < self.total {
            let next = g
                .users
                .iter()
                .filter(|(_, u)| u.running < self.per_user)
                .filter_map(|(id, u)| u.waiting.front().map(|(t, _)| (u.running, *t, *id)))
                .min();
            let Some((_, _, id)) = next else {
                return;
            };
            let Some(u) = g.users.get_mut(&id) else {
                return;
            };
            let Some((_, tx)) = u.waiting.pop_front() else {
                return;
            };
            u.running += 1;
            g.running += 1;
            // A receiver already gone belongs to a request being dropped: its `Waiting`
            // finds its ticket gone, counts the runner as its own and releases it.
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    fn user() -> Uuid {
        Uuid::new_v4()
    }

    #[tokio::test]
    async fn a_user_holds_at_most_their_share_and_queue() {
        let r = Runners::new(4, 2, 1);
        let a = user();
        let s1 = r.acquire(a, LONG).await.unwrap();
        let _s2 = r.acquire(a, LONG).await.unwrap();
        // The third waits although two runners are free; the fourth is refused.
        let r2 = r.clone();
        let third = tokio::spawn(async move { r2.acquire(a, LONG).await.map(|_| ()) });
        while r.counts(a) != (2, 2, 1) {
            tokio::task::yield_now().await;
        }
        assert_eq!(r.acquire(a, LONG).await.err(), Some(Refused::UserLimit));
        // Another user runs at once.
        let b = user();
        let _b1 = r.acquire(b, Duration::ZERO).await.unwrap();
        assert_eq!(r.counts(b), (3, 1, 0));
        drop(s1);
        third.await.unwrap().unwrap();
        // The third run's slot was dropped with its task.
        assert_eq!(r.counts(a), (2, 1, 0));
    }

    #[tokio::test]
    async fn a_freed_runner_goes_to_the_user_with_fewest_runs() {
        let r = Runners::new(2, 2, 4);
        let (a, b) = (user(), user());
        let a1 = r.acquire(a, LONG).await.unwrap();
        let a2 = r.acquire(a, LONG).await.unwrap();
        // A queues first, then B.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (who, name) in [(a, "a3"), (b, "b1")] {
            let (r2, tx) = (r.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = r2.acquire(who, LONG).await.unwrap();
                tx.send(name).unwrap();
                std::future::pending::<()>().await;
                drop(slot);
            });
            while r.counts(who).2 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(a1);
        // B has no run going, A has one: B goes first although A asked earlier.
        assert_eq!(rx.recv().await, Some("b1"));
        drop(a2);
        assert_eq!(rx.recv().await, Some("a3"));
    }

    #[tokio::test]
    async fn waiting_ends_with_busy_and_leaves_the_queue() {
        let r = Runners::new(1, 1, 2);
        let (a, b) = (user(), user());
        let held = r.acquire(a, LONG).await.unwrap();
        assert_eq!(
            r.acquire(b, Duration::from_millis(10)).await.err(),
            Some(Refused::Busy)
        );
        assert_eq!(r.counts(b), (1, 0, 0));
        // A waiter dropped mid-wait leaves no trace either.
        let r2 = r.clone();
        let w = tokio::spawn(async move { r2.acquire(b, LONG).await.map(|_| ()) });
        while r.counts(b).2 == 0 {
            tokio::task::yield_now().await;
        }
        w.abort();
        let _ = w.await;
        assert_eq!(r.counts(b), (1, 0, 0));
        drop(held);
        assert_eq!(r.counts(a), (0, 0, 0));
        let _again = r.acquire(b, Duration::ZERO).await.unwrap();
    }
}
