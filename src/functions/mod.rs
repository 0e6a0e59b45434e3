//! /functions/v1/<name>: the built-in functions behind one gateway. The gateway finds the
//! function (unknown → 404), requires a signed-in user (anon only → 401), runs it, logs the
//! call with its latency (never tokens or bodies) and records it in `api_usage`.
//!
//! Built: `file-upload`, `websocket-handler` (`ws/`). `chat-completion` and
//! `code-execution` answer 501 `not_implemented` (behind the same auth and accounting).

pub mod error;
pub mod sniff;
pub mod upload;
pub mod ws;

use std::time::Instant;

use deadpool_postgres::Pool;

use crate::config::Config;
use crate::http::apikey::AuthContext;
use crate::http::{error_response, query_pairs, Req, Resp};
use crate::state::AppState;
use error::FnError;

/// This API's share of the application state.
pub struct State {
    pub ws: ws::Ws,
}

pub async fn init(_config: &Config, _pool: &Pool) -> Result<State, String> {
    Ok(State {
        ws: ws::Ws::default(),
    })
}

/// Background work started once the server is up (listeners, sweepers).
pub fn spawn_background(state: &AppState) {
    ws::spawn_background(state);
}

/// The functions this server has (the `api_usage.endpoint` values).
const FUNCTIONS: &[&str] = &[
    "chat-completion",
    "code-execution",
    upload::NAME,
    "websocket-handler",
];

pub async fn handle(state: &AppState, req: Req, path: &str) -> Resp {
    let start = Instant::now();
    let method = req.method().clone();
    let (name, rest) = path.split_once('/').unwrap_or((path, ""));
    let Some(function) = FUNCTIONS.iter().copied().find(|f| *f == name) else {
        let e = FnError::not_found(format!(
            "No function named {} exists.",
            name.chars().take(64).collect::<String>()
        ));
        // A client still sending its body gets this answer: the server lingers on close.
        let resp = error_response(&e);
        tracing::info!(
            target: "oxibase::functions",
            %method, status = 404u16, latency_ms = start.elapsed().as_millis() as u64,
            "unknown function"
        );
        return resp;
    };
    let mut user = None;
    let resp = match call(state, req, function, rest, &mut user).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let latency_ms = start.elapsed().as_millis().min(i32::MAX as u128) as i32;
    let status = resp.status().as_u16();
    tracing::info!(
        target: "oxibase::functions",
        function, %method, status, latency_ms,
        user_id = user.map(|u| u.to_string()).unwrap_or_default(),
        "function call"
    );
    // Usage is per user: a call nobody could be identified for is logged above but not
    // written (unauthenticated callers cannot add rows).
    if let Some(user) = user {
        record_usage(state, function, user, status, latency_ms).await;
    }
    resp
}

/// The caller: `Authorization: Bearer` (else `apikey`); for the WebSocket function also
/// `?token=` / `?apikey=`, since browsers cannot set headers on a WebSocket.
fn authenticate(state: &AppState, req: &Req, function: &str) -> Result<AuthContext, FnError> {
    let query = if function == "websocket-handler" {
        query_pairs(req.uri().query())
    } else {
        vec![]
    };
    let param = |k: &str| {
        query
            .iter()
            .find(|(q, v)| q == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let ctx = match param("token") {
        Some(token) => state.keys.resolve(token),
        None => state.keys.authenticate(req.headers(), param("apikey")),
    };
    ctx.map_err(|e| FnError::unauthorized(format!("The access token is not valid: {e}.")))
}

async fn call(
    state: &AppState,
    req: Req,
    function: &'static str,
    rest: &str,
    user_out: &mut Option<uuid::Uuid>,
) -> Result<Resp, FnError> {
    let ctx = authenticate(state, &req, function)?;
    let Some(user) = ctx.user_id() else {
        return Err(FnError::unauthorized(
            "A signed-in user is required: send the user's access token in Authorization.",
        ));
    };
    *user_out = Some(user);
    if !rest.is_empty() {
        return Err(FnError::not_found(format!(
            "{function} has no sub-path {}.",
            rest.chars().take(64).collect::<String>()
        )));
    }
    match function {
        upload::NAME => upload::handle(state, &ctx, user, req).await,
        ws::NAME => ws::handle(state, &ctx, user, req).await,
        _ => Err(FnError::not_implemented(function)),
    }
}

/// One `api_usage` row, written as the server (users may only read their own rows).
async fn record_usage(
    state: &AppState,
    endpoint: &str,
    user: uuid::Uuid,
    status: u16,
    latency_ms: i32,
) {
    let r: Result<(), String> = async {
        let mut c = state.pool.get().await.map_err(|e| e.to_string())?;
        let tx = c.transaction().await.map_err(|e| e.to_string())?;
        tx.batch_execute("set local role service_role")
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        tx.execute(
            "insert into public.api_usage (user_id, endpoint, status_code, latency_ms) \
             values ($1, $2, $3, $4)",
            &[&user, &endpoint, &(status as i32), &latency_ms],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
        tx.commit().await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = r {
        tracing::warn!(function = endpoint, error = %e, "could not record api usage");
    }
}
