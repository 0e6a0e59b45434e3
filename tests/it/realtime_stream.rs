//! Change capture streams over the replication protocol: an idle server makes no queries on
//! it, and a cut replication connection resumes from the slot without losing a change.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{TestServer, SERVICE_KEY};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A vsn 1.0.0 socket joined to INSERTs on one table (service role: no RLS in the way).
async fn subscribe(t: &TestServer, table: &str) -> Ws {
    subscribe_as(t, table, SERVICE_KEY).await
}

/// The same with `key` as the apikey and the access token.
async fn subscribe_as(t: &TestServer, table: &str, key: &str) -> Ws {
    let url = format!(
        "{}/realtime/v1/websocket?apikey={key}&vsn=1.0.0",
        t.url.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    let join = json!({"join_ref": "1", "ref": "1", "topic": "realtime:s", "event": "phx_join",
        "payload": {"config": {"postgres_changes": [
            {"event": "INSERT", "schema": "public", "table": table}]},
            "access_token": key}});
    ws.send(Message::Text(join.to_string())).await.unwrap();
    loop {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("joined");
        if m["event"] == "system" {
            assert_eq!(m["payload"]["status"], "ok", "{m}");
            return ws;
        }
        if m["event"] == "phx_reply" {
            assert_eq!(m["payload"]["status"], "ok", "{m}");
        }
    }
}

async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, ws.next()).await.ok()? {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// Read postgres_changes until every id in `want` arrived (duplicates allowed: delivery is
/// at least once); the ids still missing otherwise.
async fn collect(ws: &mut Ws, want: &BTreeSet<i64>, within: Duration) -> BTreeSet<i64> {
    let mut missing = want.clone();
    let deadline = Instant::now() + within;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = next(ws, left).await else {
            break;
        };
        if m["event"] == "postgres_changes" {
            missing.remove(&m["payload"]["data"]["record"]["id"].as_i64().unwrap());
        }
    }
    missing
}

async fn table(t: &TestServer, name: &str) {
    t.batch(&format!(
        "create table public.{name} (id bigint primary key);
         alter publication supabase_realtime add table public.{name};"
    ))
    .await;
}

/// The capture connection is a walsender (pg_stat_replication) and, idle, it runs nothing:
/// no backend of the server on this database (but pg_net's queue worker) starts a query for
/// seconds. Polling the slot
/// (a query every 50 ms) fails both.
#[tokio::test]
async fn idle_capture_is_a_stream_that_makes_no_queries() {
    let t = TestServer::start().await;
    table(&t, "quiet").await;
    let mut ws = subscribe(&t, "quiet").await;
    let senders = t
        .sql(
            "select count(*) from pg_stat_replication r join pg_stat_activity a using (pid)
              where a.datname = current_database() and r.application_name = 'oxibase realtime'",
        )
        .await[0]
        .get::<_, i64>(0);
    assert_eq!(senders, 1, "one streaming walsender for this database");
    // Let startup work (schema cache, listeners) settle, then watch the server's backends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (db, conn) = tokio_postgres::connect(&t.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // pg_net's queue worker polls on its own (not realtime's business).
    let last_query = "select coalesce(max(query_start), 'epoch')::text, count(*)
                        from pg_stat_activity
                       where datname = current_database() and pid <> pg_backend_pid()
                         and application_name <> 'oxibase pg_net'";
    let before = db.query_one(last_query, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = db.query_one(last_query, &[]).await.unwrap();
    assert!(
        after.get::<_, i64>(1) >= 2,
        "the server's backends are visible"
    );
    let who: Vec<String> = db
        .query(
            "select format('%s %s %s %s', backend_type, application_name, query_start, left(query, 80))
               from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        before.get::<_, String>(0),
        after.get::<_, String>(0),
        "a backend of the server started a query while idle: {who:#?}"
    );
    // And it still delivers.
    t.batch("insert into public.quiet values (1)").await;
    let missing = collect(&mut ws, &BTreeSet::from([1]), Duration::from_secs(10)).await;
    assert!(missing.is_empty());
}

/// The walsender is terminated (as a failover or an administrator does), twice, while rows
/// are inserted: capture reconnects to the same slot and every row is delivered.
#[tokio::test]
async fn a_terminated_walsender_loses_no_change() {
    let t = TestServer::start().await;
    table(&t, "steady").await;
    let mut ws = subscribe(&t, "steady").await;
    let (db, conn) = tokio_postgres::connect(&t.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let terminate = "select count(pg_terminate_backend(r.pid)) from pg_stat_replication r
                       join pg_stat_activity a using (pid)
                      where a.datname = current_database()";
    let mut want = BTreeSet::new();
    for id in 1..=60i64 {
        if id == 20 || id == 40 {
            // Capture is back from the first cut before the second (it reconnects in its own
            // time; with tests running side by side that can be a few seconds).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut n: i64 = 0;
            while n == 0 && std::time::Instant::now() < deadline {
                n = db.query_one(terminate, &[]).await.unwrap().get(0);
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            // The rows right after the cut are committed before capture can be back.
            assert_eq!(n, 1, "the capture walsender was found");
        }
        db.execute("insert into public.steady values ($1)", &[&id])
            .await
            .unwrap();
        want.insert(id);
        if id % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let missing = collect(&mut ws, &want, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "changes lost: {missing:?}");
}

/// Under RLS, a burst of single-row transactions from several connections reaches every
/// user whole: the visibility check waits for each transaction to be visible (a commit is
/// streamed a moment before other sessions can see its row) and batches rows together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_under_rls_reaches_every_user_whole() {
    let t = TestServer::start().await;
    t.batch(
        "create table public.burst (id bigint primary key);
         alter table public.burst enable row level security;
         create policy users on public.burst for select to authenticated
           using ((select auth.uid()) is not null);
         grant select on public.burst to authenticated;
         alter publication supabase_realtime add table public.burst;",
    )
    .await;
    let mut users = vec![];
    for _ in 0..5 {
        let (_, token) = t.user().await;
        let ws = subscribe_as(&t, "burst", &token).await;
        users.push(ws);
    }
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let url = t.db_url.clone();
            tokio::spawn(async move {
                let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                // Durable commits (the harness runs with synchronous_commit off): the WAL
                // is flushed, and streamed, before the row is visible to others.
                db.batch_execute("set synchronous_commit = on")
                    .await
                    .unwrap();
                for i in 0..100i64 {
                    db.execute("insert into public.burst values ($1)", &[&(w * 1000 + i)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let want: BTreeSet<i64> = (0..4i64)
        .flat_map(|w| (0..100i64).map(move |i| w * 1000 + i))
        .collect();
    for (u, ws) in users.iter_mut().enumerate() {
        let missing = collect(ws, &want, Duration::from_secs(30)).await;
        assert!(missing.is_empty(), "user {u} is missing {missing:?}");
    }
}
