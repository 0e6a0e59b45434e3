//! PostgREST's error shape `{code, details, hint, message}`: PGRST codes grouped by stage
//! (1xx request, 2xx schema cache, 3xx JWT, 5xx internal) and one SQLSTATE -> HTTP table
//! modelled on PostgREST's `mapSQLtoHTTP`.

use http::StatusCode;
use serde_json::{json, Value};

use crate::db::error::{DbClass, DbError};
use crate::db::wire::WireError;
use crate::http::ApiError;
use crate::jwt::JwtError;

#[derive(Debug, Clone)]
pub struct RestError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Value,
    pub hint: Value,
    /// Extra response headers (WWW-Authenticate, custom headers from `raise sqlstate 'PGRST'`).
    pub headers: Vec<(&'static str, String)>,
    /// Headers chosen by SQL (`raise sqlstate 'PGRST'`), added by `to_response`.
    pub custom_headers: Vec<(String, String)>,
    /// Internal detail for the log only.
    pub log: Option<String>,
}

impl RestError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> RestError {
        RestError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: code.into(),
            message: message.into(),
            details: Value::Null,
            hint: Value::Null,
            headers: vec![],
            custom_headers: vec![],
            log: None,
        }
    }
    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = Value::String(d.into());
        self
    }
    pub fn details_json(mut self, d: Value) -> Self {
        self.details = d;
        self
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Value::String(h.into());
        self
    }

    // ---- JWT (PGRST3xx) ----

    /// PostgREST's answer to a bad token: 401, PGRST303 for an expired one, PGRST301
    /// otherwise, with `WWW-Authenticate: Bearer error="invalid_token", ...`.
    pub fn jwt(e: &JwtError) -> RestError {
        let mut r = match e {
            JwtError::Expired => RestError::new(401, "PGRST303", "JWT expired"),
            other => RestError::new(401, "PGRST301", other.to_string()),
        };
        let desc = r.message.replace('"', "'");
        r.headers.push((
            "www-authenticate",
            format!("Bearer error=\"invalid_token\", error_description=\"{desc}\""),
        ));
        r
    }

    // ---- request stage (PGRST1xx) ----

    /// PGRST100: a query parameter that does not parse.
    /// PGRST100 with the position PostgREST's parser reports.
    pub fn parse_at(
        what: &str,
        input: &str,
        detail: impl Into<String>,
        column: usize,
    ) -> RestError {
        RestError::new(
            400,
            "PGRST100",
            format!("\"failed to parse {what} ({input})\" (line 1, column {column})"),
        )
        .details(detail)
    }
    pub fn parse(what: &str, input: &str, detail: impl Into<String>) -> RestError {
        RestError::new(
            400,
            "PGRST100",
            format!("\"failed to parse {what} ({input})\""),
        )
        .details(detail)
    }
    pub fn invalid_body(detail: impl Into<String>) -> RestError {
        RestError::new(400, "PGRST102", "Empty or invalid json").details(detail)
    }
    pub fn not_acceptable(types: &str) -> RestError {
        RestError::new(
            406,
            "PGRST107",
            format!("None of these media types are available: {types}"),
        )
    }
    pub fn internal(detail: impl Into<String>) -> RestError {
        let mut e = RestError::new(500, "PGRST000", "Internal server error");
        e.log = Some(detail.into());
        e
    }

    /// A PostgreSQL error, through PostgREST's table. `anon` picks 401 vs 403 for 42501.
    pub fn from_pg(e: &tokio_postgres::Error, anon: bool) -> RestError {
        RestError::db(&DbError::of(e), anon)
    }

    /// A pool that gave no connection, as PostgREST answers it: 504 PGRST003 when every
    /// connection stayed busy for the wait timeout, 503 PGRST000 when none could be made.
    pub fn from_pool<E: std::fmt::Display>(e: &deadpool::managed::PoolError<E>) -> RestError {
        RestError::db(&DbError::pool(e), false)
    }

    /// An error from the lean hot-path connection (see `db::wire`).
    pub fn from_wire(e: &WireError, anon: bool) -> RestError {
        RestError::db(&DbError::wire(e), anon)
    }

    /// A classified database error in PostgREST's shape: the status from PostgREST's
    /// `mapSQLtoHTTP` table (by class), the SQLSTATE as `code`.
    pub fn db(d: &DbError, anon: bool) -> RestError {
        let mut r = match (d.class, d.sqlstate.as_deref()) {
            (DbClass::PoolTimeout, _) => RestError::new(
                504,
                "PGRST003",
                "Timed out acquiring connection from connection pool.",
            ),
            (DbClass::PoolUnavailable, _) => RestError::new(
                503,
                "PGRST000",
                "Database connection error. Retrying the connection.",
            ),
            // A connection-level failure with no SQLSTATE (closed, I/O, client library).
            (DbClass::ConnectionLost | DbClass::Client, None) => RestError::new(
                503,
                "PGRST001",
                "Database client error. Retrying the connection.",
            ),
            (DbClass::PgrstRaise, _) => match custom_pgrst(&d.message, d.detail.as_deref()) {
                Some(r) => return r,
                None => RestError::with_sqlstate(400, d),
            },
            (class, _) => RestError::with_sqlstate(class_status(class, anon), d),
        };
        if r.status == StatusCode::UNAUTHORIZED {
            r.headers.push(("www-authenticate", "Bearer".into()));
        }
        if r.status.is_server_error() {
            r.log = Some(d.log.clone());
        }
        r
    }

    fn with_sqlstate(status: u16, d: &DbError) -> RestError {
        RestError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: d.sqlstate.clone().unwrap_or_default(),
            message: d.message.clone(),
            details: d.detail.clone().map(Value::String).unwrap_or(Value::Null),
            hint: d.hint.clone().map(Value::String).unwrap_or(Value::Null),
            headers: vec![],
            custom_headers: vec![],
            log: None,
        }
    }
}

fn custom_pgrst(message: &str, detail: Option<&str>) -> Option<RestError> {
    let m: Value = serde_json::from_str(message).ok()?;
    let d: Value = detail.and_then(|d| serde_json::from_str(d).ok())?;
    let status = d.get("status")?.as_u64()? as u16;
    let mut r = RestError::new(
        status,
        m.get("code").and_then(|c| c.as_str()).unwrap_or(""),
        m.get("message").and_then(|c| c.as_str()).unwrap_or(""),
    );
    r.details = m.get("details").cloned().unwrap_or(Value::Null);
    r.hint = m.get("hint").cloned().unwrap_or(Value::Null);
    if let Some(h) = d.get("headers").and_then(|h| h.as_object()) {
        for (k, v) in h {
            if let Some(v) = v.as_str() {
                r.custom_headers
                    .push((k.to_ascii_lowercase(), v.to_string()));
            }
        }
    }
    Some(r)
}

/// PostgREST's SQLSTATE -> HTTP status table (`mapSQLtoHTTP`), by class.
fn class_status(class: DbClass, anon: bool) -> u16 {
    use DbClass::*;
    match class {
        UniqueViolation | ForeignKeyViolation => 409,
        ReadOnlyTransaction => 405,
        UndefinedFunction | UndefinedTable => 404,
        RowLevelSecurity | InsufficientPrivilege if anon => 401,
        RowLevelSecurity | InsufficientPrivilege | InvalidAuthorization => 403,
        CustomStatus(n) => n,
        // The session ended under the statement (shutdown, crash, restart), or the server
        // is out of resources: the same outage.
        ConnectionLost | Client | PoolUnavailable | InsufficientResources => 503,
        PoolTimeout => 504,
        ServerFault | SerializationFailure | Deadlock | StatementTimeout | QueryCanceled
        | LockTimeout => 500,
        NotNullViolation
        | CheckViolation
        | ExclusionViolation
        | IntegrityOther
        | UndefinedColumn
        | UndefinedObject
        | SyntaxOrAccess
        | InvalidTextRepresentation
        | DataException
        | RaiseException
        | PgrstRaise
        | Other => 400,
    }
}

impl RestError {
    pub fn to_response(&self) -> crate::http::Resp {
        let mut r = crate::http::error_response(self);
        for (k, v) in &self.custom_headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                r.headers_mut().insert(k, v);
            }
        }
        r
    }
}

impl ApiError for RestError {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn body(&self) -> Value {
        json!({"code": self.code, "details": self.details, "hint": self.hint, "message": self.message})
    }
    fn headers(&self) -> Vec<(&'static str, String)> {
        self.headers.clone()
    }
    fn log_detail(&self) -> Option<String> {
        self.log.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::error::classify;

    fn sqlstate_status(code: &str, anon: bool) -> u16 {
        class_status(classify(code, ""), anon)
    }

    #[test]
    fn sqlstate_table() {
        assert_eq!(sqlstate_status("23505", false), 409);
        assert_eq!(sqlstate_status("42501", true), 401);
        assert_eq!(sqlstate_status("42501", false), 403);
        assert_eq!(sqlstate_status("P0001", false), 400);
        assert_eq!(sqlstate_status("PT418", false), 418);
        assert_eq!(sqlstate_status("08006", false), 503);
        assert_eq!(sqlstate_status("57P01", false), 503);
        assert_eq!(sqlstate_status("57P02", true), 503);
        assert_eq!(sqlstate_status("57P03", true), 503);
        assert_eq!(sqlstate_status("57014", true), 500);
        assert_eq!(sqlstate_status("22P02", false), 400);
        assert_eq!(sqlstate_status("25006", false), 405);
        assert_eq!(sqlstate_status("42P01", false), 404);
        // The rest of PostgREST's table, class by class.
        for (code, status) in [
            ("23503", 409),
            ("23502", 400),
            ("42883", 404),
            ("42P17", 500),
            ("53400", 500),
            ("53300", 503),
            ("54001", 500),
            ("0LP01", 403),
            ("0P000", 403),
            ("28P01", 403),
            ("25P02", 500),
            ("2D000", 500),
            ("38000", 500),
            ("39000", 500),
            ("3B000", 500),
            ("40001", 500),
            ("40P01", 500),
            ("55P03", 500),
            ("58000", 500),
            ("F0000", 500),
            ("HV000", 500),
            ("XX000", 500),
            ("P0002", 500),
            ("09000", 500),
            ("PT999", 400),
            ("42703", 400),
            ("22012", 400),
            ("01000", 400),
        ] {
            assert_eq!(sqlstate_status(code, false), status, "{code}");
        }
    }

    #[test]
    fn pool_failures_answer_as_postgrest() {
        use deadpool::managed::{PoolError, TimeoutType};
        let wait: PoolError<String> = PoolError::Timeout(TimeoutType::Wait);
        let r = RestError::from_pool(&wait);
        assert_eq!((r.status.as_u16(), r.code.as_str()), (504, "PGRST003"));
        let r = RestError::from_pool(&PoolError::<String>::Closed);
        assert_eq!((r.status.as_u16(), r.code.as_str()), (503, "PGRST000"));
        let r = RestError::from_wire(&WireError::Io("closed".into()), false);
        assert_eq!((r.status.as_u16(), r.code.as_str()), (503, "PGRST001"));
    }

    #[test]
    fn jwt_errors_are_postgrest_s() {
        let r = RestError::jwt(&JwtError::Expired);
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.body(),
            json!({"code": "PGRST303", "details": null, "hint": null, "message": "JWT expired"})
        );
        assert_eq!(
            r.headers,
            [(
                "www-authenticate",
                "Bearer error=\"invalid_token\", error_description=\"JWT expired\"".to_string()
            )]
        );
        let r = RestError::jwt(&JwtError::Invalid("bad \"sig\"".into()));
        assert_eq!(r.code, "PGRST301");
        assert!(
            r.headers[0].1.ends_with("bad 'sig'\""),
            "{}",
            r.headers[0].1
        );
    }
}
