//! POST (insert, upsert), PATCH, PUT and DELETE.

use http::{Method, StatusCode};
use serde_json::Value;

use super::error::RestError;
use super::execute::{content_range, content_type, execute_then, respond, Outcome, Run};
use super::plan::{self, Modifiers, Node, Planner, Source};
use super::prefer::{Resolution, Return};
use super::query::{self, SelectItem};
use super::read::count_name;
use super::schema::{Relation, SchemaCache};
use super::sql::{self, Mutation, WritePlan};
use super::{header, Params, RestReq, Settings, TableCall};
use crate::http::Resp;
use crate::state::AppState;

// ---------------------------------------------------------------------------------------
// Writes

pub(super) fn parse_json_body(body: &Option<bytes::Bytes>) -> Result<Value, RestError> {
    let b = body.as_deref().unwrap_or(b"");
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Err(RestError::new(400, "PGRST102", "Empty or invalid json"));
    }
    serde_json::from_slice(b).map_err(|_| RestError::new(400, "PGRST102", "Empty or invalid json"))
}

pub(super) fn is_form(req: &RestReq) -> bool {
    header(req.headers, "content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
}

pub(super) fn request_body(req: &RestReq) -> Result<Value, RestError> {
    if is_form(req) {
        let b = req.body.as_deref().unwrap_or(b"");
        let m: serde_json::Map<String, Value> = form_urlencoded::parse(b)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        return Ok(Value::Object(m));
    }
    if header(req.headers, "content-type").is_some_and(|c| c.starts_with("text/csv")) {
        let text = std::str::from_utf8(req.body.as_deref().unwrap_or(b""))
            .map_err(|_| RestError::new(400, "PGRST102", "Empty or invalid json"))?;
        return csv_body(text);
    }
    parse_json_body(&req.body)
}

/// A CSV body (header row of column names, then rows) as a JSON array of objects. Values
/// stay strings (PostgreSQL converts them by column type); an unquoted `NULL` is null.
pub(super) fn csv_body(text: &str) -> Result<Value, RestError> {
    let bad =
        |d: &str| RestError::new(400, "PGRST102", "Empty or invalid json").details(d.to_string());
    // Records of (value, was quoted) fields.
    let mut records: Vec<Vec<(String, bool)>> = vec![];
    let mut record: Vec<(String, bool)> = vec![];
    let mut field = String::new();
    let mut quoted = false;
    let mut in_q = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_q {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_q = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                in_q = true;
                quoted = true;
            }
            ',' => record.push((std::mem::take(&mut field), std::mem::take(&mut quoted))),
            '\r' => {}
            '\n' => {
                record.push((std::mem::take(&mut field), std::mem::take(&mut quoted)));
                records.push(std::mem::take(&mut record));
            }
            c => field.push(c),
        }
    }
    if in_q {
        return Err(bad("unterminated quoted CSV field"));
    }
    if any && (!field.is_empty() || quoted || !record.is_empty()) {
        record.push((field, quoted));
        records.push(record);
    }
    let mut it = records.into_iter();
    let header: Vec<String> = it
        .next()
        .ok_or_else(|| bad("empty CSV body"))?
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    let mut rows = vec![];
    for r in it {
        if r.len() != header.len() {
            return Err(bad("every CSV row must have as many fields as the header"));
        }
        let o: serde_json::Map<String, Value> = header
            .iter()
            .cloned()
            .zip(r.into_iter().map(|(v, q)| {
                if !q && v == "NULL" {
                    Value::Null
                } else {
                    Value::String(v)
                }
            }))
            .collect();
        rows.push(Value::Object(o));
    }
    Ok(Value::Array(rows))
}

pub(super) async fn write(state: &AppState, t: TableCall<'_, '_>) -> Result<Resp, RestError> {
    #[rustfmt::skip]
    let TableCall { sc, st, rel, mut params, explain, req, media } = t;
    let ret = req.prefer.ret.unwrap_or(Return::Minimal);
    let rollback = req.prefer.tx_rollback == Some(true) && st.tx_override;
    let top_mods = params.mods.remove(&vec![]).unwrap_or_default();
    // Conditions for update/delete on the target table.
    let conds = target_conds(sc, rel, &top_mods, st.aggregates)?;
    let limited = limited_node(sc, req, rel, &top_mods)?;
    let mut applied: Vec<String> = vec![];
    let (mutation, status) = match *req.method {
        Method::POST | Method::PUT => plan_insert(req, rel, &params, &top_mods, &mut applied)?,
        Method::PATCH => (
            plan_update(req, rel, &params, conds, limited)?,
            StatusCode::OK,
        ),
        Method::DELETE => {
            let (schema, name) = (rel.schema.clone(), rel.name.clone());
            let m = Mutation::Delete {
                schema,
                name,
                conds,
                limited,
            };
            (m, StatusCode::OK)
        }
        _ => return Err(RestError::new(405, "PGRST117", "Unsupported HTTP method")),
    };
    let count_inserted = matches!(
        mutation,
        Mutation::Insert {
            mark_inserted: true,
            ..
        }
    );
    let returning = returning_node(sc, rel, params, &top_mods, st.aggregates)?;
    let plan = WritePlan {
        mutation,
        returning,
        body: (ret == Return::Representation).then(|| (media.clone(), req.accept.strip_nulls)),
        count: req.prefer.count.is_some(),
        location: *req.method == Method::POST && !rel.pk.is_empty(),
    };
    let q = sql::write_sql(&plan);
    let run = Run::checked(req, false, rollback, explain.as_ref(), &media);
    let strict_max = run.max_affected;
    execute_then(state, req, &q, run, |out| {
        let prefs = applied_prefs(req, st, applied, strict_max);
        let merged = count_inserted && out.inserted == Some(0) && status == StatusCode::CREATED;
        // A merging upsert that inserted nothing answers 200, as PostgREST.
        let status = if merged { StatusCode::OK } else { status };
        Ok(write_response(req, rel, out, status, prefs, plan.count))
    })
    .await
}

/// The filters of the target table, as conditions of an UPDATE or DELETE.
fn target_conds(
    sc: &SchemaCache,
    rel: &Relation,
    top_mods: &Modifiers,
    aggregates: bool,
) -> Result<Vec<plan::Cond>, RestError> {
    let mut p = Planner::new(sc, aggregates);
    p.mods.insert(
        vec![],
        Modifiers {
            filters: top_mods.filters.clone(),
            logic: top_mods.logic.clone(),
            ..Default::default()
        },
    );
    let n = p.node(
        table_source(rel),
        &rel.name,
        Some((rel.schema.clone(), rel.name.clone())),
        &[SelectItem::Star],
        &[],
    )?;
    Ok(n.conds)
}

fn table_source(rel: &Relation) -> Source {
    Source::Table {
        schema: rel.schema.clone(),
        name: rel.name.clone(),
    }
}

/// `limit` (with `order`) on PATCH/DELETE: only the first rows by that order are touched,
/// picked by ctid (tables only, as PostgREST).
fn limited_node(
    sc: &SchemaCache,
    req: &RestReq,
    rel: &Relation,
    top_mods: &Modifiers,
) -> Result<Option<Node>, RestError> {
    match (top_mods.limit, req.method) {
        (Some(_), &Method::PATCH | &Method::DELETE) => {}
        _ => return Ok(None),
    }
    if !matches!(rel.kind, 'r' | 'p') {
        return Err(RestError::new(400, "PGRST128", "Range header and limit/offset querystring parameters are not allowed for PATCH and DELETE on views"));
    }
    let mut p = Planner::new(sc, false);
    p.mods.insert(
        vec![],
        Modifiers {
            filters: top_mods.filters.clone(),
            logic: top_mods.logic.clone(),
            order: top_mods.order.clone(),
            limit: top_mods.limit,
            offset: top_mods.offset,
            ..Default::default()
        },
    );
    let item = SelectItem::Field {
        field: query::Field::plain("ctid"),
        alias: None,
        cast: None,
        agg: None,
        agg_cast: None,
    };
    let rel_key = Some((rel.schema.clone(), rel.name.clone()));
    Ok(Some(p.node(
        table_source(rel),
        "pgrst_l",
        rel_key,
        &[item],
        &[],
    )?))
}

fn check_cols(rel: &Relation, cols: &[String]) -> Result<(), RestError> {
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
}

/// POST and PUT: the rows, their columns, the defaults and the conflict handling.
fn plan_insert(
    req: &RestReq,
    rel: &Relation,
    params: &Params,
    top_mods: &Modifiers,
    applied: &mut Vec<String>,
) -> Result<(Mutation, StatusCode), RestError> {
    let rows = insert_rows(req)?;
    if *req.method == Method::PUT {
        put_checks(&rel.pk, top_mods, &rows)?;
    }
    let cols = insert_columns(params, &rows)?;
    check_cols(rel, &cols)?;
    let mut status = StatusCode::CREATED;
    let defaults: Vec<Option<String>> = cols
        .iter()
        .map(|c| {
            let col = rel.column(c).expect("checked");
            col.default.clone().filter(|_| req.prefer.missing_default)
        })
        .collect();
    if req.prefer.missing_default {
        applied.push("missing=default".into());
    }
    let upsert = req.prefer.resolution.or(if *req.method == Method::PUT {
        Some(Resolution::Merge)
    } else {
        None
    });
    let mut conflict = None;
    if let Some(res) = upsert {
        let cc = params.on_conflict.clone().unwrap_or_else(|| rel.pk.clone());
        check_cols(rel, &cc)?;
        if cc.is_empty() {
            return Err(
                RestError::new(400, "PGRST100", "\"failed to parse on_conflict\"")
                    .details("on_conflict columns are required for a table without a primary key"),
            );
        }
        match res {
            Resolution::Ignore => applied.push("resolution=ignore-duplicates".into()),
            Resolution::Merge if req.prefer.resolution.is_some() => {
                applied.push("resolution=merge-duplicates".into())
            }
            Resolution::Merge => {}
        }
        if *req.method == Method::PUT {
            status = StatusCode::OK;
        }
        conflict = Some((res, cc));
    }
    let m = Mutation::Insert {
        schema: rel.schema.clone(),
        name: rel.name.clone(),
        cols,
        defaults,
        rows: Value::Array(rows).to_string(),
        conflict,
        mark_inserted: upsert == Some(Resolution::Merge) && matches!(rel.kind, 'r' | 'p'),
    };
    Ok((m, status))
}

/// The body of POST/PUT as rows (objects).
fn insert_rows(req: &RestReq) -> Result<Vec<Value>, RestError> {
    let rows: Vec<Value> = match request_body(req)? {
        Value::Array(v) => v,
        o @ Value::Object(_) => vec![o],
        _ => return Err(RestError::new(400, "PGRST102", "Empty or invalid json")),
    };
    if rows.iter().any(|r| !r.is_object()) {
        return Err(RestError::new(400, "PGRST102", "Empty or invalid json"));
    }
    Ok(rows)
}

/// `columns=`, else the first row's keys, which every row must share.
fn insert_columns(params: &Params, rows: &[Value]) -> Result<Vec<String>, RestError> {
    if let Some(c) = &params.columns {
        return Ok(c.clone());
    }
    let first: Vec<String> = rows
        .first()
        .and_then(|r| r.as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    for r in rows {
        let o = r.as_object().expect("checked objects");
        if o.len() != first.len() || !first.iter().all(|k| o.contains_key(k)) {
            return Err(RestError::new(
                400,
                "PGRST102",
                "All object keys must match",
            ));
        }
    }
    Ok(first)
}

fn plan_update(
    req: &RestReq,
    rel: &Relation,
    params: &Params,
    conds: Vec<plan::Cond>,
    limited: Option<Node>,
) -> Result<Mutation, RestError> {
    let Value::Object(o) = request_body(req)? else {
        return Err(RestError::new(400, "PGRST102", "Empty or invalid json"));
    };
    let cols: Vec<String> = match &params.columns {
        Some(c) => c.clone(),
        None => o.keys().cloned().collect(),
    };
    check_cols(rel, &cols)?;
    Ok(Mutation::Update {
        schema: rel.schema.clone(),
        name: rel.name.clone(),
        cols,
        body: Value::Object(o).to_string(),
        conds,
        limited,
    })
}

/// The representation: the select over the returned rows.
fn returning_node(
    sc: &SchemaCache,
    rel: &Relation,
    params: Params,
    top_mods: &Modifiers,
    aggregates: bool,
) -> Result<Node, RestError> {
    let mut planner = Planner::new(sc, aggregates);
    planner.mods = params.mods;
    planner.mods.insert(
        vec![],
        Modifiers {
            order: top_mods.order.clone(),
            limit: None,
            offset: None,
            ..Default::default()
        },
    );
    planner.node(
        Source::Cte(
            "pgrst_source".into(),
            rel.columns.iter().map(|c| c.name.clone()).collect(),
        ),
        &rel.name,
        Some((rel.schema.clone(), rel.name.clone())),
        params.select.as_deref().unwrap_or(&[]),
        &[],
    )
}

/// The Preference-Applied list: return first, then what planning applied, then count,
/// tx and handling.
fn applied_prefs(
    req: &RestReq,
    st: &Settings,
    mut applied: Vec<String>,
    strict_max: Option<i64>,
) -> Vec<String> {
    if let Some(c) = req.prefer.count {
        applied.push(format!("count={}", count_name(c)));
    }
    match req.prefer.ret {
        Some(Return::Representation) => applied.insert(0, "return=representation".into()),
        Some(Return::Minimal) => applied.insert(0, "return=minimal".into()),
        Some(Return::HeadersOnly) => applied.insert(0, "return=headers-only".into()),
        None => {}
    }
    if req.prefer.tx_rollback == Some(true) && st.tx_override {
        applied.push("tx=rollback".into());
    } else if req.prefer.tx_rollback.is_some() && st.tx_override {
        applied.push("tx=commit".into());
    }
    if let Some(m) = strict_max {
        applied.push("handling=strict".into());
        applied.push(format!("max-affected={m}"));
    }
    applied
}

fn write_response(
    req: &RestReq,
    rel: &Relation,
    out: Outcome,
    status: StatusCode,
    applied: Vec<String>,
    count: bool,
) -> Resp {
    let ret = req.prefer.ret.unwrap_or(Return::Minimal);
    let mut headers: Vec<(String, String)> = vec![];
    if !applied.is_empty() {
        headers.push(("preference-applied".into(), applied.join(", ")));
    }
    let total = if count { out.total } else { None };
    headers.push(("content-range".into(), content_range(0, out.page, total)));
    if *req.method == Method::POST {
        if let Some(loc) = out
            .location
            .as_deref()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        {
            headers.push(("location".into(), location(rel, &loc)));
        }
    }
    if ret == Return::Representation {
        respond(status, Some(content_type(&req.accept)), out.body, headers)
    } else {
        let st = if status == StatusCode::CREATED {
            StatusCode::CREATED
        } else {
            StatusCode::NO_CONTENT
        };
        respond(st, None, None, headers)
    }
}

/// `/table?k=eq.v&…` for the first inserted row's primary key.
fn location(rel: &Relation, loc: &Value) -> String {
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
    format!("/{}?{}", rel.name, parts.join("&"))
}

pub(super) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// PUT is a single-row upsert addressed by its primary key: the filters must be exactly
/// `pk=eq.value` for every key column, and the body must carry the same values.
pub(super) fn put_checks(pk: &[String], mods: &Modifiers, rows: &[Value]) -> Result<(), RestError> {
    let pk_error = || {
        RestError::new(
            405,
            "PGRST105",
            "Filters must include all and only primary key columns with 'eq' operators",
        )
    };
    if pk.is_empty() || !mods.logic.is_empty() || mods.filters.len() != pk.len() {
        return Err(pk_error());
    }
    let mut wanted = vec![];
    for f in &mods.filters {
        match &f.op {
            query::Op::Simple {
                op,
                quant: None,
                value,
            } if op == "eq"
                && !f.negate
                && f.field.path.is_empty()
                && pk.contains(&f.field.name) =>
            {
                wanted.push((f.field.name.clone(), value.clone()))
            }
            _ => return Err(pk_error()),
        }
    }
    let [row] = rows else {
        return Err(RestError::new(
            400,
            "PGRST116",
            "Cannot coerce the result to a single JSON object",
        )
        .details(format!("The result contains {} rows", rows.len())));
    };
    for (k, v) in &wanted {
        let same = match row.get(k) {
            Some(Value::String(s)) => s == v,
            Some(Value::Null) | None => false,
            Some(other) => &other.to_string() == v,
        };
        if !same {
            return Err(RestError::new(
                400,
                "PGRST115",
                "Payload values do not match URL in primary key column(s)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_bodies() {
        let v = csv_body("k,v,n\r\na,\"x, \"\"y\"\"\",1\nb,NULL,\"NULL\"\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"k":"a","v":"x, \"y\"","n":"1"},{"k":"b","v":null,"n":"NULL"}])
        );
        assert!(csv_body("k,v\na\n").is_err());
        assert!(csv_body("k\n\"a").is_err());
        assert!(csv_body("").is_err());
    }
}
