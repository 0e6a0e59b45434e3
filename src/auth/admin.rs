//! The admin API (service_role or supabase_admin): /admin/users list/create/get/update/
//! delete, /admin/generate_link, and POST /invite.

use serde_json::{json, Value};
use uuid::Uuid;

use super::email::{self, Kind};
use super::error::{AuthError, AuthResult, RowExt};
use super::guard::AdminCaller;
use super::page::Page;
use super::tx::as_admin;
use super::users::{self, NewUser, User};
use super::{ok, password, util, Call};
use crate::http::Resp;
use crate::state::AppState;

/// The admin routes; `_admin` is the proof [`super::route`] checked the caller.
pub async fn route(
    state: &AppState,
    call: &Call,
    _admin: AdminCaller,
    rest: &[&str],
) -> AuthResult<Resp> {
    match (call.method.as_str(), rest) {
        ("GET", ["users"]) => list(state, call).await,
        ("POST", ["users"]) => create(state, call).await,
        ("GET", ["users", id]) => get(state, parse_id(id)?).await,
        ("PUT", ["users", id]) => update(state, call, parse_id(id)?).await,
        ("DELETE", ["users", id]) => delete(state, call, parse_id(id)?).await,
        ("POST", ["generate_link"]) => generate_link(state, call).await,
        ("GET", ["audit"]) => super::audit::list(state, call).await,
        ("GET", ["users", id, "passkeys"]) => {
            let id = parse_id(id)?;
            get_user_exists(state, id).await?;
            Ok(ok(super::passkey::list_for(state, id).await?))
        }
        ("DELETE", ["users", id, "passkeys", pid]) => {
            let id = parse_id(id)?;
            get_user_exists(state, id).await?;
            super::passkey::delete_for(state, id, pid).await
        }
        (_, ["oauth", "clients", rest @ ..]) => super::oauth::route(state, call, rest).await,
        ("GET", ["users", id, "factors"]) => super::mfa::admin_list(state, parse_id(id)?).await,
        ("DELETE", ["users", id, "factors", fid]) => {
            super::mfa::admin_delete(state, parse_id(id)?, parse_id(fid)?).await
        }
        _ => Err(AuthError::not_found(
            "not_found",
            format!(
                "{} /auth/v1/admin/{} is not supported",
                call.method,
                rest.join("/")
            ),
        )),
    }
}

/// auth.users.role is varchar(255), and it becomes the `role` claim.
fn check_role(role: Option<&str>) -> AuthResult<()> {
    match role {
        Some(r) if r.len() > 255 => Err(AuthError::validation(
            "role is too long (max 255 characters)",
        )),
        _ => Ok(()),
    }
}

fn parse_id(s: &str) -> AuthResult<Uuid> {
    s.parse()
        .map_err(|_| AuthError::not_found("validation_failed", "user_id must be an UUID"))
}

async fn list(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let pg = Page::from_call(call)?;
    let filter = call.q("filter").unwrap_or("").trim().to_string();
    let r = as_admin(state, async |tx| {
        let total: i64 = tx
            .query_one(
                "select count(*) from auth.users u where deleted_at is null
                   and ($1 = '' or u.email ilike '%' || $1 || '%' or u.raw_user_meta_data->>'full_name' ilike '%' || $1 || '%')",
                &[&filter],
            )
            .await.map_err(AuthError::pg)?
            .col(0)?;
        let rows = tx
            .query(
                "select auth.oxibase_user_json(u) from auth.users u where deleted_at is null
                   and ($1 = '' or u.email ilike '%' || $1 || '%' or u.raw_user_meta_data->>'full_name' ilike '%' || $1 || '%')
                 order by created_at desc, id limit $2 offset $3",
                &[&filter, &pg.per_page, &pg.offset()],
            )
            .await.map_err(AuthError::pg)?;
        let users: Vec<Value> = rows.iter().map(|r| r.col(0)).collect::<AuthResult<_>>()?;
        Ok((total, users))
    })
    .await;
    let (total, users) = r?;
    let body = json!({"users": users, "aud": "authenticated"});
    Ok(pg.response(state, "admin/users", total, &body))
}

async fn get_user_exists(state: &AppState, id: Uuid) -> AuthResult<()> {
    as_admin(state, async |tx| match users::by_id(tx, id).await? {
        Some(_) => Ok(()),
        None => Err(AuthError::user_not_found()),
    })
    .await
}

async fn get(state: &AppState, id: Uuid) -> AuthResult<Resp> {
    as_admin(state, async |tx| match users::by_id(tx, id).await? {
        Some(_) => users::json(tx, id).await,
        None => Err(AuthError::user_not_found()),
    })
    .await
    .map(ok)
}

/// `ban_duration`: "none" lifts a ban, a Go duration sets one.
fn ban_until(call: &Call) -> AuthResult<Option<Option<chrono::DateTime<chrono::Utc>>>> {
    match call.s("ban_duration") {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(d) => {
            let secs = util::parse_go_duration(d).ok_or_else(|| {
                AuthError::validation(format!(
                    "invalid format for ban duration: time: invalid duration \"{d}\""
                ))
            })?;
            // Go durations stop at about 292 years; so does this (and no overflow).
            let until = (secs.abs() < 9.2e9)
                .then(|| chrono::Duration::try_milliseconds((secs * 1000.0) as i64))
                .flatten()
                .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                .ok_or_else(|| {
                    AuthError::validation(format!(
                        "invalid format for ban duration: time: invalid duration \"{d}\""
                    ))
                })?;
            Ok(Some(Some(until)))
        }
    }
}

async fn password_hash_from(state: &AppState, call: &Call) -> AuthResult<Option<String>> {
    match (call.s("password"), call.s("password_hash")) {
        (Some(_), Some(_)) => Err(AuthError::validation(
            "Only a password or a password hash should be provided",
        )),
        (Some(p), None) => {
            password::check_strength(&state.config.auth, p)?;
            Ok(Some(
                password::hash(p, state.config.auth.password_hash_cost).await?,
            ))
        }
        (None, Some(h)) => {
            let ok = ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) && h.len() == 60;
            if !ok {
                return Err(AuthError::validation(
                    "Invalid password hash format: only bcrypt hashes are supported",
                ));
            }
            Ok(Some(h.to_string()))
        }
        (None, None) => Ok(None),
    }
}

async fn create(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let email = call.s("email").map(util::validate_email).transpose()?;
    let phone = call.s("phone").map(util::validate_phone).transpose()?;
    if email.is_none() && phone.is_none() {
        return Err(AuthError::validation(
            "Cannot create a user without either an email or phone",
        ));
    }
    let id = match call.s("id") {
        None => None,
        Some(s) => {
            let id: Uuid = s
                .parse()
                .map_err(|_| AuthError::validation("ID must conform to the uuid v4 format"))?;
            if id.is_nil() {
                return Err(AuthError::validation("ID cannot be a nil uuid"));
            }
            Some(id)
        }
    };
    let user_meta = super::metadata(call, "user_metadata")?
        .or(super::metadata(call, "data")?)
        .unwrap_or_else(|| json!({}));
    let app_meta = super::metadata(call, "app_metadata")?;
    let ban = ban_until(call)?;
    let hash = password_hash_from(state, call).await?;
    let role = call.s("role").map(str::to_string);
    check_role(role.as_deref())?;
    as_admin(state, async |tx| {
        if let Some(e) = &email {
            if users::by_email(tx, e).await?.is_some() {
                return Err(AuthError::email_exists());
            }
        }
        if let Some(p) = &phone {
            if users::by_phone(tx, p).await?.is_some() {
                return Err(AuthError::unprocessable(
                    "phone_exists",
                    "Phone number already registered by another user",
                ));
            }
        }
        let id = users::create(
            tx,
            NewUser {
                id,
                password_hash: hash,
                app_meta,
                role: role.as_deref(),
                email_confirmed: call.b("email_confirm").unwrap_or(false),
                phone_confirmed: call.b("phone_confirm").unwrap_or(false),
                ..NewUser::new(email.as_deref(), phone.as_deref(), user_meta)
            },
        )
        .await?;
        if let Some(b) = ban {
            tx.execute(
                "update auth.users set banned_until = $2 where id = $1",
                &[&id, &b],
            )
            .await
            .map_err(AuthError::pg)?;
        }
        super::audit::record(
            tx,
            &call.ip,
            None,
            "user_signedup",
            Some(json!({"user_id": id, "user_email": email, "user_phone": phone})),
        )
        .await?;
        users::json(tx, id).await
    })
    .await
    .map(ok)
}

async fn update(state: &AppState, call: &Call, id: Uuid) -> AuthResult<Resp> {
    let email = call.s("email").map(util::validate_email).transpose()?;
    let phone = call.s("phone").map(util::validate_phone).transpose()?;
    let user_meta = super::metadata(call, "user_metadata")?;
    let app_meta = super::metadata(call, "app_metadata")?;
    let ban = ban_until(call)?;
    let hash = password_hash_from(state, call).await?;
    as_admin(state, async |tx| {
        let Some(u) = users::by_id(tx, id).await? else {
            return Err(AuthError::user_not_found());
        };
        check_role(call.s("role"))?;
        if let Some(role) = call.s("role") {
            tx.execute("update auth.users set role = $2 where id = $1", &[&id, &role])
                .await.map_err(AuthError::pg)?;
        }
        if let Some(e) = email.as_deref().filter(|e| Some(*e) != u.email.as_deref()) {
            users::refuse_taken_email(tx, e, id).await?;
            tx.execute(
                "update auth.users set email = $2, email_change = '', email_change_token_new = '' where id = $1",
                &[&id, &e],
            )
            .await.map_err(AuthError::pg)?;
            email::ensure_email_identity(tx, id).await?;
        }
        if let Some(p) = phone.as_deref().filter(|p| Some(*p) != u.phone.as_deref()) {
            users::refuse_taken_phone(tx, p, id).await?;
            tx.execute("update auth.users set phone = $2 where id = $1", &[&id, &p])
                .await.map_err(AuthError::pg)?;
        }
        if let Some(h) = &hash {
            tx.execute(
                "update auth.users set encrypted_password = $2 where id = $1",
                &[&id, h],
            )
            .await.map_err(AuthError::pg)?;
        }
        match call.b("email_confirm") {
            Some(true) => {
                tx.execute(
                    "update auth.users set email_confirmed_at = coalesce(email_confirmed_at, now()) where id = $1",
                    &[&id],
                )
                .await.map_err(AuthError::pg)?;
            }
            Some(false) => {
                tx.execute("update auth.users set email_confirmed_at = null where id = $1", &[&id])
                    .await.map_err(AuthError::pg)?;
            }
            None => {}
        }
        if call.b("phone_confirm") == Some(true) {
            tx.execute(
                "update auth.users set phone_confirmed_at = coalesce(phone_confirmed_at, now()) where id = $1",
                &[&id],
            )
            .await.map_err(AuthError::pg)?;
        }
        for (patch, current, column) in [
            (&user_meta, &u.user_meta, "raw_user_meta_data"),
            (&app_meta, &u.app_meta, "raw_app_meta_data"),
        ] {
            if let Some(m) = patch {
                let merged = users::merge_meta(current, m);
                tx.execute(
                    &format!("update auth.users set {column} = $2 where id = $1"),
                    &[&id, &merged],
                )
                .await.map_err(AuthError::pg)?;
            }
        }
        if let Some(b) = ban {
            tx.execute("update auth.users set banned_until = $2 where id = $1", &[&id, &b])
                .await.map_err(AuthError::pg)?;
            if b.is_some() {
                tx.execute("delete from auth.sessions where user_id = $1", &[&id])
                    .await.map_err(AuthError::pg)?;
            }
        }
        tx.execute("update auth.users set updated_at = now() where id = $1", &[&id])
            .await.map_err(AuthError::pg)?;
        users::sync_email_identity(tx, id).await?;
        users::json(tx, id).await
    })
    .await
    .map(ok)
}

async fn delete(state: &AppState, call: &Call, id: Uuid) -> AuthResult<Resp> {
    let soft = call.b("should_soft_delete").unwrap_or(false);
    as_admin(state, async |tx| {
        let Some(u) = users::by_id(tx, id).await? else {
            return Err(AuthError::user_not_found());
        };
        if soft {
            if u.deleted_at.is_none() {
                // GoTrue obfuscates what identified the user so the address can be reused.
                tx.execute(
                    "update auth.users set deleted_at = now(), updated_at = now(), email = null, phone = null,
                       encrypted_password = '', confirmation_token = '', recovery_token = '',
                       email_change_token_new = '', email_change_token_current = '', email_change = '',
                       phone_change = '', phone_change_token = '', reauthentication_token = ''
                     where id = $1",
                    &[&id],
                )
                .await.map_err(AuthError::pg)?;
                tx.execute("delete from auth.identities where user_id = $1", &[&id])
                    .await.map_err(AuthError::pg)?;
                tx.execute("delete from auth.sessions where user_id = $1", &[&id])
                    .await.map_err(AuthError::pg)?;
            }
        } else {
            tx.execute("delete from auth.users where id = $1", &[&id])
                .await
                .map_err(|e| AuthError::internal("Database error deleting user", crate::db::error_text(&e)))?;
        }
        super::audit::record(tx, &call.ip, None, "user_deleted", Some(json!({"user_id": id, "user_email": u.email, "user_phone": u.phone, "soft": soft}))).await?;
        Ok(json!({}))
    })
    .await
    .map(ok)
}

async fn generate_link(state: &AppState, call: &Call) -> AuthResult<Resp> {
    let cfg = &state.config.auth;
    let ltype = call.s("type").unwrap_or("").to_string();
    let email = util::validate_email(call.s("email").unwrap_or(""))?;
    let data = super::metadata(call, "data")?;
    let redirect = util::redirect_for(cfg, call.redirect_to());
    let hash = match (ltype.as_str(), call.s("password")) {
        ("signup", Some(p)) => {
            password::check_strength(cfg, p)?;
            Some(password::hash(p, cfg.password_hash_cost).await?)
        }
        _ => None,
    };
    let new_email = call.s("new_email").map(util::validate_email).transpose()?;
    as_admin(state, async |tx| {
        let existing = users::by_email(tx, &email).await?;
        let kind = link_kind(&ltype)?;
        let user = match kind {
            Kind::Signup | Kind::Invite => {
                link_user(tx, existing, &email, hash, data, kind == Kind::Invite).await?
            }
            _ => {
                let u = existing.ok_or_else(|| {
                    AuthError::not_found("user_not_found", "User with this email not found")
                })?;
                if matches!(kind, Kind::EmailChange | Kind::EmailChangeCurrent) {
                    stage_email_change(tx, &u, new_email.as_deref()).await?;
                }
                u
            }
        };
        let to = if kind == Kind::EmailChange {
            new_email.clone().unwrap_or_default()
        } else {
            email.clone()
        };
        let sent = email::send(state, tx, &user, kind, &to, &redirect, false).await?;
        let mut out = users::json(tx, user.id).await?;
        if let Some(o) = out.as_object_mut() {
            o.insert("action_link".into(), json!(sent.action_link));
            o.insert("email_otp".into(), json!(sent.otp));
            o.insert("hashed_token".into(), json!(sent.token_hash));
            // GoTrue answers with the requested type (email_change_current / _new)
            let vtype = match kind {
                Kind::EmailChange | Kind::EmailChangeCurrent => ltype.as_str(),
                _ => kind.link_type(),
            };
            o.insert("verification_type".into(), json!(vtype));
            o.insert("redirect_to".into(), json!(redirect));
        }
        Ok(out)
    })
    .await
    .map(ok)
}

/// The kind of email a `generate_link` type stands for.
fn link_kind(ltype: &str) -> AuthResult<Kind> {
    Ok(match ltype {
        "signup" => Kind::Signup,
        "invite" => Kind::Invite,
        "magiclink" => Kind::MagicLink,
        "recovery" => Kind::Recovery,
        "email_change_current" => Kind::EmailChangeCurrent,
        "email_change_new" => Kind::EmailChange,
        other => {
            return Err(AuthError::validation(format!(
                "Invalid email action link type requested: {other}"
            )))
        }
    })
}

/// The user a signup or invite link is for: a confirmed one is refused, an unconfirmed one
/// takes the call's password and data (and is marked invited), a missing one is created.
async fn link_user(
    tx: &tokio_postgres::Transaction<'_>,
    existing: Option<User>,
    email: &str,
    hash: Option<String>,
    data: Option<Value>,
    invite: bool,
) -> AuthResult<User> {
    match existing {
        Some(u) if u.is_confirmed() => Err(AuthError::email_exists()),
        Some(u) => {
            // Only when there is something to change: a project's update triggers see no
            // empty updates.
            if hash.is_some() || data.is_some() || invite {
                tx.execute(
                    "update auth.users set \
                       encrypted_password = coalesce($2, encrypted_password), \
                       raw_user_meta_data = coalesce($3, raw_user_meta_data), \
                       invited_at = case when $4 then now() else invited_at end \
                     where id = $1",
                    &[&u.id, &hash, &data, &invite],
                )
                .await
                .map_err(AuthError::pg)?;
            }
            Ok(u)
        }
        None => {
            let id = users::create(
                tx,
                NewUser {
                    password_hash: hash,
                    invited: invite,
                    ..NewUser::new(Some(email), None, data.unwrap_or_else(|| json!({})))
                },
            )
            .await?;
            users::by_id(tx, id)
                .await?
                .ok_or_else(AuthError::user_not_found)
        }
    }
}

/// Stage the new address of an email-change link in the user's `email_change`.
async fn stage_email_change(
    tx: &tokio_postgres::Transaction<'_>,
    u: &User,
    new_email: Option<&str>,
) -> AuthResult<()> {
    let Some(ne) = new_email else {
        return Err(AuthError::validation(
            "The new email address provided is invalid",
        ));
    };
    if users::by_email(tx, ne).await?.is_some() {
        return Err(AuthError::email_exists());
    }
    tx.execute(
        "update auth.users set email_change = $2 where id = $1",
        &[&u.id, &ne],
    )
    .await
    .map_err(AuthError::pg)?;
    Ok(())
}

pub async fn invite(state: &AppState, call: &Call, _admin: AdminCaller) -> AuthResult<Resp> {
    let email = util::validate_email(call.s("email").unwrap_or(""))?;
    let data = super::metadata(call, "data")?.unwrap_or_else(|| json!({}));
    let redirect = util::redirect_for(&state.config.auth, call.redirect_to());
    as_admin(state, async |tx| {
        let u = match users::by_email(tx, &email).await? {
            Some(u) if u.is_confirmed() => return Err(AuthError::email_exists()),
            Some(u) => {
                tx.execute(
                    "update auth.users set invited_at = now(), raw_user_meta_data = $2 where id = $1",
                    &[&u.id, &data],
                )
                .await.map_err(AuthError::pg)?;
                users::by_id(tx, u.id).await?.ok_or_else(AuthError::user_not_found)?
            }
            None => {
                let id = users::create(
                    tx,
                    NewUser {
                        invited: true,
                        ..NewUser::new(Some(&email), None, data.clone())
                    },
                )
                .await?;
                users::by_id(tx, id).await?.ok_or_else(AuthError::user_not_found)?
            }
        };
        email::send(state, tx, &u, Kind::Invite, &email, &redirect, true).await?;
        super::audit::record(tx, &call.ip, None, "user_invited", Some(json!({"user_id": u.id, "user_email": email}))).await?;
        users::json(tx, u.id).await
    })
    .await
    .map(ok)
}
