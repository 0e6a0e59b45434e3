//! Database faults: an exhausted pool answers instead of hanging, and a killed embedded
//! PostgreSQL comes back by itself with REST, acknowledged writes and realtime intact.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, Client, TestServer, SERVICE_KEY};
use futures::{SinkExt, StreamExt};
use oxibase::{Config, Server};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn service_headers() -> Vec<(&'static str, String)> {
    vec![
        ("apikey", SERVICE_KEY.to_string()),
        ("authorization", format!("Bearer {SERVICE_KEY}")),
        ("content-type", "application/json".to_string()),
    ]
}

async fn send(c: &Client, method: &str, url: &str, body: &str) -> common::reqwest_like::Response {
    let h = service_headers();
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.send(method, url, &h, body.to_string()).await
}

/// The answer, which must come within a few seconds (before the fix, a request waited for
/// a pooled connection for as long as it took).
async fn answered(
    r: impl std::future::Future<Output = common::reqwest_like::Response>,
) -> common::reqwest_like::Response {
    tokio::time::timeout(Duration::from_secs(10), r)
        .await
        .expect("an answer instead of waiting for a connection")
}

/// Every connection of both pools held: each API answers its own "timed out waiting for
/// a connection" at once instead of waiting for one (there was no wait timeout).
#[tokio::test]
async fn exhausted_pool_answers_504_in_each_api_shape() {
    let t = TestServer::start_with(|c| {
        c.db_pool_size = 1;
        c.db_pool_wait_timeout_ms = 300;
    })
    .await;
    let st = &t.server.state;
    // REST's hot path has its own pool; hold its one connection.
    let held_wire = st.wire.as_ref().expect("lean pool").get().await.unwrap();
    let r = answered(send(
        &t.http,
        "GET",
        &format!("{}/rest/v1/messages?select=id", t.url),
        "",
    ))
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"code": "PGRST003", "details": null, "hint": null,
               "message": "Timed out acquiring connection from connection pool."})
    );
    drop(held_wire);
    let r = answered(send(
        &t.http,
        "GET",
        &format!("{}/rest/v1/messages?select=id", t.url),
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The other APIs share the second pool.
    let held = st.pool.get().await.unwrap();
    let r = answered(send(
        &t.http,
        "GET",
        &format!("{}/storage/v1/bucket", t.url),
        "",
    ))
    .await;
    assert_eq!(r.status, 544, "{}", r.text());
    assert_eq!(r.json()["code"], "DatabaseTimeout");
    assert_eq!(r.json()["statusCode"], "544");
    let r = answered(send(
        &t.http,
        "GET",
        &format!("{}/auth/v1/admin/users", t.url),
        "",
    ))
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error_code"], "request_timeout");
    drop(held);
    let r = answered(send(
        &t.http,
        "GET",
        &format!("{}/storage/v1/bucket", t.url),
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The same through requests alone: a slow RPC holds the one connection, the next request
/// gets PostgREST's 504 PGRST003 instead of queueing behind it.
#[tokio::test]
async fn busy_pool_answers_pgrst003_while_a_slow_rpc_runs() {
    let t = TestServer::start_with(|c| {
        c.db_pool_size = 1;
        c.db_pool_wait_timeout_ms = 300;
    })
    .await;
    t.batch(
        "create function public.nap(s float8) returns int language sql
           as $$ select pg_sleep(s); select 1 $$;
         grant execute on function public.nap(float8) to service_role;",
    )
    .await;
    let url = format!("{}/rest/v1/rpc/nap", t.url);
    // Visible once the schema cache has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(send(&t.http, "POST", &url, r#"{"s":0}"#))
        .await
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "nap() never visible");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slow = {
        let (http, url) = (t.http.clone(), url.clone());
        tokio::spawn(async move { send(&http, "POST", &url, r#"{"s":3}"#).await })
    };
    // Wait until the sleep runs (it holds the pool's one connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = t
            .sql("select count(*) from pg_stat_activity where query like '%nap%' and state = 'active' and pid <> pg_backend_pid()")
            .await[0]
            .get::<_, i64>(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = answered(send(&t.http, "POST", &url, r#"{"s":0}"#)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["code"], "PGRST003");
    assert_eq!(
        r.json()["message"],
        "Timed out acquiring connection from connection pool."
    );
    assert_eq!(slow.await.unwrap().status, 200);
}

/// With an external database (the harness's), every server connection cut by the database
/// (`pg_terminate_backend`, as a restart or failover does): requests answer again, and
/// realtime change capture reconnects by itself for a subscriber that stayed.
#[tokio::test]
async fn external_database_dropping_connections_is_survived() {
    let t = TestServer::start().await;
    t.batch(
        "create table public.cut_items (id bigint primary key);
         grant select, insert on public.cut_items to service_role;
         alter publication supabase_realtime add table public.cut_items;",
    )
    .await;
    let url = format!("{}/rest/v1/cut_items", t.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(send(&t.http, "GET", &url, "")).await.status != 200 {
        assert!(Instant::now() < deadline, "table never visible");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sub = Subscriber::join(&t.url, "cut_items").await;
    let cut = t
        .sql(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .await[0]
        .get::<_, i64>(0);
    assert!(cut >= 3, "pool, listeners and capture connections: {cut}");
    // Inserts (503 while connections are remade, never anything else) until the subscriber
    // sees one: capture came back on a new slot.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0;
    'outer: loop {
        id += 1;
        let r = answered(send(&t.http, "POST", &url, &format!("{{\"id\":{id}}}"))).await;
        assert!(
            r.status == 201 || r.status == 503,
            "{} {}",
            r.status,
            r.text()
        );
        let until = Instant::now() + Duration::from_millis(300);
        while let Some(m) = sub.next(until).await {
            if m["event"] == "postgres_changes" {
                break 'outer;
            }
        }
        assert!(Instant::now() < deadline, "capture never came back");
    }
}

fn postmaster_pid(data: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(data.join("pg").join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A minimal Phoenix (vsn 1.0.0) client: join one postgres_changes channel, read changes.
struct Subscriber {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Subscriber {
    async fn join(base: &str, table: &str) -> Subscriber {
        let url = format!(
            "{}/realtime/v1/websocket?apikey={SERVICE_KEY}&vsn=1.0.0",
            base.replace("http://", "ws://")
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        let mut s = Subscriber { ws };
        let join = json!({"join_ref": "1", "ref": "1", "topic": "realtime:fault",
            "event": "phx_join", "payload": {"config": {"postgres_changes": [
                {"event": "INSERT", "schema": "public", "table": table}]},
                "access_token": SERVICE_KEY}});
        s.ws.send(Message::Text(join.to_string())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = s.next(deadline).await.expect("join answered");
            if m["event"] == "phx_reply" {
                assert_eq!(m["payload"]["status"], "ok", "{m}");
            }
            if m["event"] == "system" {
                assert_eq!(m["payload"]["status"], "ok", "{m}");
                return s;
            }
        }
    }

    /// The next message before `deadline`, heartbeating meanwhile.
    async fn next(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left.min(Duration::from_secs(5)), self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("realtime socket ended: {other:?}"),
                Err(_) => {
                    let hb = json!({"ref": "hb", "topic": "phoenix", "event": "heartbeat", "payload": {}});
                    self.ws.send(Message::Text(hb.to_string())).await.unwrap();
                }
            }
        }
    }
}

type Hyper = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// A request whose transport failure is an answer of its own (not a panic).
async fn try_send(c: &Hyper, method: &str, url: &str, body: &str) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in service_headers() {
        b = b.header(k, v);
    }
    let req = b
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = c
        .request(req)
        .await
        .map_err(|e| format!("transport: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[derive(Default)]
struct Load {
    /// Ids whose insert was acknowledged (2xx).
    acked: Vec<i64>,
    /// (request, status) of every answer that was neither 2xx nor 503/504.
    bad: Vec<String>,
    unavailable: usize,
}

/// `kill -9` of the embedded postmaster under a read/write load: requests meanwhile answer
/// 503 (never 500, never hang), the server brings PostgreSQL back by itself, every
/// acknowledged write survives, and a realtime subscriber from before the kill gets every
/// acknowledged insert, those made after the recovery included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_postgres_restarts_and_everything_recovers() {
    // The server's log (restart attempts, reconnects) shows when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn,oxibase=info,oxibase::request=warn")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL runs as the `postgres` user when the tests run as root: it must be able
    // to enter the directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = Config {
        port: 0,
        bind: vec!["127.0.0.1".into()],
        data_dir: dir.path().to_path_buf(),
        database_url: None,
        db_port: free_port(),
        db_pool_size: 4,
        // Durable commits: an acknowledged write must survive the crash.
        db_fsync: true,
        db_pool_wait_timeout_ms: 3000,
        db_pool_create_timeout_ms: 2000,
        ..Config::default()
    };
    let server = Server::start(cfg, Arc::new(|_: &str| {}))
        .await
        .expect("server starts with its own PostgreSQL");
    let base = format!("http://127.0.0.1:{}", server.port());
    let (admin, conn) = tokio_postgres::connect(&server.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(
            "create table public.fault_items (id bigint primary key, note text);
             grant select, insert on public.fault_items to service_role;
             alter publication supabase_realtime add table public.fault_items;",
        )
        .await
        .unwrap();
    drop(admin);
    let http = Client::new();
    // The schema cache learns about the table (DDL notification), then a first write.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(
            &http,
            "GET",
            &format!("{base}/rest/v1/fault_items?select=id"),
            "",
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "table never visible: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sub = Subscriber::join(&base, "fault_items").await;

    // A bounded read/write load, one request at a time, each bounded in time.
    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let worker = {
        let http: Hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let (load, stop, next_id, base) =
            (load.clone(), stop.clone(), next_id.clone(), base.clone());
        tokio::spawn(async move {
            let bound = Duration::from_secs(10);
            while !stop.load(Ordering::SeqCst) {
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                let url = format!("{base}/rest/v1/fault_items");
                let body = json!({"id": id, "note": "load"}).to_string();
                let w = tokio::time::timeout(bound, try_send(&http, "POST", &url, &body)).await;
                let read_url = format!("{base}/rest/v1/fault_items?select=id&id=eq.{id}");
                let r = tokio::time::timeout(bound, try_send(&http, "GET", &read_url, "")).await;
                {
                    let mut l = load.lock().unwrap();
                    for (what, answer) in [("POST", w), ("GET", r)] {
                        match answer {
                            Err(_) => l
                                .bad
                                .push(format!("{what} {id}: no answer within {bound:?}")),
                            Ok(Err(e)) => l.bad.push(format!("{what} {id}: {e}")),
                            Ok(Ok((status, _))) if (200..300).contains(&status) => {
                                if what == "POST" {
                                    l.acked.push(id);
                                }
                            }
                            Ok(Ok((503 | 504, _))) => l.unavailable += 1,
                            Ok(Ok((status, body))) => {
                                l.bad.push(format!("{what} {id}: {status} {body}"))
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let acked = |n: usize, worker: &tokio::task::JoinHandle<()>| {
        let load = load.clone();
        let alive = !worker.is_finished();
        async move {
            assert!(alive, "the load stopped");
            let deadline = Instant::now() + Duration::from_secs(15);
            while load.lock().unwrap().acked.len() < n {
                assert!(Instant::now() < deadline, "the load made no progress");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    acked(10, &worker).await;

    let data = dir.path().to_path_buf();
    let pid = postmaster_pid(&data).expect("postmaster.pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let before_kill = load.lock().unwrap().acked.len();

    // Back by itself: a new postmaster, and /health answers 200 again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let restarted = postmaster_pid(&data).is_some_and(|p| p != pid);
        let h = tokio::time::timeout(
            Duration::from_secs(5),
            http.get(&format!("{base}/health"), &[]),
        )
        .await
        .expect("/health answers");
        assert!(h.status == 200 || h.status == 503, "health: {}", h.status);
        if restarted && h.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_after = next_id.load(Ordering::SeqCst);
    acked(before_kill + 10, &worker).await;

    // The subscriber from before the kill gets changes made after the recovery (capture
    // resumes by itself; rows keep coming from the load).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut other = vec![];
    let mut seen = std::collections::HashSet::new();
    loop {
        assert!(!worker.is_finished(), "the load stopped");
        let Some(m) = sub.next(deadline).await else {
            let l = load.lock().unwrap();
            panic!(
                "no change after the recovery (first id after: {first_after}; acked {} \
                 (last {:?}), 503/504: {}, bad: {:?}; other messages: {other:?})",
                l.acked.len(),
                l.acked.last(),
                l.unavailable,
                l.bad
            );
        };
        if m["event"] != "postgres_changes" && m["event"] != "phx_reply" {
            other.push(m.to_string());
        }
        if m["event"] == "postgres_changes" {
            let id = m["payload"]["data"]["record"]["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("record id is not a number: {m}"));
            seen.insert(id);
            if id >= first_after {
                assert_eq!(m["payload"]["data"]["type"], "INSERT");
                break;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("load stops")
        .unwrap();

    // The worker has ended: the load is ours alone now.
    let l = std::mem::take(&mut *load.lock().unwrap());
    assert!(
        l.bad.is_empty(),
        "answers that are not 2xx/503/504: {:?}",
        l.bad
    );
    let (admin, conn) = tokio_postgres::connect(&server.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let present: std::collections::HashSet<i64> = admin
        .query("select id from public.fault_items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i64> = l.acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // Capture resumed from its slot: every acknowledged insert, before, during and after
    // the crash, reaches the subscriber (some maybe twice: delivery is at least once).
    let deadline = Instant::now() + Duration::from_secs(30);
    while l.acked.iter().any(|id| !seen.contains(id)) {
        let Some(m) = sub.next(deadline).await else {
            let missing: Vec<&i64> = l.acked.iter().filter(|id| !seen.contains(id)).collect();
            panic!("acknowledged inserts never delivered: {missing:?}");
        };
        if m["event"] == "postgres_changes" {
            seen.insert(m["payload"]["data"]["record"]["id"].as_i64().unwrap());
        }
    }
    eprintln!(
        "fault_pg: {} writes acknowledged, {} answers 503/504 during the outage",
        l.acked.len(),
        l.unavailable
    );
    drop(admin);
    server.shutdown().await;
}

/// A connection of its own to the test's database (for holding locks across requests).
async fn own_connection(t: &TestServer) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&t.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Wait until some backend of the test's database waits for a lock the test holds.
async fn until_a_request_waits_for_a_lock(db: &tokio_postgres::Client) {
    for _ in 0..400 {
        let n: i64 = db
            .query_one(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the request never waited for the lock");
}

/// Two admins giving two users the same email at once: the later one's check passes (the
/// other write is not committed yet), its UPDATE then hits the unique index. GoTrue answers
/// 422 email_exists; oxibase answered every database error 500.
#[tokio::test]
async fn auth_unique_race_answers_422_email_exists() {
    let t = TestServer::start().await;
    let (b, _) = t.user().await;
    let (c, _) = t.user().await;
    let mut db = own_connection(&t).await;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "update auth.users set email = 'race@x.test' where id = $1::text::uuid",
        &[&c],
    )
    .await
    .unwrap();
    let url = format!("{}/auth/v1/admin/users/{b}", t.url);
    let req = tokio::spawn(async move {
        send(&Client::new(), "PUT", &url, r#"{"email":"race@x.test"}"#).await
    });
    until_a_request_waits_for_a_lock(&own_connection(&t).await).await;
    tx.commit().await.unwrap();
    let r = req.await.unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error_code"], "email_exists");
    assert_eq!(r.header("x-sb-error-code"), Some("email_exists"));
}

/// A statement that runs past `statement_timeout` (here: waiting for a row lock) is
/// GoTrue's 504 request_timeout, not a 500.
#[tokio::test]
async fn auth_statement_timeout_answers_504_request_timeout() {
    let t = TestServer::start_with(|c| {
        let url = c.database_url.as_ref().unwrap().0.clone();
        c.database_url = Some(oxibase::config::Secret(format!(
            "{url}?options=-c%20statement_timeout%3D3000"
        )));
    })
    .await;
    let (b, _) = t.user().await;
    let mut db = own_connection(&t).await;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "select 1 from auth.users where id = $1::text::uuid for update",
        &[&b],
    )
    .await
    .unwrap();
    let r = send(
        &t.http,
        "PUT",
        &format!("{}/auth/v1/admin/users/{b}", t.url),
        r#"{"user_metadata":{"x":1}}"#,
    )
    .await;
    tx.rollback().await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error_code"], "request_timeout");
}
