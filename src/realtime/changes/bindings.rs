//! The `postgres_changes` bindings of a join: their parameters, filters and how a record is
//! matched against them.

use serde_json::{Map, Value};

use crate::state::AppState;

#[derive(Debug, Clone, PartialEq)]
pub enum FilterOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Is,
    Like,
    Ilike,
    IsDistinct,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: String,
    pub op: FilterOp,
    pub value: String,
    pub negate: bool,
}

/// One `postgres_changes` entry of a join, as the server matches it.
#[derive(Debug, Clone, PartialEq)]
pub struct PgBinding {
    pub id: u32,
    /// `*`, `INSERT`, `UPDATE` or `DELETE`.
    pub action: String,
    pub schema: String,
    /// `*` for every table of the schema.
    pub table: String,
    pub filters: Vec<Filter>,
    /// `select`: only these columns (plus the primary key) are delivered.
    pub select: Option<Vec<String>>,
}

/// A stable id for a binding's parameters (Supabase uses a hash of them too).
pub fn binding_id(params: &Value) -> u32 {
    let mut clean = params.clone();
    if let Some(o) = clean.as_object_mut() {
        o.remove("id");
    }
    let s = clean.to_string();
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h & 0x07ff_ffff
}

/// Split at top-level commas (not inside parentheses or double quotes).
fn split_top_level(s: &str) -> Vec<String> {
    let (mut depth, mut quoted, mut cur, mut out) = (0i32, false, String::new(), vec![]);
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn parse_filter(seg: &str) -> Result<Filter, String> {
    let seg = seg.trim();
    let err = || {
        let parts: Vec<&str> = seg.splitn(2, '=').collect();
        let shown: Vec<String> = match parts.as_slice() {
            [_, rest] => rest.splitn(2, '.').map(|p| format!("{p:?}")).collect(),
            _ => vec![format!("{seg:?}")],
        };
        format!("Error parsing `filter` params: [{}]", shown.join(", "))
    };
    let (column, rest) = seg.split_once('=').ok_or_else(err)?;
    if column.is_empty() {
        return Err(err());
    }
    let (negate, rest) = match rest.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (op, value) = rest.split_once('.').ok_or_else(err)?;
    let op = match op {
        "eq" => FilterOp::Eq,
        "neq" => FilterOp::Neq,
        "lt" => FilterOp::Lt,
        "lte" => FilterOp::Lte,
        "gt" => FilterOp::Gt,
        "gte" => FilterOp::Gte,
        "in" => FilterOp::In,
        "is" => FilterOp::Is,
        "like" => FilterOp::Like,
        "ilike" => FilterOp::Ilike,
        "isdistinct" => FilterOp::IsDistinct,
        _ => return Err(err()),
    };
    if op == FilterOp::In && !(value.starts_with('(') && value.ends_with(')')) {
        return Err(err());
    }
    Ok(Filter {
        column: column.to_string(),
        op,
        value: value.to_string(),
        negate,
    })
}

/// Parse one join entry with Supabase's rules (schema+table[+filter], schema only, table only).
pub fn parse_binding(p: &Value, id: u32) -> Result<PgBinding, String> {
    let action = match p
        .get("event")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
    {
        Some(e) if matches!(e.as_str(), "INSERT" | "UPDATE" | "DELETE") => e,
        _ => "*".to_string(),
    };
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let has = |k: &str| p.get(k).is_some_and(|v| !v.is_null());
    let (schema, table, filter) = match (s("schema"), s("table"), s("filter")) {
        (Some(sc), Some(t), f) if f.is_some() || !has("filter") => (sc, t, f),
        (Some(sc), None, None) if !has("table") && !has("filter") => (sc, "*".into(), None),
        (None, Some(t), None) if !has("schema") && !has("filter") => ("public".into(), t, None),
        _ => {
            return Err(format!(
                "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {p}"
            ))
        }
    };
    let select = match p.get("select") {
        None | Some(Value::Null) => None,
        Some(Value::Array(cols)) => {
            let cols: Vec<String> = cols
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            (!cols.is_empty()).then_some(cols)
        }
        Some(_) => {
            return Err("Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]".into())
        }
    };
    if select.is_some() && (schema == "*" || table == "*") {
        return Err("Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.".into());
    }
    let mut filters = vec![];
    if let Some(f) = filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
        for seg in split_top_level(f) {
            filters.push(parse_filter(&seg)?);
        }
    }
    Ok(PgBinding {
        id,
        action,
        schema,
        table,
        filters,
        select,
    })
}

fn in_list(v: &str) -> Vec<String> {
    let inner = &v[1..v.len() - 1];
    split_top_level(inner)
        .into_iter()
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

fn like_match(pattern: &str, text: &str, ci: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if ci {
        (
            pattern.to_lowercase().chars().collect(),
            text.to_lowercase().chars().collect(),
        )
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    // Iterative wildcard match: % any run, _ one char (PostgREST also accepts *).
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && (p[pi] == '%' || p[pi] == '*') {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && (p[pi] == '%' || p[pi] == '*') {
        pi += 1;
    }
    pi == p.len()
}

fn compare(v: &Value, f: &str) -> Option<std::cmp::Ordering> {
    match v {
        Value::Number(n) => n.as_f64()?.partial_cmp(&f.parse::<f64>().ok()?),
        Value::Bool(b) => Some(b.cmp(&f.parse::<bool>().ok()?)),
        Value::String(s) => Some(s.as_str().cmp(f)),
        Value::Null => None,
        other => Some(other.to_string().as_str().cmp(f)),
    }
}

pub(super) fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Does a row (JSON record) pass every filter of a binding?
pub fn passes(filters: &[Filter], record: &Map<String, Value>) -> bool {
    use std::cmp::Ordering::*;
    filters.iter().all(|f| {
        let v = record.get(&f.column).unwrap_or(&Value::Null);
        let r = match f.op {
            FilterOp::Eq => compare(v, &f.value) == Some(Equal),
            FilterOp::Neq => matches!(compare(v, &f.value), Some(Less | Greater)),
            FilterOp::Lt => compare(v, &f.value) == Some(Less),
            FilterOp::Lte => matches!(compare(v, &f.value), Some(Less | Equal)),
            FilterOp::Gt => compare(v, &f.value) == Some(Greater),
            FilterOp::Gte => matches!(compare(v, &f.value), Some(Greater | Equal)),
            FilterOp::In => in_list(&f.value)
                .iter()
                .any(|x| compare(v, x) == Some(Equal)),
            FilterOp::Is => match f.value.to_ascii_lowercase().as_str() {
                "null" => v.is_null(),
                "true" => v == &Value::Bool(true),
                "false" => v == &Value::Bool(false),
                _ => false,
            },
            FilterOp::Like => !v.is_null() && like_match(&f.value, &as_text(v), false),
            FilterOp::Ilike => !v.is_null() && like_match(&f.value, &as_text(v), true),
            FilterOp::IsDistinct => {
                if f.value.eq_ignore_ascii_case("null") {
                    !v.is_null()
                } else {
                    v.is_null() || compare(v, &f.value) != Some(Equal)
                }
            }
        };
        r != f.negate
    })
}

/// Is the binding's table in the `supabase_realtime` publication?
pub async fn check_published(state: &AppState, b: &PgBinding) -> Result<(), String> {
    let fail = || {
        let filters: Vec<String> = b
            .filters
            .iter()
            .map(|f| {
                format!(
                    "{{{:?}, {:?}, {:?}}}",
                    f.column,
                    format!("{:?}", f.op).to_lowercase(),
                    f.value
                )
            })
            .collect();
        format!(
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: {}, schema: {}, table: {}, filters: [{}]]",
            b.action,
            b.schema,
            b.table,
            filters.join(", ")
        )
    };
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "select 1 from pg_publication_tables where pubname = 'supabase_realtime'
               and ($1 = '*' or schemaname = $1) and ($2 = '*' or tablename = $2) limit 1",
            &[&b.schema, &b.table],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    if rows.is_empty() {
        return Err(fail());
    }
    Ok(())
}

/// Keep only the selected columns (and the primary key) in a change's data.
pub(super) fn select_columns(data: &Value, cols: &[String], pk: &[String]) -> Value {
    let keep = |name: &str| cols.iter().any(|c| c == name) || pk.iter().any(|c| c == name);
    let mut d = data.clone();
    for k in ["record", "old_record"] {
        if let Some(o) = d.get_mut(k).and_then(Value::as_object_mut) {
            o.retain(|name, _| keep(name));
        }
    }
    if let Some(a) = d.get_mut("columns").and_then(Value::as_array_mut) {
        a.retain(|c| c["name"].as_str().is_some_and(keep));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_bindings_like_supabase() {
        let b = parse_binding(
            &json!({"event":"INSERT","schema":"public","table":"messages","filter":"user_id=eq.7"}),
            1,
        )
        .unwrap();
        assert_eq!(b.action, "INSERT");
        assert_eq!(b.filters[0].op, FilterOp::Eq);
        assert_eq!(b.filters[0].value, "7");
        let b = parse_binding(&json!({"event":"*","schema":"public"}), 1).unwrap();
        assert_eq!(b.table, "*");
        let b = parse_binding(&json!({"table":"t"}), 1).unwrap();
        assert_eq!(b.schema, "public");
        let b = parse_binding(
            &json!({"event":"*","schema":"s","table":"t","filter":"a=in.(x,\"y,z\"),b=not.gt.3"}),
            1,
        )
        .unwrap();
        assert_eq!(b.filters.len(), 2);
        assert!(b.filters[1].negate);
        assert!(
            parse_binding(&json!({"schema":"s","table":"t","filter":"a=foo.1"}), 1)
                .unwrap_err()
                .starts_with("Error parsing `filter` params")
        );
        assert!(parse_binding(&json!({"event":"*"}), 1)
            .unwrap_err()
            .starts_with("No subscription params provided"));
        let b = parse_binding(&json!({"schema":"s","table":"t","select":["a"]}), 1).unwrap();
        assert_eq!(b.select, Some(vec!["a".to_string()]));
        assert!(parse_binding(&json!({"schema":"s","select":["a"]}), 1)
            .unwrap_err()
            .starts_with("Column selection is not supported"));
        assert!(parse_binding(&json!({"schema":"s","table":"t","select":"a"}), 1).is_err());
        let d = select_columns(
            &json!({"record":{"id":1,"a":2,"b":3},"columns":[{"name":"id"},{"name":"a"},{"name":"b"}]}),
            &["a".to_string()],
            &["id".to_string()],
        );
        assert_eq!(d["record"], json!({"id":1,"a":2}));
        assert_eq!(d["columns"].as_array().unwrap().len(), 2);
        assert_eq!(
            binding_id(&json!({"event":"*","schema":"public"})),
            binding_id(&json!({"event":"*","schema":"public"}))
        );
    }

    #[test]
    fn filters_evaluate() {
        let rec: Map<String, Value> = serde_json::from_value(
            json!({"n": 5, "s": "hello", "b": true, "z": null, "u": "7f1b7c3e-6a39-4d2b-9a55-0e0c1d7e2f11"}),
        )
        .unwrap();
        let f = |s: &str| vec![parse_filter(s).unwrap()];
        assert!(passes(&f("n=eq.5"), &rec));
        assert!(passes(&f("n=gt.4.5"), &rec));
        assert!(!passes(&f("n=lt.5"), &rec));
        assert!(passes(&f("n=lte.5"), &rec));
        assert!(passes(&f("n=neq.6"), &rec));
        assert!(passes(&f("n=in.(1,5)"), &rec));
        assert!(!passes(&f("n=in.(1,2)"), &rec));
        assert!(passes(&f("s=eq.hello"), &rec));
        assert!(passes(&f("s=like.he%"), &rec));
        assert!(passes(&f("s=ilike.HE_LO"), &rec));
        assert!(passes(&f("s=not.eq.bye"), &rec));
        assert!(passes(&f("b=is.true"), &rec));
        assert!(passes(&f("z=is.null"), &rec));
        assert!(!passes(&f("z=eq.1"), &rec));
        assert!(passes(
            &f("u=eq.7f1b7c3e-6a39-4d2b-9a55-0e0c1d7e2f11"),
            &rec
        ));
    }
}
