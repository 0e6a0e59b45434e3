//! Base backups: `pg_basebackup` (tar, gzip, WAL streamed alongside so each backup restores
//! on its own) into a scratch folder, uploaded to `base/<id>/`, then the object versions the
//! archive lacks, then `manifest.json` last: a backup without one is unfinished.

use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::objects;
use super::target::{human, list, Target};
use crate::config::Config;

/// `base/<id>/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub started_at: DateTime<Utc>,
    /// After the last byte was uploaded: any time from here on can be restored with this
    /// backup and the archived WAL.
    pub finished_at: DateTime<Utc>,
    pub start_lsn: String,
    pub end_lsn: String,
    pub timeline: u32,
    /// The first WAL segment this backup needs (older archived WAL can go with it).
    pub start_wal_file: String,
    pub pg_version: String,
    /// Database files uploaded (compressed), in bytes.
    pub size_bytes: u64,
    pub files: Vec<String>,
    /// Stored object versions at backup time, their bytes, and how many this backup copied.
    pub objects: u64,
    pub objects_bytes: u64,
    pub objects_copied: u64,
    pub oxibase_version: String,
}

/// What a backup connects with and writes where.
pub struct Source {
    pub pg: tokio_postgres::Config,
    pub bin_dir: PathBuf,
    pub scratch: PathBuf,
}

impl Source {
    /// The embedded database (superuser) or `database_url` (its role needs REPLICATION and
    /// a `replication` line in pg_hba.conf).
    pub fn from_config(cfg: &Config) -> Result<Source, String> {
        let url = match &cfg.database_url {
            Some(u) => u.expose().clone(),
            None => format!(
                "postgres://{}:{}@127.0.0.1:{}/postgres",
                crate::db::embedded_pg::SUPERUSER,
                crate::db::embedded_pg::SUPERUSER_PASSWORD,
                cfg.db_port
            ),
        };
        let pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("invalid database URL: {e}"))?;
        let bin_dir = crate::db::embedded_pg::EmbeddedPg::new(
            &cfg.data_dir,
            cfg.db_port,
            cfg.pg_bin_dir.as_deref(),
            true,
        )
        .map_err(|e| e.to_string())?
        .bin_dir
        .clone();
        Ok(Source {
            pg,
            bin_dir,
            scratch: cfg.data_dir.join("backup-tmp"),
        })
    }
}

pub type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// Take one base backup into `target`. `show_pg_progress` passes pg_basebackup's own
/// progress through to stderr (the CLI); otherwise its output goes to the log on failure.
pub async fn take(
    src: &Source,
    target: &Target,
    live: &dyn ObjectStore,
    say: Say,
    show_pg_progress: bool,
) -> Result<Manifest, String> {
    let started_at = Utc::now();
    let id = started_at.format("%Y%m%dT%H%M%SZ").to_string();
    let (client, conn) = src.pg.connect(tokio_postgres::NoTls).await.map_err(|e| {
        format!(
            "cannot connect to the database: {} (the backup is online: is oxibase running?)",
            crate::db::error_text(&e)
        )
    })?;
    tokio::spawn(conn);
    let pg_version: String = client
        .query_one("show server_version", &[])
        .await
        .map_err(|e| crate::db::error_text(&e))?
        .get(0);
    let dir = src.scratch.join(&id);
    let _ = tokio::fs::remove_dir_all(&dir).await;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = async {
        say(&format!(
            "Backing up the database (pg_basebackup) to {}...",
            target.describe
        ));
        let t = Instant::now();
        run_basebackup(src, &dir, &id, show_pg_progress).await?;
        let wal = read_wal_range(&dir.join("backup_manifest"))?;
        say(&format!(
            "  database copied in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        let start_wal_file: String = client
            .query_one("select pg_walfile_name($1::text::pg_lsn)", &[&wal.start])
            .await
            .map_err(|e| crate::db::error_text(&e))?
            .get(0);
        let (files, size_bytes) = upload_all(target, &dir, &id, &say).await?;
        say("Archiving stored objects...");
        let caught = objects::catch_up(live, target, say.as_ref()).await?;
        let m = Manifest {
            id: id.clone(),
            started_at,
            finished_at: Utc::now(),
            start_lsn: wal.start,
            end_lsn: wal.end,
            timeline: wal.timeline,
            start_wal_file,
            pg_version,
            size_bytes,
            files,
            objects: caught.objects,
            objects_bytes: caught.bytes,
            objects_copied: caught.copied,
            oxibase_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let text = serde_json::to_vec_pretty(&m).map_err(|e| e.to_string())?;
        target
            .put(
                &Path::from(format!("base/{id}/manifest.json")),
                Bytes::from(text),
            )
            .await?;
        Ok(m)
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

/// Upload pg_basebackup's files to `base/<id>/`, a progress line per ~5%; returns the names
/// and the bytes uploaded.
async fn upload_all(
    target: &Target,
    dir: &FsPath,
    id: &str,
    say: &Say,
) -> Result<(Vec<String>, u64), String> {
    let mut files = vec![];
    let mut size_bytes = 0;
    for name in ["base.tar.gz", "pg_wal.tar.gz", "backup_manifest"] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let key = Path::from(format!("base/{id}/{name}"));
        let shown = name.to_string();
        let s = say.clone();
        let step = std::sync::atomic::AtomicU64::new(0);
        let n = target
            .upload_file(&key, &path, &move |done, total| {
                // A line per ~5% (and the last).
                let pct = done * 20 / total.max(1);
                if pct > step.load(std::sync::atomic::Ordering::Relaxed) || done == total {
                    step.store(pct, std::sync::atomic::Ordering::Relaxed);
                    s(&format!(
                        "  uploading {shown}: {} / {}",
                        human(done),
                        human(total)
                    ));
                }
            })
            .await?;
        size_bytes += n;
        files.push(name.to_string());
    }
    Ok((files, size_bytes))
}

async fn run_basebackup(
    src: &Source,
    dir: &FsPath,
    id: &str,
    show_progress: bool,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(src.bin_dir.join("pg_basebackup"));
    cmd.arg("-D")
        .arg(dir)
        .args(["-Ft", "-Z", "gzip:1", "-X", "stream", "--checkpoint=fast"])
        .arg(format!("--label=oxibase {id}"))
        .arg("--no-password")
        .env_remove("PGDATA")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(h) = src.pg.get_hosts().first() {
        match h {
            tokio_postgres::config::Host::Tcp(h) => cmd.arg("-h").arg(h),
            tokio_postgres::config::Host::Unix(p) => cmd.arg("-h").arg(p),
        };
    }
    if let Some(p) = src.pg.get_ports().first() {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(u) = src.pg.get_user() {
        cmd.arg("-U").arg(u);
    }
    // The password goes by environment, never on the command line.
    if let Some(pw) = src.pg.get_password() {
        cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).to_string());
    }
    if show_progress {
        cmd.arg("--progress").stderr(Stdio::inherit());
        let status = cmd
            .status()
            .await
            .map_err(|e| format!("cannot run pg_basebackup: {e}"))?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("pg_basebackup failed ({status}); see above"))
        };
    }
    cmd.stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run pg_basebackup: {e}"))?;
    let mut said = vec![];
    if let Some(err) = child.stderr.take() {
        let mut lines = BufReader::new(err).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            said.push(l);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("pg_basebackup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_basebackup failed ({status}): {}",
            said.join("\n")
        ))
    }
}

struct WalRange {
    start: String,
    end: String,
    timeline: u32,
}

/// Start and end LSN from PostgreSQL's own backup_manifest.
fn read_wal_range(path: &FsPath) -> Result<WalRange, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("pg_basebackup wrote no {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("backup_manifest: {e}"))?;
    let r = v["WAL-Ranges"]
        .as_array()
        .and_then(|a| a.first())
        .ok_or("backup_manifest has no WAL-Ranges")?;
    let s = |k: &str| r[k].as_str().map(str::to_string);
    Ok(WalRange {
        start: s("Start-LSN").ok_or("backup_manifest: no Start-LSN")?,
        end: s("End-LSN").ok_or("backup_manifest: no End-LSN")?,
        timeline: r["Timeline"].as_u64().unwrap_or(1) as u32,
    })
}

/// Every finished backup in the target, oldest first.
pub async fn list_backups(target: &Target) -> Result<Vec<Manifest>, String> {
    let keys = list(target.store.as_ref(), "base")
        .await
        .map_err(|e| format!("{}: {e}", target.describe))?;
    let mut out = vec![];
    for m in keys
        .iter()
        .filter(|m| m.location.filename() == Some("manifest.json"))
    {
        let bytes = target
            .store
            .get(&m.location)
            .await
            .map_err(|e| format!("{}: {e}", target.describe))?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(man) => out.push(man),
            Err(e) => tracing::warn!(key = %m.location, error = %e, "unreadable backup manifest"),
        }
    }
    out.sort_by_key(|m| m.started_at);
    Ok(out)
}

/// Which backups (oldest first) retention drops: those neither among the newest `keep` nor
/// younger than `keep_days`; the newest is always kept; both rules 0 keeps everything.
pub fn to_drop(all: &[Manifest], keep: u32, keep_days: u32, now: DateTime<Utc>) -> Vec<usize> {
    if keep == 0 && keep_days == 0 {
        return vec![];
    }
    let n = all.len();
    (0..n.saturating_sub(1))
        .filter(|&i| {
            let by_count = keep > 0 && n - i <= keep as usize;
            let by_age = keep_days > 0
                && now - all[i].finished_at < chrono::Duration::days(keep_days as i64);
            !by_count && !by_age
        })
        .collect()
}

/// Apply retention: drop old backups, the WAL before the oldest kept one, and object
/// versions deleted before it. Returns (backups, WAL files, objects) removed.
pub async fn prune(
    target: &Target,
    keep: u32,
    keep_days: u32,
) -> Result<(usize, usize, usize), String> {
    let all = list_backups(target).await?;
    let drop = to_drop(&all, keep, keep_days, Utc::now());
    for &i in &drop {
        let prefix = format!("base/{}", all[i].id);
        // manifest.json first, so a half-pruned backup is never listed.
        let man = Path::from(format!("{prefix}/manifest.json"));
        let _ = target.store.delete(&man).await;
        for m in list(target.store.as_ref(), &prefix)
            .await
            .map_err(|e| format!("{}: {e}", target.describe))?
        {
            let _ = target.store.delete(&m.location).await;
        }
    }
    let Some(oldest) = all
        .iter()
        .enumerate()
        .find(|(i, _)| !drop.contains(i))
        .map(|(_, m)| m)
    else {
        return Ok((drop.len(), 0, 0));
    };
    let wal = super::wal::prune(target, &oldest.start_wal_file).await?;
    let objs = objects::prune(target, oldest.started_at).await?;
    Ok((drop.len(), wal, objs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(days_ago: i64) -> Manifest {
        let t = Utc::now() - chrono::Duration::days(days_ago);
        Manifest {
            id: t.to_rfc3339(),
            started_at: t,
            finished_at: t,
            start_lsn: "0/2000028".into(),
            end_lsn: "0/2000100".into(),
            timeline: 1,
            start_wal_file: "000000010000000000000002".into(),
            pg_version: "15".into(),
            size_bytes: 1,
            files: vec![],
            objects: 0,
            objects_bytes: 0,
            objects_copied: 0,
            oxibase_version: "x".into(),
        }
    }

    #[test]
    fn retention_keeps_by_count_or_age_and_always_the_newest() {
        let all: Vec<Manifest> = [10, 8, 6, 4, 2, 0].iter().map(|d| m(*d)).collect();
        let now = Utc::now();
        assert_eq!(to_drop(&all, 3, 0, now), vec![0, 1, 2]);
        assert_eq!(to_drop(&all, 0, 5, now), vec![0, 1, 2]);
        assert_eq!(to_drop(&all, 5, 0, now), vec![0]);
        assert_eq!(to_drop(&all, 2, 7, now), vec![0, 1]);
        assert!(to_drop(&all, 0, 0, now).is_empty());
        let old: Vec<Manifest> = [30, 20].iter().map(|d| m(*d)).collect();
        assert_eq!(to_drop(&old, 0, 1, now), vec![0], "the newest stays");
    }

    #[test]
    fn wal_range_is_read_from_the_manifest() {
        let d = std::env::temp_dir().join(format!("oxibase-bm-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("backup_manifest");
        std::fs::write(
            &p,
            r#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
               "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138"}]}"#,
        )
        .unwrap();
        let r = read_wal_range(&p).unwrap();
        assert_eq!(
            (r.start.as_str(), r.end.as_str(), r.timeline),
            ("0/2000028", "0/2000138", 1)
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
