//! Runs PostgreSQL itself from the binaries installed on the machine, in `<data dir>/pg`.
//!
//! When oxibase runs as root, initdb and postgres run as the `postgres` system user (both
//! refuse root). A crash of oxibase can leave its postgres child running: the next start sees
//! the live postmaster in `postmaster.pid`, asks it to shut down, then starts afresh.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, set_parent_process_death_signal, Pid, Signal};
use tokio::process::Child;

pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgres";
const MIN_MAJOR: u32 = 15;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "PostgreSQL {MIN_MAJOR}+ was not found (looked at pg_config --bindir, PATH and \
         /usr/lib/postgresql/*/bin). Install it (Debian/Ubuntu: apt-get install postgresql) or \
         set OXIBASE_PG_BIN_DIR, or point OXIBASE_DATABASE_URL at a running database."
    )]
    NotFound,
    #[error("PostgreSQL at {dir} is version {found}; oxibase needs {MIN_MAJOR} or newer")]
    TooOld { dir: String, found: String },
    #[error("{0}")]
    Setup(String),
    #[error("PostgreSQL did not start: {0}")]
    Start(String),
}

/// A system user that PostgreSQL runs as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

pub struct EmbeddedPg {
    pub bin_dir: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    log_path: PathBuf,
    run_as: Option<RunAs>,
    child: Option<Child>,
    fsync: bool,
    die_with_parent: bool,
    /// More `-c name=value` settings (WAL archiving for backups).
    settings: Vec<(String, String)>,
    start_timeout: Duration,
}

impl EmbeddedPg {
    /// Locate binaries and check the version; nothing is written yet.
    pub fn new(
        data_dir: &Path,
        port: u16,
        bin_dir: Option<&Path>,
        fsync: bool,
    ) -> Result<Self, PgError> {
        let bin_dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => find_bin_dir().ok_or(PgError::NotFound)?,
        };
        let postgres = bin_dir.join("postgres");
        let out = Command::new(&postgres)
            .arg("--version")
            .output()
            .map_err(|_| PgError::NotFound)?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let version = text.split_whitespace().nth(2).unwrap_or("").to_string();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < MIN_MAJOR {
            return Err(PgError::TooOld {
                dir: bin_dir.display().to_string(),
                found: version,
            });
        }
        let run_as = if is_root() {
            Some(lookup_user("postgres")?)
        } else {
            None
        };
        Ok(EmbeddedPg {
            bin_dir,
            data: data_dir.join("pg"),
            port,
            log_path: data_dir.join("logs").join("postgres.log"),
            run_as,
            child: None,
            fsync,
            die_with_parent: false,
            settings: vec![],
            start_timeout: Duration::from_secs(60),
        })
    }

    /// Test harnesses: the postmaster gets SIGINT when the thread that started it exits
    /// (keep that thread alive for as long as the database is wanted).
    pub fn set_die_with_parent(&mut self, yes: bool) {
        self.die_with_parent = yes;
    }

    /// Settings passed as `-c name=value` on every start (archive_mode and friends).
    pub fn set_settings(&mut self, settings: Vec<(String, String)>) {
        self.settings = settings;
    }

    /// How long [`EmbeddedPg::start`] waits for connections (a restore's recovery may
    /// replay a lot of WAL first).
    pub fn set_start_timeout(&mut self, t: Duration) {
        self.start_timeout = t;
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin_dir.join(program));
        if let Some(u) = self.run_as {
            c.uid(u.uid).gid(u.gid);
        }
        c.env_remove("PGDATA").env("LC_ALL", "C");
        c
    }

    fn chown(&self, p: &Path) -> Result<(), PgError> {
        if let Some(u) = self.run_as {
            std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid))
                .map_err(|e| PgError::Setup(format!("cannot chown {}: {e}", p.display())))?;
        }
        Ok(())
    }

    pub fn is_initialized(&self) -> bool {
        self.data.join("PG_VERSION").exists()
    }

    /// First start only: initdb with superuser postgres/postgres.
    pub fn init(&self) -> Result<(), PgError> {
        if self.is_initialized() {
            return Ok(());
        }
        if let Some(u) = self.run_as {
            check_traversable(&self.data, u)?;
        }
        if self.data.exists() {
            // A half-finished initdb from an interrupted first start: start over.
            fs::remove_dir_all(&self.data).map_err(|e| {
                PgError::Setup(format!("cannot clear {}: {e}", self.data.display()))
            })?;
        }
        fs::create_dir_all(&self.data)
            .map_err(|e| PgError::Setup(format!("cannot create {}: {e}", self.data.display())))?;
        fs::set_permissions(&self.data, fs::Permissions::from_mode(0o700)).ok();
        self.chown(&self.data)?;
        let pwfile = self
            .data
            .parent()
            .unwrap_or(Path::new("."))
            .join(".pgpass.init");
        fs::write(&pwfile, SUPERUSER_PASSWORD)
            .map_err(|e| PgError::Setup(format!("cannot write {}: {e}", pwfile.display())))?;
        self.chown(&pwfile)?;
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(if self.fsync {
                &[][..]
            } else {
                &["--no-sync"][..]
            })
            .stdin(Stdio::null())
            .output();
        let _ = fs::remove_file(&pwfile);
        let out = out.map_err(|e| PgError::Setup(format!("cannot run initdb: {e}")))?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&self.data);
            return Err(PgError::Setup(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Start the postmaster and wait until it accepts connections.
    pub async fn start(&mut self) -> Result<(), PgError> {
        self.stop_orphan().await?;
        let logs = self.log_path.parent().unwrap().to_path_buf();
        fs::create_dir_all(&logs)
            .map_err(|e| PgError::Setup(format!("cannot create {}: {e}", logs.display())))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| PgError::Setup(format!("cannot open {}: {e}", self.log_path.display())))?;
        let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .args([
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=20",
                "-c",
                "max_wal_senders=20",
            ])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=128MB"])
            // As in Supabase's image (EXPLAIN ... SETTINGS shows it).
            .args(["-c", "effective_cache_size=128MB"]);
        for (k, v) in &self.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        if self.die_with_parent {
            die_with_parent(&mut cmd);
        }
        if !self.fsync {
            cmd.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| PgError::Setup(e.to_string()))?)
            .stderr(log)
            .kill_on_drop(false);
        let child = cmd
            .spawn()
            .map_err(|e| PgError::Start(format!("cannot run postgres: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(PgError::Start(format!(
                        "postgres exited ({status}); its log says:\n{}",
                        self.log_since(start_offset)
                    )));
                }
            }
            if self.ping().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PgError::Start(format!(
                    "not accepting connections after {} s; log:\n{}",
                    self.start_timeout.as_secs(),
                    self.log_since(start_offset)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let text = fs::read(&self.log_path).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or(&[])).to_string();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn superuser_url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    async fn ping(&self) -> bool {
        let Ok(cfg) = self.superuser_url().parse::<tokio_postgres::Config>() else {
            return false;
        };
        match tokio::time::timeout(Duration::from_secs(2), cfg.connect(tokio_postgres::NoTls)).await
        {
            Ok(Ok((client, conn))) => {
                tokio::spawn(conn);
                client.simple_query("select 1").await.is_ok()
            }
            _ => false,
        }
    }

    /// A postmaster left running by a crashed oxibase (we hold the data-dir lock, so no live
    /// oxibase owns it): ask it to shut down fast, then wait for it.
    async fn stop_orphan(&self) -> Result<(), PgError> {
        let pidfile = self.data.join("postmaster.pid");
        let Ok(text) = fs::read_to_string(&pidfile) else {
            return Ok(());
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return Ok(());
        };
        if !process_alive(pid) {
            return Ok(()); // postgres removes a stale pid file itself
        }
        tracing::warn!(
            pid,
            "a PostgreSQL from an earlier run is still up on this data directory; stopping it"
        );
        signal(pid, Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while process_alive(pid) {
            if Instant::now() > deadline {
                signal(pid, Signal::QUIT);
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Fast shutdown (SIGINT: abort open transactions, checkpoint, exit).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(pid as i32, Signal::INT);
            }
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

impl EmbeddedPg {
    /// The running postmaster's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the started postmaster has exited (it is reaped then: a zombie still has its
    /// /proc entry). False when none was started.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Wait until the postmaster exits (and reap it); never returns when none runs.
    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let Some(child) = self.child.as_mut() else {
            return std::future::pending().await;
        };
        // An error means it cannot be waited on any more: treat it as gone.
        let status: std::process::ExitStatus = child.wait().await.unwrap_or_default();
        self.child = None;
        status
    }
}

/// Keeps the embedded PostgreSQL up: when the postmaster exits without being asked (killed,
/// crashed, out of memory), it is started again, with a growing pause between failed
/// attempts. Everything that talks to the database reconnects by itself once it is back.
pub struct Supervisor {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The current postmaster (0 while none runs), for [`Drop`].
    pid: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

/// Pauses between restart attempts: 250 ms doubling to this.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A postmaster that stayed up this long starts the next restart from the short pause.
const STABLE_RUN: Duration = Duration::from_secs(60);

impl Supervisor {
    /// Watch a started `pg` from now on.
    pub fn spawn(pg: EmbeddedPg) -> Supervisor {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(
            pg.pid().map(|p| p as i32).unwrap_or(0),
        ));
        let task = tokio::spawn(supervise(pg, stop_rx, pid.clone()));
        Supervisor {
            stop,
            task: Some(task),
            pid,
        }
    }

    /// Stop watching and shut PostgreSQL down (fast shutdown).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let pid = self.pid.load(std::sync::atomic::Ordering::SeqCst);
            if pid > 0 {
                signal(pid, Signal::INT);
            }
            task.abort();
        }
    }
}

async fn supervise(
    mut pg: EmbeddedPg,
    mut stop: tokio::sync::watch::Receiver<bool>,
    pid: std::sync::Arc<std::sync::atomic::AtomicI32>,
) {
    use std::sync::atomic::Ordering;
    let mut backoff = super::Backoff::new(RESTART_BACKOFF_MAX);
    let mut up_since = Instant::now();
    loop {
        let exited = tokio::select! {
            status = pg.wait_exit() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = exited else {
            pg.stop().await;
            pid.store(0, Ordering::SeqCst);
            return;
        };
        pid.store(0, Ordering::SeqCst);
        if up_since.elapsed() > STABLE_RUN {
            backoff.reset();
        }
        tracing::warn!(
            %status, port = pg.port,
            "PostgreSQL exited unexpectedly; restarting it (requests answer 503 meanwhile)"
        );
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            // The first attempt at once: a killed postmaster's backends leave within moments.
            if attempt > 1 {
                let pause = backoff.step();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            tracing::info!(attempt, "starting PostgreSQL again");
            let started = tokio::select! {
                r = pg.start() => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            match started {
                None => {
                    pg.stop().await;
                    return;
                }
                Some(Ok(())) => {
                    pid.store(pg.pid().map(|p| p as i32).unwrap_or(0), Ordering::SeqCst);
                    tracing::info!(attempt, "PostgreSQL is up again");
                    up_since = Instant::now();
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(attempt, error = %e, "PostgreSQL did not start again; retrying");
                }
            }
        }
    }
}

impl Drop for EmbeddedPg {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            if let Some(pid) = child.id() {
                signal(pid as i32, Signal::INT);
            }
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // A zombie or recycled pid that is not a postgres does not count.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && stat.contains("(postgres)")
        }
        Err(_) => false,
    }
}

fn signal(pid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, sig);
    }
}

#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let _ = set_parent_process_death_signal(Some(Signal::INT));
            Ok(())
        });
    }
}

/// The (uid, gid) PostgreSQL runs as when we are root; None otherwise (files we make for
/// it, such as a restored data directory or a WAL archive folder, must belong to it).
pub fn postgres_owner() -> Result<Option<(u32, u32)>, PgError> {
    if !is_root() {
        return Ok(None);
    }
    lookup_user("postgres").map(|u| Some((u.uid, u.gid)))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn lookup_user(name: &str) -> Result<RunAs, PgError> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == name {
            if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                return Ok(RunAs { uid, gid });
            }
        }
    }
    Err(PgError::Setup(format!(
        "oxibase runs as root, and PostgreSQL refuses to; a '{name}' system user to run it as was \
         not found (create one, e.g. by installing the postgresql package, or run oxibase as an \
         ordinary user)"
    )))
}

/// The postgres user must be able to reach the data directory through every parent.
fn check_traversable(dir: &Path, u: RunAs) -> Result<(), PgError> {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut p = abs.parent();
    while let Some(d) = p {
        if let Ok(m) = fs::metadata(d) {
            let mode = m.mode();
            let ok = if m.uid() == u.uid {
                mode & 0o100 != 0
            } else if m.gid() == u.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                return Err(PgError::Setup(format!(
                    "PostgreSQL runs as the 'postgres' user, which cannot enter {} (mode {:o}); \
                     choose a data directory it can reach (OXIBASE_DATA_DIR=/var/lib/oxibase) or \
                     chmod o+x {}",
                    d.display(),
                    mode & 0o777,
                    d.display()
                )));
            }
        }
        p = d.parent();
    }
    Ok(())
}

fn find_bin_dir() -> Option<PathBuf> {
    let has = |d: &Path| d.join("postgres").is_file() && d.join("initdb").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Some(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has(&d) {
                return Some(d);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let d = e.path().join("bin");
            has(&d).then_some((v, d))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin(version_line: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for name in ["postgres", "initdb"] {
            let p = d.path().join(name);
            fs::write(&p, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        d
    }

    #[test]
    fn too_old_postgres_is_named() {
        let bin = fake_bin("postgres (PostgreSQL) 14.9");
        let data = tempfile::tempdir().unwrap();
        let err = EmbeddedPg::new(data.path(), 1, Some(bin.path()), true)
            .err()
            .unwrap();
        assert!(matches!(err, PgError::TooOld { .. }), "{err}");
        assert!(err.to_string().contains("14.9") && err.to_string().contains("15"));
    }

    #[test]
    fn missing_postgres_says_what_to_install() {
        let data = tempfile::tempdir().unwrap();
        let err = EmbeddedPg::new(data.path(), 1, Some(Path::new("/nonexistent/bin")), true)
            .err()
            .unwrap();
        assert!(matches!(err, PgError::NotFound));
        assert!(err.to_string().contains("apt-get install postgresql"));
    }

    #[test]
    fn new_enough_postgres_is_accepted() {
        let bin = fake_bin("postgres (PostgreSQL) 16.2 (Debian)");
        let data = tempfile::tempdir().unwrap();
        let pg = EmbeddedPg::new(data.path(), 1, Some(bin.path()), true).unwrap();
        assert_eq!(pg.data, data.path().join("pg"));
    }
}
