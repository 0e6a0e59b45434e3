//! Connection floods against the real binary: idle sockets that never finish their header,
//! past the process's descriptor limit, must not lock other users out; one client's sockets
//! are capped; slow headers and idle keep-alive connections are closed, WebSockets are not;
//! shutdown still drains.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::spawned::{Http, Opts, Spawned};
use common::{ANON_KEY, SERVICE_KEY};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn connect_from(local: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(local, 0))?;
    s.connect(SocketAddr::new(ip("127.0.0.1"), port)).await
}

/// A socket that sends half a request header and then nothing.
async fn slowloris(port: u16) -> Option<TcpStream> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), connect_from(ip("127.0.0.1"), port))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET /rest/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nx-slow: ")
        .await
        .ok()?;
    Some(s)
}

/// Whether the server closed `s` (end of stream or reset), reading whatever it sent first.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// GET /rest/v1/ as anon from `local` until a 2xx, each try bounded; how long it took.
async fn served_within(url: &str, local: IpAddr, within: Duration) -> Option<Duration> {
    let http = Http::new(Some(local));
    let start = Instant::now();
    while start.elapsed() < within {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            http.get(
                &format!("{url}/rest/v1/"),
                &[
                    ("apikey", ANON_KEY),
                    ("authorization", &format!("Bearer {ANON_KEY}")),
                ],
            ),
        )
        .await;
        if let Ok(Ok(r)) = r {
            if (200..300).contains(&r.status) {
                return Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// 300 half-open requests against a server whose hard descriptor limit is 256, default
/// config: users (same IP and another) are still served within seconds, and every slow
/// socket is closed by the server (header timeout: 10 s by default). Before: the process
/// ran out of descriptors (`accept failed: Too many open files` every 50 ms) and nobody was
/// served until hyper's 30 s header timeout freed some.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_flood_past_the_descriptor_limit_does_not_lock_users_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Spawned::start(
        dir.path(),
        &Opts {
            nofile: Some(256),
            ..Opts::default()
        },
    )
    .await;
    let flood_start = Instant::now();
    let mut flood = vec![];
    for _ in 0..300 {
        if let Some(s) = slowloris(srv.port).await {
            flood.push(s);
        }
    }
    assert!(flood.len() >= 256, "only {} sockets opened", flood.len());
    // Give the server time to take them all in (and, before the fix, to run out).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let other = served_within(&srv.url, ip("127.0.0.2"), Duration::from_secs(8)).await;
    assert!(
        other.is_some(),
        "another client was locked out:\n{}",
        tail(&srv)
    );
    let same = served_within(&srv.url, ip("127.0.0.1"), Duration::from_secs(8)).await;
    assert!(
        same.is_some(),
        "the flooding IP's next request was locked out"
    );

    // Every slow socket is closed by the server: refused, evicted or timed out.
    let deadline = flood_start + Duration::from_secs(20);
    let mut open = 0;
    for s in flood.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !closed_by_server(s, left.max(Duration::from_millis(10))).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "slow sockets still open after 20 s");
    // And it still serves.
    assert!(
        served_within(&srv.url, ip("127.0.0.1"), Duration::from_secs(5))
            .await
            .is_some()
    );
    let logs = srv.logs();
    assert!(
        !logs.contains("Too many open files"),
        "the process ran out of descriptors:\n{}",
        tail(&srv)
    );
    assert!(srv.stop(Duration::from_secs(30)), "graceful stop");
}

fn tail(srv: &Spawned) -> String {
    let l = srv.logs();
    let lines: Vec<&str> = l.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn heartbeat(ws: &mut Ws, r: u32) {
    let msg = serde_json::json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": r.to_string()});
    ws.send(Message::Text(msg.to_string())).await.unwrap();
    let want = r.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a heartbeat reply in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["event"] == "phx_reply" && v["ref"].as_str() == Some(want.as_str()) {
                assert_eq!(v["payload"]["status"], "ok");
                return;
            }
        }
    }
}

/// With 4 connections per IP, 1 s header and keep-alive timeouts: four WebSockets from one
/// client fill its share, so its fifth connection gets a JSON 503 with Retry-After while
/// another client is served; slow headers and idle keep-alive connections are closed after
/// about a second, the WebSockets (counted, but not idle HTTP) stay up; SIGTERM drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_ip_cap_timeouts_and_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Spawned::start(
        dir.path(),
        &Opts {
            toml: "[http]\nmax_connections = 40\nmax_connections_per_ip = 4\n\
                   header_timeout_secs = 1\nkeepalive_timeout_secs = 1\n"
                .into(),
            ..Opts::default()
        },
    )
    .await;
    let ws_url = format!(
        "ws://127.0.0.1:{}/realtime/v1/websocket?apikey={ANON_KEY}&vsn=1.0.0",
        srv.port
    );
    let mut sockets = vec![];
    for _ in 0..4 {
        let (ws, resp) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        assert_eq!(resp.status(), 101);
        sockets.push(ws);
    }

    // The same client's fifth connection: refused, readably.
    let same = Http::new(Some(ip("127.0.0.1")));
    let r = same
        .get(&format!("{}/rest/v1/", srv.url), &[("apikey", SERVICE_KEY)])
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("Too many connections"));
    // Another client is served.
    let other = Http::new(Some(ip("127.0.0.2")));
    let r = other
        .get(&format!("{}/rest/v1/", srv.url), &[("apikey", SERVICE_KEY)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // A slow header and an idle keep-alive connection are closed within seconds.
    let mut slow = connect_from(ip("127.0.0.2"), srv.port).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = connect_from(ip("127.0.0.2"), srv.port).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(&mut slow, Duration::from_secs(5)).await);
    assert!(closed_by_server(&mut idle, Duration::from_secs(5)).await);

    // The WebSockets outlived both timeouts and still answer.
    for (i, ws) in sockets.iter_mut().enumerate() {
        heartbeat(ws, i as u32 + 1).await;
    }
    // Closing them frees the client's share.
    for mut ws in sockets.drain(..) {
        let _ = ws.close(None).await;
    }
    let start = Instant::now();
    loop {
        let r = same
            .get(&format!("{}/rest/v1/", srv.url), &[("apikey", SERVICE_KEY)])
            .await
            .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "share not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Graceful shutdown with a WebSocket and an idle connection open.
    let (_ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let _idle = connect_from(ip("127.0.0.2"), srv.port).await.unwrap();
    assert!(
        srv.stop(Duration::from_secs(30)),
        "graceful stop:\n{}",
        tail(&srv)
    );
    assert!(srv.logs().contains("too many connections"));
}
