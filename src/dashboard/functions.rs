//! Functions: recent calls of the built-in functions (from the request ring), LLM usage
//! from `public.api_usage` by provider, model and day, recent code runs, and which
//! provider keys are configured (never their values).

use maud::{html, Markup};

use super::layout;
use super::{db, DashReq, DashResult};
use crate::state::AppState;

struct Usage {
    day: String,
    provider: String,
    model: String,
    calls: i64,
    tokens: i64,
    errors: i64,
}

async fn usage(state: &AppState) -> Result<Option<Vec<Usage>>, String> {
    let c = db::connect(state).await?;
    let exists: bool = c
        .query_one("select to_regclass('public.api_usage') is not null", &[])
        .await
        .map_err(|e| db::err(&e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = c
        .query(
            "select to_char(date_trunc('day', created_at), 'YYYY-MM-DD'), coalesce(provider, '-'), \
             coalesce(model, '-'), count(*), coalesce(sum(total_tokens), 0)::bigint, \
             count(*) filter (where status_code >= 400) \
             from public.api_usage where created_at > now() - interval '30 days' \
             group by 1, 2, 3 order by 1 desc, 4 desc limit 200",
            &[],
        )
        .await
        .map_err(|e| db::err(&e))?;
    Ok(Some(
        rows.iter()
            .map(|r| Usage {
                day: r.get(0),
                provider: r.get(1),
                model: r.get(2),
                calls: r.get(3),
                tokens: r.get(4),
                errors: r.get(5),
            })
            .collect(),
    ))
}

pub async fn page(state: &AppState, r: &DashReq) -> DashResult<Markup> {
    let f = &state.config.functions;
    let providers = [
        ("OpenAI", f.openai_api_key.is_some()),
        ("Anthropic", f.anthropic_api_key.is_some()),
        ("Mistral", f.mistral_api_key.is_some()),
    ];
    let calls: Vec<_> = state
        .dashboard
        .log
        .snapshot()
        .into_iter()
        .filter(|e| e.path.starts_with("/functions/v1/"))
        .take(50)
        .collect();
    let usage = usage(state).await?;
    let max_calls = usage
        .as_ref()
        .and_then(|u| u.iter().map(|x| x.calls).max())
        .unwrap_or(1)
        .max(1);
    let body = html! {
        div.grid {
            @for (name, set) in providers {
                div.card.stat { span.label { (name) " key" }
                    span.value { @if set { span.badge.on { "configured" } } @else { span.badge { "not set" } } } }
            }
        }
        div.card.scroll {
            h2 { "LLM usage by day, provider and model (30 days)" }
            @match &usage {
                None => { p.muted { "No api_usage table (the app schema is not installed)." } }
                Some(u) if u.is_empty() => { p.muted { "No calls recorded yet." } }
                Some(u) => {
                    table.grid #usage {
                        thead { tr { th { "Day" } th { "Provider" } th { "Model" } th { "Calls" } th {} th { "Tokens" } th { "Errors" } } }
                        tbody { @for x in u { tr {
                            td.mono { (x.day) } td { (x.provider) } td { (x.model) } td { (x.calls) }
                            td { svg width="120" height="10" role="img" aria-label="calls" {
                                rect.barrect width=(((x.calls * 120) / max_calls).max(2)) height="10" rx="2" {} } }
                            td { (x.tokens) } td { (x.errors) }
                        } } }
                    }
                }
            }
        }
        div.card.scroll {
            h2 { "Recent function calls" }
            table.grid #fn-calls {
                thead { tr { th { "Time (UTC)" } th { "Method" } th { "Function" } th { "Status" } th { "Latency" } th { "Role" } } }
                tbody {
                    @for e in &calls { tr {
                        td.mono { (e.time.format("%H:%M:%S")) } td { (e.method) }
                        td.mono { (e.path.trim_start_matches("/functions/v1/")) }
                        td { span class={ "badge s" (e.status / 100) } { (e.status) } }
                        td { (format!("{:.1}", e.latency_ms)) " ms" } td { (e.role.as_deref().unwrap_or("-")) }
                    } }
                    @if calls.is_empty() { tr { td colspan="6" .muted { "No calls since the server started." } } }
                }
            }
        }
    };
    Ok(layout::page(r, "Functions", "functions", body))
}
