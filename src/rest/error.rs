//! PostgREST's error shape `{code, details, hint, message}`: PGRST codes grouped by stage
//! (1xx request, 2xx schema cache, 3xx JWT, 5xx internal) and one SQLSTATE -> HTTP table
//! modelled on PostgREST's `mapSQLtoHTTP`.

use http::StatusCode;
use serde_json::{json, Value};

use crate::http::ApiError;

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

    /// A PostgreSQL error, through the SQLSTATE table. `anon` picks 401 vs 403 for 42501.
    pub fn from_pg(e: &tokio_postgres::Error, anon: bool) -> RestError {
        let Some(db) = e.as_db_error() else {
            // Connection-level failure.
            let mut r = RestError::new(
                503,
                "PGRST001",
                "Database client error. Retrying the connection.",
            );
            r.log = Some(e.to_string());
            return r;
        };
        RestError::from_db(db.code().code(), db.message(), db.detail(), db.hint(), anon)
    }

    /// A pool that gave no connection, as PostgREST answers it: 504 PGRST003 when every
    /// connection stayed busy for the wait timeout, 503 PGRST000 when none could be made.
    pub fn from_pool<E: std::fmt::Display>(e: &deadpool::managed::PoolError<E>) -> RestError {
        let mut r = match crate::db::PoolFailure::of(e) {
            crate::db::PoolFailure::Exhausted => RestError::new(
                504,
                "PGRST003",
                "Timed out acquiring connection from connection pool.",
            ),
            crate::db::PoolFailure::Unavailable => RestError::new(
                503,
                "PGRST000",
                "Database connection error. Retrying the connection.",
            ),
        };
        r.log = Some(e.to_string());
        r
    }

    /// An error from the lean hot-path connection (see `db::wire`).
    pub fn from_wire(e: &crate::db::wire::WireError, anon: bool) -> RestError {
        match e {
            crate::db::wire::WireError::Db(d) => RestError::from_db(
                &d.code,
                &d.message,
                d.detail.as_deref(),
                d.hint.as_deref(),
                anon,
            ),
            crate::db::wire::WireError::Io(s) => {
                let mut r = RestError::new(
                    503,
                    "PGRST001",
                    "Database client error. Retrying the connection.",
                );
                r.log = Some(s.clone());
                r
            }
        }
    }

    fn from_db(
        code: &str,
        message: &str,
        detail: Option<&str>,
        hint: Option<&str>,
        anon: bool,
    ) -> RestError {
        // `raise sqlstate 'PGRST' using message = '{json}', detail = '{json}'`.
        if code == "PGRST" {
            if let Some(r) = custom_pgrst(message, detail) {
                return r;
            }
        }
        let status = sqlstate_status(code, anon);
        let mut r = RestError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: code.to_string(),
            message: message.to_string(),
            details: detail
                .map(|s| Value::String(s.into()))
                .unwrap_or(Value::Null),
            hint: hint.map(|s| Value::String(s.into())).unwrap_or(Value::Null),
            headers: vec![],
            custom_headers: vec![],
            log: None,
        };
        if status == 401 {
            r.headers.push(("www-authenticate", "Bearer".into()));
        }
        if status >= 500 {
            r.log = Some(format!("{code}: {message}"));
        }
        r
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

/// PostgREST's SQLSTATE -> HTTP status table.
pub fn sqlstate_status(code: &str, anon: bool) -> u16 {
    match code {
        "23503" | "23505" => 409,
        "25006" => 405,
        "P0001" => 400,
        "42883" | "42P01" => 404,
        "42P17" => 500,
        "42501" => {
            if anon {
                401
            } else {
                403
            }
        }
        "53400" => 500,
        "54001" => 500,
        // The session ended under the statement (shutdown, crash, restart): PostgREST
        // answers 57P01 with 503; its siblings are the same outage.
        "57P01" | "57P02" | "57P03" => 503,
        _ => {
            if let Some(rest) = code.strip_prefix("PT") {
                if let Ok(n) = rest.parse::<u16>() {
                    if (100..600).contains(&n) {
                        return n;
                    }
                }
            }
            match &code[..code.len().min(2)] {
                "08" => 503,
                "09" => 500,
                "0L" | "0P" => 403,
                "25" => 500,
                "28" => 403,
                "2D" => 500,
                "38" | "39" | "3B" | "40" => 500,
                "53" => 503,
                "54" | "55" | "57" | "58" => 500,
                "F0" | "HV" | "XX" => 500,
                "P0" => 500,
                _ => 400,
            }
        }
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
    }
}
