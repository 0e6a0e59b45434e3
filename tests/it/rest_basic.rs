//! /rest/v1 end to end against a fresh database: schema-cache reload after DDL, reads,
//! writes, RPC, errors and the body limit.
use crate::common;

use common::{TestServer, ANON_KEY, SERVICE_KEY};
use serde_json::json;

const FIXTURE: &str = r#"
create table public.it_items (id serial primary key, name text not null, qty int default 1);
create table public.it_parts (id serial primary key, item_id int references public.it_items(id), label text);
insert into public.it_items (name, qty) values ('a', 1), ('b', 2), ('c', 3);
insert into public.it_parts (item_id, label) values (1, 'x'), (1, 'y'), (2, 'z');
create function public.it_double(n int) returns int language sql immutable as $$ select n * 2 $$;
create function public.it_sum(variadic v int[]) returns int language sql immutable as $$ select sum(x)::int from unnest(v) x $$;
grant all on public.it_items, public.it_parts to anon, service_role;
grant all on all sequences in schema public to anon, service_role;
"#;

async fn setup() -> TestServer {
    let t = TestServer::start().await;
    t.batch(FIXTURE).await;
    // The DDL event trigger notifies `pgrst`; requests also reload on a miss.
    t
}

#[tokio::test]
async fn reads_embeds_and_counts() {
    let t = setup().await;
    let url = format!(
        "{}/rest/v1/it_items?select=name,it_parts(label)&order=id&it_parts.order=label.desc&limit=2",
        t.url
    );
    let r = t
        .http
        .get(&url, &[("apikey", ANON_KEY), ("prefer", "count=exact")])
        .await;
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.header("content-range"), Some("0-1/3"));
    assert_eq!(
        r.json(),
        json!([{"name":"a","it_parts":[{"label":"y"},{"label":"x"}]},{"name":"b","it_parts":[{"label":"z"}]}])
    );
    let r = t
        .http
        .get(
            &format!(
                "{}/rest/v1/it_items?select=id&name=in.(a,c)&or=(qty.eq.1,qty.gt.2)",
                t.url
            ),
            &[],
        )
        .await;
    assert_eq!(r.json(), json!([{"id":1},{"id":3}]));
    t.server.shutdown().await;
}

#[tokio::test]
async fn writes_rpc_and_errors() {
    let t = setup().await;
    let h = [
        ("apikey", SERVICE_KEY),
        ("content-type", "application/json"),
        ("prefer", "return=representation"),
    ];
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/it_items?select=name,qty", t.url),
            &h,
            r#"{"name":"d"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!([{"name":"d","qty":1}]));
    let r = t
        .http
        .send(
            "PATCH",
            &format!("{}/rest/v1/it_items?name=eq.d", t.url),
            &h,
            r#"{"qty":9}"#,
        )
        .await;
    assert_eq!(r.json()[0]["qty"], 9);
    let r = t
        .http
        .send(
            "DELETE",
            &format!("{}/rest/v1/it_items?name=eq.d", t.url),
            &h,
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().map(|a| a.len()), Some(1));
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/rpc/it_double", t.url),
            &h,
            r#"{"n":21}"#,
        )
        .await;
    assert_eq!(r.json(), json!(42));
    // Variadic: POST with an array, GET with a repeated key.
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/rpc/it_sum", t.url),
            &h,
            r#"{"v":[1,2,3]}"#,
        )
        .await;
    assert_eq!(r.json(), json!(6), "{}", r.text());
    let r = t
        .http
        .get(&format!("{}/rest/v1/rpc/it_sum?v=4&v=5", t.url), &[])
        .await;
    assert_eq!(r.json(), json!(9), "{}", r.text());
    // Raw text for scalar functions; tables negotiate past text/plain or answer 406.
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/rpc/it_double?n=4", t.url),
            &[("accept", "text/plain")],
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "8".to_string()));
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/it_items?select=id&id=eq.1", t.url),
            &[("accept", "text/plain")],
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (406, json!("PGRST107"))
    );
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/it_items?select=id&id=eq.1", t.url),
            &[("accept", "text/plain, application/json")],
        )
        .await;
    assert_eq!((r.status, r.json()), (200, json!([{"id": 1}])));
    // PUT: single-row upsert by primary key.
    let r = t
        .http
        .send(
            "PUT",
            &format!("{}/rest/v1/it_items?id=eq.2&select=id,name,qty", t.url),
            &h,
            r#"{"id":2,"name":"bb","qty":5}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!([{"id":2,"name":"bb","qty":5}])),
        "{}",
        r.text()
    );
    let r = t
        .http
        .send(
            "PUT",
            &format!("{}/rest/v1/it_items?id=eq.3", t.url),
            &h,
            r#"{"id":2,"name":"x"}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("PGRST115"))
    );
    let r = t
        .http
        .send(
            "PUT",
            &format!("{}/rest/v1/it_items", t.url),
            &h,
            r#"{"id":2,"name":"x"}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (405, json!("PGRST105"))
    );
    // CSV bodies.
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/it_parts?select=item_id,label", t.url),
            &[
                ("content-type", "text/csv"),
                ("prefer", "return=representation"),
            ],
            "item_id,label\n2,\"a, b\"\nNULL,c\n",
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (
            201,
            json!([{"item_id": 2, "label": "a, b"}, {"item_id": null, "label": "c"}])
        ),
        "{}",
        r.text()
    );
    // Empty array and empty object inserts.
    let r = t
        .http
        .send("POST", &format!("{}/rest/v1/it_parts", t.url), &h, "[]")
        .await;
    assert_eq!((r.status, r.json()), (201, json!([])), "{}", r.text());
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/it_parts?select=item_id,label", t.url),
            &h,
            "{}",
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (201, json!([{"item_id": null, "label": null}])),
        "{}",
        r.text()
    );
    // Errors in PostgREST's shape.
    let r = t.http.get(&format!("{}/rest/v1/it_nope", t.url), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "PGRST205");
    assert!(r.json().get("hint").is_some());
    let r = t
        .http
        .get(&format!("{}/rest/v1/it_items?select=a(b", t.url), &[])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "PGRST100");
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/it_items", t.url),
            &h,
            r#"{"name":"a","id":1}"#,
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["code"], "23505");
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(11 * 1024 * 1024));
    let r = t
        .http
        .send("POST", &format!("{}/rest/v1/it_items", t.url), &h, big)
        .await;
    assert_eq!(r.status, 413);
    t.server.shutdown().await;
}

#[tokio::test]
async fn schema_cache_follows_ddl() {
    let t = setup().await;
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/it_items?select=id&limit=1", t.url),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    t.batch("create table public.it_late (id int primary key); grant select on public.it_late to anon; insert into public.it_late values (7);")
        .await;
    let mut ok = false;
    for _ in 0..30 {
        let r = t.http.get(&format!("{}/rest/v1/it_late", t.url), &[]).await;
        if r.status == 200 {
            assert_eq!(r.json(), json!([{"id":7}]));
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "new table never became visible");
    t.server.shutdown().await;
}

#[tokio::test]
async fn role_statement_timeout_applies() {
    let t = setup().await;
    t.batch(
        "create function public.it_sleep() returns int language sql as $$ select pg_sleep(2); select 1 $$;
         grant execute on function public.it_sleep() to anon;
         do $$ begin execute format('alter role anon in database %I set statement_timeout = %L', current_database(), '200ms'); end $$;
         notify pgrst, 'reload schema';",
    )
    .await;
    let mut last = 0;
    for _ in 0..30 {
        let r = t
            .http
            .send(
                "POST",
                &format!("{}/rest/v1/rpc/it_sleep", t.url),
                &[("content-type", "application/json")],
                "{}",
            )
            .await;
        last = r.status;
        if r.status != 404 {
            assert_eq!(r.json()["code"], "57014", "{}", r.text());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last, 500);
    t.server.shutdown().await;
}

#[tokio::test]
async fn openapi_head_and_range() {
    let t = setup().await;
    // A read of a new table reloads the schema cache if the DDL notification is not in yet.
    let r = t
        .http
        .get(&format!("{}/rest/v1/it_items?limit=1", t.url), &[])
        .await;
    assert_eq!(r.status, 200);
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/", t.url),
            &[("accept", "application/openapi+json")],
        )
        .await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
    assert!(doc["paths"]["/it_items"]["get"].is_object());
    assert!(doc["paths"]["/rpc/it_double"]["post"].is_object());
    // anon was granted nothing on it_secret: not listed.
    t.batch("create table public.it_secret (id int); revoke all on public.it_secret from anon;")
        .await;
    let mut seen = false;
    for _ in 0..30 {
        let r = t
            .http
            .get(&format!("{}/rest/v1/", t.url), &[("apikey", SERVICE_KEY)])
            .await;
        if r.json()["paths"]["/it_secret"].is_object() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "service_role sees the new table");
    let r = t.http.get(&format!("{}/rest/v1/", t.url), &[]).await;
    assert!(r.json()["paths"]["/it_secret"].is_null(), "anon does not");
    let r = t
        .http
        .send(
            "HEAD",
            &format!("{}/rest/v1/it_items", t.url),
            &[("prefer", "count=exact")],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-range"), Some("0-2/3"));
    assert!(r.body.is_empty());
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/it_items?select=id&order=id", t.url),
            &[("range", "1-1"), ("prefer", "count=exact")],
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("1-1/3"));
    assert_eq!(r.json(), json!([{"id": 2}]));
    let r = t
        .http
        .get(
            &format!("{}/rest/v1/it_items?select=id&offset=5", t.url),
            &[("prefer", "count=exact")],
        )
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.json()["code"], "PGRST103");
    t.server.shutdown().await;
}

#[tokio::test]
async fn prefer_timezone() {
    let t = setup().await;
    t.batch(
        "create table public.it_times (id int primary key, at timestamptz);
         insert into public.it_times values (1, '2024-01-01T12:00:00Z');
         grant select on public.it_times to anon;",
    )
    .await;
    let url = format!("{}/rest/v1/it_times?select=at", t.url);
    let r = t
        .http
        .get(&url, &[("prefer", "timezone=America/Los_Angeles")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([{"at": "2024-01-01T04:00:00-08:00"}]));
    assert_eq!(
        r.header("preference-applied"),
        Some("timezone=America/Los_Angeles")
    );
    // Only for that request: the connection's next request is in the server's zone.
    for _ in 0..3 {
        let r = t.http.get(&url, &[]).await;
        assert_eq!(r.json(), json!([{"at": "2024-01-01T12:00:00+00:00"}]));
        assert_eq!(r.header("preference-applied"), None);
    }
    // With a count, both are applied.
    let r = t
        .http
        .get(&url, &[("prefer", "count=exact, timezone=Asia/Tokyo")])
        .await;
    assert_eq!(r.json(), json!([{"at": "2024-01-01T21:00:00+09:00"}]));
    assert_eq!(
        r.header("preference-applied"),
        Some("count=exact, timezone=Asia/Tokyo")
    );
    // An unknown zone is ignored, or an error under handling=strict.
    let r = t
        .http
        .get(&url, &[("prefer", "timezone=Mars/Olympus")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([{"at": "2024-01-01T12:00:00+00:00"}]));
    assert_eq!(r.header("preference-applied"), None);
    let r = t
        .http
        .get(
            &url,
            &[("prefer", "handling=strict, timezone=Mars/Olympus")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "PGRST122");
    assert_eq!(
        r.json()["details"],
        "Invalid preferences: timezone=Mars/Olympus"
    );
    t.server.shutdown().await;
}

/// A database URL the wire pool cannot serve (two hosts; likewise a Unix socket or
/// `sslmode=require`) leaves `state.wire` unset: requests without a check then go through
/// tokio-postgres as one queued batch (`queued` in rest/execute.rs). Reads,
/// writes and a database error behave there as on the wire path.
#[tokio::test]
async fn without_the_wire_pool_the_pipelined_path_serves() {
    let t = common::TestServer::start_with(|c| {
        let url = c.database_url.as_ref().unwrap().0.clone();
        let (head, tail) = url.rsplit_once('/').unwrap();
        let host = head.rsplit_once('@').unwrap().1.to_string();
        c.database_url = Some(oxibase::config::Secret(format!("{head},{host}/{tail}")));
    })
    .await;
    t.batch(FIXTURE).await;
    let h = [
        ("apikey", SERVICE_KEY),
        ("content-type", "application/json"),
        ("prefer", "return=representation"),
    ];
    let items = format!("{}/rest/v1/it_items", t.url);
    let r = t
        .http
        .get(
            &format!("{items}?select=name&order=id"),
            &[("apikey", ANON_KEY)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([{"name":"a"},{"name":"b"},{"name":"c"}]));
    let r = t
        .http
        .send(
            "POST",
            &format!("{items}?select=name,qty"),
            &h,
            r#"{"name":"d"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!([{"name":"d","qty":1}]));
    let r = t
        .http
        .send("PATCH", &format!("{items}?name=eq.d"), &h, r#"{"qty":5}"#)
        .await;
    assert_eq!(r.json()[0]["qty"], 5, "{}", r.text());
    let r = t.http.send("POST", &items, &h, r#"{"name":null}"#).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "23502");
    let r = t
        .http
        .get(
            &format!("{items}?select=qty&name=eq.d"),
            &[("apikey", ANON_KEY)],
        )
        .await;
    assert_eq!(r.json(), json!([{"qty":5}]));
    t.server.shutdown().await;
}
