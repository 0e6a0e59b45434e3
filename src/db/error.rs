//! The one place that reads a database failure: a `tokio_postgres::Error`, a pool that gave
//! no connection, or an error of the lean `wire` connection becomes a [`DbError`] whose
//! [`DbClass`] says what kind of failure it was. Every API maps the *classes* into its own
//! wire shape (`RestError::db`, `StorageError::db`, `FnError::db`, `AuthError::db`); no
//! other module looks at a SQLSTATE.

use std::fmt;

use deadpool::managed::{PoolError, TimeoutType};

use super::wire::WireError;

/// What kind of failure a database error is. The classes are as fine as the APIs need:
/// PostgREST's SQLSTATE table, Supabase Storage's and GoTrue's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbClass {
    /// 23505.
    UniqueViolation,
    /// 23503.
    ForeignKeyViolation,
    /// 23502.
    NotNullViolation,
    /// 23514.
    CheckViolation,
    /// 23P01.
    ExclusionViolation,
    /// Another integrity violation (23000, 23001).
    IntegrityOther,
    /// 42501 from a row-level security policy.
    RowLevelSecurity,
    /// 42501 otherwise: the role lacks a privilege.
    InsufficientPrivilege,
    /// Classes 28, 0L, 0P: invalid authorization, grantor or role.
    InvalidAuthorization,
    /// 42P01.
    UndefinedTable,
    /// 42883.
    UndefinedFunction,
    /// 42703.
    UndefinedColumn,
    /// 42704.
    UndefinedObject,
    /// Another class-42 error (syntax, ambiguous names, wrong types).
    SyntaxOrAccess,
    /// 22P02: a value that does not parse as its type.
    InvalidTextRepresentation,
    /// Another class-22 data exception (out of range, division by zero, bad JSON...).
    DataException,
    /// P0001: `raise exception` without a custom code.
    RaiseException,
    /// `raise sqlstate 'PTnnn'`: PostgREST answers with HTTP status nnn.
    CustomStatus(u16),
    /// `raise sqlstate 'PGRST'`: PostgREST reads status and headers from message and detail.
    PgrstRaise,
    /// 25006: a write in a read-only transaction.
    ReadOnlyTransaction,
    /// 40001.
    SerializationFailure,
    /// 40P01.
    Deadlock,
    /// 57014 caused by `statement_timeout`.
    StatementTimeout,
    /// 55P03: `lock_timeout` or NOWAIT.
    LockTimeout,
    /// 57014 otherwise (cancel request).
    QueryCanceled,
    /// Class 53 except 53400 (out of memory, disk full, too many connections).
    InsufficientResources,
    /// The connection or the server went away: a closed connection, an I/O error, class 08,
    /// or 57P01/57P02/57P03 (admin shutdown, crash shutdown, cannot connect now).
    ConnectionLost,
    /// No pooled connection came free within the wait timeout.
    PoolTimeout,
    /// The pool could make no connection (create timeout, closed pool, refused).
    PoolUnavailable,
    /// A failure of the client library that is not a lost connection (a value that does
    /// not convert, a wrong parameter count): no SQLSTATE.
    Client,
    /// A failure on the server's side that no client can fix: classes 09, 2D, 38, 39, 3B,
    /// 58, F0, HV, XX, the rest of 25, 40, 54, 55, 57 and P0, 53400, and 42P17 (a policy
    /// that recurses).
    ServerFault,
    /// Any other SQLSTATE.
    Other,
}

/// A classified database failure; the fields the APIs show to clients are kept.
#[derive(Debug, Clone)]
pub struct DbError {
    pub class: DbClass,
    /// The five-character SQLSTATE (or `PGRST`/`PTnnn`), absent for client, connection and
    /// pool failures without one.
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub constraint: Option<String>,
    /// One line for the log (message, SQLSTATE, detail, position).
    pub log: String,
}

impl DbError {
    /// Classify a `tokio_postgres` error.
    pub fn of(e: &tokio_postgres::Error) -> DbError {
        let log = super::error_text(e);
        match e.as_db_error() {
            Some(db) => DbError {
                class: classify(db.code().code(), db.message()),
                sqlstate: Some(db.code().code().to_string()),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
                constraint: db.constraint().map(str::to_string),
                log,
            },
            None => {
                let lost = e.is_closed()
                    || std::error::Error::source(e)
                        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
                let class = match e.code() {
                    // An error with a SQLSTATE but no DbError body (not produced today).
                    Some(c) => classify(c.code(), ""),
                    None if lost => DbClass::ConnectionLost,
                    None => DbClass::Client,
                };
                DbError::bare(class, e.code().map(|c| c.code().to_string()), log)
            }
        }
    }

    /// Classify a pool that gave no connection: busy past the wait timeout, or unable to
    /// make one.
    pub fn pool<E: fmt::Display>(e: &PoolError<E>) -> DbError {
        let class = match e {
            PoolError::Timeout(TimeoutType::Wait) => DbClass::PoolTimeout,
            _ => DbClass::PoolUnavailable,
        };
        DbError::bare(class, None, format!("pool: {e}"))
    }

    /// Classify an error of the lean hot-path connection (see `db::wire`).
    pub fn wire(e: &WireError) -> DbError {
        match e {
            WireError::Db(d) => DbError {
                class: classify(&d.code, &d.message),
                sqlstate: Some(d.code.clone()),
                message: d.message.clone(),
                detail: d.detail.clone(),
                hint: d.hint.clone(),
                constraint: None,
                log: e.to_string(),
            },
            WireError::Io(s) => DbError::bare(DbClass::ConnectionLost, None, s.clone()),
        }
    }

    fn bare(class: DbClass, sqlstate: Option<String>, log: String) -> DbError {
        DbError {
            class,
            sqlstate,
            message: log.clone(),
            detail: None,
            hint: None,
            constraint: None,
            log,
        }
    }

    /// The database is down, restarting or unreachable: worth retrying.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.class,
            DbClass::ConnectionLost | DbClass::PoolUnavailable
        )
    }
}

impl DbClass {
    /// 42501: a missing grant or a row-level security refusal.
    pub fn is_privilege(self) -> bool {
        matches!(
            self,
            DbClass::InsufficientPrivilege | DbClass::RowLevelSecurity
        )
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.log)
    }
}

/// The class of a SQLSTATE (`message` tells a statement timeout from a cancel request and
/// an RLS refusal from a missing grant).
pub fn classify(code: &str, message: &str) -> DbClass {
    use DbClass::*;
    match code {
        "23505" => UniqueViolation,
        "23503" => ForeignKeyViolation,
        "23502" => NotNullViolation,
        "23514" => CheckViolation,
        "23P01" => ExclusionViolation,
        "42501" if message.contains("row-level security") => RowLevelSecurity,
        "42501" => InsufficientPrivilege,
        "42P01" => UndefinedTable,
        "42883" => UndefinedFunction,
        "42703" => UndefinedColumn,
        "42704" => UndefinedObject,
        "42P17" => ServerFault,
        "22P02" => InvalidTextRepresentation,
        "P0001" => RaiseException,
        "PGRST" => PgrstRaise,
        "25006" => ReadOnlyTransaction,
        "40001" => SerializationFailure,
        "40P01" => Deadlock,
        "57014" if message.contains("statement timeout") => StatementTimeout,
        "57014" => QueryCanceled,
        "55P03" => LockTimeout,
        "53400" => ServerFault,
        "57P01" | "57P02" | "57P03" => ConnectionLost,
        _ => {
            if let Some(n) = code.strip_prefix("PT").and_then(|n| n.parse::<u16>().ok()) {
                if (100..600).contains(&n) {
                    return CustomStatus(n);
                }
            }
            match code.get(..2).unwrap_or(code) {
                "08" => ConnectionLost,
                "22" => DataException,
                "23" => IntegrityOther,
                "42" => SyntaxOrAccess,
                "28" | "0L" | "0P" => InvalidAuthorization,
                "53" => InsufficientResources,
                "09" | "25" | "2D" | "38" | "39" | "3B" | "40" | "54" | "55" | "57" | "58"
                | "F0" | "HV" | "XX" | "P0" => ServerFault,
                _ => Other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DbClass::*;

    #[test]
    fn sqlstates_classify() {
        let cases = [
            ("23505", "", UniqueViolation),
            ("23503", "", ForeignKeyViolation),
            ("23502", "", NotNullViolation),
            ("23514", "", CheckViolation),
            ("23P01", "", ExclusionViolation),
            ("23001", "", IntegrityOther),
            (
                "42501",
                "new row violates row-level security policy for table \"t\"",
                RowLevelSecurity,
            ),
            (
                "42501",
                "permission denied for table t",
                InsufficientPrivilege,
            ),
            ("28000", "", InvalidAuthorization),
            ("0LP01", "", InvalidAuthorization),
            ("0P000", "", InvalidAuthorization),
            ("42P01", "", UndefinedTable),
            ("42883", "", UndefinedFunction),
            ("42703", "", UndefinedColumn),
            ("42704", "", UndefinedObject),
            ("42601", "", SyntaxOrAccess),
            (
                "42P17",
                "infinite recursion detected in policy",
                ServerFault,
            ),
            ("22P02", "", InvalidTextRepresentation),
            ("22003", "", DataException),
            ("P0001", "", RaiseException),
            ("P0002", "", ServerFault),
            ("PT418", "", CustomStatus(418)),
            ("PT999", "", Other),
            ("PTabc", "", Other),
            ("PGRST", "", PgrstRaise),
            ("25006", "", ReadOnlyTransaction),
            ("25P02", "", ServerFault),
            ("40001", "", SerializationFailure),
            ("40P01", "", Deadlock),
            ("40002", "", ServerFault),
            (
                "57014",
                "canceling statement due to statement timeout",
                StatementTimeout,
            ),
            (
                "57014",
                "canceling statement due to user request",
                QueryCanceled,
            ),
            (
                "55P03",
                "canceling statement due to lock timeout",
                LockTimeout,
            ),
            ("55000", "", ServerFault),
            ("53100", "", InsufficientResources),
            ("53300", "", InsufficientResources),
            ("53400", "", ServerFault),
            ("54001", "", ServerFault),
            ("57P01", "", ConnectionLost),
            ("57P02", "", ConnectionLost),
            ("57P03", "", ConnectionLost),
            ("57000", "", ServerFault),
            ("08006", "", ConnectionLost),
            ("08P01", "", ConnectionLost),
            ("XX000", "", ServerFault),
            ("F0000", "", ServerFault),
            ("2D000", "", ServerFault),
            ("01000", "", Other),
            ("", "", Other),
        ];
        for (code, message, class) in cases {
            assert_eq!(classify(code, message), class, "{code}");
        }
    }

    #[test]
    fn pool_failures_classify() {
        let wait: PoolError<std::io::Error> = PoolError::Timeout(TimeoutType::Wait);
        assert_eq!(DbError::pool(&wait).class, PoolTimeout);
        for e in [
            PoolError::<std::io::Error>::Timeout(TimeoutType::Create),
            PoolError::Timeout(TimeoutType::Recycle),
            PoolError::Closed,
            PoolError::NoRuntimeSpecified,
            PoolError::Backend(std::io::Error::other("refused")),
        ] {
            let d = DbError::pool(&e);
            assert_eq!(d.class, PoolUnavailable, "{e}");
            assert!(d.is_unavailable());
        }
    }

    #[test]
    fn wire_errors_keep_their_fields() {
        let e = WireError::Db(super::super::wire::DbErrorFields {
            code: "23505".into(),
            message: "duplicate key".into(),
            detail: Some("Key (id)=(1) already exists.".into()),
            hint: None,
        });
        let d = DbError::wire(&e);
        assert_eq!(d.class, UniqueViolation);
        assert_eq!(d.sqlstate.as_deref(), Some("23505"));
        assert_eq!(d.detail.as_deref(), Some("Key (id)=(1) already exists."));
        let d = DbError::wire(&WireError::Io("the database closed the connection".into()));
        assert_eq!(d.class, ConnectionLost);
        assert!(d.sqlstate.is_none());
    }
}
