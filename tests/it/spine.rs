use crate::common;

use common::{TestServer, ANON_KEY, SERVICE_KEY};

#[tokio::test]
async fn health_and_per_test_database() {
    let t = TestServer::start().await;
    let r = t.http.get(&format!("{}/health", t.url), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    let rows = t
        .sql("select count(*) from oxibase.schema_migrations")
        .await;
    assert!(rows[0].get::<_, i64>(0) >= 2);
    t.server.shutdown().await;
}

#[tokio::test]
async fn role_and_claims_reach_sql() {
    let t = TestServer::start().await;
    let pool = &t.server.state.pool;
    let mut c = pool.get().await.unwrap();
    let ctx = t.server.state.keys.resolve(SERVICE_KEY).unwrap();
    let tx = oxibase::db::begin_as(&mut c, &ctx, &Default::default(), true)
        .await
        .unwrap();
    let row = tx
        .query_one(
            "select current_user::text, auth.role(), auth.jwt()->>'iss'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "service_role");
    assert_eq!(row.get::<_, String>(1), "service_role");
    assert_eq!(row.get::<_, String>(2), "supabase-demo");
    drop(tx);
    let user = t.server.state.keys.jwt.sign_hs256(&serde_json::json!({
        "role": "authenticated", "sub": "2b1f6f0e-8a5e-4d59-9c1c-7d3f0f2a9b11"}));
    let ctx = t.server.state.keys.resolve(&user).unwrap();
    let tx = oxibase::db::begin_as(&mut c, &ctx, &Default::default(), true)
        .await
        .unwrap();
    let row = tx
        .query_one("select current_user::text, auth.uid()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "authenticated");
    assert_eq!(
        row.get::<_, String>(1),
        "2b1f6f0e-8a5e-4d59-9c1c-7d3f0f2a9b11"
    );
    // RLS: this user sees no one else's conversations.
    let n: i64 = tx
        .query_one("select count(*) from conversations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(tx);
    drop(c);
    t.server.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_get_401_in_the_api_shape() {
    let t = TestServer::start().await;
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/profiles", t.url),
            &[("apikey", ANON_KEY), ("authorization", "Bearer not.a.jwt")],
        )
        .await;
    assert_eq!(r.status, 401);
    let b = r.json();
    assert!(b["code"].as_str().unwrap().starts_with("PGRST30"), "{b}");
    assert!(b.get("details").is_some() && b.get("hint").is_some());
    t.server.shutdown().await;
}

#[tokio::test]
async fn corrupt_migration_history_is_a_clear_error() {
    let t = TestServer::start().await;
    t.batch("update oxibase.schema_migrations set checksum = 'deadbeef' where version = 1")
        .await;
    let mut cfg = t.server.state.config.clone();
    cfg.port = 0;
    let err = oxibase::Server::start(cfg.clone(), std::sync::Arc::new(|_: &str| {}))
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("migration history is corrupt") && msg.contains("0001_supabase_base.sql"),
        "{msg}"
    );
    t.batch("update oxibase.schema_migrations set checksum = 'x' where false; insert into oxibase.schema_migrations values (9999, '9999_future.sql', 'x')").await;
    let err = oxibase::Server::start(cfg, std::sync::Arc::new(|_: &str| {}))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let t = TestServer::start().await;
    let mut cfg = t.server.state.config.clone();
    cfg.port = t.server.port();
    let err = oxibase::Server::start(cfg, std::sync::Arc::new(|_: &str| {}))
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot listen") && msg.contains("port in use"),
        "{msg}"
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let t = TestServer::start().await;
    let (mut c, conn) = tokio_postgres::connect(&t.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let applied = oxibase::db::migrate::run(&mut c, true, &|_| {})
        .await
        .unwrap();
    assert!(applied.is_empty(), "nothing left to apply: {applied:?}");
    t.server.shutdown().await;
}
