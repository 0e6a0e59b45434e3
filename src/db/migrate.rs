//! Migrations embedded from `sql/`, applied in order, each in its own transaction, and
//! recorded with a checksum in `oxibase.schema_migrations`. An advisory lock lets several
//! oxibase processes start against one database at once.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    /// Part of the AI chat app's schema rather than the Supabase platform: skipped when
    /// `app_schema = false` (e.g. to load another project's SQL, like the official suites').
    pub app: bool,
}

macro_rules! migration {
    ($v:expr, $file:literal, app) => {
        Migration {
            version: $v,
            name: $file,
            sql: include_str!(concat!("../../sql/", $file)),
            app: true,
        }
    };
    ($v:expr, $file:literal) => {
        Migration {
            version: $v,
            name: $file,
            sql: include_str!(concat!("../../sql/", $file)),
            app: false,
        }
    };
}

/// Every migration, in order. Add new files at the end; never edit an applied one.
pub static MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_supabase_base.sql"),
    migration!(2, "0002_app_schema.sql", app),
    migration!(100, "0100_auth.sql"),
    migration!(101, "0101_auth_mfa.sql"),
    migration!(102, "0102_auth_oauth_clients.sql"),
    migration!(103, "0103_auth_passkeys.sql"),
    migration!(104, "0104_auth_audit.sql"),
    migration!(200, "0200_storage_resumable.sql"),
    migration!(300, "0300_rest.sql"),
    migration!(400, "0400_realtime.sql"),
    migration!(401, "0401_realtime_broadcast_from_db.sql"),
    migration!(550, "0550_functions_ws.sql", app),
    migration!(560, "0560_app_references.sql", app),
    migration!(570, "0570_realtime_rls_check.sql"),
    migration!(571, "0571_realtime_rls_check_many.sql"),
    migration!(600, "0600_pg_net.sql"),
    migration!(601, "0601_realtime_drop_single_rls_check.sql"),
    migration!(602, "0602_realtime_rls_check_by_index.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration history is corrupt: {0}")]
    Corrupt(String),
    #[error("migration {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("database error while migrating: {0}")]
    Db(String),
}

fn checksum(sql: &str) -> String {
    hex(&Sha256::digest(sql.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn db_err(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Db(crate::db::error_text(&e))
}

/// Apply what is missing; returns the names applied now. `progress` hears about each one.
pub async fn run(
    client: &mut Client,
    include_app: bool,
    progress: &dyn Fn(&str),
) -> Result<Vec<&'static str>, MigrateError> {
    client
        .batch_execute(
            "select pg_advisory_lock(7391026);
             create schema if not exists oxibase;
             create table if not exists oxibase.schema_migrations (
               version int primary key, name text not null, checksum text not null,
               applied_at timestamptz not null default now());",
        )
        .await
        .map_err(db_err)?;
    let result = apply(client, include_app, progress).await;
    let _ = client
        .batch_execute("select pg_advisory_unlock(7391026)")
        .await;
    result
}

async fn apply(
    client: &mut Client,
    include_app: bool,
    progress: &dyn Fn(&str),
) -> Result<Vec<&'static str>, MigrateError> {
    let rows = client
        .query(
            "select version, name, checksum from oxibase.schema_migrations order by version",
            &[],
        )
        .await
        .map_err(db_err)?;
    for row in &rows {
        let (v, name, sum): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        match MIGRATIONS.iter().find(|m| m.version == v) {
            None => {
                return Err(MigrateError::Corrupt(format!(
                    "the database has migration {v} ({name}), which this oxibase does not know; \
                     is it an older binary than the one that created the database?"
                )))
            }
            Some(m) if checksum(m.sql) != sum => {
                return Err(MigrateError::Corrupt(format!(
                    "migration {} was changed after it was applied (checksum {} in the database, \
                     {} in this binary)",
                    m.name,
                    &sum[..12.min(sum.len())],
                    &checksum(m.sql)[..12]
                )))
            }
            Some(_) => {}
        }
    }
    let mut applied = vec![];
    for m in MIGRATIONS {
        if rows.iter().any(|r| r.get::<_, i32>(0) == m.version) || (m.app && !include_app) {
            continue;
        }
        progress(m.name);
        let tx = client.transaction().await.map_err(db_err)?;
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| MigrateError::Failed {
                name: m.name.into(),
                message: crate::db::error_text(&e),
            })?;
        tx.execute(
            "insert into oxibase.schema_migrations (version, name, checksum) values ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        applied.push(m.name);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_unique() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        for m in MIGRATIONS {
            assert!(
                m.name.starts_with(&format!("{:04}", m.version)),
                "{} vs {}",
                m.name,
                m.version
            );
        }
    }
}
