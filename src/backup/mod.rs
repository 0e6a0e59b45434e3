//! Backups and point-in-time recovery: `oxibase backup` (base backups through
//! pg_basebackup plus the stored objects), continuous WAL archiving while `[backup] target`
//! is set (`archive_command` = `oxibase wal-push`), scheduled backups with retention, and
//! `oxibase restore --to <time>|latest` into a fresh data directory.

pub mod base;
pub mod cli;
pub mod objects;
pub mod restore;
pub mod schedule;
pub mod target;
pub mod wal;

use std::time::Duration;

use crate::config::{BackupConfig, Config};

/// `[backup]` checks made at load: the interval must parse.
pub fn validate(b: &BackupConfig) -> Result<(), String> {
    parse_interval(&b.interval)
        .map(|_| ())
        .map_err(|e| format!("backup.interval: {e}"))?;
    if b.target.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(
            "backup.target is empty: a folder or s3://bucket/prefix, or leave it unset".into(),
        );
    }
    Ok(())
}

/// `30s`, `30m`, `6h`, `1d`, `1w` (or plain seconds); "" = none.
pub fn parse_interval(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not an interval such as 30m, 6h, 1d or 1w"))?;
    let secs = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "'{s}' is not an interval such as 30m, 6h, 1d or 1w"
            ))
        }
    };
    if n == 0 {
        return Err(format!(
            "'{s}': the interval must be above zero (\"\" for none)"
        ));
    }
    Ok(Some(Duration::from_secs(n * secs)))
}

/// One word of a shell command inside `archive_command`/`restore_command` (PostgreSQL
/// runs them with `sh -c` and expands `%`).
pub fn archive_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''")).replace('%', "%%")
}

/// The embedded PostgreSQL's archive settings when `[backup] target` is set. A folder
/// target's `wal/` is made for the `postgres` user, which runs the archive command when
/// oxibase runs as root.
pub fn pg_settings(cfg: &Config) -> Result<Vec<(String, String)>, String> {
    let Some(t) = &cfg.backup.target else {
        return Ok(vec![]);
    };
    let target = target::Target::open(t)?;
    let url = match &target.folder {
        Some(f) => {
            let wal = f.join("wal");
            std::fs::create_dir_all(&wal)
                .map_err(|e| format!("cannot create {}: {e}", wal.display()))?;
            if let Some((uid, gid)) =
                crate::db::embedded_pg::postgres_owner().map_err(|e| e.to_string())?
            {
                std::os::unix::fs::chown(&wal, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot chown {}: {e}", wal.display()))?;
            }
            f.display().to_string()
        }
        None => t.trim().to_string(),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    Ok(vec![
        ("archive_mode".into(), "on".into()),
        (
            "archive_command".into(),
            format!(
                "{} wal-push --to {} %p",
                archive_quote(&exe.display().to_string()),
                archive_quote(&url)
            ),
        ),
        (
            "archive_timeout".into(),
            cfg.backup.archive_timeout_secs.max(1).to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("").unwrap(), None);
        assert_eq!(parse_interval("90").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_interval("30m").unwrap(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            parse_interval("1d").unwrap(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_interval("2w").unwrap(),
            Some(Duration::from_secs(1_209_600))
        );
        for bad in ["0h", "h", "1y", "-1d", "1.5h"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn archive_words_are_quoted_for_sh_and_postgres() {
        assert_eq!(archive_quote("/a b/o'x"), "'/a b/o'\\''x'");
        assert_eq!(archive_quote("s3://b/100%"), "'s3://b/100%%'");
    }
}
