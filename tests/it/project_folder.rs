//! A Supabase project folder runs unchanged: config.toml mapped, migrations recorded as the
//! CLI records them, the seed run once, declared buckets made with their files; a failing
//! migration names its file and line and leaves nothing behind.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{shared_pg, Client, ANON_KEY};
use oxibase::config::{AuthRateLimits, Secret, ServeArgs};
use oxibase::{Config, Server};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/projects/notes")
}

/// A fresh, empty database of the shared cluster (no template with the demo app).
async fn fresh_db() -> String {
    let port = shared_pg().port;
    let name = format!("p_{}", uuid::Uuid::new_v4().simple());
    let admin = format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres");
    let (c, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!("create database {name} template template0"))
        .await
        .unwrap();
    format!("postgres://postgres:postgres@127.0.0.1:{port}/{name}")
}

/// First starts of fresh databases run oxibase's own migrations, whose grants on the
/// cluster's shared roles must not run concurrently: one at a time.
static FIRST_START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(cfg: Config, progress: oxibase::Progress) -> Result<Server, oxibase::StartError> {
    let _one = FIRST_START.lock().await;
    Server::start(cfg, progress).await
}

fn project_config(project: &Path, db_url: &str, data_dir: &Path) -> Config {
    let args = ServeArgs {
        project: Some(project.to_path_buf()),
        ..ServeArgs::default()
    };
    let var = |k: &str| (k == "NOTES_SITE_URL").then(|| "https://notes.test".to_string());
    let mut cfg = Config::from_layers_in(None, &args, &var, None).expect("config loads");
    cfg.port = 0;
    cfg.bind = vec!["127.0.0.1".into()];
    cfg.data_dir = data_dir.to_path_buf();
    cfg.database_url = Some(Secret(db_url.to_string()));
    cfg.db_pool_size = 4;
    cfg.auth.rate_limit = AuthRateLimits::generous();
    cfg
}

async fn sql(db: &str, q: &str) -> Vec<tokio_postgres::Row> {
    let (c, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query(q, &[]).await.unwrap()
}

fn collect_lines() -> (oxibase::Progress, Arc<std::sync::Mutex<Vec<String>>>) {
    let lines = Arc::new(std::sync::Mutex::new(vec![]));
    let l2 = lines.clone();
    (
        Arc::new(move |s: &str| l2.lock().unwrap().push(s.to_string())),
        lines,
    )
}

#[test]
fn config_toml_maps_onto_settings() {
    let args = ServeArgs {
        project: Some(fixture()),
        ..ServeArgs::default()
    };
    let var = |k: &str| (k == "NOTES_SITE_URL").then(|| "https://notes.test".to_string());
    let cfg = Config::from_layers_in(None, &args, &var, None).unwrap();
    assert!(cfg.auth.disable_signup);
    assert!(!cfg.auth.anonymous_sign_ins);
    assert_eq!(cfg.auth.site_url, "https://notes.test");
    assert_eq!(cfg.auth.minimum_password_length, 8);
    assert_eq!(cfg.auth.rate_limit.email_sent, Some(10));
    assert_eq!(cfg.rest.max_rows, Some(1000));
    assert_eq!(cfg.storage.file_size_limit, 50 * 1024 * 1024);
    assert!(
        !cfg.app_schema,
        "a project does not get the demo app's tables"
    );
    assert!(cfg.project.is_some());
    // Without a project nothing changes.
    let plain = Config::from_layers_in(None, &ServeArgs::default(), &|_| None, None).unwrap();
    assert!(plain.app_schema && plain.project.is_none() && !plain.auth.disable_signup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_applies_and_serves() {
    let db = fresh_db().await;
    let data = tempfile::tempdir().unwrap();
    let cfg = project_config(&fixture(), &db, data.path());
    let (progress, lines) = collect_lines();
    let server = start(cfg.clone(), progress).await.expect("starts");
    let url = format!("http://127.0.0.1:{}", server.port());
    let said = lines.lock().unwrap().join("\n");
    assert!(
        said.contains("Applying migration 20240101000000_init.sql"),
        "{said}"
    );
    assert!(
        said.contains("Seeding data from supabase/seed.sql"),
        "{said}"
    );
    assert!(
        said.contains("auth.email.otp_length"),
        "unused keys are named: {said}"
    );

    // History as the CLI writes it.
    let rows = sql(&db, "select version, name, array_length(statements, 1) from supabase_migrations.schema_migrations order by 1").await;
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("20240101000000".into(), "init".into()),
            ("20240102000000".into(), "views_rpc_realtime".into())
        ]
    );
    assert!(rows[0].get::<_, i32>(2) >= 10);
    // The demo app's tables are not there; the project's are.
    let r = sql(&db, "select to_regclass('public.conversations') is null, (select count(*) from public.profiles), (select count(*) from supabase_migrations.seed_files)").await;
    assert!(r[0].get::<_, bool>(0));
    assert_eq!(
        r[0].get::<_, i64>(1),
        1,
        "the auth trigger made the profile"
    );
    assert_eq!(r[0].get::<_, i64>(2), 1);

    let p = sql(&db, "select count(*) from pg_publication_tables where pubname = 'supabase_realtime' and tablename = 'notes'").await;
    assert_eq!(
        p[0].get::<_, i64>(0),
        1,
        "the realtime publication has the table"
    );

    // The declared bucket with its limits, and its folder's file.
    let b = sql(&db, "select public, file_size_limit, allowed_mime_types from storage.buckets where id = 'avatars'").await;
    assert!(b[0].get::<_, bool>(0));
    assert_eq!(b[0].get::<_, Option<i64>>(1), Some(1024 * 1024));
    assert_eq!(b[0].get::<_, Vec<String>>(2).len(), 3);
    let http = Client::new();
    let obj = http
        .get(
            &format!("{url}/storage/v1/object/public/avatars/defaults/hello.txt"),
            &[],
        )
        .await;
    assert_eq!(obj.status, 200, "{}", obj.text());
    assert_eq!(obj.text(), "hello from the avatars folder\n");

    // REST, a view, an RPC with an enum argument, RLS as anon.
    let h = [("apikey", ANON_KEY), ("content-type", "application/json")];
    let notes = http
        .get(
            &format!("{url}/rest/v1/notes?select=title,status,place"),
            &h,
        )
        .await;
    assert_eq!(notes.status, 200, "{}", notes.text());
    let j = notes.json();
    assert_eq!(
        j.as_array().unwrap().len(),
        1,
        "anon sees the published note only: {j}"
    );
    assert_eq!(j[0]["place"]["lat"], 52.5);
    let v = http
        .get(&format!("{url}/rest/v1/published_notes?select=title"), &h)
        .await;
    assert_eq!(v.json()[0]["title"], "Hello");
    let rpc = http
        .send(
            "POST",
            &format!("{url}/rest/v1/rpc/count_notes"),
            &h,
            r#"{"wanted":"draft"}"#,
        )
        .await;
    assert_eq!(rpc.status, 200, "{}", rpc.text());
    assert_eq!(
        rpc.json(),
        serde_json::json!(0),
        "RLS hides the draft from anon"
    );

    // enable_signup = false refuses sign-ups; the seeded user signs in with its password.
    let signup = http
        .send(
            "POST",
            &format!("{url}/auth/v1/signup"),
            &h,
            r#"{"email":"new@notes.test","password":"password123"}"#,
        )
        .await;
    assert_eq!(signup.status, 422, "{}", signup.text());
    assert_eq!(signup.json()["error_code"], "signup_disabled");
    let token = http
        .send(
            "POST",
            &format!("{url}/auth/v1/token?grant_type=password"),
            &h,
            r#"{"email":"ada@notes.test","password":"password123"}"#,
        )
        .await;
    assert_eq!(token.status, 200, "{}", token.text());
    server.shutdown().await;

    // A second start applies nothing and does not seed again.
    let (progress, lines) = collect_lines();
    let server = start(cfg, progress).await.expect("restarts");
    let said = lines.lock().unwrap().join("\n");
    assert!(!said.contains("Applying migration 2024"), "{said}");
    assert!(!said.contains("Seeding"), "{said}");
    let r = sql(&db, "select count(*) from public.notes").await;
    assert_eq!(r[0].get::<_, i64>(0), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_migration_names_file_and_line_and_leaves_nothing() {
    let db = fresh_db().await;
    let data = tempfile::tempdir().unwrap();
    let proj = tempfile::tempdir().unwrap();
    let mig = proj.path().join("supabase/migrations");
    std::fs::create_dir_all(&mig).unwrap();
    std::fs::write(
        mig.join("20240101000000_ok.sql"),
        "create table public.a (x int);\n",
    )
    .unwrap();
    std::fs::write(
        mig.join("20240102000000_bad.sql"),
        "create table public.b (x int);\n\ninsert into public.b values (1);\nselect *\n  from public.nope;\n",
    )
    .unwrap();
    let cfg = project_config(proj.path(), &db, data.path());
    let err = match start(cfg, Arc::new(|_: &str| {})).await {
        Ok(_) => panic!("a failing migration must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("supabase/migrations/20240102000000_bad.sql:5"),
        "file and line: {err}"
    );
    assert!(err.contains("public.nope"), "{err}");
    // As the CLI: the statement's number and text, a caret under the error's column.
    assert!(
        err.contains("At statement: 2\nselect *\n  from public.nope\n       ^"),
        "{err}"
    );
    let r = sql(&db, "select to_regclass('public.a') is not null, to_regclass('public.b') is null, (select array_agg(version) from supabase_migrations.schema_migrations)").await;
    assert!(r[0].get::<_, bool>(0), "the good file stays applied");
    assert!(
        r[0].get::<_, bool>(1),
        "nothing of the failing file is left"
    );
    assert_eq!(
        r[0].get::<_, Vec<String>>(2),
        vec!["20240101000000".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_extensions_stop_before_anything_with_one_message() {
    let db = fresh_db().await;
    let data = tempfile::tempdir().unwrap();
    let proj = tempfile::tempdir().unwrap();
    let mig = proj.path().join("supabase/migrations");
    std::fs::create_dir_all(&mig).unwrap();
    std::fs::write(
        mig.join("20240101000000_ext.sql"),
        "create table public.t (x int);\ncreate extension if not exists rum;\ncreate extension \"no_such_ext_xyz\";\n",
    )
    .unwrap();
    let cfg = project_config(proj.path(), &db, data.path());
    let err = match start(cfg, Arc::new(|_: &str| {})).await {
        Ok(_) => panic!("missing extensions must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no_such_ext_xyz ("), "{err}");
    assert!(
        err.contains("supabase/migrations/20240101000000_ext.sql:3)"),
        "{err}"
    );
    let has_rum = !sql(
        &db,
        "select 1 from pg_available_extensions where name = 'rum'",
    )
    .await
    .is_empty();
    assert_eq!(
        err.contains("apt-get install postgresql-15-rum"),
        !has_rum,
        "{err}"
    );
    let r = sql(&db, "select to_regclass('public.t') is null").await;
    assert!(r[0].get::<_, bool>(0));
}

/// Debian's extension packages that `.ci/run` installs (rum, hypopg, pgtap) work from a
/// project's migrations; see docs/extensions.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_extensions_work_in_migrations() {
    let db = fresh_db().await;
    let data = tempfile::tempdir().unwrap();
    let proj = tempfile::tempdir().unwrap();
    let mig = proj.path().join("supabase/migrations");
    std::fs::create_dir_all(&mig).unwrap();
    std::fs::write(
        mig.join("20240101000000_search.sql"),
        "create extension if not exists rum with schema extensions;
create extension if not exists hypopg with schema extensions;
create extension if not exists pgtap with schema extensions;
create table public.docs (id int primary key, body text, tsv tsvector);
create index docs_rum on public.docs using rum (tsv extensions.rum_tsvector_ops);
insert into public.docs values (1, 'hello world', to_tsvector('hello world'));
",
    )
    .unwrap();
    let cfg = project_config(proj.path(), &db, data.path());
    let server = start(cfg, Arc::new(|_: &str| {})).await.expect("starts");
    let r = sql(
        &db,
        "select (select count(*) from extensions.hypopg_create_index('create index on public.docs (body)')), \
         (select id from public.docs where tsv @@ to_tsquery('hello')), \
         (select extensions.plan(1))",
    )
    .await;
    assert_eq!(r[0].get::<_, i64>(0), 1);
    assert_eq!(r[0].get::<_, i32>(1), 1);
    assert_eq!(r[0].get::<_, String>(2), "1..1");
    server.shutdown().await;
}
