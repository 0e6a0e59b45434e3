//! Storage errors in Supabase Storage's wire shape: `{statusCode, code, error, message}`.
//!
//! Like Supabase, the HTTP status is 400 for every client error (the semantic status is the
//! `statusCode` string in the body), 500 for internal errors, and a few exceptions (416 for
//! an unsatisfiable range, 403 for a role that may not call the API at all).

use http::StatusCode;
use serde_json::{json, Value};

use crate::db::error::{DbClass, DbError};
use crate::http::ApiError;

#[derive(Debug)]
pub enum StorageError {
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    BucketAlreadyExists,
    KeyAlreadyExists,
    BucketNotEmpty,
    InvalidBucketName(String),
    InvalidKey(String),
    EntityTooLarge,
    InvalidMimeType(String),
    /// An RLS or privilege refusal (`42501`), or a role that may not do this.
    AccessDenied(String),
    InvalidSignature(String),
    ExpiredToken,
    InvalidRequest(String),
    InvalidParameter(String),
    MissingParameter(String),
    /// Unsatisfiable range; carries the object size for `Content-Range: bytes */size`.
    InvalidRange(u64),
    /// Not one of this API's routes.
    RouteNotFound(String),
    /// Image transformation refused (bad input image, too large).
    ImageProcessing(String),
    /// A TUS protocol error with its own status.
    Tus(u16, String),
    /// Detail goes to the log only.
    Internal(String),
    /// No pooled connection came free in time (Supabase Storage: 544 DatabaseTimeout);
    /// detail to the log.
    DatabaseTimeout(String),
    /// The database is down or restarting: 503, worth retrying; detail to the log.
    DatabaseUnavailable(String),
}

impl StorageError {
    pub fn internal(e: impl std::fmt::Display) -> StorageError {
        StorageError::Internal(e.to_string())
    }

    /// The semantic status (the body's `statusCode`).
    pub fn semantic(&self) -> u16 {
        use StorageError::*;
        match self {
            NoSuchBucket | NoSuchKey | NoSuchUpload | RouteNotFound(_) => 404,
            BucketAlreadyExists | KeyAlreadyExists | BucketNotEmpty => 409,
            EntityTooLarge => 413,
            InvalidMimeType(_) => 415,
            AccessDenied(_) => 403,
            InvalidRange(_) => 416,
            Tus(s, _) => *s,
            Internal(_) => 500,
            DatabaseTimeout(_) => 544,
            DatabaseUnavailable(_) => 503,
            _ => 400,
        }
    }

    fn code(&self) -> &'static str {
        use StorageError::*;
        match self {
            NoSuchBucket => "NoSuchBucket",
            NoSuchKey => "NoSuchKey",
            NoSuchUpload => "NoSuchUpload",
            BucketAlreadyExists => "BucketAlreadyExists",
            KeyAlreadyExists => "KeyAlreadyExists",
            BucketNotEmpty => "ResourceNotEmpty",
            InvalidBucketName(_) => "InvalidBucketName",
            InvalidKey(_) => "InvalidKey",
            EntityTooLarge => "EntityTooLarge",
            InvalidMimeType(_) => "InvalidMimeType",
            AccessDenied(_) => "AccessDenied",
            InvalidSignature(_) => "InvalidSignature",
            ExpiredToken => "ExpiredToken",
            InvalidRequest(_) | RouteNotFound(_) | ImageProcessing(_) => "InvalidRequest",
            InvalidParameter(_) => "InvalidParameter",
            MissingParameter(_) => "MissingParameter",
            InvalidRange(_) => "InvalidRange",
            Tus(..) => "TusError",
            Internal(_) => "InternalError",
            DatabaseTimeout(_) => "DatabaseTimeout",
            DatabaseUnavailable(_) => "DatabaseError",
        }
    }

    /// The legacy `error` field; Supabase falls back to the code.
    fn error_field(&self) -> &'static str {
        use StorageError::*;
        match self {
            NoSuchBucket => "Bucket not found",
            NoSuchKey => "not_found",
            BucketAlreadyExists | KeyAlreadyExists => "Duplicate",
            InvalidBucketName(_) => "Invalid Input",
            EntityTooLarge => "Payload too large",
            InvalidMimeType(_) => "invalid_mime_type",
            AccessDenied(_) => "Unauthorized",
            InvalidRange(_) => "invalid_range",
            RouteNotFound(_) => "Not Found",
            _ => self.code(),
        }
    }

    pub fn message(&self) -> String {
        use StorageError::*;
        match self {
            NoSuchBucket => "Bucket not found".into(),
            NoSuchKey => "Object not found".into(),
            NoSuchUpload => "Upload not found".into(),
            BucketAlreadyExists | KeyAlreadyExists => "The resource already exists".into(),
            BucketNotEmpty => "The bucket you tried to delete is not empty".into(),
            InvalidBucketName(_) => "Bucket name invalid".into(),
            InvalidKey(k) => format!("Invalid key: {k}"),
            EntityTooLarge => "The object exceeded the maximum allowed size".into(),
            InvalidMimeType(m) => format!("mime type {m} is not supported"),
            AccessDenied(m) | InvalidSignature(m) | InvalidRequest(m) => m.clone(),
            ExpiredToken => "The provided token has expired.".into(),
            InvalidParameter(p) => format!("Invalid Parameter {p}"),
            MissingParameter(p) => format!("Missing Required Parameter {p}"),
            InvalidRange(_) => "invalid range provided".into(),
            RouteNotFound(r) => format!("Route {r} not found"),
            ImageProcessing(m) | Tus(_, m) => m.clone(),
            Internal(_) => "Internal server error".into(),
            DatabaseTimeout(_) => "The connection to the database timed out".into(),
            DatabaseUnavailable(_) => {
                "The database is currently unavailable. Please try again later.".into()
            }
        }
    }

    /// Map a PostgreSQL error the way Supabase Storage does (42501 access denied, 23505
    /// duplicate, ...); anything unexpected is internal.
    pub fn from_db(e: &tokio_postgres::Error) -> StorageError {
        StorageError::db(DbError::of(e))
    }

    /// A PostgreSQL error: `.map_err(StorageError::pg)`.
    pub fn pg(e: tokio_postgres::Error) -> StorageError {
        StorageError::db(DbError::of(&e))
    }

    /// A pool that gave no connection: busy past the wait timeout, or no database.
    pub fn from_pool<E: std::fmt::Display>(e: &deadpool::managed::PoolError<E>) -> StorageError {
        StorageError::db(DbError::pool(e))
    }

    /// A classified database error in Supabase Storage's terms.
    pub fn db(d: DbError) -> StorageError {
        match d.class {
            DbClass::ConnectionLost | DbClass::PoolUnavailable => {
                StorageError::DatabaseUnavailable(d.log)
            }
            DbClass::PoolTimeout => StorageError::DatabaseTimeout(d.log),
            DbClass::RowLevelSecurity => {
                StorageError::AccessDenied("new row violates row-level security policy".into())
            }
            DbClass::InsufficientPrivilege => StorageError::AccessDenied(d.message),
            DbClass::UniqueViolation => StorageError::KeyAlreadyExists,
            DbClass::ForeignKeyViolation => StorageError::NoSuchBucket,
            DbClass::InvalidTextRepresentation => StorageError::InvalidParameter("value".into()),
            DbClass::StatementTimeout | DbClass::QueryCanceled => {
                StorageError::Internal("statement timeout".into())
            }
            _ => StorageError::Internal(d.log),
        }
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl ApiError for StorageError {
    fn status(&self) -> StatusCode {
        match self {
            StorageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            StorageError::DatabaseTimeout(_) | StorageError::DatabaseUnavailable(_) => {
                StatusCode::from_u16(self.semantic()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            StorageError::InvalidRange(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            StorageError::Tus(s, _) => StatusCode::from_u16(*s).unwrap_or(StatusCode::BAD_REQUEST),
            StorageError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn body(&self) -> Value {
        json!({
            "statusCode": self.semantic().to_string(),
            "code": self.code(),
            "error": self.error_field(),
            "message": self.message(),
        })
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            StorageError::InvalidRange(size) => vec![("content-range", format!("bytes */{size}"))],
            StorageError::Tus(..) => vec![("tus-resumable", "1.0.0".into())],
            _ => vec![],
        }
    }

    fn log_detail(&self) -> Option<String> {
        match self {
            StorageError::Internal(d)
            | StorageError::DatabaseTimeout(d)
            | StorageError::DatabaseUnavailable(d) => Some(d.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_supabase() {
        let e = StorageError::NoSuchKey;
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"statusCode":"404","code":"NoSuchKey","error":"not_found","message":"Object not found"})
        );
        let e = StorageError::EntityTooLarge;
        assert_eq!(e.body()["statusCode"], "413");
        assert_eq!(
            e.body()["message"],
            "The object exceeded the maximum allowed size"
        );
        assert_eq!(
            StorageError::NoSuchBucket.body()["error"],
            "Bucket not found"
        );
        assert_eq!(
            StorageError::InvalidMimeType("image/jpeg".into()).body()["message"],
            "mime type image/jpeg is not supported"
        );
        let e = StorageError::Internal("secret detail".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.body().to_string().contains("secret"));
    }
}
