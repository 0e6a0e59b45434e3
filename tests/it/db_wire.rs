//! The lean hot-path connection (`db::wire`) against the embedded PostgreSQL: one batch,
//! one Sync; errors roll the whole batch back; a connection dropped mid-batch is not reused.

use crate::common;

use common::TestServer;
use oxibase::db::wire::{make_pool, Step, WireConfig, WireConn, WireError};

fn config(t: &TestServer) -> WireConfig {
    let cfg: tokio_postgres::Config = t.db_url.parse().unwrap();
    WireConfig::from_config(&cfg).expect("a TCP database URL")
}

#[tokio::test]
async fn batch_returns_each_steps_rows_in_text() {
    let t = TestServer::start().await;
    let mut c = WireConn::connect(&config(&t)).await.unwrap();
    let out = c
        .pipeline(&[
            Step::plain("START TRANSACTION READ ONLY"),
            Step {
                sql: "select set_config('request.x', $1, true)",
                params: &["héllo"],
                text_params: true,
                name: None,
            },
            Step {
                sql: "select current_setting('request.x') as v, $1::int8 + 1 as n, null::text as z",
                params: &["41"],
                text_params: false,
                name: None,
            },
            Step::plain("COMMIT"),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 4);
    let row = &out[2][0];
    assert_eq!(row.text(0), Some("héllo"));
    assert_eq!(row.int(1), Some(42));
    assert_eq!(row.text(2), None);
    // The local setting ended with the transaction.
    let out = c
        .pipeline(&[Step::plain(
            "select coalesce(current_setting('request.x', true), '')",
        )])
        .await
        .unwrap();
    assert_eq!(out[0][0].text(0), Some(""));
}

#[tokio::test]
async fn an_error_rolls_back_the_whole_batch_and_the_connection_stays_usable() {
    let t = TestServer::start().await;
    t.batch("create table public.w (id int primary key)").await;
    let mut c = WireConn::connect(&config(&t)).await.unwrap();
    let err = c
        .pipeline(&[
            Step::plain("START TRANSACTION"),
            Step {
                sql: "insert into public.w values ($1)",
                params: &["1"],
                text_params: false,
                name: None,
            },
            Step {
                sql: "insert into public.w values ($1)",
                params: &["1"],
                text_params: false,
                name: None,
            },
            Step::plain("COMMIT"),
        ])
        .await
        .err()
        .expect("duplicate key");
    match err {
        WireError::Db(d) => {
            assert_eq!(d.code, "23505");
            assert!(d.message.contains("duplicate key"), "{}", d.message);
            assert!(d.detail.unwrap_or_default().contains("(id)=(1)"));
        }
        WireError::Io(e) => panic!("io error {e}"),
    }
    // Nothing was written, and the same connection runs the next batch.
    let out = c
        .pipeline(&[Step::plain("select count(*) from public.w")])
        .await
        .unwrap();
    assert_eq!(out[0][0].int(0), Some(0));
    // A read-only transaction refuses writes.
    let err = c
        .pipeline(&[
            Step::plain("START TRANSACTION READ ONLY"),
            Step::plain("insert into public.w values (2)"),
            Step::plain("COMMIT"),
        ])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, WireError::Db(ref d) if d.code == "25006"),
        "{err}"
    );
}

#[tokio::test]
async fn named_statements_are_prepared_once_per_connection() {
    let t = TestServer::start().await;
    let mut c = WireConn::connect(&config(&t)).await.unwrap();
    let named = |v: &'static [&'static str]| Step {
        sql: "select $1::text || '!'",
        params: v,
        text_params: true,
        name: Some("t_bang"),
    };
    // A batch that fails before the named statement's Parse: it is not prepared then...
    let err = c
        .pipeline(&[Step::plain("select 1/0"), named(&["a"])])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, WireError::Db(ref d) if d.code == "22012"),
        "{err}"
    );
    // ...so the next batch parses it, and the ones after only bind it.
    for v in [&["b"][..], &["c"][..], &["d"][..]] {
        let out = c.pipeline(&[named(v)]).await.unwrap();
        assert_eq!(out[0][0].text(0), Some(format!("{}!", v[0]).as_str()));
    }
    let out = c
        .pipeline(&[Step::plain(
            "select count(*) from pg_prepared_statements where name = 't_bang'",
        )])
        .await
        .unwrap();
    assert_eq!(out[0][0].int(0), Some(1));
    // A later statement failing keeps it prepared and usable.
    let err = c
        .pipeline(&[named(&["e"]), Step::plain("select 1/0")])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, WireError::Db(_)), "{err}");
    let out = c.pipeline(&[named(&["f"])]).await.unwrap();
    assert_eq!(out[0][0].text(0), Some("f!"));
}

#[tokio::test]
async fn a_batch_that_leaves_a_transaction_open_is_an_error() {
    let t = TestServer::start().await;
    let mut c = WireConn::connect(&config(&t)).await.unwrap();
    let err = c
        .pipeline(&[Step::plain("START TRANSACTION"), Step::plain("select 1")])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, WireError::Io(_)), "{err}");
}

#[tokio::test]
async fn a_connection_dropped_mid_batch_is_not_reused() {
    let t = TestServer::start().await;
    let pool = make_pool(config(&t), 1);
    let pid_of = |rows: Vec<Vec<oxibase::db::wire::Row>>| rows[0][0].int(0).unwrap();
    let first = {
        let mut c = pool.get().await.unwrap();
        pid_of(
            c.pipeline(&[Step::plain("select pg_backend_pid()")])
                .await
                .unwrap(),
        )
    };
    // Reused while healthy.
    {
        let mut c = pool.get().await.unwrap();
        let again = pid_of(
            c.pipeline(&[Step::plain("select pg_backend_pid()")])
                .await
                .unwrap(),
        );
        assert_eq!(again, first);
    }
    // Dropped while PostgreSQL is still working on the batch.
    {
        let mut c = pool.get().await.unwrap();
        let steps = [Step::plain("select pg_sleep(5)")];
        let slow = c.pipeline(&steps);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), slow).await;
    }
    let mut c = pool.get().await.unwrap();
    let next = pid_of(
        c.pipeline(&[Step::plain("select pg_backend_pid()")])
            .await
            .unwrap(),
    );
    assert_ne!(
        next, first,
        "the interrupted connection was handed out again"
    );
}

#[tokio::test]
async fn url_options_reach_the_session() {
    let t = TestServer::start().await;
    let mut cfg: tokio_postgres::Config = t.db_url.parse().unwrap();
    cfg.options("-c work_mem=7MB");
    let mut c = WireConn::connect(&WireConfig::from_config(&cfg).unwrap())
        .await
        .unwrap();
    let out = c
        .pipeline(&[Step::plain("select current_setting('work_mem')")])
        .await
        .unwrap();
    assert_eq!(out[0][0].text(0), Some("7MB"));
}

#[tokio::test]
async fn wrong_password_is_a_database_error() {
    let t = TestServer::start().await;
    let mut cfg: tokio_postgres::Config = t.db_url.parse().unwrap();
    cfg.password("wrong");
    let w = WireConfig::from_config(&cfg).unwrap();
    let err = WireConn::connect(&w).await.err().expect("refused");
    assert!(
        matches!(err, WireError::Db(ref d) if d.code == "28P01"),
        "{err}"
    );
}

#[tokio::test]
async fn a_connection_the_database_closed_is_not_handed_out() {
    let t = TestServer::start().await;
    let pool = make_pool(config(&t), 1);
    let pid = {
        let mut c = pool.get().await.unwrap();
        c.pipeline(&[Step::plain("select pg_backend_pid()")])
            .await
            .unwrap()[0][0]
            .int(0)
            .unwrap()
    };
    t.sql(&format!("select pg_terminate_backend({pid})")).await;
    // The FATAL message and the close reach the idle socket.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut c = pool.get().await.unwrap();
    let out = c
        .pipeline(&[Step::plain("select pg_backend_pid()")])
        .await
        .expect("a fresh connection");
    assert_ne!(out[0][0].int(0), Some(pid));
}
