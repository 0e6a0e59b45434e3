//! `oxibase import`: move a project off Supabase. Restores what `supabase db dump`
//! writes (`--role-only`, the schema, `--data-only`, auth and storage rows included) with
//! psql as Supabase's migration guide does, then copies the objects the imported
//! `storage.objects` rows name from an S3-compatible source or a local folder.
//!
//! The copy writes each object's bytes under the version its row already has, so it can be
//! stopped and run again: an object whose bytes are there is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use tokio_postgres::Client;

use crate::storage::store::Store;
use crate::Config;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// `supabase db dump --role-only` output.
    #[arg(long)]
    pub roles: Option<PathBuf>,
    /// `supabase db dump` output (the schema).
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// `supabase db dump --data-only` output (INSERT or COPY).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where the objects are: a folder holding one folder per bucket, or
    /// `s3://` (each bucket read as an S3 bucket; AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, as Supabase's S3 connection shows them).
    #[arg(long)]
    pub objects_from: Option<String>,
}

pub fn psql_path(cfg: &Config) -> PathBuf {
    let dir = cfg.pg_bin_dir.clone().unwrap_or_else(|| {
        crate::db::embedded_pg::EmbeddedPg::new(&cfg.data_dir, cfg.db_port, None, false)
            .map(|p| p.bin_dir.clone())
            .unwrap_or_else(|_| PathBuf::from("/usr/lib/postgresql/15/bin"))
    });
    dir.join("psql")
}

/// `INSERT INTO "s"."t" ("a", "b") VALUES` and `COPY "s"."t" ("a", "b") FROM stdin;`
/// headers: the table and its columns.
pub fn data_targets(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let rest = match line
            .strip_prefix("INSERT INTO ")
            .or_else(|| line.strip_prefix("COPY "))
        {
            Some(r) => r,
            None => continue,
        };
        let Some((name, cols)) = rest.split_once(" (") else {
            continue;
        };
        let parts: Vec<String> = name
            .split("\".\"")
            .map(|p| p.trim_matches('"').to_string())
            .collect();
        if parts.len() != 2 {
            continue;
        }
        let Some(cols) = cols.split(')').next() else {
            continue;
        };
        let cols: Vec<String> = cols
            .split(", ")
            .map(|c| c.trim().trim_matches('"').to_string())
            .filter(|c| !c.is_empty())
            .collect();
        let entry = out.entry((parts[0].clone(), parts[1].clone())).or_default();
        for c in cols {
            if !entry.contains(&c) {
                entry.push(c);
            }
        }
    }
    out
}

/// Make room for every dumped row: a table or column oxibase does not have is added (as
/// text, unused by oxibase) so that nothing of the dump is lost. Returns what was added.
async fn make_room(
    client: &Client,
    targets: &BTreeMap<(String, String), Vec<String>>,
) -> Result<Vec<String>, String> {
    let e = |e: tokio_postgres::Error| crate::db::error_text(&e);
    let mut added = vec![];
    for ((schema, table), cols) in targets {
        let existing: Vec<String> = client
            .query(
                "select a.attname::text from pg_attribute a join pg_class c on c.oid = a.attrelid \
                 join pg_namespace n on n.oid = c.relnamespace \
                 where n.nspname = $1 and c.relname = $2 and a.attnum > 0 and not a.attisdropped",
                &[schema, table],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        if existing.is_empty() {
            let defs: Vec<String> = cols.iter().map(|c| format!("{} text", q(c))).collect();
            client
                .batch_execute(&format!(
                    "create schema if not exists {s}; create table if not exists {s}.{t} ({d})",
                    s = q(schema),
                    t = q(table),
                    d = defs.join(", ")
                ))
                .await
                .map_err(e)?;
            added.push(format!("table {schema}.{table}"));
            continue;
        }
        for c in cols.iter().filter(|c| !existing.contains(c)) {
            client
                .batch_execute(&format!(
                    "alter table {}.{} add column if not exists {} text",
                    q(schema),
                    q(table),
                    q(c)
                ))
                .await
                .map_err(e)?;
            added.push(format!("column {schema}.{table}.{c}"));
        }
    }
    Ok(added)
}

/// Run files through psql in one transaction, stopping at the first error (whose message
/// psql gives as `psql:FILE:LINE: ERROR: ...`).
async fn psql(cfg: &Config, url: &str, steps: &[PsqlStep]) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(psql_path(cfg));
    cmd.args([
        "--single-transaction",
        "--quiet",
        "--no-psqlrc",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
    ]);
    for s in steps {
        match s {
            PsqlStep::File(f) => cmd.arg("--file").arg(f),
            PsqlStep::Command(c) => cmd.arg("--command").arg(c),
        };
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

enum PsqlStep {
    File(PathBuf),
    Command(String),
}

/// Restore the dump files into the database at `url`.
pub async fn restore(
    cfg: &Config,
    client: &Client,
    url: &str,
    a: &ImportArgs,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let work = cfg.data_dir.join("import");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let mut steps = vec![];
    if let Some(r) = &a.roles {
        steps.push(PsqlStep::File(r.clone()));
    }
    if let Some(s) = &a.schema {
        let text = std::fs::read_to_string(s).map_err(|e| format!("{}: {e}", s.display()))?;
        let available: BTreeSet<String> = client
            .query("select name from pg_available_extensions", &[])
            .await
            .map_err(|e| crate::db::error_text(&e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (text, dropped) = super::migrations::skip_platform_extensions(&text, &available);
        if !dropped.is_empty() {
            say(&format!(
                "Skipping Supabase platform extensions oxibase does without: {}",
                dropped.join(", ")
            ));
        }
        let shown = s.display().to_string();
        if let Some(msg) =
            super::migrations::missing_extensions(client, &[(shown, text.clone())]).await?
        {
            return Err(msg);
        }
        // psql reads it as the postgres user may not: a copy in the data directory.
        let f = work.join(s.file_name().unwrap_or("schema.sql".as_ref()));
        std::fs::write(&f, text).map_err(|e| e.to_string())?;
        steps.push(PsqlStep::File(f));
    }
    if !steps.is_empty() {
        say("Restoring roles and schema...");
        psql(cfg, url, &steps).await?;
    }
    if let Some(d) = &a.data {
        let text = std::fs::read_to_string(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let added = make_room(client, &data_targets(&text)).await?;
        if !added.is_empty() {
            say(&format!(
                "Added what the dump has and oxibase does not use, so no row is lost: {}",
                added.join(", ")
            ));
        }
        say(&format!("Restoring data from {}...", d.display()));
        psql(
            cfg,
            url,
            &[
                PsqlStep::Command("SET session_replication_role = replica".into()),
                PsqlStep::File(d.clone()),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Where objects come from.
enum Source {
    Folder(PathBuf),
    S3,
}

impl Source {
    fn parse(s: &str) -> Source {
        if s.starts_with("s3://") {
            Source::S3
        } else {
            Source::Folder(PathBuf::from(s))
        }
    }

    fn store_for(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        match self {
            Source::Folder(dir) => {
                let d = dir.join(bucket);
                Ok(Arc::new(
                    LocalFileSystem::new_with_prefix(&d)
                        .map_err(|e| format!("{}: {e}", d.display()))?,
                ))
            }
            Source::S3 => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL") {
                    b = b
                        .with_endpoint(ep)
                        .with_allow_http(true)
                        .with_virtual_hosted_style_request(false);
                }
                if std::env::var("AWS_REGION").is_err()
                    && std::env::var("AWS_DEFAULT_REGION").is_err()
                {
                    b = b.with_region("us-east-1");
                }
                Ok(Arc::new(b.build().map_err(|e| format!("s3 source: {e}"))?))
            }
        }
    }
}

/// What a copy did.
#[derive(Debug, Default, PartialEq)]
pub struct CopyReport {
    pub copied: usize,
    pub already: usize,
    pub missing: Vec<String>,
}

/// Copy the bytes of every `storage.objects` row from `from` into this oxibase's store.
pub async fn copy_objects(
    cfg: &Config,
    client: &Client,
    from: &str,
    say: &dyn Fn(&str),
) -> Result<CopyReport, String> {
    let source = Source::parse(from);
    let store = Store::open(cfg)?;
    let rows = client
        .query(
            "select id, bucket_id, name, version from storage.objects order by bucket_id, name",
            &[],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let total = rows.len();
    let mut report = CopyReport::default();
    let mut sources: BTreeMap<String, Arc<dyn ObjectStore>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        let (id, bucket, name): (uuid::Uuid, String, String) = (r.get(0), r.get(1), r.get(2));
        let version: Option<String> = r.get(3);
        let version = match version.filter(|v| uuid::Uuid::parse_str(v).is_ok()) {
            Some(v) => v,
            None => {
                let v = uuid::Uuid::new_v4().to_string();
                client
                    .execute(
                        "update storage.objects set version = $1 where id = $2",
                        &[&v, &id],
                    )
                    .await
                    .map_err(|e| crate::db::error_text(&e))?;
                v
            }
        };
        let key = Store::object_key(&version);
        if store.size(&key).await.is_ok() {
            report.already += 1;
            continue;
        }
        if !sources.contains_key(&bucket) {
            sources.insert(bucket.clone(), source.store_for(&bucket)?);
        }
        let src = &sources[&bucket];
        let got = match src.get(&ObjPath::from(name.as_str())).await {
            Ok(g) => g.bytes().await,
            Err(e) => Err(e),
        };
        match got {
            Ok(bytes) => {
                let n = bytes.len();
                store
                    .put_bytes(&key, bytes)
                    .await
                    .map_err(|e| format!("cannot store {bucket}/{name}: {e:?}"))?;
                report.copied += 1;
                say(&format!("[{}/{total}] {bucket}/{name} ({n} bytes)", i + 1));
            }
            Err(object_store::Error::NotFound { .. }) => {
                report.missing.push(format!("{bucket}/{name}"));
                say(&format!(
                    "[{}/{total}] {bucket}/{name}: not in the source",
                    i + 1
                ));
            }
            Err(e) => return Err(format!("{bucket}/{name}: {e}")),
        }
    }
    say(&format!(
        "Objects: {} copied, {} already here, {} not in the source.",
        report.copied,
        report.already,
        report.missing.len()
    ));
    Ok(report)
}

/// The whole `oxibase import`: start (or create) the database without the demo app,
/// restore the dump, copy the objects, stop.
pub async fn run(mut cfg: Config, a: &ImportArgs) -> Result<String, String> {
    cfg.port = 0;
    cfg.bind = vec!["127.0.0.1".into()];
    cfg.app_schema = false;
    let say = |l: &str| eprintln!("{l}");
    let server = crate::Server::start(cfg.clone(), Arc::new(|l: &str| eprintln!("{l}")))
        .await
        .map_err(|e| e.to_string())?;
    let url = server.db_url.clone();
    let result = async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        tokio::spawn(conn);
        restore(&cfg, &client, &url, a, &say).await?;
        if let Some(from) = &a.objects_from {
            let r = copy_objects(&cfg, &client, from, &say).await?;
            if !r.missing.is_empty() {
                return Err(format!(
                    "{} object(s) were not found in {from}; run the import again once they are \
                     there (copied objects are kept)",
                    r.missing.len()
                ));
            }
        }
        Ok::<_, String>("Finished oxibase import.".to_string())
    }
    .await;
    server.shutdown().await;
    result
}
