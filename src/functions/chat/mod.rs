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

mod context;
pub mod providers;
mod relay;
mod request;
pub mod sse;
mod store;
mod upstream;
mod whole;

use std::time::Duration;

use chrono::Utc;
use http::{HeaderValue, Method, StatusCode};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::error::FnError;
use super::{UsageDetails, UsageReport};
use crate::config::FunctionsConfig;
use crate::http::{error_response, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;
use context::{load_context, Context};
use providers::Call;
use request::{parse_request, ChatRequest};
use store::Plan;
use upstream::{base_url, send, server_key};

pub const NAME: &str = "chat-completion";
/// Largest answer read from a provider (whole, or accumulated from a stream).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// This function's share of the functions state: one HTTP client (connection pool) for
/// every provider call, built on the first call (it reads the system's root certificates,
/// which a server that never calls a provider need not hold in memory).
pub struct State {
    connect: Duration,
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

pub fn init(cfg: &FunctionsConfig) -> Result<State, String> {
    Ok(State {
        connect: Duration::from_secs(cfg.provider_timeout_secs.min(10)),
        client: std::sync::OnceLock::new(),
    })
}

impl State {
    /// The provider client; an error only when no client can be built at all.
    fn client(&self) -> Result<&reqwest::Client, FnError> {
        let built = self.client.get_or_init(|| {
            let connect = self.connect;
            reqwest::Client::builder()
                .connect_timeout(connect)
                .user_agent(concat!("oxibase/", env!("CARGO_PKG_VERSION")))
                .build()
                .or_else(|e| {
                    // A machine whose certificate store cannot be read still serves
                    // plain-HTTP providers (local models); HTTPS calls then fail with a
                    // clear 502.
                    tracing::warn!(error = %e, "provider client without the system's root certificates");
                    reqwest::Client::builder()
                        .connect_timeout(connect)
                        .tls_built_in_native_certs(false)
                        .build()
                })
                .map_err(|e| format!("chat-completion HTTP client: {e}"))
        });
        built.as_ref().map_err(|e| {
            tracing::error!(error = %e, "no provider client");
            FnError::new(
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                "The server cannot make HTTP calls to providers.",
            )
        })
    }
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
    let key = provider_key(cfg, &r)?;
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
    let stream = r.stream;
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
        turns = turns.len(), stream, %user, "calling the provider"
    );
    let upstream = send(state, &call).await?;
    if !stream {
        return whole::answer(state, ctx, &plan, upstream, usage).await;
    }
    let idle = Duration::from_secs(cfg.stream_idle_timeout_secs);
    Ok(relay::start(state, ctx, plan, key, idle, upstream))
}

/// The key for this call: the caller's own, else the server's for that provider.
fn provider_key(cfg: &FunctionsConfig, r: &ChatRequest) -> Result<String, FnError> {
    let own = r.api_key.as_ref().map(|k| k.expose().as_str());
    match own.or_else(|| server_key(cfg, r.provider)) {
        Some(k) => Ok(k.to_string()),
        None => Err(FnError::new(
            StatusCode::BAD_REQUEST,
            "missing_api_key",
            format!(
                "No {} API key: send `api_key` in the request, or configure {} on the server.",
                r.provider.label(),
                r.provider.key_var()
            ),
        )),
    }
}
