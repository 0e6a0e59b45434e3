//! A socket that cannot keep up: its queue overflows, it gets a `system` error on each
//! channel and is closed with 1013 (the client reconnects and rejoins); a socket on the same
//! topic that keeps up misses nothing, and the drops are counted.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{TestServer, SERVICE_KEY};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A vsn 1.0.0 socket joined to broadcasts on `topic`; `rcvbuf` shrinks its TCP receive
/// buffer (a client that reads slowly fills the server's queue sooner).
async fn join(t: &TestServer, topic: &str, rcvbuf: Option<u32>) -> Ws {
    let addr: std::net::SocketAddr = t.url.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).unwrap();
    }
    let stream = sock.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/realtime/v1/websocket?apikey={SERVICE_KEY}&vsn=1.0.0");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("ws");
    let join = json!({"join_ref": "1", "ref": "1", "topic": format!("realtime:{topic}"),
        "event": "phx_join", "payload": {"config": {}, "access_token": SERVICE_KEY}});
    ws.send(Message::Text(join.to_string())).await.unwrap();
    loop {
        let m = next(&mut ws).await;
        if m["event"] == "phx_reply" {
            assert_eq!(m["payload"]["status"], "ok", "{m}");
            return ws;
        }
    }
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no message: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_socket_that_cannot_keep_up_is_told_and_closed_and_nobody_else_loses() {
    let t = TestServer::start().await;
    let mut slow = join(&t, "flood", Some(4096)).await;
    let mut fast = join(&t, "flood", None).await;
    let filler = "x".repeat(4096);
    let (rounds, per) = (25, 100);
    for round in 0..rounds {
        let messages: Vec<Value> = (0..per)
            .map(|i| {
                json!({"topic": "flood", "event": "e",
                            "payload": {"n": round * per + i, "filler": filler}})
            })
            .collect();
        let r = t
            .http
            .send(
                "POST",
                &format!("{}/realtime/v1/api/broadcast", t.url),
                &[
                    ("apikey", SERVICE_KEY),
                    ("content-type", "application/json"),
                ],
                json!({ "messages": messages }).to_string(),
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        // The fast socket takes each round before the next one is sent: it never has more
        // than one round queued.
        for i in 0..per {
            let m = next(&mut fast).await;
            assert_eq!(m["event"], "broadcast", "{m}");
            assert_eq!(m["payload"]["payload"]["n"], round * per + i);
        }
    }
    let dropped = t
        .server
        .state
        .realtime
        .hub
        .counters
        .dropped
        .load(Ordering::Relaxed);
    assert!(dropped > 0, "the slow socket's queue overflowed");
    // The slow socket, read at last: what it had, then the error, then the close.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut got, mut system) = (0, None);
    let close = loop {
        assert!(
            Instant::now() < deadline,
            "the slow socket was never closed"
        );
        match tokio::time::timeout(Duration::from_secs(20), slow.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                match m["event"].as_str() {
                    Some("broadcast") => got += 1,
                    Some("system") => system = Some(m),
                    _ => {}
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => break c,
            Ok(Some(Ok(_))) => {}
            other => panic!("slow socket: {other:?} after {got} broadcasts"),
        }
    };
    assert!(
        got < rounds * per,
        "the slow socket cannot have taken everything"
    );
    let system = system.expect("a system message before the close");
    assert_eq!(system["topic"], "realtime:flood");
    assert_eq!(system["payload"]["status"], "error", "{system}");
    assert!(
        system["payload"]["message"]
            .as_str()
            .unwrap()
            .starts_with("ClientTooSlow"),
        "{system}"
    );
    assert_eq!(close.expect("a close frame").code, CloseCode::Again);
    let closes = t
        .server
        .state
        .realtime
        .hub
        .counters
        .overflow_closes
        .load(Ordering::Relaxed);
    assert_eq!(closes, 1);
    let m = t
        .http
        .get(&format!("{}/metrics", t.url), &[("apikey", SERVICE_KEY)])
        .await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    let series = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        series("oxibase_realtime_messages_total{direction=\"dropped\"}"),
        dropped as f64
    );
    assert!(series("oxibase_realtime_messages_total{direction=\"out\"}") >= 2500.0);
    assert!(series("oxibase_realtime_messages_total{direction=\"in\"}") >= 2.0);
    assert_eq!(series("oxibase_realtime_overflow_closes_total"), 1.0);
    assert_eq!(series("oxibase_realtime_capture_lag_bytes"), 0.0);
    // The fast socket is still there.
    fast.send(Message::Text(
        json!({"ref": "hb", "topic": "phoenix", "event": "heartbeat", "payload": {}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut fast).await["payload"]["status"], "ok");
}
