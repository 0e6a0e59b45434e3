//! auth.users rows: loading, rendering as GoTrue's User JSON, creating with an identity.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::error::{AuthError, AuthResult, RowExt};
use crate::db::error::DbError;

pub const USER_COLS: &str = "id, email, phone, encrypted_password, \
    email_confirmed_at, phone_confirmed_at, banned_until, deleted_at, is_anonymous, \
    coalesce(raw_app_meta_data, '{}') as raw_app_meta_data, \
    coalesce(raw_user_meta_data, '{}') as raw_user_meta_data, \
    coalesce(email_change, '') as email_change, \
    coalesce(email_change_confirm_status, 0::smallint) as email_change_confirm_status, \
    coalesce(reauthentication_token, '') as reauthentication_token, \
    confirmation_sent_at, recovery_sent_at, email_change_sent_at, reauthentication_sent_at, \
    phone_change_sent_at, invited_at";

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub encrypted_password: Option<String>,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    pub phone_confirmed_at: Option<DateTime<Utc>>,
    pub banned_until: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub is_anonymous: bool,
    pub app_meta: Value,
    pub user_meta: Value,
    pub email_change: String,
    pub email_change_confirm_status: i16,
    pub reauthentication_token: String,
    pub confirmation_sent_at: Option<DateTime<Utc>>,
    pub recovery_sent_at: Option<DateTime<Utc>>,
    pub email_change_sent_at: Option<DateTime<Utc>>,
    pub reauthentication_sent_at: Option<DateTime<Utc>>,
    pub phone_change_sent_at: Option<DateTime<Utc>>,
    pub invited_at: Option<DateTime<Utc>>,
}

impl User {
    pub fn from_row(r: &Row) -> AuthResult<User> {
        Ok(User {
            id: r.col("id")?,
            email: r.col::<Option<String>>("email")?.filter(|s| !s.is_empty()),
            phone: r.col::<Option<String>>("phone")?.filter(|s| !s.is_empty()),
            encrypted_password: r.col("encrypted_password")?,
            email_confirmed_at: r.col("email_confirmed_at")?,
            phone_confirmed_at: r.col("phone_confirmed_at")?,
            banned_until: r.col("banned_until")?,
            deleted_at: r.col("deleted_at")?,
            is_anonymous: r.col("is_anonymous")?,
            app_meta: r.col("raw_app_meta_data")?,
            user_meta: r.col("raw_user_meta_data")?,
            email_change: r.col("email_change")?,
            email_change_confirm_status: r.col("email_change_confirm_status")?,
            reauthentication_token: r.col("reauthentication_token")?,
            confirmation_sent_at: r.col("confirmation_sent_at")?,
            recovery_sent_at: r.col("recovery_sent_at")?,
            email_change_sent_at: r.col("email_change_sent_at")?,
            reauthentication_sent_at: r.col("reauthentication_sent_at")?,
            phone_change_sent_at: r.col("phone_change_sent_at")?,
            invited_at: r.col("invited_at")?,
        })
    }

    pub fn is_confirmed(&self) -> bool {
        self.email_confirmed_at.is_some() || self.phone_confirmed_at.is_some()
    }

    pub fn is_banned(&self) -> bool {
        self.banned_until.is_some_and(|b| b > Utc::now())
    }
}

pub async fn by_id(c: &impl GenericClient, id: Uuid) -> AuthResult<Option<User>> {
    let q = format!("select {USER_COLS} from auth.users where id = $1");
    c.query_opt(&q, &[&id])
        .await
        .map_err(AuthError::pg)?
        .as_ref()
        .map(User::from_row)
        .transpose()
}

/// Is `email` (any case) the address of another live user than `except`? Refused then with
/// `email_exists`, as GoTrue does.
pub async fn refuse_taken_email(
    c: &impl GenericClient,
    email: &str,
    except: Uuid,
) -> AuthResult<()> {
    let taken = c
        .query_opt(
            "select 1 from auth.users where lower(email) = lower($1) and id <> $2 and deleted_at is null",
            &[&email, &except],
        )
        .await
        .map_err(AuthError::pg)?;
    match taken {
        Some(_) => Err(AuthError::email_exists()),
        None => Ok(()),
    }
}

/// The same for a phone number (`phone_exists`).
pub async fn refuse_taken_phone(
    c: &impl GenericClient,
    phone: &str,
    except: Uuid,
) -> AuthResult<()> {
    let taken = c
        .query_opt(
            "select 1 from auth.users where phone = $1 and id <> $2 and deleted_at is null",
            &[&phone, &except],
        )
        .await
        .map_err(AuthError::pg)?;
    match taken {
        Some(_) => Err(AuthError::phone_exists()),
        None => Ok(()),
    }
}

/// The live (not soft-deleted) user with this email, locked for the transaction.
pub async fn by_email(c: &impl GenericClient, email: &str) -> AuthResult<Option<User>> {
    let q = format!(
        "select {USER_COLS} from auth.users where lower(email) = $1 and is_sso_user = false \
         and deleted_at is null order by created_at limit 1 for update"
    );
    c.query_opt(&q, &[&email.to_lowercase()])
        .await
        .map_err(AuthError::pg)?
        .as_ref()
        .map(User::from_row)
        .transpose()
}

pub async fn by_phone(c: &impl GenericClient, phone: &str) -> AuthResult<Option<User>> {
    let q = format!(
        "select {USER_COLS} from auth.users where phone = $1 and deleted_at is null limit 1 for update"
    );
    c.query_opt(&q, &[&phone])
        .await
        .map_err(AuthError::pg)?
        .as_ref()
        .map(User::from_row)
        .transpose()
}

/// The user with this email, else the one with this phone (both locked for update).
pub async fn by_email_or_phone(
    c: &impl GenericClient,
    email: Option<&str>,
    phone: Option<&str>,
) -> AuthResult<Option<User>> {
    match (email, phone) {
        (Some(e), _) => by_email(c, e).await,
        (_, Some(p)) => by_phone(c, p).await,
        _ => Ok(None),
    }
}

/// GoTrue's User JSON.
pub async fn json(c: &impl GenericClient, id: Uuid) -> AuthResult<Value> {
    let row = c
        .query_opt(
            "select auth.oxibase_user_json(u) from auth.users u where id = $1",
            &[&id],
        )
        .await
        .map_err(AuthError::pg)?;
    row.map(|r| r.col::<Value>(0))
        .transpose()?
        .ok_or_else(AuthError::user_not_found)
}

pub struct NewUser<'a> {
    pub id: Option<Uuid>,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub password_hash: Option<String>,
    pub user_meta: Value,
    pub app_meta: Option<Value>,
    pub role: Option<&'a str>,
    pub email_confirmed: bool,
    pub phone_confirmed: bool,
    pub is_anonymous: bool,
    pub invited: bool,
}

impl<'a> NewUser<'a> {
    /// A user with these addresses and metadata, unconfirmed, without a password, id, role
    /// or app metadata of its own; callers set what differs with `..NewUser::new(..)`.
    pub fn new(email: Option<&'a str>, phone: Option<&'a str>, user_meta: Value) -> Self {
        NewUser {
            id: None,
            email,
            phone,
            password_hash: None,
            user_meta,
            app_meta: None,
            role: None,
            email_confirmed: false,
            phone_confirmed: false,
            is_anonymous: false,
            invited: false,
        }
    }
}

/// Insert a user and its email/phone identity. The app's `on auth.users insert` triggers
/// run here; if one fails, the caller's transaction fails as a whole.
pub async fn create(c: &impl GenericClient, n: NewUser<'_>) -> AuthResult<Uuid> {
    let id = n.id.unwrap_or_else(Uuid::new_v4);
    let provider = if n.email.is_some() {
        Some("email")
    } else if n.phone.is_some() {
        Some("phone")
    } else {
        None
    };
    let mut app = match (provider, n.is_anonymous) {
        (Some(p), _) => json!({"provider": p, "providers": [p]}),
        (None, true) => json!({"provider": "anonymous", "providers": ["anonymous"]}),
        (None, false) => json!({}),
    };
    if let (Some(Value::Object(extra)), Some(obj)) = (&n.app_meta, app.as_object_mut()) {
        for (k, v) in extra {
            if k != "provider" && k != "providers" {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    let user_meta = if n.user_meta.is_object() {
        n.user_meta
    } else {
        json!({})
    };
    let res = c
        .execute(
            "insert into auth.users (instance_id, id, aud, role, email, phone, encrypted_password,
               email_confirmed_at, phone_confirmed_at, raw_app_meta_data, raw_user_meta_data,
               created_at, updated_at, is_anonymous, invited_at, is_super_admin,
               confirmation_token, recovery_token, email_change_token_new, email_change,
               email_change_token_current, reauthentication_token, phone_change, phone_change_token)
             values ('00000000-0000-0000-0000-000000000000', $1, 'authenticated', $2, $3, $4, $5,
               case when $6 then now() end, case when $7 then now() end, $8, $9,
               now(), now(), $10, case when $11 then now() end, false,
               '', '', '', '', '', '', '', '')",
            &[
                &id,
                &n.role.unwrap_or("authenticated"),
                &n.email,
                &n.phone,
                &n.password_hash.as_deref().unwrap_or(""),
                &n.email_confirmed,
                &n.phone_confirmed,
                &app,
                &user_meta,
                &n.is_anonymous,
                &n.invited,
            ],
        )
        .await;
    if let Err(e) = res {
        return Err(AuthError::db_as(
            DbError::of(&e),
            "Database error saving new user",
        ));
    }
    if let Some(p) = provider {
        let (provider_id, data) = match p {
            "email" => (
                id.to_string(),
                json!({"sub": id.to_string(), "email": n.email, "email_verified": n.email_confirmed, "phone_verified": false}),
            ),
            _ => (
                id.to_string(),
                json!({"sub": id.to_string(), "phone": n.phone, "email_verified": false, "phone_verified": n.phone_confirmed}),
            ),
        };
        c.execute(
            "insert into auth.identities (provider_id, user_id, identity_data, provider,
               last_sign_in_at, created_at, updated_at)
             values ($1, $2, $3, $4, now(), now(), now())",
            &[&provider_id, &id, &data, &p],
        )
        .await
        .map_err(|e| {
            AuthError::internal("Database error saving new user", crate::db::error_text(&e))
        })?;
    }
    Ok(id)
}

/// Merge `updates` into a metadata object; a null value removes the key (GoTrue).
pub fn merge_meta(current: &Value, updates: &Value) -> Value {
    let mut out = current.as_object().cloned().unwrap_or_default();
    if let Some(u) = updates.as_object() {
        for (k, v) in u {
            if v.is_null() {
                out.remove(k);
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Keep the email identity's data in step with auth.users.
pub async fn sync_email_identity(c: &impl GenericClient, id: Uuid) -> AuthResult<()> {
    c.execute(
        "update auth.identities i set identity_data = i.identity_data
            || jsonb_build_object('email', u.email, 'email_verified', u.email_confirmed_at is not null),
            updated_at = now()
         from auth.users u where u.id = i.user_id and i.user_id = $1 and i.provider = 'email'",
        &[&id],
    )
    .await.map_err(AuthError::pg)?;
    Ok(())
}
