//! The whole (non-streamed) answer: read with a cap and the provider timeout, parsed,
//! stored, and returned as one JSON response.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::providers;
use super::store::{message_json, store, usage_details, Plan};
use super::upstream::read_capped;
use super::{Failure, Reply, MAX_ANSWER_BYTES};
use crate::functions::UsageDetails;
use crate::http::json_response;
use crate::identity::AuthContext;
use crate::state::AppState;

pub(super) async fn answer(
    state: &AppState,
    ctx: &AuthContext,
    plan: &Plan,
    upstream: reqwest::Response,
    usage: &mut UsageDetails,
) -> Result<Reply, Failure> {
    let timeout = Duration::from_secs(state.config.functions.provider_timeout_secs);
    let bytes = read_capped(upstream, MAX_ANSWER_BYTES, timeout, plan.provider).await?;
    let answer = providers::parse_answer(plan.provider, &bytes)?;
    *usage = usage_details(plan.provider, &plan.model, &answer.usage);
    let stored = store(state, ctx, plan, &answer.content, &answer.usage).await?;
    Ok(Reply::Whole(json_response(
        StatusCode::OK,
        &json!({
            "conversation_id": plan.conversation_id,
            "message": message_json(plan, &stored, &answer.content),
            "usage": answer.usage.json(),
        }),
    )))
}
