//! The three providers in their own wire formats: OpenAI chat completions, Mistral chat
//! completions (OpenAI's shape at its own base URL) and Anthropic messages. Building the
//! request, reading a whole answer, reading a streamed answer event by event, and turning a
//! provider's error into ours (status class and message kept, the key never repeated).

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::sse::Event;
use crate::functions::error::FnError;

/// Anthropic's API version header value.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Longest provider message passed on to the client.
const MAX_MESSAGE_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Mistral,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "openai" => Some(Provider::OpenAi),
            "anthropic" => Some(Provider::Anthropic),
            "mistral" => Some(Provider::Mistral),
            _ => None,
        }
    }

    /// The name used in requests, rows and logs.
    pub fn id(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Mistral => "mistral",
        }
    }

    /// The name used in messages.
    pub fn label(self) -> &'static str {
        match self {
            Provider::OpenAi => "OpenAI",
            Provider::Anthropic => "Anthropic",
            Provider::Mistral => "Mistral",
        }
    }

    /// The environment variable holding the server's key.
    pub fn key_var(self) -> &'static str {
        match self {
            Provider::OpenAi => "OPENAI_API_KEY",
            Provider::Anthropic => "ANTHROPIC_API_KEY",
            Provider::Mistral => "MISTRAL_API_KEY",
        }
    }
}

/// One turn sent to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// Everything a provider request is made of.
pub struct Call<'a> {
    pub provider: Provider,
    pub base_url: &'a str,
    pub key: &'a str,
    pub model: &'a str,
    pub system: Option<&'a str>,
    pub turns: &'a [Turn],
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Sent to Anthropic when `max_tokens` is absent (it requires one).
    pub default_max_tokens: u32,
    pub stream: bool,
}

impl Call<'_> {
    pub fn url(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        match self.provider {
            Provider::OpenAi | Provider::Mistral => format!("{base}/chat/completions"),
            Provider::Anthropic => format!("{base}/v1/messages"),
        }
    }

    /// The request headers besides content type (the key is one of them).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self.provider {
            Provider::OpenAi | Provider::Mistral => {
                vec![("authorization", format!("Bearer {}", self.key))]
            }
            Provider::Anthropic => vec![
                ("x-api-key", self.key.to_string()),
                ("anthropic-version", ANTHROPIC_VERSION.to_string()),
            ],
        }
    }

    pub fn body(&self) -> Value {
        let mut b = Map::new();
        b.insert("model".into(), json!(self.model));
        match self.provider {
            Provider::OpenAi | Provider::Mistral => {
                let mut msgs = vec![];
                if let Some(s) = self.system {
                    msgs.push(json!({"role": "system", "content": s}));
                }
                for t in self.turns {
                    msgs.push(json!({"role": t.role, "content": t.content}));
                }
                b.insert("messages".into(), Value::Array(msgs));
                if let Some(n) = self.max_tokens {
                    // OpenAI's own API wants `max_completion_tokens` (its reasoning models
                    // refuse `max_tokens`); Mistral and the OpenAI-compatible servers an
                    // OPENAI_BASE_URL may point at (Ollama, vLLM, ...) know `max_tokens`.
                    let field =
                        if self.provider == Provider::OpenAi && is_openai_host(self.base_url) {
                            "max_completion_tokens"
                        } else {
                            "max_tokens"
                        };
                    b.insert(field.into(), json!(n));
                }
                if self.stream {
                    b.insert("stream".into(), json!(true));
                    // Mistral sends usage in its last chunk unasked (and refuses unknown
                    // fields); OpenAI only when asked.
                    if self.provider == Provider::OpenAi {
                        b.insert("stream_options".into(), json!({"include_usage": true}));
                    }
                }
            }
            Provider::Anthropic => {
                // System text is a top-level field; turns alternate, so consecutive turns of
                // one role are joined.
                let mut system: Vec<&str> = self.system.into_iter().collect();
                let mut msgs: Vec<(String, String)> = vec![];
                for t in self.turns {
                    if t.role == "system" {
                        system.push(&t.content);
                        continue;
                    }
                    match msgs.last_mut() {
                        Some((role, content)) if *role == t.role => {
                            content.push_str("\n\n");
                            content.push_str(&t.content);
                        }
                        _ => msgs.push((t.role.clone(), t.content.clone())),
                    }
                }
                // Anthropic refuses a first turn that is not the user's (a history cut by
                // the context budget may start with an answer): such turns are left out.
                let first_user = msgs.iter().position(|(r, _)| r == "user").unwrap_or(0);
                msgs.drain(..first_user);
                if !system.is_empty() {
                    b.insert("system".into(), json!(system.join("\n\n")));
                }
                b.insert(
                    "messages".into(),
                    Value::Array(
                        msgs.into_iter()
                            .map(|(role, content)| json!({"role": role, "content": content}))
                            .collect(),
                    ),
                );
                b.insert(
                    "max_tokens".into(),
                    json!(self.max_tokens.unwrap_or(self.default_max_tokens)),
                );
                if self.stream {
                    b.insert("stream".into(), json!(true));
                }
            }
        }
        if let Some(t) = self.temperature {
            b.insert("temperature".into(), json!(t));
        }
        Value::Object(b)
    }
}

/// Whether a base URL is OpenAI's own API (not an OpenAI-compatible server).
fn is_openai_host(base_url: &str) -> bool {
    base_url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.eq_ignore_ascii_case("api.openai.com")))
        .unwrap_or(false)
}

/// Token counts as the provider reported them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<i64>,
    pub completion: Option<i64>,
    pub total: Option<i64>,
}

impl Usage {
    pub fn total(&self) -> Option<i64> {
        self.total.or(match (self.prompt, self.completion) {
            (Some(p), Some(c)) => Some(p + c),
            _ => None,
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.total(),
        })
    }

    fn from_openai(u: &Value) -> Usage {
        Usage {
            prompt: u["prompt_tokens"].as_i64(),
            completion: u["completion_tokens"].as_i64(),
            total: u["total_tokens"].as_i64(),
        }
    }

    /// Anthropic's input counts cache reads and writes apart from `input_tokens`.
    fn anthropic_input(u: &Value) -> Option<i64> {
        let base = u["input_tokens"].as_i64()?;
        Some(
            base + u["cache_creation_input_tokens"].as_i64().unwrap_or(0)
                + u["cache_read_input_tokens"].as_i64().unwrap_or(0),
        )
    }
}

/// A whole (non-streamed) answer.
#[derive(Debug)]
pub struct Answer {
    pub content: String,
    pub usage: Usage,
}

/// Text of an OpenAI/Mistral `content`: a string, or (Mistral) an array of text chunks.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<String>(),
        _ => String::new(),
    }
}

pub fn parse_answer(provider: Provider, body: &[u8]) -> Result<Answer, FnError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| malformed(provider))?;
    match provider {
        Provider::OpenAi | Provider::Mistral => {
            let choice = &v["choices"][0];
            if !choice.is_object() {
                return Err(malformed(provider));
            }
            Ok(Answer {
                content: content_text(&choice["message"]["content"]),
                usage: Usage::from_openai(&v["usage"]),
            })
        }
        Provider::Anthropic => {
            let blocks = v["content"].as_array().ok_or_else(|| malformed(provider))?;
            Ok(Answer {
                content: blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect(),
                usage: Usage {
                    prompt: Usage::anthropic_input(&v["usage"]),
                    completion: v["usage"]["output_tokens"].as_i64(),
                    total: None,
                },
            })
        }
    }
}

fn malformed(provider: Provider) -> FnError {
    FnError::new(
        StatusCode::BAD_GATEWAY,
        "provider_error",
        format!(
            "{} sent an answer that could not be read.",
            provider.label()
        ),
    )
}

/// What one streamed event means.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Text to pass on.
    Delta(String),
    /// Nothing to pass on (role chunks, pings, usage).
    Nothing,
    /// The answer is complete.
    Done,
}

/// Reads a provider's stream event by event.
pub struct StreamReader {
    provider: Provider,
    pub usage: Usage,
    /// The provider said why it stopped (a stream ending right after is complete).
    pub stopped: bool,
    pub done: bool,
}

impl StreamReader {
    pub fn new(provider: Provider) -> StreamReader {
        StreamReader {
            provider,
            usage: Usage::default(),
            stopped: false,
            done: false,
        }
    }

    /// Whether the stream may end here without losing anything.
    pub fn complete(&self) -> bool {
        self.done || self.stopped
    }

    pub fn step(&mut self, ev: &Event, key: &str) -> Result<Step, FnError> {
        let step = match self.provider {
            Provider::OpenAi | Provider::Mistral => self.openai(ev, key)?,
            Provider::Anthropic => self.anthropic(ev, key)?,
        };
        if step == Step::Done {
            self.done = true;
        }
        Ok(step)
    }

    fn openai(&mut self, ev: &Event, key: &str) -> Result<Step, FnError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Ok(Step::Done);
        }
        let v: Value = serde_json::from_str(data).map_err(|_| malformed(self.provider))?;
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Err(stream_error(self.provider, &v["error"], None, key));
        }
        if v["usage"].is_object() {
            self.usage = Usage::from_openai(&v["usage"]);
        }
        let choice = &v["choices"][0];
        if !choice["finish_reason"].is_null() && choice.get("finish_reason").is_some() {
            self.stopped = true;
        }
        let text = content_text(&choice["delta"]["content"]);
        Ok(if text.is_empty() {
            Step::Nothing
        } else {
            Step::Delta(text)
        })
    }

    fn anthropic(&mut self, ev: &Event, key: &str) -> Result<Step, FnError> {
        let v: Value =
            serde_json::from_str(ev.data.trim()).map_err(|_| malformed(self.provider))?;
        let kind = v["type"].as_str().unwrap_or(ev.event.as_str());
        Ok(match kind {
            "message_start" => {
                let u = &v["message"]["usage"];
                self.usage.prompt = Usage::anthropic_input(u);
                self.usage.completion = u["output_tokens"].as_i64();
                Step::Nothing
            }
            "content_block_start" => match v["content_block"]["text"].as_str() {
                Some(t) if !t.is_empty() => Step::Delta(t.to_string()),
                _ => Step::Nothing,
            },
            "content_block_delta" if v["delta"]["type"] == "text_delta" => {
                match v["delta"]["text"].as_str() {
                    Some(t) if !t.is_empty() => Step::Delta(t.to_string()),
                    _ => Step::Nothing,
                }
            }
            "message_delta" => {
                let u = &v["usage"];
                if let Some(n) = u["output_tokens"].as_i64() {
                    self.usage.completion = Some(n);
                }
                if let Some(n) = Usage::anthropic_input(u) {
                    self.usage.prompt = Some(n);
                }
                if !v["delta"]["stop_reason"].is_null() {
                    self.stopped = true;
                }
                Step::Nothing
            }
            "message_stop" => Step::Done,
            "error" => {
                let status = anthropic_error_status(v["error"]["type"].as_str().unwrap_or(""));
                return Err(stream_error(self.provider, &v["error"], status, key));
            }
            _ => Step::Nothing,
        })
    }
}

/// The HTTP status Anthropic gives each of its error types.
fn anthropic_error_status(kind: &str) -> Option<u16> {
    Some(match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "overloaded_error" => 529,
        _ => return None,
    })
}

fn stream_error(provider: Provider, err: &Value, status: Option<u16>, key: &str) -> FnError {
    let message = message_of(err).unwrap_or_else(|| "the stream failed".into());
    map_status(provider, status.unwrap_or(502), &scrub(&message, key))
}

/// The provider's own message in its error body, if there is one: OpenAI's and Anthropic's
/// `error.message`, Mistral's `message` (a string, or an object for validation errors).
fn message_of(v: &Value) -> Option<String> {
    let text = |x: &Value| {
        x.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    text(&v["error"]["message"])
        .or_else(|| text(&v["message"]))
        .or_else(|| text(&v["error"]))
        .or_else(|| text(&v["detail"]))
        .or_else(|| {
            [&v["message"], &v["detail"]]
                .into_iter()
                .find(|x| x.is_object() || x.is_array())
                .map(|x| x.to_string())
        })
}

/// A provider's failed answer (status and body) as our error.
pub fn http_error(provider: Provider, status: u16, body: &[u8], key: &str) -> FnError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = message_of(&v)
        .or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            // A short plain-text body says more than the status; HTML pages say nothing.
            (!text.is_empty() && !text.starts_with('<')).then(|| text.to_string())
        })
        .unwrap_or_else(|| {
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error")
                .to_string()
        });
    map_status(provider, status, &scrub(&message, key))
}

/// Provider status → ours: 4xx keep their status (401 stays 401, 429 stays 429), timeouts
/// become 504, the rest (5xx, Anthropic's 529) 502.
fn map_status(provider: Provider, status: u16, message: &str) -> FnError {
    let (ours, code) = match status {
        401 | 403 => (status, "provider_auth_error"),
        429 => (429, "rate_limited"),
        408 | 504 => (504, "provider_timeout"),
        400..=499 => (status, "provider_error"),
        _ => (502, "provider_error"),
    };
    FnError::new(
        StatusCode::from_u16(ours).unwrap_or(StatusCode::BAD_GATEWAY),
        code,
        format!("{} answered {status}: {message}", provider.label()),
    )
}

/// A provider message made safe to pass on: bounded, the key removed, and key-like words
/// (`sk-…`, partially masked keys, long random tokens like Mistral's 32-character keys)
/// replaced, since providers quote keys in their errors. Model names stay readable.
pub fn scrub(message: &str, key: &str) -> String {
    let mut m = message.to_string();
    if key.len() >= 4 {
        m = m.replace(key, "[redacted]");
    }
    let words: Vec<String> = m
        .split(' ')
        .map(|w| {
            let bare = w.trim_matches(|c: char| ".,;:'\"()[]".contains(c));
            let keylike = bare.starts_with("sk-")
                || bare.matches('*').count() >= 3
                || (bare.len() >= 32
                    && bare
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    && bare.chars().any(|c| c.is_ascii_digit())
                    && bare.chars().any(|c| c.is_ascii_alphabetic()));
            if keylike && !bare.is_empty() {
                w.replace(bare, "[redacted]")
            } else {
                w.to_string()
            }
        })
        .collect();
    let m = words.join(" ");
    if m.chars().count() > MAX_MESSAGE_CHARS {
        let mut s: String = m.chars().take(MAX_MESSAGE_CHARS).collect();
        s.push('…');
        s
    } else {
        m
    }
}

#[cfg(test)]
mod tests;
