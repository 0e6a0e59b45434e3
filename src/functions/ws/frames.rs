//! The client's JSON frames, parsed into typed requests (or a reason to answer `error`).

use serde_json::{json, Value};
use uuid::Uuid;

/// Longest message content accepted over the socket (the frame limit bounds it too).
pub const MAX_CONTENT: usize = 32 * 1024;

#[derive(Debug, PartialEq)]
pub enum Frame {
    Join(Uuid),
    Leave(Uuid),
    Typing(Uuid, bool),
    Message(Uuid, String),
    Ping,
}

/// A refused frame: the `error` frame's code and message.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

pub fn refusal(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl Refusal {
    pub fn to_frame(&self) -> String {
        error_frame(self.code, &self.message)
    }
}

pub fn error_frame(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

fn conversation(v: &Value) -> Result<Uuid, Refusal> {
    match v.get("conversation_id") {
        None | Some(Value::Null) => Err(refusal("invalid_request", "conversation_id is required.")),
        Some(Value::String(s)) => Uuid::parse_str(s.trim())
            .map_err(|_| refusal("invalid_request", "conversation_id must be a UUID.")),
        Some(_) => Err(refusal(
            "invalid_request",
            "conversation_id must be a UUID.",
        )),
    }
}

pub fn parse(text: &str) -> Result<Frame, Refusal> {
    let v: Value = serde_json::from_str(text)
        .map_err(|_| refusal("invalid_json", "The frame is not valid JSON."))?;
    if !v.is_object() {
        return Err(refusal("invalid_request", "A frame must be a JSON object."));
    }
    let Some(t) = v.get("type").and_then(Value::as_str) else {
        return Err(refusal("invalid_request", "The frame has no type."));
    };
    match t {
        "ping" => Ok(Frame::Ping),
        "join" => Ok(Frame::Join(conversation(&v)?)),
        "leave" => Ok(Frame::Leave(conversation(&v)?)),
        "typing" => {
            let id = conversation(&v)?;
            match v.get("is_typing") {
                Some(Value::Bool(b)) => Ok(Frame::Typing(id, *b)),
                _ => Err(refusal("invalid_request", "is_typing must be a boolean.")),
            }
        }
        "message" => {
            let id = conversation(&v)?;
            let Some(content) = v.get("content").and_then(Value::as_str) else {
                return Err(refusal("invalid_request", "content must be a string."));
            };
            if content.trim().is_empty() {
                return Err(refusal("invalid_request", "content must not be empty."));
            }
            if content.len() > MAX_CONTENT {
                return Err(refusal(
                    "payload_too_large",
                    format!("content is longer than {MAX_CONTENT} bytes."),
                ));
            }
            Ok(Frame::Message(id, content.to_string()))
        }
        other => Err(refusal(
            "unknown_type",
            format!(
                "Unknown frame type {}.",
                serde_json::to_string(&other.chars().take(64).collect::<String>())
                    .unwrap_or_default()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "6f1c1a2e-0b7e-4f35-9d8c-0d7f5b0e8a11";

    #[test]
    fn frames_parse() {
        let id = Uuid::parse_str(C).unwrap();
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(Frame::Ping));
        assert_eq!(
            parse(&format!(r#"{{"type":"join","conversation_id":"{C}"}}"#)),
            Ok(Frame::Join(id))
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"typing","conversation_id":"{C}","is_typing":false}}"#
            )),
            Ok(Frame::Typing(id, false))
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"message","conversation_id":"{C}","content":"hi"}}"#
            )),
            Ok(Frame::Message(id, "hi".into()))
        );
    }

    /// Mutated and truncated frames: every input parses or is refused, never a panic.
    #[test]
    fn fuzz_frames_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seeds = [
            format!(r#"{{"type":"join","conversation_id":"{C}"}}"#),
            format!(r#"{{"type":"typing","conversation_id":"{C}","is_typing":true}}"#),
            format!(r#"{{"type":"message","conversation_id":"{C}","content":"h\u00e9"}}"#),
            r#"{"type":"ping"}"#.to_string(),
        ];
        let alphabet = b"{}[]\":,.0123456789abcdefnulltrue \\u\xc3\xa9";
        for _ in 0..20_000 {
            let mut b = seeds[rng.gen_range(0..seeds.len())].clone().into_bytes();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..=b.len());
                match rng.gen_range(0..3) {
                    0 if i < b.len() => {
                        b.remove(i);
                    }
                    1 => b.insert(i, alphabet[rng.gen_range(0..alphabet.len())]),
                    _ => b.truncate(i),
                }
            }
            let text = String::from_utf8_lossy(&b);
            match parse(&text) {
                Ok(_) => {}
                Err(r) => assert!(!r.code.is_empty() && !r.message.is_empty()),
            }
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(parse("{").unwrap_err().code, "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().code, "invalid_request");
        assert_eq!(
            parse(r#"{"type":"dance"}"#).unwrap_err().code,
            "unknown_type"
        );
        assert_eq!(
            parse(r#"{"type":"join"}"#).unwrap_err().code,
            "invalid_request"
        );
        assert_eq!(
            parse(r#"{"type":"join","conversation_id":"nope"}"#)
                .unwrap_err()
                .code,
            "invalid_request"
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"typing","conversation_id":"{C}","is_typing":"yes"}}"#
            ))
            .unwrap_err()
            .code,
            "invalid_request"
        );
        assert_eq!(
            parse(&format!(r#"{{"type":"message","conversation_id":"{C}"}}"#))
                .unwrap_err()
                .code,
            "invalid_request"
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"message","conversation_id":"{C}","content":"  "}}"#
            ))
            .unwrap_err()
            .code,
            "invalid_request"
        );
    }
}
