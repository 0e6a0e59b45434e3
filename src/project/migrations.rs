//! `supabase/migrations/<version>_<name>.sql`, applied in order, one transaction per file,
//! recorded in `supabase_migrations.schema_migrations (version, name, statements)` as the
//! Supabase CLI records them, so a database moves between the two tools.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tokio_postgres::error::ErrorPosition;
use tokio_postgres::Client;

use super::sql_text::{self, created_extensions, line_of_position};

/// The CLI's history table, as its own statements create it.
pub const CREATE_HISTORY: &str = "set client_min_messages = warning;
set lock_timeout = '4s';
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (version text not null primary key);
alter table supabase_migrations.schema_migrations add column if not exists statements text[];
alter table supabase_migrations.schema_migrations add column if not exists name text;
reset lock_timeout;";

/// A local migration file.
#[derive(Debug, Clone)]
pub struct LocalMigration {
    pub version: String,
    pub name: String,
    pub path: PathBuf,
}

/// The files of `dir` named `<digits>_<name>.sql`, by file name; the others are returned
/// apart as skipped (the CLI's "file name must match pattern").
pub fn local(dir: &Path) -> (Vec<LocalMigration>, Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let (mut out, mut skipped) = (vec![], vec![]);
    for f in names {
        let parsed = f.strip_suffix(".sql").and_then(|stem| {
            let (v, n) = stem.split_once('_')?;
            (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then_some((v, n))
        });
        match parsed {
            Some((v, n)) => out.push(LocalMigration {
                version: v.into(),
                name: n.into(),
                path: dir.join(&f),
            }),
            None => skipped.push(f),
        }
    }
    (out, skipped)
}

/// Versions recorded in the database (none when the table does not exist yet).
pub async fn applied(client: &Client) -> Result<BTreeSet<String>, String> {
    let exists: bool = client
        .query_one(
            "select to_regclass('supabase_migrations.schema_migrations') is not null",
            &[],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?
        .get(0);
    if !exists {
        return Ok(BTreeSet::new());
    }
    let rows = client
        .query(
            "select version from supabase_migrations.schema_migrations order by version",
            &[],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The Debian package that brings an extension to PostgreSQL 15, where there is one.
pub fn debian_package(ext: &str) -> Option<&'static str> {
    Some(match ext {
        "postgis"
        | "postgis_raster"
        | "postgis_topology"
        | "postgis_tiger_geocoder"
        | "address_standardizer"
        | "address_standardizer_data_us" => "postgresql-15-postgis-3",
        "pg_cron" => "postgresql-15-cron",
        "pgtap" => "postgresql-15-pgtap",
        "hypopg" => "postgresql-15-hypopg",
        "plpgsql_check" => "postgresql-15-plpgsql-check",
        "pgaudit" => "postgresql-15-pgaudit",
        "rum" => "postgresql-15-rum",
        "pgrouting" => "postgresql-15-pgrouting",
        "pg_repack" => "postgresql-15-repack",
        "pg_partman" => "postgresql-15-partman",
        "orafce" => "postgresql-15-orafce",
        "wal2json" => "postgresql-15-wal2json",
        _ => return None,
    })
}

/// Extensions every Supabase database already has, which `supabase db pull` and
/// `supabase db dump` write as `CREATE EXTENSION IF NOT EXISTS` (a no-op there).
pub const PLATFORM_EXTENSIONS: &[&str] = &[
    "pg_graphql",
    "pgsodium",
    "supabase_vault",
    "pgjwt",
    "pg_net",
];

/// Comment out `create extension if not exists` lines of platform extensions that this
/// PostgreSQL lacks (line numbers are kept); returns the text and the names skipped.
pub fn skip_platform_extensions(sql: &str, available: &BTreeSet<String>) -> (String, Vec<String>) {
    let mut skipped = vec![];
    let mut out = String::with_capacity(sql.len() + 64);
    for line in sql.split_inclusive('\n') {
        let lower = line.trim_start().to_ascii_lowercase();
        let name = lower
            .strip_prefix("create extension if not exists ")
            .and_then(|r| r.split_whitespace().next())
            .map(|n| n.trim_end_matches(';').trim_matches('"').to_string());
        match name {
            Some(n) if PLATFORM_EXTENSIONS.contains(&n.as_str()) && !available.contains(&n) => {
                skipped.push(n);
                out.push_str("-- ");
            }
            _ => {}
        }
        out.push_str(line);
    }
    (out, skipped)
}

/// The extensions this PostgreSQL can create.
pub async fn available_extensions(client: &Client) -> Result<BTreeSet<String>, String> {
    let rows = client
        .query("select name from pg_available_extensions", &[])
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every `create extension` of the files whose extension this PostgreSQL does not have,
/// as one message naming each (file, line, package); None when all are available.
pub async fn missing_extensions(
    client: &Client,
    files: &[(String, String)],
) -> Result<Option<String>, String> {
    let available = available_extensions(client).await?;
    let mut lines = vec![];
    for (file, sql) in files {
        for (ext, line) in created_extensions(sql) {
            if available.contains(&ext) {
                continue;
            }
            let how = match debian_package(&ext) {
                Some(p) => format!("apt-get install {p}"),
                None => "no Debian package for PostgreSQL 15; see docs/extensions.md".into(),
            };
            lines.push(format!("  {ext} ({file}:{line}): {how}"));
        }
    }
    Ok((!lines.is_empty()).then(|| {
        format!(
            "these extensions are not available in this PostgreSQL, so no migration was \
             applied:\n{}",
            lines.join("\n")
        )
    }))
}

/// Run one file's SQL in a transaction; `record` adds the history row in it. A failure
/// names the file and the line of the failing statement and leaves nothing applied.
pub async fn run_file(
    client: &mut Client,
    shown: &str,
    sql: &str,
    record: Option<(&str, &str, Vec<String>)>,
) -> Result<(), String> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    if let Err(e) = tx.batch_execute(sql).await {
        let position = e.as_db_error().and_then(|d| match d.position() {
            Some(ErrorPosition::Original(p)) => Some(*p),
            _ => None,
        });
        drop(tx);
        let line = match position {
            Some(p) => Some(line_of_position(sql, p)),
            None => failing_statement_line(client, sql).await,
        };
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        let mut msg = format!("{shown}{at}: {}", crate::db::error_text(&e));
        if let Some(detail) = e.as_db_error().and_then(|d| d.detail()) {
            msg.push_str(&format!("\n{detail}"));
        }
        if let Some(l) = line {
            let context = sql_text::show_failure(sql, l, position);
            if !context.is_empty() {
                msg.push_str(&format!("\n{context}"));
            }
        }
        return Err(msg);
    }
    if let Some((version, name, statements)) = record {
        tx.execute(
            "insert into supabase_migrations.schema_migrations (version, name, statements) \
             values ($1, $2, $3)",
            &[&version, &name, &statements],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    }
    tx.commit().await.map_err(|e| crate::db::error_text(&e))
}

/// The error carried no position in the file: replay the statements one by one in a
/// transaction that is rolled back, and give the line of the first that fails.
async fn failing_statement_line(client: &mut Client, sql: &str) -> Option<usize> {
    let tx = client.transaction().await.ok()?;
    for st in sql_text::split(sql) {
        if let Err(e) = tx.batch_execute(&st.text).await {
            let within = e.as_db_error().and_then(|d| match d.position() {
                Some(ErrorPosition::Original(p)) => Some(line_of_position(&st.text, *p) - 1),
                _ => None,
            });
            return Some(st.line + within.unwrap_or(0));
        }
    }
    None
}

/// Apply the pending migrations of `dir` in order; returns the file names applied.
pub async fn apply_pending(
    client: &mut Client,
    dir: &Path,
    shown_dir: &str,
    progress: &dyn Fn(&str),
) -> Result<Vec<String>, String> {
    let (locals, skipped) = local(dir);
    for f in skipped {
        progress(&format!(
            "Skipping migration {f}... (file name must match pattern \"<timestamp>_name.sql\")"
        ));
    }
    client.batch_execute(CREATE_HISTORY).await.map_err(|e| {
        format!(
            "failed to create migration table: {}",
            crate::db::error_text(&e)
        )
    })?;
    let done = applied(client).await?;
    let available = available_extensions(client).await?;
    let mut pending = vec![];
    for m in locals.into_iter().filter(|m| !done.contains(&m.version)) {
        let original = std::fs::read_to_string(&m.path)
            .map_err(|e| format!("cannot read {}: {e}", m.path.display()))?;
        let (sql, skipped) = skip_platform_extensions(&original, &available);
        if !skipped.is_empty() {
            progress(&format!(
                "{}: skipping `create extension if not exists` of {} (Supabase's own, \
                 not available here; see docs/extensions.md)",
                file_name(&m.path),
                skipped.join(", ")
            ));
        }
        pending.push((m, sql, statements_of(&original)));
    }
    let texts: Vec<(String, String)> = pending
        .iter()
        .map(|(m, sql, _)| (file_label(shown_dir, &m.path), sql.clone()))
        .collect();
    if let Some(msg) = missing_extensions(client, &texts).await? {
        return Err(msg);
    }
    let mut out = vec![];
    for ((m, sql, statements), (label, _)) in pending.into_iter().zip(&texts) {
        progress(&format!("Applying migration {}...", file_name(&m.path)));
        run_file(client, label, &sql, Some((&m.version, &m.name, statements))).await?;
        out.push(file_name(&m.path));
    }
    Ok(out)
}

/// A file's statements as the CLI records them.
pub fn statements_of(sql: &str) -> Vec<String> {
    sql_text::split(sql).into_iter().map(|s| s.text).collect()
}

pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn file_label(shown_dir: &str, p: &Path) -> String {
    format!("{shown_dir}/{}", file_name(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_extensions_are_skipped_only_when_missing_and_if_not_exists() {
        let sql = "CREATE EXTENSION IF NOT EXISTS \"pg_graphql\" WITH SCHEMA \"graphql\";\n\
                   create extension if not exists pgjwt;\ncreate extension pg_net;\n\
                   CREATE EXTENSION IF NOT EXISTS \"pgcrypto\";\n";
        let available: BTreeSet<String> = ["pgjwt".to_string(), "pgcrypto".into()].into();
        let (out, skipped) = skip_platform_extensions(sql, &available);
        assert_eq!(skipped, vec!["pg_graphql".to_string()]);
        assert_eq!(out.lines().count(), sql.lines().count());
        assert!(out.starts_with("-- CREATE EXTENSION IF NOT EXISTS \"pg_graphql\""));
        assert!(
            out.contains("\ncreate extension pg_net;"),
            "a plain create stays: {out}"
        );
        assert_eq!(created_extensions(&out).len(), 3);
    }
}
