//! `GET /rest/v1/`: an OpenAPI 3 document of the tables, views and functions of the
//! requested schema that the caller's role may use.

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::error::RestError;
use super::schema::RetType;
use super::RestReq;
use crate::http::Resp;
use crate::state::AppState;

fn json_type(pg: &str) -> (&'static str, Option<&'static str>) {
    let t = pg.trim_end_matches("[]");
    if pg.ends_with("[]") {
        return ("array", None);
    }
    match t {
        "integer" | "smallint" | "bigint" => ("integer", Some(t_fmt(t))),
        "numeric" | "real" | "double precision" => ("number", Some(t_fmt(t))),
        "boolean" => ("boolean", None),
        "json" | "jsonb" => ("object", None),
        _ => ("string", None),
    }
}

fn t_fmt(t: &str) -> &'static str {
    match t {
        "integer" => "integer",
        "smallint" => "smallint",
        "bigint" => "bigint",
        "numeric" => "numeric",
        "real" => "real",
        _ => "double precision",
    }
}

/// The names (first column, as text) of a catalog query on `schema`, as the caller sees them.
async fn names(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    schema: &str,
    anon: bool,
) -> Result<Vec<String>, RestError> {
    Ok(tx
        .query(sql, &[&schema])
        .await
        .map_err(|e| RestError::from_pg(&e, anon))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn respond_doc(state: &AppState, req: &RestReq<'_>) -> Result<Value, RestError> {
    let sc = state.rest.cache();
    // Which relations and functions this role may use.
    let mut client = state
        .pool
        .get()
        .await
        .map_err(|e| RestError::internal(e.to_string()))?;
    let anon = req.ctx.role.is_anon();
    let tx = crate::db::begin_as(&mut client, req.ctx, &Default::default(), true)
        .await
        .map_err(|e| RestError::from_pg(&e, anon))?;
    let visible: Vec<String> = names(
        &tx,
        "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname = $1 and (has_table_privilege(c.oid, 'select') or has_table_privilege(c.oid, 'insert')
               or has_table_privilege(c.oid, 'update') or has_table_privilege(c.oid, 'delete'))",
        req.schema,
        anon,
    )
    .await?;
    let funcs: Vec<String> = names(
        &tx,
        "select p.proname::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where n.nspname = $1 and has_function_privilege(p.oid, 'execute')",
        req.schema,
        anon,
    )
    .await?;
    drop(tx);
    let mut paths = Map::new();
    let mut defs = Map::new();
    paths.insert("/".into(), json!({"get": {"tags": ["Introspection"], "summary": "OpenAPI description (this document)", "responses": {"200": {"description": "OK"}}}}));
    let mut rels: Vec<_> = sc
        .relations
        .values()
        .filter(|r| r.schema == req.schema && visible.contains(&r.name))
        .collect();
    rels.sort_by(|a, b| a.name.cmp(&b.name));
    for r in rels {
        let mut props = Map::new();
        let mut required = vec![];
        for c in &r.columns {
            let (ty, fmt) = json_type(&c.ty);
            let mut p = json!({"type": ty, "format": c.ty});
            let _ = fmt;
            if let Some(d) = &c.description {
                p["description"] = json!(d);
            }
            if let Some(d) = &c.default {
                p["default"] = json!(d);
            }
            if !c.enum_values.is_empty() {
                p["enum"] = json!(c.enum_values);
            }
            if r.pk.contains(&c.name) {
                p["description"] = json!(format!(
                    "{}Note:\nThis is a Primary Key.<pk/>",
                    c.description
                        .as_ref()
                        .map(|d| format!("{d}\n\n"))
                        .unwrap_or_default()
                ));
            }
            if !c.nullable && c.default.is_none() {
                required.push(c.name.clone());
            }
            props.insert(c.name.clone(), p);
        }
        let mut d = json!({"type": "object", "properties": props});
        if !required.is_empty() {
            d["required"] = json!(required);
        }
        if let Some(desc) = &r.description {
            d["description"] = json!(desc);
        }
        defs.insert(r.name.clone(), d);
        let reff = json!({"$ref": format!("#/components/schemas/{}", r.name)});
        let mut ops = Map::new();
        ops.insert("get".into(), json!({"tags": [r.name], "summary": r.description, "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "array", "items": reff}}}}, "206": {"description": "Partial Content"}}}));
        if r.insertable {
            ops.insert("post".into(), json!({"tags": [r.name], "requestBody": {"content": {"application/json": {"schema": reff}}}, "responses": {"201": {"description": "Created"}}}));
        }
        if r.updatable {
            ops.insert("patch".into(), json!({"tags": [r.name], "requestBody": {"content": {"application/json": {"schema": reff}}}, "responses": {"204": {"description": "No Content"}}}));
        }
        if r.deletable {
            ops.insert(
                "delete".into(),
                json!({"tags": [r.name], "responses": {"204": {"description": "No Content"}}}),
            );
        }
        paths.insert(format!("/{}", r.name), Value::Object(ops));
    }
    let mut fnames: Vec<_> = sc
        .functions
        .iter()
        .filter(|((s, n), _)| s == req.schema && funcs.contains(n))
        .collect();
    fnames.sort_by(|a, b| a.0.cmp(b.0));
    for ((_, n), fs) in fnames {
        let f = &fs[0];
        let mut props = Map::new();
        let mut required = vec![];
        for a in &f.args {
            let (ty, _) = json_type(&a.ty);
            props.insert(a.name.clone(), json!({"type": ty, "format": a.ty}));
            if !a.has_default {
                required.push(a.name.clone());
            }
        }
        let args = json!({"type": "object", "properties": props, "required": required});
        let ret = match &f.ret {
            RetType::Relation(_, t) => json!({"$ref": format!("#/components/schemas/{t}")}),
            _ => json!({}),
        };
        let mut ops = Map::new();
        ops.insert("post".into(), json!({"tags": ["(rpc) ".to_string() + n], "summary": f.description, "requestBody": {"content": {"application/json": {"schema": args}}}, "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ret}}}}}));
        if f.volatility != 'v' {
            ops.insert("get".into(), json!({"tags": ["(rpc) ".to_string() + n], "summary": f.description, "responses": {"200": {"description": "OK"}}}));
        }
        paths.insert(format!("/rpc/{n}"), Value::Object(ops));
    }
    Ok(json!({
        "openapi": "3.0.3",
        "info": {"title": "oxibase REST API", "description": "PostgREST-compatible API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/rest/v1"}],
        "paths": paths,
        "components": {"schemas": defs},
    }))
}

pub async fn respond(state: &AppState, req: &RestReq<'_>) -> Result<Resp, RestError> {
    let doc = respond_doc(state, req).await?;
    Ok(super::execute::respond(
        StatusCode::OK,
        Some("application/openapi+json; charset=utf-8"),
        Some(doc.to_string().into()),
        vec![],
    ))
}
