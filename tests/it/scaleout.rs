//! Several oxibase processes on one database (the supabase-js side of scale-out is
//! compat-tests/test/scaleout.test.mjs): what every process does at start must be safe when
//! they start together, as replicas of one deployment do, and a process that stops must not
//! leave its realtime presences behind on the others.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use oxibase::config::{AuthRateLimits, Secret};
use oxibase::{Config, Server};

fn config(db_url: &str, data_dir: &Path, project: &Path) -> Config {
    Config {
        project: Some(project.to_path_buf()),
        auth: oxibase::config::AuthConfig {
            rate_limit: AuthRateLimits::generous(),
            ..Default::default()
        },
        ..plain_config(db_url, data_dir)
    }
}

/// Three replicas start at once with one project folder: its migration is applied once and
/// recorded once, its seed runs once, and every replica starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_apply_the_project_once() {
    let db = common::template_db().await;
    let project = tempfile::tempdir().unwrap();
    let sb = project.path().join("supabase");
    std::fs::create_dir_all(sb.join("migrations")).unwrap();
    // The sleeps widen the window in which replicas that do not wait for each other would
    // both see the migration and the seed as pending.
    std::fs::write(
        sb.join("migrations/20240101000000_once.sql"),
        "create table public.scale_once (id serial primary key, what text not null);\n\
         select pg_sleep(0.5);\n",
    )
    .unwrap();
    std::fs::write(
        sb.join("seed.sql"),
        "select pg_sleep(0.5);\ninsert into public.scale_once (what) values ('seeded');\n",
    )
    .unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let starts = dirs.iter().map(|d| {
        let cfg = config(&db, d.path(), project.path());
        Server::start(cfg, Arc::new(|_: &str| {}))
    });
    let results = futures::future::join_all(starts).await;
    let mut servers = vec![];
    for r in results {
        match r {
            Ok(s) => servers.push(s),
            Err(e) => panic!("a replica did not start: {e}"),
        }
    }
    let (c, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n = |q: &'static str| {
        let c = &c;
        async move { c.query_one(q, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(n("select count(*) from public.scale_once").await, 1);
    assert_eq!(
        n("select count(*) from supabase_migrations.schema_migrations where version = '20240101000000'").await,
        1
    );
    assert_eq!(
        n("select count(*) from supabase_migrations.seed_files").await,
        1
    );
    for s in servers {
        s.shutdown().await;
    }
}

fn plain_config(db_url: &str, data_dir: &Path) -> Config {
    Config {
        port: 0,
        bind: vec!["127.0.0.1".into()],
        data_dir: data_dir.to_path_buf(),
        database_url: Some(Secret(db_url.to_string())),
        db_pool_size: 4,
        ..Config::default()
    }
}

/// A process that stops (a rolling deploy) takes its presences with it at once: the other
/// processes do not keep showing them until they expire (35 s), beside the same users
/// tracked again on a live process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_process_withdraws_its_presences_from_the_others() {
    let db = common::template_db().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stays = Server::start(plain_config(&db, d1.path()), Arc::new(|_: &str| {}))
        .await
        .unwrap();
    let leaves = Server::start(plain_config(&db, d2.path()), Arc::new(|_: &str| {}))
        .await
        .unwrap();
    let key = ("scale-room".to_string(), false);
    let keys = |s: &Server| {
        s.state
            .realtime
            .hub
            .presence_state(&key)
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // Announced once the fan-out listener is up; tracked again until the other side sees it.
    let hub = &leaves.state.realtime.hub;
    let chan = hub.new_chan_id();
    let meta = serde_json::Map::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while keys(&stays) != ["user-1"] {
        hub.track(&key, chan, "user-1", meta.clone());
        assert!(
            std::time::Instant::now() < deadline,
            "the presence never reached the other process"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    leaves.shutdown().await;
    common::eventually("the stopped process's presence is withdrawn", || async {
        keys(&stays).is_empty()
    })
    .await;
    stays.shutdown().await;
}
