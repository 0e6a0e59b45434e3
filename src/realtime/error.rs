//! Everything realtime refuses, in one type: the HTTP API's and the WebSocket upgrade's
//! error responses (`into_response`) and a channel's error replies (`reply_payload`), each
//! with the exact status, shape and text of Supabase Realtime.

use http::StatusCode;
use serde_json::{json, Value};

use super::token::TokenError;
use crate::http::{json_response, Resp};

#[derive(Debug)]
pub enum RealtimeError {
    // HTTP API: `{"message": …}`.
    NotFound,
    /// No token, or one that does not verify (401 `Unauthorized`).
    Unauthorized,
    /// A private topic the caller may not write to (403 `Unauthorized`).
    Forbidden,
    UnsupportedMediaType,
    NameTooLong,
    PayloadTooLarge,
    /// The authorization query failed.
    RlsPolicy,
    // HTTP API validation: `{"errors": {field: [msg]}}`.
    Invalid {
        field: &'static str,
        msg: &'static str,
    },
    /// A batch entry without topic, event or payload object.
    InvalidMessage,
    // WebSocket upgrade: `{"error": …}`.
    NotWebSocket,
    UnsupportedVsn,
    ApiKeyMissing,
    /// A token refused at the upgrade (401) or at a join (its reason).
    Token(TokenError),
    // Channel replies: `{"reason": …}`.
    UnmatchedTopic,
    UnexpectedEvent(String),
    TopicNameRequired,
    TooManyChannels,
    ReplayPublic,
    ReplayParams,
    ReplayFailed,
    /// No read policy for this private topic.
    ReadDenied(String),
    PoliciesUnavailable,
    PresenceNotMap,
    /// Refused without a reason (`{}`).
    Refused,
    // A joined channel closed by the server, reported in a `system` push.
    /// The channel's token expired this many seconds ago.
    ExpiredWhileJoined(i64),
    /// A refreshed token may no longer read this private topic.
    ReadRevoked(String),
    /// Subscribing to postgres_changes failed (the bindings' errors, joined).
    PostgresChanges(String),
    /// The socket fell too far behind and is closed (the client reconnects).
    SlowClient,
}

impl From<TokenError> for RealtimeError {
    fn from(e: TokenError) -> Self {
        RealtimeError::Token(e)
    }
}

impl RealtimeError {
    /// The text of a channel reply's `reason`.
    fn reason(&self) -> String {
        match self {
            RealtimeError::Token(e) => e.reason(),
            RealtimeError::UnmatchedTopic => "unmatched topic".into(),
            RealtimeError::UnexpectedEvent(t) => {
                format!("Unexpected message from client of type `{t}`")
            }
            RealtimeError::TopicNameRequired => {
                "TopicNameRequired: You must provide a topic name".into()
            }
            RealtimeError::TooManyChannels => "ChannelRateLimitReached: Too many channels".into(),
            RealtimeError::ReplayPublic => {
                "UnableToReplayMessages: Replay is not allowed for public channels".into()
            }
            RealtimeError::ReplayParams => {
                "UnableToReplayMessages: Replay params are not valid".into()
            }
            RealtimeError::ReplayFailed => {
                "UnableToReplayMessages: Realtime was unable to replay messages".into()
            }
            RealtimeError::ReadDenied(topic) => format!(
                "Unauthorized: You do not have permissions to read from this Channel topic: {topic}"
            ),
            RealtimeError::PoliciesUnavailable => {
                "UnableToSetPolicies: Realtime was unable to connect to the project database".into()
            }
            RealtimeError::PresenceNotMap => "Presence track payload must be a map".into(),
            RealtimeError::Refused => String::new(),
            RealtimeError::ExpiredWhileJoined(_)
            | RealtimeError::ReadRevoked(_)
            | RealtimeError::PostgresChanges(_)
            | RealtimeError::SlowClient => self.system_message(),
            other => other.http_parts().1,
        }
    }

    /// Status and message of the HTTP answers made of one message.
    fn http_parts(&self) -> (StatusCode, String) {
        let (status, msg) = match self {
            RealtimeError::NotFound => (StatusCode::NOT_FOUND, "not found"),
            RealtimeError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            RealtimeError::Forbidden => (StatusCode::FORBIDDEN, "Unauthorized"),
            RealtimeError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json or application/octet-stream",
            ),
            RealtimeError::NameTooLong => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "topic and event must be at most 255 bytes",
            ),
            RealtimeError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload size exceeds tenant limit",
            ),
            RealtimeError::RlsPolicy => (StatusCode::UNPROCESSABLE_ENTITY, "RLS policy error"),
            RealtimeError::NotWebSocket => (
                StatusCode::BAD_REQUEST,
                "This endpoint only accepts WebSocket upgrade requests",
            ),
            RealtimeError::UnsupportedVsn => {
                (StatusCode::FORBIDDEN, "Unsupported protocol version (vsn)")
            }
            RealtimeError::ApiKeyMissing => (StatusCode::UNAUTHORIZED, "API key is missing"),
            RealtimeError::Token(TokenError::Expired(_)) => {
                (StatusCode::UNAUTHORIZED, "Token has expired")
            }
            RealtimeError::Token(e) => return (StatusCode::UNAUTHORIZED, e.message()),
            RealtimeError::Invalid { msg, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *msg),
            RealtimeError::InvalidMessage => (StatusCode::UNPROCESSABLE_ENTITY, "can't be blank"),
            // Channel refusals are not answered over HTTP.
            RealtimeError::UnmatchedTopic
            | RealtimeError::UnexpectedEvent(_)
            | RealtimeError::TopicNameRequired
            | RealtimeError::TooManyChannels
            | RealtimeError::ReplayPublic
            | RealtimeError::ReplayParams
            | RealtimeError::ReplayFailed
            | RealtimeError::ReadDenied(_)
            | RealtimeError::PoliciesUnavailable
            | RealtimeError::PresenceNotMap
            | RealtimeError::Refused
            | RealtimeError::ExpiredWhileJoined(_)
            | RealtimeError::ReadRevoked(_)
            | RealtimeError::PostgresChanges(_)
            | RealtimeError::SlowClient => return (StatusCode::BAD_REQUEST, self.reason()),
        };
        (status, msg.to_string())
    }

    /// The HTTP response for this error.
    pub fn into_response(self) -> Resp {
        let (status, msg) = self.http_parts();
        let body = match &self {
            RealtimeError::Invalid { field, msg } => json!({"errors": { *field: [msg] }}),
            RealtimeError::InvalidMessage => json!({"errors": {"messages": [{
                "topic": ["can't be blank"],
                "event": ["can't be blank"],
                "payload": ["can't be blank"],
            }]}}),
            RealtimeError::NotWebSocket
            | RealtimeError::UnsupportedVsn
            | RealtimeError::ApiKeyMissing
            | RealtimeError::Token(_) => json!({ "error": msg }),
            _ => json!({ "message": msg }),
        };
        json_response(status, &body)
    }

    /// The `message` of the `system` push that reports this error.
    fn system_message(&self) -> String {
        match self {
            RealtimeError::ExpiredWhileJoined(n) => format!("Token has expired {n} seconds ago"),
            RealtimeError::ReadRevoked(topic) => {
                format!("You no longer have permission to read from this Channel topic: {topic}")
            }
            RealtimeError::Token(e) => e.message(),
            RealtimeError::PoliciesUnavailable => {
                "Realtime was unable to connect to the project database".into()
            }
            RealtimeError::PostgresChanges(m) => m.clone(),
            RealtimeError::SlowClient => {
                "ClientTooSlow: too many messages queued for this connection; it is closed, reconnect to rejoin".into()
            }
            other => other.reason(),
        }
    }

    /// The payload of the `system` push that reports this error on `channel`.
    pub fn system_payload(&self, channel: &str) -> Value {
        let extension = match self {
            RealtimeError::PostgresChanges(_) => "postgres_changes",
            _ => "system",
        };
        json!({"extension": extension, "status": "error", "message": self.system_message(), "channel": channel})
    }

    /// The `response` of a channel's error reply.
    pub fn reply_payload(&self) -> Value {
        match self {
            RealtimeError::Refused => json!({}),
            other => json!({ "reason": other.reason() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: RealtimeError) -> (u16, Value) {
        use http_body_util::BodyExt;
        let r = e.into_response();
        let status = r.status().as_u16();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn http_shapes() {
        let (s, b) = body(RealtimeError::Unauthorized).await;
        assert_eq!((s, b), (401, json!({"message": "Unauthorized"})));
        let (s, b) = body(RealtimeError::Forbidden).await;
        assert_eq!((s, b), (403, json!({"message": "Unauthorized"})));
        let (s, b) = body(RealtimeError::Invalid {
            field: "messages",
            msg: "is invalid",
        })
        .await;
        assert_eq!(
            (s, b),
            (422, json!({"errors": {"messages": ["is invalid"]}}))
        );
        let (s, b) = body(RealtimeError::NotWebSocket).await;
        assert_eq!(s, 400);
        assert_eq!(
            b,
            json!({"error": "This endpoint only accepts WebSocket upgrade requests"})
        );
        let (s, b) = body(RealtimeError::Token(TokenError::Expired("x".into()))).await;
        assert_eq!((s, b), (401, json!({"error": "Token has expired"})));
    }

    #[test]
    fn system_payloads() {
        assert_eq!(
            RealtimeError::ExpiredWhileJoined(3).system_payload("room"),
            json!({"extension": "system", "status": "error", "channel": "room",
                   "message": "Token has expired 3 seconds ago"})
        );
        assert_eq!(
            RealtimeError::ReadRevoked("room".into()).system_payload("room")["message"],
            "You no longer have permission to read from this Channel topic: room"
        );
        assert_eq!(
            RealtimeError::PoliciesUnavailable.system_payload("room")["message"],
            "Realtime was unable to connect to the project database"
        );
        assert_eq!(
            RealtimeError::Token(TokenError::Malformed).system_payload("room")["message"],
            "The token provided is not a valid JWT"
        );
        let e = RealtimeError::PostgresChanges("bad filter".into());
        assert_eq!(e.system_payload("room")["extension"], "postgres_changes");
        assert_eq!(e.system_payload("room")["message"], "bad filter");
    }

    #[test]
    fn reply_payloads() {
        assert_eq!(RealtimeError::Refused.reply_payload(), json!({}));
        assert_eq!(
            RealtimeError::UnmatchedTopic.reply_payload(),
            json!({"reason": "unmatched topic"})
        );
        assert_eq!(
            RealtimeError::ReadDenied("room".into()).reply_payload(),
            json!({"reason": "Unauthorized: You do not have permissions to read from this Channel topic: room"})
        );
        assert_eq!(
            RealtimeError::UnexpectedEvent("foo".into()).reply_payload(),
            json!({"reason": "Unexpected message from client of type `foo`"})
        );
    }
}
