//! websocket-handler over a real WebSocket client: the handshake's auth and errors, joins
//! decided by RLS, presence, typing, messages (over the socket, REST and SQL) delivered once
//! to the sockets whose user may read them, bad frames, user_sessions bookkeeping, the sweep
//! of stopped servers' sessions, and two processes sharing one database.

use crate::common;

use std::time::Duration;

use common::{TestServer, ANON_KEY};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A conversation owned by `owner`, readable also by `members` (see [`share_policies`]).
async fn conversation(t: &TestServer, owner: &str, members: &[&str]) -> String {
    let m = serde_json::to_string(&json!({ "members": members })).unwrap();
    let rows = t
        .sql(&format!(
            "insert into public.conversations (user_id, title, metadata) values ('{owner}', 'c', '{m}') returning id::text"
        ))
        .await;
    rows[0].get(0)
}

/// The app shares nothing between users; these test policies let `metadata.members` read a
/// conversation and read and post its messages.
async fn share_policies(t: &TestServer) {
    t.batch(
        "create policy t_conv_members on public.conversations for select to authenticated
           using (metadata->'members' ? (select auth.uid())::text);
         create policy t_msg_members_select on public.messages for select to authenticated
           using (exists (select 1 from public.conversations c where c.id = conversation_id
                          and c.metadata->'members' ? (select auth.uid())::text));
         create policy t_msg_members_insert on public.messages for insert to authenticated
           with check (user_id = (select auth.uid()) and exists (
             select 1 from public.conversations c where c.id = conversation_id
              and c.metadata->'members' ? (select auth.uid())::text));",
    )
    .await;
}

fn ws_url(base: &str, query: &str) -> String {
    format!(
        "{}/functions/v1/websocket-handler{query}",
        base.replace("http://", "ws://")
    )
}

struct Client {
    ws: Ws,
}

impl Client {
    async fn connect_to(base: &str, token: &str) -> Client {
        let (ws, resp) = tokio_tungstenite::connect_async(ws_url(base, &format!("?token={token}")))
            .await
            .expect("ws connects");
        assert_eq!(resp.status(), 101);
        Client { ws }
    }

    async fn connect(t: &TestServer, token: &str) -> Client {
        Self::connect_to(&t.url, token).await
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string())).await.unwrap();
    }

    /// The next JSON frame (pings and pongs skipped); panics after 5 s.
    async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("a frame within 5 s")
                .expect("socket open")
                .expect("no socket error");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn expect(&mut self, ty: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], ty, "got {v}");
        v
    }

    /// No JSON frame arrives within `ms`.
    async fn silent(&mut self, ms: u64) {
        let r = tokio::time::timeout(Duration::from_millis(ms), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return t,
                    Some(Ok(_)) => continue,
                    other => return format!("{other:?}"),
                }
            }
        })
        .await;
        if let Ok(t) = r {
            panic!("expected silence, got {t}");
        }
    }

    async fn join(&mut self, conv: &str) -> Value {
        self.send(json!({"type": "join", "conversation_id": conv}))
            .await;
        self.next().await
    }
}

fn users(v: &Value) -> Vec<String> {
    let mut u: Vec<String> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    u.sort();
    u
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Poll `q` (one text cell) until it equals `want`.
async fn eventually(t: &TestServer, q: &str, want: &str) {
    let mut last = String::new();
    for _ in 0..50 {
        let rows = t.sql(q).await;
        last = rows
            .first()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .unwrap_or_default();
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{q}: wanted {want}, last {last}");
}

#[tokio::test]
async fn handshake_needs_a_user_and_an_upgrade() {
    let t = TestServer::start().await;
    let (id, token) = t.user().await;
    // A plain GET: 426 in the functions' error shape.
    let auth = format!("Bearer {token}");
    let r = t
        .http
        .send(
            "GET",
            &format!("{}/functions/v1/websocket-handler", t.url),
            &[("apikey", ANON_KEY), ("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(r.status, 426);
    assert_eq!(r.json()["error"]["code"], "upgrade_required");
    // No token, the anon key, or a bad token: 401 before any upgrade.
    for q in [
        String::new(),
        format!("?apikey={ANON_KEY}"),
        "?token=not-a-jwt".to_string(),
    ] {
        let e = tokio_tungstenite::connect_async(ws_url(&t.url, &q))
            .await
            .expect_err("refused");
        let tokio_tungstenite::tungstenite::Error::Http(resp) = e else {
            panic!("{e:?}")
        };
        assert_eq!(resp.status(), 401, "{q}");
        let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // The token as a query parameter works; the session row exists once 101 is seen.
    let mut c = Client::connect(&t, &token).await;
    let rows = t
        .sql(&format!(
            "select status, user_agent is not null, disconnected_at is null, server_id is not null
               from public.user_sessions where user_id = '{id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "online");
    assert!(rows[0].get::<_, bool>(2));
    assert!(rows[0].get::<_, bool>(3));
    c.send(json!({"type": "ping"})).await;
    c.expect("pong").await;
    eventually(
        &t,
        &format!(
            "select string_agg(status_code::text, ',' order by id) from public.api_usage
              where user_id = '{id}' and endpoint = 'websocket-handler'"
        ),
        "426,101",
    )
    .await;
    // Closing the socket closes the session.
    c.ws.close(None).await.unwrap();
    eventually(
        &t,
        &format!(
            "select status || (disconnected_at is not null)::text from public.user_sessions
              where user_id = '{id}'"
        ),
        "offlinetrue",
    )
    .await;
}

#[tokio::test]
async fn joins_follow_rls_and_bad_frames_get_error_frames() {
    let t = TestServer::start().await;
    let (alice, ta) = t.user().await;
    let (_bob, tb) = t.user().await;
    let conv = conversation(&t, &alice, &[]).await;
    let mut a = Client::connect(&t, &ta).await;
    let mut b = Client::connect(&t, &tb).await;
    let j = a.join(&conv).await;
    assert_eq!(j["type"], "joined");
    assert_eq!(j["conversation_id"], conv.as_str());
    assert_eq!(users(&j), vec![alice.clone()]);
    // Joining twice answers joined again.
    assert_eq!(a.join(&conv).await["type"], "joined");
    // Bob may not read Alice's conversation, nor one that does not exist.
    let e = b.join(&conv).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let e = b.join(&uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(e["code"], "forbidden");
    // Nor post into it (RLS on insert), nor type or leave without joining.
    b.send(json!({"type": "message", "conversation_id": conv, "content": "hi"}))
        .await;
    assert_eq!(b.expect("error").await["code"], "forbidden");
    b.send(json!({"type": "typing", "conversation_id": conv, "is_typing": true}))
        .await;
    assert_eq!(b.expect("error").await["code"], "not_joined");
    b.send(json!({"type": "leave", "conversation_id": conv}))
        .await;
    assert_eq!(b.expect("error").await["code"], "not_joined");
    // Bad frames: an error frame each, and the socket stays usable.
    for (frame, code) in [
        ("{not json", "invalid_json"),
        ("42", "invalid_request"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"type":"join"}"#, "invalid_request"),
        (
            r#"{"type":"join","conversation_id":"x"}"#,
            "invalid_request",
        ),
        (
            r#"{"type":"message","conversation_id":"6f1c1a2e-0b7e-4f35-9d8c-0d7f5b0e8a11"}"#,
            "invalid_request",
        ),
    ] {
        b.ws.send(Message::Text(frame.into())).await.unwrap();
        let e = b.expect("error").await;
        assert_eq!(e["code"], code, "{frame}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    b.ws.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(b.expect("error").await["code"], "invalid_frame");
    b.send(json!({"type": "ping"})).await;
    b.expect("pong").await;
    // Nothing of this reached Alice.
    a.silent(300).await;
    // An oversize frame: an error frame, then the socket is closed.
    let big = "x".repeat(100 * 1024);
    b.send(json!({"type": "message", "conversation_id": conv, "content": big}))
        .await;
    assert_eq!(b.expect("error").await["code"], "payload_too_large");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match b.ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, Some(1009));
    // The server is fine: Alice's socket still answers.
    a.send(json!({"type": "ping"})).await;
    a.expect("pong").await;
}

#[tokio::test]
async fn presence_typing_and_messages_reach_the_right_sockets_once() {
    let t = TestServer::start().await;
    share_policies(&t).await;
    let (alice, ta) = t.user().await;
    let (bob, tb) = t.user().await;
    let (carol, tc) = t.user().await;
    let conv = conversation(&t, &alice, &[&bob]).await;
    let carols = conversation(&t, &carol, &[]).await;
    let mut a = Client::connect(&t, &ta).await;
    let mut b = Client::connect(&t, &tb).await;
    let mut c = Client::connect(&t, &tc).await;
    assert_eq!(users(&a.join(&conv).await), vec![alice.clone()]);
    let j = b.join(&conv).await;
    assert_eq!(j["type"], "joined");
    assert_eq!(users(&j), sorted(&[&alice, &bob]));
    let p = a.expect("presence").await;
    assert_eq!(p["conversation_id"], conv.as_str());
    assert_eq!(users(&p), sorted(&[&alice, &bob]));
    assert_eq!(c.join(&carols).await["type"], "joined");
    assert_eq!(c.join(&conv).await["code"], "forbidden");

    // Typing goes to the others only.
    b.send(json!({"type": "typing", "conversation_id": conv, "is_typing": true}))
        .await;
    let ty = a.expect("typing").await;
    assert_eq!(
        ty,
        json!({"type": "typing", "conversation_id": conv, "user_id": bob, "is_typing": true})
    );
    b.silent(200).await;

    // A message over the socket: stored as Alice, delivered once to both sockets.
    a.send(json!({"type": "message", "conversation_id": conv, "content": "hello bob"}))
        .await;
    let ma = a.expect("message").await;
    let mb = b.expect("message").await;
    assert_eq!(ma, mb);
    let m = &ma["message"];
    assert_eq!(m["content"], "hello bob");
    assert_eq!(m["role"], "user");
    assert_eq!(m["user_id"], alice.as_str());
    assert_eq!(m["conversation_id"], conv.as_str());
    assert!(m["created_at"].as_str().is_some_and(|s| s.contains('T')));
    let stored = t
        .sql(&format!(
            "select count(*)::text from public.messages where id = '{}' and content = 'hello bob'",
            m["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stored[0].get::<_, String>(0), "1");

    // A row from REST (as Bob) and one from SQL reach both sockets too.
    let auth = format!("Bearer {tb}");
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/rest/v1/messages", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({"conversation_id": conv, "role": "user", "content": "via rest"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for s in [&mut a, &mut b] {
        let m = s.expect("message").await;
        assert_eq!(m["message"]["content"], "via rest");
        assert_eq!(m["message"]["user_id"], bob.as_str());
    }
    t.batch(&format!(
        "insert into public.messages (conversation_id, user_id, role, content) values ('{conv}', '{alice}', 'assistant', 'via sql')"
    ))
    .await;
    for s in [&mut a, &mut b] {
        let m = s.expect("message").await;
        assert_eq!(m["message"]["content"], "via sql");
        assert_eq!(m["message"]["role"], "assistant");
    }
    // Nothing twice, and nothing for Carol.
    a.silent(300).await;
    b.silent(10).await;
    c.silent(10).await;

    // Bob loses access: the next row reaches Alice only (each delivery is checked by RLS).
    t.batch(&format!(
        "update public.conversations set metadata = '{{}}' where id = '{conv}'"
    ))
    .await;
    t.batch(&format!(
        "insert into public.messages (conversation_id, user_id, role, content) values ('{conv}', '{alice}', 'user', 'private now')"
    ))
    .await;
    assert_eq!(
        a.expect("message").await["message"]["content"],
        "private now"
    );
    b.silent(500).await;
    t.batch(&format!(
        "update public.conversations set metadata = '{{\"members\":[\"{bob}\"]}}' where id = '{conv}'"
    ))
    .await;

    // Leave, rejoin, disconnect: Alice sees the user list change each time.
    // Bob was still typing: leaving tells Alice he stopped.
    b.send(json!({"type": "leave", "conversation_id": conv}))
        .await;
    let ty = a.expect("typing").await;
    assert_eq!(
        (ty["user_id"].as_str(), ty["is_typing"].as_bool()),
        (Some(bob.as_str()), Some(false))
    );
    assert_eq!(users(&a.expect("presence").await), vec![alice.clone()]);
    // After leaving, Bob gets nothing from the conversation.
    a.send(json!({"type": "typing", "conversation_id": conv, "is_typing": false}))
        .await;
    b.silent(300).await;
    assert_eq!(users(&b.join(&conv).await), sorted(&[&alice, &bob]));
    assert_eq!(users(&a.expect("presence").await), sorted(&[&alice, &bob]));
    b.send(json!({"type": "typing", "conversation_id": conv, "is_typing": true}))
        .await;
    assert_eq!(a.expect("typing").await["is_typing"], true);
    // Disconnecting while typing: typing stops, then Bob leaves the user list.
    b.ws.close(None).await.unwrap();
    assert_eq!(a.expect("typing").await["is_typing"], false);
    assert_eq!(users(&a.expect("presence").await), vec![alice.clone()]);
    // A second socket of Alice's does not change the user list: no presence frame.
    let mut a2 = Client::connect(&t, &ta).await;
    assert_eq!(users(&a2.join(&conv).await), vec![alice.clone()]);
    a.silent(300).await;
}

#[tokio::test]
async fn stale_sessions_are_closed_at_start_and_processes_share_conversations() {
    let t = TestServer::start().await;
    share_policies(&t).await;
    let (alice, ta) = t.user().await;
    let (bob, tb) = t.user().await;
    let conv = conversation(&t, &alice, &[&bob]).await;
    let mut a = Client::connect(&t, &ta).await;
    assert_eq!(a.join(&conv).await["type"], "joined");
    // Sessions left open by servers that are gone (an id nobody holds, and no id at all).
    t.batch(&format!(
        "insert into public.user_sessions (user_id, status, connected_at, last_seen_at, server_id)
           values ('{bob}', 'online', now() - interval '1 hour', now() - interval '50 minutes', 42),
                  ('{bob}', 'online', now() - interval '2 hours', now() - interval '2 hours', null)"
    ))
    .await;
    // A second oxibase on the same database.
    let dir = tempfile::tempdir().unwrap();
    let cfg = oxibase::Config {
        port: 0,
        bind: vec!["127.0.0.1".into()],
        data_dir: dir.path().to_path_buf(),
        database_url: Some(oxibase::config::Secret(t.db_url.clone())),
        db_pool_size: 4,
        ..Default::default()
    };
    let other = oxibase::Server::start(cfg, std::sync::Arc::new(|_: &str| {}))
        .await
        .unwrap();
    let other_url = format!("http://127.0.0.1:{}", other.port());
    // Its start closed the stale sessions (at their last sign of life), not Alice's live one.
    eventually(
        &t,
        &format!(
            "select string_agg(status, ',' order by connected_at) from public.user_sessions
              where user_id = '{bob}' and disconnected_at = last_seen_at"
        ),
        "offline,offline",
    )
    .await;
    let live = t
        .sql(&format!(
            "select status from public.user_sessions where user_id = '{alice}'"
        ))
        .await;
    assert_eq!(live[0].get::<_, String>(0), "online");

    // Bob on the other process: messages cross through each process's change capture,
    // presence and typing through the realtime fan-out.
    let mut b = Client::connect_to(&other_url, &tb).await;
    let j = b.join(&conv).await;
    assert_eq!(j["type"], "joined");
    b.send(json!({"type": "message", "conversation_id": conv, "content": "from b"}))
        .await;
    assert_eq!(b.expect("message").await["message"]["content"], "from b");
    // Alice may first see Bob arrive (the fan-out's presence), then the message.
    let mut saw_presence = false;
    loop {
        let f = a.next().await;
        match f["type"].as_str() {
            Some("presence") => {
                assert_eq!(users(&f), sorted(&[&alice, &bob]));
                saw_presence = true;
            }
            Some("message") => {
                assert_eq!(f["message"]["content"], "from b");
                break;
            }
            _ => panic!("{f}"),
        }
    }
    if !saw_presence {
        let p = a.expect("presence").await;
        assert_eq!(users(&p), sorted(&[&alice, &bob]));
    }
    b.send(json!({"type": "typing", "conversation_id": conv, "is_typing": true}))
        .await;
    let ty = a.expect("typing").await;
    assert_eq!(ty["user_id"], bob.as_str());
    a.silent(300).await;
    b.silent(10).await;
    // Stopping the other process closes its socket and its session rows.
    other.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match b.ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, Some(1001));
    eventually(
        &t,
        &format!(
            "select string_agg(status, ',') from public.user_sessions
              where user_id = '{bob}' and server_id is not null and server_id <> 42"
        ),
        "offline",
    )
    .await;
}

#[tokio::test]
async fn limits_expiry_and_rate() {
    let t = TestServer::start().await;
    let (alice, ta) = t.user().await;
    let conv = conversation(&t, &alice, &[]).await;
    let mut a = Client::connect(&t, &ta).await;
    assert_eq!(a.join(&conv).await["type"], "joined");
    // Content over 32 KiB (inside one frame) is refused and nothing is stored.
    let long = "y".repeat(40 * 1024);
    a.send(json!({"type": "message", "conversation_id": conv, "content": long}))
        .await;
    assert_eq!(a.expect("error").await["code"], "payload_too_large");
    // A burst over 50 frames a second: the excess is refused, the socket stays open.
    for _ in 0..60 {
        a.send(json!({"type": "ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..60 {
        match a.next().await["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        pongs <= 50 && limited >= 10,
        "{pongs} pongs, {limited} refusals"
    );
    let n = t
        .sql(&format!(
            "select count(*)::text from public.messages where conversation_id = '{conv}'"
        ))
        .await;
    assert_eq!(n[0].get::<_, String>(0), "0");

    // A token that expires while connected: an error frame, then close 1008.
    let short = t.server.state.keys.jwt.sign_hs256(&json!({
        "sub": alice, "role": "authenticated", "aud": "authenticated",
        "exp": chrono::Utc::now().timestamp() + 2,
    }));
    let mut s = Client::connect(&t, &short).await;
    assert_eq!(s.join(&conv).await["type"], "joined");
    let e = tokio::time::timeout(Duration::from_secs(6), s.next())
        .await
        .unwrap();
    assert_eq!(e["code"], "token_expired");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, Some(1008));
    // An expired token cannot connect at all.
    let e = tokio_tungstenite::connect_async(ws_url(&t.url, &format!("?token={short}")))
        .await
        .expect_err("refused");
    assert!(matches!(e, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401));
}

#[tokio::test]
async fn keepalive_pings_and_idle_timeout() {
    let t = TestServer::start().await;
    let ws = &t.server.state.functions.ws;
    ws.ping_every_ms
        .store(200, std::sync::atomic::Ordering::Relaxed);
    ws.idle_timeout_ms
        .store(1500, std::sync::atomic::Ordering::Relaxed);
    let (id, token) = t.user().await;
    let mut c = Client::connect(&t, &token).await;
    // The server pings; a client that reads answers by itself and stays connected.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, c.ws.next()).await {
            assert!(matches!(m, Message::Ping(_)), "{m:?}");
            pings += 1;
        }
    }
    assert!(pings >= 3, "{pings} pings");
    // A client that stops reading (so it sends no pongs) is dropped after the idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The server sent its close frame and hung up; the client sees the frame, or fails
    // first writing its queued pongs to the closed connection.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Close(f))) => {
                    return format!("{:?}", f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return format!("error: {e}"),
                None => return "ended".into(),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        end == r#"Some((1001, "idle timeout"))"# || end.starts_with("error: IO error"),
        "{end}"
    );
    eventually(
        &t,
        &format!("select status from public.user_sessions where user_id = '{id}'"),
        "offline",
    )
    .await;
}
