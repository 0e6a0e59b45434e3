//! chat-completion: one turn of a conversation with an LLM provider (OpenAI, Anthropic,
//! Mistral), whole or streamed as Server-Sent Events.
//!
//! The request is checked entirely before anything else happens. The conversation (when
//! given) and its earlier turns are read as the caller, so RLS decides what is visible; the
//! provider is then called with those turns (within the context budget) plus the new ones.
//! Only a complete answer is stored: the conversation (when new), the user's new messages
//! and the assistant's answer are written as the caller in one transaction, so a failed or
//! cancelled call leaves nothing behind. A streamed answer is relayed chunk by chunk through
//! a small channel; when the client goes away the relay task ends and drops the provider's
//! response, which closes that connection.
//!
//! The request's `api_key` is used for that one provider call: it is never stored, logged or
//! repeated in a message (provider messages are scrubbed). Prompts and answers are never
//! logged either.

pub mod providers;
pub mod sse;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::error::FnError;
use super::{UsageDetails, UsageReport};
use crate::config::{FunctionsConfig, Secret};
use crate::db::RequestGucs;
use crate::http::apikey::AuthContext;
use crate::http::{error_response, json_response, Req, Resp};
use crate::state::AppState;
use providers::{Call, Provider, StreamReader, Turn, Usage};

pub const NAME: &str = "chat-completion";
/// Most new messages in one request.
const MAX_NEW_MESSAGES: usize = 200;
/// Longest model name.
const MAX_MODEL_CHARS: usize = 200;
/// Largest `max_tokens` accepted.
const MAX_TOKENS_LIMIT: u64 = 1_000_000;
/// Largest answer read from a provider (whole, or accumulated from a stream).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Largest provider error body read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest conversation title made from the first user message.
const TITLE_CHARS: usize = 80;
/// Events waiting for a slow client before the provider is read further.
const RELAY_BUFFER: usize = 16;
/// Longest silence on a streamed response (an SSE comment is sent then).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// This function's share of the functions state: one HTTP client (connection pool) for
/// every provider call.
pub struct State {
    client: reqwest::Client,
}

pub fn init(cfg: &FunctionsConfig) -> Result<State, String> {
    let connect = Duration::from_secs(cfg.provider_timeout_secs.min(10));
    let client = reqwest::Client::builder()
        .connect_timeout(connect)
        .user_agent(concat!("oxibase/", env!("CARGO_PKG_VERSION")))
        .build()
        .or_else(|e| {
            // A machine whose certificate store cannot be read still serves plain-HTTP
            // providers (local models); HTTPS calls then fail with a clear 502.
            tracing::warn!(error = %e, "provider client without the system's root certificates");
            reqwest::Client::builder()
                .connect_timeout(connect)
                .tls_built_in_native_certs(false)
                .build()
        })
        .map_err(|e| format!("chat-completion HTTP client: {e}"))?;
    Ok(State { client })
}

/// The gateway's entry: always a response, carrying the usage details for `api_usage`.
pub async fn handle(state: &AppState, ctx: &AuthContext, user: Uuid, req: Req) -> Resp {
    let mut usage = UsageDetails::default();
    let (mut resp, report) = match run(state, ctx, user, req, &mut usage).await {
        Ok(Reply::Whole(resp)) => (resp, UsageReport::now(usage)),
        Ok(Reply::Streamed(resp, rx)) => (resp, UsageReport::later(rx)),
        Err(e) => {
            let mut resp = error_response(&e.error);
            if let Some(v) = e.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            (resp, UsageReport::now(usage))
        }
    };
    resp.extensions_mut().insert(report);
    resp
}

enum Reply {
    Whole(Resp),
    /// The usage arrives when the stream ends.
    Streamed(Resp, oneshot::Receiver<UsageDetails>),
}

/// An error, with the provider's `Retry-After` when it sent one.
struct Failure {
    error: FnError,
    retry_after: Option<String>,
}

impl From<FnError> for Failure {
    fn from(error: FnError) -> Failure {
        Failure {
            error,
            retry_after: None,
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        FnError::from(e).into()
    }
}

// ---------------------------------------------------------------- the request

/// A checked request.
#[derive(Debug)]
struct ChatRequest {
    conversation_id: Option<Uuid>,
    provider: Provider,
    model: String,
    messages: Vec<Turn>,
    stream: bool,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    system: Option<String>,
    /// The caller's own key, for this one call (Debug prints `***`).
    api_key: Option<Secret<String>>,
}

fn invalid(message: impl Into<String>) -> FnError {
    FnError::bad_request(message)
}

/// Check the body entirely (nothing is read from or written to the database before).
fn parse_request(body: &[u8]) -> Result<ChatRequest, FnError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| invalid("The request body must be a JSON object."))?;
    let Value::Object(o) = v else {
        return Err(invalid("The request body must be a JSON object."));
    };
    let opt = |k: &str| o.get(k).filter(|v| !v.is_null());
    let provider = match opt("provider") {
        None => {
            return Err(invalid(
                "`provider` is required: openai, anthropic or mistral.",
            ))
        }
        Some(Value::String(p)) => Provider::parse(p).ok_or_else(|| {
            FnError::new(
                StatusCode::BAD_REQUEST,
                "invalid_provider",
                format!(
                    "Unknown provider \"{}\": use openai, anthropic or mistral.",
                    p.chars().take(32).collect::<String>()
                ),
            )
        })?,
        Some(_) => {
            return Err(FnError::new(
                StatusCode::BAD_REQUEST,
                "invalid_provider",
                "`provider` must be a string: openai, anthropic or mistral.",
            ))
        }
    };
    let model = match opt("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
        _ => return Err(invalid("`model` is required: the provider's model name.")),
    };
    if model.chars().count() > MAX_MODEL_CHARS || model.chars().any(char::is_control) {
        return Err(invalid("`model` is not a valid model name."));
    }
    let Some(Value::Array(list)) = opt("messages") else {
        return Err(invalid(
            "`messages` is required: a non-empty array of {role, content}.",
        ));
    };
    if list.is_empty() {
        return Err(invalid("`messages` must not be empty."));
    }
    if list.len() > MAX_NEW_MESSAGES {
        return Err(invalid(format!(
            "`messages` may hold at most {MAX_NEW_MESSAGES} messages."
        )));
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let Some(role) = role.filter(|r| matches!(*r, "user" | "assistant" | "system")) else {
            return Err(invalid(format!(
                "messages[{i}].role must be user, assistant or system."
            )));
        };
        let content = match m.get("content") {
            Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
            _ => {
                return Err(invalid(format!(
                    "messages[{i}].content must be a non-empty string."
                )))
            }
        };
        messages.push(Turn {
            role: role.to_string(),
            content,
        });
    }
    let conversation_id = match opt("conversation_id") {
        None => None,
        Some(Value::String(s)) => Some(
            Uuid::parse_str(s.trim()).map_err(|_| invalid("`conversation_id` must be a UUID."))?,
        ),
        Some(_) => return Err(invalid("`conversation_id` must be a UUID.")),
    };
    let stream = match opt("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("`stream` must be true or false.")),
    };
    let temperature = match opt("temperature") {
        None => None,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) => {
            n.as_f64()
        }
        Some(_) => return Err(invalid("`temperature` must be a number from 0 to 2.")),
    };
    let max_tokens = match opt("max_tokens") {
        None => None,
        Some(Value::Number(n))
            if n.as_u64()
                .is_some_and(|t| (1..=MAX_TOKENS_LIMIT).contains(&t)) =>
        {
            n.as_u64().map(|t| t as u32)
        }
        Some(_) => {
            return Err(invalid(format!(
                "`max_tokens` must be a whole number from 1 to {MAX_TOKENS_LIMIT}."
            )))
        }
    };
    let system = match opt("system") {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("`system` must be a string.")),
    };
    // The key goes into a request header: printable ASCII only. It is never echoed.
    let api_key = match opt("api_key") {
        None => None,
        Some(Value::String(k)) if k.trim().is_empty() => None,
        Some(Value::String(k))
            if k.len() <= 1024 && k.trim().bytes().all(|b| (0x21..0x7f).contains(&b)) =>
        {
            Some(Secret(k.trim().to_string()))
        }
        Some(_) => return Err(invalid("`api_key` is not a valid provider key.")),
    };
    Ok(ChatRequest {
        conversation_id,
        provider,
        model,
        messages,
        stream,
        temperature,
        max_tokens,
        system,
        api_key,
    })
}

fn base_url(cfg: &FunctionsConfig, p: Provider) -> &str {
    match p {
        Provider::OpenAi => &cfg.openai_base_url,
        Provider::Anthropic => &cfg.anthropic_base_url,
        Provider::Mistral => &cfg.mistral_base_url,
    }
}

fn server_key(cfg: &FunctionsConfig, p: Provider) -> Option<&str> {
    match p {
        Provider::OpenAi => cfg.openai_api_key.as_ref(),
        Provider::Anthropic => cfg.anthropic_api_key.as_ref(),
        Provider::Mistral => cfg.mistral_api_key.as_ref(),
    }
    .map(|k| k.expose().as_str())
    .filter(|k| !k.is_empty())
}

// ---------------------------------------------------------------- the database

fn gucs() -> RequestGucs<'static> {
    RequestGucs {
        method: "POST",
        path: "/functions/v1/chat-completion",
        ..Default::default()
    }
}

async fn client(state: &AppState) -> Result<deadpool_postgres::Client, FnError> {
    state.pool.get().await.map_err(|e| FnError::from_pool(&e))
}

/// What the conversation contributes: its system prompt and earlier turns (oldest first).
#[derive(Default)]
struct Context {
    system_prompt: Option<String>,
    history: Vec<Turn>,
}

/// Read an existing conversation as the caller: 404 when RLS hides it (or it does not
/// exist); its newest turns within the budget, oldest first.
async fn load_context(
    state: &AppState,
    ctx: &AuthContext,
    conversation: Uuid,
    budget_chars: usize,
) -> Result<Context, FnError> {
    let cfg = &state.config.functions;
    let mut c = client(state).await?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs(), true).await?;
    let Some(row) = tx
        .query_opt(
            "select system_prompt from public.conversations where id = $1",
            &[&conversation],
        )
        .await?
    else {
        return Err(FnError::conversation_not_found());
    };
    let system_prompt: Option<String> = row.get(0);
    let rows = tx
        .query(
            "select role, content from public.messages \
             where conversation_id = $1 and role in ('system', 'user', 'assistant') \
             order by created_at desc, id desc limit $2",
            &[&conversation, &(cfg.context_max_messages as i64)],
        )
        .await?;
    tx.commit().await?;
    let mut used = 0usize;
    let mut history = vec![];
    for r in rows {
        let content: String = r.get(1);
        used += content.chars().count();
        if used > budget_chars {
            break;
        }
        history.push(Turn {
            role: r.get(0),
            content,
        });
    }
    history.reverse();
    Ok(Context {
        system_prompt,
        history,
    })
}

/// A title from the first user message: its first line, shortened.
fn title_of(messages: &[Turn]) -> String {
    let first = messages
        .iter()
        .find(|m| m.role == "user")
        .map(|m| m.content.trim())
        .unwrap_or("");
    let line = first.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return "New conversation".into();
    }
    if line.chars().count() <= TITLE_CHARS {
        return line.to_string();
    }
    let mut t: String = line.chars().take(TITLE_CHARS - 1).collect();
    t = t.trim_end().to_string();
    t.push('…');
    t
}

/// The turn to store, and where.
struct Plan {
    conversation_id: Uuid,
    /// A new conversation is created with the answer.
    create: bool,
    provider: Provider,
    model: String,
    system: Option<String>,
    messages: Vec<Turn>,
    /// When the request arrived: the new messages' time (one microsecond apart, in order).
    received: DateTime<Utc>,
}

/// The stored assistant message.
struct Stored {
    id: Uuid,
    created_at: String,
}

/// Write the turn as the caller, all or nothing.
async fn store(
    state: &AppState,
    ctx: &AuthContext,
    plan: &Plan,
    answer: &str,
    usage: &Usage,
) -> Result<Stored, FnError> {
    let mut c = client(state).await?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs(), false).await?;
    if plan.create {
        tx.execute(
            "insert into public.conversations (id, title, provider, model, system_prompt) \
             values ($1, $2, $3, $4, $5)",
            &[
                &plan.conversation_id,
                &title_of(&plan.messages),
                &plan.provider.id(),
                &plan.model,
                &plan.system,
            ],
        )
        .await?;
    } else {
        // Touch it, so lists ordered by updated_at show recent conversations first.
        let n = tx
            .execute(
                "update public.conversations set updated_at = now() where id = $1",
                &[&plan.conversation_id],
            )
            .await?;
        if n == 0 {
            return Err(FnError::conversation_not_found());
        }
    }
    let roles: Vec<&str> = plan.messages.iter().map(|m| m.role.as_str()).collect();
    let contents: Vec<&str> = plan.messages.iter().map(|m| m.content.as_str()).collect();
    tx.execute(
        "insert into public.messages (conversation_id, role, content, created_at) \
         select $1, m.role, m.content, $4::timestamptz + (m.n - 1) * interval '1 microsecond' \
         from unnest($2::text[], $3::text[]) with ordinality as m(role, content, n)",
        &[&plan.conversation_id, &roles, &contents, &plan.received],
    )
    .await?;
    let after = plan.messages.len() as f64;
    let tokens = usage.completion.and_then(|n| i32::try_from(n).ok());
    let row = tx
        .query_one(
            "insert into public.messages \
               (conversation_id, role, content, model, tokens_used, created_at) \
             values ($1, 'assistant', $2, $3, $4, \
               greatest(clock_timestamp(), $5::timestamptz + $6::float8 * interval '1 microsecond')) \
             returning id, to_json(created_at) #>> '{}'",
            &[
                &plan.conversation_id,
                &answer,
                &plan.model,
                &tokens,
                &plan.received,
                &after,
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(Stored {
        id: row.get(0),
        created_at: row.get(1),
    })
}

fn message_json(plan: &Plan, stored: &Stored, content: &str) -> Value {
    json!({
        "id": stored.id,
        "role": "assistant",
        "content": content,
        "model": plan.model,
        "provider": plan.provider.id(),
        "created_at": stored.created_at,
    })
}

fn usage_details(plan_provider: Provider, model: &str, usage: &Usage) -> UsageDetails {
    let int = |v: Option<i64>| v.and_then(|n| i32::try_from(n).ok());
    UsageDetails {
        provider: Some(plan_provider.id()),
        model: Some(model.to_string()),
        prompt_tokens: int(usage.prompt),
        completion_tokens: int(usage.completion),
        total_tokens: int(usage.total()),
        status: None,
    }
}

// ---------------------------------------------------------------- the call

async fn run(
    state: &AppState,
    ctx: &AuthContext,
    user: Uuid,
    req: Req,
    usage: &mut UsageDetails,
) -> Result<Reply, Failure> {
    let received = Utc::now();
    if req.method() != Method::POST {
        return Err(FnError::method_not_allowed(req.method(), NAME).into());
    }
    let cfg = &state.config.functions;
    let body = FnError::read_body(req.into_body(), cfg.chat_max_body_bytes).await?;
    let r = parse_request(&body)?;
    drop(body);
    usage.provider = Some(r.provider.id());
    usage.model = Some(r.model.clone());
    let own = r.api_key.as_ref().map(|k| k.expose().as_str());
    let key = match own.or_else(|| server_key(cfg, r.provider)) {
        Some(k) => k.to_string(),
        None => {
            return Err(FnError::new(
                StatusCode::BAD_REQUEST,
                "missing_api_key",
                format!(
                    "No {} API key: send `api_key` in the request, or configure {} on the server.",
                    r.provider.label(),
                    r.provider.key_var()
                ),
            )
            .into())
        }
    };
    let new_chars: usize = r.messages.iter().map(|m| m.content.chars().count()).sum();
    let context = match r.conversation_id {
        Some(id) => {
            let budget = cfg.context_max_chars.saturating_sub(new_chars);
            load_context(state, ctx, id, budget).await?
        }
        None => Context::default(),
    };
    let system = r.system.clone().or(context.system_prompt);
    let mut turns = context.history;
    turns.extend(r.messages.iter().cloned());
    let call = Call {
        provider: r.provider,
        base_url: base_url(cfg, r.provider),
        key: &key,
        model: &r.model,
        system: system.as_deref(),
        turns: &turns,
        temperature: r.temperature,
        max_tokens: r.max_tokens,
        default_max_tokens: cfg.default_max_tokens,
        stream: r.stream,
    };
    let plan = Plan {
        conversation_id: r.conversation_id.unwrap_or_else(Uuid::new_v4),
        create: r.conversation_id.is_none(),
        provider: r.provider,
        model: r.model.clone(),
        system: r.system.clone(),
        messages: r.messages,
        received,
    };
    tracing::debug!(
        function = NAME, provider = plan.provider.id(), model = %plan.model,
        turns = turns.len(), stream = r.stream, %user, "calling the provider"
    );
    let upstream = send(state, &call).await?;
    if !r.stream {
        let bytes = read_capped(
            upstream,
            MAX_ANSWER_BYTES,
            Duration::from_secs(cfg.provider_timeout_secs),
            plan.provider,
        )
        .await?;
        let answer = providers::parse_answer(plan.provider, &bytes)?;
        *usage = usage_details(plan.provider, &plan.model, &answer.usage);
        let stored = store(state, ctx, &plan, &answer.content, &answer.usage).await?;
        return Ok(Reply::Whole(json_response(
            StatusCode::OK,
            &json!({
                "conversation_id": plan.conversation_id,
                "message": message_json(&plan, &stored, &answer.content),
                "usage": answer.usage.json(),
            }),
        )));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(RELAY_BUFFER);
    let (usage_tx, usage_rx) = oneshot::channel();
    let relay = Relay {
        state: state.clone(),
        ctx: ctx.clone(),
        plan,
        key,
        idle: Duration::from_secs(cfg.stream_idle_timeout_secs),
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
    Ok(Reply::Streamed(resp, usage_rx))
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

/// Send the provider request; a non-2xx answer becomes our error (its class kept).
async fn send(state: &AppState, call: &Call<'_>) -> Result<reqwest::Response, Failure> {
    let cfg = &state.config.functions;
    let timeout = Duration::from_secs(cfg.provider_timeout_secs);
    let mut rb = state
        .functions
        .chat
        .client
        .post(call.url())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::ACCEPT,
            if call.stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        );
    for (k, v) in call.headers() {
        rb = rb.header(k, v);
    }
    let body = serde_json::to_vec(&call.body()).expect("json serializes");
    let resp = match tokio::time::timeout(timeout, rb.body(body).send()).await {
        Err(_) => return Err(timed_out(call.provider, cfg.provider_timeout_secs).into()),
        Ok(Err(e)) => return Err(unreachable(call.provider, &e).into()),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64)
        .map(str::to_string);
    let body = read_capped(resp, MAX_ERROR_BODY, Duration::from_secs(10), call.provider)
        .await
        .unwrap_or_default();
    let error = providers::http_error(call.provider, status.as_u16(), &body, call.key);
    tracing::info!(
        function = NAME,
        provider = call.provider.id(),
        upstream_status = status.as_u16(),
        "provider refused the call"
    );
    Err(Failure {
        error,
        retry_after: retry_after.filter(|_| status == StatusCode::TOO_MANY_REQUESTS),
    })
}

fn timed_out(p: Provider, secs: u64) -> FnError {
    FnError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "provider_timeout",
        format!("{} did not answer within {secs} s.", p.label()),
    )
}

fn unreachable(p: Provider, e: &reqwest::Error) -> FnError {
    // reqwest's text names only the URL (the key travels in a header).
    tracing::warn!(function = NAME, provider = p.id(), error = %e, "provider unreachable");
    if e.is_timeout() {
        return FnError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "provider_timeout",
            format!("{} could not be reached in time.", p.label()),
        );
    }
    FnError::new(
        StatusCode::BAD_GATEWAY,
        "provider_unavailable",
        format!("{} could not be reached.", p.label()),
    )
}

/// Read a provider body up to `cap` bytes within `timeout`.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
    timeout: Duration,
    p: Provider,
) -> Result<Vec<u8>, FnError> {
    let read = async {
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(p, &e))? {
            if buf.len() + chunk.len() > cap {
                return Err(FnError::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_error",
                    format!("{}'s answer is larger than {cap} bytes.", p.label()),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(p, timeout.as_secs())),
    }
}

// ---------------------------------------------------------------- streaming

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
            for ev in events.drain(..) {
                match reader.step(&ev, &self.key) {
                    Err(e) => return End::Failed(e),
                    Ok(providers::Step::Delta(text)) => {
                        if content.len() + text.len() > MAX_ANSWER_BYTES {
                            return End::Failed(FnError::new(
                                StatusCode::BAD_GATEWAY,
                                "provider_error",
                                format!(
                                    "{}'s answer is larger than {MAX_ANSWER_BYTES} bytes.",
                                    p.label()
                                ),
                            ));
                        }
                        content.push_str(&text);
                        let out = sse(&json!({"type": "delta", "content": text}));
                        if tx.send(out).await.is_err() {
                            return End::Cancelled;
                        }
                    }
                    Ok(providers::Step::Nothing) => {}
                    Ok(providers::Step::Done) => return End::Complete,
                }
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
}

fn providers_malformed(p: Provider) -> FnError {
    FnError::new(
        StatusCode::BAD_GATEWAY,
        "provider_error",
        format!("{} sent a stream that could not be read.", p.label()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, FnError> {
        parse_request(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"provider": "openai", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]})
    }

    #[test]
    fn a_valid_request() {
        let mut v = base();
        v["stream"] = json!(true);
        v["temperature"] = json!(0.7);
        v["max_tokens"] = json!(64);
        v["system"] = json!("s");
        v["api_key"] = json!(" sk-own ");
        v["conversation_id"] = json!("6f1c2a8e-5d1b-4c1a-9a61-3f0b7a2e9c11");
        let r = parse(v).unwrap();
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(64));
        assert_eq!(
            r.api_key.as_ref().map(|k| k.expose().as_str()),
            Some("sk-own")
        );
        assert!(!format!("{r:?}").contains("sk-own"));
        assert!(r.conversation_id.is_some());
        let mut v = base();
        v["conversation_id"] = Value::Null;
        v["system"] = Value::Null;
        assert!(parse(v).unwrap().conversation_id.is_none());
    }

    #[test]
    fn bad_requests_are_named() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([1]), "invalid_request", "JSON object"),
            (
                json!({"model": "m", "messages": []}),
                "invalid_request",
                "provider",
            ),
            (
                json!({"provider": "cohere", "model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "invalid_provider",
                "cohere",
            ),
            (json!({"provider": 3}), "invalid_provider", "string"),
            (
                json!({"provider": "openai", "messages": [{"role": "user", "content": "x"}]}),
                "invalid_request",
                "model",
            ),
            (
                json!({"provider": "openai", "model": "m", "messages": []}),
                "invalid_request",
                "empty",
            ),
            (
                json!({"provider": "openai", "model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "invalid_request",
                "messages[0].role",
            ),
            (
                json!({"provider": "openai", "model": "m", "messages": [{"role": "user", "content": 5}]}),
                "invalid_request",
                "messages[0].content",
            ),
        ];
        for (v, code, needle) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{v}");
            assert_eq!(e.code, code, "{v}");
            assert!(e.message.contains(needle), "{v}: {}", e.message);
        }
        for (k, bad) in [
            ("temperature", json!(3)),
            ("temperature", json!("hot")),
            ("max_tokens", json!(0)),
            ("max_tokens", json!(1.5)),
            ("stream", json!("yes")),
            ("conversation_id", json!("nope")),
            ("system", json!(1)),
            ("api_key", json!("has space inside")),
        ] {
            let mut v = base();
            v[k] = bad;
            let e = parse(v).unwrap_err();
            assert_eq!(e.code, "invalid_request", "{k}");
            assert!(e.message.contains(k), "{k}: {}", e.message);
            assert!(!e.message.contains("inside"));
        }
        assert!(parse_request(b"{not json").is_err());
    }

    #[test]
    fn titles() {
        let t = |c: &str| {
            title_of(&[
                Turn {
                    role: "system".into(),
                    content: "sys".into(),
                },
                Turn {
                    role: "user".into(),
                    content: c.into(),
                },
            ])
        };
        assert_eq!(t("  Hello there\nsecond line"), "Hello there");
        let long = t(&"word ".repeat(40));
        assert!(long.ends_with('…') && long.chars().count() <= TITLE_CHARS);
        assert_eq!(title_of(&[]), "New conversation");
    }
}
