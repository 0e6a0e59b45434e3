//! pg_net without the C extension: requests queued from SQL are executed by oxibase and
//! answered into `net._http_response` as pg_net stores them; Database Webhooks
//! (`supabase_functions.http_request`) post Supabase's payload to a local HTTP server.

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestServer;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// The webhook target: records every request; `/slow` answers after 3 s.
#[derive(Clone)]
struct Target {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Target {
    async fn start() -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Target {
            url: format!("http://{}", listener.local_addr().unwrap()),
            seen: Default::default(),
        };
        let seen = t.seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let path = parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                seen.lock().unwrap().push(Seen {
                                    method: parts.method.to_string(),
                                    path: path.clone(),
                                    headers: parts.headers.clone(),
                                    body,
                                });
                                if path.starts_with("/slow") {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                }
                                let resp = http::Response::builder()
                                    .status(if path.starts_with("/missing") {
                                        404
                                    } else {
                                        200
                                    })
                                    .header("content-type", "text/plain; charset=utf-8")
                                    .header("x-test", "yes")
                                    .body(Full::new(bytes::Bytes::from_static(b"hello")))
                                    .unwrap();
                                Ok::<_, Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        t
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        for _ in 0..200 {
            let s = self.seen();
            if s.len() >= n {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the target saw {} requests, expected {n}",
            self.seen().len()
        );
    }
}

async fn one_i64(t: &TestServer, q: &str) -> i64 {
    t.sql(q).await[0].get(0)
}

/// The `net._http_response` row of a request, once the worker has stored it.
async fn response(t: &TestServer, id: i64) -> tokio_postgres::Row {
    for _ in 0..200 {
        let rows = t
            .sql(&format!(
                "select status_code, content_type, headers, content, timed_out, error_msg
                 from net._http_response where id = {id}"
            ))
            .await;
        if let Some(r) = rows.into_iter().next() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no response stored for request {id}");
}

#[tokio::test]
async fn a_database_webhook_posts_supabase_payload_and_headers() {
    let t = TestServer::start().await;
    let target = Target::start().await;
    t.batch(&format!(
        "create table public.nt_items (id int primary key, name text);
         create trigger nt_hook after insert or update or delete on public.nt_items
           for each row execute function supabase_functions.http_request(
             '{}/hook', 'POST', '{{\"Content-Type\":\"application/json\",\"X-Secret\":\"s1\"}}',
             '{{\"a\":\"b c\"}}', '1000');",
        target.url
    ))
    .await;
    t.batch("insert into public.nt_items values (1, 'first')")
        .await;
    let seen = target.wait_for(1).await;
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.path, "/hook?a=b%20c");
    assert_eq!(s.headers["content-type"], "application/json");
    assert_eq!(s.headers["x-secret"], "s1");
    assert!(s.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("pg_net/"));
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body,
        json!({"type": "INSERT", "table": "nt_items", "schema": "public",
               "record": {"id": 1, "name": "first"}, "old_record": null})
    );
    t.batch("update public.nt_items set name = 'second' where id = 1")
        .await;
    let seen = target.wait_for(2).await;
    let body: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(body["type"], "UPDATE");
    assert_eq!(body["record"], json!({"id": 1, "name": "second"}));
    assert_eq!(body["old_record"], json!({"id": 1, "name": "first"}));
    t.batch("delete from public.nt_items where id = 1").await;
    let seen = target.wait_for(3).await;
    let body: Value = serde_json::from_slice(&seen[2].body).unwrap();
    assert_eq!(body["type"], "DELETE");
    assert_eq!(body["record"], Value::Null);
    // The audit trail points at the stored responses.
    let rid = one_i64(
        &t,
        "select request_id from supabase_functions.hooks where hook_name = 'nt_hook' order by id limit 1",
    )
    .await;
    let r = response(&t, rid).await;
    assert_eq!(r.get::<_, Option<i32>>(0), Some(200));
}

#[tokio::test]
async fn http_get_stores_status_headers_and_content() {
    let t = TestServer::start().await;
    let target = Target::start().await;
    let id = one_i64(
        &t,
        &format!(
            "select net.http_get('{}/hello', params := '{{\"q\":\"a/b\"}}', headers := '{{\"X-Req\":\"1\"}}')",
            target.url
        ),
    )
    .await;
    let r = response(&t, id).await;
    assert_eq!(r.get::<_, Option<i32>>(0), Some(200));
    assert_eq!(
        r.get::<_, Option<String>>(1).as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let headers: Value = r.get(2);
    assert_eq!(headers["x-test"], "yes");
    assert_eq!(r.get::<_, Option<String>>(3).as_deref(), Some("hello"));
    assert_eq!(r.get::<_, Option<bool>>(4), Some(false));
    assert_eq!(r.get::<_, Option<String>>(5), None);
    let s = &target.seen()[0];
    assert_eq!(
        (s.method.as_str(), s.path.as_str()),
        ("GET", "/hello?q=a%2Fb")
    );
    assert_eq!(s.headers["x-req"], "1");
    // The queue is emptied and the collect helper reads the response.
    assert_eq!(
        one_i64(&t, "select count(*) from net.http_request_queue").await,
        0
    );
    let status: String = t
        .sql(&format!(
            "select (net._http_collect_response({id})).status::text"
        ))
        .await[0]
        .get(0);
    assert_eq!(status, "SUCCESS");
    // A 404 is a response, not an error; DELETE and POST go out with their methods.
    let d = one_i64(
        &t,
        &format!("select net.http_delete('{}/missing')", target.url),
    )
    .await;
    assert_eq!(response(&t, d).await.get::<_, Option<i32>>(0), Some(404));
    let p = one_i64(
        &t,
        &format!(
            "select net.http_post('{}/p', body := '{{\"x\":1}}')",
            target.url
        ),
    )
    .await;
    response(&t, p).await;
    let posted = target.seen().into_iter().find(|s| s.path == "/p").unwrap();
    assert_eq!(posted.method, "POST");
    assert_eq!(
        serde_json::from_slice::<Value>(&posted.body).unwrap(),
        json!({"x": 1})
    );
    assert_eq!(posted.headers["content-type"], "application/json");
}

#[tokio::test]
async fn timeouts_and_failures_are_recorded_as_pg_net_records_them() {
    let t = TestServer::start().await;
    let target = Target::start().await;
    let id = one_i64(
        &t,
        &format!(
            "select net.http_get('{}/slow', timeout_milliseconds := 200)",
            target.url
        ),
    )
    .await;
    let r = response(&t, id).await;
    assert_eq!(r.get::<_, Option<i32>>(0), None);
    assert_eq!(r.get::<_, Option<bool>>(4), Some(true));
    let msg: String = r.get(5);
    assert!(
        msg.starts_with("Timeout of 200 ms reached. Total time: "),
        "{msg}"
    );
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let id = one_i64(
        &t,
        &format!("select net.http_get('http://127.0.0.1:{port}/')"),
    )
    .await;
    let r = response(&t, id).await;
    assert_eq!(r.get::<_, Option<bool>>(4), Some(false));
    assert_eq!(
        r.get::<_, Option<String>>(5).as_deref(),
        Some("Couldn't connect to server")
    );
    let status: String = t
        .sql(&format!(
            "select (net._http_collect_response({id})).status::text"
        ))
        .await[0]
        .get(0);
    assert_eq!(status, "ERROR");
}

#[tokio::test]
async fn sql_errors_ttl_cleanup_and_worker_check() {
    let t = TestServer::start().await;
    // pg_net's own argument check.
    let (client, conn) = tokio_postgres::connect(&t.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let e = client
        .query("select net.http_post('http://127.0.0.1:1/', headers := '{\"Content-Type\":\"text/plain\"}')", &[])
        .await
        .unwrap_err();
    assert!(
        crate_error(&e).contains("Content-Type header must be \"application/json\""),
        "{e}"
    );
    // The API roles may call the request functions (security definer), as on Supabase.
    client
        .batch_execute("set role anon; select net.http_get('http://127.0.0.1:1/'); reset role")
        .await
        .unwrap();
    // The worker connects in the background once the server is up.
    common::eventually("the pg_net worker is up", || {
        let c = &client;
        async move {
            c.batch_execute("select net.check_worker_is_up()")
                .await
                .is_ok()
        }
    })
    .await;
    // Responses older than pg_net.ttl (6 hours) are deleted by the worker.
    client
        .batch_execute(
            "insert into net._http_response (id, status_code, created) values
               (-1, 200, now() - interval '7 hours'), (-2, 200, now());
             select net.wake();",
        )
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if one_i64(&t, "select count(*) from net._http_response where id = -1").await == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the expired response was not deleted");
    assert_eq!(
        one_i64(&t, "select count(*) from net._http_response where id = -2").await,
        1
    );
}

fn crate_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}
