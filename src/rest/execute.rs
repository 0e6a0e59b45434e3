//! One transaction as the caller: parameters as text, the statement, commit/rollback,
//! and the shared response helpers.

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

use super::error::RestError;
use super::prefer::{self, Accept, Media};
use super::sql::{ident, Sql};
use super::{header, RestReq, Settings};
use crate::http::{empty, full, Resp};
use crate::state::AppState;

/// A database parameter sent in text format and typed by PostgreSQL (like an untyped
/// literal), so one Rust type serves every column type.
#[derive(Debug)]
pub(super) struct TextParam<'a>(pub(super) &'a str);

impl ToSql for TextParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }
    tokio_postgres::types::to_sql_checked!();
}

// ---------------------------------------------------------------------------------------
// Execution

pub(super) struct Outcome {
    pub(super) total: Option<i64>,
    pub(super) page: i64,
    /// The response body as PostgreSQL sent it (no copy on the fast path).
    pub(super) body: Option<bytes::Bytes>,
    pub(super) location: Option<String>,
    /// Rows an upsert inserted (vs updated), when asked for.
    pub(super) inserted: Option<i64>,
}

/// The request headers as the JSON object PostgREST puts in `request.headers` (names
/// lower-case, the last value of a repeated header), written straight into one string.
pub(super) fn request_gucs_headers(h: &HeaderMap) -> String {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    for (i, k) in h.keys().enumerate() {
        let Some(v) = h
            .get_all(k)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
        else {
            continue;
        };
        if i > 0 && out.len() > 1 {
            out.push(b',');
        }
        // Strings serialize infallibly into a Vec.
        let _ = serde_json::to_writer(&mut out, k.as_str());
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, v);
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_else(|_| "{}".into())
}

/// No connection to be had (PostgREST's PGRST000).
fn pool_error<E: std::fmt::Display>(e: deadpool::managed::PoolError<E>) -> RestError {
    RestError::from_pool(&e)
}

/// `Prefer: timezone=` (already checked against `pg_timezone_names`).
const SET_TIMEZONE: &str = "select set_config('timezone', $1, true)";

/// How to run a request's statement: the transaction's mode and end, and what must hold
/// of the outcome before COMMIT.
pub(super) struct Run<'a> {
    pub(super) read_only: bool,
    pub(super) rollback: bool,
    pub(super) explain: Option<&'a Media>,
    /// `Prefer: handling=strict, max-affected=n`: more rows is PGRST124 (rolled back).
    pub(super) max_affected: Option<i64>,
    /// `application/vnd.pgrst.object+json`: anything but one row is PGRST116.
    pub(super) single: bool,
}

impl<'a> Run<'a> {
    /// A read of a table or view: read-only, committed, nothing checked.
    pub(super) fn read(explain: Option<&'a Media>) -> Run<'a> {
        Run {
            read_only: true,
            rollback: false,
            explain,
            max_affected: None,
            single: false,
        }
    }

    /// A write or a function call: `Prefer: max-affected` (strict) and a single-object
    /// `Accept` are checked before the end.
    pub(super) fn checked(
        req: &RestReq<'_>,
        read_only: bool,
        rollback: bool,
        explain: Option<&'a Media>,
        media: &Media,
    ) -> Run<'a> {
        Run {
            read_only,
            rollback,
            explain,
            max_affected: req.prefer.strict_max_affected(),
            single: *media == Media::Object,
        }
    }

    fn check(&self, o: &Outcome) -> Result<(), RestError> {
        if let Some(m) = self.max_affected {
            if o.page > m {
                return Err(RestError::new(
                    400,
                    "PGRST124",
                    "Query result exceeds max-affected preference constraint",
                )
                .details(format!("The query affects {} rows", o.page)));
            }
        }
        if self.single && o.page != 1 {
            return Err(single_error(o.page));
        }
        Ok(())
    }
}

/// [`execute`], then answer: with the plan when one was asked for (`Accept:
/// application/vnd.pgrst.plan`), else with `respond`'s response from the outcome.
pub(super) async fn execute_then(
    state: &AppState,
    req: &RestReq<'_>,
    q: &Sql,
    run: Run<'_>,
    respond: impl FnOnce(Outcome) -> Result<Resp, RestError>,
) -> Result<Resp, RestError> {
    let explain = run.explain.is_some();
    let out = execute(state, req, q, run).await?;
    if explain {
        return Ok(plan_response(out, &req.accept));
    }
    respond(out)
}

/// What PostgREST sets in the request's transaction besides the role and claims: the
/// headers, the search_path and the statement timeout, owned here for
/// [`crate::db::RequestGucs`] to borrow.
struct TxSettings {
    headers: String,
    search_path: String,
    path: String,
    timeout_ms: Option<u64>,
}

impl TxSettings {
    fn new(state: &AppState, req: &RestReq<'_>) -> TxSettings {
        let mut sp: Vec<String> = vec![ident(req.schema)];
        for s in &state.config.rest.extra_search_path {
            sp.push(ident(s));
        }
        // The role's own statement_timeout wins; else the configured one (not for service).
        let role_timeout = state
            .rest
            .cache()
            .role_timeouts
            .get(req.ctx.role.as_str())
            .copied();
        let timeout_ms = match role_timeout {
            Some(t) => Some(t),
            None if req.ctx.role.is_service() || state.config.rest.statement_timeout_ms == 0 => {
                None
            }
            None => Some(state.config.rest.statement_timeout_ms),
        };
        TxSettings {
            headers: request_gucs_headers(req.headers),
            search_path: sp.join(", "),
            path: format!("/{}", req.path),
            timeout_ms,
        }
    }

    fn gucs<'a>(&'a self, req: &'a RestReq<'_>) -> crate::db::RequestGucs<'a> {
        crate::db::RequestGucs {
            method: req.method.as_str(),
            path: &self.path,
            headers: Some(&self.headers),
            search_path: Some(&self.search_path),
            statement_timeout_ms: self.timeout_ms,
        }
    }
}

impl Outcome {
    /// The one row every statement of the SQL stage returns: total, page, body, location
    /// and (upserts) inserted.
    fn from_row(row: &tokio_postgres::Row) -> Result<Outcome, RestError> {
        let shape = |e: tokio_postgres::Error| RestError::internal(format!("result row: {e}"));
        Ok(Outcome {
            total: row.try_get(0).map_err(shape)?,
            page: row.try_get(1).map_err(shape)?,
            body: row
                .try_get::<_, Option<String>>(2)
                .map_err(shape)?
                .map(bytes::Bytes::from),
            location: row.try_get(3).map_err(shape)?,
            inserted: if row.len() > 4 {
                row.try_get(4).map_err(shape)?
            } else {
                None
            },
        })
    }
}

/// The request's parameters, sent as text and typed by PostgreSQL.
fn text_params(params: &[String]) -> Vec<TextParam<'_>> {
    params.iter().map(|p| TextParam(p)).collect()
}

fn untyped<'a>(params: &'a [TextParam<'a>]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), Type::UNKNOWN))
        .collect()
}

/// Run one statement in the caller's transaction; the outcome is checked (see [`Run`])
/// before the end, so a failed check rolls back. Three ways, by what the request needs:
/// with nothing to decide before the end, one round trip (the wire client's pipeline, or
/// tokio-postgres' queued statements where the wire client cannot connect: TLS, several
/// hosts, a Unix socket); otherwise statement by statement.
pub(super) async fn execute(
    state: &AppState,
    req: &RestReq<'_>,
    q: &Sql,
    run: Run<'_>,
) -> Result<Outcome, RestError> {
    let settings = TxSettings::new(state, req);
    let gucs = settings.gucs(req);
    let needs_check = run.max_affected.is_some() || run.single;
    let fast = run.explain.is_none() && q.count_plan.is_none() && !needs_check;
    if let (true, Some(wire)) = (fast, &state.wire) {
        return pipelined(wire, req, q, &gucs, &run).await;
    }
    let mut client = state.pool.get().await.map_err(pool_error)?;
    if fast && req.prefer.timezone.is_none() {
        return queued(&client, req, q, &gucs, &run).await;
    }
    stepwise(&mut client, req, q, &gucs, run).await
}

/// BEGIN, the role and claims, the statement and the end of the transaction as one batch
/// with one Sync (one round trip, one flush). A failure anywhere skips the rest and rolls
/// the transaction back.
async fn pipelined(
    wire: &crate::db::wire::Pool,
    req: &RestReq<'_>,
    q: &Sql,
    gucs: &crate::db::RequestGucs<'_>,
    run: &Run<'_>,
) -> Result<Outcome, RestError> {
    use crate::db::wire::Step;
    let anon = req.ctx.role.is_anon();
    let mut conn = wire.get().await.map_err(pool_error)?;
    let rc = crate::db::RoleAndClaims::new(req.ctx, gucs);
    let set = rc.params();
    let params: Vec<&str> = q.params.iter().map(String::as_str).collect();
    let tz: Vec<&str> = req.prefer.timezone.as_deref().into_iter().collect();
    // The fixed statements are prepared once per connection; the request's own
    // statement goes unnamed (parsed and planned each time, like pgbench -M extended).
    let mut steps = vec![
        if run.read_only {
            Step::named("oxibase_begin_ro", "START TRANSACTION READ ONLY")
        } else {
            Step::named("oxibase_begin", "START TRANSACTION")
        },
        Step {
            sql: crate::db::SET_ROLE_AND_CLAIMS,
            params: &set,
            text_params: true,
            name: Some("oxibase_role_claims"),
        },
    ];
    if !tz.is_empty() {
        steps.push(Step {
            sql: SET_TIMEZONE,
            params: &tz,
            text_params: true,
            name: Some("oxibase_timezone"),
        });
    }
    let main = steps.len();
    steps.push(Step {
        sql: &q.text,
        params: &params,
        text_params: false,
        name: None,
    });
    steps.push(if run.rollback {
        Step::named("oxibase_rollback", "ROLLBACK")
    } else {
        Step::named("oxibase_commit", "COMMIT")
    });
    let results = conn
        .pipeline(&steps)
        .await
        .map_err(|e| RestError::from_wire(&e, anon))?;
    let row = results
        .get(main)
        .and_then(|rows| rows.first())
        .ok_or_else(|| RestError::internal("statement returned no row"))?;
    Ok(Outcome {
        total: row.int(0),
        page: row.int(1).unwrap_or(0),
        body: row.bytes(2),
        location: row.string(3),
        inserted: if row.len() > 4 { row.int(4) } else { None },
    })
}

/// The same four statements through tokio-postgres: queued on the connection in one poll
/// (all or none) and answered in one round trip; a failure anywhere makes the end a
/// rollback.
async fn queued(
    c: &tokio_postgres::Client,
    req: &RestReq<'_>,
    q: &Sql,
    gucs: &crate::db::RequestGucs<'_>,
    run: &Run<'_>,
) -> Result<Outcome, RestError> {
    let anon = req.ctx.role.is_anon();
    let params = text_params(&q.params);
    let typed = untyped(&params);
    let begin = if run.read_only {
        "START TRANSACTION READ ONLY"
    } else {
        "START TRANSACTION"
    };
    let end = if run.rollback { "ROLLBACK" } else { "COMMIT" };
    let (began, set, rows, ended) = futures::join!(
        c.batch_execute(begin),
        crate::db::set_role_and_claims(c, req.ctx, gucs),
        c.query_typed(&q.text, &typed),
        c.batch_execute(end)
    );
    began.map_err(|e| RestError::from_pg(&e, anon))?;
    set.map_err(|e| RestError::from_pg(&e, anon))?;
    let rows = rows.map_err(|e| RestError::from_pg(&e, anon))?;
    ended.map_err(|e| RestError::from_pg(&e, anon))?;
    let row = rows
        .first()
        .ok_or_else(|| RestError::internal("statement returned no row"))?;
    Outcome::from_row(row)
}

/// Statement by statement, for what must be looked at before the end: EXPLAIN, a planned
/// count, or a check of the outcome ([`Run::check`]).
async fn stepwise(
    client: &mut deadpool_postgres::Client,
    req: &RestReq<'_>,
    q: &Sql,
    gucs: &crate::db::RequestGucs<'_>,
    run: Run<'_>,
) -> Result<Outcome, RestError> {
    let anon = req.ctx.role.is_anon();
    let pg = |e: tokio_postgres::Error| RestError::from_pg(&e, anon);
    let tx = crate::db::begin(client, run.read_only).await.map_err(pg)?;
    crate::db::set_role_and_claims(&*tx, req.ctx, gucs)
        .await
        .map_err(pg)?;
    if let Some(tz) = &req.prefer.timezone {
        tx.query_typed(SET_TIMEZONE, &[(tz, Type::TEXT)])
            .await
            .map_err(pg)?;
    }
    if let Some(Media::Plan { text, options, .. }) = run.explain {
        let body = explain(&tx, q, *text, options).await.map_err(pg)?;
        let _ = tx.rollback().await;
        return Ok(Outcome {
            total: None,
            page: 0,
            body: Some(body.into()),
            location: None,
            inserted: None,
        });
    }
    let planned = match &q.count_plan {
        Some((text, ps)) => planned_count(&tx, text, ps, q.exact_below)
            .await
            .map_err(pg)?,
        None => None,
    };
    let params = text_params(&q.params);
    let rows = tx
        .query_typed(&q.text, &untyped(&params))
        .await
        .map_err(pg)?;
    let row = rows
        .first()
        .ok_or_else(|| RestError::internal("statement returned no row"))?;
    let mut out = Outcome::from_row(row)?;
    out.total = planned.or(out.total);
    if let Err(e) = run.check(&out) {
        let _ = tx.rollback().await;
        return Err(e);
    }
    if run.rollback {
        tx.rollback().await.map_err(pg)?;
    } else {
        tx.commit().await.map_err(pg)?;
    }
    Ok(out)
}

/// `Accept: application/vnd.pgrst.plan`: the statement's EXPLAIN, as text or JSON.
async fn explain(
    tx: &deadpool_postgres::Transaction<'_>,
    q: &Sql,
    text: bool,
    options: &[String],
) -> Result<String, tokio_postgres::Error> {
    let mut opts = vec![format!("FORMAT {}", if text { "TEXT" } else { "JSON" })];
    for o in options {
        match o.as_str() {
            "analyze" | "verbose" | "settings" | "buffers" | "wal" => {
                opts.push(o.to_ascii_uppercase())
            }
            _ => {}
        }
    }
    let stmt = format!("EXPLAIN ({}) {}", opts.join(", "), q.text);
    let params = text_params(&q.params);
    let rows = tx.query_typed(&stmt, &untyped(&params)).await?;
    Ok(if text {
        let mut lines = vec![];
        for r in &rows {
            lines.push(r.try_get::<_, String>(0)?);
        }
        lines.join("\n")
    } else {
        match rows.first() {
            Some(r) => r.try_get::<_, Value>(0)?.to_string(),
            None => String::new(),
        }
    })
}

/// `count=planned` (and `estimated`): the planner's row estimate for the count query, or
/// the exact count when the estimate is at most `exact_below`.
async fn planned_count(
    tx: &deadpool_postgres::Transaction<'_>,
    text: &str,
    ps: &[String],
    exact_below: Option<i64>,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let cp = text_params(ps);
    let ct = untyped(&cp);
    let rows = tx
        .query_typed(&format!("EXPLAIN (FORMAT JSON) {text}"), &ct)
        .await?;
    let planned = rows
        .first()
        .and_then(|r| r.try_get::<_, Value>(0).ok())
        .and_then(|v| v[0]["Plan"]["Plan Rows"].as_f64())
        .map(|n| n as i64);
    if let (Some(limit), Some(p)) = (exact_below, planned) {
        if p <= limit {
            let row = tx
                .query_typed(&format!("SELECT count(*) FROM ({text}) AS pgrst_c"), &ct)
                .await?;
            if let Some(r) = row.first() {
                return Ok(Some(r.try_get(0)?));
            }
        }
    }
    Ok(planned)
}

pub(super) fn content_type(accept: &Accept) -> &'static str {
    match &accept.media {
        Media::Object => {
            if accept.strip_nulls {
                "application/vnd.pgrst.object+json; nulls=stripped; charset=utf-8"
            } else {
                "application/vnd.pgrst.object+json; charset=utf-8"
            }
        }
        Media::Csv => "text/csv; charset=utf-8",
        Media::GeoJson => "application/geo+json; charset=utf-8",
        Media::OpenApi => "application/openapi+json; charset=utf-8",
        Media::Plan { text: true, .. } => "application/vnd.pgrst.plan+text; charset=utf-8",
        Media::Plan { .. } => "application/vnd.pgrst.plan+json; charset=utf-8",
        Media::Text => "text/plain; charset=utf-8",
        Media::Octet => "application/octet-stream",
        Media::Json => {
            if accept.strip_nulls {
                "application/vnd.pgrst.array+json; nulls=stripped; charset=utf-8"
            } else {
                "application/json; charset=utf-8"
            }
        }
    }
}

pub(super) fn respond(
    status: StatusCode,
    ct: Option<&str>,
    body: Option<bytes::Bytes>,
    headers: Vec<(String, String)>,
) -> Resp {
    let mut r = http::Response::new(match body {
        Some(b) => full(b),
        None => empty(),
    });
    *r.status_mut() = status;
    if let Some(ct) = ct {
        if let Ok(v) = HeaderValue::from_str(ct) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
    }
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

pub(super) fn single_error(n: i64) -> RestError {
    RestError::new(
        406,
        "PGRST116",
        "Cannot coerce the result to a single JSON object",
    )
    .details(format!("The result contains {n} rows"))
}

pub(super) fn content_range(offset: i64, page: i64, total: Option<i64>) -> String {
    let t = total.map(|t| t.to_string()).unwrap_or_else(|| "*".into());
    if page <= 0 {
        format!("*/{t}")
    } else {
        format!("{}-{}/{t}", offset, offset + page - 1)
    }
}

pub(super) fn explain_check(req: &RestReq, st: &Settings) -> Result<Option<Media>, RestError> {
    if let Media::Plan { .. } = &req.accept.media {
        if !st.plan_enabled {
            return Err(RestError::not_acceptable(
                header(req.headers, "accept").unwrap_or(""),
            ));
        }
        return Ok(Some(req.accept.media.clone()));
    }
    Ok(None)
}

/// The media the body is built for (a plan request describes the query for its `for`).
pub(super) fn body_media(accept: &Accept) -> Media {
    match &accept.media {
        Media::Plan { for_media, .. } => prefer::parse_accept(Some(for_media))
            .map(|a| a.media)
            .unwrap_or(Media::Json),
        m => m.clone(),
    }
}

pub(super) fn plan_response(out: Outcome, accept: &Accept) -> Resp {
    respond(StatusCode::OK, Some(content_type(accept)), out.body, vec![])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_headers_as_json() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-q", HeaderValue::from_static("say \"hi\" \\o/"));
        h.append("x-bin", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let v: Value = serde_json::from_str(&request_gucs_headers(&h)).unwrap();
        assert_eq!(v, json!({"x-a": "2", "x-q": "say \"hi\" \\o/"}));
        assert_eq!(request_gucs_headers(&HeaderMap::new()), "{}");
    }
}
