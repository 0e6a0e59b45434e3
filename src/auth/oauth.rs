//! Admin management of OAuth 2.1 server clients: /admin/oauth/clients list, create, get,
//! update, delete, regenerate_secret. The secret is shown once (on create/regenerate).

use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_postgres::Row;
use uuid::Uuid;

use super::error::{AuthError, AuthResult, RowExt};
use super::page::Page;
use super::tx::{as_admin, execute_found};
use super::{ok, util, Call};
use crate::http::{json_response, Resp};
use crate::state::AppState;

const COLS: &str = "id, redirect_uris, grant_types, client_name, client_uri, logo_uri, \
    created_at, updated_at, client_type, token_endpoint_auth_method, registration_type";

pub async fn route(state: &AppState, call: &Call, rest: &[&str]) -> AuthResult<Resp> {
    match (call.method.as_str(), rest) {
        ("GET", []) => list(state, call).await,
        ("POST", []) => create(state, call).await,
        ("GET", [id]) => get(state, parse_id(id)?).await,
        ("PUT", [id]) => update(state, call, parse_id(id)?).await,
        ("DELETE", [id]) => delete(state, parse_id(id)?).await,
        ("POST", [id, "regenerate_secret"]) => regenerate(state, parse_id(id)?).await,
        _ => Err(AuthError::not_found(
            "not_found",
            format!(
                "{} /auth/v1/admin/oauth/clients/{} is not supported",
                call.method,
                rest.join("/")
            ),
        )),
    }
}

fn parse_id(s: &str) -> AuthResult<Uuid> {
    s.parse()
        .map_err(|_| AuthError::validation("invalid client_id format"))
}

fn not_found() -> AuthError {
    AuthError::not_found("oauth_client_not_found", "OAuth client not found")
}

fn render(r: &Row, secret: Option<&str>) -> AuthResult<Value> {
    let split = |s: String| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let mut v = json!({
        "client_id": r.col::<Uuid>(0)?,
        "client_type": r.col::<String>(8)?,
        "token_endpoint_auth_method": r.col::<String>(9)?,
        "registration_type": r.col::<String>(10)?,
        "redirect_uris": split(r.col(1)?),
        "grant_types": split(r.col(2)?),
        "response_types": ["code"],
        "client_name": r.col::<Option<String>>(3)?,
        "client_uri": r.col::<Option<String>>(4)?,
        "logo_uri": r.col::<Option<String>>(5)?,
        "created_at": r.col::<chrono::DateTime<chrono::Utc>>(6)?,
        "updated_at": r.col::<chrono::DateTime<chrono::Utc>>(7)?,
    });
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
        if let Some(s) = secret {
            o.insert("client_secret".into(), json!(s));
        }
    }
    Ok(v)
}

fn new_secret() -> (String, String) {
    let s = format!("{}{}", util::refresh_token(), util::refresh_token()) + &util::refresh_token();
    let h = util::hex(&Sha256::digest(s.as_bytes()));
    (s, h)
}

fn string_list(call: &Call, key: &str) -> AuthResult<Option<Vec<String>>> {
    match call.body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    AuthError::validation(format!("{key} must be an array of strings"))
                })
            })
            .collect::<AuthResult<Vec<_>>>()
            .map(Some),
        Some(_) => Err(AuthError::validation(format!(
            "{key} must be an array of strings"
        ))),
    }
}

fn check_redirects(uris: &[String]) -> AuthResult<()> {
    if uris.is_empty() {
        return Err(AuthError::validation("redirect_uris is required"));
    }
    for u in uris {
        let ok = (u.starts_with("https://") || u.starts_with("http://"))
            && !u.contains(',')
            && !u.contains('#')
            && u.split_once("://").is_some_and(|(_, r)| !r.is_empty());
        if !ok {
            return Err(AuthError::validation(format!("invalid redirect_uri: {u}")));
        }
    }
    Ok(())
}

fn check_grants(g: &[String]) -> AuthResult<()> {
    for x in g {
        if x != "authorization_code" && x != "refresh_token" {
            return Err(AuthError::validation(format!(
                "grant_types must only contain 'authorization_code' and 'refresh_token', got '{x}'"
            )));
        }
    }
    Ok(())
}

async fn list(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let pg = Page::from_call(call)?;
    let r = as_admin(state, async |tx| {
        let total: i64 = tx
            .query_one("select count(*) from auth.oauth_clients where deleted_at is null", &[])
            .await.map_err(AuthError::pg)?
            .col(0)?;
        let rows = tx
            .query(
                &format!("select {COLS} from auth.oauth_clients where deleted_at is null order by created_at desc, id limit $1 offset $2"),
                &[&pg.per_page, &pg.offset()],
            )
            .await.map_err(AuthError::pg)?;
        let clients = rows
            .iter()
            .map(|r| render(r, None))
            .collect::<AuthResult<Vec<_>>>()?;
        Ok((total, clients))
    })
    .await;
    let (total, clients) = r?;
    let body = json!({ "clients": clients, "aud": "authenticated" });
    Ok(pg.response(state, "admin/oauth/clients", total, &body))
}

async fn create(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let redirects = string_list(call, "redirect_uris")?.unwrap_or_default();
    check_redirects(&redirects)?;
    let grants = string_list(call, "grant_types")?
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    check_grants(&grants)?;
    if let Some(rt) = string_list(call, "response_types")? {
        if rt.iter().any(|r| r != "code") {
            return Err(AuthError::validation(
                "response_types must only contain 'code'",
            ));
        }
    }
    let client_type = call.s("client_type").unwrap_or("confidential").to_string();
    if client_type != "confidential" && client_type != "public" {
        return Err(AuthError::validation(
            "client_type must be 'public' or 'confidential'",
        ));
    }
    let (secret, hash) = if client_type == "confidential" {
        let (s, h) = new_secret();
        (Some(s), Some(h))
    } else {
        (None, None)
    };
    let method = if client_type == "public" {
        "none"
    } else {
        "client_secret_basic"
    };
    let r = as_admin(state, async |tx| {
        let row = tx
            .query_one(
                &format!(
                    "insert into auth.oauth_clients (id, client_secret_hash, registration_type, redirect_uris, grant_types,
                       client_name, client_uri, logo_uri, client_type, token_endpoint_auth_method)
                     values ($1, $2, 'manual', $3, $4, $5, $6, $7, $8, $9) returning {COLS}"
                ),
                &[
                    &Uuid::new_v4(),
                    &hash,
                    &redirects.join(","),
                    &grants.join(","),
                    &call.s("client_name"),
                    &call.s("client_uri"),
                    &call.s("logo_uri"),
                    &client_type,
                    &method,
                ],
            )
            .await
            .map_err(|e| AuthError::validation(format!("invalid client: {}", crate::db::error_text(&e))))?;
        render(&row, secret.as_deref())
    })
    .await;
    Ok(json_response(StatusCode::CREATED, &r?))
}

async fn get(state: &AppState, id: Uuid) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let row = tx
            .query_opt(
                &format!(
                    "select {COLS} from auth.oauth_clients where id = $1 and deleted_at is null"
                ),
                &[&id],
            )
            .await
            .map_err(AuthError::pg)?
            .ok_or_else(not_found)?;
        render(&row, None)
    })
    .await
    .map(ok)
}

async fn update(state: &AppState, call: &Call, id: Uuid) -> AuthResult<Resp> {
    let redirects = string_list(call, "redirect_uris")?;
    if let Some(r) = &redirects {
        check_redirects(r)?;
    }
    let grants = string_list(call, "grant_types")?;
    if let Some(g) = &grants {
        check_grants(g)?;
    }
    let fields = ["client_name", "client_uri", "logo_uri"];
    if redirects.is_none() && grants.is_none() && fields.iter().all(|f| call.body.get(*f).is_none())
    {
        return Err(AuthError::validation("No fields provided for update"));
    }
    as_admin(state, async |tx| {
        let row = tx
            .query_opt(
                &format!(
                    "update auth.oauth_clients set
                       redirect_uris = coalesce($2, redirect_uris), grant_types = coalesce($3, grant_types),
                       client_name = case when $4 then $5 else client_name end,
                       client_uri = case when $6 then $7 else client_uri end,
                       logo_uri = case when $8 then $9 else logo_uri end,
                       updated_at = now()
                     where id = $1 and deleted_at is null returning {COLS}"
                ),
                &[
                    &id,
                    &redirects.map(|r| r.join(",")),
                    &grants.map(|g| g.join(",")),
                    &call.body.get("client_name").is_some(),
                    &call.s("client_name"),
                    &call.body.get("client_uri").is_some(),
                    &call.s("client_uri"),
                    &call.body.get("logo_uri").is_some(),
                    &call.s("logo_uri"),
                ],
            )
            .await
            .map_err(|e| AuthError::validation(format!("invalid client: {}", crate::db::error_text(&e))))?
            .ok_or_else(not_found)?;
        render(&row, None)
    })
    .await
    .map(ok)
}

async fn delete(state: &AppState, id: Uuid) -> AuthResult<Resp> {
    execute_found(
        state,
        "update auth.oauth_clients set deleted_at = now(), updated_at = now() where id = $1 and deleted_at is null",
        &[&id],
        not_found,
    )
    .await?;
    Ok(super::no_content())
}

async fn regenerate(state: &AppState, id: Uuid) -> AuthResult<Resp> {
    let (secret, hash) = new_secret();
    as_admin(state, async |tx| {
        let row = tx
            .query_opt(
                &format!("select {COLS} from auth.oauth_clients where id = $1 and deleted_at is null for update"),
                &[&id],
            )
            .await.map_err(AuthError::pg)?
            .ok_or_else(not_found)?;
        if row.col::<String>(8)? == "public" {
            return Err(AuthError::validation("Cannot regenerate secret for public client"));
        }
        let row = tx
            .query_one(
                &format!("update auth.oauth_clients set client_secret_hash = $2, updated_at = now() where id = $1 returning {COLS}"),
                &[&id, &hash],
            )
            .await.map_err(AuthError::pg)?;
        render(&row, Some(&secret))
    })
    .await
    .map(ok)
}
