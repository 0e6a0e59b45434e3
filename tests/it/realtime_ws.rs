//! Realtime over a real WebSocket client: Phoenix frames (vsn 1.0.0 and 2.0.0, binary kinds
//! 3 and 4), replies, token expiry, private channels and postgres_changes with RLS.

use crate::common;

use std::time::Duration;

use common::{TestServer, ANON_KEY, SERVICE_KEY};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

fn mint(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

struct Client {
    ws: Ws,
    v2: bool,
    next_ref: u32,
}

/// What arrived: a decoded text message or a binary frame.
#[derive(Debug)]
enum In {
    Msg {
        reference: Value,
        topic: String,
        event: String,
        payload: Value,
    },
    Bin(Vec<u8>),
}

impl Client {
    async fn connect(t: &TestServer, key: &str, vsn: &str) -> Client {
        let url = format!(
            "{}/realtime/v1/websocket?apikey={key}&vsn={vsn}",
            t.url.replace("http://", "ws://")
        );
        let (ws, resp) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        assert_eq!(resp.status(), 101);
        Client {
            ws,
            v2: vsn == "2.0.0",
            next_ref: 0,
        }
    }

    /// Send a message; returns its ref.
    async fn send(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let text = if self.v2 {
            json!([join_ref, r, topic, event, payload]).to_string()
        } else {
            json!({"join_ref": join_ref, "ref": r, "topic": topic, "event": event, "payload": payload}).to_string()
        };
        self.ws.send(Message::Text(text)).await.unwrap();
        r
    }

    async fn recv(&mut self) -> In {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("a frame within 5 s")
                .expect("socket open")
                .expect("frame ok");
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    return if self.v2 {
                        In::Msg {
                            reference: v[1].clone(),
                            topic: v[2].as_str().unwrap().into(),
                            event: v[3].as_str().unwrap().into(),
                            payload: v[4].clone(),
                        }
                    } else {
                        In::Msg {
                            reference: v["ref"].clone(),
                            topic: v["topic"].as_str().unwrap().into(),
                            event: v["event"].as_str().unwrap().into(),
                            payload: v["payload"].clone(),
                        }
                    };
                }
                Message::Binary(b) => return In::Bin(b),
                _ => continue,
            }
        }
    }

    /// The next text message with this event (others are skipped).
    async fn expect_event(&mut self, event: &str) -> (String, Value, Value) {
        loop {
            if let In::Msg {
                event: e,
                topic,
                payload,
                reference,
                ..
            } = self.recv().await
            {
                if e == event {
                    return (topic, payload, reference);
                }
            }
        }
    }

    async fn reply_to(&mut self, r: &str) -> Value {
        loop {
            let (_, p, reference) = self.expect_event("phx_reply").await;
            if reference == json!(r) {
                return p;
            }
        }
    }

    async fn join(&mut self, topic: &str, payload: Value) -> Value {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let text = if self.v2 {
            json!([r, r, topic, "phx_join", payload]).to_string()
        } else {
            json!({"join_ref": r, "ref": r, "topic": topic, "event": "phx_join", "payload": payload}).to_string()
        };
        self.ws.send(Message::Text(text)).await.unwrap();
        self.reply_to(&r).await
    }

    async fn silent(&mut self, ms: u64) {
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await
        {
            panic!("unexpected frame: {m:?}");
        }
    }
}

fn kind3(join_ref: &str, r: &str, topic: &str, event: &str, enc: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![
        3,
        join_ref.len() as u8,
        r.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        0,
        enc,
    ];
    for s in [join_ref, r, topic, event] {
        v.extend_from_slice(s.as_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[tokio::test]
async fn handshake_errors_have_supabase_shapes() {
    let t = TestServer::start().await;
    let r = t
        .http
        .get(&format!("{}/realtime/v1/websocket?vsn=2.0.0", t.url), &[])
        .await;
    assert_eq!(r.status, 400);
    let up = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = t
        .http
        .get(&format!("{}/realtime/v1/websocket?vsn=2.0.0", t.url), &up)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "API key is missing"}));
    let r = t
        .http
        .get(
            &format!("{}/realtime/v1/websocket?vsn=2.0.0&apikey=a.b.c", t.url),
            &up,
        )
        .await;
    assert_eq!(r.status, 401);
    let expired = mint(json!({"role":"anon","exp": now() - 5}));
    let r = t
        .http
        .get(
            &format!("{}/realtime/v1/websocket?apikey={expired}", t.url),
            &up,
        )
        .await;
    assert_eq!(r.json(), json!({"error": "Token has expired"}));
    let r = t
        .http
        .get(
            &format!(
                "{}/realtime/v1/websocket?vsn=9.9.9&apikey={ANON_KEY}",
                t.url
            ),
            &up,
        )
        .await;
    assert_eq!(r.status, 403);
    let r = t
        .http
        .get(&format!("{}/realtime/v1/nope", t.url), &[])
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn v2_heartbeat_join_binary_broadcast_ack_and_leave() {
    let t = TestServer::start().await;
    let mut c = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let r = c.send(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(c.reply_to(&r).await, json!({"status":"ok","response":{}}));

    let reply = c
        .join(
            "realtime:room",
            json!({"config":{"broadcast":{"self":true,"ack":true},"presence":{"key":"","enabled":false},"postgres_changes":[],"private":false}}),
        )
        .await;
    assert_eq!(
        reply,
        json!({"status":"ok","response":{"postgres_changes":[]}})
    );

    // Kind-3 push with ack: a reply to its ref, and (self) a kind-4 frame back.
    let jr = c.next_ref.to_string();
    c.ws.send(Message::Binary(kind3(
        &jr,
        "77",
        "realtime:room",
        "ev",
        1,
        br#"{"a":1}"#,
    )))
    .await
    .unwrap();
    let mut got_reply = false;
    let mut got_frame = None;
    while !(got_reply && got_frame.is_some()) {
        match c.recv().await {
            In::Bin(b) => got_frame = Some(b),
            In::Msg {
                event,
                reference,
                payload,
                ..
            } if event == "phx_reply" => {
                assert_eq!(reference, json!("77"));
                assert_eq!(payload["status"], "ok");
                got_reply = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let b = got_frame.unwrap();
    assert_eq!(&b[..5], &[4, 13, 2, 0, 1]);
    assert_eq!(&b[5..18], b"realtime:room");
    assert_eq!(&b[18..20], b"ev");
    assert_eq!(&b[20..], br#"{"a":1}"#);

    // Unknown event: an error reply, the socket stays.
    let r = c
        .send(Some(&jr), "realtime:room", "whatever", json!({}))
        .await;
    let p = c.reply_to(&r).await;
    assert_eq!(p["status"], "error");
    // A topic that was never joined.
    let r = c.send(None, "realtime:other", "broadcast", json!({})).await;
    assert_eq!(
        c.reply_to(&r).await["response"]["reason"],
        "unmatched topic"
    );
    // Leave: ok, then broadcasts no longer arrive.
    let r = c
        .send(Some(&jr), "realtime:room", "phx_leave", json!({}))
        .await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
    let resp = t
        .http
        .send(
            "POST",
            &format!("{}/realtime/v1/api/broadcast/room/events/x", t.url),
            &[("apikey", ANON_KEY), ("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(resp.status, 202);
    c.silent(300).await;
    let r = c.send(None, "phoenix", "heartbeat", json!({})).await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
}

#[tokio::test]
async fn v1_object_frames_and_http_broadcasts() {
    let t = TestServer::start().await;
    let mut v1 = Client::connect(&t, ANON_KEY, "1.0.0").await;
    let mut v2 = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let reply = v1
        .join(
            "realtime:mix",
            json!({"config":{"broadcast":{"self":false}}}),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    v2.join("realtime:mix", json!({"config":{}})).await;

    let send = |body: &'static [u8], ctype: &'static str, event: &'static str| {
        let http = t.http.clone();
        let url = format!("{}/realtime/v1/api/broadcast/mix/events/{event}", t.url);
        async move {
            http.send(
                "POST",
                &url,
                &[("apikey", ANON_KEY), ("content-type", ctype)],
                body,
            )
            .await
            .status
        }
    };
    assert_eq!(send(br#"{"k":"v"}"#, "application/json", "j").await, 202);
    let (topic, p, _) = v1.expect_event("broadcast").await;
    assert_eq!(topic, "realtime:mix");
    assert_eq!(
        p,
        json!({"type":"broadcast","event":"j","payload":{"k":"v"}})
    );
    let In::Bin(b) = v2.recv().await else {
        panic!()
    };
    assert_eq!(b[0], 4);
    assert_eq!(b[4], 1);

    // Raw bytes: a kind-4 frame (encoding 0) for 2.0.0; 1.0.0 cannot carry them.
    assert_eq!(
        send(&[0, 255, 1], "application/octet-stream", "b").await,
        202
    );
    let In::Bin(b) = v2.recv().await else {
        panic!()
    };
    assert_eq!(b[4], 0);
    assert!(b.ends_with(&[0, 255, 1]));
    v1.silent(300).await;

    // Batch endpoint: a JSON broadcast, text for both versions.
    let resp = t
        .http
        .send(
            "POST",
            &format!("{}/realtime/v1/api/broadcast", t.url),
            &[("apikey", ANON_KEY), ("content-type", "application/json")],
            r#"{"messages":[{"topic":"mix","event":"e","payload":{"n":1}}]}"#,
        )
        .await;
    assert_eq!(resp.status, 202);
    let (_, p, _) = v1.expect_event("broadcast").await;
    assert_eq!(p["payload"], json!({"n":1}));
    let (_, p, _) = v2.expect_event("broadcast").await;
    assert_eq!(p["event"], "e");

    // A 1.0.0 JSON push reaches the 2.0.0 client as text.
    let jr = "1";
    let r = v1
        .send(
            Some(jr),
            "realtime:mix",
            "broadcast",
            json!({"type":"broadcast","event":"hi","payload":{"x":2}}),
        )
        .await;
    let _ = r;
    let (_, p, _) = v2.expect_event("broadcast").await;
    assert_eq!(
        p,
        json!({"type":"broadcast","event":"hi","payload":{"x":2}})
    );
}

#[tokio::test]
async fn tokens_are_checked_at_join_and_expiry_closes_the_channel() {
    let t = TestServer::start().await;
    let mut c = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let bad = mint(json!({"role":"anon"}));
    let p = c
        .join("realtime:a", json!({"config":{},"access_token": bad}))
        .await;
    assert_eq!(
        p["response"]["reason"],
        "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
    );
    let p = c
        .join("realtime:a", json!({"config":{},"access_token": "x.y.z"}))
        .await;
    assert_eq!(p["status"], "error");
    let p = c.join("realtime:", json!({"config":{}})).await;
    assert_eq!(
        p["response"]["reason"],
        "TopicNameRequired: You must provide a topic name"
    );

    // Valid for one more second: the channel is closed with a system message at expiry.
    let short = mint(json!({"role":"anon","exp": now() + 1}));
    let p = c
        .join("realtime:short", json!({"config":{},"access_token": short}))
        .await;
    assert_eq!(p["status"], "ok");
    let (topic, sys, _) = c.expect_event("system").await;
    assert_eq!(topic, "realtime:short");
    assert_eq!(sys["status"], "error");
    assert_eq!(sys["extension"], "system");
    assert!(sys["message"]
        .as_str()
        .unwrap()
        .starts_with("Token has expired"));
    let (topic, _, _) = c.expect_event("phx_close").await;
    assert_eq!(topic, "realtime:short");

    // access_token: a fresh token is accepted; a broken one shuts the channel down.
    let p = c.join("realtime:b", json!({"config":{}})).await;
    assert_eq!(p["status"], "ok");
    let fresh = mint(json!({"role":"anon","exp": now() + 600}));
    let r = c
        .send(
            Some("x"),
            "realtime:b",
            "access_token",
            json!({"access_token": fresh}),
        )
        .await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
    let expired = mint(json!({"role":"anon","exp": now() - 100}));
    c.send(
        Some("x"),
        "realtime:b",
        "access_token",
        json!({"access_token": expired}),
    )
    .await;
    let (_, sys, _) = c.expect_event("system").await;
    assert!(sys["message"]
        .as_str()
        .unwrap()
        .starts_with("Token has expired 10"));
    c.expect_event("phx_close").await;
}

#[tokio::test]
async fn private_channels_follow_realtime_messages_policies() {
    let t = TestServer::start().await;
    t.batch(
        "create policy rt_read on realtime.messages for select to authenticated
           using (realtime.topic() = 'team:' || (auth.jwt()->>'team'));
         create policy rt_write on realtime.messages for insert to authenticated
           with check (realtime.topic() = 'team:' || (auth.jwt()->>'team') and extension = 'broadcast');",
    )
    .await;
    let user = mint(
        json!({"role":"authenticated","sub":uuid::Uuid::new_v4(),"team":"red","exp":now()+600}),
    );
    let mut c = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let cfg = |tok: &str| json!({"config":{"private":true,"broadcast":{"ack":true,"self":true},"presence":{"enabled":true}},"access_token":tok});
    let p = c.join("realtime:team:blue", cfg(&user)).await;
    assert_eq!(
        p["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: team:blue"
    );
    let p = c.join("realtime:team:red", cfg(&user)).await;
    assert_eq!(p["status"], "ok");
    // The select policy lets both extensions read; the insert policy only allows broadcast,
    // so a presence track is refused and a broadcast is acknowledged.
    let r = c
        .send(
            Some("2"),
            "realtime:team:red",
            "presence",
            json!({"type":"presence","event":"track","payload":{"a":1}}),
        )
        .await;
    assert_eq!(c.reply_to(&r).await["status"], "error");
    let r = c
        .send(
            Some("2"),
            "realtime:team:red",
            "broadcast",
            json!({"type":"broadcast","event":"e","payload":{}}),
        )
        .await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
    // HTTP: the same policies.
    let url = |topic: &str| {
        format!(
            "{}/realtime/v1/api/broadcast/{topic}/events/e?private=true",
            t.url
        )
    };
    let auth = format!("Bearer {user}");
    let h = [
        ("apikey", ANON_KEY),
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    assert_eq!(
        t.http.send("POST", &url("team:red"), &h, "{}").await.status,
        202
    );
    let r = t.http.send("POST", &url("team:blue"), &h, "{}").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({"message":"Unauthorized"}));
    let h = [
        ("apikey", SERVICE_KEY),
        ("content-type", "application/json"),
    ];
    assert_eq!(
        t.http
            .send("POST", &url("team:blue"), &h, "{}")
            .await
            .status,
        202
    );
    // The server's own private topics (websocket-handler's `oxibase.ws:<id>`) stay closed
    // to the realtime API even under policies that allow every topic.
    t.batch(
        "create policy rt_any_read on realtime.messages for select to authenticated using (true);
         create policy rt_any_write on realtime.messages for insert to authenticated with check (true);",
    )
    .await;
    let p = c.join("realtime:oxibase.ws:1", cfg(&user)).await;
    assert_eq!(p["status"], "error", "{p}");
    assert_eq!(
        p["response"]["reason"],
        "Unauthorized: You do not have permissions to read from this Channel topic: oxibase.ws:1"
    );
    assert_eq!(
        t.http
            .send("POST", &url("oxibase.ws:1"), &h, "{}")
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn postgres_changes_with_filters_and_rls() {
    let t = TestServer::start().await;
    t.batch(
        "create table public.notes (id bigint generated always as identity primary key,
                                    owner uuid not null, body text, n int, tags text[],
                                    created timestamptz default now());
         alter table public.notes enable row level security;
         create policy own on public.notes for all to authenticated using (owner = auth.uid());
         alter publication supabase_realtime add table public.notes;",
    )
    .await;
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let tok = mint(json!({"role":"authenticated","sub":a,"exp":now()+600}));
    let mut c = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let changes = json!([
        {"event":"*","schema":"public","table":"notes"},
        {"event":"INSERT","schema":"public","table":"notes","filter":"n=gt.5"},
        {"event":"DELETE","schema":"public"}
    ]);
    let p = c
        .join(
            "realtime:notes",
            json!({"config":{"postgres_changes":changes},"access_token":tok}),
        )
        .await;
    let echoed = p["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(echoed.len(), 3);
    for (e, sent) in echoed.iter().zip(changes.as_array().unwrap()) {
        for k in ["event", "schema", "table", "filter"] {
            assert_eq!(e.get(k), sent.get(k));
        }
        assert!(e["id"].is_u64());
    }
    let ids: Vec<u64> = echoed.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    let (_, sys, _) = c.expect_event("system").await;
    assert_eq!(sys["message"], "Subscribed to PostgreSQL");
    assert_eq!(sys["extension"], "postgres_changes");

    t.batch(&format!(
        "insert into public.notes (owner, body, n, tags) values ('{b}', 'not mine', 9, '{{x}}');
         insert into public.notes (owner, body, n, tags) values ('{a}', 'mine', 9, '{{x,y}}');"
    ))
    .await;
    let (_, p, _) = c.expect_event("postgres_changes").await;
    let got: Vec<u64> = p["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[0], ids[1]]);
    let d = &p["data"];
    assert_eq!(d["type"], "INSERT");
    assert_eq!(d["schema"], "public");
    assert_eq!(d["table"], "notes");
    assert_eq!(d["record"]["body"], "mine");
    assert_eq!(d["record"]["n"], 9);
    assert_eq!(d["record"]["tags"], json!(["x", "y"]));
    assert!(d.get("old_record").is_none());
    assert_eq!(d["errors"], Value::Null);
    assert_eq!(d["columns"][0], json!({"name":"id","type":"int8"}));
    assert!(d["record"]["created"].as_str().unwrap().contains('T'));

    // RLS is checked against the row as it is when the change is read (as Supabase does),
    // so the update is awaited before the row goes away.
    t.batch(&format!(
        "update public.notes set n = 1 where owner = '{a}'"
    ))
    .await;
    let (_, p, _) = c.expect_event("postgres_changes").await;
    assert_eq!(p["data"]["type"], "UPDATE");
    assert_eq!(p["ids"], json!([ids[0]]));
    assert_eq!(p["data"]["record"]["n"], 1);
    // Default replica identity and an unchanged key: no old values.
    assert_eq!(p["data"]["old_record"], json!({}));
    t.batch(&format!("delete from public.notes where owner = '{a}'"))
        .await;
    let (_, p, _) = c.expect_event("postgres_changes").await;
    assert_eq!(p["data"]["type"], "DELETE");
    assert_eq!(p["ids"], json!([ids[0], ids[2]]));
    assert_eq!(p["data"]["old_record"].as_object().unwrap().len(), 1);
    // B's rows were never delivered.
    c.silent(300).await;

    // A bad filter is reported with a system message, the join still succeeds.
    let p = c
        .join(
            "realtime:bad",
            json!({"config":{"postgres_changes":[{"event":"*","schema":"public","table":"notes","filter":"n=nope.1"}]},"access_token":tok}),
        )
        .await;
    assert_eq!(p["status"], "ok");
    let (_, sys, _) = c.expect_event("system").await;
    assert_eq!(sys["status"], "error");
    assert!(sys["message"]
        .as_str()
        .unwrap()
        .starts_with("Error parsing `filter` params"));
}

#[tokio::test]
async fn broadcasts_cross_processes_sharing_a_database() {
    let t = TestServer::start().await;
    // A second oxibase on the same database.
    let dir = tempfile::tempdir().unwrap();
    let cfg = oxibase::Config {
        port: 0,
        bind: vec!["127.0.0.1".into()],
        data_dir: dir.path().to_path_buf(),
        database_url: Some(oxibase::config::Secret(t.db_url.clone())),
        db_pool_size: 2,
        ..Default::default()
    };
    let other = oxibase::Server::start(cfg, std::sync::Arc::new(|_: &str| {}))
        .await
        .unwrap();
    let other_url = format!("http://127.0.0.1:{}", other.port());

    let mut on_b = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let url_b = format!("{other_url}/realtime/v1/websocket?apikey={ANON_KEY}&vsn=2.0.0")
        .replace("http://", "ws://");
    let (ws, _) = tokio_tungstenite::connect_async(url_b).await.unwrap();
    let mut on_other = Client {
        ws,
        v2: true,
        next_ref: 0,
    };
    on_b.join("realtime:x-proc", json!({"config":{}})).await;
    on_other.join("realtime:x-proc", json!({"config":{}})).await;
    // The listener connects in the background: retry the first send until it lands.
    let mut delivered = false;
    for _ in 0..20 {
        let r = t
            .http
            .send(
                "POST",
                &format!("{}/realtime/v1/api/broadcast/x-proc/events/e", t.url),
                &[
                    ("apikey", ANON_KEY),
                    ("content-type", "application/octet-stream"),
                ],
                vec![1u8, 2, 3],
            )
            .await;
        assert_eq!(r.status, 202);
        let In::Bin(b) = on_b.recv().await else {
            panic!()
        };
        assert!(b.ends_with(&[1, 2, 3]));
        if let Ok(Some(Ok(Message::Binary(b)))) =
            tokio::time::timeout(Duration::from_millis(300), on_other.ws.next()).await
        {
            assert!(b.ends_with(&[1, 2, 3]));
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the other process never received the broadcast");
    // And back: a push on the other process reaches this one, exactly once.
    on_other
        .send(
            Some("1"),
            "realtime:x-proc",
            "broadcast",
            json!({"type":"broadcast","event":"back","payload":{"k":1}}),
        )
        .await;
    let (_, p, _) = on_b.expect_event("broadcast").await;
    assert_eq!(p["event"], "back");
    on_b.silent(300).await;
    // Larger than one NOTIFY: sent in chunks, reassembled on the other side.
    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/realtime/v1/api/broadcast/x-proc/events/big", t.url),
            &[
                ("apikey", ANON_KEY),
                ("content-type", "application/octet-stream"),
            ],
            big.clone(),
        )
        .await;
    assert_eq!(r.status, 202);
    let In::Bin(b) = on_other.recv().await else {
        panic!()
    };
    assert!(b.ends_with(&big));
    other.shutdown().await;
}

#[tokio::test]
async fn postgres_changes_need_the_select_privilege() {
    let t = TestServer::start().await;
    t.batch(
        "create table public.secrets (id int primary key, v text);
         revoke all on public.secrets from anon;
         alter publication supabase_realtime add table public.secrets;",
    )
    .await;
    let cfg =
        json!({"config":{"postgres_changes":[{"event":"*","schema":"public","table":"secrets"}]}});
    let mut anon = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let mut svc = Client::connect(&t, SERVICE_KEY, "1.0.0").await;
    assert_eq!(anon.join("realtime:s", cfg.clone()).await["status"], "ok");
    assert_eq!(svc.join("realtime:s", cfg).await["status"], "ok");
    t.batch("insert into public.secrets values (1, 'x'); delete from public.secrets;")
        .await;
    let (_, p, _) = svc.expect_event("postgres_changes").await;
    assert_eq!(p["data"]["record"], json!({"id": 1, "v": "x"}));
    let (_, p, _) = svc.expect_event("postgres_changes").await;
    assert_eq!(p["data"]["type"], "DELETE");
    // Without RLS and with replica identity default, the old record is the key.
    assert_eq!(p["data"]["old_record"], json!({"id": 1}));
    let (_, sys, _) = anon.expect_event("system").await;
    assert_eq!(sys["status"], "ok");
    anon.silent(500).await;
}

#[tokio::test]
async fn a_socket_joins_at_most_100_channels() {
    let t = TestServer::start().await;
    let mut c = Client::connect(&t, ANON_KEY, "2.0.0").await;
    for i in 0..100 {
        let p = c
            .join(&format!("realtime:c{i}"), json!({"config":{}}))
            .await;
        assert_eq!(p["status"], "ok");
    }
    let p = c.join("realtime:one-more", json!({"config":{}})).await;
    assert_eq!(
        p["response"]["reason"],
        "ChannelRateLimitReached: Too many channels"
    );
    // Rejoining a joined topic is still fine (the old channel is closed first).
    let p = c.join("realtime:c5", json!({"config":{}})).await;
    assert_eq!(p["status"], "ok");
}

#[tokio::test]
async fn broadcast_from_the_database_and_replay() {
    let t = TestServer::start().await;
    let mut v2 = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let mut v1 = Client::connect(&t, ANON_KEY, "1.0.0").await;
    v2.join("realtime:db-pub", json!({"config":{}})).await;
    v1.join("realtime:db-pub", json!({"config":{}})).await;
    let mut svc = Client::connect(&t, SERVICE_KEY, "2.0.0").await;
    svc.join("realtime:db-priv", json!({"config":{"private":true}}))
        .await;

    t.batch("select realtime.send('{\"n\":1}', 'ev', 'db-pub', false)")
        .await;
    let In::Bin(b) = v2.recv().await else {
        panic!()
    };
    let (tl, el, ml) = (b[1] as usize, b[2] as usize, b[3] as usize);
    assert_eq!(&b[5..5 + tl], b"realtime:db-pub");
    assert_eq!(&b[5 + tl..5 + tl + el], b"ev");
    let meta: Value = serde_json::from_slice(&b[5 + tl + el..5 + tl + el + ml]).unwrap();
    assert!(meta["id"].is_string());
    let payload: Value = serde_json::from_slice(&b[5 + tl + el + ml..]).unwrap();
    assert_eq!(payload["n"], 1);
    assert_eq!(payload["id"], meta["id"]);
    let (_, p, _) = v1.expect_event("broadcast").await;
    assert_eq!(p["event"], "ev");
    assert_eq!(p["payload"]["n"], 1);
    assert_eq!(p["meta"]["id"], meta["id"]);
    // Rolled back: nothing is delivered. Private by default: not on the public topic.
    t.batch("begin; select realtime.send('{}', 'gone', 'db-pub', false); rollback;")
        .await;
    t.batch("select realtime.send('{\"secret\":true}', 'ev', 'db-pub')")
        .await;
    v2.silent(300).await;

    // broadcast_changes from a trigger, to a private topic.
    t.batch(
        "create table public.items (id int primary key, name text);
         create function public.items_bc() returns trigger language plpgsql as $$
         begin
           perform realtime.broadcast_changes('db-priv', tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
           return null;
         end $$;
         create trigger items_bc after insert or update or delete on public.items
           for each row execute function public.items_bc();
         insert into public.items values (1, 'one');",
    )
    .await;
    let In::Bin(b) = svc.recv().await else {
        panic!()
    };
    let (tl, el, ml) = (b[1] as usize, b[2] as usize, b[3] as usize);
    assert_eq!(&b[5 + tl..5 + tl + el], b"INSERT");
    let payload: Value = serde_json::from_slice(&b[5 + tl + el + ml..]).unwrap();
    assert_eq!(payload["record"], json!({"id": 1, "name": "one"}));
    assert_eq!(payload["old_record"], Value::Null);
    assert_eq!(payload["operation"], "INSERT");
    assert_eq!(payload["table"], "items");

    // Replay: the stored private messages of a topic, oldest first, marked as replayed.
    let mut late = Client::connect(&t, SERVICE_KEY, "1.0.0").await;
    let p = late
        .join(
            "realtime:db-priv",
            json!({"config":{"private":true,"broadcast":{"replay":{"since":0,"limit":10}}}}),
        )
        .await;
    assert_eq!(p["status"], "ok");
    let (_, m, _) = late.expect_event("broadcast").await;
    assert_eq!(m["event"], "INSERT");
    assert_eq!(m["meta"]["replayed"], true);
    assert_eq!(m["payload"]["record"]["name"], "one");
    let p = late
        .join(
            "realtime:db-pub",
            json!({"config":{"broadcast":{"replay":{"since":0}}}}),
        )
        .await;
    assert_eq!(
        p["response"]["reason"],
        "UnableToReplayMessages: Replay is not allowed for public channels"
    );
    let p = late
        .join(
            "realtime:x",
            json!({"config":{"private":true,"broadcast":{"replay":{"since":"yesterday"}}}}),
        )
        .await;
    assert_eq!(
        p["response"]["reason"],
        "UnableToReplayMessages: Replay params are not valid"
    );
}

/// A table without RLS: every subscriber whose role may SELECT it gets every change, even
/// when the row is gone by the time the change is read (the row is not read back).
#[tokio::test]
async fn changes_on_tables_without_rls_are_not_lost_when_the_row_goes_at_once() {
    let t = TestServer::start().await;
    t.batch(
        "create table public.open_notes (id int primary key, v text);
         alter publication supabase_realtime add table public.open_notes;",
    )
    .await;
    let tok = mint(json!({"role":"authenticated","sub":uuid::Uuid::new_v4(),"exp":now()+600}));
    let mut c = Client::connect(&t, ANON_KEY, "2.0.0").await;
    let cfg = json!({"config":{"postgres_changes":[{"event":"*","schema":"public","table":"open_notes"}]},"access_token":tok});
    assert_eq!(c.join("realtime:open", cfg).await["status"], "ok");
    let (_, sys, _) = c.expect_event("system").await;
    assert_eq!(sys["status"], "ok");
    // One transaction: by the time the capture reads the insert and the update, the row is
    // already deleted.
    t.batch(
        "begin;
         insert into public.open_notes values (1, 'a');
         update public.open_notes set v = 'b' where id = 1;
         delete from public.open_notes where id = 1;
         commit;",
    )
    .await;
    let mut kinds = vec![];
    for _ in 0..3 {
        let (_, p, _) = c.expect_event("postgres_changes").await;
        kinds.push(p["data"]["type"].as_str().unwrap().to_string());
        if p["data"]["type"] != "DELETE" {
            assert_eq!(p["data"]["record"]["id"], 1, "{p}");
        }
    }
    assert_eq!(kinds, ["INSERT", "UPDATE", "DELETE"]);
}

/// Under RLS, one round trip decides a change for every distinct subscriber, and one
/// subscriber whose policy fails loses only their own events.
#[tokio::test]
async fn rls_is_checked_once_per_change_for_all_subscribers_and_one_failing_check_is_isolated() {
    let t = TestServer::start().await;
    let bad = uuid::Uuid::new_v4();
    t.batch(&format!(
        "create table public.board (id int primary key, v text);
         alter table public.board enable row level security;
         create policy readable on public.board for select to authenticated
           using (case when auth.uid() = '{bad}' then v::int = 1 else true end);
         alter publication supabase_realtime add table public.board;"
    ))
    .await;
    let cfg = |tok: &str| json!({"config":{"postgres_changes":[{"event":"INSERT","schema":"public","table":"board"}]},"access_token":tok});
    let mut users = vec![];
    for i in 0..12 {
        let sub = if i == 5 { bad } else { uuid::Uuid::new_v4() };
        let tok = mint(json!({"role":"authenticated","sub":sub,"exp":now()+600}));
        let mut c = Client::connect(&t, ANON_KEY, "2.0.0").await;
        assert_eq!(c.join("realtime:board", cfg(&tok)).await["status"], "ok");
        let (_, sys, _) = c.expect_event("system").await;
        assert_eq!(sys["status"], "ok");
        users.push(c);
    }
    let before = t
        .server
        .state
        .realtime
        .rls_round_trips
        .load(std::sync::atomic::Ordering::Relaxed);
    t.batch("insert into public.board values (1, 'x'); insert into public.board values (2, 'y');")
        .await;
    for (i, c) in users.iter_mut().enumerate() {
        if i == 5 {
            continue;
        }
        for id in [1, 2] {
            let (_, p, _) = c.expect_event("postgres_changes").await;
            assert_eq!(p["data"]["record"]["id"], id, "user {i}: {p}");
        }
    }
    users[5].silent(300).await;
    let after = t
        .server
        .state
        .realtime
        .rls_round_trips
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        after - before,
        1,
        "one visibility round trip for the transaction's two changes"
    );
}

/// The visibility check reads each changed row through the primary key, under RLS, however
/// large the table: no scan of the table, whatever its policy (a leaky cast once kept the key
/// comparison behind the policy's filter, and every check scanned the subscriber's rows).
#[tokio::test]
async fn the_rls_check_reads_rows_by_primary_key() {
    let t = TestServer::start().await;
    let owner = uuid::Uuid::new_v4();
    t.batch(&format!(
        "create table public.ledger (id uuid primary key, owner uuid not null, v text);
         alter table public.ledger enable row level security;
         create policy mine on public.ledger for select to authenticated
           using (owner = (select auth.uid()));
         insert into public.ledger
           select gen_random_uuid(), case when g % 2 = 0 then '{owner}'::uuid else gen_random_uuid() end, 'v'
             from generate_series(1, 5000) g;
         insert into public.ledger values ('00000000-0000-0000-0000-00000000000a', '{owner}', 'mine'),
                                          ('00000000-0000-0000-0000-00000000000b', gen_random_uuid(), 'theirs');
         analyze public.ledger;"
    ))
    .await;
    let claims = json!({"sub": owner, "role": "authenticated"}).to_string();
    // One transaction: the function's answers, then what it read (this transaction's counts).
    t.batch(&format!(
        "do $$
         declare
           answers boolean[];
           seq bigint;
           idx bigint;
         begin
           answers := realtime.oxibase_rows_visible_many('public.ledger'::regclass, '{{id}}', '{{uuid}}',
             array['00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-00000000000b',
                   '00000000-0000-0000-0000-00000000000c'],
             array['authenticated', 'anon'], array['{claims}', '{{\"role\":\"anon\"}}'],
             'GET', '/realtime/v1', '{{}}');
           if answers <> array[true, false, false, false, false, false] then
             raise exception 'wrong answers: %', answers;
           end if;
           select seq_scan, idx_scan into seq, idx from pg_stat_xact_user_tables
            where relid = 'public.ledger'::regclass;
           if seq <> 0 or idx < 3 then
             raise exception 'the check scanned the table: seq_scan %, idx_scan %', seq, idx;
           end if;
         end $$;"
    ))
    .await;
}
