//! GoTrue's error shape: `{code, message}` (API version 2024-01-01) plus the legacy `msg`
//! and `error_code` fields older clients read, the `x-sb-error-code` header, and for weak
//! passwords `weak_password.reasons`. Internal detail goes to the log only.

use std::fmt;

use http::StatusCode;
use serde_json::{json, Value};
use tokio_postgres::row::RowIndex;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::db::error::{DbClass, DbError};
use crate::http::ApiError;

#[derive(Debug)]
pub struct AuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `weak_password.reasons` for weak_password errors.
    pub reasons: Option<Vec<&'static str>>,
    /// Log-only detail (internal errors).
    pub internal: Option<String>,
    /// Commit the transaction's work despite the error (e.g. revoking a replayed
    /// refresh token's whole family).
    pub commit: bool,
}

pub type AuthResult<T> = Result<T, AuthError>;

impl AuthError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError {
            status,
            code,
            message: message.into(),
            reasons: None,
            internal: None,
            commit: false,
        }
    }
    pub fn keep_commit(mut self) -> AuthError {
        self.commit = true;
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> AuthError {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn validation(message: impl Into<String>) -> AuthError {
        Self::bad_request("validation_failed", message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> AuthError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> AuthError {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> AuthError {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    /// A server-side failure: `message` is GoTrue's user-facing text, `detail` is logged.
    pub fn internal(message: &str, detail: impl Into<String>) -> AuthError {
        AuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "unexpected_failure",
            message: message.into(),
            reasons: None,
            internal: Some(detail.into()),
            commit: false,
        }
    }
    pub fn invalid_credentials() -> AuthError {
        Self::bad_request("invalid_credentials", "Invalid login credentials")
    }
    pub fn invalid_email() -> AuthError {
        Self::bad_request(
            "email_address_invalid",
            "Unable to validate email address: invalid format",
        )
    }
    pub fn invalid_phone() -> AuthError {
        Self::bad_request(
            "validation_failed",
            "Invalid phone number format (E.164 required)",
        )
    }
    pub fn otp_expired() -> AuthError {
        Self::forbidden("otp_expired", "Token has expired or is invalid")
    }
    pub fn user_not_found() -> AuthError {
        Self::not_found("user_not_found", "User not found")
    }
    pub fn email_exists() -> AuthError {
        Self::unprocessable(
            "email_exists",
            "A user with this email address has already been registered",
        )
    }
    pub fn phone_exists() -> AuthError {
        Self::unprocessable(
            "phone_exists",
            "A user with this phone number has already been registered",
        )
    }
    pub fn not_admin() -> AuthError {
        Self::forbidden("not_admin", "User not allowed")
    }
    pub fn no_authorization() -> AuthError {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        )
    }
    pub fn over_request_rate_limit() -> AuthError {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "over_request_rate_limit",
            "Request rate limit reached",
        )
    }
    pub fn over_email_send_rate_limit() -> AuthError {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "over_email_send_rate_limit",
            "Email rate limit exceeded",
        )
    }
    pub fn weak_password(message: String, reasons: Vec<&'static str>) -> AuthError {
        AuthError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "weak_password",
            message,
            reasons: Some(reasons),
            internal: None,
            commit: false,
        }
    }
}

impl ApiError for AuthError {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn body(&self) -> Value {
        let mut v = json!({
            "code": self.code,
            "error_code": self.code,
            "message": self.message,
            "msg": self.message,
        });
        if let Some(r) = &self.reasons {
            v["weak_password"] = json!({ "reasons": r });
        }
        v
    }
    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![("x-sb-error-code", self.code.to_string())]
    }
    fn log_detail(&self) -> Option<String> {
        self.internal.clone()
    }
}

impl AuthError {
    /// A PostgreSQL error: `.map_err(AuthError::pg)`.
    pub fn pg(e: tokio_postgres::Error) -> AuthError {
        AuthError::db(DbError::of(&e))
    }

    /// A pool that gave no connection: `.map_err(AuthError::pool)`.
    pub fn pool(e: deadpool_postgres::PoolError) -> AuthError {
        AuthError::db(DbError::pool(&e))
    }

    /// A classified database error as GoTrue answers it.
    pub fn db(d: DbError) -> AuthError {
        AuthError::db_as(d, "Database error")
    }

    /// [`AuthError::db`] with GoTrue's message for a server fault (e.g. "Database error
    /// saving new user"). A client's race into a unique index of `auth.users` is GoTrue's
    /// 422; a timeout is its 504 `request_timeout`; a lost database 503; the rest 500.
    pub fn db_as(d: DbError, message: &str) -> AuthError {
        match d.class {
            DbClass::UniqueViolation => match d.constraint.as_deref() {
                Some("users_email_partial_key") => AuthError::email_exists(),
                Some("users_phone_key") => AuthError::phone_exists(),
                Some("users_pkey") => {
                    AuthError::unprocessable("user_already_exists", "User already registered")
                }
                _ => AuthError::internal(message, d.log),
            },
            DbClass::PoolTimeout | DbClass::StatementTimeout => AuthError {
                internal: Some(d.log),
                ..AuthError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "request_timeout",
                    "Processing this request timed out, please retry after a moment.",
                )
            },
            DbClass::ConnectionLost | DbClass::PoolUnavailable => AuthError::db_unavailable(d.log),
            _ => AuthError::internal(message, d.log),
        }
    }
}

impl AuthError {
    /// The database is down or restarting: 503, worth retrying (detail to the log).
    pub fn db_unavailable(detail: impl Into<String>) -> AuthError {
        AuthError {
            internal: Some(detail.into()),
            ..AuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unexpected_failure",
                "Database unavailable, please retry after a moment.",
            )
        }
    }
}

/// Map a verification failure of the caller's JWT to GoTrue's error.
pub fn jwt_error(e: &crate::jwt::JwtError) -> AuthError {
    use crate::jwt::JwtError;
    match e {
        JwtError::Expired => AuthError::forbidden(
            "bad_jwt",
            "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired",
        ),
        JwtError::Invalid(_) => AuthError::forbidden("bad_jwt", e.to_string()),
        JwtError::InvalidApiKey => AuthError::new(
            StatusCode::UNAUTHORIZED,
            "no_authorization",
            "Invalid API key",
        ),
    }
}

/// A column of a row, or the error model's answer (500, detail to the log) when its type
/// or NULL-ness does not match, instead of `Row::get`'s panic.
pub trait RowExt {
    fn col<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex + fmt::Display) -> AuthResult<T>;
}

impl RowExt for Row {
    fn col<'a, T: FromSql<'a>>(&'a self, idx: impl RowIndex + fmt::Display) -> AuthResult<T> {
        self.try_get(idx).map_err(AuthError::pg)
    }
}
