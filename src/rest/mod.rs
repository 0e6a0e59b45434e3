//! /rest/v1: a PostgREST-compatible API. Each request goes parse (`query`, `prefer`, no
//! database) -> plan (`plan`, the only reader of the schema cache) -> SQL (`sql`, pure) ->
//! one transaction as the caller's role (`crate::db::begin_as`) -> respond.

pub mod error;
pub mod openapi;
pub mod plan;
pub mod prefer;
pub mod query;
pub mod schema;
pub mod sql;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use deadpool_postgres::Pool;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

use crate::config::Config;
use crate::http::apikey::AuthContext;
use crate::http::{empty, full, json_response, Req, Resp};
use crate::jwt::JwtError;
use crate::state::AppState;

use error::RestError;
use plan::{Call, Modifiers, Node, Planner, Source};
use prefer::{Accept, Media, Prefer, Resolution, Return};
use query::{IsVal, Op, SelectItem};
use schema::{RetType, SchemaCache};
use sql::{ident, qualified, BodyShape, Sql};

/// This API's share of the application state: the schema cache.
pub struct State {
    cache: RwLock<Arc<SchemaCache>>,
    last_reload: Mutex<Instant>,
    miss_lock: tokio::sync::Mutex<()>,
    schemas: Vec<String>,
}

impl State {
    pub fn cache(&self) -> Arc<SchemaCache> {
        self.cache.read().map(|c| c.clone()).unwrap_or_default()
    }
}

pub async fn init(config: &Config, pool: &Pool) -> Result<State, String> {
    let schemas = config.rest.schemas.clone();
    let client = pool
        .get()
        .await
        .map_err(|e| format!("rest: database: {e}"))?;
    let sc = schema::load(&**client, &schemas).await.map_err(|e| {
        format!(
            "rest: loading the schema cache: {}",
            crate::db::error_text(&e)
        )
    })?;
    Ok(State {
        cache: RwLock::new(Arc::new(sc)),
        last_reload: Mutex::new(Instant::now()),
        miss_lock: tokio::sync::Mutex::new(()),
        schemas,
    })
}

/// Reload the schema cache now.
pub async fn reload(state: &AppState) -> Result<(), String> {
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let sc = schema::load(&**client, &state.rest.schemas)
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    if let Ok(mut w) = state.rest.cache.write() {
        *w = Arc::new(sc);
    }
    if let Ok(mut t) = state.rest.last_reload.lock() {
        *t = Instant::now();
    }
    Ok(())
}

/// Reload after a miss (unknown table/function/relationship), so a request right after
/// DDL does not race the NOTIFY. Misses are serialized, and reloads are at most every 50 ms
/// (a stream of bad names cannot turn into a stream of catalog scans).
async fn reload_on_miss(state: &AppState) -> bool {
    let started = Instant::now();
    let _guard = state.rest.miss_lock.lock().await;
    let last = state.rest.last_reload.lock().map(|t| *t).unwrap_or(started);
    if last > started {
        // Someone reloaded while we waited: use theirs.
        return true;
    }
    let since = last.elapsed();
    if since < Duration::from_millis(50) {
        tokio::time::sleep(Duration::from_millis(50) - since).await;
    }
    reload(state).await.is_ok()
}

/// LISTEN on `pgrst` (DDL event trigger and `NOTIFY pgrst, 'reload schema'`) on a
/// dedicated connection and reload the cache on each message.
pub fn spawn_background(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        let url = match &state.config.database_url {
            Some(u) => u.expose().clone(),
            None => format!(
                "postgres://{}:{}@127.0.0.1:{}/postgres",
                crate::db::embedded_pg::SUPERUSER,
                crate::db::embedded_pg::SUPERUSER_PASSWORD,
                state.config.db_port
            ),
        };
        loop {
            match listen(&state, &url).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "rest: schema listener reconnecting");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    });
}

async fn listen(state: &AppState, url: &str) -> Result<(), String> {
    use futures::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(m) = stream.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute("listen pgrst")
        .await
        .map_err(|e| e.to_string())?;
    while let Some(payload) = rx.recv().await {
        if payload.is_empty() || payload.starts_with("reload schema") {
            // Coalesce bursts of DDL into one reload.
            tokio::time::sleep(Duration::from_millis(20)).await;
            while rx.try_recv().is_ok() {}
            if let Err(e) = reload(state).await {
                tracing::warn!(error = %e, "rest: schema cache reload failed");
            }
        }
    }
    Err("listener connection closed".into())
}

/// PostgREST's answer to a bad token: 401, PGRST301/303, and a WWW-Authenticate header.
pub fn jwt_error(e: &JwtError) -> Resp {
    let (code, message) = match e {
        JwtError::Expired => ("PGRST303", "JWT expired".to_string()),
        other => ("PGRST301", other.to_string()),
    };
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"code": code, "details": null, "hint": null, "message": message}),
    );
    let desc = message.replace('"', "'");
    if let Ok(v) = format!("Bearer error=\"invalid_token\", error_description=\"{desc}\"").parse() {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    r
}

pub async fn handle(state: &AppState, req: Req, path: &str) -> Resp {
    let ctx = match state.keys.authenticate(req.headers(), None) {
        Ok(c) => c,
        Err(e) => return jwt_error(&e),
    };
    let head = req.method() == Method::HEAD;
    let mut resp = match route(state, &ctx, req, path).await {
        Ok(r) => r,
        Err(e) => e.to_response(),
    };
    if head {
        *resp.body_mut() = empty();
    }
    resp
}

// ---------------------------------------------------------------------------------------
// Request parsing

/// A database parameter sent in text format and typed by PostgreSQL (like an untyped
/// literal), so one Rust type serves every column type.
#[derive(Debug)]
struct TextParam<'a>(&'a str);

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

/// Everything the query string says, grouped by embed path.
#[derive(Debug, Default)]
struct Params {
    select: Option<Vec<SelectItem>>,
    mods: HashMap<Vec<String>, Modifiers>,
    columns: Option<Vec<String>>,
    on_conflict: Option<Vec<String>>,
    /// Parameters that may be RPC arguments (GET), in order.
    rpc_candidates: Vec<(String, String)>,
}

fn parse_params(
    pairs: &[(String, String)],
    rpc_get: bool,
    rpc_arg_names: &[String],
) -> Result<Params, RestError> {
    let mut p = Params::default();
    for (k, v) in pairs {
        match k.as_str() {
            "select" => {
                p.select = Some(query::parse_select(v)?);
                continue;
            }
            "columns" => {
                p.columns = Some(query::parse_columns(v, "columns")?);
                continue;
            }
            "on_conflict" => {
                p.on_conflict = Some(query::parse_columns(v, "on_conflict")?);
                continue;
            }
            _ => {}
        }
        if rpc_get && rpc_arg_names.iter().any(|a| a == k) {
            p.rpc_candidates.push((k.clone(), v.clone()));
            continue;
        }
        let (path, last) = query::split_key(k)?;
        let m = p.mods.entry(path).or_default();
        match last.as_str() {
            "order" => m.order.extend(query::parse_order(v)?),
            "limit" => {
                m.limit = Some(
                    v.trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| {
                            RestError::parse(
                                "limit parameter",
                                v,
                                "expecting a non-negative integer",
                            )
                        })?,
                )
            }
            "offset" => {
                m.offset = Some(
                    v.trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| {
                            RestError::parse(
                                "offset parameter",
                                v,
                                "expecting a non-negative integer",
                            )
                        })?,
                )
            }
            "or" | "and" | "not.or" | "not.and" => {
                let negate = last.starts_with("not.");
                let or = last.ends_with("or");
                m.logic.push(query::parse_logic(or, negate, v)?);
            }
            _ => {
                let field = query::parse_field(&last)?;
                m.filters.push(query::parse_filter(field, v)?);
            }
        }
    }
    Ok(p)
}

/// Filters naming an embed (`books=is.null`) become conditions on the embed.
fn lift_embed_nulls(p: &mut Params) {
    fn labels(items: &[SelectItem], path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        for it in items {
            if let SelectItem::Embed(e) = it {
                out.push((path.clone(), e.label().to_string()));
                let mut np = path.clone();
                np.push(e.label().to_string());
                labels(&e.items, np, out);
            }
        }
    }
    let mut all = vec![];
    if let Some(s) = &p.select {
        labels(s, vec![], &mut all);
    }
    for (path, m) in p.mods.iter_mut() {
        let mut keep = vec![];
        for f in std::mem::take(&mut m.filters) {
            let is_embed = f.field.path.is_empty()
                && all.iter().any(|(pp, l)| pp == path && l == &f.field.name);
            match (&f.op, is_embed) {
                (Op::Is(IsVal::Null), true) => m.embed_null.push((f.field.name.clone(), !f.negate)),
                (Op::Is(IsVal::NotNull), true) => {
                    m.embed_null.push((f.field.name.clone(), f.negate))
                }
                _ => keep.push(f),
            }
        }
        m.filters = keep;
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The schema from Accept-Profile (reads) / Content-Profile (writes).
fn profile(h: &HeaderMap, method: &Method, schemas: &[String]) -> Result<String, RestError> {
    let name = if matches!(*method, Method::GET | Method::HEAD) {
        "accept-profile"
    } else {
        "content-profile"
    };
    match header(h, name) {
        None => Ok(schemas.first().cloned().unwrap_or_else(|| "public".into())),
        Some(s) if schemas.iter().any(|x| x == s) => Ok(s.to_string()),
        Some(_) => Err(RestError::new(
            406,
            "PGRST106",
            format!(
                "The schema must be one of the following: {}",
                schemas.join(", ")
            ),
        )),
    }
}

/// `Range: 0-9` (items) -> (offset, limit).
fn range_header(h: &HeaderMap) -> Option<(i64, Option<i64>)> {
    let v = header(h, "range")?;
    let v = v.trim().strip_prefix("items=").unwrap_or(v.trim());
    let (a, b) = v.split_once('-')?;
    let a: i64 = a.trim().parse().ok()?;
    let b: Option<i64> = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((a, b.map(|b| (b - a + 1).max(0))))
}

struct Settings {
    plan_enabled: bool,
    aggregates: bool,
    tx_override: bool,
    max_rows: Option<i64>,
}

fn settings(state: &AppState, sc: &SchemaCache) -> Settings {
    let c = &state.config.rest;
    let tx_end = sc.role_settings.get("db_tx_end").map(String::as_str);
    Settings {
        plan_enabled: sc
            .setting_bool("db_plan_enabled")
            .unwrap_or(c.db_plan_enabled),
        aggregates: sc
            .setting_bool("db_aggregates_enabled")
            .unwrap_or(c.db_aggregates_enabled),
        tx_override: c.db_tx_allow_override
            || matches!(
                tx_end,
                Some("commit-allow-override" | "rollback-allow-override")
            ),
        max_rows: sc
            .role_settings
            .get("db_max_rows")
            .and_then(|v| v.parse().ok())
            .or(c.max_rows.map(|m| m as i64)),
    }
}

// ---------------------------------------------------------------------------------------
// Routing

async fn route(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
    path: &str,
) -> Result<Resp, RestError> {
    let method = req.method().clone();
    let headers = req.headers().clone();
    let uri = req.uri().clone();
    let path = path.trim_end_matches('/');
    let pairs = crate::http::query_pairs(uri.query());
    let schema = profile(&headers, &method, &state.rest.schemas)?;
    let prefer = Prefer::parse(
        headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    prefer.check_strict()?;
    let accept = prefer::parse_accept(header(&headers, "accept"))?;
    let body = if matches!(method, Method::POST | Method::PATCH | Method::PUT) {
        Some(
            crate::http::body::read_limited(req.into_body(), state.config.max_body_bytes)
                .await
                .map_err(|e| match e {
                    crate::http::body::BodyError::TooLarge(n) => {
                        RestError::new(413, "PGRST413", "Payload Too Large")
                            .details(format!("The request body is larger than {n} bytes"))
                    }
                    crate::http::body::BodyError::Read(d) => RestError::invalid_body(d),
                })?,
        )
    } else {
        None
    };
    let req = RestReq {
        ctx,
        method: &method,
        headers: &headers,
        path,
        schema: &schema,
        pairs: &pairs,
        prefer,
        accept,
        body,
    };
    if path.is_empty() {
        if !matches!(method, Method::GET | Method::HEAD) {
            return Err(RestError::new(
                405,
                "PGRST117",
                format!("Unsupported HTTP method: {method}"),
            ));
        }
        return openapi::respond(state, &req).await;
    }
    if let Some(f) = path.strip_prefix("rpc/") {
        return with_reload(state, || rpc(state, &req, f)).await;
    }
    if path.contains('/') {
        return Err(RestError::new(
            404,
            "PGRST125",
            format!("Invalid path specified in request URL"),
        ));
    }
    match method {
        Method::GET | Method::HEAD => with_reload(state, || read(state, &req, path)).await,
        Method::POST | Method::PATCH | Method::DELETE | Method::PUT => {
            with_reload(state, || write(state, &req, path)).await
        }
        Method::OPTIONS => {
            let mut r = crate::http::status_response(StatusCode::OK);
            r.headers_mut().insert(
                "allow",
                HeaderValue::from_static("OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"),
            );
            Ok(r)
        }
        m => Err(RestError::new(
            405,
            "PGRST117",
            format!("Unsupported HTTP method: {m}"),
        )),
    }
}

/// Run `f`; if it failed on a schema-cache miss, reload once and retry.
async fn with_reload<'a, F, Fut>(state: &AppState, f: F) -> Result<Resp, RestError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Resp, RestError>>,
{
    match f().await {
        Err(e)
            if matches!(
                e.code.as_str(),
                "PGRST200" | "PGRST202" | "PGRST205" | "PGRST204"
            ) =>
        {
            if reload_on_miss(state).await {
                f().await
            } else {
                Err(e)
            }
        }
        r => r,
    }
}

pub struct RestReq<'a> {
    pub ctx: &'a AuthContext,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    pub schema: &'a str,
    pub pairs: &'a [(String, String)],
    pub prefer: Prefer,
    pub accept: Accept,
    pub body: Option<bytes::Bytes>,
}

fn table_not_found(sc: &SchemaCache, schema: &str, name: &str) -> RestError {
    let mut e = RestError::new(
        404,
        "PGRST205",
        format!("Could not find the table '{schema}.{name}' in the schema cache"),
    );
    if let Some((s, n)) = sc
        .relations
        .keys()
        .filter(|(s, _)| s == schema)
        .find(|(_, n)| plan::similar(n, name))
    {
        e = e.hint(format!("Perhaps you meant the table '{s}.{n}'"));
    }
    e
}

// ---------------------------------------------------------------------------------------
// Execution

struct Outcome {
    total: Option<i64>,
    page: i64,
    body: Option<String>,
    location: Option<String>,
    /// Rows an upsert inserted (vs updated), when asked for.
    inserted: Option<i64>,
}

fn request_gucs_headers(h: &HeaderMap) -> String {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        if let Ok(v) = v.to_str() {
            m.insert(k.as_str().to_string(), Value::String(v.to_string()));
        }
    }
    Value::Object(m).to_string()
}

/// Run one statement in the caller's transaction. `check` may veto the commit (rollback
/// and error) after seeing the outcome.
async fn execute(
    state: &AppState,
    req: &RestReq<'_>,
    q: &Sql,
    read_only: bool,
    rollback: bool,
    explain: Option<&Media>,
    needs_check: bool,
    check: impl FnOnce(&Outcome) -> Result<(), RestError>,
) -> Result<Outcome, RestError> {
    let mut client = state.pool.get().await.map_err(|e| {
        let mut r = RestError::new(
            503,
            "PGRST000",
            "Database connection error. Retrying the connection.",
        );
        r.log = Some(e.to_string());
        r
    })?;
    let headers = request_gucs_headers(req.headers);
    let mut sp: Vec<String> = vec![ident(req.schema)];
    for s in &state.config.rest.extra_search_path {
        sp.push(ident(s));
    }
    let search_path = sp.join(", ");
    // The role's own statement_timeout wins; else the configured one (not for service).
    let role_timeout = state
        .rest
        .cache()
        .role_timeouts
        .get(req.ctx.role.as_str())
        .copied();
    let timeout = match role_timeout {
        Some(t) => Some(t),
        None if req.ctx.role.is_service() || state.config.rest.statement_timeout_ms == 0 => None,
        None => Some(state.config.rest.statement_timeout_ms),
    };
    let path = format!("/{}", req.path);
    let gucs = crate::db::RequestGucs {
        method: req.method.as_str(),
        path: &path,
        headers: Some(&headers),
        search_path: Some(&search_path),
        statement_timeout_ms: timeout,
    };
    let anon = req.ctx.role.is_anon();
    let tx = crate::db::begin_as(&mut client, req.ctx, &gucs, read_only)
        .await
        .map_err(|e| RestError::from_pg(&e, anon))?;
    let params: Vec<TextParam> = q.params.iter().map(|p| TextParam(p)).collect();
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), Type::UNKNOWN))
        .collect();
    if let Some(Media::Plan { text, options, .. }) = explain {
        let mut opts = vec![format!("FORMAT {}", if *text { "TEXT" } else { "JSON" })];
        for o in options {
            match o.as_str() {
                "analyze" | "verbose" | "settings" | "buffers" | "wal" => {
                    opts.push(o.to_ascii_uppercase())
                }
                _ => {}
            }
        }
        let stmt = format!("EXPLAIN ({}) {}", opts.join(", "), q.text);
        let rows = tx
            .query_typed(&stmt, &typed)
            .await
            .map_err(|e| RestError::from_pg(&e, anon))?;
        let body = if *text {
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            rows.first()
                .map(|r| r.get::<_, Value>(0).to_string())
                .unwrap_or_default()
        };
        let _ = tx.rollback().await;
        return Ok(Outcome {
            total: None,
            page: 0,
            body: Some(body),
            location: None,
            inserted: None,
        });
    }
    // count=planned: the planner's row estimate for the count query.
    let mut planned: Option<i64> = None;
    if let Some((text, ps)) = &q.count_plan {
        let cp: Vec<TextParam> = ps.iter().map(|p| TextParam(p)).collect();
        let ct: Vec<(&(dyn ToSql + Sync), Type)> = cp
            .iter()
            .map(|p| (p as &(dyn ToSql + Sync), Type::UNKNOWN))
            .collect();
        let rows = tx
            .query_typed(&format!("EXPLAIN (FORMAT JSON) {text}"), &ct)
            .await
            .map_err(|e| RestError::from_pg(&e, anon))?;
        planned = rows
            .first()
            .and_then(|r| r.try_get::<_, Value>(0).ok())
            .and_then(|v| v[0]["Plan"]["Plan Rows"].as_f64())
            .map(|n| n as i64);
        if let (Some(limit), Some(p)) = (q.exact_below, planned) {
            if p <= limit {
                let row = tx
                    .query_typed(&format!("SELECT count(*) FROM ({text}) AS pgrst_c"), &ct)
                    .await
                    .map_err(|e| RestError::from_pg(&e, anon))?;
                planned = Some(row[0].get(0));
            }
        }
    }
    if !needs_check {
        // Nothing to decide after seeing the result: send the statement and the end of
        // the transaction together (one round trip less). If the statement fails, the
        // COMMIT ends the aborted transaction as a rollback.
        let end = if rollback { "ROLLBACK" } else { "COMMIT" };
        let (rows, ended) = futures::join!(tx.query_typed(&q.text, &typed), tx.batch_execute(end));
        // The transaction is over either way; skip the ROLLBACK its Drop would send.
        std::mem::forget(tx);
        let rows = rows.map_err(|e| RestError::from_pg(&e, anon))?;
        ended.map_err(|e| RestError::from_pg(&e, anon))?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| RestError::internal("statement returned no row"))?;
        return Ok(Outcome {
            total: planned.or(row.get(0)),
            page: row.get(1),
            body: row.get(2),
            location: row.get(3),
            inserted: if row.len() > 4 { row.get(4) } else { None },
        });
    }
    let row = tx
        .query_typed(&q.text, &typed)
        .await
        .map_err(|e| RestError::from_pg(&e, anon))?;
    let row = row
        .into_iter()
        .next()
        .ok_or_else(|| RestError::internal("statement returned no row"))?;
    let out = Outcome {
        total: planned.or(row.get(0)),
        page: row.get(1),
        body: row.get(2),
        location: row.get(3),
        inserted: if row.len() > 4 { row.get(4) } else { None },
    };
    if let Err(e) = check(&out) {
        let _ = tx.rollback().await;
        return Err(e);
    }
    if rollback {
        tx.rollback()
            .await
            .map_err(|e| RestError::from_pg(&e, anon))?;
    } else {
        tx.commit()
            .await
            .map_err(|e| RestError::from_pg(&e, anon))?;
    }
    Ok(out)
}

fn content_type(accept: &Accept) -> &'static str {
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

fn respond(
    status: StatusCode,
    ct: Option<&str>,
    body: Option<String>,
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

fn single_error(n: i64) -> RestError {
    RestError::new(
        406,
        "PGRST116",
        "Cannot coerce the result to a single JSON object",
    )
    .details(format!("The result contains {n} rows"))
}

fn content_range(offset: i64, page: i64, total: Option<i64>) -> String {
    let t = total.map(|t| t.to_string()).unwrap_or_else(|| "*".into());
    if page <= 0 {
        format!("*/{t}")
    } else {
        format!("{}-{}/{t}", offset, offset + page - 1)
    }
}

fn explain_check(req: &RestReq, st: &Settings) -> Result<Option<Media>, RestError> {
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
fn body_media(accept: &Accept) -> Media {
    match &accept.media {
        Media::Plan { for_media, .. } => prefer::parse_accept(Some(for_media))
            .map(|a| a.media)
            .unwrap_or(Media::Json),
        m => m.clone(),
    }
}

fn plan_response(out: Outcome, accept: &Accept) -> Resp {
    respond(StatusCode::OK, Some(content_type(accept)), out.body, vec![])
}

// ---------------------------------------------------------------------------------------
// Reads

async fn read(state: &AppState, req: &RestReq<'_>, table: &str) -> Result<Resp, RestError> {
    let sc = state.rest.cache();
    let st = settings(state, &sc);
    let Some(rel) = sc.relation(req.schema, table) else {
        return Err(table_not_found(&sc, req.schema, table));
    };
    let mut params = parse_params(req.pairs, false, &[])?;
    lift_embed_nulls(&mut params);
    let explain = explain_check(req, &st)?;
    let media = body_media(&req.accept);
    if media == Media::GeoJson && !sc.postgis {
        return Err(RestError::not_acceptable("application/geo+json"));
    }
    // Paging: limit/offset params, Range header, max_rows.
    let top = params.mods.entry(vec![]).or_default();
    if let Some((off, lim)) = range_header(req.headers) {
        if top.offset.is_none() {
            top.offset = Some(off);
        }
        if top.limit.is_none() {
            top.limit = lim;
        }
    }
    if let Some(m) = st.max_rows {
        top.limit = Some(top.limit.map_or(m, |l| l.min(m)));
    }
    let offset = top.offset.unwrap_or(0);
    let mut planner = Planner::new(&sc, req.schema, st.aggregates);
    planner.mods = std::mem::take(&mut params.mods);
    let node = planner.node(
        Source::Table {
            schema: rel.schema.clone(),
            name: rel.name.clone(),
        },
        &rel.name,
        Some((rel.schema.clone(), rel.name.clone())),
        params.select.as_deref().unwrap_or(&[]),
        &[],
    )?;
    let count = req.prefer.count;
    let mut q = Sql::default();
    if matches!(
        count,
        Some(prefer::Count::Planned | prefer::Count::Estimated)
    ) {
        let mut c = Sql::default();
        c.text = sql::node_sql(&mut c, &node, None, sql::Mode::Count);
        q.count_plan = Some((c.text, c.params));
        if count == Some(prefer::Count::Estimated) {
            // PostgREST: exact while the estimate is within max-rows, else the estimate.
            q.exact_below = Some(st.max_rows.unwrap_or(1000));
        }
    }
    q.text = sql::wrap_read(
        &mut q,
        &node,
        count == Some(prefer::Count::Exact),
        &media,
        req.accept.strip_nulls,
        &BodyShape::Rows,
        None,
    );
    let out = execute(state, req, &q, true, false, explain.as_ref(), false, |_| {
        Ok(())
    })
    .await?;
    if explain.is_some() {
        return Ok(plan_response(out, &req.accept));
    }
    let total = estimate_total(state, req, &q, &node, count, out.total, st.max_rows).await?;
    finish_read(req, out, offset, total, &media, count.is_some())
}

/// planned/estimated counts come from the planner's row estimate.
async fn estimate_total(
    _state: &AppState,
    _req: &RestReq<'_>,
    _q: &Sql,
    _node: &Node,
    count: Option<prefer::Count>,
    exact: Option<i64>,
    _max_rows: Option<i64>,
) -> Result<Option<i64>, RestError> {
    // The statement already computed an exact count; planned/estimated are answered with
    // it too (an upper bound on accuracy, same wire shape).
    Ok(match count {
        Some(_) => exact,
        None => None,
    })
}

fn finish_read(
    req: &RestReq,
    out: Outcome,
    offset: i64,
    total: Option<i64>,
    media: &Media,
    counted: bool,
) -> Result<Resp, RestError> {
    if *media == Media::Object && out.page != 1 {
        return Err(single_error(out.page));
    }
    let mut status = StatusCode::OK;
    if let Some(t) = total {
        if offset > 0 && offset >= t && t > 0 || (offset > 0 && t == 0 && out.page == 0 && false) {
            return Err(
                RestError::new(416, "PGRST103", "Requested range not satisfiable").details(
                    format!("An offset of {offset} was requested, but there are only {t} rows."),
                ),
            );
        }
        if out.page < t {
            status = StatusCode::PARTIAL_CONTENT;
        }
    }
    let mut headers = vec![(
        "content-range".to_string(),
        content_range(offset, out.page, total),
    )];
    if counted {
        if let Some(c) = req.prefer.count {
            headers.push((
                "preference-applied".into(),
                format!("count={}", count_name(c)),
            ));
        }
    }
    Ok(respond(
        status,
        Some(content_type(&req.accept)),
        out.body,
        headers,
    ))
}

fn count_name(c: prefer::Count) -> &'static str {
    match c {
        prefer::Count::Exact => "exact",
        prefer::Count::Planned => "planned",
        prefer::Count::Estimated => "estimated",
    }
}

// ---------------------------------------------------------------------------------------
// Writes

fn parse_json_body(body: &Option<bytes::Bytes>) -> Result<Value, RestError> {
    let b = body.as_deref().unwrap_or(b"");
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Err(RestError::new(400, "PGRST102", "Empty or invalid json"));
    }
    serde_json::from_slice(b).map_err(|_| RestError::new(400, "PGRST102", "Empty or invalid json"))
}

fn is_form(req: &RestReq) -> bool {
    header(req.headers, "content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
}

fn request_body(req: &RestReq) -> Result<Value, RestError> {
    if is_form(req) {
        let b = req.body.as_deref().unwrap_or(b"");
        let m: serde_json::Map<String, Value> = form_urlencoded::parse(b)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        return Ok(Value::Object(m));
    }
    parse_json_body(&req.body)
}

async fn write(state: &AppState, req: &RestReq<'_>, table: &str) -> Result<Resp, RestError> {
    let sc = state.rest.cache();
    let st = settings(state, &sc);
    let Some(rel) = sc.relation(req.schema, table) else {
        return Err(table_not_found(&sc, req.schema, table));
    };
    let mut params = parse_params(req.pairs, false, &[])?;
    lift_embed_nulls(&mut params);
    let explain = explain_check(req, &st)?;
    let media = body_media(&req.accept);
    let ret = req.prefer.ret.unwrap_or(Return::Minimal);
    let rollback = req.prefer.tx_rollback == Some(true) && st.tx_override;
    let t = qualified(&rel.schema, &rel.name);
    let a = ident(&rel.name);
    let mut q = Sql::default();
    let top_mods = params.mods.remove(&vec![]).unwrap_or_default();
    // Conditions for update/delete on the target table.
    let planner0 = Planner::new(&sc, req.schema, st.aggregates);
    let mut where_node = Node {
        source: Source::Table {
            schema: rel.schema.clone(),
            name: rel.name.clone(),
        },
        alias: rel.name.clone(),
        rel: Some((rel.schema.clone(), rel.name.clone())),
        items: vec![],
        conds: vec![],
        order: vec![],
        limit: None,
        offset: None,
        children: vec![],
    };
    {
        let mut p = Planner::new(&sc, req.schema, st.aggregates);
        p.mods.insert(
            vec![],
            Modifiers {
                filters: top_mods.filters.clone(),
                logic: top_mods.logic.clone(),
                ..Default::default()
            },
        );
        let n = p.node(
            where_node.source.clone(),
            &rel.name,
            where_node.rel.clone(),
            &[SelectItem::Star],
            &[],
        )?;
        where_node.conds = n.conds;
    }
    let _ = planner0;
    let check_cols = |cols: &[String]| -> Result<(), RestError> {
        for c in cols {
            if rel.column(c).is_none() {
                return Err(RestError::new(
                    400,
                    "PGRST204",
                    format!(
                        "Could not find the '{c}' column of '{}' in the schema cache",
                        rel.name
                    ),
                ));
            }
        }
        Ok(())
    };
    let mut status = StatusCode::OK;
    let mut applied: Vec<String> = vec![];
    let mut count_inserted = false;
    let mutation = match *req.method {
        Method::POST | Method::PUT => {
            let body = request_body(req)?;
            let rows: Vec<Value> = match body {
                Value::Array(v) => v,
                o @ Value::Object(_) => vec![o],
                _ => return Err(RestError::new(400, "PGRST102", "Empty or invalid json")),
            };
            if rows.iter().any(|r| !r.is_object()) {
                return Err(RestError::new(400, "PGRST102", "Empty or invalid json"));
            }
            let cols: Vec<String> = match &params.columns {
                Some(c) => c.clone(),
                None => {
                    let first: Vec<String> = rows
                        .first()
                        .and_then(|r| r.as_object())
                        .map(|o| o.keys().cloned().collect())
                        .unwrap_or_default();
                    for r in &rows {
                        let o = r.as_object().expect("checked objects");
                        if o.len() != first.len() || !first.iter().all(|k| o.contains_key(k)) {
                            return Err(RestError::new(
                                400,
                                "PGRST102",
                                "All object keys must match",
                            ));
                        }
                    }
                    first
                }
            };
            check_cols(&cols)?;
            status = StatusCode::CREATED;
            let body_p = q.param(Value::Array(rows).to_string());
            let col_list: Vec<String> = cols.iter().map(|c| ident(c)).collect();
            let mut exprs = vec![];
            // missing=default: every row evaluates the defaults (as PostgREST does, so
            // sequences advance the same way) in a correlated lateral, used where a key
            // is absent.
            let mut defaults = vec![];
            for (i, c) in cols.iter().enumerate() {
                let col = rel.column(c).expect("checked");
                let v = format!("pgrst_r.{}", ident(c));
                if req.prefer.missing_default {
                    if let Some(d) = &col.default {
                        let k = q.param(c.clone());
                        defaults.push(format!("{d} AS d{i}"));
                        exprs.push(format!(
                            "CASE WHEN pgrst_j.j ? {k}::text THEN {v} ELSE pgrst_d.d{i} END"
                        ));
                        continue;
                    }
                }
                exprs.push(v);
            }
            let defaults_from = if defaults.is_empty() {
                String::new()
            } else {
                format!(
                    ", LATERAL (SELECT {} WHERE pgrst_j.j IS NOT NULL) AS pgrst_d",
                    defaults.join(", ")
                )
            };
            if req.prefer.missing_default {
                applied.push("missing=default".into());
            }
            let mut s = format!(
                "INSERT INTO {t} AS {a} ({}) SELECT {} FROM jsonb_array_elements({body_p}::jsonb) AS pgrst_j(j), LATERAL jsonb_populate_record(NULL::{t}, pgrst_j.j) AS pgrst_r{defaults_from}",
                col_list.join(", "),
                exprs.join(", ")
            );
            let upsert = req.prefer.resolution.or(if *req.method == Method::PUT {
                Some(Resolution::Merge)
            } else {
                None
            });
            if let Some(res) = upsert {
                let conflict = params.on_conflict.clone().unwrap_or_else(|| rel.pk.clone());
                check_cols(&conflict)?;
                if conflict.is_empty() {
                    return Err(
                        RestError::new(400, "PGRST100", "\"failed to parse on_conflict\"").details(
                            "on_conflict columns are required for a table without a primary key",
                        ),
                    );
                }
                let cc: Vec<String> = conflict.iter().map(|c| ident(c)).collect();
                match res {
                    Resolution::Ignore => {
                        s.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", cc.join(", ")));
                        applied.push("resolution=ignore-duplicates".into());
                    }
                    Resolution::Merge => {
                        let sets: Vec<String> = if cols.is_empty() {
                            cc.clone()
                        } else {
                            col_list.clone()
                        }
                        .iter()
                        .map(|c| format!("{c} = EXCLUDED.{c}"))
                        .collect();
                        s.push_str(&format!(
                            " ON CONFLICT ({}) DO UPDATE SET {}",
                            cc.join(", "),
                            sets.join(", ")
                        ));
                        if req.prefer.resolution.is_some() {
                            applied.push("resolution=merge-duplicates".into());
                        }
                    }
                }
                if *req.method == Method::PUT {
                    status = StatusCode::OK;
                }
            }
            if upsert == Some(Resolution::Merge) && matches!(rel.kind, 'r' | 'p') {
                // xmax = 0 marks rows this statement inserted (not updated).
                s.push_str(&format!(
                    " RETURNING {a}.*, ({a}.xmax::text = '0') AS pgrst_inserted"
                ));
                count_inserted = true;
            } else {
                s.push_str(&format!(" RETURNING {a}.*"));
            }
            s
        }
        Method::PATCH => {
            let body = request_body(req)?;
            let Value::Object(o) = body else {
                return Err(RestError::new(400, "PGRST102", "Empty or invalid json"));
            };
            let cols: Vec<String> = match &params.columns {
                Some(c) => c.clone(),
                None => o.keys().cloned().collect(),
            };
            check_cols(&cols)?;
            let body_p = q.param(Value::Object(o).to_string());
            let mut wh = vec![];
            for c in &where_node.conds {
                wh.push(sql_cond(&mut q, &rel.name, c));
            }
            if cols.is_empty() {
                // Nothing to set: PostgREST answers without touching rows.
                format!(
                    "SELECT {a}.* FROM {t} AS {a} WHERE FALSE AND {}",
                    if wh.is_empty() {
                        "TRUE".into()
                    } else {
                        wh.join(" AND ")
                    }
                )
            } else {
                let sets: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{} = pgrst_body.{}", ident(c), ident(c)))
                    .collect();
                format!(
                    "UPDATE {t} AS {a} SET {} FROM (SELECT * FROM jsonb_populate_record(NULL::{t}, {body_p}::jsonb)) AS pgrst_body{} RETURNING {a}.*",
                    sets.join(", "),
                    if wh.is_empty() { String::new() } else { format!(" WHERE {}", wh.join(" AND ")) }
                )
            }
        }
        Method::DELETE => {
            let mut wh = vec![];
            for c in &where_node.conds {
                wh.push(sql_cond(&mut q, &rel.name, c));
            }
            format!(
                "DELETE FROM {t} AS {a}{} RETURNING {a}.*",
                if wh.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", wh.join(" AND "))
                }
            )
        }
        _ => return Err(RestError::new(405, "PGRST117", "Unsupported HTTP method")),
    };
    // The representation: the select over the returned rows.
    let mut planner = Planner::new(&sc, req.schema, st.aggregates);
    let mut rest_mods = params.mods;
    rest_mods.insert(
        vec![],
        Modifiers {
            order: top_mods.order.clone(),
            limit: None,
            offset: None,
            ..Default::default()
        },
    );
    planner.mods = rest_mods;
    let node = planner.node(
        Source::Cte(
            "pgrst_source".into(),
            rel.columns.iter().map(|c| c.name.clone()).collect(),
        ),
        &rel.name,
        Some((rel.schema.clone(), rel.name.clone())),
        params.select.as_deref().unwrap_or(&[]),
        &[],
    )?;
    let want_body = ret == Return::Representation;
    let count = req.prefer.count.is_some();
    let inner = sql::node_sql(&mut q, &node, None, sql::Mode::Full);
    let body = if want_body {
        sql::body_expr(&media, req.accept.strip_nulls, &BodyShape::Rows)
    } else {
        "NULL::text".into()
    };
    let location = if *req.method == Method::POST && !rel.pk.is_empty() {
        "(SELECT row_to_json(pgrst_l)::text FROM pgrst_source AS pgrst_l LIMIT 1)"
    } else {
        "NULL::text"
    };
    q.text = format!(
        "WITH pgrst_source AS ({mutation}) SELECT {} AS total, pg_catalog.count(pgrst_t) AS page, {body} AS body, {location} AS location, {} AS inserted FROM ({inner}) AS pgrst_t",
        if count { "(SELECT count(*) FROM pgrst_source)" } else { "NULL::int8" },
        if count_inserted { "(SELECT count(*) FROM pgrst_source WHERE pgrst_inserted)" } else { "NULL::int8" }
    );
    let strict_max = if req.prefer.strict {
        req.prefer.max_affected
    } else {
        None
    };
    let single = media == Media::Object;
    let out = execute(
        state,
        req,
        &q,
        false,
        rollback,
        explain.as_ref(),
        strict_max.is_some() || single,
        |o| {
            if let Some(m) = strict_max {
                if o.page > m {
                    return Err(RestError::new(
                        400,
                        "PGRST124",
                        "Query result exceeds max-affected preference constraint",
                    )
                    .details(format!("The query affects {} rows", o.page)));
                }
            }
            if single && o.page != 1 {
                return Err(single_error(o.page));
            }
            Ok(())
        },
    )
    .await?;
    if explain.is_some() {
        return Ok(plan_response(out, &req.accept));
    }
    let mut headers: Vec<(String, String)> = vec![];
    if let Some(c) = req.prefer.count {
        applied.push(format!("count={}", count_name(c)));
    }
    match req.prefer.ret {
        Some(Return::Representation) => applied.insert(0, "return=representation".into()),
        Some(Return::Minimal) => applied.insert(0, "return=minimal".into()),
        Some(Return::HeadersOnly) => applied.insert(0, "return=headers-only".into()),
        None => {}
    }
    if rollback {
        applied.push("tx=rollback".into());
    } else if req.prefer.tx_rollback.is_some() && st.tx_override {
        applied.push("tx=commit".into());
    }
    if let Some(m) = strict_max {
        applied.push("handling=strict".into());
        applied.push(format!("max-affected={m}"));
    }
    if !applied.is_empty() {
        headers.push(("preference-applied".into(), applied.join(", ")));
    }
    let total = if count { out.total } else { None };
    headers.push((
        "content-range".into(),
        content_range(0, out.page, total).replacen("0-", "*", 0),
    ));
    if *req.method == Method::POST
        && matches!(
            ret,
            Return::HeadersOnly | Return::Representation | Return::Minimal
        )
    {
        if let Some(loc) = out
            .location
            .as_deref()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        {
            let parts: Vec<String> = rel
                .pk
                .iter()
                .map(|k| {
                    let v = match loc.get(k) {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => String::new(),
                    };
                    format!("{}=eq.{}", enc(k), enc(&v))
                })
                .collect();
            if ret == Return::HeadersOnly || ret == Return::Minimal || ret == Return::Representation
            {
                headers.push((
                    "location".into(),
                    format!("/{}?{}", rel.name, parts.join("&")),
                ));
            }
        }
    }
    // A merging upsert that inserted nothing answers 200, as PostgREST.
    if count_inserted && out.inserted == Some(0) && status == StatusCode::CREATED {
        status = StatusCode::OK;
    }
    if want_body {
        Ok(respond(
            status,
            Some(content_type(&req.accept)),
            out.body,
            headers,
        ))
    } else {
        let st = if status == StatusCode::CREATED {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        Ok(respond(st, None, None, headers))
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn sql_cond(q: &mut Sql, alias: &str, c: &plan::Cond) -> String {
    // Render one condition through a throwaway node (keeps `sql` the only renderer).
    let n = Node {
        source: Source::Cte("x".into(), vec![]),
        alias: alias.to_string(),
        rel: None,
        items: vec![],
        conds: vec![c.clone()],
        order: vec![],
        limit: None,
        offset: None,
        children: vec![],
    };
    let s = sql::node_sql(q, &n, None, sql::Mode::Count);
    s.split_once(" WHERE ")
        .map(|(_, w)| w.to_string())
        .unwrap_or_else(|| "TRUE".into())
}

// ---------------------------------------------------------------------------------------
// RPC

async fn rpc(state: &AppState, req: &RestReq<'_>, fname: &str) -> Result<Resp, RestError> {
    let sc = state.rest.cache();
    let st = settings(state, &sc);
    let overloads = sc
        .functions
        .get(&(req.schema.to_string(), fname.to_string()))
        .cloned()
        .unwrap_or_default();
    let is_get = matches!(*req.method, Method::GET | Method::HEAD);
    if !is_get && *req.method != Method::POST {
        return Err(RestError::new(
            405,
            "PGRST101",
            "Only GET, HEAD or POST are allowed on /rpc",
        ));
    }
    let all_arg_names: Vec<String> = overloads
        .iter()
        .flat_map(|f| f.args.iter().map(|a| a.name.clone()))
        .collect();
    let mut params = parse_params(req.pairs, is_get, &all_arg_names)?;
    lift_embed_nulls(&mut params);
    let explain = explain_check(req, &st)?;
    let media = body_media(&req.accept);
    // The arguments as a JSON object (or the raw body for a single json parameter).
    let (args, raw_body): (serde_json::Map<String, Value>, Option<Value>) = if is_get {
        (
            params
                .rpc_candidates
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
            None,
        )
    } else {
        let b = req.body.as_deref().unwrap_or(b"");
        if b.iter().all(|c| c.is_ascii_whitespace()) {
            (serde_json::Map::new(), None)
        } else if is_form(req) {
            match request_body(req)? {
                Value::Object(o) => (o, None),
                _ => (serde_json::Map::new(), None),
            }
        } else {
            match serde_json::from_slice::<Value>(b) {
                Ok(Value::Object(o)) => (o.clone(), Some(Value::Object(o))),
                Ok(v) => (serde_json::Map::new(), Some(v)),
                Err(_) => return Err(RestError::new(400, "PGRST102", "Empty or invalid json")),
            }
        }
    };
    let keys: Vec<&String> = args.keys().collect();
    // Overload resolution by argument names, as PostgREST: only functions whose parameters
    // are all named, or that take one unnamed json/jsonb/text/xml/bytea parameter (named
    // "" in the body), can be called.
    let callable = |f: &&schema::Function| {
        f.args.iter().all(|a| !a.name.is_empty())
            || (f.args.len() == 1
                && matches!(
                    f.args[0].ty.as_str(),
                    "json" | "jsonb" | "text" | "xml" | "bytea"
                ))
    };
    let mut cands: Vec<&schema::Function> = overloads
        .iter()
        .filter(callable)
        .filter(|f| {
            let names_ok = keys.iter().all(|k| f.args.iter().any(|a| &&a.name == k));
            let required_ok = f
                .args
                .iter()
                .all(|a| a.has_default || keys.iter().any(|k| *k == &a.name));
            names_ok && required_ok
        })
        .collect();
    let mut single_json = false;
    if cands.is_empty() && !is_get {
        // A single unnamed json/jsonb parameter takes the whole body.
        let sj: Vec<&schema::Function> = overloads
            .iter()
            .filter(|f| {
                f.args.len() == 1
                    && f.args[0].name.is_empty()
                    && matches!(f.args[0].ty.as_str(), "json" | "jsonb")
            })
            .collect();
        if !sj.is_empty() {
            cands = sj;
            single_json = true;
        } else if req.prefer.single_object {
            cands = overloads
                .iter()
                .filter(|f| f.args.len() == 1 && matches!(f.args[0].ty.as_str(), "json" | "jsonb"))
                .collect();
            single_json = !cands.is_empty();
        }
    }
    let f = match cands.len() {
        1 => cands[0].clone(),
        0 => return Err(function_not_found(&sc, req.schema, fname, &keys)),
        _ => {
            let mut cands = cands;
            cands.sort_by_key(|f| {
                (
                    f.args.len(),
                    f.args.iter().map(|a| a.ty.clone()).collect::<Vec<_>>(),
                )
            });
            let sigs: Vec<String> = cands.iter().map(|f| f.signature()).collect();
            return Err(RestError::new(300, "PGRST203", format!("Could not choose the best candidate function between: {}", sigs.join(", ")))
                .hint("Try renaming the parameters or the function itself in the database so function overloading can be resolved"));
        }
    };
    // Arguments travel as one JSON object with positional keys, so unnamed parameters work.
    let used: Vec<(usize, &schema::Arg)> = f
        .args
        .iter()
        .enumerate()
        .filter(|(_, a)| args.contains_key(&a.name))
        .collect();
    let mut positional = serde_json::Map::new();
    for (i, a) in &used {
        positional.insert(format!("a{i}"), args[&a.name].clone());
    }
    let call = Call {
        schema: f.schema.clone(),
        name: f.name.clone(),
        args: if single_json {
            vec![]
        } else {
            used.iter()
                .map(|(i, a)| (format!("a{i}"), a.ty.clone(), a.name.clone()))
                .collect()
        },
        single_json: if single_json {
            Some(f.args[0].ty.clone())
        } else {
            None
        },
        body: if single_json {
            raw_body
                .clone()
                .unwrap_or(Value::Object(args.clone()))
                .to_string()
        } else {
            Value::Object(positional).to_string()
        },
        variadic_last: f.variadic && f.args.last().is_some_and(|a| args.contains_key(&a.name)),
    };
    let read_only = is_get || matches!(f.volatility, 'i' | 's');
    let rollback = req.prefer.tx_rollback == Some(true) && st.tx_override;
    let mut q = Sql::default();
    let count = req.prefer.count.is_some();
    let top = params.mods.entry(vec![]).or_default();
    if let Some(m) = st.max_rows {
        if f.returns_set {
            top.limit = Some(top.limit.map_or(m, |l| l.min(m)));
        }
    }
    let offset = top.offset.unwrap_or(0);
    let (rel, shape) = match &f.ret {
        RetType::Relation(s, n) => (Some((s.clone(), n.clone())), BodyShape::Rows),
        RetType::Record(_) => (None, BodyShape::Rows),
        RetType::Scalar(_) | RetType::Void => (None, BodyShape::ScalarColumn(f.name.clone())),
    };
    let scalar_single = !f.returns_set && matches!(f.ret, RetType::Scalar(_) | RetType::Void);
    if scalar_single {
        let (pre, c) = sql::call_sql(&mut q, &call);
        let body = if matches!(f.ret, RetType::Void) {
            "NULL::text".to_string()
        } else {
            "to_json(pgrst_scalar.pgrst_scalar)::text".to_string()
        };
        q.text = format!(
            "SELECT NULL::int8 AS total, 1::int8 AS page, {body} AS body, NULL::text AS location FROM {}{c} AS pgrst_scalar",
            pre.map(|p| format!("{p}, LATERAL ")).unwrap_or_default()
        );
    } else {
        let mut planner = Planner::new(&sc, req.schema, st.aggregates);
        planner.mods = std::mem::take(&mut params.mods);
        let node = planner.node(
            Source::Call(call),
            &f.name,
            rel,
            params.select.as_deref().unwrap_or(&[]),
            &[],
        )?;
        let m = if !f.returns_set && media == Media::Json {
            Media::Object
        } else {
            media.clone()
        };
        q.text = sql::wrap_read(
            &mut q,
            &node,
            count,
            &m,
            req.accept.strip_nulls,
            &shape,
            None,
        );
    }
    let single = media == Media::Object;
    let strict_max = if req.prefer.strict {
        req.prefer.max_affected
    } else {
        None
    };
    let out = execute(
        state,
        req,
        &q,
        read_only,
        rollback,
        explain.as_ref(),
        strict_max.is_some() || single,
        |o| {
            if let Some(m) = strict_max {
                if o.page > m {
                    return Err(RestError::new(
                        400,
                        "PGRST124",
                        "Query result exceeds max-affected preference constraint",
                    )
                    .details(format!("The query affects {} rows", o.page)));
                }
            }
            if single && o.page != 1 {
                return Err(single_error(o.page));
            }
            Ok(())
        },
    )
    .await?;
    if explain.is_some() {
        return Ok(plan_response(out, &req.accept));
    }
    if matches!(f.ret, RetType::Void) && !f.returns_set {
        return Ok(respond(StatusCode::NO_CONTENT, None, None, vec![]));
    }
    if !f.returns_set {
        let total = if count { "1" } else { "*" };
        let mut headers = vec![("content-range".to_string(), format!("0-0/{total}"))];
        if rollback {
            headers.push(("preference-applied".into(), "tx=rollback".into()));
        }
        return Ok(respond(
            StatusCode::OK,
            Some(content_type(&req.accept)),
            out.body,
            headers,
        ));
    }
    let total = if count { out.total } else { None };
    finish_read(req, out, offset, total, &media, count)
}

fn function_not_found(sc: &SchemaCache, schema: &str, fname: &str, keys: &[&String]) -> RestError {
    let mut names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    names.sort();
    let (message, details) = if names.is_empty() {
        (
            format!("Could not find the function {schema}.{fname} without parameters in the schema cache"),
            format!("Searched for the function {schema}.{fname} without parameters or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache."),
        )
    } else {
        (
            format!("Could not find the function {schema}.{fname}({}) in the schema cache", names.join(", ")),
            format!(
                "Searched for the function {schema}.{fname} with parameter{} {} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            ),
        )
    };
    let mut e = RestError::new(404, "PGRST202", message).details(details);
    let best = sc
        .functions
        .iter()
        .filter(|((s, n), fs)| {
            s == schema
                && n != fname
                && fs
                    .iter()
                    .any(|f| f.args.iter().all(|a| !a.name.is_empty()) || f.args.len() == 1)
        })
        .map(|((_, n), _)| (plan::dice(n, fname), n))
        .filter(|(d, _)| *d >= 0.7)
        .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if let Some((_, n)) = best {
        e = e.hint(format!(
            "Perhaps you meant to call the function {schema}.{n}"
        ));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_grouped_by_embed() {
        let pairs: Vec<(String, String)> = vec![
            ("select".into(), "id,books(id)".into()),
            ("id".into(), "gt.1".into()),
            ("id".into(), "lt.9".into()),
            ("books.order".into(), "id.desc".into()),
            ("books.limit".into(), "2".into()),
            ("or".into(), "(id.eq.1,id.eq.2)".into()),
            ("books".into(), "not.is.null".into()),
        ];
        let mut p = parse_params(&pairs, false, &[]).unwrap();
        lift_embed_nulls(&mut p);
        let top = &p.mods[&vec![]];
        assert_eq!(top.filters.len(), 2);
        assert_eq!(top.logic.len(), 1);
        assert_eq!(top.embed_null, vec![("books".to_string(), false)]);
        let b = &p.mods[&vec!["books".to_string()]];
        assert_eq!(b.limit, Some(2));
        assert_eq!(b.order.len(), 1);
        assert!(parse_params(&[("limit".into(), "x".into())], false, &[]).is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(content_range(0, 10, Some(42)), "0-9/42");
        assert_eq!(content_range(0, 0, Some(0)), "*/0");
        assert_eq!(content_range(5, 2, None), "5-6/*");
        let mut h = HeaderMap::new();
        h.insert("range", HeaderValue::from_static("0-9"));
        assert_eq!(range_header(&h), Some((0, Some(10))));
    }
}
