//! oxibase: one binary that serves the Supabase APIs (REST, Auth, Storage, Realtime,
//! Functions) over a real PostgreSQL with Row Level Security.
//!
//! [`Server::start`] boots linearly (lock, database, migrations, pool, listeners), logging
//! one line per step; tests call it in-process on port 0.

// Each API's error type carries its whole client-visible answer (status, body fields,
// headers); errors are the rare path, so they are returned by value, not boxed.
#![allow(clippy::result_large_err)]

pub(crate) mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub(crate) mod dashboard;
pub mod db;
pub mod functions;
pub mod fuzz;
pub mod gentypes;
pub(crate) mod http;
pub mod identity;
pub mod jwt;
pub(crate) mod metrics;
pub(crate) mod net;
pub mod project;
pub(crate) mod realtime;
pub(crate) mod rest;
pub mod state;
pub mod storage;
pub(crate) mod trim;

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;
use db::embedded_pg::EmbeddedPg;
use identity::{KeyRing, OpaqueKeys};
use jwt::JwtKeys;
use state::{AppState, Inner};

/// Change capture's own connections for its RLS checks (it checks one batch at a time).
const REALTIME_CHECK_CONNECTIONS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error(
        "the data directory {0} is in use by another oxibase process; stop it first or choose \
         another directory with OXIBASE_DATA_DIR"
    )]
    DataDirInUse(String),
    #[error("cannot use the data directory {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("{0}")]
    Postgres(#[from] db::embedded_pg::PgError),
    #[error("{0}")]
    Migrate(#[from] db::migrate::MigrateError),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    #[error("{0}")]
    Init(String),
    /// The Supabase project folder could not be applied (migration, seed, bucket).
    #[error("{0}")]
    Project(String),
}

/// What a running server exposes to its owner (main or a test).
pub struct Server {
    pub state: AppState,
    pub addrs: Vec<SocketAddr>,
    pub db_url: String,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
    /// The embedded PostgreSQL, restarted whenever it exits unasked.
    pg: Option<db::embedded_pg::Supervisor>,
    _lock: Option<File>,
}

/// A progress reporter for the slow first-run steps.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

fn lock_data_dir(cfg: &Config) -> Result<File, StartError> {
    let dir = &cfg.data_dir;
    let shown = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("oxibase.lock"))
        .map_err(|e| StartError::DataDir {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirInUse(shown)),
        Err(std::fs::TryLockError::Error(e)) => Err(StartError::DataDir {
            path: shown,
            message: e.to_string(),
        }),
    }
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, StartError> {
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| StartError::Connect(db::error_text(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "migration connection closed");
        }
    });
    Ok(client)
}

/// Start PostgreSQL if needed and apply migrations; returns (superuser URL, pool config, pg).
/// Give an embedded server role a password made fresh on this start (nothing well-known)
/// and these attributes; the login config for it. `role` and `attrs` are constants.
async fn fresh_login(
    admin: &tokio_postgres::Client,
    admin_cfg: &tokio_postgres::Config,
    role: &str,
    attrs: &str,
) -> Result<tokio_postgres::Config, StartError> {
    use rand::Rng;
    let pw: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    admin
        .batch_execute(&format!("alter role {role} with {attrs} password '{pw}'"))
        .await
        .map_err(|e| StartError::Connect(db::error_text(&e)))?;
    let mut c = admin_cfg.clone();
    c.user(role).password(pw);
    Ok(c)
}

/// The logins the server uses: requests (`authenticator`) and realtime change capture.
struct DbLogins {
    pool: tokio_postgres::Config,
    capture: tokio_postgres::Config,
}

async fn prepare_database(
    cfg: &Config,
    progress: &Progress,
) -> Result<(String, DbLogins, Option<EmbeddedPg>), StartError> {
    let (admin_url, mut pg) = match &cfg.database_url {
        Some(url) => (url.expose().clone(), None),
        None => {
            let mut pg = EmbeddedPg::new(
                &cfg.data_dir,
                cfg.db_port,
                cfg.pg_bin_dir.as_deref(),
                cfg.db_fsync,
            )?;
            if !pg.is_initialized() {
                progress(&format!(
                    "Initializing PostgreSQL in {} (first start only, a few seconds)...",
                    pg.data.display()
                ));
                let p = std::mem::replace(
                    &mut pg,
                    EmbeddedPg::new(
                        &cfg.data_dir,
                        cfg.db_port,
                        cfg.pg_bin_dir.as_deref(),
                        cfg.db_fsync,
                    )?,
                );
                let p = tokio::task::spawn_blocking(move || p.init().map(|_| p))
                    .await
                    .map_err(|e| StartError::Init(e.to_string()))??;
                pg = p;
            }
            // [backup]: continuous WAL archiving (src/backup/).
            pg.set_settings(backup::pg_settings(cfg).map_err(StartError::Init)?);
            progress(&format!(
                "Starting PostgreSQL {} on 127.0.0.1:{}...",
                pg.bin_dir.display(),
                pg.port
            ));
            pg.start().await?;
            (pg.superuser_url(), Some(pg))
        }
    };
    let result = async {
        let admin_cfg: tokio_postgres::Config =
            admin_url.parse().map_err(|e: tokio_postgres::Error| {
                StartError::Connect(format!("invalid database URL: {e}"))
            })?;
        let mut admin = connect(&admin_cfg).await?;
        let p = progress.clone();
        let applied = db::migrate::run(&mut admin, cfg.app_schema, &move |name| {
            p(&format!("Applying migration {name}..."))
        })
        .await?;
        if !applied.is_empty() {
            tracing::info!(count = applied.len(), "migrations applied");
        }
        let p = progress.clone();
        project::apply(&mut admin, cfg, &move |line| p(line))
            .await
            .map_err(StartError::Project)?;
        // Embedded: requests use the `authenticator` login role with a password made fresh
        // on every start (nothing well-known). External: the given URL's role.
        let pool_cfg = if pg.is_some() {
            fresh_login(&admin, &admin_cfg, "authenticator", "login").await?
        } else {
            admin_cfg.clone()
        };
        // realtime: change capture streams over a replication connection, which needs a
        // login with REPLICATION: embedded, supabase_realtime_admin with a fresh password;
        // external, the given URL's role.
        let capture_cfg = if pg.is_some() {
            fresh_login(
                &admin,
                &admin_cfg,
                "supabase_realtime_admin",
                "login replication",
            )
            .await?
        } else {
            admin_cfg
        };
        Ok::<_, StartError>(DbLogins {
            pool: pool_cfg,
            capture: capture_cfg,
        })
    }
    .await;
    match result {
        Ok(logins) => Ok((admin_url, logins, pg)),
        Err(e) => {
            if let Some(pg) = pg.as_mut() {
                pg.stop().await;
            }
            Err(e)
        }
    }
}

fn load_keys(cfg: &Config) -> Result<KeyRing, StartError> {
    let mut jwt = JwtKeys::new(cfg.jwt_secret.expose());
    if let Some(path) = &cfg.jwt_keys_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StartError::Init(format!("cannot read jwt_keys_file {}: {e}", path.display()))
        })?;
        jwt.add_jwks_json(&text)
            .map_err(|e| StartError::Init(format!("jwt_keys_file {}: {e}", path.display())))?;
    }
    Ok(KeyRing::new(
        jwt,
        OpaqueKeys::for_secret(cfg.jwt_secret.expose()),
    ))
}

impl Server {
    pub async fn start(cfg: Config, progress: Progress) -> Result<Server, StartError> {
        cfg.validate()?;
        // Before any socket: the connection caps are derived from this limit.
        let nofile = http::limits::raise_nofile_limit();
        tracing::debug!(nofile, "descriptor limit");
        let keys = load_keys(&cfg)?;
        // Listen first: a taken port fails fast, before any database work.
        let mut listeners = vec![];
        for b in &cfg.bind {
            let addr: SocketAddr = format!(
                "{}:{}",
                if b.contains(':') {
                    format!("[{b}]")
                } else {
                    b.clone()
                },
                cfg.port
            )
            .parse()
            .map_err(|_| StartError::Bind {
                addr: b.clone(),
                message: "not an IP address".into(),
            })?;
            // Port 0 with two families: the second takes the first's port.
            let addr = match (addr.port(), listeners.first()) {
                (0, Some(l)) => SocketAddr::new(
                    addr.ip(),
                    TcpListener::local_addr(l).map(|a| a.port()).unwrap_or(0),
                ),
                _ => addr,
            };
            match TcpListener::bind(addr).await {
                Ok(l) => listeners.push(l),
                // ::1 may not exist (IPv6 disabled): serve IPv4 alone then.
                Err(e)
                    if addr.is_ipv6()
                        && !listeners.is_empty()
                        && e.kind() == std::io::ErrorKind::AddrNotAvailable =>
                {
                    tracing::warn!(%addr, "IPv6 loopback unavailable; serving IPv4 only");
                }
                Err(e) => {
                    let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                        " (port in use: is another oxibase or `supabase start` running? set OXIBASE_PORT)"
                    } else {
                        ""
                    };
                    return Err(StartError::Bind {
                        addr: addr.to_string(),
                        message: format!("{e}{hint}"),
                    });
                }
            }
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let lock = if cfg.database_url.is_none() {
            Some(lock_data_dir(&cfg)?)
        } else {
            None
        };
        let (admin_url, logins, mut pg) = prepare_database(&cfg, &progress).await?;
        let mut pool_cfg = logins.pool;
        let timeouts = db::PoolTimeouts::from_config(&cfg);
        db::harden_config(&mut pool_cfg, timeouts);
        let pool = db::make_pool_with(pool_cfg.clone(), cfg.db_pool_size, timeouts);
        let built = async {
            Ok::<_, String>(Inner {
                rest: rest::init(&cfg, &pool).await?,
                auth: auth::init(&cfg, &pool).await?,
                storage: storage::init(&cfg, &pool).await?,
                realtime: realtime::init(
                    &cfg,
                    db::make_pool_with(pool_cfg.clone(), REALTIME_CHECK_CONNECTIONS, timeouts),
                    &logins.capture,
                )
                .await?,
                functions: functions::init(&cfg, &pool).await?,
                config: cfg.clone(),
                pool: pool.clone(),
                wire: db::wire::WireConfig::from_config(&pool_cfg)
                    .map(|w| db::wire::make_pool_with(w, cfg.db_pool_size, timeouts)),
                db_config: pool_cfg,
                keys,
                metrics: metrics::Metrics::new(),
                dashboard: dashboard::init(&cfg)?,
            })
        }
        .await;
        let inner = match built {
            Ok(i) => i,
            Err(e) => {
                if let Some(pg) = pg.as_mut() {
                    pg.stop().await;
                }
                return Err(StartError::Init(e));
            }
        };
        let state = AppState(Arc::new(inner));
        let pg = pg.map(db::embedded_pg::Supervisor::spawn);
        rest::spawn_background(&state);
        auth::spawn_background(&state);
        storage::spawn_background(&state);
        realtime::spawn_background(&state);
        functions::spawn_background(&state);
        net::spawn_background(&state);
        backup::schedule::spawn(&state, &admin_url);
        dashboard::spawn_background(&state);
        let (tx, rx) = watch::channel(false);
        trim::spawn(&state, rx.clone());
        let serve = tokio::spawn(http::server::serve(listeners, state.clone(), rx));
        Ok(Server {
            state,
            addrs,
            db_url: admin_url,
            shutdown: tx,
            serve,
            pg,
            _lock: lock,
        })
    }

    pub fn port(&self) -> u16 {
        self.addrs.first().map(|a| a.port()).unwrap_or(0)
    }

    /// Stop accepting, drain connections (bounded), then stop PostgreSQL.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.serve).await;
        functions::shutdown(&self.state).await;
        realtime::shutdown(&self.state).await;
        self.state.pool.close();
        if self.state.config.backup.target.is_some() {
            let store = &self.state.storage.store;
            store.settle_archive(Duration::from_secs(30)).await;
            if self.pg.is_some() {
                backup::schedule::flush_wal(&self.db_url).await;
            }
        }
        if let Some(pg) = self.pg.take() {
            pg.stop().await;
        }
    }
}

/// The URL of the database as a user should connect to it (superuser, like `supabase status`).
pub fn display_db_url(cfg: &Config) -> String {
    match &cfg.database_url {
        Some(_) => "(external: OXIBASE_DATABASE_URL)".into(),
        None => format!(
            "postgresql://{}:{}@127.0.0.1:{}/postgres",
            db::embedded_pg::SUPERUSER,
            db::embedded_pg::SUPERUSER_PASSWORD,
            cfg.db_port
        ),
    }
}
