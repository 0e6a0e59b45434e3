//! In the running server: scheduled base backups with retention, a warning whenever
//! PostgreSQL's archiver reports a failed archive command, and one last WAL switch on
//! shutdown so the archive holds every committed change.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::base::{self, Say, Source};
use super::target::{human, Target};
use crate::state::AppState;

/// How often the archiver and the schedule are looked at.
const TICK: Duration = Duration::from_secs(30);

pub fn spawn(state: &AppState, admin_url: &str) {
    let cfg = state.config.clone();
    let Some(url) = cfg.backup.target.clone() else {
        return;
    };
    let interval = super::parse_interval(&cfg.backup.interval).ok().flatten();
    let admin_url = admin_url.to_string();
    let live = state.storage.store.raw().clone();
    tokio::spawn(async move {
        let target = match Target::open(&url) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "backup target unusable; no scheduled backups");
                return;
            }
        };
        let mut failed_seen: Option<i64> = None;
        let mut next_try = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            watch_archiver(&admin_url, &mut failed_seen).await;
            let Some(every) = interval else { continue };
            if tokio::time::Instant::now() < next_try {
                continue;
            }
            next_try = tokio::time::Instant::now() + TICK.min(every);
            // Several processes on one database: one at a time, and each looks at the
            // newest manifest under the lock (so only one takes each due backup).
            let Some(lock) = admin(&admin_url).await else {
                continue;
            };
            let mine = lock
                .query_one("select pg_try_advisory_lock(7002, 1)", &[])
                .await
                .is_ok_and(|r| r.get::<_, bool>(0));
            if !mine {
                continue;
            }
            match due_in(&target, every).await {
                Ok(d) if d.is_zero() => scheduled_backup(&cfg, &target, live.as_ref()).await,
                Ok(d) => next_try = tokio::time::Instant::now() + d.min(TICK * 10),
                Err(e) => tracing::warn!(error = %e, "cannot list backups"),
            }
            drop(lock); // the session's end releases the lock
        }
    });
}

/// How long until the next backup is due (zero: now).
async fn due_in(target: &Target, every: Duration) -> Result<Duration, String> {
    let all = base::list_backups(target).await?;
    Ok(all.last().map_or(Duration::ZERO, |m| {
        let age = (Utc::now() - m.finished_at).to_std().unwrap_or_default();
        every.saturating_sub(age)
    }))
}

async fn scheduled_backup(
    cfg: &crate::config::Config,
    target: &Target,
    live: &dyn object_store::ObjectStore,
) {
    let say: Say = Arc::new(|l: &str| tracing::debug!(step = l.trim(), "backup"));
    let started = std::time::Instant::now();
    let src = match Source::from_config(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "scheduled backup failed");
            return;
        }
    };
    match base::take(&src, target, live, say, false).await {
        Ok(m) => tracing::info!(
            id = %m.id, size = %human(m.size_bytes), objects = m.objects,
            secs = started.elapsed().as_secs(), "scheduled backup done"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "scheduled backup failed");
            return;
        }
    }
    match base::prune(target, cfg.backup.keep, cfg.backup.keep_days).await {
        Ok((b, w, o)) if b + w + o > 0 => {
            tracing::info!(
                backups = b,
                wal_files = w,
                objects = o,
                "old backups pruned"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning old backups failed"),
    }
}

async fn admin(url: &str) -> Option<tokio_postgres::Client> {
    let cfg: tokio_postgres::Config = url.parse().ok()?;
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// Log each new archive failure (the archive command's own message is in PostgreSQL's log).
async fn watch_archiver(url: &str, seen: &mut Option<i64>) {
    let Some(c) = admin(url).await else { return };
    let Ok(r) = c
        .query_one(
            "select failed_count, coalesce(last_failed_wal, ''), \
             coalesce(last_failed_time::text, '') from pg_stat_archiver",
            &[],
        )
        .await
    else {
        return;
    };
    let failed: i64 = r.get(0);
    if seen.is_some_and(|s| failed > s) || (seen.is_none() && failed > 0) {
        tracing::warn!(
            wal = %r.get::<_, String>(1), at = %r.get::<_, String>(2), failures = failed,
            "WAL archiving to the backup target failed (PostgreSQL retries; its log, \
             logs/postgres.log, has the archive command's error)"
        );
    }
    *seen = Some(failed);
}

/// Switch to a new WAL segment and wait (bounded) until the archiver took the finished one,
/// so a shutdown leaves every committed change in the archive.
pub async fn flush_wal(url: &str) {
    let Some(c) = admin(url).await else { return };
    let Ok(r) = c
        .query_one("select pg_walfile_name(pg_switch_wal())", &[])
        .await
    else {
        return;
    };
    let want: String = r.get(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = c
            .query_one(
                "select coalesce(last_archived_wal, '') from pg_stat_archiver",
                &[],
            )
            .await
        {
            let done: String = r.get(0);
            if done.len() >= 24 && done[..24] >= want[..] {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(wal = %want, "the last WAL segment was not archived within 30 s");
}
