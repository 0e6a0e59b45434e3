//! The HTTP call to the provider: sent with the configured base URL and key, a non-2xx
//! answer turned into our error (its class and `Retry-After` kept), bodies read with a cap
//! and a time limit.

use std::time::Duration;

use http::StatusCode;

use super::providers::{self, Call, Provider};
use super::{Failure, NAME};
use crate::config::FunctionsConfig;
use crate::functions::error::FnError;
use crate::state::AppState;

/// Largest provider error body read.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub(super) fn base_url(cfg: &FunctionsConfig, p: Provider) -> &str {
    match p {
        Provider::OpenAi => &cfg.openai_base_url,
        Provider::Anthropic => &cfg.anthropic_base_url,
        Provider::Mistral => &cfg.mistral_base_url,
    }
}

pub(super) fn server_key(cfg: &FunctionsConfig, p: Provider) -> Option<&str> {
    match p {
        Provider::OpenAi => cfg.openai_api_key.as_ref(),
        Provider::Anthropic => cfg.anthropic_api_key.as_ref(),
        Provider::Mistral => cfg.mistral_api_key.as_ref(),
    }
    .map(|k| k.expose().as_str())
    .filter(|k| !k.is_empty())
}

/// Send the provider request; a non-2xx answer becomes our error (its class kept).
pub(super) async fn send(state: &AppState, call: &Call<'_>) -> Result<reqwest::Response, Failure> {
    let cfg = &state.config.functions;
    let timeout = Duration::from_secs(cfg.provider_timeout_secs);
    let mut rb = state
        .functions
        .chat
        .client()?
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
pub(super) async fn read_capped(
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
