//! Storing a complete answer: the conversation (when new), the user's new messages and the
//! assistant's answer, written as the caller in one transaction, so a failed or cancelled
//! call leaves nothing behind.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::context::{client, gucs};
use super::providers::{Provider, Turn, Usage};
use crate::functions::error::FnError;
use crate::functions::UsageDetails;
use crate::identity::AuthContext;
use crate::state::AppState;

/// Longest conversation title made from the first user message.
const TITLE_CHARS: usize = 80;

/// A title from the first user message: its first line, shortened.
pub(super) fn title_of(messages: &[Turn]) -> String {
    let first = messages
        .iter()
        .find(|m| m.role == "user")
        .map(|m| m.content.trim())
        .unwrap_or("");
    let line = first.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return "New conversation".into();
    }
    if line.chars().count() <= TITLE_CHARS {
        return line.to_string();
    }
    let mut t: String = line.chars().take(TITLE_CHARS - 1).collect();
    t = t.trim_end().to_string();
    t.push('…');
    t
}

/// The turn to store, and where.
pub(super) struct Plan {
    pub(super) conversation_id: Uuid,
    /// A new conversation is created with the answer.
    pub(super) create: bool,
    pub(super) provider: Provider,
    pub(super) model: String,
    pub(super) system: Option<String>,
    pub(super) messages: Vec<Turn>,
    /// When the request arrived: the new messages' time (one microsecond apart, in order).
    pub(super) received: DateTime<Utc>,
}

/// The stored assistant message.
pub(super) struct Stored {
    id: Uuid,
    created_at: String,
}

/// Write the turn as the caller, all or nothing.
pub(super) async fn store(
    state: &AppState,
    ctx: &AuthContext,
    plan: &Plan,
    answer: &str,
    usage: &Usage,
) -> Result<Stored, FnError> {
    let mut c = client(state).await?;
    let tx = crate::db::begin_as(&mut c, ctx, &gucs(), false)
        .await
        .map_err(FnError::pg)?;
    if plan.create {
        tx.execute(
            "insert into public.conversations (id, title, provider, model, system_prompt) \
             values ($1, $2, $3, $4, $5)",
            &[
                &plan.conversation_id,
                &title_of(&plan.messages),
                &plan.provider.id(),
                &plan.model,
                &plan.system,
            ],
        )
        .await
        .map_err(FnError::pg)?;
    } else {
        // Touch it, so lists ordered by updated_at show recent conversations first.
        let n = tx
            .execute(
                "update public.conversations set updated_at = now() where id = $1",
                &[&plan.conversation_id],
            )
            .await
            .map_err(FnError::pg)?;
        if n == 0 {
            return Err(FnError::conversation_not_found());
        }
    }
    let roles: Vec<&str> = plan.messages.iter().map(|m| m.role.as_str()).collect();
    let contents: Vec<&str> = plan.messages.iter().map(|m| m.content.as_str()).collect();
    tx.execute(
        "insert into public.messages (conversation_id, role, content, created_at) \
         select $1, m.role, m.content, $4::timestamptz + (m.n - 1) * interval '1 microsecond' \
         from unnest($2::text[], $3::text[]) with ordinality as m(role, content, n)",
        &[&plan.conversation_id, &roles, &contents, &plan.received],
    )
    .await
    .map_err(FnError::pg)?;
    let after = plan.messages.len() as f64;
    let tokens = usage.completion.and_then(|n| i32::try_from(n).ok());
    let row = tx
        .query_one(
            "insert into public.messages \
               (conversation_id, role, content, model, tokens_used, created_at) \
             values ($1, 'assistant', $2, $3, $4, \
               greatest(clock_timestamp(), $5::timestamptz + $6::float8 * interval '1 microsecond')) \
             returning id, to_json(created_at) #>> '{}'",
            &[
                &plan.conversation_id,
                &answer,
                &plan.model,
                &tokens,
                &plan.received,
                &after,
            ],
        )
        .await.map_err(FnError::pg)?;
    tx.commit().await.map_err(FnError::pg)?;
    Ok(Stored {
        id: row.get(0),
        created_at: row.get(1),
    })
}

pub(super) fn message_json(plan: &Plan, stored: &Stored, content: &str) -> Value {
    json!({
        "id": stored.id,
        "role": "assistant",
        "content": content,
        "model": plan.model,
        "provider": plan.provider.id(),
        "created_at": stored.created_at,
    })
}

pub(super) fn usage_details(plan_provider: Provider, model: &str, usage: &Usage) -> UsageDetails {
    let int = |v: Option<i64>| v.and_then(|n| i32::try_from(n).ok());
    UsageDetails {
        provider: Some(plan_provider.id()),
        model: Some(model.to_string()),
        prompt_tokens: int(usage.prompt),
        completion_tokens: int(usage.completion),
        total_tokens: int(usage.total()),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        let t = |c: &str| {
            title_of(&[
                Turn {
                    role: "system".into(),
                    content: "sys".into(),
                },
                Turn {
                    role: "user".into(),
                    content: c.into(),
                },
            ])
        };
        assert_eq!(t("  Hello there\nsecond line"), "Hello there");
        let long = t(&"word ".repeat(40));
        assert!(long.ends_with('…') && long.chars().count() <= TITLE_CHARS);
        assert_eq!(title_of(&[]), "New conversation");
    }
}
