//! /storage/v1 (not built yet: every route answers 501 in this API's error shape).

use deadpool_postgres::Pool;
use http::StatusCode;
use serde_json::json;

use crate::config::Config;
use crate::http::{json_response, Req, Resp};
use crate::state::AppState;

/// This API's share of the application state.
pub struct State {}

pub async fn init(_config: &Config, _pool: &Pool) -> Result<State, String> {
    Ok(State {})
}

/// Background work started once the server is up (listeners, sweepers).
pub fn spawn_background(_state: &AppState) {}

pub async fn handle(_state: &AppState, req: Req, path: &str) -> Resp {
    let method = req.method().clone();
    json_response(
        StatusCode::NOT_IMPLEMENTED,
        &json!({"statusCode":"501","error":"Not Implemented","message":format!("{method} /storage/v1/{path} is not implemented yet")}),
    )
}
