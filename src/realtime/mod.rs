//! /realtime/v1: a Supabase Realtime-compatible server. Phoenix channels over WebSocket
//! (vsn 1.0.0 and 2.0.0) with Broadcast, Presence and Postgres Changes, private channels
//! authorized by RLS on `realtime.messages`, and the HTTP broadcast API.

pub(crate) mod authz;
pub(crate) mod changes;
pub(crate) mod error;
pub(crate) mod fanout;
pub mod hub;
pub mod phoenix;
pub(crate) mod socket;
pub(crate) mod token;
pub(crate) mod upgrade;

use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::Pool;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::config::Config;
use crate::http::{json_response, query_pairs, status_response, Req, Resp};
use crate::state::AppState;
use error::RealtimeError;
use hub::{Broadcast, Hub};
use phoenix::UserBroadcast;

/// This API's share of the application state.
pub struct State {
    pub hub: Arc<Hub>,
    pub capture: changes::Capture,
    pub fanout: fanout::Fanout,
    /// Visibility check calls made for postgres_changes (one per table and group of
    /// subscribers in a batch, retries included; a batch's calls are pipelined).
    pub rls_round_trips: std::sync::atomic::AtomicU64,
}

/// `capture_login` connects change capture's replication sessions (a role with REPLICATION);
/// `checks` is change capture's own small pool for its RLS checks (see [`changes::Capture`]).
pub async fn init(
    _config: &Config,
    checks: Pool,
    capture_login: &tokio_postgres::Config,
) -> Result<State, String> {
    Ok(State {
        hub: Arc::new(Hub::default()),
        capture: changes::Capture::new(
            crate::db::wire::WireConfig::from_config(capture_login),
            checks,
        ),
        fanout: fanout::Fanout::new(true),
        rls_round_trips: Default::default(),
    })
}

/// The cross-process fan-out starts now; change capture starts lazily, on the first
/// postgres_changes subscription.
pub fn spawn_background(state: &AppState) {
    fanout::start(state);
}

/// At shutdown, before the pool closes: the other processes drop this one's presences now.
pub async fn shutdown(state: &AppState) {
    fanout::withdraw_presences(state).await;
    state.realtime.capture.checks.close();
}

/// Deliver a broadcast here and to the other processes on this database.
pub fn broadcast(state: &AppState, key: &hub::TopicKey, from: Option<hub::ChanId>, msg: Broadcast) {
    state.realtime.fanout.publish(key, &msg);
    state.realtime.hub.broadcast(key, from, msg);
}

/// The typed endpoints of this API (parsed before any I/O).
#[derive(Debug, PartialEq)]
enum Endpoint {
    WebSocket,
    Ping,
    Batch,
    Single { topic: String, event: String },
}

fn parse_endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    let path = path.trim_end_matches('/');
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.to_string())
    };
    match (method, path) {
        (&Method::GET, "websocket") => Some(Endpoint::WebSocket),
        (&Method::GET, "api/ping") => Some(Endpoint::Ping),
        (&Method::POST, "api/broadcast") => Some(Endpoint::Batch),
        (&Method::POST, p) => {
            let rest = p.strip_prefix("api/broadcast/")?;
            let (topic, event) = rest.rsplit_once("/events/")?;
            let (topic, event) = (decode(topic)?, decode(event)?);
            (!topic.is_empty() && !event.is_empty() && !topic.contains('/'))
                .then_some(Endpoint::Single { topic, event })
        }
        _ => None,
    }
}

pub async fn handle(state: &AppState, req: Req, path: &str) -> Resp {
    match parse_endpoint(req.method(), path) {
        Some(Endpoint::WebSocket) => socket::upgrade(state, req).await,
        Some(Endpoint::Ping) => Ok(json_response(
            StatusCode::OK,
            &json!({"message": "Success"}),
        )),
        Some(Endpoint::Batch) => batch_broadcast(state, req).await,
        Some(Endpoint::Single { topic, event }) => single_broadcast(state, req, topic, event).await,
        None => Err(RealtimeError::NotFound),
    }
    .unwrap_or_else(RealtimeError::into_response)
}

/// The caller of an HTTP broadcast (Bearer, apikey header or `apikey` query parameter).
fn caller(state: &AppState, req: &Req) -> Result<crate::identity::AuthContext, RealtimeError> {
    let q = query_pairs(req.uri().query());
    let qk = q
        .iter()
        .find(|(k, _)| k == "apikey")
        .map(|(_, v)| v.as_str());
    let token = crate::identity::bearer(req.headers())
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get("apikey")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .or(qk.map(str::to_string))
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(RealtimeError::Unauthorized);
    };
    // Supabase answers every token problem here with the same 401.
    token::verify(state, &token)
        .map(|(c, _)| c)
        .map_err(|_| RealtimeError::Unauthorized)
}

async fn read_body(state: &AppState, req: Req) -> Result<Bytes, RealtimeError> {
    crate::http::body::read_limited(req.into_body(), state.config.max_body_bytes)
        .await
        .map_err(|_| RealtimeError::PayloadTooLarge)
}

/// `POST /api/broadcast/<topic>/events/<event>[?private=true]`: JSON or raw bytes.
async fn single_broadcast(
    state: &AppState,
    req: Req,
    topic: String,
    event: String,
) -> Result<Resp, RealtimeError> {
    let ctx = caller(state, &req)?;
    let q = query_pairs(req.uri().query());
    let private = q.iter().any(|(k, v)| k == "private" && v == "true");
    let ctype = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let binary = ctype.starts_with("application/octet-stream");
    if !binary && !ctype.starts_with("application/json") {
        return Err(RealtimeError::UnsupportedMediaType);
    }
    if topic.len() > 255 || event.len() > 255 {
        return Err(RealtimeError::NameTooLong);
    }
    let body = read_body(state, req).await?;
    if !binary && serde_json::from_slice::<Value>(&body).is_err() {
        return Err(RealtimeError::Invalid {
            field: "payload",
            msg: "is invalid",
        });
    }
    if private {
        match authz::can_write(state, &ctx, &topic, "broadcast").await {
            Ok(true) => {}
            Ok(false) => return Err(RealtimeError::Forbidden),
            Err(e) => {
                tracing::error!(error = %e, "realtime: authorization query failed");
                return Err(RealtimeError::RlsPolicy);
            }
        }
    }
    let msg = Broadcast::User(UserBroadcast {
        event,
        json: !binary,
        data: body,
        meta: None,
    });
    broadcast(state, &(topic, private), None, msg);
    Ok(status_response(StatusCode::ACCEPTED))
}

/// `POST /api/broadcast` with `{messages:[{topic,event,payload,private}]}`.
async fn batch_broadcast(state: &AppState, req: Req) -> Result<Resp, RealtimeError> {
    let ctx = caller(state, &req)?;
    let body = read_body(state, req).await?;
    let invalid = |msg| RealtimeError::Invalid {
        field: "messages",
        msg,
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return Err(invalid("is invalid"));
    };
    let Some(list) = v.get("messages").and_then(Value::as_array) else {
        return Err(invalid("can't be blank"));
    };
    let mut msgs = vec![];
    for m in list {
        let topic = m.get("topic").and_then(Value::as_str);
        let event = m.get("event").and_then(Value::as_str);
        let payload = m.get("payload").filter(|p| p.is_object());
        let (Some(topic), Some(event), Some(payload)) = (topic, event, payload) else {
            return Err(RealtimeError::InvalidMessage);
        };
        let private = matches!(m.get("private"), Some(Value::Bool(true)))
            || m.get("private").and_then(Value::as_str) == Some("true");
        let mut p = json!({"type": "broadcast", "event": event, "payload": payload});
        if let Some(id) = m.get("id").filter(|i| !i.is_null()) {
            p["meta"] = json!({ "id": id });
        }
        msgs.push((topic.to_string(), private, p));
    }
    let mut allowed: std::collections::HashMap<String, bool> = Default::default();
    for (topic, private, p) in msgs {
        if private {
            let ok = match allowed.get(&topic) {
                Some(a) => *a,
                None => {
                    let a = authz::can_write(state, &ctx, &topic, "broadcast")
                        .await
                        .unwrap_or(false);
                    allowed.insert(topic.clone(), a);
                    a
                }
            };
            if !ok {
                continue;
            }
        }
        broadcast(state, &(topic, private), None, Broadcast::Json(p));
    }
    Ok(status_response(StatusCode::ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint(&Method::GET, "websocket"),
            Some(Endpoint::WebSocket)
        );
        assert_eq!(
            parse_endpoint(&Method::POST, "api/broadcast"),
            Some(Endpoint::Batch)
        );
        assert_eq!(
            parse_endpoint(&Method::POST, "api/broadcast/room%3A1/events/hi%20there"),
            Some(Endpoint::Single {
                topic: "room:1".into(),
                event: "hi there".into()
            })
        );
        assert_eq!(
            parse_endpoint(&Method::POST, "api/broadcast/x/events/"),
            None
        );
        assert_eq!(parse_endpoint(&Method::GET, "api/broadcast"), None);
        assert_eq!(parse_endpoint(&Method::POST, "websocket"), None);
    }
}
