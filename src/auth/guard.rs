//! Request guards: values that prove a privilege check passed. [`route`](super::route)
//! makes the one check an endpoint's [`Privilege`] asks for and hands the guard to the
//! handler, so a handler that needs a user (or an admin) cannot be called without one and
//! the token is verified once. The guards' private field keeps every other module from
//! making one without the check.

use serde_json::Value;

use super::error::{jwt_error, AuthError, AuthResult};
use super::Call;
use crate::identity::{bearer, AuthContext};
use crate::state::AppState;

/// A user's access token: bearer present, verified, with a UUID `sub` (and, when present,
/// a UUID `session_id`). Whether the user and session still exist is checked inside the
/// request's transaction ([`super::load_token_user`]).
#[derive(Debug)]
pub struct AuthedUser {
    pub user_id: uuid::Uuid,
    pub session_id: Option<uuid::Uuid>,
    _checked: (),
}

/// A caller presenting the service_role (or supabase_admin) key or token.
#[derive(Debug)]
pub struct AdminCaller {
    _checked: (),
}

/// The caller's verified credentials (apikey or bearer); bad tokens get GoTrue's errors.
pub fn caller(state: &AppState, call: &Call) -> AuthResult<AuthContext> {
    state
        .keys
        .authenticate(&call.headers, None)
        .map_err(|e| jwt_error(&e))
}

/// The check for [`AuthedUser`].
pub fn user(state: &AppState, call: &Call) -> AuthResult<AuthedUser> {
    let bearer = bearer(&call.headers).ok_or_else(AuthError::no_authorization)?;
    let ctx = state.keys.resolve(bearer).map_err(|e| jwt_error(&e))?;
    let sub = ctx
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::forbidden("bad_jwt", "invalid claim: missing sub claim"))?;
    let user_id = sub.parse().map_err(|_| {
        AuthError::bad_request("bad_jwt", "invalid claim: sub claim must be a UUID")
    })?;
    let session_id = match ctx.claims.get("session_id").and_then(Value::as_str) {
        None | Some("") => None,
        Some(s) => Some(s.parse().map_err(|_| {
            AuthError::forbidden("bad_jwt", "invalid claim: session_id claim must be a UUID")
        })?),
    };
    Ok(AuthedUser {
        user_id,
        session_id,
        _checked: (),
    })
}

/// The check for [`AdminCaller`]: some credential must be sent, and it must be a service
/// key or token.
pub fn admin(state: &AppState, call: &Call) -> AuthResult<AdminCaller> {
    if bearer(&call.headers).is_none() && !call.headers.contains_key("apikey") {
        return Err(AuthError::no_authorization());
    }
    if caller(state, call)?.role.is_service() {
        Ok(AdminCaller { _checked: () })
    } else {
        Err(AuthError::not_admin())
    }
}
