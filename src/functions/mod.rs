//! /functions/v1/<name>: the built-in functions behind one gateway. The gateway finds the
//! function (unknown → 404), requires a signed-in user (anon only → 401), runs it, logs the
//! call with its latency (never tokens or bodies) and records it in `api_usage`.
//!
//! Built: `file-upload`, `chat-completion` (`chat/`), `code-execution` (`code/`),
//! `websocket-handler` (`ws/`).

pub(crate) mod chat;
pub mod code;
pub(crate) mod error;
pub(crate) mod sniff;
pub(crate) mod upload;
pub mod ws;

use std::time::Instant;

use deadpool_postgres::Pool;

use crate::config::Config;
use crate::db::begin_as_server;
use crate::http::{error_response, query_pairs, Req, Resp};
use crate::identity::{AuthContext, ServerRole};
use crate::state::AppState;
use error::FnError;

/// This API's share of the application state.
pub struct State {
    pub chat: chat::State,
    pub ws: ws::Ws,
    pub code: code::State,
}

pub async fn init(config: &Config, _pool: &Pool) -> Result<State, String> {
    Ok(State {
        chat: chat::init(&config.functions)?,
        ws: ws::Ws::default(),
        code: code::init(&config.functions)?,
    })
}

/// What a function adds to its `api_usage` row beyond endpoint, status and latency.
#[derive(Debug, Clone, Default)]
pub struct UsageDetails {
    pub provider: Option<&'static str>,
    pub model: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub total_tokens: Option<i32>,
    /// The outcome when it differs from the response status (a streamed answer that failed
    /// after its 200 was sent).
    pub status: Option<u16>,
}

/// A function's usage details, put in its response's extensions: known now, or when a
/// streamed response ends (the row is then written, with the latency until that moment).
#[derive(Clone)]
pub enum UsageReport {
    Now(UsageDetails),
    Later(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<UsageDetails>>>>),
}

impl UsageReport {
    pub fn now(d: UsageDetails) -> UsageReport {
        UsageReport::Now(d)
    }
    pub fn later(rx: tokio::sync::oneshot::Receiver<UsageDetails>) -> UsageReport {
        UsageReport::Later(std::sync::Arc::new(std::sync::Mutex::new(Some(rx))))
    }
}

/// Background work started once the server is up (listeners, sweepers).
pub fn spawn_background(state: &AppState) {
    ws::spawn_background(state);
}

/// Called when the server stops, after the connections ended and before the pool closes.
pub async fn shutdown(state: &AppState) {
    ws::sessions::close_own(state).await;
}

/// The functions this server has (the `api_usage.endpoint` values).
const FUNCTIONS: &[&str] = &[chat::NAME, code::NAME, upload::NAME, ws::NAME];

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
    let mut resp = match call(state, req, function, rest, &mut user).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let report = resp.extensions_mut().remove::<UsageReport>();
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
        match report {
            Some(UsageReport::Later(rx)) => {
                let rx = rx.lock().unwrap_or_else(|p| p.into_inner()).take();
                let state = state.clone();
                tokio::spawn(async move {
                    // A relay that vanished without a word reports nothing but the call.
                    let d = match rx {
                        Some(rx) => rx.await.unwrap_or_default(),
                        None => UsageDetails::default(),
                    };
                    let latency_ms = start.elapsed().as_millis().min(i32::MAX as u128) as i32;
                    let status = d.status.unwrap_or(status);
                    record_usage(&state, function, user, status, latency_ms, &d).await;
                });
            }
            Some(UsageReport::Now(d)) => {
                record_usage(state, function, user, status, latency_ms, &d).await
            }
            None => {
                let d = UsageDetails::default();
                record_usage(state, function, user, status, latency_ms, &d).await
            }
        }
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
    // A token outlives its user: a deleted user's still-valid token is refused here (as
    // GoTrue refuses it), before any row is written for them.
    if !user_exists(state, user).await? {
        return Err(FnError::unauthorized(
            "User from sub claim in JWT does not exist.",
        ));
    }
    *user_out = Some(user);
    if !rest.is_empty() {
        return Err(FnError::not_found(format!(
            "{function} has no sub-path {}.",
            rest.chars().take(64).collect::<String>()
        )));
    }
    match function {
        upload::NAME => upload::handle(state, &ctx, user, req).await,
        chat::NAME => Ok(chat::handle(state, &ctx, user, req).await),
        ws::NAME => ws::handle(state, &ctx, user, req).await,
        code::NAME => code::handle(state, &ctx, user, req).await,
        _ => Err(FnError::not_implemented(function)),
    }
}

/// Whether `auth.users` still has the user a token was issued to (soft-deleted users are
/// gone, as for GoTrue).
async fn user_exists(state: &AppState, user: uuid::Uuid) -> Result<bool, FnError> {
    let err = |e: tokio_postgres::Error| FnError::internal(crate::db::error_text(&e));
    let mut c = state.pool.get().await.map_err(FnError::internal)?;
    let tx = begin_as_server(&mut c, ServerRole::AuthAdmin, true)
        .await
        .map_err(err)?;
    let row = tx
        .query_one(
            "select exists (select 1 from auth.users where id = $1 and deleted_at is null)",
            &[&user],
        )
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(row.get(0))
}

/// One statement (or a few) in a transaction as `service_role`: the server's own
/// bookkeeping in tables users may only read.
pub(crate) async fn as_server<T>(
    state: &AppState,
    f: impl for<'a> FnOnce(
        &'a deadpool_postgres::Transaction<'a>,
    ) -> futures::future::BoxFuture<'a, Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    let err = |e: tokio_postgres::Error| crate::db::error_text(&e);
    let mut c = state.pool.get().await.map_err(|e| e.to_string())?;
    let tx = begin_as_server(&mut c, ServerRole::Service, false)
        .await
        .map_err(err)?;
    let out = f(&tx).await.map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// One `api_usage` row, written as the server (users may only read their own rows).
async fn record_usage(
    state: &AppState,
    endpoint: &str,
    user: uuid::Uuid,
    status: u16,
    latency_ms: i32,
    d: &UsageDetails,
) {
    let (user, status, model) = (user, status as i32, d.model.clone());
    let (provider, tokens) = (
        d.provider,
        [d.prompt_tokens, d.completion_tokens, d.total_tokens],
    );
    state
        .metrics
        .function_call(endpoint, status as u16, provider, [tokens[0], tokens[1]]);
    let endpoint_owned = endpoint.to_string();
    let r = as_server(state, move |tx| {
        Box::pin(async move {
            tx.execute(
                "insert into public.api_usage (user_id, endpoint, status_code, latency_ms, \
                   provider, model, prompt_tokens, completion_tokens, total_tokens) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &user,
                    &endpoint_owned,
                    &status,
                    &latency_ms,
                    &provider,
                    &model,
                    &tokens[0],
                    &tokens[1],
                    &tokens[2],
                ],
            )
            .await
        })
    })
    .await;
    if let Err(e) = r {
        tracing::warn!(function = endpoint, error = %e, "could not record api usage");
    }
}
