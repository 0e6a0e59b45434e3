//! The request body of chat-completion, checked entirely before anything else happens.

use http::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use super::providers::{Provider, Turn};
use crate::config::Secret;
use crate::functions::error::FnError;

/// Most new messages in one request.
const MAX_NEW_MESSAGES: usize = 200;
/// Longest model name.
const MAX_MODEL_CHARS: usize = 200;
/// Largest `max_tokens` accepted.
const MAX_TOKENS_LIMIT: u64 = 1_000_000;

/// A checked request.
#[derive(Debug)]
pub(super) struct ChatRequest {
    pub(super) conversation_id: Option<Uuid>,
    pub(super) provider: Provider,
    pub(super) model: String,
    pub(super) messages: Vec<Turn>,
    pub(super) stream: bool,
    pub(super) temperature: Option<f64>,
    pub(super) max_tokens: Option<u32>,
    pub(super) system: Option<String>,
    /// The caller's own key, for this one call (Debug prints `***`).
    pub(super) api_key: Option<Secret<String>>,
}

fn invalid(message: impl Into<String>) -> FnError {
    FnError::bad_request(message)
}

/// Check the body entirely (nothing is read from or written to the database before).
pub(super) fn parse_request(body: &[u8]) -> Result<ChatRequest, FnError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| invalid("The request body must be a JSON object."))?;
    let Value::Object(o) = v else {
        return Err(invalid("The request body must be a JSON object."));
    };
    let opt = |k: &str| o.get(k).filter(|v| !v.is_null());
    let provider = provider_of(opt("provider"))?;
    let model = model_of(opt("model"))?;
    let messages = messages_of(opt("messages"))?;
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

/// `provider`: required, one of ours.
fn provider_of(v: Option<&Value>) -> Result<Provider, FnError> {
    Ok(match v {
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
    })
}

/// `model`: required, a printable name of bounded length.
fn model_of(v: Option<&Value>) -> Result<String, FnError> {
    let model = match v {
        Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
        _ => return Err(invalid("`model` is required: the provider's model name.")),
    };
    if model.chars().count() > MAX_MODEL_CHARS || model.chars().any(char::is_control) {
        return Err(invalid("`model` is not a valid model name."));
    }
    Ok(model)
}

/// `messages`: a non-empty bounded array of `{role, content}`.
fn messages_of(v: Option<&Value>) -> Result<Vec<Turn>, FnError> {
    let Some(Value::Array(list)) = v else {
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
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
}
