//! The streamed answer: provider events in, our events out through a small channel, then
//! the turn stored. When the client goes away the relay task ends and drops the provider's
//! response, which closes that connection.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::providers::{self, Provider, StreamReader};
use super::sse;
use super::store::{message_json, store, usage_details, Plan};
use super::{Reply, MAX_ANSWER_BYTES, NAME};
use crate::functions::error::FnError;
use crate::functions::UsageDetails;
use crate::identity::AuthContext;
use crate::state::AppState;

/// Longest silence on a streamed response (an SSE comment is sent then).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Events waiting for a slow client before the provider is read further.
const RELAY_BUFFER: usize = 16;

/// Start relaying `upstream` in its own task; the response streams what it relays, and the
/// usage arrives when the stream ends.
pub(super) fn start(
    state: &AppState,
    ctx: &AuthContext,
    plan: Plan,
    key: String,
    idle: Duration,
    upstream: reqwest::Response,
) -> Reply {
    let (tx, rx) = mpsc::channel::<Bytes>(RELAY_BUFFER);
    let (usage_tx, usage_rx) = oneshot::channel();
    let relay = Relay {
        state: state.clone(),
        ctx: ctx.clone(),
        plan,
        key,
        idle,
    };
    tokio::spawn(relay.run(upstream, tx, usage_tx));
    let body = crate::http::stream(Relayed(rx));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Reply::Streamed(resp, usage_rx)
}

/// The response body fed by the relay task; dropping it (client gone) closes the channel,
/// which the relay notices.
struct Relayed(mpsc::Receiver<Bytes>);

impl futures::Stream for Relayed {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// One SSE event to the client.
fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn error_event(e: &FnError) -> Bytes {
    sse(&json!({"type": "error", "error": {"code": e.code, "message": e.message}}))
}

/// Relays a streamed answer: provider events in, our events out, then stores the turn.
struct Relay {
    state: AppState,
    ctx: AuthContext,
    plan: Plan,
    key: String,
    idle: Duration,
}

/// How the provider's stream ended.
enum End {
    Complete,
    Failed(FnError),
    /// The client went away.
    Cancelled,
}

impl Relay {
    async fn run(
        self,
        upstream: reqwest::Response,
        tx: mpsc::Sender<Bytes>,
        usage_tx: oneshot::Sender<UsageDetails>,
    ) {
        let p = self.plan.provider;
        let mut reader = StreamReader::new(p);
        let mut content = String::new();
        let end = self.relay(upstream, &tx, &mut reader, &mut content).await;
        // The provider's response is dropped by now: its connection is closed or reused.
        let mut details = usage_details(p, &self.plan.model, &reader.usage);
        match end {
            End::Complete => {
                match store(&self.state, &self.ctx, &self.plan, &content, &reader.usage).await {
                    Ok(stored) => {
                        let done = json!({
                            "type": "done",
                            "conversation_id": self.plan.conversation_id,
                            "message": message_json(&self.plan, &stored, &content),
                            "usage": reader.usage.json(),
                        });
                        let _ = tx.send(sse(&done)).await;
                    }
                    Err(e) => {
                        if let Some(d) = crate::http::ApiError::log_detail(&e) {
                            tracing::error!(function = NAME, detail = %d, "could not store the answer");
                        }
                        details.status = Some(e.status.as_u16());
                        let _ = tx.send(error_event(&e)).await;
                    }
                }
            }
            End::Failed(e) => {
                tracing::info!(
                    function = NAME,
                    provider = p.id(),
                    status = e.status.as_u16(),
                    code = e.code,
                    "streamed answer failed"
                );
                details.status = Some(e.status.as_u16());
                let _ = tx.send(error_event(&e)).await;
            }
            End::Cancelled => {
                tracing::info!(
                    function = NAME,
                    provider = p.id(),
                    "client closed the stream; provider call cancelled"
                );
                // nginx's "client closed request".
                details.status = Some(499);
            }
        }
        let _ = usage_tx.send(details);
    }

    async fn relay(
        &self,
        upstream: reqwest::Response,
        tx: &mpsc::Sender<Bytes>,
        reader: &mut StreamReader,
        content: &mut String,
    ) -> End {
        let p = self.plan.provider;
        let mut body = upstream.bytes_stream();
        let mut decoder = sse::Decoder::default();
        let mut events = Vec::new();
        // While the provider is silent (a model thinking), a comment line now and then keeps
        // proxies from closing the response and shows whether the client is still there.
        let every = KEEPALIVE.min(self.idle / 2);
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut deadline = tokio::time::Instant::now() + self.idle;
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return End::Cancelled,
                _ = keepalive.tick() => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return End::Cancelled;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => None,
                n = body.next() => {
                    deadline = tokio::time::Instant::now() + self.idle;
                    keepalive.reset();
                    Some(n)
                }
            };
            let finished = match next {
                None => {
                    return End::Failed(FnError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "provider_timeout",
                        format!(
                            "{} sent nothing for {} s; the answer was abandoned.",
                            p.label(),
                            self.idle.as_secs()
                        ),
                    ))
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(function = NAME, provider = p.id(), error = %e, "provider stream broke off");
                    return End::Failed(FnError::new(
                        StatusCode::BAD_GATEWAY,
                        "provider_error",
                        format!("The connection to {} broke off mid-answer.", p.label()),
                    ));
                }
                Some(Some(Ok(chunk))) => {
                    if decoder.feed(&chunk, &mut events).is_err() {
                        return End::Failed(providers_malformed(p));
                    }
                    false
                }
                Some(None) => {
                    decoder.finish(&mut events);
                    true
                }
            };
            if let Some(end) = self.forward(&mut events, tx, reader, content).await {
                return end;
            }
            if finished {
                return if reader.complete() {
                    End::Complete
                } else {
                    End::Failed(FnError::new(
                        StatusCode::BAD_GATEWAY,
                        "provider_error",
                        format!(
                            "{}'s stream ended before the answer was complete.",
                            p.label()
                        ),
                    ))
                };
            }
        }
    }

    /// Pass the decoded provider events on as ours; `Some` when the relay ends with them.
    async fn forward(
        &self,
        events: &mut Vec<sse::Event>,
        tx: &mpsc::Sender<Bytes>,
        reader: &mut StreamReader,
        content: &mut String,
    ) -> Option<End> {
        let p = self.plan.provider;
        for ev in events.drain(..) {
            match reader.step(&ev, &self.key) {
                Err(e) => return Some(End::Failed(e)),
                Ok(providers::Step::Delta(text)) => {
                    if content.len() + text.len() > MAX_ANSWER_BYTES {
                        return Some(End::Failed(FnError::new(
                            StatusCode::BAD_GATEWAY,
                            "provider_error",
                            format!(
                                "{}'s answer is larger than {MAX_ANSWER_BYTES} bytes.",
                                p.label()
                            ),
                        )));
                    }
                    content.push_str(&text);
                    let out = sse(&json!({"type": "delta", "content": text}));
                    if tx.send(out).await.is_err() {
                        return Some(End::Cancelled);
                    }
                }
                Ok(providers::Step::Nothing) => {}
                Ok(providers::Step::Done) => return Some(End::Complete),
            }
        }
        None
    }
}

fn providers_malformed(p: Provider) -> FnError {
    FnError::new(
        StatusCode::BAD_GATEWAY,
        "provider_error",
        format!("{} sent a stream that could not be read.", p.label()),
    )
}
