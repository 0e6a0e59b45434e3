//! Relationships through views, as PostgREST's schema cache (and so the CLI's generator)
//! finds them: a view that shows all columns of a foreign key, or all columns it refers
//! to, takes part in that relationship. Which table column a view column shows comes from
//! the `resorigtbl`/`resorigcol` of the view query's target list (`pg_rewrite.ev_action`),
//! followed through views of views.

use std::collections::HashMap;

use serde::Deserialize;
use tokio_postgres::Client;

use super::catalog::{list, Relationship};

#[derive(Debug, Deserialize)]
struct ViewRow {
    id: i64,
    schema: String,
    name: String,
    action: String,
}

#[derive(Debug, Deserialize)]
struct AttRow {
    rel: i64,
    num: i64,
    name: String,
}

#[derive(Debug, Deserialize)]
struct RelRow {
    id: i64,
    schema: String,
    name: String,
}

const VIEWS: &str = "
select c.oid::int8 as id, n.nspname as schema, c.relname as name, r.ev_action::text as action
from pg_class c join pg_namespace n on n.oid = c.relnamespace
join pg_rewrite r on r.ev_class = c.oid and r.rulename = '_RETURN'
where c.relkind in ('v', 'm') and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')";

const ATTS: &str = "
select a.attrelid::int8 as rel, a.attnum::int8 as num, a.attname as name
from pg_attribute a join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
where a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'f', 'v', 'm')
  and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')";

const RELS: &str = "
select c.oid::int8 as id, n.nspname as schema, c.relname as name
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p', 'f', 'v', 'm')
  and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')";

/// A view's columns and the base table column each one shows, if any.
struct ViewCols {
    schema: String,
    name: String,
    /// (view column, base relation, base column)
    cols: Vec<(String, (String, String), String)>,
}

// ---- a reader for PostgreSQL's node-tree text -------------------------------------

#[derive(Debug)]
enum Node {
    Atom(String),
    List(Vec<Node>),
    Struct(String, Vec<(String, Vec<Node>)>),
}

fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '(' | ')' | '{' | '}' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse(toks: &[String], i: &mut usize) -> Option<Node> {
    let t = toks.get(*i)?.clone();
    *i += 1;
    match t.as_str() {
        "{" => {
            let name = toks.get(*i)?.clone();
            *i += 1;
            let mut fields = Vec::new();
            while let Some(t) = toks.get(*i) {
                if t == "}" {
                    *i += 1;
                    break;
                }
                let key = t.trim_start_matches(':').to_string();
                *i += 1;
                let mut vals = Vec::new();
                while let Some(n) = toks.get(*i) {
                    if n == "}" || (n.starts_with(':') && n.len() > 1) {
                        break;
                    }
                    vals.push(parse(toks, i)?);
                }
                fields.push((key, vals));
            }
            Some(Node::Struct(name, fields))
        }
        "(" => {
            let mut items = Vec::new();
            while let Some(n) = toks.get(*i) {
                if n == ")" {
                    *i += 1;
                    break;
                }
                items.push(parse(toks, i)?);
            }
            Some(Node::List(items))
        }
        _ => Some(Node::Atom(t)),
    }
}

fn field<'n>(fields: &'n [(String, Vec<Node>)], key: &str) -> Option<&'n [Node]> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

fn atom(fields: &[(String, Vec<Node>)], key: &str) -> Option<String> {
    match field(fields, key)?.first()? {
        Node::Atom(a) => Some(a.clone()),
        _ => None,
    }
}

/// (resname, resorigtbl, resorigcol) of the top-level query's visible target entries.
fn target_origins(action: &str) -> Vec<(String, i64, i64)> {
    let toks = tokens(action);
    let mut i = 0;
    // ev_action is a list holding the one Query.
    let query = match parse(&toks, &mut i) {
        Some(Node::List(items)) => items.into_iter().next(),
        other => other,
    };
    let Some(Node::Struct(name, fields)) =
        query.filter(|q| matches!(q, Node::Struct(n, _) if n == "QUERY"))
    else {
        return vec![];
    };
    debug_assert_eq!(name, "QUERY");
    let Some([Node::List(entries)]) = field(&fields, "targetList") else {
        return vec![];
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Node::Struct(_, f) if atom(f, "resjunk").as_deref() != Some("true") => Some((
                atom(f, "resname")?,
                atom(f, "resorigtbl")?.parse().ok()?,
                atom(f, "resorigcol")?.parse().ok()?,
            )),
            _ => None,
        })
        .collect()
}

// ---- relationships ------------------------------------------------------------------

async fn view_columns(client: &Client) -> Result<Vec<ViewCols>, String> {
    let views: Vec<ViewRow> = list(client, VIEWS, &[]).await?;
    if views.is_empty() {
        return Ok(vec![]);
    }
    let atts: Vec<AttRow> = list(client, ATTS, &[]).await?;
    let rels: Vec<RelRow> = list(client, RELS, &[]).await?;
    let att: HashMap<(i64, i64), &str> = atts
        .iter()
        .map(|a| ((a.rel, a.num), a.name.as_str()))
        .collect();
    let rel: HashMap<i64, (&str, &str)> = rels
        .iter()
        .map(|r| (r.id, (r.schema.as_str(), r.name.as_str())))
        .collect();
    let origins: HashMap<i64, Vec<(String, i64, i64)>> = views
        .iter()
        .map(|v| (v.id, target_origins(&v.action)))
        .collect();
    // Follow a column through views of views to the base relation it comes from.
    let resolve = |mut tbl: i64, mut col: i64| -> Option<(i64, i64)> {
        for _ in 0..32 {
            match origins.get(&tbl) {
                None => return Some((tbl, col)),
                Some(o) => {
                    let name = att.get(&(tbl, col))?;
                    let (_, t, c) = o.iter().find(|(n, _, _)| n == name)?;
                    if *t == 0 {
                        return None;
                    }
                    (tbl, col) = (*t, *c);
                }
            }
        }
        None
    };
    Ok(views
        .iter()
        .map(|v| ViewCols {
            schema: v.schema.clone(),
            name: v.name.clone(),
            cols: origins[&v.id]
                .iter()
                .filter(|(_, t, _)| *t != 0)
                .filter_map(|(n, t, c)| {
                    let (bt, bc) = resolve(*t, *c)?;
                    let (s, r) = rel.get(&bt)?;
                    let colname = att.get(&(bt, bc))?;
                    Some((
                        n.clone(),
                        (s.to_string(), r.to_string()),
                        colname.to_string(),
                    ))
                })
                .collect(),
        })
        .collect())
}

/// Every choice of view columns that shows `cols` of `schema.table`, in order.
fn covers(v: &ViewCols, schema: &str, table: &str, cols: &[String]) -> Vec<Vec<String>> {
    let mut combos: Vec<Vec<String>> = vec![vec![]];
    for c in cols {
        let shown: Vec<&String> = v
            .cols
            .iter()
            .filter(|(_, (s, t), bc)| s == schema && t == table && bc == c)
            .map(|(n, _, _)| n)
            .collect();
        if shown.is_empty() {
            return vec![];
        }
        combos = combos
            .into_iter()
            .flat_map(|pre| {
                shown.iter().map(move |n| {
                    let mut p = pre.clone();
                    p.push((*n).clone());
                    p
                })
            })
            .collect();
    }
    combos
}

pub async fn load(client: &Client, fks: &[Relationship]) -> Result<Vec<Relationship>, String> {
    let views = view_columns(client).await?;
    let mut out = Vec::new();
    for r in fks {
        let mut from_views = Vec::new();
        let mut to_views = Vec::new();
        for v in &views {
            for cols in covers(v, &r.schema, &r.relation, &r.columns) {
                from_views.push((v, cols));
            }
            for cols in covers(
                v,
                &r.referenced_schema,
                &r.referenced_relation,
                &r.referenced_columns,
            ) {
                to_views.push((v, cols));
            }
        }
        for (v, cols) in &from_views {
            out.push(Relationship {
                schema: v.schema.clone(),
                relation: v.name.clone(),
                columns: cols.clone(),
                ..r.clone()
            });
        }
        for (w, cols) in &to_views {
            out.push(Relationship {
                referenced_schema: w.schema.clone(),
                referenced_relation: w.name.clone(),
                referenced_columns: cols.clone(),
                ..r.clone()
            });
        }
        for (v, cols) in &from_views {
            for (w, refs) in &to_views {
                out.push(Relationship {
                    schema: v.schema.clone(),
                    relation: v.name.clone(),
                    columns: cols.clone(),
                    referenced_schema: w.schema.clone(),
                    referenced_relation: w.name.clone(),
                    referenced_columns: refs.clone(),
                    ..r.clone()
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_list_origins_are_read_from_the_node_tree() {
        let action = "({QUERY :commandType 1 :rtable ({RTE :alias <> :eref {ALIAS :aliasname t \
            :colnames (\"a\" \"b\")} :rtekind 0}) :targetList ({TARGETENTRY :expr {VAR :varno 1 \
            :varattno 1} :resno 1 :resname my\\ id :ressortgroupref 0 :resorigtbl 16401 \
            :resorigcol 1 :resjunk false} {TARGETENTRY :expr {CONST :consttype 23 :constvalue 4 \
            [ 1 0 0 0 0 0 0 0 ]} :resno 2 :resname k :ressortgroupref 0 :resorigtbl 0 \
            :resorigcol 0 :resjunk false}) :override 0})";
        assert_eq!(
            target_origins(action),
            vec![("my id".to_string(), 16401, 1), ("k".to_string(), 0, 0)]
        );
    }
}
