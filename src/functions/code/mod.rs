//! code-execution: run a snippet of Python (RustPython), JavaScript (QuickJS) or TypeScript
//! (types stripped by oxc, then QuickJS) in a sandboxed child process and store the run in
//! `code_executions` as the caller.
//!
//! Request `{"language", "code", "stdin"?, "timeout_ms"?, "conversation_id"?, "message_id"?}`;
//! answer 200 `{"id", "status", "stdout", "stderr", "exit_code", "duration_ms"}` whenever the
//! code ran, whatever it did. `status` is `success`, `error` (an uncaught exception, a syntax
//! error, a non-zero `sys.exit`, a bound exceeded other than time, a crash) or `timeout`.
//! `exit_code`: 0 success; 1 uncaught exception or syntax error; `sys.exit(n)` gives n; 137
//! (killed) when the sandbox ended the run for a bound (time, memory, output); 134 when the
//! interpreter crashed. `duration_ms` is the wall time of the whole run, sandbox start
//! included.
//!
//! Bad requests answer 400 before anything runs: `invalid_request` (not JSON, missing or
//! mistyped fields), `unsupported_language`, `code_too_large`, `stdin_too_large`,
//! `invalid_timeout` (not within 1..=`code_timeout_ms`); a conversation or message the caller
//! cannot see is 404 `conversation_not_found` / `message_not_found`.
//!
//! Runners ([`pool`]): at most `code_max_concurrent` runs go at once, and one user's share of
//! them is `code_max_concurrent_per_user` (default half, at least one). A request beyond the
//! share waits, up to `code_queue_timeout_ms`, then gets 503 `too_many_runs`; a user may have
//! at most `code_max_queued_per_user` requests waiting, more get 429 `user_run_limit` at once.
//! A freed runner goes to the waiting user with the fewest runs going, so a user holding many
//! long runs cannot starve the others.
//!
//! The sandbox is described in [`sandbox`]; the interpreters' own restrictions in [`python`]
//! and [`js`].

mod js;
mod os;
pub mod pool;
mod python;
pub mod sandbox;
mod ts;

use std::path::PathBuf;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::FnError;
use crate::config::FunctionsConfig;
use crate::db::RequestGucs;
use crate::http::{json_response, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;
use sandbox::{Job, Language};

pub const NAME: &str = "code-execution";

/// This function's share of the functions state.
pub struct State {
    runners: pool::Runners,
    exe: PathBuf,
}

pub fn init(cfg: &FunctionsConfig) -> Result<State, String> {
    let exe = match &cfg.code_sandbox_exe {
        Some(p) => p.clone(),
        // The running binary itself, even if its file was replaced since it started.
        None if std::path::Path::new("/proc/self/exe").exists() => PathBuf::from("/proc/self/exe"),
        None => std::env::current_exe().map_err(|e| format!("code-execution sandbox: {e}"))?,
    };
    let total = cfg.code_max_concurrent;
    let share = cfg
        .code_max_concurrent_per_user
        .unwrap_or_else(|| pool::Runners::default_share(total));
    Ok(State {
        runners: pool::Runners::new(total, share, cfg.code_max_queued_per_user),
        exe,
    })
}

pub async fn handle(
    state: &AppState,
    ctx: &AuthContext,
    user: Uuid,
    req: Req,
) -> Result<Resp, FnError> {
    if req.method() != Method::POST {
        return Err(FnError::method_not_allowed(req.method(), NAME));
    }
    let cfg = &state.config.functions;
    let limit = cfg.code_max_code_bytes + cfg.code_max_stdin_bytes + 64 * 1024;
    let body = FnError::read_body(req.into_body(), limit).await?;
    let run = parse(&body, cfg)?;
    let conversation_id = check_links(state, ctx, &run).await?;

    let runners = &state.functions.code.runners;
    let permit = runners
        .acquire(user, Duration::from_millis(cfg.code_queue_timeout_ms))
        .await
        .inspect_err(|e| {
            state.metrics.code_run(match e {
                pool::Refused::Busy => "refused_busy",
                pool::Refused::UserLimit => "refused_user_limit",
            })
        })
        .map_err(|e| match e {
            pool::Refused::Busy => FnError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_runs",
                "Too many programs are running right now; try again shortly.",
            ),
            pool::Refused::UserLimit => FnError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "user_run_limit",
                format!(
                    "You already have {} programs running or waiting; wait for one to finish.",
                    runners.per_user() + runners.queued_per_user()
                ),
            ),
        })?;
    let outcome = sandbox::run(&state.functions.code.exe, &run.job).await;
    drop(permit);
    state.metrics.code_run(match &outcome {
        Ok(o) => o.status.as_str(),
        Err(_) => "error",
    });
    let outcome = outcome.map_err(FnError::internal)?;

    let id = Uuid::new_v4();
    let mut c = state.pool.get().await.map_err(|e| FnError::from_pool(&e))?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs(), false)
        .await
        .map_err(FnError::pg)?;
    tx.execute(
        "insert into public.code_executions (id, user_id, conversation_id, message_id, \
           language, code, stdout, stderr, status, exit_code, duration_ms) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &id,
            &user,
            &conversation_id,
            &run.message_id,
            &run.job.language.as_str(),
            &no_nul(&run.job.code),
            &no_nul(&outcome.stdout),
            &no_nul(&outcome.stderr),
            &outcome.status.as_str(),
            &outcome.exit_code,
            &(outcome.duration_ms.min(i32::MAX as u64) as i32),
        ],
    )
    .await
    .map_err(FnError::pg)?;
    tx.commit().await.map_err(FnError::pg)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "status": outcome.status.as_str(),
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
            "exit_code": outcome.exit_code,
            "duration_ms": outcome.duration_ms,
        }),
    ))
}

fn gucs() -> RequestGucs<'static> {
    RequestGucs {
        method: "POST",
        path: "/functions/v1/code-execution",
        ..Default::default()
    }
}

/// PostgreSQL text cannot hold NUL: stored copies show U+FFFD instead (the answer keeps it).
fn no_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

struct Run {
    job: Job,
    conversation_id: Option<Uuid>,
    message_id: Option<Uuid>,
}

fn parse(body: &[u8], cfg: &FunctionsConfig) -> Result<Run, FnError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| FnError::bad_request(format!("The body is not valid JSON: {e}.")))?;
    let Value::Object(m) = v else {
        return Err(FnError::bad_request("The body must be a JSON object."));
    };
    let text = |k: &str, required: bool| -> Result<Option<String>, FnError> {
        match m.get(k) {
            None | Some(Value::Null) if !required => Ok(None),
            None | Some(Value::Null) => Err(FnError::bad_request(format!("{k} is required."))),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(FnError::bad_request(format!("{k} must be a string."))),
        }
    };
    let uuid = |k: &str| -> Result<Option<Uuid>, FnError> {
        match text(k, false)? {
            None => Ok(None),
            Some(s) => Uuid::parse_str(s.trim())
                .map(Some)
                .map_err(|_| FnError::bad_request(format!("{k} must be a UUID."))),
        }
    };
    let language_text = text("language", true)?.unwrap_or_default();
    let Some(language) = Language::parse(&language_text) else {
        return Err(FnError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_language",
            format!(
                "The language {:?} is not supported: use python, javascript or typescript.",
                language_text.chars().take(40).collect::<String>()
            ),
        ));
    };
    let code = text("code", true)?.unwrap_or_default();
    if code.len() > cfg.code_max_code_bytes {
        return Err(FnError::new(
            StatusCode::BAD_REQUEST,
            "code_too_large",
            format!(
                "The code is larger than the limit of {} bytes.",
                cfg.code_max_code_bytes
            ),
        ));
    }
    let stdin = text("stdin", false)?.unwrap_or_default();
    if stdin.len() > cfg.code_max_stdin_bytes {
        return Err(FnError::new(
            StatusCode::BAD_REQUEST,
            "stdin_too_large",
            format!(
                "stdin is larger than the limit of {} bytes.",
                cfg.code_max_stdin_bytes
            ),
        ));
    }
    let max = cfg.code_timeout_ms;
    let timeout_ms = match m.get("timeout_ms") {
        None | Some(Value::Null) => max,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(t) if (1..=max).contains(&t) => t,
            _ => return Err(bad_timeout(max)),
        },
        Some(_) => return Err(bad_timeout(max)),
    };
    Ok(Run {
        job: Job {
            language,
            code,
            stdin,
            timeout_ms,
            memory_bytes: cfg.code_memory_mb * 1024 * 1024,
            output_bytes: cfg.code_output_bytes,
        },
        conversation_id: uuid("conversation_id")?,
        message_id: uuid("message_id")?,
    })
}

fn bad_timeout(max: u64) -> FnError {
    FnError::new(
        StatusCode::BAD_REQUEST,
        "invalid_timeout",
        format!("timeout_ms must be an integer from 1 to {max}."),
    )
}

/// The conversation and message the run belongs to must be visible to the caller (RLS);
/// a message alone also gives its conversation. Returns the conversation to store.
async fn check_links(
    state: &AppState,
    ctx: &AuthContext,
    run: &Run,
) -> Result<Option<Uuid>, FnError> {
    if run.conversation_id.is_none() && run.message_id.is_none() {
        return Ok(None);
    }
    let mut c = state.pool.get().await.map_err(|e| FnError::from_pool(&e))?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs(), true)
        .await
        .map_err(FnError::pg)?;
    let mut conversation = run.conversation_id;
    if let Some(id) = run.conversation_id {
        let found = tx
            .query_opt("select 1 from public.conversations where id = $1", &[&id])
            .await
            .map_err(FnError::pg)?;
        if found.is_none() {
            return Err(FnError::conversation_not_found());
        }
    }
    if let Some(id) = run.message_id {
        let row = tx
            .query_opt(
                "select conversation_id from public.messages where id = $1",
                &[&id],
            )
            .await
            .map_err(FnError::pg)?;
        let Some(row) = row else {
            return Err(FnError::new(
                StatusCode::NOT_FOUND,
                "message_not_found",
                "The message was not found.",
            ));
        };
        let of: Option<Uuid> = row.get(0);
        match (conversation, of) {
            (Some(c), Some(m)) if c != m => {
                return Err(FnError::bad_request(
                    "message_id belongs to another conversation.",
                ))
            }
            (None, m) => conversation = m,
            _ => {}
        }
    }
    tx.commit().await.map_err(FnError::pg)?;
    Ok(conversation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FunctionsConfig {
        FunctionsConfig::default()
    }

    fn code_of(body: &str) -> &'static str {
        match parse(body.as_bytes(), &cfg()) {
            Ok(_) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn requests_are_checked() {
        assert_eq!(code_of(r#"{"language":"python","code":"print(1)"}"#), "ok");
        assert_eq!(code_of("{"), "invalid_request");
        assert_eq!(code_of("[]"), "invalid_request");
        assert_eq!(code_of(r#"{"code":"1"}"#), "invalid_request");
        assert_eq!(code_of(r#"{"language":"python"}"#), "invalid_request");
        assert_eq!(
            code_of(r#"{"language":"ruby","code":"1"}"#),
            "unsupported_language"
        );
        assert_eq!(
            code_of(r#"{"language":"python","code":"1","timeout_ms":0}"#),
            "invalid_timeout"
        );
        assert_eq!(
            code_of(r#"{"language":"python","code":"1","timeout_ms":5001}"#),
            "invalid_timeout"
        );
        assert_eq!(
            code_of(r#"{"language":"python","code":"1","timeout_ms":"5"}"#),
            "invalid_timeout"
        );
        assert_eq!(
            code_of(r#"{"language":"python","code":"1","conversation_id":"x"}"#),
            "invalid_request"
        );
        let big = format!(
            r#"{{"language":"python","code":"{}"}}"#,
            "x".repeat(cfg().code_max_code_bytes + 1)
        );
        assert_eq!(code_of(&big), "code_too_large");
    }

    #[test]
    fn stored_text_has_no_nul() {
        assert_eq!(no_nul("a\0b"), "a\u{FFFD}b");
        assert_eq!(no_nul("ab"), "ab");
    }
}
