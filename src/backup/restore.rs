//! `oxibase restore`: the newest base backup finished before the target time, unpacked into
//! a fresh data directory, recovered by PostgreSQL itself (recovery.signal, restore_command
//! = `oxibase wal-fetch`, recovery_target_time, then promote), and then exactly the object
//! versions the recovered `storage.objects` rows name.

use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use object_store::path::Path;

use super::base::{list_backups, Manifest, Say};
use super::target::{human, Target};
use crate::config::Config;
use crate::db::embedded_pg::EmbeddedPg;

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Latest,
    Time(DateTime<Utc>),
}

/// `latest`, or a time: `2026-12-03 10:15:00` (UTC), with `T`, fractions of a second or an
/// offset (`+02:00`, `Z`) allowed.
pub fn parse_until(s: &str, now: DateTime<Utc>) -> Result<Until, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("latest") {
        return Ok(Until::Latest);
    }
    let t = DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .map(|n| n.and_utc())
            .ok_or(())
        })
        .map_err(|_| {
            format!(
                "--to '{s}' is not a time: use \"YYYY-MM-DD HH:MM:SS\" (UTC, e.g. \"2026-12-03 \
                 10:15:00\"), an RFC 3339 time with an offset, or latest"
            )
        })?;
    if t > now {
        return Err(format!(
            "--to {} is in the future (now is {})",
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            now.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    Ok(Until::Time(t))
}

/// The backup to start from: the named one, else the newest finished by `until`.
pub fn choose<'a>(
    all: &'a [Manifest],
    id: Option<&str>,
    until: Until,
) -> Result<&'a Manifest, String> {
    if let Some(id) = id {
        let m = all
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| format!("no backup '{id}' in the target"))?;
        if let Until::Time(t) = until {
            if m.finished_at > t {
                return Err(format!(
                    "backup {id} finished at {}, after --to: pick an older one",
                    m.finished_at.format("%Y-%m-%d %H:%M:%S UTC")
                ));
            }
        }
        return Ok(m);
    }
    let found = match until {
        Until::Latest => all.last(),
        Until::Time(t) => all.iter().rev().find(|m| m.finished_at <= t),
    };
    found.ok_or_else(|| match (all.first(), until) {
        (None, _) => "the target holds no finished backup".to_string(),
        (Some(first), _) => format!(
            "no backup finished before that time (the oldest finished at {})",
            first.finished_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    })
}

pub struct Request {
    pub from: String,
    pub backup: Option<String>,
    pub until: Until,
}

/// Run a whole restore into `cfg.data_dir` (which must be empty or absent).
pub async fn run(cfg: &Config, req: &Request, say: Say) -> Result<String, String> {
    let dir = std::path::absolute(&cfg.data_dir).map_err(|e| e.to_string())?;
    refuse_non_empty(&dir)?;
    let target = Target::open(&req.from)?;
    let all = list_backups(&target).await?;
    let m = choose(&all, req.backup.as_deref(), req.until)?.clone();
    say(&format!(
        "Restoring backup {} (finished {}) from {}",
        m.id,
        m.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        target.describe
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    recover(cfg, &dir, &target, &m, req, &say)
        .await
        .map_err(|e| {
            format!(
                "{e}\n\nThe restore did not finish; {} is left as it is for a look (delete it \
             before trying again).",
                dir.display()
            )
        })
}

fn refuse_non_empty(dir: &FsPath) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(format!(
                    "refusing to restore into {}: it is not empty (a restore needs a fresh data \
                     directory; pass another --data-dir)",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", dir.display())),
    }
}

async fn recover(
    cfg: &Config,
    dir: &FsPath,
    target: &Target,
    m: &Manifest,
    req: &Request,
    say: &Say,
) -> Result<String, String> {
    let pgdir = dir.join("pg");
    unpack(dir, &pgdir, target, m, say).await?;
    std::fs::write(pgdir.join("recovery.signal"), "")
        .map_err(|e| format!("cannot write recovery.signal: {e}"))?;
    if let Some((uid, gid)) = crate::db::embedded_pg::postgres_owner().map_err(|e| e.to_string())? {
        chown_tree(&pgdir, uid, gid)?;
    }
    let port = free_port()?;
    let mut pg =
        EmbeddedPg::new(dir, port, cfg.pg_bin_dir.as_deref(), true).map_err(|e| e.to_string())?;
    pg.set_settings(recovery_settings(
        &target_url(target, &req.from),
        req.until,
    )?);
    pg.set_start_timeout(Duration::from_secs(6 * 3600));
    say("Replaying archived WAL (PostgreSQL recovery)...");
    let t = std::time::Instant::now();
    pg.start().await.map_err(|e| explain(&e.to_string()))?;
    let out = async {
        let client = wait_promoted(&mut pg, dir).await?;
        say(&format!(
            "  recovery done in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        let (copied, bytes) = restore_objects(cfg, dir, target, &client, say).await?;
        Ok(format!(
            "Restored {} to {} in {}: {} objects ({}). Start it with `oxibase --data-dir {}`.",
            m.id,
            match req.until {
                Until::Latest => "the latest archived change".to_string(),
                Until::Time(t) => t.format("%Y-%m-%d %H:%M:%S%.f UTC").to_string(),
            },
            dir.display(),
            copied,
            human(bytes),
            dir.display()
        ))
    }
    .await;
    pg.stop().await;
    out
}

/// Copy exactly the object versions the recovered rows name into the data dir's store.
async fn restore_objects(
    cfg: &Config,
    dir: &FsPath,
    target: &Target,
    client: &tokio_postgres::Client,
    say: &Say,
) -> Result<(u64, u64), String> {
    let versions: Vec<String> = client
        .query(
            "select version from storage.objects where version is not null",
            &[],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|v| crate::storage::objects::is_our_version(v))
        .collect();
    client
        .batch_execute("checkpoint")
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    say(&format!("Restoring {} stored objects...", versions.len()));
    let mut live_cfg = cfg.clone();
    live_cfg.data_dir = dir.to_path_buf();
    live_cfg.backup.target = None;
    let live = crate::storage::store::Store::open(&live_cfg)?;
    let (copied, bytes, missing) =
        super::objects::restore(target, live.raw().as_ref(), &versions, say.as_ref()).await?;
    if !missing.is_empty() {
        return Err(format!(
            "{} object version(s) named by restored rows are not in the archive (first: {})",
            missing.len(),
            missing[0]
        ));
    }
    Ok((copied, bytes))
}

/// Download and unpack the base backup's tarballs into `pgdir` (0700).
async fn unpack(
    dir: &FsPath,
    pgdir: &FsPath,
    target: &Target,
    m: &Manifest,
    say: &Say,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let scratch = dir.join("restore-tmp");
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(pgdir).map_err(|e| e.to_string())?;
    std::fs::set_permissions(pgdir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    for (name, into) in [
        ("base.tar.gz", pgdir.to_path_buf()),
        ("pg_wal.tar.gz", pgdir.join("pg_wal")),
    ] {
        if !m.files.iter().any(|f| f == name) {
            continue;
        }
        let file = scratch.join(name);
        let s = say.clone();
        let shown = name.to_string();
        let step = AtomicU64::new(0);
        target
            .download_file(
                &Path::from(format!("base/{}/{name}", m.id)),
                &file,
                &move |done, total| {
                    // A line per ~5% (and the last).
                    let pct = done * 20 / total.max(1);
                    if pct > step.load(Ordering::Relaxed) || done == total {
                        step.store(pct, Ordering::Relaxed);
                        s(&format!(
                            "  downloading {shown}: {} / {}",
                            human(done),
                            human(total)
                        ))
                    }
                },
            )
            .await?;
        std::fs::create_dir_all(&into).map_err(|e| e.to_string())?;
        let out = tokio::process::Command::new("tar")
            .arg("-xzf")
            .arg(&file)
            .arg("--no-same-owner")
            .arg("-C")
            .arg(&into)
            .output()
            .await
            .map_err(|e| format!("cannot run tar: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "unpacking {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// The target as the restore command should name it (a folder made absolute).
fn target_url(target: &Target, given: &str) -> String {
    match &target.folder {
        Some(f) => f.display().to_string(),
        None => given.to_string(),
    }
}

/// `-c` settings for the recovering postmaster (not written to any file, so nothing needs
/// undoing after promotion).
fn recovery_settings(from: &str, until: Until) -> Result<Vec<(String, String)>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let cmd = format!(
        "{} wal-fetch --from {} %f %p",
        super::archive_quote(&exe.display().to_string()),
        super::archive_quote(from)
    );
    let mut s = vec![
        ("restore_command".to_string(), cmd),
        ("recovery_target_action".into(), "promote".into()),
        ("recovery_target_timeline".into(), "latest".into()),
        ("archive_mode".into(), "off".into()),
    ];
    if let Until::Time(t) = until {
        s.push((
            "recovery_target_time".into(),
            t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        ));
    }
    Ok(s)
}

/// Wait until recovery ended and the server was promoted; returns a superuser connection.
async fn wait_promoted(
    pg: &mut EmbeddedPg,
    dir: &FsPath,
) -> Result<tokio_postgres::Client, String> {
    let cfg: tokio_postgres::Config = pg.superuser_url().parse().map_err(|e| format!("{e}"))?;
    loop {
        if let Ok((client, conn)) = cfg.connect(tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            loop {
                match client.query_one("select pg_is_in_recovery()", &[]).await {
                    Ok(r) if !r.get::<_, bool>(0) => return Ok(client),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => break,
                }
            }
        }
        if pg.exited() {
            return Err(explain(&format!(
                "PostgreSQL stopped during recovery; its log says:\n{}",
                log_tail(&dir.join("logs/postgres.log"))
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lead with what to do about the usual recovery failure (PostgreSQL's log follows).
fn explain(err: &str) -> String {
    if !err.contains("recovery ended before configured recovery target was reached") {
        return err.to_string();
    }
    let last = err
        .lines()
        .find_map(|l| {
            l.split("last completed transaction was at log time ")
                .nth(1)
        })
        .map(|t| format!(" (its last change committed at {})", t.trim()))
        .unwrap_or_default();
    format!(
        "the archived WAL ends before the requested time{last}: restore to an earlier time \
         or --to latest (WAL reaches the archive within archive_timeout_secs)\n\n{err}"
    )
}

fn log_tail(p: &FsPath) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port for the recovering database: {e}"))
}

fn chown_tree(p: &FsPath, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .map_err(|e| format!("cannot chown {}: {e}", p.display()))?;
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    #[test]
    fn times_parse_as_utc_or_with_their_offset() {
        let t = |s| parse_until(s, now());
        let want = Until::Time(Utc.with_ymd_and_hms(2026, 12, 3, 10, 15, 0).unwrap());
        assert_eq!(t("2026-12-03 10:15:00").unwrap(), want);
        assert_eq!(t("2026-12-03T10:15:00").unwrap(), want);
        assert_eq!(t("2026-12-03 10:15").unwrap(), want);
        assert_eq!(t("2026-12-03T11:15:00+01:00").unwrap(), want);
        assert_eq!(t("2026-12-03T10:15:00Z").unwrap(), want);
        assert_eq!(t("2026-12-03 12:15:00+02").unwrap(), want);
        assert_eq!(t(" latest ").unwrap(), Until::Latest);
        let Until::Time(f) = t("2026-12-03 10:15:00.25").unwrap() else {
            panic!()
        };
        assert_eq!(f.timestamp_subsec_millis(), 250);
    }

    #[test]
    fn bad_times_say_what_is_expected() {
        for bad in ["yesterday", "2026-13-03 10:15:00", "03/12/2026", ""] {
            let e = parse_until(bad, now()).unwrap_err();
            assert!(e.contains("YYYY-MM-DD HH:MM:SS"), "{bad}: {e}");
        }
        assert!(parse_until("2027-01-01 00:00:00", now())
            .unwrap_err()
            .contains("future"));
    }

    #[test]
    fn the_newest_backup_before_the_time_is_chosen() {
        let mk = |id: &str, h: u32| {
            let t = Utc.with_ymd_and_hms(2026, 12, 3, h, 0, 0).unwrap();
            Manifest {
                id: id.into(),
                started_at: t,
                finished_at: t,
                start_lsn: String::new(),
                end_lsn: String::new(),
                timeline: 1,
                start_wal_file: String::new(),
                pg_version: String::new(),
                size_bytes: 0,
                files: vec![],
                objects: 0,
                objects_bytes: 0,
                objects_copied: 0,
                oxibase_version: String::new(),
            }
        };
        let all = vec![mk("a", 8), mk("b", 10), mk("c", 12)];
        let at = |h| Until::Time(Utc.with_ymd_and_hms(2026, 12, 3, h, 30, 0).unwrap());
        assert_eq!(choose(&all, None, at(10)).unwrap().id, "b");
        assert_eq!(choose(&all, None, Until::Latest).unwrap().id, "c");
        assert!(choose(&all, None, at(7)).unwrap_err().contains("oldest"));
        assert!(choose(&all, Some("c"), at(10))
            .unwrap_err()
            .contains("after"));
        assert!(choose(&all, Some("z"), Until::Latest).is_err());
        assert!(choose(&[], None, Until::Latest)
            .unwrap_err()
            .contains("no finished"));
    }

    #[test]
    fn a_target_past_the_archive_is_explained() {
        let log = "LOG:  last completed transaction was at log time 2026-12-04 15:24:12+00\n\
                   FATAL:  recovery ended before configured recovery target was reached";
        let e = explain(log);
        assert!(
            e.starts_with("the archived WAL ends before the requested time"),
            "{e}"
        );
        assert!(e.contains("committed at 2026-12-04 15:24:12+00") && e.contains("--to latest"));
        assert_eq!(explain("other"), "other");
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let d = std::env::temp_dir().join(format!("oxibase-rs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(refuse_non_empty(&d).is_ok());
        std::fs::write(d.join("x"), "").unwrap();
        assert!(refuse_non_empty(&d).unwrap_err().contains("not empty"));
        assert!(refuse_non_empty(&d.join("absent")).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
