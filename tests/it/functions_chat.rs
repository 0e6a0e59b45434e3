//! chat-completion seen from the outside, against a fake provider server (in this file, on
//! 127.0.0.1:0) that speaks OpenAI's, Anthropic's and Mistral's real wire formats, streaming
//! and errors included, and records what it was sent: request checking, keys, conversation
//! creation and history, what lands in messages / conversations / api_usage, provider error
//! mapping, mid-stream failures, and that a client closing its stream cancels the provider
//! call.

use crate::common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, ANON_KEY};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- the fake provider

#[derive(Clone, Debug)]
enum Mode {
    /// Answer with this text (whole or streamed in pieces, as asked).
    Answer(&'static str),
    /// An error status with the provider's error body (and Retry-After for 429).
    Status(u16),
    /// 401 quoting the key it was sent, as OpenAI does.
    BadKey,
    /// Stream two pieces, then break the connection off.
    BreakMidStream,
    /// Stream a piece, then the provider's error event.
    ErrorEventMidStream,
    /// Stream a piece every 50 ms until the client goes away.
    Endless,
    /// Answer nothing for 30 s.
    Hang,
    /// Stream two pieces, then stay silent for 30 s.
    StallMidStream,
}

#[derive(Debug, Clone)]
struct Seen {
    /// `openai`, `anthropic` or `mistral` (the path prefix).
    provider: String,
    path: String,
    headers: http::HeaderMap,
    body: Value,
}

#[derive(Clone)]
struct Fake {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    modes: Arc<Mutex<VecDeque<Mode>>>,
    /// An endless stream's client went away.
    closed: Arc<AtomicBool>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Fake {
            url,
            seen: Default::default(),
            modes: Default::default(),
            closed: Default::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    fn base(&self, provider: &str) -> String {
        match provider {
            "anthropic" => format!("{}/anthropic", self.url),
            p => format!("{}/{p}/v1", self.url),
        }
    }

    fn push(&self, m: Mode) {
        self.modes.lock().unwrap().push_back(m);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the provider was called")
    }

    async fn answer(&self, req: hyper::Request<hyper::body::Incoming>) -> http::Response<FakeBody> {
        let path = req.uri().path().to_string();
        let provider = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        let headers = req.headers().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let stream = body["stream"] == true;
        let model = body["model"].as_str().unwrap_or("").to_string();
        self.seen.lock().unwrap().push(Seen {
            provider: provider.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body,
        });
        let expected = match provider.as_str() {
            "anthropic" => "/anthropic/v1/messages".to_string(),
            p => format!("/{p}/v1/chat/completions"),
        };
        if path != expected {
            return whole(404, json!({"error": {"message": "no such path"}}));
        }
        let key = if provider == "anthropic" {
            headers.get("x-api-key")
        } else {
            headers.get("authorization")
        }
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start_matches("Bearer ")
        .to_string();
        let mode = self
            .modes
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Mode::Answer("Hello from the fake."));
        let p = provider.as_str();
        match mode {
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                whole(500, json!({}))
            }
            Mode::BadKey => whole(
                401,
                error_body(p, 401, &format!("Incorrect API key provided: {key}.")),
            ),
            Mode::Status(s) => {
                let mut r = whole(s, error_body(p, s, &format!("fake failure {s}")));
                if s == 429 {
                    r.headers_mut().insert("retry-after", "7".parse().unwrap());
                }
                r
            }
            Mode::Answer(text) if !stream => whole(200, whole_answer(p, &model, text)),
            mode => self.stream(p, &model, mode),
        }
    }

    fn stream(&self, p: &str, model: &str, mode: Mode) -> http::Response<FakeBody> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let events = stream_events(p, model, &mode);
        let closed = self.closed.clone();
        let p = p.to_string();
        tokio::spawn(async move {
            let send = |s: String| {
                let tx = tx.clone();
                async move { tx.send(Ok(Frame::data(Bytes::from(s)))).await.is_ok() }
            };
            for (i, e) in events.iter().enumerate() {
                // Split one event across two writes: the server must reassemble it.
                if i == 1 {
                    let (a, b) = e.split_at(e.len() / 2);
                    send(a.to_string()).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    send(b.to_string()).await;
                } else {
                    send(e.clone()).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match mode {
                Mode::BreakMidStream => {
                    let _ = tx
                        .send(Err(std::io::Error::other("connection broke off")))
                        .await;
                }
                Mode::StallMidStream => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(tx);
                }
                Mode::Endless => loop {
                    let ev = delta_event(&p, "tick ");
                    if !send(ev).await {
                        closed.store(true, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                },
                _ => {}
            }
        });
        let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let mut r = http::Response::new(BodyExt::boxed(body));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        r
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn whole(status: u16, v: Value) -> http::Response<FakeBody> {
    let mut r = http::Response::new(BodyExt::boxed(
        Full::new(Bytes::from(v.to_string())).map_err(|n: Infallible| match n {}),
    ));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn error_body(p: &str, status: u16, message: &str) -> Value {
    match p {
        "anthropic" => {
            let kind = match status {
                401 => "authentication_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                s if s >= 500 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        "mistral" => {
            json!({"object": "error", "message": message, "type": "invalid_request_error", "param": null, "code": null})
        }
        _ => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "fake"}})
        }
    }
}

fn whole_answer(p: &str, model: &str, text: &str) -> Value {
    match p {
        "anthropic" => json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": 7},
        }),
        _ => json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }),
    }
}

fn pieces(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_string).collect()
}

fn delta_event(p: &str, piece: &str) -> String {
    match p {
        "anthropic" => format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        ),
        _ => format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
        ),
    }
}

/// The provider's stream for a mode, as SSE text pieces.
fn stream_events(p: &str, model: &str, mode: &Mode) -> Vec<String> {
    let text = match mode {
        Mode::Answer(t) => *t,
        _ => "partial answer ",
    };
    let mut out = vec![];
    let anthropic = p == "anthropic";
    if anthropic {
        out.push(format!(
            "event: message_start\ndata: {}\n\n",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
                   "model": model, "content": [], "stop_reason": null,
                   "usage": {"input_tokens": 11, "output_tokens": 1}}})
        ));
        out.push(format!(
            "event: content_block_start\ndata: {}\n\n",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        ));
        out.push("event: ping\ndata: {\"type\": \"ping\"}\n\n".into());
    } else {
        out.push(format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
        ));
    }
    let mut ps = pieces(text);
    if !matches!(mode, Mode::Answer(_)) {
        ps.truncate(2);
    }
    for piece in &ps {
        out.push(delta_event(p, piece));
    }
    match mode {
        Mode::Answer(_) => {}
        Mode::ErrorEventMidStream => {
            out.push(if anthropic {
                format!(
                    "event: error\ndata: {}\n\n",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                )
            } else {
                format!("data: {}\n\n", json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}))
            });
            return out;
        }
        _ => return out,
    }
    match p {
        "anthropic" => {
            out.push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into());
            out.push(format!(
                "event: message_delta\ndata: {}\n\n",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}})
            ));
            out.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
        }
        "mistral" => {
            // Mistral: usage rides on the last chunk, unasked.
            out.push(format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
            ));
            out.push("data: [DONE]\n\n".into());
        }
        _ => {
            out.push(format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            ));
            out.push(format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
            ));
            out.push("data: [DONE]\n\n".into());
        }
    }
    out
}

// ---------------------------------------------------------------- helpers

const SERVER_KEY: &str = "sk-server-key-0123456789abcdef";

/// A server whose providers point at the fake; OpenAI and Anthropic have server keys,
/// Mistral none.
async fn setup_with(tweak: impl FnOnce(&mut oxibase::Config)) -> (TestServer, Fake) {
    let fake = Fake::start().await;
    let f = fake.clone();
    let t = TestServer::start_with(move |cfg| {
        cfg.functions.openai_base_url = f.base("openai");
        cfg.functions.anthropic_base_url = f.base("anthropic");
        cfg.functions.mistral_base_url = f.base("mistral");
        cfg.functions.openai_api_key = Some(oxibase::config::Secret(SERVER_KEY.into()));
        cfg.functions.anthropic_api_key = Some(oxibase::config::Secret(SERVER_KEY.into()));
        cfg.functions.stream_idle_timeout_secs = 5;
        tweak(cfg);
    })
    .await;
    (t, fake)
}

async fn setup() -> (TestServer, Fake) {
    setup_with(|_| {}).await
}

async fn chat(t: &TestServer, token: &str, body: Value) -> common::reqwest_like::Response {
    let auth = format!("Bearer {token}");
    t.http
        .send(
            "POST",
            &format!("{}/functions/v1/chat-completion", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
}

fn hello(provider: &str, model: &str) -> Value {
    json!({"provider": provider, "model": model, "messages": [{"role": "user", "content": "Hello there"}]})
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

async fn count(t: &TestServer, q: &str) -> i64 {
    t.sql(q).await[0].get(0)
}

/// api_usage rows of chat-completion: (status, provider, model, prompt, completion, total).
async fn usage_rows(
    t: &TestServer,
    user: &str,
) -> Vec<(
    i32,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
)> {
    t.sql(&format!(
        "select status_code, provider, model, prompt_tokens, completion_tokens, total_tokens \
         from api_usage where user_id = '{user}' and endpoint = 'chat-completion' order by id"
    ))
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

/// Streamed calls write their usage row when the stream ends: wait for `n` rows.
async fn wait_usage(
    t: &TestServer,
    user: &str,
    n: usize,
) -> Vec<(
    i32,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
)> {
    for _ in 0..100 {
        let rows = usage_rows(t, user).await;
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    usage_rows(t, user).await
}

/// (role, content, model, tokens_used) of a conversation's messages, oldest first.
async fn messages(
    t: &TestServer,
    conversation: &str,
) -> Vec<(String, String, Option<String>, Option<i32>)> {
    t.sql(&format!(
        "select role, content, model, tokens_used from messages \
         where conversation_id = '{conversation}' order by created_at, id"
    ))
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn roles_and_contents(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(r: &str, c: &str) -> (String, String) {
    (r.to_string(), c.to_string())
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn openai_answer_creates_the_conversation_and_stores_the_turn() {
    let (t, fake) = setup().await;
    let (uid, token) = t.user().await;
    fake.push(Mode::Answer("Hi! How can I help?"));
    let r = chat(
        &t,
        &token,
        json!({
            "provider": "openai", "model": "gpt-4o-mini", "temperature": 0.3, "max_tokens": 99,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": "Hello there\nsecond line"}],
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["conversation_id", "message", "usage"]);
    let m = &v["message"];
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["content"], "Hi! How can I help?");
    assert_eq!(m["model"], "gpt-4o-mini");
    assert_eq!(m["provider"], "openai");
    assert!(m["id"].as_str().unwrap().len() == 36 && m["created_at"].is_string());
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );

    // What OpenAI was sent.
    let s = fake.last();
    assert_eq!(s.path, "/openai/v1/chat/completions");
    assert_eq!(s.headers["authorization"], format!("Bearer {SERVER_KEY}"));
    assert_eq!(s.body["model"], "gpt-4o-mini");
    assert_eq!(s.body["temperature"], 0.3);
    // (`max_completion_tokens` goes to api.openai.com only; this is a compatible server.)
    assert_eq!(s.body["max_tokens"], 99);
    assert!(s.body.get("stream").is_none());
    assert_eq!(
        roles_and_contents(&s.body["messages"]),
        [
            pair("system", "You are terse."),
            pair("user", "Hello there\nsecond line")
        ]
    );

    // Stored as the caller.
    let conv = v["conversation_id"].as_str().unwrap();
    let row = &t
        .sql(&format!(
            "select user_id::text, title, provider, model, system_prompt from conversations where id = '{conv}'"
        ))
        .await[0];
    assert_eq!(row.get::<_, String>(0), uid);
    assert_eq!(row.get::<_, String>(1), "Hello there");
    assert_eq!(row.get::<_, String>(2), "openai");
    assert_eq!(row.get::<_, String>(3), "gpt-4o-mini");
    assert_eq!(row.get::<_, String>(4), "You are terse.");
    assert_eq!(
        messages(&t, conv).await,
        [
            ("user".into(), "Hello there\nsecond line".into(), None, None),
            (
                "assistant".into(),
                "Hi! How can I help?".into(),
                Some("gpt-4o-mini".into()),
                Some(7)
            ),
        ]
    );
    let id_matches = count(
        &t,
        &format!(
            "select count(*) from messages where id = '{}' and user_id = '{uid}'",
            m["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(id_matches, 1);
    // Exactly one usage row, with provider, model and tokens.
    assert_eq!(
        usage_rows(&t, &uid).await,
        [(
            200,
            Some("openai".into()),
            Some("gpt-4o-mini".into()),
            Some(11),
            Some(7),
            Some(18)
        )]
    );
}

#[tokio::test]
async fn history_is_sent_oldest_first_within_the_budget() {
    let (t, fake) = setup_with(|cfg| cfg.functions.context_max_messages = 3).await;
    let (_, token) = t.user().await;
    fake.push(Mode::Answer("First answer."));
    let v = chat(
        &t,
        &token,
        json!({"provider": "openai", "model": "m1", "system": "Be kind.",
               "messages": [{"role": "user", "content": "one"}]}),
    )
    .await
    .json();
    let conv = v["conversation_id"].as_str().unwrap().to_string();

    fake.push(Mode::Answer("Second answer."));
    let r = chat(
        &t,
        &token,
        json!({"provider": "openai", "model": "m1", "conversation_id": conv,
               "messages": [{"role": "user", "content": "two"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["conversation_id"], conv.as_str());
    // The conversation's system prompt and earlier turns, then the new turn.
    assert_eq!(
        roles_and_contents(&fake.last().body["messages"]),
        [
            pair("system", "Be kind."),
            pair("user", "one"),
            pair("assistant", "First answer."),
            pair("user", "two"),
        ]
    );

    // Four stored turns now; the budget keeps the newest three.
    let r = chat(
        &t,
        &token,
        json!({"provider": "anthropic", "model": "claude-x", "conversation_id": conv,
               "messages": [{"role": "user", "content": "three"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = fake.last();
    assert_eq!(s.provider, "anthropic");
    assert_eq!(s.body["system"], "Be kind.");
    // (Anthropic wants the user first: the cut-off answer at the start is left out.)
    assert_eq!(
        roles_and_contents(&s.body["messages"]),
        [
            pair("user", "two"),
            pair("assistant", "Second answer."),
            pair("user", "three"),
        ]
    );
    assert_eq!(messages(&t, &conv).await.len(), 6);
    let title: String = t
        .sql(&format!(
            "select title from conversations where id = '{conv}'"
        ))
        .await[0]
        .get(0);
    assert_eq!(title, "one");
}

#[tokio::test]
async fn the_character_budget_drops_the_oldest_turns() {
    let (t, fake) = setup_with(|cfg| cfg.functions.context_max_chars = 30).await;
    let (_, token) = t.user().await;
    fake.push(Mode::Answer("0123456789"));
    let v = chat(
        &t,
        &token,
        json!({"provider": "openai", "model": "m", "messages": [{"role": "user", "content": "abcdefghij"}]}),
    )
    .await
    .json();
    let conv = v["conversation_id"].as_str().unwrap();
    // 30 chars: 15 for the new turn leaves room for the answer (10) but not the question.
    chat(
        &t,
        &token,
        json!({"provider": "openai", "model": "m", "conversation_id": conv,
               "messages": [{"role": "user", "content": "klmnopqrstuvwxy"}]}),
    )
    .await;
    assert_eq!(
        roles_and_contents(&fake.last().body["messages"]),
        [
            pair("assistant", "0123456789"),
            pair("user", "klmnopqrstuvwxy")
        ]
    );
}

#[tokio::test]
async fn anthropic_and_mistral_whole_answers() {
    let (t, fake) = setup().await;
    let (uid, token) = t.user().await;
    fake.push(Mode::Answer("Claude here."));
    let r = chat(
        &t,
        &token,
        json!({"provider": "anthropic", "model": "claude-3-5-haiku-latest", "system": "Sys.",
               "messages": [{"role": "system", "content": "More sys."}, {"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["message"]["content"], "Claude here.");
    assert_eq!(v["message"]["provider"], "anthropic");
    assert_eq!(v["usage"]["total_tokens"], 18);
    let s = fake.last();
    assert_eq!(s.path, "/anthropic/v1/messages");
    assert_eq!(s.headers["x-api-key"], SERVER_KEY);
    assert_eq!(s.headers["anthropic-version"], "2023-06-01");
    assert!(s.headers.get("authorization").is_none());
    assert_eq!(s.body["system"], "Sys.\n\nMore sys.");
    assert_eq!(s.body["max_tokens"], 1024, "Anthropic requires max_tokens");
    assert_eq!(
        roles_and_contents(&s.body["messages"]),
        [pair("user", "Hi")]
    );

    fake.push(Mode::Answer("Bonjour."));
    let r = chat(
        &t,
        &token,
        json!({"provider": "mistral", "model": "mistral-small-latest", "api_key": "mistral-own-key",
               "max_tokens": 50, "messages": [{"role": "user", "content": "Salut"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"]["content"], "Bonjour.");
    let s = fake.last();
    assert_eq!(s.path, "/mistral/v1/chat/completions");
    assert_eq!(s.headers["authorization"], "Bearer mistral-own-key");
    assert_eq!(s.body["max_tokens"], 50);
    let rows = usage_rows(&t, &uid).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1.as_deref(), Some("anthropic"));
    assert_eq!(rows[1].1.as_deref(), Some("mistral"));
    assert_eq!(rows[1].5, Some(18));
}

async fn streamed(provider: &str, model: &str) {
    let (t, fake) = setup().await;
    let (uid, token) = t.user().await;
    fake.push(Mode::Answer("Streaming works fine today."));
    let mut body = hello(provider, model);
    body["stream"] = json!(true);
    body["api_key"] = json!("caller-key-1");
    let r = chat(&t, &token, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let evs = events(&r.text());
    let deltas: Vec<&str> = evs
        .iter()
        .filter(|e| e["type"] == "delta")
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        deltas,
        ["Streaming ", "works ", "fine ", "today."],
        "{provider}"
    );
    let done = evs.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["message"]["content"], "Streaming works fine today.");
    assert_eq!(done["message"]["provider"], provider);
    assert_eq!(done["message"]["model"], model);
    assert_eq!(
        done["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    let conv = done["conversation_id"].as_str().unwrap();
    let stored = messages(&t, conv).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].1, "Streaming works fine today.");
    assert_eq!(stored[1].3, Some(7));

    let s = fake.last();
    assert_eq!(s.body["stream"], true);
    match provider {
        "openai" => {
            assert_eq!(s.body["stream_options"]["include_usage"], true);
            assert_eq!(s.headers["authorization"], "Bearer caller-key-1");
        }
        "mistral" => {
            assert!(s.body.get("stream_options").is_none());
            assert_eq!(s.headers["authorization"], "Bearer caller-key-1");
        }
        _ => assert_eq!(s.headers["x-api-key"], "caller-key-1"),
    }
    assert_eq!(
        wait_usage(&t, &uid, 1).await,
        [(
            200,
            Some(provider.into()),
            Some(model.into()),
            Some(11),
            Some(7),
            Some(18)
        )]
    );
}

#[tokio::test]
async fn openai_streams() {
    streamed("openai", "gpt-4o-mini").await;
}

#[tokio::test]
async fn anthropic_streams() {
    streamed("anthropic", "claude-3-5-haiku-latest").await;
}

#[tokio::test]
async fn mistral_streams() {
    streamed("mistral", "mistral-small-latest").await;
}

#[tokio::test]
async fn keys_bad_requests_and_auth() {
    let (t, fake) = setup().await;
    let (uid, token) = t.user().await;
    // No Mistral key on the server and none in the request.
    let r = chat(&t, &token, hello("mistral", "mistral-small-latest")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "missing_api_key");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("MISTRAL_API_KEY"));
    // Unknown provider, bad JSON, bad shape.
    let r = chat(&t, &token, hello("cohere", "x")).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("invalid_provider"))
    );
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/functions/v1/chat-completion", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {token}")),
            ],
            "{oops",
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let r = chat(
        &t,
        &token,
        json!({"provider": "openai", "model": "m", "messages": "hi"}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let r = chat(&t, &token, json!({"provider": "openai", "model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9})).await;
    assert_eq!(r.status, 400);
    // Too large.
    let big = "x".repeat(1024 * 1024 + 10);
    let r = chat(
        &t,
        &token,
        json!({"provider": "openai", "model": "m", "messages": [{"role": "user", "content": big}]}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );
    // A conversation id that is nobody's.
    let mut b = hello("openai", "m");
    b["conversation_id"] = json!(uuid::Uuid::new_v4().to_string());
    let r = chat(&t, &token, b).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (404, json!("conversation_not_found"))
    );
    // Anon only: 401 before anything else.
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/functions/v1/chat-completion", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {ANON_KEY}")),
            ],
            hello("openai", "m").to_string(),
        )
        .await;
    assert_eq!(r.status, 401);
    // GET is not a chat.
    let r = t
        .http
        .send(
            "GET",
            &format!("{}/functions/v1/chat-completion", t.url),
            &[
                ("apikey", ANON_KEY),
                ("authorization", &format!("Bearer {token}")),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 405);
    // None of these reached the provider or wrote anything but usage rows.
    assert!(fake.seen().is_empty());
    assert_eq!(count(&t, "select count(*) from conversations").await, 0);
    assert_eq!(count(&t, "select count(*) from messages").await, 0);
    let rows = usage_rows(&t, &uid).await;
    assert_eq!(rows.len(), 8);
    assert_eq!(rows[0].0, 400);
    assert_eq!(
        rows[0].1.as_deref(),
        Some("mistral"),
        "usage names the provider"
    );
}

#[tokio::test]
async fn provider_errors_keep_their_class_and_hide_the_key() {
    let (t, fake) = setup().await;
    let (uid, token) = t.user().await;
    // 401 quoting the key: stays 401, the key is not repeated.
    fake.push(Mode::BadKey);
    let mut b = hello("openai", "gpt-4o-mini");
    b["api_key"] = json!("sk-caller-secret-abcdefghijklmnop1234");
    let r = chat(&t, &token, b).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "provider_auth_error");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("OpenAI answered 401: Incorrect API key provided"),
        "{msg}"
    );
    assert!(!r.text().contains("caller-secret"), "{}", r.text());
    // 429 stays 429 with Retry-After; streaming requests get the same JSON error.
    fake.push(Mode::Status(429));
    let mut b = hello("anthropic", "claude");
    b["stream"] = json!(true);
    let r = chat(&t, &token, b).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("fake failure 429"));
    // 5xx: 502.
    fake.push(Mode::Status(500));
    let r = chat(&t, &token, hello("openai", "m")).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (502, json!("provider_error"))
    );
    fake.push(Mode::Status(529));
    let r = chat(&t, &token, hello("anthropic", "m")).await;
    assert_eq!(r.status, 502);
    // A provider nobody listens at.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    drop(t);
    let (t, _fake2) = setup_with(move |cfg| cfg.functions.openai_base_url = dead_url).await;
    let (uid2, token2) = t.user().await;
    let r = chat(&t, &token2, hello("openai", "m")).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (502, json!("provider_unavailable"))
    );
    // Nothing stored for any failure; usage rows carry the statuses.
    assert_eq!(count(&t, "select count(*) from messages").await, 0);
    assert_eq!(usage_rows(&t, &uid2).await[0].0, 502);
    let _ = uid;
}

#[tokio::test]
async fn a_failure_mid_stream_is_an_error_event_and_stores_nothing() {
    let (t, fake) = setup().await;
    let (uid, token) = t.user().await;
    for (provider, mode, code) in [
        ("openai", Mode::BreakMidStream, "provider_error"),
        ("anthropic", Mode::ErrorEventMidStream, "provider_error"),
        ("mistral", Mode::ErrorEventMidStream, "provider_error"),
    ] {
        fake.push(mode);
        let mut b = hello(provider, "m");
        b["stream"] = json!(true);
        b["api_key"] = json!("k");
        let r = chat(&t, &token, b).await;
        assert_eq!(r.status, 200);
        let evs = events(&r.text());
        assert_eq!(
            evs[0],
            json!({"type": "delta", "content": "partial "}),
            "{provider}"
        );
        let last = evs.last().unwrap();
        assert_eq!(last["type"], "error", "{provider}: {evs:?}");
        assert_eq!(last["error"]["code"], code);
        assert!(last["error"]["message"].is_string());
        assert!(evs.iter().all(|e| e["type"] != "done"));
    }
    assert_eq!(count(&t, "select count(*) from conversations").await, 0);
    assert_eq!(count(&t, "select count(*) from messages").await, 0);
    let rows = wait_usage(&t, &uid, 3).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.0 == 502), "{rows:?}");
}

#[tokio::test]
async fn closing_the_stream_cancels_the_provider_call() {
    let (t, fake) = setup().await;
    let (uid, token) = t.user().await;
    fake.push(Mode::Endless);
    let mut b = hello("openai", "m");
    b["stream"] = json!(true);
    let body = b.to_string();
    let addr = t.url.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /functions/v1/chat-completion HTTP/1.1\r\nhost: {addr}\r\napikey: {ANON_KEY}\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    // Deltas arrive while the provider is still answering (nothing is buffered).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&got).contains("tick") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended early");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no delta arrived: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(String::from_utf8_lossy(&got).contains("text/event-stream"));
    assert!(!fake.closed.load(Ordering::SeqCst));
    drop(sock);
    // The provider sees its connection closed.
    let mut closed = false;
    for _ in 0..100 {
        if fake.closed.load(Ordering::SeqCst) {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the provider call was not cancelled");
    let rows = wait_usage(&t, &uid, 1).await;
    assert_eq!(rows[0].0, 499, "{rows:?}");
    assert_eq!(count(&t, "select count(*) from messages").await, 0);
}

#[tokio::test]
async fn another_users_conversation_cannot_be_used() {
    let (t, fake) = setup().await;
    let (_, token_a) = t.user().await;
    let (uid_b, token_b) = t.user().await;
    fake.push(Mode::Answer("Secret answer for A."));
    let v = chat(&t, &token_a, hello("openai", "m")).await.json();
    let conv = v["conversation_id"].as_str().unwrap();
    let calls = fake.seen().len();

    let mut b = hello("openai", "m");
    b["conversation_id"] = json!(conv);
    let r = chat(&t, &token_b, b).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "conversation_not_found");
    assert!(!r.text().contains("Secret"));
    assert_eq!(
        fake.seen().len(),
        calls,
        "A's history never reached the provider for B"
    );
    assert_eq!(messages(&t, conv).await.len(), 2);
    assert_eq!(
        count(
            &t,
            &format!("select count(*) from messages where user_id = '{uid_b}'")
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_silent_provider_times_out() {
    let (t, fake) = setup_with(|cfg| {
        cfg.functions.provider_timeout_secs = 1;
        cfg.functions.stream_idle_timeout_secs = 1;
    })
    .await;
    let (uid, token) = t.user().await;
    fake.push(Mode::Hang);
    let started = std::time::Instant::now();
    let r = chat(&t, &token, hello("openai", "m")).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (504, json!("provider_timeout"))
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    fake.push(Mode::StallMidStream);
    let mut b = hello("anthropic", "m");
    b["stream"] = json!(true);
    let r = chat(&t, &token, b).await;
    assert_eq!(r.status, 200);
    // While the provider is silent the client gets SSE comments (a keep-alive).
    assert!(r.text().contains("\n\n: keep-alive\n\n"), "{}", r.text());
    let evs = events(&r.text());
    assert_eq!(evs[0]["type"], "delta");
    let last = evs.last().unwrap();
    assert_eq!(
        (last["type"].clone(), last["error"]["code"].clone()),
        (json!("error"), json!("provider_timeout"))
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let rows = wait_usage(&t, &uid, 2).await;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [504, 504]);
    assert_eq!(count(&t, "select count(*) from messages").await, 0);
}
