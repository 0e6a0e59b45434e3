//! The `backup`, `restore`, `wal-push` and `wal-fetch` subcommands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::base::{self, Say, Source};
use super::restore::{self, Request};
use super::target::{human, Target};
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// A folder or s3://bucket/prefix (default: `[backup] target`).
    #[arg(long)]
    pub to: Option<String>,
    /// List the backups in the target instead of taking one.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Where the backups are: a folder or s3://bucket/prefix (default: `[backup] target`).
    #[arg(long)]
    pub from: Option<String>,
    /// Start from this backup (default: the newest one finished before --to).
    #[arg(long)]
    pub backup: Option<String>,
    /// "YYYY-MM-DD HH:MM:SS" (UTC unless an offset is given) or latest. The fresh data
    /// directory to restore into is --data-dir.
    #[arg(long)]
    pub to: String,
}

/// PostgreSQL's archive_command.
#[derive(Debug, clap::Args)]
pub struct WalPushArgs {
    #[arg(long)]
    pub to: String,
    /// The WAL file (%p).
    pub path: PathBuf,
}

/// PostgreSQL's restore_command.
#[derive(Debug, clap::Args)]
pub struct WalFetchArgs {
    #[arg(long)]
    pub from: String,
    /// The WAL file name asked for (%f).
    pub name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
}

fn say() -> Say {
    Arc::new(|l: &str| eprintln!("{l}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// wal-push: run by PostgreSQL with its own environment; needs no config file. Its stderr
/// lands in PostgreSQL's log.
pub fn wal_push(a: &WalPushArgs) -> ExitCode {
    let r = runtime().block_on(async {
        let t = Target::open(&a.to)?;
        super::wal::push(&t, &a.path).await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxibase wal-push {}: {e}", a.path.display());
            ExitCode::FAILURE
        }
    }
}

/// wal-fetch: exit 1 quietly when the file is not archived (PostgreSQL probes for files);
/// any other failure exits 126, which PostgreSQL takes as fatal: the restore stops with the
/// error in its log instead of ending early at the last WAL it could read.
pub fn wal_fetch(a: &WalFetchArgs) -> ExitCode {
    let r = runtime().block_on(async {
        let t = Target::open(&a.from)?;
        super::wal::fetch(&t, &a.name, &a.dest).await
    });
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("oxibase wal-fetch {}: {e}", a.name);
            ExitCode::from(126)
        }
    }
}

fn fail(e: String) -> ExitCode {
    eprintln!("oxibase: {e}");
    ExitCode::FAILURE
}

pub async fn backup(cfg: Config, a: BackupArgs) -> ExitCode {
    let Some(url) = a.to.clone().or_else(|| cfg.backup.target.clone()) else {
        return fail(
            "no backup target: pass --to <folder or s3://bucket/prefix> or set [backup] target"
                .into(),
        );
    };
    let target = match Target::open(&url) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if a.list {
        return match base::list_backups(&target).await {
            Ok(all) => {
                println!(
                    "{:<18} {:<20} {:>10} {:>8}  WAL start",
                    "ID", "FINISHED (UTC)", "SIZE", "OBJECTS"
                );
                for m in all {
                    println!(
                        "{:<18} {:<20} {:>10} {:>8}  {}",
                        m.id,
                        m.finished_at.format("%Y-%m-%d %H:%M:%S"),
                        human(m.size_bytes),
                        m.objects,
                        m.start_lsn
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
    let started = std::time::Instant::now();
    let r = async {
        let src = Source::from_config(&cfg)?;
        let live = crate::storage::store::Store::open(&cfg)?;
        let m = base::take(&src, &target, live.raw().as_ref(), say(), true).await?;
        if a.to.is_none() {
            let (b, w, o) = base::prune(&target, cfg.backup.keep, cfg.backup.keep_days).await?;
            if b > 0 {
                eprintln!("Retention: removed {b} old backup(s), {w} WAL file(s), {o} deleted object version(s).");
            }
        }
        Ok::<_, String>(m)
    }
    .await;
    match r {
        Ok(m) => {
            eprintln!(
                "Backup {} done in {:.1} s: database {} (LSN {} to {}), {} objects ({}, {} newly copied).",
                m.id,
                started.elapsed().as_secs_f64(),
                human(m.size_bytes),
                m.start_lsn,
                m.end_lsn,
                m.objects,
                human(m.objects_bytes),
                m.objects_copied
            );
            println!("{}", m.id);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub async fn restore(cfg: Config, a: RestoreArgs) -> ExitCode {
    let Some(from) = a.from.clone().or_else(|| cfg.backup.target.clone()) else {
        return fail(
            "no backup source: pass --from <folder or s3://bucket/prefix> or set [backup] target"
                .into(),
        );
    };
    let until = match restore::parse_until(&a.to, chrono::Utc::now()) {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let req = Request {
        from,
        backup: a.backup.clone(),
        until,
    };
    let started = std::time::Instant::now();
    match restore::run(&cfg, &req, say()).await {
        Ok(done) => {
            eprintln!("{done} ({:.1} s)", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
