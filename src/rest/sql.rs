//! Plan -> one SQL statement. Pure: no database, no schema cache. User values only ever
//! become `$n` parameters (sent as text, typed by PostgreSQL); identifiers are quoted.
//! The response body is produced by PostgreSQL as a single json text.

use super::plan::{Call, Child, Cond, Link, Node, OrderItem, OutItem, Source};
use super::prefer::Media;
use super::query::{IsVal, JsonKey, Op, Quant};

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
}

/// `"ident"` with embedded quotes doubled.
pub use crate::db::quote_ident as ident;

pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// A PostgreSQL array literal of text elements: `{"a","b,c"}`.
pub fn array_literal(items: &[String]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn expr_sql(q: &mut Sql, alias: &str, e: &super::plan::Expr) -> String {
    let mut s = match &e.computed {
        Some((fs, fname)) => format!("{}({})", qualified(fs, fname), ident(alias)),
        None => format!("{}.{}", ident(alias), ident(&e.column)),
    };
    for op in &e.path {
        let arrow = if op.text { "->>" } else { "->" };
        match &op.key {
            JsonKey::Key(k) => {
                let p = q.param(k.clone());
                s = format!("{s}{arrow}{p}::text");
            }
            JsonKey::Idx(i) => s = format!("{s}{arrow}{i}"),
        }
    }
    s
}

fn cast(s: String, ty: &Option<String>) -> String {
    match ty {
        Some(t) => format!("CAST({s} AS {t})"),
        None => s,
    }
}

fn simple_op(op: &str) -> &'static str {
    match op {
        "eq" => "=",
        "neq" => "<>",
        "gt" => ">",
        "gte" => ">=",
        "lt" => "<",
        "lte" => "<=",
        "like" => "LIKE",
        "ilike" => "ILIKE",
        "match" => "~",
        "imatch" => "~*",
        "isdistinct" => "IS DISTINCT FROM",
        "cs" => "@>",
        "cd" => "<@",
        "ov" => "&&",
        "sl" => "<<",
        "sr" => ">>",
        "nxl" => "&>",
        "nxr" => "&<",
        "adj" => "-|-",
        _ => "=",
    }
}

fn cond_sql(q: &mut Sql, alias: &str, c: &Cond) -> String {
    match c {
        Cond::Filter { expr, negate, op } => {
            let e = expr_sql(q, alias, expr);
            let s = match op {
                Op::Simple { op, quant, value } => {
                    let v = if op == "like" || op == "ilike" {
                        value.replace('*', "%")
                    } else {
                        value.clone()
                    };
                    let p = q.param(v);
                    match quant {
                        None => format!("{e} {} {p}", simple_op(op)),
                        Some(Quant::Any) => format!("{e} {} ANY({p})", simple_op(op)),
                        Some(Quant::All) => format!("{e} {} ALL({p})", simple_op(op)),
                    }
                }
                Op::In(vals) => {
                    let p = q.param(array_literal(vals));
                    format!("{e} = ANY({p})")
                }
                Op::Is(v) => match v {
                    IsVal::Null => format!("{e} IS NULL"),
                    IsVal::NotNull => format!("{e} IS NOT NULL"),
                    IsVal::True => format!("{e} IS TRUE"),
                    IsVal::False => format!("{e} IS FALSE"),
                    IsVal::Unknown => format!("{e} IS UNKNOWN"),
                },
                Op::Fts { op, config, value } => {
                    let f = match op.as_str() {
                        "plfts" => "plainto_tsquery",
                        "phfts" => "phraseto_tsquery",
                        "wfts" => "websearch_to_tsquery",
                        _ => "to_tsquery",
                    };
                    match config {
                        Some(cfg) => {
                            let c = q.param(cfg.clone());
                            let v = q.param(value.clone());
                            format!("{e} @@ {f}({c}::regconfig, {v}::text)")
                        }
                        None => {
                            let v = q.param(value.clone());
                            format!("{e} @@ {f}({v}::text)")
                        }
                    }
                }
            };
            if *negate {
                format!("NOT ({s})")
            } else {
                s
            }
        }
        Cond::Tree {
            or,
            negate,
            children,
        } => {
            let parts: Vec<String> = children.iter().map(|c| cond_sql(q, alias, c)).collect();
            let s = if parts.is_empty() {
                if *or {
                    "FALSE".into()
                } else {
                    "TRUE".into()
                }
            } else {
                format!("({})", parts.join(if *or { " OR " } else { " AND " }))
            };
            if *negate {
                format!("NOT {s}")
            } else {
                s
            }
        }
        Cond::EmbedNull {
            lat,
            label,
            is_null,
        } => {
            format!(
                "{}.{} IS {}NULL",
                ident(lat),
                ident(label),
                if *is_null { "" } else { "NOT " }
            )
        }
    }
}

fn order_sql(q: &mut Sql, alias: &str, o: &OrderItem) -> String {
    let e = match &o.embed {
        Some((lat, label)) => {
            let mut s = format!("({}.{})::jsonb", ident(lat), ident(label));
            let key = o.expr.column.clone();
            let p = q.param(key);
            s = format!("{s}->{p}::text");
            for op in &o.expr.path {
                let arrow = if op.text { "->>" } else { "->" };
                match &op.key {
                    JsonKey::Key(k) => {
                        let p = q.param(k.clone());
                        s = format!("{s}{arrow}{p}::text");
                    }
                    JsonKey::Idx(i) => s = format!("{s}{arrow}{i}"),
                }
            }
            s
        }
        None => expr_sql(q, alias, &o.expr),
    };
    let mut s = format!("{e} {}", if o.desc { "DESC" } else { "ASC" });
    match o.nulls_first {
        Some(true) => s.push_str(" NULLS FIRST"),
        Some(false) => s.push_str(" NULLS LAST"),
        None => {}
    }
    s
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
    let a = ident(&n.alias);
    let mut from = match &n.source {
        Source::Table { schema, name } => format!("{} AS {a}", qualified(schema, name)),
        Source::Cte(name, _) => format!("{} AS {a}", ident(name)),
        Source::Call(c) => {
            if matches!(parent, Some((_, Link::Computed))) {
                format!(
                    "{}({}) AS {a}",
                    qualified(&c.schema, &c.name),
                    ident(parent.map(|p| p.0).unwrap_or(""))
                )
            } else {
                let (pre, call) = call_sql(q, c);
                match pre {
                    Some(p) => format!("{p}, LATERAL {call} AS {a}"),
                    None => format!("{call} AS {a}"),
                }
            }
        }
    };
    let mut wheres: Vec<String> = vec![];
    if let Some((palias, link)) = parent {
        let pa = ident(palias);
        match link {
            Link::Fk(pairs) => {
                for (c, p) in pairs {
                    wheres.push(format!("{a}.{} = {pa}.{}", ident(c), ident(p)));
                }
            }
            Link::Junction {
                schema,
                name,
                alias,
                child,
                parent,
            } => {
                let ja = ident(alias);
                let on: Vec<String> = child
                    .iter()
                    .map(|(c, j)| format!("{a}.{} = {ja}.{}", ident(c), ident(j)))
                    .collect();
                from = format!(
                    "{from} INNER JOIN {} AS {ja} ON {}",
                    qualified(schema, name),
                    on.join(" AND ")
                );
                for (j, p) in parent {
                    wheres.push(format!("{ja}.{} = {pa}.{}", ident(j), ident(p)));
                }
            }
            Link::Computed => {}
        }
    }
    let aggregated = n.has_aggregates();
    let mut cols: Vec<String> = vec![];
    let mut group: Vec<String> = vec![];
    if mode == Mode::Full {
        for it in &n.items {
            match it {
                OutItem::Star => {
                    match &n.source {
                        Source::Cte(_, cs) if !cs.is_empty() => {
                            for c in cs {
                                cols.push(format!("{a}.{}", ident(c)));
                            }
                        }
                        _ => cols.push(format!("{a}.*")),
                    }
                    if aggregated {
                        group.push(format!("{a}.*"));
                    }
                }
                OutItem::Expr {
                    expr,
                    alias,
                    cast: c,
                    agg,
                    agg_cast,
                } => {
                    let e = cast(expr_sql(q, &n.alias, expr), c);
                    match agg {
                        Some(ag) => cols.push(format!(
                            "{} AS {}",
                            cast(format!("{}({e})", ag.sql()), agg_cast),
                            ident(alias)
                        )),
                        None => {
                            if aggregated {
                                group.push(e.clone());
                            }
                            cols.push(format!("{e} AS {}", ident(alias)));
                        }
                    }
                }
                OutItem::CountAll { alias, cast: c } => {
                    cols.push(format!(
                        "{} AS {}",
                        cast("count(*)".into(), c),
                        ident(alias)
                    ));
                }
            }
        }
    }
    let mut joins = String::new();
    for ch in &n.children {
        let needed_for_count = ch.inner
            || n.conds
                .iter()
                .any(|c| matches!(c, Cond::EmbedNull { lat, .. } if lat == &ch.lat));
        if mode == Mode::Count && !needed_for_count {
            continue;
        }
        joins.push_str(&lateral_sql(q, n, ch));
        if mode == Mode::Full {
            let lat = ident(&ch.lat);
            let j = if aggregated { "::jsonb" } else { "" };
            if ch.spread {
                for c in &ch.columns {
                    let v = if ch.to_one {
                        format!("{lat}.{}", ident(c))
                    } else {
                        format!("COALESCE({lat}.{}, '[]'){j}", ident(c))
                    };
                    if aggregated {
                        group.push(v.clone());
                    }
                    cols.push(format!("{v} AS {}", ident(c)));
                }
            } else if ch.node.items.is_empty() && ch.node.children.is_empty() {
                // `rel()`: joined for filtering only, not part of the output.
            } else {
                let v = if ch.to_one {
                    format!("{lat}.{}{j}", ident(&ch.label))
                } else {
                    format!("COALESCE({lat}.{}, '[]'){j}", ident(&ch.label))
                };
                if aggregated {
                    group.push(v.clone());
                }
                cols.push(format!("{v} AS {}", ident(&ch.label)));
            }
        }
        if ch.inner && !ch.to_one {
            wheres.push(format!(
                "{}.{} IS NOT NULL",
                ident(&ch.lat),
                ident(&ch.label)
            ));
        }
    }
    for c in &n.conds {
        wheres.push(cond_sql(q, &n.alias, c));
    }
    let mut s = format!(
        "SELECT {} FROM {from}{joins}",
        if mode == Mode::Count {
            "1".to_string()
        } else if cols.is_empty() {
            "".to_string()
        } else {
            cols.join(", ")
        }
    );
    if !wheres.is_empty() {
        s.push_str(" WHERE ");
        s.push_str(&wheres.join(" AND "));
    }
    if mode == Mode::Full {
        if aggregated && !group.is_empty() {
            s.push_str(" GROUP BY ");
            s.push_str(&group.join(", "));
        }
        if !n.order.is_empty() {
            let os: Vec<String> = n.order.iter().map(|o| order_sql(q, &n.alias, o)).collect();
            s.push_str(" ORDER BY ");
            s.push_str(&os.join(", "));
        }
        if let Some(l) = n.limit {
            s.push_str(&format!(" LIMIT {l}"));
        }
        if let Some(o) = n.offset {
            if o > 0 {
                s.push_str(&format!(" OFFSET {o}"));
            }
        }
    }
    s
}

fn lateral_sql(q: &mut Sql, parent: &Node, ch: &Child) -> String {
    let inner_sql = node_sql(q, &ch.node, Some((&parent.alias, &ch.link)), Mode::Full);
    let lat = ident(&ch.lat);
    let join = if ch.inner && ch.to_one {
        "INNER JOIN LATERAL"
    } else {
        "LEFT JOIN LATERAL"
    };
    if ch.spread {
        if ch.to_one {
            return format!(" {join} ({inner_sql}) AS {lat} ON TRUE");
        }
        let aggs: Vec<String> = ch
            .columns
            .iter()
            .map(|c| format!("json_agg(pgrst_x.{}) AS {}", ident(c), ident(c)))
            .collect();
        let aggs = if aggs.is_empty() {
            "NULL".to_string()
        } else {
            aggs.join(", ")
        };
        return format!(" {join} (SELECT {aggs} FROM ({inner_sql}) AS pgrst_x) AS {lat} ON TRUE");
    }
    let label = ident(&ch.label);
    if ch.to_one {
        format!(" {join} (SELECT row_to_json(pgrst_x.*) AS {label} FROM ({inner_sql}) AS pgrst_x) AS {lat} ON TRUE")
    } else {
        format!(" {join} (SELECT json_agg(pgrst_x.*) AS {label} FROM ({inner_sql}) AS pgrst_x) AS {lat} ON TRUE")
    }
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
    let inner = node_sql(q, node, None, Mode::Full);
    let total = if count {
        let c = node_sql(q, node, None, Mode::Count);
        format!("(SELECT count(*) FROM ({c}) AS pgrst_c)")
    } else {
        "NULL::int8".to_string()
    };
    let body = body_expr(media, strip, shape);
    let with = with.map(|w| format!("WITH {w} ")).unwrap_or_default();
    format!("{with}SELECT {total} AS total, pg_catalog.count(pgrst_t) AS page, {body} AS body, NULL::text AS location FROM ({inner}) AS pgrst_t")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::plan::{Expr, Node, OutItem, Source};

    fn table(name: &str) -> Node {
        Node {
            source: Source::Table {
                schema: "public".into(),
                name: name.into(),
            },
            alias: name.into(),
            rel: None,
            items: vec![OutItem::Star],
            conds: vec![],
            order: vec![],
            limit: None,
            offset: None,
            children: vec![],
        }
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
