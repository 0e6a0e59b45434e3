//! /rpc/<function>: overload resolution, arguments, calls.

use http::{Method, StatusCode};
use serde_json::Value;

use super::error::RestError;
use super::execute::{
    body_media, content_type, execute_then, explain_check, respond, Outcome, Run,
};
use super::plan::{self, Call, Planner, Source};
use super::prefer::{self, Media};
use super::read::finish_read;
use super::schema::{self, RetType, SchemaCache};
use super::sql::{self, BodyShape, ScalarBody, Sql};
use super::write::{is_form, request_body};
use super::{
    check_embed_paths, header, lift_embed_nulls, parse_params, settings, Params, RestReq, Settings,
};
use crate::http::Resp;
use crate::state::AppState;

// ---------------------------------------------------------------------------------------
// RPC

pub(super) async fn rpc(
    state: &AppState,
    req: &RestReq<'_>,
    fname: &str,
) -> Result<Resp, RestError> {
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
    check_embed_paths(&params)?;
    let explain = explain_check(req, &st)?;
    let media = body_media(&req.accept);
    let (args, raw_body) = rpc_args(req, &params, is_get)?;
    let (f, single_json) = resolve(&sc, req, fname, &overloads, &args, is_get)?;
    let call = build_call(&f, &args, raw_body, single_json);
    let read_only = is_get || matches!(f.volatility, 'i' | 's');
    let rollback = req.prefer.tx_rollback == Some(true) && st.tx_override;
    let count = req.prefer.count.is_some();
    let offset = cap_rows(&mut params, &st, &f);
    let scalar_single = !f.returns_set && matches!(f.ret, RetType::Scalar(_) | RetType::Void);
    // Only a scalar result has a raw text/octet form; otherwise negotiate without them.
    let renegotiated;
    let (req, media) = if matches!(media, Media::Text | Media::Octet) && !scalar_single {
        let accept = prefer::parse_accept_for(header(req.headers, "accept"), false)?;
        renegotiated = RestReq {
            accept,
            ..req.clone()
        };
        let m = body_media(&renegotiated.accept);
        (&renegotiated, m)
    } else {
        (req, media)
    };
    if media == Media::OpenApi {
        return Err(RestError::not_acceptable(
            header(req.headers, "accept").unwrap_or(""),
        ));
    }
    let q = if scalar_single {
        sql::rpc_scalar_sql(&call, scalar_body(&f, &media))
    } else {
        rows_statement(&sc, req, &st, &f, call, params, &media)?
    };
    let run = Run::checked(req, read_only, rollback, explain.as_ref(), &media);
    execute_then(state, req, &q, run, |out| {
        rpc_response(req, &f, out, offset, count, &media, rollback)
    })
    .await
}

/// `max_rows` caps a set-returning function's rows; returns the offset.
fn cap_rows(params: &mut Params, st: &Settings, f: &schema::Function) -> i64 {
    let top = params.mods.entry(vec![]).or_default();
    if let Some(m) = st.max_rows {
        if f.returns_set {
            top.limit = Some(top.limit.map_or(m, |l| l.min(m)));
        }
    }
    top.offset.unwrap_or(0)
}

fn scalar_body(f: &schema::Function, media: &Media) -> ScalarBody {
    if matches!(f.ret, RetType::Void) {
        ScalarBody::Void
    } else if matches!(media, Media::Text | Media::Octet) {
        ScalarBody::Text
    } else {
        ScalarBody::Json
    }
}

/// The arguments as a JSON object, and the raw body (for a single json parameter).
fn rpc_args(
    req: &RestReq,
    params: &Params,
    is_get: bool,
) -> Result<(serde_json::Map<String, Value>, Option<Value>), RestError> {
    if is_get {
        // A repeated key (`?v=1&v=2`, for a variadic parameter) becomes an array.
        let mut m = serde_json::Map::new();
        for (k, v) in &params.rpc_candidates {
            match m.get_mut(k) {
                Some(Value::Array(a)) => a.push(Value::String(v.clone())),
                Some(prev) => {
                    let first = prev.take();
                    *prev = Value::Array(vec![first, Value::String(v.clone())]);
                }
                None => {
                    m.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        return Ok((m, None));
    }
    let b = req.body.as_deref().unwrap_or(b"");
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        Ok((serde_json::Map::new(), None))
    } else if is_form(req) {
        match request_body(req)? {
            Value::Object(o) => Ok((o, None)),
            _ => Ok((serde_json::Map::new(), None)),
        }
    } else {
        match serde_json::from_slice::<Value>(b) {
            Ok(Value::Object(o)) => Ok((o.clone(), Some(Value::Object(o)))),
            Ok(v) => Ok((serde_json::Map::new(), Some(v))),
            Err(_) => Err(RestError::new(400, "PGRST102", "Empty or invalid json")),
        }
    }
}

/// Overload resolution by argument names, as PostgREST: only functions whose parameters
/// are all named, or that take one unnamed json/jsonb/text/xml/bytea parameter (named ""
/// in the body), can be called. Also says whether the whole body is the single argument.
fn resolve(
    sc: &SchemaCache,
    req: &RestReq,
    fname: &str,
    overloads: &[schema::Function],
    args: &serde_json::Map<String, Value>,
    is_get: bool,
) -> Result<(schema::Function, bool), RestError> {
    let keys: Vec<&String> = args.keys().collect();
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
                .all(|a| a.has_default || keys.contains(&&a.name));
            names_ok && required_ok
        })
        .collect();
    let mut single_json = false;
    if cands.is_empty() && !is_get {
        (cands, single_json) = single_json_candidates(req, overloads);
    }
    match cands.len() {
        1 => Ok((cands[0].clone(), single_json)),
        0 => Err(function_not_found(sc, req.schema, fname, &keys)),
        _ => Err(ambiguous(cands)),
    }
}

/// A single unnamed json/jsonb parameter takes the whole body (or, with
/// `Prefer: params=single-object`, any single json/jsonb parameter).
fn single_json_candidates<'f>(
    req: &RestReq,
    overloads: &'f [schema::Function],
) -> (Vec<&'f schema::Function>, bool) {
    let sj: Vec<&schema::Function> = overloads
        .iter()
        .filter(|f| {
            f.args.len() == 1
                && f.args[0].name.is_empty()
                && matches!(f.args[0].ty.as_str(), "json" | "jsonb")
        })
        .collect();
    if !sj.is_empty() {
        return (sj, true);
    }
    if req.prefer.single_object {
        let c: Vec<&schema::Function> = overloads
            .iter()
            .filter(|f| f.args.len() == 1 && matches!(f.args[0].ty.as_str(), "json" | "jsonb"))
            .collect();
        let single = !c.is_empty();
        return (c, single);
    }
    (vec![], false)
}

fn ambiguous(mut cands: Vec<&schema::Function>) -> RestError {
    cands.sort_by_key(|f| {
        (
            f.args.len(),
            f.args.iter().map(|a| a.ty.clone()).collect::<Vec<_>>(),
        )
    });
    let sigs: Vec<String> = cands.iter().map(|f| f.signature()).collect();
    RestError::new(300, "PGRST203", format!("Could not choose the best candidate function between: {}", sigs.join(", ")))
        .hint("Try renaming the parameters or the function itself in the database so function overloading can be resolved")
}

/// Arguments travel as one JSON object with positional keys, so unnamed parameters work.
fn build_call(
    f: &schema::Function,
    args: &serde_json::Map<String, Value>,
    raw_body: Option<Value>,
    single_json: bool,
) -> Call {
    let variadic_last = f.variadic && f.args.last().is_some_and(|a| args.contains_key(&a.name));
    if single_json {
        return Call {
            schema: f.schema.clone(),
            name: f.name.clone(),
            args: vec![],
            single_json: Some(f.args[0].ty.clone()),
            body: raw_body.unwrap_or(Value::Object(args.clone())).to_string(),
            variadic_last,
        };
    }
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
    Call {
        schema: f.schema.clone(),
        name: f.name.clone(),
        args: used
            .iter()
            .map(|(i, a)| (format!("a{i}"), a.ty.clone(), a.name.clone()))
            .collect(),
        single_json: None,
        body: Value::Object(positional).to_string(),
        variadic_last,
    }
}

/// A function returning rows (or one composite): plan the select over the call.
fn rows_statement(
    sc: &SchemaCache,
    req: &RestReq,
    st: &Settings,
    f: &schema::Function,
    call: Call,
    mut params: Params,
    media: &Media,
) -> Result<Sql, RestError> {
    let (rel, shape) = match &f.ret {
        RetType::Relation(s, n) => (Some((s.clone(), n.clone())), BodyShape::Rows),
        RetType::Record(_) => (None, BodyShape::Rows),
        RetType::Scalar(_) | RetType::Void => (None, BodyShape::ScalarColumn(f.name.clone())),
    };
    let mut planner = Planner::new(sc, st.aggregates);
    planner.mods = std::mem::take(&mut params.mods);
    let node = planner.node(
        Source::Call(call),
        &f.name,
        rel,
        params.select.as_deref().unwrap_or(&[]),
        &[],
    )?;
    let m = if !f.returns_set && *media == Media::Json {
        Media::Object
    } else {
        media.clone()
    };
    Ok(sql::rpc_rows_sql(
        &node,
        req.prefer.count.is_some(),
        &m,
        req.accept.strip_nulls,
        &shape,
    ))
}

fn rpc_response(
    req: &RestReq,
    f: &schema::Function,
    out: Outcome,
    offset: i64,
    count: bool,
    media: &Media,
    rollback: bool,
) -> Result<Resp, RestError> {
    if matches!(f.ret, RetType::Void) && !f.returns_set {
        return Ok(respond(StatusCode::NO_CONTENT, None, None, vec![]));
    }
    if !f.returns_set {
        let total = if count { "1" } else { "*" };
        if req.prefer.ret == Some(prefer::Return::Minimal) {
            return Ok(respond(
                StatusCode::OK,
                None,
                None,
                vec![("content-range".into(), format!("0-0/{total}"))],
            ));
        }
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
    let minimal = req.prefer.ret == Some(prefer::Return::Minimal);
    let mut resp = finish_read(req, out, offset, total, media, count)?;
    if minimal {
        // `Prefer: return=minimal` (postgrest-js's POST fallback for head with object
        // arguments): status and Content-Range, no body.
        *resp.body_mut() = crate::http::empty();
        resp.headers_mut().remove(http::header::CONTENT_TYPE);
    }
    Ok(resp)
}

pub(super) fn function_not_found(
    sc: &SchemaCache,
    schema: &str,
    fname: &str,
    keys: &[&String],
) -> RestError {
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
