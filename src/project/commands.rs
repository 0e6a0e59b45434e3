//! The Supabase CLI's local workflow on oxibase: `db reset`, `db dump`,
//! `migration new/list/up` and `status`. Each prints what it did.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tokio_postgres::Client;

use super::{locate, migrations, Project};
use crate::db::embedded_pg::EmbeddedPg;
use crate::Config;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Recreate the local database: oxibase's schema, the project's migrations and seed.
    Reset,
    /// Dump the schema (default), the data or the roles with pg_dump, as `supabase db dump`.
    Dump(DumpArgs),
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Dump data only (auth and storage rows included).
    #[arg(long, conflicts_with = "role_only")]
    pub data_only: bool,
    /// Dump the roles only.
    #[arg(long)]
    pub role_only: bool,
    /// With --data-only: COPY statements instead of INSERTs.
    #[arg(long)]
    pub use_copy: bool,
    /// Write to this file instead of stdout.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Schemas to include (comma separated or repeated).
    #[arg(short = 's', long = "schema", value_delimiter = ',')]
    pub schema: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum MigrationCommand {
    /// Create `supabase/migrations/<timestamp>_<name>.sql`.
    New { name: String },
    /// Local migrations and the ones applied to the database.
    List,
    /// Apply pending migrations to the database.
    Up,
}

fn project_dir(cfg: &Config) -> PathBuf {
    cfg.project
        .as_deref()
        .and_then(locate)
        .unwrap_or_else(|| PathBuf::from("supabase"))
}

/// `migration new NAME`.
pub fn migration_new(cfg: &Config, name: &str) -> Result<String, String> {
    let dir = project_dir(cfg).join("migrations");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let path = dir.join(format!("{stamp}_{name}.sql"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok(format!("Created new migration at {}", path.display()))
}

/// A connection to the database of `cfg`: the external URL, a running oxibase's embedded
/// PostgreSQL, or this data directory's PostgreSQL started for the command.
pub async fn open_db(cfg: &Config) -> Result<(Client, Option<EmbeddedPg>), String> {
    let connect = |url: String| async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        tokio::spawn(conn);
        Ok::<_, String>(c)
    };
    if let Some(url) = &cfg.database_url {
        return Ok((connect(url.expose().clone()).await?, None));
    }
    let mut pg = EmbeddedPg::new(
        &cfg.data_dir,
        cfg.db_port,
        cfg.pg_bin_dir.as_deref(),
        cfg.db_fsync,
    )
    .map_err(|e| e.to_string())?;
    if let Ok(c) = connect(pg.superuser_url()).await {
        return Ok((c, None));
    }
    if !pg.is_initialized() {
        return Err(format!(
            "no database in {} yet: run `oxibase` (or `oxibase db reset`) first",
            cfg.data_dir.display()
        ));
    }
    pg.start().await.map_err(|e| e.to_string())?;
    let c = connect(pg.superuser_url()).await?;
    Ok((c, Some(pg)))
}

/// `migration list`: the CLI's table of local and applied versions.
pub async fn migration_list(cfg: &Config) -> Result<String, String> {
    let dir = project_dir(cfg);
    let (locals, _) = migrations::local(&dir.join("migrations"));
    let (client, mut pg) = open_db(cfg).await?;
    let applied = migrations::applied(&client).await;
    if let Some(pg) = pg.as_mut() {
        pg.stop().await;
    }
    let applied = applied?;
    let mut versions: Vec<String> = locals.iter().map(|m| m.version.clone()).collect();
    versions.extend(applied.iter().cloned());
    versions.sort();
    versions.dedup();
    let mut out = format!("  {:<14} | {:<14} | Time (UTC)\n", "Local", "Remote");
    out.push_str(&format!("  {:-<14}-|-{:-<14}-|-{:-<19}\n", "", "", ""));
    for v in versions {
        let local = if locals.iter().any(|m| m.version == v) {
            v.as_str()
        } else {
            ""
        };
        let remote = if applied.contains(&v) { v.as_str() } else { "" };
        let time = chrono::NaiveDateTime::parse_from_str(&v, "%Y%m%d%H%M%S")
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|_| v.clone());
        out.push_str(&format!("  {local:<14} | {remote:<14} | {time}\n"));
    }
    Ok(out)
}

/// `migration up`: apply pending migrations (the schema cache reloads on its own).
pub async fn migration_up(cfg: &Config) -> Result<String, String> {
    let dir = project_dir(cfg);
    let p = Project::open(&dir, &|k| std::env::var(k).ok())?;
    let (mut client, mut pg) = open_db(cfg).await?;
    let res = migrations::apply_pending(
        &mut client,
        &p.migrations_dir(),
        &format!("{}/migrations", p.shown()),
        &|l| eprintln!("{l}"),
    )
    .await;
    let _ = client.batch_execute("notify pgrst, 'reload schema'").await;
    if let Some(pg) = pg.as_mut() {
        pg.stop().await;
    }
    let applied = res?;
    Ok(if applied.is_empty() {
        "Local database is up to date.".into()
    } else {
        format!(
            "Applied {} migration(s). Local database is up to date.",
            applied.len()
        )
    })
}

/// `db reset`: remove the embedded database and stored objects; the caller then starts
/// oxibase's migration path, which recreates everything.
pub async fn reset_files(cfg: &Config) -> Result<Vec<String>, String> {
    if cfg.database_url.is_some() {
        return Err(
            "db reset recreates the embedded database; with database_url set, \
                    drop and recreate that database yourself"
                .into(),
        );
    }
    let url = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/postgres",
        cfg.db_port
    );
    if tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_ok()
    {
        return Err(format!(
            "a database is running on port {} (is oxibase running?); stop it before db reset",
            cfg.db_port
        ));
    }
    let mut said = vec![];
    for (dir, what) in [
        (cfg.data_dir.join("pg"), "database"),
        (cfg.storage_dir(), "stored objects"),
    ] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
            said.push(format!("Removed the {what} in {}", dir.display()));
        }
    }
    Ok(said)
}

/// `status`: whether a database answers, and the project's migrations against it.
pub async fn status(cfg: &Config, keys: &str) -> String {
    let mut out = String::new();
    match &cfg.project {
        Some(p) => out.push_str(&format!(
            "         Project: {}\n",
            locate(p).unwrap_or(p.clone()).display()
        )),
        None => out.push_str("         Project: (none: the demo app's schema)\n"),
    }
    let url = cfg.external_url();
    let api_up = reqwest_health(&url).await;
    out.push_str(&format!(
        "          Server: {}\n",
        if api_up {
            "running"
        } else {
            "not running (start it with `oxibase`)"
        }
    ));
    out.push_str(keys);
    out
}

async fn reqwest_health(base: &str) -> bool {
    let Some(hostport) = base.strip_prefix("http://") else {
        return false;
    };
    let hostport = hostport.split('/').next().unwrap_or_default().to_string();
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false)
}

/// The schemas Supabase manages, left out of a schema dump (as the CLI leaves them).
const MANAGED: &[&str] = &[
    "information_schema",
    "pg_*",
    "_analytics",
    "_realtime",
    "_supavisor",
    "auth",
    "etl",
    "extensions",
    "pgbouncer",
    "realtime",
    "storage",
    "supabase_functions",
    "supabase_migrations",
    "cron",
    "dbdev",
    "graphql",
    "graphql_public",
    "net",
    "pgmq",
    "pgsodium",
    "pgsodium_masks",
    "pgtle",
    "repack",
    "tiger",
    "tiger_data",
    "timescaledb_*",
    "_timescaledb_*",
    "topology",
    "vault",
    "oxibase",
];
/// Managed schemas whose rows a data dump keeps (auth and storage rows, for moving a project).
const DATA_KEPT: &[&str] = &[
    "auth",
    "storage",
    "supabase_functions",
    "cron",
    "dbdev",
    "net",
    "pgmq",
];

/// The schemas left out of a dump: all managed ones, less those whose rows a data dump keeps.
fn excluded_schemas(data_only: bool) -> impl Iterator<Item = &'static str> {
    MANAGED
        .iter()
        .copied()
        .filter(move |s| !(data_only && DATA_KEPT.contains(s)))
}
const RESERVED_ROLES: &[&str] = &[
    "anon",
    "authenticated",
    "authenticator",
    "dashboard_user",
    "pgbouncer",
    "postgres",
    "service_role",
    "pgsodium_keyholder",
    "pgsodium_keyiduser",
    "pgsodium_keymaker",
    "pgtle_admin",
];

fn pg_tool(cfg: &Config, name: &str) -> PathBuf {
    let dir = cfg
        .pg_bin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    dir.join(name)
}

/// `db dump`: run pg_dump (or pg_dumpall for roles) and tidy the output as the CLI does.
pub async fn dump(cfg: &Config, a: &DumpArgs) -> Result<String, String> {
    let (client, mut pg) = open_db(cfg).await?;
    drop(client);
    let url = match &cfg.database_url {
        Some(u) => u.expose().clone(),
        None => format!(
            "postgres://postgres:postgres@127.0.0.1:{}/postgres",
            cfg.db_port
        ),
    };
    let mut cmd;
    if a.role_only {
        cmd = tokio::process::Command::new(pg_tool(cfg, "pg_dumpall"));
        cmd.args([
            "--roles-only",
            "--quote-all-identifier",
            "--no-role-passwords",
            "--no-comments",
            "-d",
            &url,
        ]);
    } else {
        cmd = tokio::process::Command::new(pg_tool(cfg, "pg_dump"));
        cmd.arg(if a.data_only {
            "--data-only"
        } else {
            "--schema-only"
        });
        cmd.args(["--quote-all-identifier", "--no-owner", "-d", &url]);
        if a.schema.is_empty() {
            for s in excluded_schemas(a.data_only) {
                cmd.args(["--exclude-schema", s]);
            }
        } else {
            for s in &a.schema {
                cmd.args(["--schema", s]);
            }
        }
        if a.data_only && !a.use_copy {
            cmd.args(["--column-inserts", "--rows-per-insert", "100000"]);
        }
        if a.data_only {
            for t in [
                "auth.schema_migrations",
                "storage.migrations",
                "supabase_functions.migrations",
            ] {
                cmd.args(["--exclude-table", t]);
            }
        }
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run pg_dump: {e}"));
    if let Some(pg) = pg.as_mut() {
        pg.stop().await;
    }
    let out = out?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = tidy(&String::from_utf8_lossy(&out.stdout), a);
    match &a.file {
        Some(f) => {
            std::fs::write(f, &text).map_err(|e| format!("cannot write {}: {e}", f.display()))?;
            let what = if a.role_only {
                "roles"
            } else if a.data_only {
                "data"
            } else {
                "schema"
            };
            Ok(format!("Dumped {what} to {}.", f.display()))
        }
        None => {
            print!("{text}");
            Ok(String::new())
        }
    }
}

/// The CLI's edits: idempotent creates, reserved roles and Supabase-owned objects commented.
fn tidy(text: &str, a: &DumpArgs) -> String {
    let mut out = String::new();
    if a.data_only {
        out.push_str("SET session_replication_role = replica;\n\n");
    }
    let reserved = |l: &str| {
        RESERVED_ROLES.iter().any(|r| {
            l.starts_with(&format!("CREATE ROLE \"{r}\""))
                || l.starts_with(&format!("ALTER ROLE \"{r}\""))
        }) || l.starts_with("CREATE ROLE \"supabase_")
            || l.starts_with("ALTER ROLE \"supabase_")
    };
    for line in text.lines() {
        let l = if line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict")
            || reserved(line)
            || line.starts_with("CREATE PUBLICATION \"supabase_realtime")
            || line.starts_with("CREATE EVENT TRIGGER ")
            || line.starts_with("COMMENT ON EXTENSION ")
        {
            format!("-- {line}")
        } else if let Some(r) = line.strip_prefix("CREATE SCHEMA \"") {
            format!("CREATE SCHEMA IF NOT EXISTS \"{r}")
        } else if let Some(r) = line.strip_prefix("CREATE TABLE \"") {
            format!("CREATE TABLE IF NOT EXISTS \"{r}")
        } else if let Some(r) = line.strip_prefix("CREATE SEQUENCE \"") {
            format!("CREATE SEQUENCE IF NOT EXISTS \"{r}")
        } else if let Some(r) = line.strip_prefix("CREATE VIEW \"") {
            format!("CREATE OR REPLACE VIEW \"{r}")
        } else if let Some(r) = line.strip_prefix("CREATE FUNCTION \"") {
            format!("CREATE OR REPLACE FUNCTION \"{r}")
        } else if let Some(r) = line.strip_prefix("CREATE TRIGGER \"") {
            format!("CREATE OR REPLACE TRIGGER \"{r}")
        } else {
            line.to_string()
        };
        out.push_str(&l);
        out.push('\n');
    }
    if a.data_only || a.role_only {
        out.push_str("RESET ALL;\n");
    }
    out
}
