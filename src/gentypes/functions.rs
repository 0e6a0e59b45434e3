//! The Functions block: each callable function's Args and Returns, overloads as a union,
//! with PostgREST's embedding hints (SetofOptions) and its ambiguity errors as types.

use std::collections::BTreeMap;

use super::catalog::{Arg, Function};
use super::schema::return_type;
use super::typescript::{locale_cmp, View};

type Entry<'a> = (&'a Function, Vec<&'a Arg>);

fn args_type(v: &View, schema: &str, in_args: &[&Arg]) -> String {
    if in_args.is_empty() {
        // Callable with no arguments (what the current generator prints).
        return "Record<PropertyKey, never>".into();
    }
    let items: Vec<String> = in_args
        .iter()
        .map(|a| {
            let ts = v.ts_of(schema, a.type_id);
            format!(
                "{}{}: {}",
                v.key(&a.name),
                if a.has_default { "?" } else { "" },
                ts
            )
        })
        .collect();
    format!("{{ {} }}", items.join("; "))
}

/// `Returns` with `[]` for sets and the SetofOptions PostgREST embedding uses.
fn returns(v: &View, f: &Function, base: String) -> String {
    let table = v.result_relation_name(f);
    let many = f.prorows.map(|r| r > 1.0).unwrap_or(false);
    let mut setof = table
        .as_ref()
        .map(|t| ("*".to_string(), t.clone(), !many, f.is_set_returning));
    if f.args.len() == 1 {
        if let Some(src) = v.relation_type(f.args[0].type_id) {
            let set_of_table = f.is_set_returning && f.return_type_relation_id.is_some();
            if let Some(t) = &table {
                setof = Some(if set_of_table {
                    (src.format.clone(), t.clone(), !many, true)
                } else {
                    (src.format.clone(), t.clone(), true, false)
                });
            }
        }
    }
    let collapse = !many && table.is_some();
    let mut out = base;
    if f.is_set_returning && !collapse {
        out.push_str("[]");
    }
    if let Some((from, to, one, set)) = setof {
        out.push_str(&format!(
            "\n  SetofOptions: {{ from: {}; to: {}; isOneToOne: {one}; isSetofReturn: {set} }}",
            v.quote(&from),
            v.quote(&to)
        ));
    }
    out
}

fn type_name(v: &View, id: i64) -> String {
    v.type_by_id(id)
        .map(|t| t.name.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// PostgREST cannot choose between these overloads: the message it would answer with.
fn conflict(
    v: &View,
    schema: &str,
    group: &[Entry],
    f: &Function,
    in_args: &[&Arg],
) -> Option<String> {
    if group.len() <= 1 {
        return None;
    }
    let others = group.iter().filter(|(g, _)| !std::ptr::eq(*g, f));
    if in_args.is_empty() {
        let c = others
            .clone()
            .find(|(_, a)| a.len() == 1 && a[0].name.is_empty() && a[0].has_default)?;
        return Some(format!(
            "Could not choose the best candidate function between: {schema}.{n}(), {schema}.{n}( => {}). Try renaming the parameters or the function itself in the database so function overloading can be resolved",
            type_name(v, c.0.return_type_id),
            n = f.name
        ));
    }
    if in_args.len() == 1 && !in_args[0].name.is_empty() {
        let mut all: Vec<&Entry> = others
            .filter(|(_, a)| {
                a.len() == 1 && a[0].name == in_args[0].name && a[0].type_id != in_args[0].type_id
            })
            .collect();
        if all.is_empty() {
            return None;
        }
        let me: Entry = (f, in_args.to_vec());
        all.push(&me);
        all.sort_by_key(|(_, a)| a.first().map(|x| x.type_id).unwrap_or(0));
        let list: Vec<String> = all
            .iter()
            .map(|(_, a)| {
                let inner: Vec<String> = a
                    .iter()
                    .map(|x| format!("{} => {}", x.name, type_name(v, x.type_id)))
                    .collect();
                format!("{schema}.{}({})", f.name, inner.join(", "))
            })
            .collect();
        return Some(format!(
            "Could not choose the best candidate function between: {}. Try renaming the parameters or the function itself in the database so function overloading can be resolved",
            list.join(", ")
        ));
    }
    None
}

fn signature(v: &View, schema: &str, group: &[Entry], (f, in_args): &Entry) -> String {
    let args = args_type(v, schema, in_args);
    let mut ret = return_type(v, schema, f);
    if let Some(msg) = conflict(v, schema, group, f, in_args) {
        ret = format!("{{ error: true }} & {}", v.quote(&msg));
    } else if in_args.len() == 1
        && in_args[0].name.is_empty()
        && v.relation_type(in_args[0].type_id).is_some()
        && v.result_relation_name(f).is_none()
    {
        let msg = format!(
            "the function {schema}.{} with parameter or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache",
            f.name
        );
        ret = format!("{{ error: true }} & {}", v.quote(&msg));
    }
    format!("{{ Args: {args}; Returns: {} }}", returns(v, f, ret))
}

pub fn render(v: &View, schema: &str) -> Vec<String> {
    let mut groups: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for e in v.functions(schema) {
        if !groups.contains_key(&e.0.name) {
            order.push(e.0.name.clone());
        }
        groups.entry(e.0.name.clone()).or_default().push(e);
    }
    order.sort_by(|a, b| locale_cmp(a, b));
    let mut out = Vec::new();
    for name in order {
        let mut group = groups.remove(&name).unwrap_or_default();
        group.sort_by(|a, b| {
            locale_cmp(&a.0.argument_types, &b.0.argument_types)
                .then_with(|| locale_cmp(&a.0.return_type, &b.0.return_type))
        });
        let sigs: Vec<String> = group
            .iter()
            .map(|e| signature(v, schema, &group, e))
            .collect();
        if sigs.len() == 1 {
            out.push(format!("      {}: {}\n", v.key(&name), sigs[0]));
        } else {
            let mut s = format!("      {}:\n", v.key(&name));
            for sig in sigs {
                s.push_str(&format!("        | {sig}\n"));
            }
            out.push(s);
        }
    }
    out
}
