//! /rest/v1 (not built yet: requests are authenticated, then answered 501 in PostgREST's
//! error shape).

use deadpool_postgres::Pool;
use http::StatusCode;
use serde_json::json;

use crate::config::Config;
use crate::http::{json_response, Req, Resp};
use crate::jwt::JwtError;
use crate::state::AppState;

/// This API's share of the application state.
pub struct State {}

pub async fn init(_config: &Config, _pool: &Pool) -> Result<State, String> {
    Ok(State {})
}

/// Background work started once the server is up (listeners, sweepers).
pub fn spawn_background(_state: &AppState) {}

/// PostgREST's answer to a bad token: 401, PGRST301/303, and a WWW-Authenticate header.
pub fn jwt_error(e: &JwtError) -> Resp {
    let (code, message) = match e {
        JwtError::Expired => ("PGRST303", "JWT expired".to_string()),
        other => ("PGRST301", other.to_string()),
    };
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"code": code, "details": null, "hint": null, "message": message}),
    );
    let desc = message.replace('"', "'");
    if let Ok(v) = format!("Bearer error=\"invalid_token\", error_description=\"{desc}\"").parse() {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    r
}

pub async fn handle(state: &AppState, req: Req, path: &str) -> Resp {
    if let Err(e) = state.keys.authenticate(req.headers(), None) {
        return jwt_error(&e);
    }
    let method = req.method().clone();
    json_response(
        StatusCode::NOT_IMPLEMENTED,
        &json!({"code":"PGRST501","details":null,"hint":null,"message":format!("{method} /rest/v1/{path} is not implemented yet")}),
    )
}
