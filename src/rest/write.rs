//! POST (insert, upsert), PATCH, PUT and DELETE.

use super::*;

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

pub(super) async fn write(
    state: &AppState,
    req: &RestReq<'_>,
    table: &str,
) -> Result<Resp, RestError> {
    let sc = state.rest.cache();
    let st = settings(state, &sc);
    let Some(rel) = sc.relation(req.schema, table) else {
        return Err(table_not_found(&sc, req.schema, table));
    };
    let (mut params, explain, req, media) = table_request(req, &st)?;
    let req = &req;
    let ret = req.prefer.ret.unwrap_or(Return::Minimal);
    let rollback = req.prefer.tx_rollback == Some(true) && st.tx_override;
    let t = qualified(&rel.schema, &rel.name);
    let a = ident(&rel.name);
    let mut q = Sql::default();
    let top_mods = params.mods.remove(&vec![]).unwrap_or_default();
    // Conditions for update/delete on the target table.
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
    // `limit` (with `order`) on PATCH/DELETE: only the first rows by that order are
    // touched, picked by ctid (tables only, as PostgREST).
    let limited: Option<Node> = match (top_mods.limit, req.method) {
        (Some(_), &Method::PATCH | &Method::DELETE) => {
            if !matches!(rel.kind, 'r' | 'p') {
                return Err(RestError::new(400, "PGRST128", "Range header and limit/offset querystring parameters are not allowed for PATCH and DELETE on views"));
            }
            let mut p = Planner::new(&sc, req.schema, false);
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
            Some(p.node(
                Source::Table {
                    schema: rel.schema.clone(),
                    name: rel.name.clone(),
                },
                "pgrst_l",
                Some((rel.schema.clone(), rel.name.clone())),
                &[item],
                &[],
            )?)
        }
        _ => None,
    };
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
            if *req.method == Method::PUT {
                put_checks(&rel.pk, &top_mods, &rows)?;
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
                "INSERT INTO {t} AS {a} {} SELECT {} FROM jsonb_array_elements({body_p}::jsonb) AS pgrst_j(j), LATERAL jsonb_populate_record(NULL::{t}, pgrst_j.j) AS pgrst_r{defaults_from}",
                // No keys at all (`{}` or `[]`): rows of defaults.
                if col_list.is_empty() { String::new() } else { format!("({})", col_list.join(", ")) },
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
            if let Some(l) = &limited {
                wh.push(format!(
                    "{a}.ctid = ANY(ARRAY({}))",
                    sql::node_sql(&mut q, l, None, sql::Mode::Full)
                ));
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
            if let Some(l) = &limited {
                wh.push(format!(
                    "{a}.ctid = ANY(ARRAY({}))",
                    sql::node_sql(&mut q, l, None, sql::Mode::Full)
                ));
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
    let run = Run {
        read_only: false,
        rollback,
        explain: explain.as_ref(),
        max_affected: strict_max,
        single,
    };
    let out = execute(state, req, &q, run).await?;
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
    headers.push(("content-range".into(), content_range(0, out.page, total)));
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

pub(super) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(super) fn sql_cond(q: &mut Sql, alias: &str, c: &plan::Cond) -> String {
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
