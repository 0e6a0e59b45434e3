//! /rest/v1: a PostgREST-compatible API. Each request goes parse (`query`, `prefer`, no
//! database) -> plan (`plan`, the only reader of the schema cache) -> SQL (`sql`, pure) ->
//! one transaction as the caller's role (`crate::db::begin_as`) -> respond.

pub(crate) mod error;
mod execute;
pub mod fuzz;
pub(crate) mod openapi;
pub(crate) mod plan;
pub(crate) mod prefer;
pub(crate) mod query;
mod read;
mod rpc;
pub(crate) mod schema;
mod schema_load;
mod schema_reload;
pub(crate) mod sql;
mod write;

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::http::{empty, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;

use error::RestError;
use execute::{body_media, explain_check};
use plan::Modifiers;
use prefer::{Accept, Media, Prefer};
use query::{IsVal, Op, SelectItem};
use schema::SchemaCache;

use read::read;
use rpc::rpc;
use write::write;

use schema_reload::reload_on_miss;
pub use schema_reload::{init, spawn_background, State};

pub async fn handle(state: &AppState, req: Req, path: &str) -> Resp {
    // The gateway takes the key from an `apikey` query parameter too (and hides it from
    // PostgREST: it is no filter).
    let query_key = crate::http::query_pairs(req.uri().query())
        .into_iter()
        .find(|(k, _)| k == "apikey")
        .map(|(_, v)| v);
    let ctx = match state.keys.authenticate(req.headers(), query_key.as_deref()) {
        Ok(c) => c,
        Err(e) => return RestError::jwt(&e).to_response(),
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

/// A request on a table or view, as read and write get it: the schema cache and settings
/// it was planned with, the relation (known to exist), and [`table_request`]'s parts.
struct TableCall<'a, 'r> {
    sc: &'a SchemaCache,
    st: &'a Settings,
    rel: &'a schema::Relation,
    params: Params,
    explain: Option<Media>,
    req: &'a RestReq<'r>,
    media: Media,
}

/// GET/HEAD (`read`) or POST/PATCH/DELETE/PUT (`write`) on a table or view: the table must
/// exist (PGRST205) before the request's parameters are looked at.
async fn on_table(
    state: &AppState,
    req: &RestReq<'_>,
    table: &str,
    is_read: bool,
) -> Result<Resp, RestError> {
    let sc = state.rest.cache();
    let st = settings(state, &sc);
    let rel = relation(&sc, req.schema, table)?;
    let (params, explain, req, media) = table_request(req, &st)?;
    let t = TableCall {
        sc: &sc,
        st: &st,
        rel,
        params,
        explain,
        req: &req,
        media,
    };
    if is_read {
        read(state, t).await
    } else {
        write(state, t).await
    }
}

/// What reads and writes on a table or view share: the query parameters, an explain
/// request, and the Accept negotiated again without raw text (tables have none).
fn table_request<'r>(
    req: &RestReq<'r>,
    st: &Settings,
) -> Result<(Params, Option<Media>, RestReq<'r>, Media), RestError> {
    let mut params = parse_params(req.pairs, false, &[])?;
    lift_embed_nulls(&mut params);
    check_embed_paths(&params)?;
    let explain = explain_check(req, st)?;
    let accept = prefer::parse_accept_for(header(req.headers, "accept"), false)?;
    let req = RestReq {
        accept,
        ..req.clone()
    };
    let media = body_media(&req.accept);
    if media == Media::OpenApi {
        return Err(RestError::not_acceptable(
            header(req.headers, "accept").unwrap_or(""),
        ));
    }
    Ok((params, explain, req, media))
}

/// A `limit` or `offset` value: a non-negative integer, else PostgREST's parse error.
fn non_negative(what: &str, v: &str) -> Result<i64, RestError> {
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| RestError::parse(what, v, "expecting a non-negative integer"))
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
            "limit" => m.limit = Some(non_negative("limit parameter", v)?),
            "offset" => m.offset = Some(non_negative("offset parameter", v)?),
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

/// Every `<path>.<filter|order|limit|...>` must name an embed of `select` (PGRST108).
fn check_embed_paths(p: &Params) -> Result<(), RestError> {
    fn paths(items: &[SelectItem], prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        for it in items {
            if let SelectItem::Embed(e) = it {
                let mut np = prefix.clone();
                np.push(e.label().to_string());
                out.push(np.clone());
                paths(&e.items, np, out);
            }
        }
    }
    let mut known = vec![vec![]];
    if let Some(s) = &p.select {
        paths(s, vec![], &mut known);
    }
    for path in p.mods.keys() {
        if !known.contains(path) {
            // The first segment that is not embedded.
            let mut i = 0;
            while i < path.len() && known.contains(&path[..=i].to_vec()) {
                i += 1;
            }
            let name = path.get(i).cloned().unwrap_or_default();
            return Err(RestError::new(
                400,
                "PGRST108",
                format!("'{name}' is not an embedded resource in this request"),
            )
            .hint(format!(
                "Verify that '{name}' is included in the 'select' query parameter."
            )));
        }
    }
    Ok(())
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
    let (parts, req_body) = req.into_parts();
    let http::request::Parts {
        method,
        headers,
        uri,
        ..
    } = parts;
    // Table and function names arrive %-encoded (`my%20table`).
    let decoded = percent_encoding::percent_decode_str(path.trim_end_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    let path = decoded.as_str();
    let pairs: Vec<_> = crate::http::query_pairs(uri.query())
        .into_iter()
        .filter(|(k, _)| k != "apikey")
        .collect();
    let schema = profile(&headers, &method, &state.rest.schemas)?;
    let mut prefer = Prefer::parse(
        headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    // A time zone PostgreSQL does not know is an invalid preference (ignored, or
    // PGRST122 under handling=strict).
    if let Some(tz) = prefer.timezone.take() {
        if state.rest.timezones.contains(&tz) {
            prefer.timezone = Some(tz);
        } else {
            prefer.invalid.push(format!("timezone={tz}"));
        }
    }
    prefer.check_strict()?;
    let accept = prefer::parse_accept(header(&headers, "accept"))?;
    let body = if matches!(method, Method::POST | Method::PATCH | Method::PUT) {
        Some(
            crate::http::body::read_limited(req_body, state.config.max_body_bytes)
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
        return with_reload(state, || rpc(state, &req, f))
            .await
            .map(|r| timezone_applied(r, req.prefer.timezone.as_deref()));
    }
    if path.contains('/') {
        return Err(RestError::new(
            404,
            "PGRST125",
            "Invalid path specified in request URL",
        ));
    }
    let resp = match method.clone() {
        Method::GET | Method::HEAD => {
            with_reload(state, || on_table(state, &req, path, true)).await
        }
        Method::POST | Method::PATCH | Method::DELETE | Method::PUT => {
            with_reload(state, || on_table(state, &req, path, false)).await
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
    };
    resp.map(|r| timezone_applied(r, req.prefer.timezone.as_deref()))
}

/// Add `timezone=...` to `Preference-Applied` (before `max-affected`, as PostgREST
/// orders them) when the request's time zone was applied.
fn timezone_applied(mut r: Resp, tz: Option<&str>) -> Resp {
    let Some(tz) = tz else {
        return r;
    };
    let tz = format!("timezone={tz}");
    let value = match r
        .headers()
        .get("preference-applied")
        .and_then(|v| v.to_str().ok())
    {
        Some(v) => match v.find("max-affected=") {
            Some(i) => format!("{}{tz}, {}", &v[..i], &v[i..]),
            None => format!("{v}, {tz}"),
        },
        None => tz,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert("preference-applied", v);
    }
    r
}

/// Run `f`; if it failed on a schema-cache miss, reload once and retry.
async fn with_reload<F, Fut>(state: &AppState, f: F) -> Result<Resp, RestError>
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

#[derive(Clone)]
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

/// The table or view a request names, or PostgREST's PGRST205.
fn relation<'c>(
    sc: &'c SchemaCache,
    schema: &str,
    name: &str,
) -> Result<&'c schema::Relation, RestError> {
    sc.relation(schema, name)
        .ok_or_else(|| table_not_found(sc, schema, name))
}

fn table_not_found(sc: &SchemaCache, schema: &str, name: &str) -> RestError {
    let mut e = RestError::new(
        404,
        "PGRST205",
        format!("Could not find the table '{schema}.{name}' in the schema cache"),
    );
    let best = sc
        .relations
        .keys()
        .filter(|(s, _)| s == schema)
        .map(|(s, n)| (plan::dice(n, name), s, n))
        .filter(|(d, _, _)| *d >= 0.5)
        .max_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| b.2.cmp(a.2))
        });
    if let Some((_, s, n)) = best {
        e = e.hint(format!("Perhaps you meant the table '{s}.{n}'"));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::execute::content_range;
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
        assert!(check_embed_paths(&p).is_ok());
        let q = parse_params(
            &[
                ("select".into(), "id".into()),
                ("books.limit".into(), "1".into()),
            ],
            false,
            &[],
        )
        .unwrap();
        let e = check_embed_paths(&q).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            (
                "PGRST108",
                "'books' is not an embedded resource in this request"
            )
        );
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

/// Planning and SQL text against a hand-built schema cache (no database).
#[cfg(test)]
mod plan_sql_tests {
    use super::sql::Sql;
    use super::*;

    fn plan_read(table: &str, query: &str) -> Result<Sql, RestError> {
        fuzz::plan_read(&fuzz::demo_cache(), table, query, false)
    }

    #[test]
    fn many_to_one_embed_is_a_lateral_row() {
        let q = plan_read("books", "select=title,author:authors(name)&id=eq.1").unwrap();
        assert_eq!(
            q.text,
            "SELECT NULL::int8 AS total, pg_catalog.count(pgrst_t) AS page, coalesce(json_agg(pgrst_t), '[]')::text AS body, NULL::text AS location FROM (SELECT \"books\".\"title\" AS \"title\", \"books_author_1\".\"author\" AS \"author\" FROM \"public\".\"books\" AS \"books\" LEFT JOIN LATERAL (SELECT row_to_json(pgrst_x.*) AS \"author\" FROM (SELECT \"authors_1\".\"name\" AS \"name\" FROM \"public\".\"authors\" AS \"authors_1\" WHERE \"authors_1\".\"id\" = \"books\".\"author_id\") AS pgrst_x) AS \"books_author_1\" ON TRUE WHERE \"books\".\"id\" = $1) AS pgrst_t"
        );
        assert_eq!(q.params, vec!["1"]);
    }

    #[test]
    fn one_to_many_embed_with_its_own_modifiers() {
        let q = plan_read(
            "authors",
            "select=name,books(title)&books.order=title.desc&books.limit=2&books.title=like.*a*",
        )
        .unwrap();
        assert!(
            q.text.contains("SELECT json_agg(pgrst_x.*) AS \"books\""),
            "{}",
            q.text
        );
        assert!(q.text.contains("WHERE \"books_1\".\"author_id\" = \"authors\".\"id\" AND \"books_1\".\"title\" LIKE $1 ORDER BY \"books_1\".\"title\" DESC LIMIT 2"), "{}", q.text);
        assert!(q
            .text
            .contains("COALESCE(\"authors_books_1\".\"books\", '[]') AS \"books\""));
        assert_eq!(q.params, vec!["%a%"]);
    }

    #[test]
    fn planning_errors() {
        assert_eq!(
            plan_read("authors", "select=nope(*)").unwrap_err().code,
            "PGRST200"
        );
        assert_eq!(
            plan_read("authors", "select=count()").unwrap_err().code,
            "PGRST123"
        );
        // Not embedded: a plain column filter (PostgreSQL then reports the column).
        let q = plan_read("books", "select=id&authors=is.null").unwrap();
        assert!(q.text.contains("\"books\".\"authors\" IS NULL"));
        let q = plan_read("books", "select=id,authors()&authors=not.is.null").unwrap();
        assert!(
            q.text
                .contains("\"books_authors_1\".\"authors\" IS NOT NULL"),
            "{}",
            q.text
        );
        let inj = plan_read("books", "select=id&title=eq.';drop table books;--").unwrap();
        assert!(!inj.text.contains("drop"));
        assert_eq!(inj.params, vec!["';drop table books;--"]);
    }
}
