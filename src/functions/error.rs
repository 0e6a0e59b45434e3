//! The functions' error shape: `{"error": {"code": "<snake_case>", "message": "<sentence>"}}`
//! with a fitting HTTP status. Internal detail goes to the log only.

use http::StatusCode;
use serde_json::{json, Value};

use crate::db::error::{DbClass, DbError};
use crate::http::ApiError;
use crate::storage::error::StorageError;

#[derive(Debug)]
pub struct FnError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For the log only (internal errors).
    detail: Option<String>,
}

impl FnError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> FnError {
        FnError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> FnError {
        FnError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> FnError {
        FnError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// A conversation the caller cannot see (RLS cannot tell it from one that does not exist).
    pub fn conversation_not_found() -> FnError {
        FnError::new(
            StatusCode::NOT_FOUND,
            "conversation_not_found",
            "The conversation was not found.",
        )
    }
    pub fn unauthorized(message: impl Into<String>) -> FnError {
        FnError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn too_large(limit: u64) -> FnError {
        FnError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The file is larger than the limit of {limit} bytes."),
        )
    }
    /// A JSON function's request body, at most `limit` bytes (413 above, 400 when it breaks
    /// off).
    pub async fn read_body(
        body: hyper::body::Incoming,
        limit: usize,
    ) -> Result<bytes::Bytes, FnError> {
        use crate::http::body::{read_limited, BodyError};
        read_limited(body, limit).await.map_err(|e| match e {
            BodyError::TooLarge(_) => FnError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("The request body is larger than the limit of {limit} bytes."),
            ),
            BodyError::Read(_) => FnError::bad_request("The request body could not be read."),
        })
    }

    pub fn unsupported(message: impl Into<String>) -> FnError {
        FnError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }
    pub fn method_not_allowed(method: &http::Method, name: &str) -> FnError {
        FnError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not supported by {name}."),
        )
    }
    pub fn not_implemented(name: &str) -> FnError {
        FnError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            format!("The function {name} is not implemented yet."),
        )
    }
    pub fn internal(detail: impl std::fmt::Display) -> FnError {
        FnError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            message: "An internal error occurred.".into(),
            detail: Some(detail.to_string()),
        }
    }

    /// The database is down or restarting: 503, worth retrying.
    pub fn db_unavailable(detail: impl std::fmt::Display) -> FnError {
        FnError {
            detail: Some(detail.to_string()),
            ..FnError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "The database is unavailable; please retry in a moment.",
            )
        }
    }

    /// No pooled database connection came free in time: 504.
    pub fn db_timeout(detail: impl std::fmt::Display) -> FnError {
        FnError {
            detail: Some(detail.to_string()),
            ..FnError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "database_timeout",
                "Timed out waiting for a database connection; please retry in a moment.",
            )
        }
    }

    /// A pool that gave no connection (busy past the wait timeout, or no database).
    pub fn from_pool<E: std::fmt::Display>(e: &deadpool::managed::PoolError<E>) -> FnError {
        FnError::db(DbError::pool(e))
    }

    /// A PostgreSQL error: `.map_err(FnError::pg)`.
    pub fn pg(e: tokio_postgres::Error) -> FnError {
        FnError::db(DbError::of(&e))
    }

    /// A classified database error in the functions' shape.
    pub fn db(d: DbError) -> FnError {
        match d.class {
            DbClass::ConnectionLost | DbClass::PoolUnavailable => FnError::db_unavailable(d),
            DbClass::PoolTimeout => FnError::db_timeout(d),
            DbClass::InsufficientPrivilege | DbClass::RowLevelSecurity => FnError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "You are not allowed to do this.",
            ),
            DbClass::ForeignKeyViolation => {
                FnError::bad_request("A referenced row does not exist.")
            }
            DbClass::InvalidTextRepresentation => {
                FnError::bad_request("A value has the wrong format.")
            }
            _ => FnError::internal(d),
        }
    }

    /// A storage failure while writing or removing an uploaded object.
    pub fn from_storage(e: StorageError) -> FnError {
        match e {
            StorageError::DatabaseTimeout(d) => FnError::db_timeout(d),
            StorageError::DatabaseUnavailable(d) => FnError::db_unavailable(d),
            StorageError::EntityTooLarge => FnError::too_large(super::upload::MAX_BYTES),
            StorageError::InvalidMimeType(m) => {
                FnError::unsupported(format!("Files of type {m} are not accepted."))
            }
            StorageError::AccessDenied(_) => FnError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "You may not store files at this location.",
            ),
            StorageError::KeyAlreadyExists => FnError::new(
                StatusCode::CONFLICT,
                "conflict",
                "A file already exists at this path.",
            ),
            StorageError::InvalidKey(_) => FnError::bad_request("The file name is not valid."),
            StorageError::InvalidRequest(m) => FnError::bad_request(m),
            other => FnError::internal(format!("storage: {other:?}")),
        }
    }
}

impl ApiError for FnError {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
    fn log_detail(&self) -> Option<String> {
        self.detail.clone()
    }
}
