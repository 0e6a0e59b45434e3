//! Bring your own Supabase project: a `supabase/` folder runs unchanged.
//!
//! Its `config.toml` maps onto oxibase's settings ([`config_toml`]), layered under
//! oxibase's own file, environment and flags; at start its `migrations/` are applied in
//! order ([`migrations`]), the seed runs once ([`seed`]) and the declared buckets are made
//! (their `objects_path` files uploaded, [`objects`]). With a project, oxibase's own demo
//! app tables are not installed. [`commands`] holds the CLI's local workflow.

pub mod commands;
pub mod config_toml;
pub mod import;
pub mod migrations;
pub mod objects;
pub mod seed;
pub mod sql_text;

use std::path::{Path, PathBuf};

use tokio_postgres::Client;
use toml::{Table, Value};

use crate::Config;

/// The `supabase/` folder of `dir`: `dir/supabase` when it looks like one, else `dir`
/// itself when it does (a `config.toml` or a `migrations/`).
pub fn locate(dir: &Path) -> Option<PathBuf> {
    let looks = |d: &Path| d.join("config.toml").is_file() || d.join("migrations").is_dir();
    let inner = dir.join("supabase");
    if looks(&inner) {
        Some(inner)
    } else if looks(dir) {
        Some(dir.to_path_buf())
    } else {
        None
    }
}

/// A project's `supabase/` folder and its parsed `config.toml` (empty when absent).
pub struct Project {
    /// The `supabase/` folder.
    pub dir: PathBuf,
    /// Its parent: paths are shown and recorded relative to it, as the CLI does.
    pub root: PathBuf,
    pub file: Table,
}

/// A bucket declared as `[storage.buckets.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub name: String,
    pub public: bool,
    pub file_size_limit: Option<i64>,
    pub allowed_mime_types: Option<Vec<String>>,
    pub objects_path: Option<PathBuf>,
}

impl Project {
    pub fn open(dir: &Path, var: &dyn Fn(&str) -> Option<String>) -> Result<Project, String> {
        let path = dir.join("config.toml");
        let file = if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            config_toml::parse(&text, var).map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            Table::new()
        };
        let root = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Project {
            dir: dir.to_path_buf(),
            root,
            file,
        })
    }

    fn get(&self, path: &str) -> Option<&Value> {
        let mut v: Option<&Value> = None;
        for (i, p) in path.split('.').enumerate() {
            v = if i == 0 {
                self.file.get(p)
            } else {
                v?.as_table()?.get(p)
            };
        }
        v
    }

    fn flag(&self, path: &str, default: bool) -> bool {
        self.get(path).and_then(Value::as_bool).unwrap_or(default)
    }

    /// The folder as the CLI shows it (`supabase`, or the path given).
    pub fn shown(&self) -> String {
        let name = self
            .dir
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        if self.root.as_os_str().is_empty() || self.root == Path::new(".") {
            name
        } else {
            self.dir.display().to_string()
        }
    }

    pub fn migrations_dir(&self) -> PathBuf {
        self.dir.join("migrations")
    }

    pub fn seed_files(&self) -> Vec<PathBuf> {
        if !self.flag("db.seed.enabled", true) {
            return vec![];
        }
        let paths: Vec<String> = match self.get("db.seed.sql_paths").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            None => vec!["./seed.sql".into()],
        };
        seed::files(&self.dir, &paths)
    }

    pub fn buckets(&self) -> Result<Vec<Bucket>, String> {
        let Some(t) = self.get("storage.buckets").and_then(Value::as_table) else {
            return Ok(vec![]);
        };
        let mut out = vec![];
        for (name, v) in t {
            let b = v.as_table().cloned().unwrap_or_default();
            let limit = match b.get("file_size_limit") {
                Some(v) => Some(
                    config_toml::size(v)
                        .map_err(|e| format!("storage.buckets.{name}.file_size_limit: {e}"))?,
                ),
                None => None,
            };
            out.push(Bucket {
                name: name.clone(),
                public: b.get("public").and_then(Value::as_bool).unwrap_or(false),
                file_size_limit: limit.filter(|n| *n > 0),
                allowed_mime_types: b.get("allowed_mime_types").and_then(|a| {
                    a.as_array().map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                }),
                objects_path: b
                    .get("objects_path")
                    .and_then(Value::as_str)
                    .map(|p| self.dir.join(p.trim_start_matches("./"))),
            });
        }
        Ok(out)
    }
}

/// The project layer of the configuration: its mapped settings as a table in oxibase's
/// shape (with `project` and `app_schema = false`), and the notes on keys not acted on.
pub fn settings_layer(
    dir: &Path,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(Table, Vec<String>), String> {
    let p = Project::open(dir, var)?;
    let mapped = config_toml::map(&p.file);
    let mut t = mapped.table;
    t.insert(
        "project".into(),
        Value::String(dir.to_string_lossy().to_string()),
    );
    t.insert("app_schema".into(), Value::Boolean(false));
    Ok((t, mapped.notes))
}

/// At start: name the keys not acted on, apply pending migrations, run the seed once,
/// make the declared buckets and upload their `objects_path` files.
pub async fn apply(
    client: &mut Client,
    cfg: &Config,
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    let Some(named) = &cfg.project else {
        return Ok(());
    };
    let dir = locate(named).unwrap_or_else(|| named.clone());
    let p = Project::open(&dir, &|k| std::env::var(k).ok())?;
    let notes = config_toml::map(&p.file).notes;
    if !notes.is_empty() {
        progress(&format!(
            "{}/config.toml: {} setting(s) not used by oxibase:\n  {}",
            p.shown(),
            notes.len(),
            notes.join("\n  ")
        ));
    }
    // Replicas of one deployment start together on one database: one at a time, so each
    // migration and seed file runs once (the others then find it recorded).
    client
        .batch_execute(&format!("select pg_advisory_lock({START_LOCK})"))
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let r = apply_locked(client, cfg, &p, progress).await;
    let _ = client
        .batch_execute(&format!("select pg_advisory_unlock({START_LOCK})"))
        .await;
    r
}

/// The session advisory lock held while a project is applied at start.
const START_LOCK: i64 = 7391027;

async fn apply_locked(
    client: &mut Client,
    cfg: &Config,
    p: &Project,
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    if p.flag("db.migrations.enabled", true) {
        migrations::apply_pending(
            client,
            &p.migrations_dir(),
            &format!("{}/migrations", p.shown()),
            progress,
        )
        .await?;
    }
    seed::apply(client, &p.root, &p.seed_files(), progress).await?;
    let buckets = p.buckets()?;
    for b in &buckets {
        upsert_bucket(client, b).await?;
    }
    objects::upload_bucket_folders(client, cfg, &buckets, progress).await?;
    Ok(())
}

/// Create or update a declared bucket, as the CLI's `seed buckets` does.
pub async fn upsert_bucket(client: &Client, b: &Bucket) -> Result<(), String> {
    client
        .execute(
            "insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types) \
             values ($1, $1, $2, $3, $4) on conflict (id) do update set \
             public = excluded.public, file_size_limit = excluded.file_size_limit, \
             allowed_mime_types = excluded.allowed_mime_types, updated_at = now()",
            &[
                &b.name,
                &b.public,
                &b.file_size_limit,
                &b.allowed_mime_types,
            ],
        )
        .await
        .map_err(|e| format!("bucket {}: {}", b.name, crate::db::error_text(&e)))?;
    Ok(())
}
