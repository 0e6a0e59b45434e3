//! Plan -> one SQL statement. Pure: no database, no schema cache. User values only ever
//! become `$n` parameters (sent as text, typed by PostgreSQL); identifiers are quoted.
//! The response body is produced by PostgreSQL as a single json text.

use std::fmt::Write as _;

use super::plan::{Call, Child, Cond, Link, Node, OutItem, Source};
use super::prefer::Media;

mod expr;
mod rpc;
mod write;

use expr::{close_cast, write_cast_expr, write_cond, write_order};
pub use rpc::{rpc_rows_sql, rpc_scalar_sql, ScalarBody};
pub use write::{write_sql, Mutation, WritePlan};

#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub params: Vec<String>,
    /// `Prefer: count=planned`: a count query to EXPLAIN (with its own parameters).
    pub count_plan: Option<(String, Vec<String>)>,
    /// `Prefer: count=estimated`: count exactly when the estimate is at most this.
    pub exact_below: Option<i64>,
}

impl Sql {
    pub fn param(&mut self, v: impl Into<String>) -> String {
        self.params.push(v.into());
        format!("${}", self.params.len())
    }

    /// Adds a parameter and writes its `$n` into `out`.
    fn bind(&mut self, out: &mut String, v: impl Into<String>) {
        self.params.push(v.into());
        let _ = write!(out, "${}", self.params.len());
    }
}

/// `"ident"` with embedded quotes doubled.
pub use crate::db::quote_ident as ident;

pub fn qualified(schema: &str, name: &str) -> String {
    let mut s = String::with_capacity(schema.len() + name.len() + 5);
    push_qualified(&mut s, schema, name);
    s
}

/// Writes `"ident"` (embedded quotes doubled) into `out`, without a temporary string.
pub fn push_ident(out: &mut String, s: &str) {
    out.push('"');
    if s.contains('"') {
        out.push_str(&s.replace('"', "\"\""));
    } else {
        out.push_str(s);
    }
    out.push('"');
}

fn push_qualified(out: &mut String, schema: &str, name: &str) {
    push_ident(out, schema);
    out.push('.');
    push_ident(out, name);
}

/// A PostgreSQL array literal of text elements: `{"a","b,c"}`.
pub fn array_literal(items: &[String]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// The FROM item for an RPC call and the call expression.
pub fn call_sql(q: &mut Sql, c: &Call) -> (Option<String>, String) {
    let f = qualified(&c.schema, &c.name);
    if let Some(ty) = &c.single_json {
        let p = q.param(c.body.clone());
        return (None, format!("{f}({p}::{ty})"));
    }
    if c.args.is_empty() {
        return (None, format!("{f}()"));
    }
    let p = q.param(c.body.clone());
    let defs: Vec<String> = c
        .args
        .iter()
        .map(|(k, t, _)| format!("{} {t}", ident(k)))
        .collect();
    let n = c.args.len();
    let uses: Vec<String> = c
        .args
        .iter()
        .enumerate()
        .map(|(i, (k, _, name))| {
            let v = if c.variadic_last && i + 1 == n {
                "VARIADIC "
            } else {
                ""
            };
            if name.is_empty() {
                format!("{v}pgrst_args.{}", ident(k))
            } else {
                format!("{v}{} := pgrst_args.{}", ident(name), ident(k))
            }
        })
        .collect();
    (
        Some(format!(
            "json_to_record({p}::json) AS pgrst_args({})",
            defs.join(", ")
        )),
        format!("{f}({})", uses.join(", ")),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Count,
}

/// One node as a SELECT. `parent` is the parent's alias when this is an embed.
pub fn node_sql(q: &mut Sql, n: &Node, parent: Option<(&str, &Link)>, mode: Mode) -> String {
    let mut out = String::with_capacity(256);
    write_node(q, &mut out, n, parent, mode);
    out
}

/// `", "` before every item of a list but the first.
fn sep(out: &mut String, first: &mut bool, between: &str) {
    if !*first {
        out.push_str(between);
    }
    *first = false;
}

/// Whether a child is joined in `mode`: a count only needs the children that filter rows.
fn joined(n: &Node, ch: &Child, mode: Mode) -> bool {
    mode == Mode::Full
        || ch.inner
        || n.conds
            .iter()
            .any(|c| matches!(c, Cond::EmbedNull { lat, .. } if lat == &ch.lat))
}

/// The SELECT list of a node in `Full` mode; the GROUP BY expressions go to `group` when
/// the node aggregates (copied from the text written, so their `$n` are the same).
fn write_columns(q: &mut Sql, out: &mut String, n: &Node, group: &mut Vec<String>) {
    let aggregated = n.has_aggregates();
    let mut first = true;
    for it in &n.items {
        match it {
            OutItem::Star => {
                match &n.source {
                    Source::Cte(_, cs) if !cs.is_empty() => {
                        for c in cs {
                            sep(out, &mut first, ", ");
                            push_ident(out, &n.alias);
                            out.push('.');
                            push_ident(out, c);
                        }
                    }
                    _ => {
                        sep(out, &mut first, ", ");
                        push_ident(out, &n.alias);
                        out.push_str(".*");
                    }
                }
                if aggregated {
                    group.push(format!("{}.*", ident(&n.alias)));
                }
            }
            OutItem::Expr {
                expr,
                alias,
                cast: c,
                agg,
                agg_cast,
            } => {
                sep(out, &mut first, ", ");
                match agg {
                    Some(ag) => {
                        if agg_cast.is_some() {
                            out.push_str("CAST(");
                        }
                        out.push_str(ag.sql());
                        out.push('(');
                        write_cast_expr(q, out, &n.alias, expr, c);
                        out.push(')');
                        close_cast(out, agg_cast);
                    }
                    None => {
                        let start = out.len();
                        write_cast_expr(q, out, &n.alias, expr, c);
                        if aggregated {
                            group.push(out[start..].to_string());
                        }
                    }
                }
                out.push_str(" AS ");
                push_ident(out, alias);
            }
            OutItem::CountAll { alias, cast: c } => {
                sep(out, &mut first, ", ");
                if c.is_some() {
                    out.push_str("CAST(");
                }
                out.push_str("count(*)");
                close_cast(out, c);
                out.push_str(" AS ");
                push_ident(out, alias);
            }
        }
    }
    let j = if aggregated { "::jsonb" } else { "" };
    for ch in &n.children {
        let mut column = |out: &mut String, name: &str, first: &mut bool| {
            sep(out, first, ", ");
            let start = out.len();
            if ch.to_one {
                push_ident(out, &ch.lat);
                out.push('.');
                push_ident(out, name);
                if !ch.spread {
                    out.push_str(j);
                }
            } else {
                out.push_str("COALESCE(");
                push_ident(out, &ch.lat);
                out.push('.');
                push_ident(out, name);
                out.push_str(", '[]')");
                out.push_str(j);
            }
            if aggregated {
                group.push(out[start..].to_string());
            }
            out.push_str(" AS ");
            push_ident(out, name);
        };
        if ch.spread {
            for c in &ch.columns {
                column(out, c, &mut first);
            }
        } else if ch.node.items.is_empty() && ch.node.children.is_empty() {
            // `rel()`: joined for filtering only, not part of the output.
        } else {
            column(out, &ch.label, &mut first);
        }
    }
}

fn write_node(q: &mut Sql, out: &mut String, n: &Node, parent: Option<(&str, &Link)>, mode: Mode) {
    let mut group: Vec<String> = vec![];
    out.push_str("SELECT ");
    if mode == Mode::Count {
        out.push('1');
    } else {
        write_columns(q, out, n, &mut group);
    }
    out.push_str(" FROM ");
    let a = &n.alias;
    match &n.source {
        Source::Table { schema, name } => push_qualified(out, schema, name),
        Source::Cte(name, _) => push_ident(out, name),
        Source::Call(c) => {
            if matches!(parent, Some((_, Link::Computed))) {
                push_qualified(out, &c.schema, &c.name);
                out.push('(');
                push_ident(out, parent.map(|p| p.0).unwrap_or(""));
                out.push(')');
            } else {
                let (pre, call) = call_sql(q, c);
                if let Some(p) = pre {
                    out.push_str(&p);
                    out.push_str(", LATERAL ");
                }
                out.push_str(&call);
            }
        }
    }
    out.push_str(" AS ");
    push_ident(out, a);
    // The link to the parent: a junction joins here; its conditions open the WHERE.
    let mut link_conds: &[(String, String)] = &[];
    let mut link_left = a.as_str();
    if let Some((_, link)) = parent {
        match link {
            Link::Fk(pairs) => link_conds = pairs,
            Link::Junction {
                schema,
                name,
                alias,
                child,
                parent: pairs,
            } => {
                out.push_str(" INNER JOIN ");
                push_qualified(out, schema, name);
                out.push_str(" AS ");
                push_ident(out, alias);
                out.push_str(" ON ");
                let mut first = true;
                for (c, j) in child {
                    sep(out, &mut first, " AND ");
                    push_ident(out, a);
                    out.push('.');
                    push_ident(out, c);
                    out.push_str(" = ");
                    push_ident(out, alias);
                    out.push('.');
                    push_ident(out, j);
                }
                link_conds = pairs;
                link_left = alias;
            }
            Link::Computed => {}
        }
    }
    for ch in &n.children {
        if joined(n, ch, mode) {
            write_lateral(q, out, n, ch);
        }
    }
    let mut first_where = true;
    let mut where_kw = |out: &mut String| {
        out.push_str(if first_where { " WHERE " } else { " AND " });
        first_where = false;
    };
    if let Some((palias, _)) = parent {
        for (c, p) in link_conds {
            where_kw(out);
            push_ident(out, link_left);
            out.push('.');
            push_ident(out, c);
            out.push_str(" = ");
            push_ident(out, palias);
            out.push('.');
            push_ident(out, p);
        }
    }
    for ch in &n.children {
        if ch.inner && !ch.to_one && joined(n, ch, mode) {
            where_kw(out);
            push_ident(out, &ch.lat);
            out.push('.');
            push_ident(out, &ch.label);
            out.push_str(" IS NOT NULL");
        }
    }
    for c in &n.conds {
        where_kw(out);
        write_cond(q, out, &n.alias, c);
    }
    if mode == Mode::Count {
        return;
    }
    if !group.is_empty() {
        out.push_str(" GROUP BY ");
        out.push_str(&group.join(", "));
    }
    for (i, o) in n.order.iter().enumerate() {
        out.push_str(if i == 0 { " ORDER BY " } else { ", " });
        write_order(q, out, &n.alias, o);
    }
    if let Some(l) = n.limit {
        let _ = write!(out, " LIMIT {l}");
    }
    if let Some(o) = n.offset {
        if o > 0 {
            let _ = write!(out, " OFFSET {o}");
        }
    }
}

fn write_lateral(q: &mut Sql, out: &mut String, parent: &Node, ch: &Child) {
    out.push_str(if ch.inner && ch.to_one {
        " INNER JOIN LATERAL ("
    } else {
        " LEFT JOIN LATERAL ("
    });
    let inner = |q: &mut Sql, out: &mut String| {
        write_node(
            q,
            out,
            &ch.node,
            Some((&parent.alias, &ch.link)),
            Mode::Full,
        )
    };
    if ch.spread && ch.to_one {
        inner(q, out);
    } else {
        out.push_str("SELECT ");
        if ch.spread {
            let mut first = true;
            for c in &ch.columns {
                sep(out, &mut first, ", ");
                out.push_str("json_agg(pgrst_x.");
                push_ident(out, c);
                out.push_str(") AS ");
                push_ident(out, c);
            }
            if first {
                out.push_str("NULL");
            }
        } else {
            out.push_str(if ch.to_one {
                "row_to_json(pgrst_x.*) AS "
            } else {
                "json_agg(pgrst_x.*) AS "
            });
            push_ident(out, &ch.label);
        }
        out.push_str(" FROM (");
        inner(q, out);
        out.push_str(") AS pgrst_x");
    }
    out.push_str(") AS ");
    push_ident(out, &ch.lat);
    out.push_str(" ON TRUE");
}

/// How the outer query turns rows into the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyShape {
    /// Array of row objects.
    Rows,
    /// Array of one column's values (set-returning scalar function).
    ScalarColumn(String),
}

pub fn body_expr(media: &Media, strip_nulls: bool, shape: &BodyShape) -> String {
    let rows = match shape {
        BodyShape::Rows => {
            if strip_nulls {
                "json_agg(json_strip_nulls(row_to_json(pgrst_t)))".to_string()
            } else {
                "json_agg(pgrst_t)".to_string()
            }
        }
        BodyShape::ScalarColumn(c) => format!("json_agg(pgrst_t.{})", ident(c)),
    };
    match media {
        Media::Object => format!("coalesce(({rows})->0, 'null')::text"),
        Media::Csv => "(SELECT coalesce(string_agg(pgrst_k, ','), '') FROM json_object_keys(json_agg(pgrst_t)->0) AS pgrst_k) || E'\\n' || coalesce(string_agg(substring(pgrst_t::text, 2, length(pgrst_t::text) - 2), E'\\n'), '')".to_string(),
        Media::GeoJson => "json_build_object('type', 'FeatureCollection', 'features', coalesce(json_agg(extensions.ST_AsGeoJSON(pgrst_t)::json), '[]'))::text".to_string(),
        _ => format!("coalesce({rows}, '[]')::text"),
    }
}

/// The outer SELECT over a node: total (or NULL), page count, body, first row.
pub fn wrap_read(
    q: &mut Sql,
    node: &Node,
    count: bool,
    media: &Media,
    strip: bool,
    shape: &BodyShape,
    with: Option<String>,
) -> String {
    let mut out = String::with_capacity(512);
    if let Some(w) = with {
        out.push_str("WITH ");
        out.push_str(&w);
        out.push(' ');
    }
    out.push_str("SELECT ");
    if count {
        out.push_str("(SELECT count(*) FROM (");
        write_node(q, &mut out, node, None, Mode::Count);
        out.push_str(") AS pgrst_c)");
    } else {
        out.push_str("NULL::int8");
    }
    out.push_str(" AS total, pg_catalog.count(pgrst_t) AS page, ");
    out.push_str(&body_expr(media, strip, shape));
    out.push_str(" AS body, NULL::text AS location FROM (");
    write_node(q, &mut out, node, None, Mode::Full);
    out.push_str(") AS pgrst_t");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::plan::{Expr, Node, OutItem, Source};
    use crate::rest::query::Op;

    /// A bare plan node (all columns, no conditions) over `source`; also used by the
    /// submodules' tests.
    pub(super) fn node(source: Source, alias: &str) -> Node {
        Node {
            source,
            alias: alias.into(),
            rel: None,
            items: vec![OutItem::Star],
            conds: vec![],
            order: vec![],
            limit: None,
            offset: None,
            children: vec![],
        }
    }

    fn table(name: &str) -> Node {
        node(
            Source::Table {
                schema: "public".into(),
                name: name.into(),
            },
            name,
        )
    }

    #[test]
    fn values_are_parameters() {
        let mut n = table("books");
        n.conds.push(Cond::Filter {
            expr: Expr {
                column: "title\"; drop".into(),
                computed: None,
                path: vec![],
            },
            negate: true,
            op: Op::In(vec!["a'b".into(), "c,d".into()]),
        });
        let mut q = Sql::default();
        let s = wrap_read(
            &mut q,
            &n,
            true,
            &Media::Json,
            false,
            &BodyShape::Rows,
            None,
        );
        assert!(
            s.contains("NOT (\"books\".\"title\"\"; drop\" = ANY($1))"),
            "{s}"
        );
        assert_eq!(q.params[0], "{\"a'b\",\"c,d\"}");
        assert!(!s.contains("a'b"));
    }

    #[test]
    fn idents() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            array_literal(&["x\\y".into(), "\"".into()]),
            "{\"x\\\\y\",\"\\\"\"}"
        );
    }
}
