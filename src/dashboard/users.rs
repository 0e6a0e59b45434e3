//! Authentication: users (search, create, invite, delete, ban, recovery link), a user's
//! identities, MFA factors and sessions, and the audit log. Every read and change is an
//! in-process call of the auth API ([`crate::auth::call_as_service`]): the admin API's
//! own code, privilege check included.

use http::Method;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::layout::{self, button_form, csrf};
use super::{back, qs, DashError, DashReq, DashResult, PREFIX};
use crate::auth::call_as_service;
use crate::http::Resp;
use crate::state::AppState;

/// Calls the auth API; `Ok(body)` for a 2xx answer, else its message.
async fn auth(
    state: &AppState,
    r: &DashReq,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    body: Value,
) -> Result<Value, String> {
    let q = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let resp = call_as_service(state, method, path, q, body, r.peer.ip().to_string()).await;
    super::answer_json(resp).await
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn short_time(t: &str) -> &str {
    t.get(..16).unwrap_or(t)
}

pub async fn page(state: &AppState, r: &DashReq) -> DashResult<Markup> {
    let q = r.q("q").unwrap_or("");
    let pg = r.q("page").unwrap_or("1");
    let list = auth(
        state,
        r,
        Method::GET,
        "admin/users",
        &[("filter", q), ("page", pg), ("per_page", "50")],
        Value::Null,
    )
    .await
    .map_err(DashError::Bad)?;
    let users = list
        .get("users")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let detail = match r.q("id") {
        Some(id) => Some(user_detail(state, r, id).await?),
        None => None,
    };
    let audit = auth(
        state,
        r,
        Method::GET,
        "admin/audit",
        &[("per_page", "15")],
        Value::Null,
    )
    .await
    .unwrap_or(Value::Null);
    let inbox = auth(state, r, Method::GET, "inbox", &[], Value::Null)
        .await
        .unwrap_or(Value::Null);
    let mail: Vec<Value> = inbox
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().take(10).cloned().collect())
        .unwrap_or_default();
    let body = html! {
        @if let Some(d) = detail { (d) }
        div.card {
            div.toolbar {
                form.filters method="get" action={ (PREFIX) "users" } {
                    input type="search" name="q" placeholder="Search email or name" value=(q);
                    button type="submit" { "Search" }
                }
                span.grow {}
                details {
                    summary { "Add user" }
                    form.stack #create-user method="post" action={ (PREFIX) "users/create" } {
                        (csrf(r))
                        label { "Email" input type="email" name="email" required; }
                        label { "Password" input type="password" name="password" autocomplete="new-password"; }
                        label { "User metadata (JSON)" textarea.mono name="user_metadata" rows="2" placeholder="{\"full_name\": \"Ada\"}" {} }
                        label.check { input type="checkbox" name="email_confirm" value="1" checked; "Auto-confirm email" }
                        button.primary type="submit" { "Create user" }
                    }
                }
                details {
                    summary { "Invite" }
                    form.stack method="post" action={ (PREFIX) "users/invite" } {
                        (csrf(r))
                        label { "Email" input type="email" name="email" required; }
                        button.primary type="submit" { "Send invitation" }
                    }
                }
            }
        }
        div.card.scroll {
            table.grid #users {
                thead { tr { th { "Email" } th { "Phone" } th { "Providers" } th { "Created" } th { "Last sign-in" } th { "Status" } } }
                tbody {
                    @for u in &users {
                        @let providers: Vec<&str> = u.pointer("/app_metadata/providers").and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                        tr {
                            td { a href={ (PREFIX) "users?" (qs(&[("q", q), ("id", s(u, "id"))])) } {
                                @if s(u, "email").is_empty() { span.muted { (s(u, "id")) } } @else { (s(u, "email")) } } }
                            td { (s(u, "phone")) }
                            td { (providers.join(", ")) }
                            td.mono { (short_time(s(u, "created_at"))) }
                            td.mono { (short_time(s(u, "last_sign_in_at"))) }
                            td { @if !s(u, "banned_until").is_empty() { span.badge.s5 { "banned" } }
                                 @else if s(u, "email_confirmed_at").is_empty() && s(u, "phone_confirmed_at").is_empty() { span.badge.s4 { "unconfirmed" } }
                                 @else { span.badge.s2 { "active" } } }
                        }
                    }
                    @if users.is_empty() { tr { td colspan="6" .muted { "No users." } } }
                }
            }
            div.pager {
                @let page: u32 = pg.parse().unwrap_or(1);
                @if page > 1 { a.button.small href={ (PREFIX) "users?" (qs(&[("q", q), ("page", &(page - 1).to_string())])) } { "← Previous" } }
                @if users.len() == 50 { a.button.small href={ (PREFIX) "users?" (qs(&[("q", q), ("page", &(page + 1).to_string())])) } { "Next →" } }
            }
        }
        div.card.scroll {
            h2 { "Audit log" }
            table.grid {
                thead { tr { th { "Time" } th { "Action" } th { "Actor" } th { "IP" } } }
                tbody {
                    @for e in audit.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                        @let p = e.get("payload").cloned().unwrap_or(Value::Null);
                        tr { td.mono { (short_time(s(e, "created_at"))) } td { (s(&p, "action")) }
                             td { (s(&p, "actor_username")) } td { (s(e, "ip_address")) } }
                    }
                }
            }
        }
        div.card.scroll {
            h2 { "Local inbox" }
            p.muted { "Mail the auth API sent without SMTP (newest first)." }
            table.grid #inbox {
                thead { tr { th { "Time" } th { "To" } th { "Type" } th { "Subject" } th { "Link" } } }
                tbody {
                    @for m in &mail {
                        @let link = s(m, "action_link");
                        tr { td.mono { (short_time(s(m, "created_at"))) } td { (s(m, "to")) } td { (s(m, "type")) } td { (s(m, "subject")) }
                             td { @if link.starts_with("http://") || link.starts_with("https://") { a href=(link) rel="noreferrer" { "open" } } } }
                    }
                    @if mail.is_empty() { tr { td colspan="5" .muted { "Empty." } } }
                }
            }
        }
    };
    Ok(layout::page(r, "Authentication", "users", body))
}

async fn user_detail(state: &AppState, r: &DashReq, id: &str) -> DashResult<Markup> {
    let u = auth(
        state,
        r,
        Method::GET,
        &format!("admin/users/{id}"),
        &[],
        Value::Null,
    )
    .await
    .map_err(DashError::Bad)?;
    let factors = auth(
        state,
        r,
        Method::GET,
        &format!("admin/users/{id}/factors"),
        &[],
        Value::Null,
    )
    .await
    .unwrap_or(Value::Null);
    let sessions = sessions(state, id).await.unwrap_or_default();
    let pretty = |k: &str| {
        serde_json::to_string_pretty(u.get(k).unwrap_or(&Value::Null)).unwrap_or_default()
    };
    let identities = u
        .get("identities")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let banned = !s(&u, "banned_until").is_empty();
    let email = s(&u, "email").to_string();
    Ok(html! {
        div.card #user-detail {
            div.toolbar {
                h2 { (if email.is_empty() { id } else { &email }) }
                span.grow {}
                @if !email.is_empty() {
                    (button_form(r, "users/recover", &[("id", id), ("email", &email)], "Send recovery link", "small", None))
                }
                (button_form(r, "users/ban", &[("id", id), ("ban", if banned { "none" } else { "876000h" })],
                    if banned { "Unban" } else { "Ban" }, "small", (!banned).then_some("Ban this user? Their sign-ins stop.")))
                (button_form(r, "users/delete", &[("id", id)], "Delete", "small danger", Some("Delete this user for good?")))
            }
            dl.settings {
                dt { "User ID" } dd { code { (id) } }
                dt { "Phone" } dd { (s(&u, "phone")) }
                dt { "Created" } dd { (s(&u, "created_at")) }
                dt { "Confirmed" } dd { (s(&u, "email_confirmed_at")) }
                dt { "Last sign-in" } dd { (s(&u, "last_sign_in_at")) }
                @if banned { dt { "Banned until" } dd { (s(&u, "banned_until")) } }
                dt { "User metadata" } dd { pre.plain #user-meta { (pretty("user_metadata")) } }
                dt { "App metadata" } dd { pre.plain { (pretty("app_metadata")) } }
            }
            h3 { "Identities" }
            table.grid { tbody { @for i in &identities { tr { td { (s(i, "provider")) } td.mono { (s(i, "identity_id")) } td.mono { (short_time(s(i, "created_at"))) } } } } }
            h3 { "MFA factors" }
            table.grid { tbody {
                @for f in factors.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    tr { td { (s(f, "factor_type")) } td { (s(f, "friendly_name")) } td { (s(f, "status")) } td.mono { (short_time(s(f, "created_at"))) } }
                }
                @if factors.as_array().is_none_or(Vec::is_empty) { tr { td.muted { "None." } } }
            } }
            h3 { "Sessions" }
            table.grid { tbody {
                @for (sid, created, agent, ip) in &sessions { tr { td.mono { (sid) } td.mono { (created) } td { (agent) } td { (ip) } } }
                @if sessions.is_empty() { tr { td.muted { "None." } } }
            } }
        }
    })
}

/// A user's sessions (read-only: the auth API has no admin route for them).
async fn sessions(
    state: &AppState,
    id: &str,
) -> Result<Vec<(String, String, String, String)>, String> {
    let id: uuid::Uuid = id.parse().map_err(|_| "not a user id".to_string())?;
    let c = super::db::connect(state).await?;
    let rows = c
        .query(
            "select id::text, to_char(created_at, 'YYYY-MM-DD HH24:MI'), coalesce(user_agent, ''), coalesce(host(ip), '') \
             from auth.sessions where user_id = $1 order by created_at desc limit 20",
            &[&id],
        )
        .await
        .map_err(|e| super::db::err(&e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

async fn create(state: &AppState, r: &DashReq) -> Result<String, String> {
    let meta: Value = match r.fs("user_metadata").as_str() {
        "" => json!({}),
        m => serde_json::from_str(m).map_err(|e| format!("user metadata is not JSON: {e}"))?,
    };
    let mut body = json!({"email": r.fs("email"), "user_metadata": meta,
        "email_confirm": r.f("email_confirm") == Some("1")});
    if !r.fs("password").is_empty() {
        body["password"] = json!(r.fs("password"));
    }
    let u = auth(state, r, Method::POST, "admin/users", &[], body).await?;
    Ok(s(&u, "id").to_string())
}

pub async fn action(state: &AppState, r: &DashReq, what: &str) -> Resp {
    let id = r.fs("id");
    let email = r.fs("email");
    let detail = format!("users?{}", qs(&[("id", &id)]));
    let user_path = format!("admin/users/{id}");
    match what {
        "create" => match create(state, r).await {
            Ok(new_id) => back(
                &format!("users?{}", qs(&[("id", &new_id)])),
                Ok("User created".into()),
            ),
            Err(e) => back("users", Err(e)),
        },
        "invite" => {
            let res = auth(
                state,
                r,
                Method::POST,
                "invite",
                &[],
                json!({"email": email}),
            )
            .await;
            back(
                "users",
                res.map(|_| format!("Invitation sent to {email} (local inbox unless SMTP is set)")),
            )
        }
        "delete" => {
            let res = auth(state, r, Method::DELETE, &user_path, &[], json!({})).await;
            back("users", res.map(|_| "User deleted".to_string()))
        }
        "ban" => {
            let ban = r.fs("ban");
            let res = auth(
                state,
                r,
                Method::PUT,
                &user_path,
                &[],
                json!({"ban_duration": ban}),
            )
            .await;
            back(
                &detail,
                res.map(|_| {
                    if ban == "none" {
                        "User unbanned"
                    } else {
                        "User banned"
                    }
                    .to_string()
                }),
            )
        }
        "recover" => {
            let res = auth(
                state,
                r,
                Method::POST,
                "recover",
                &[],
                json!({"email": email}),
            )
            .await;
            back(
                &detail,
                res.map(|_| {
                    format!("Recovery link sent to {email} (local inbox unless SMTP is set)")
                }),
            )
        }
        _ => back("users", Err("unknown action".into())),
    }
}
