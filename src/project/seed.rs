//! `[db.seed]`: the seed files (`sql_paths`, globs relative to `supabase/`, default
//! `./seed.sql`) run once each, recorded in `supabase_migrations.seed_files (path, hash)`
//! as the Supabase CLI records them; a changed file only has its hash updated, as the CLI
//! does on a later `supabase start`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::migrations::run_file;

/// The seed files in order: each glob's matches sorted, without repeats.
pub fn files(supabase_dir: &Path, sql_paths: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = vec![];
    for pat in sql_paths {
        let full = supabase_dir.join(pat.trim_start_matches("./"));
        let mut found: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
            .map(|g| g.filter_map(Result::ok).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        found.sort();
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out
}

/// Run the seed files not yet recorded; returns the ones run.
pub async fn apply(
    client: &mut Client,
    root: &Path,
    files: &[PathBuf],
    progress: &dyn Fn(&str),
) -> Result<Vec<String>, String> {
    if files.is_empty() {
        return Ok(vec![]);
    }
    client
        .batch_execute(
            "create schema if not exists supabase_migrations;
             create table if not exists supabase_migrations.seed_files \
             (path text not null primary key, hash text not null);",
        )
        .await
        .map_err(|e| format!("failed to create seed table: {}", crate::db::error_text(&e)))?;
    let rows = client
        .query("select path, hash from supabase_migrations.seed_files", &[])
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let known: BTreeMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut ran = vec![];
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap_or(f)
            .to_string_lossy()
            .to_string();
        let sql =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let hash = crate::db::migrate::hex(&Sha256::digest(sql.as_bytes()));
        match known.get(&rel) {
            Some(h) if *h == hash => continue,
            Some(_) => progress(&format!("Updating seed hash to {rel}...")),
            None => {
                progress(&format!("Seeding data from {rel}..."));
                run_file(client, &rel, &sql, None).await?;
                ran.push(rel.clone());
            }
        }
        client
            .execute(
                "insert into supabase_migrations.seed_files (path, hash) values ($1, $2) \
                 on conflict (path) do update set hash = excluded.hash",
                &[&rel, &hash],
            )
            .await
            .map_err(|e| crate::db::error_text(&e))?;
    }
    Ok(ran)
}
