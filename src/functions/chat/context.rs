//! What an existing conversation contributes to the call: its system prompt and its newest
//! turns within the context budget, read as the caller (RLS decides what is visible).

use uuid::Uuid;

use super::providers::Turn;
use crate::db::RequestGucs;
use crate::functions::error::FnError;
use crate::identity::AuthContext;
use crate::state::AppState;

pub(super) fn gucs() -> RequestGucs<'static> {
    RequestGucs {
        method: "POST",
        path: "/functions/v1/chat-completion",
        ..Default::default()
    }
}

pub(super) async fn client(state: &AppState) -> Result<deadpool_postgres::Client, FnError> {
    state.pool.get().await.map_err(|e| FnError::from_pool(&e))
}

/// What the conversation contributes: its system prompt and earlier turns (oldest first).
#[derive(Default)]
pub(super) struct Context {
    pub(super) system_prompt: Option<String>,
    pub(super) history: Vec<Turn>,
}

/// Read an existing conversation as the caller: 404 when RLS hides it (or it does not
/// exist); its newest turns within the budget, oldest first.
pub(super) async fn load_context(
    state: &AppState,
    ctx: &AuthContext,
    conversation: Uuid,
    budget_chars: usize,
) -> Result<Context, FnError> {
    let cfg = &state.config.functions;
    let mut c = client(state).await?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs(), true)
        .await
        .map_err(FnError::pg)?;
    let Some(row) = tx
        .query_opt(
            "select system_prompt from public.conversations where id = $1",
            &[&conversation],
        )
        .await
        .map_err(FnError::pg)?
    else {
        return Err(FnError::conversation_not_found());
    };
    let system_prompt: Option<String> = row.get(0);
    let rows = tx
        .query(
            "select role, content from public.messages \
             where conversation_id = $1 and role in ('system', 'user', 'assistant') \
             order by created_at desc, id desc limit $2",
            &[&conversation, &(cfg.context_max_messages as i64)],
        )
        .await
        .map_err(FnError::pg)?;
    tx.commit().await.map_err(FnError::pg)?;
    let mut used = 0usize;
    let mut history = vec![];
    for r in rows {
        let content: String = r.get(1);
        used += content.chars().count();
        if used > budget_chars {
            break;
        }
        history.push(Turn {
            role: r.get(0),
            content,
        });
    }
    history.reverse();
    Ok(Context {
        system_prompt,
        history,
    })
}
