//! Write plans -> one statement: the mutation (INSERT, UPDATE or DELETE ... RETURNING) in a
//! `pgrst_source` CTE, and the outer SELECT that counts and renders the returned rows.

use super::{body_expr, ident, node_sql, qualified, BodyShape, Mode, Sql};
use crate::rest::plan::{Cond, Node, Source};
use crate::rest::prefer::{Media, Resolution};

/// What a write does to its table.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// POST/PUT: rows from a JSON array body.
    Insert {
        schema: String,
        name: String,
        /// The columns set (empty: every row is all defaults).
        cols: Vec<String>,
        /// A default expression per column of `cols`, used where a row lacks the key
        /// (`Prefer: missing=default`); `None` for a column without one.
        defaults: Vec<Option<String>>,
        /// The rows as one JSON array text.
        rows: String,
        /// ON CONFLICT (columns) and what to do.
        conflict: Option<(Resolution, Vec<String>)>,
        /// Also return whether each row was inserted (`xmax = 0`), for a merging upsert.
        mark_inserted: bool,
    },
    /// PATCH: one JSON object body.
    Update {
        schema: String,
        name: String,
        cols: Vec<String>,
        body: String,
        conds: Vec<Cond>,
        /// `limit`/`order`: the ctids of the rows to touch.
        limited: Option<Node>,
    },
    Delete {
        schema: String,
        name: String,
        conds: Vec<Cond>,
        limited: Option<Node>,
    },
}

/// A planned write: the mutation and what to answer with.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub mutation: Mutation,
    /// The select over the returned rows (`pgrst_source`).
    pub returning: Node,
    /// Render the body in this media (`return=representation`), else no body.
    pub body: Option<(Media, bool)>,
    /// Count all returned rows (`Prefer: count`).
    pub count: bool,
    /// Return the first row's keys for the Location header (POST on a table with a key).
    pub location: bool,
}

pub fn write_sql(plan: &WritePlan) -> Sql {
    let mut q = Sql::default();
    let (mutation, inserted) = mutation_sql(&mut q, &plan.mutation);
    let inner = node_sql(&mut q, &plan.returning, None, Mode::Full);
    let body = match &plan.body {
        Some((media, strip)) => body_expr(media, *strip, &BodyShape::Rows),
        None => "NULL::text".into(),
    };
    let location = if plan.location {
        "(SELECT row_to_json(pgrst_l)::text FROM pgrst_source AS pgrst_l LIMIT 1)"
    } else {
        "NULL::text"
    };
    q.text = format!(
        "WITH pgrst_source AS ({mutation}) SELECT {} AS total, pg_catalog.count(pgrst_t) AS page, {body} AS body, {location} AS location, {} AS inserted FROM ({inner}) AS pgrst_t",
        if plan.count { "(SELECT count(*) FROM pgrst_source)" } else { "NULL::int8" },
        if inserted { "(SELECT count(*) FROM pgrst_source WHERE pgrst_inserted)" } else { "NULL::int8" }
    );
    q
}

/// The mutation's text, and whether it returns `pgrst_inserted`.
fn mutation_sql(q: &mut Sql, m: &Mutation) -> (String, bool) {
    match m {
        Mutation::Insert {
            schema,
            name,
            cols,
            defaults,
            rows,
            conflict,
            mark_inserted,
        } => {
            let t = qualified(schema, name);
            let a = ident(name);
            let mut s = insert_sql(q, &t, &a, cols, defaults, rows);
            if let Some((res, cc)) = conflict {
                on_conflict(&mut s, *res, cc, cols);
            }
            if *mark_inserted {
                // xmax = 0 marks rows this statement inserted (not updated).
                s.push_str(&format!(
                    " RETURNING {a}.*, ({a}.xmax::text = '0') AS pgrst_inserted"
                ));
            } else {
                s.push_str(&format!(" RETURNING {a}.*"));
            }
            (s, *mark_inserted)
        }
        Mutation::Update {
            schema,
            name,
            cols,
            body,
            conds,
            limited,
        } => (
            update_sql(q, schema, name, cols, body, conds, limited.as_ref()),
            false,
        ),
        Mutation::Delete {
            schema,
            name,
            conds,
            limited,
        } => {
            let t = qualified(schema, name);
            let a = ident(name);
            let wh = where_list(q, name, conds, limited.as_ref());
            let s = format!(
                "DELETE FROM {t} AS {a}{} RETURNING {a}.*",
                if wh.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", wh.join(" AND "))
                }
            );
            (s, false)
        }
    }
}

fn insert_sql(
    q: &mut Sql,
    t: &str,
    a: &str,
    cols: &[String],
    defaults: &[Option<String>],
    rows: &str,
) -> String {
    let body_p = q.param(rows);
    let col_list: Vec<String> = cols.iter().map(|c| ident(c)).collect();
    let mut exprs = vec![];
    // missing=default: every row evaluates the defaults (as PostgREST does, so sequences
    // advance the same way) in a correlated lateral, used where a key is absent.
    let mut defs = vec![];
    for (i, c) in cols.iter().enumerate() {
        let v = format!("pgrst_r.{}", ident(c));
        if let Some(Some(d)) = defaults.get(i) {
            let k = q.param(c.clone());
            defs.push(format!("{d} AS d{i}"));
            exprs.push(format!(
                "CASE WHEN pgrst_j.j ? {k}::text THEN {v} ELSE pgrst_d.d{i} END"
            ));
            continue;
        }
        exprs.push(v);
    }
    let defaults_from = if defs.is_empty() {
        String::new()
    } else {
        format!(
            ", LATERAL (SELECT {} WHERE pgrst_j.j IS NOT NULL) AS pgrst_d",
            defs.join(", ")
        )
    };
    format!(
        "INSERT INTO {t} AS {a} {} SELECT {} FROM jsonb_array_elements({body_p}::jsonb) AS pgrst_j(j), LATERAL jsonb_populate_record(NULL::{t}, pgrst_j.j) AS pgrst_r{defaults_from}",
        // No keys at all (`{}` or `[]`): rows of defaults.
        if col_list.is_empty() { String::new() } else { format!("({})", col_list.join(", ")) },
        exprs.join(", ")
    )
}

fn on_conflict(s: &mut String, res: Resolution, conflict: &[String], cols: &[String]) {
    let cc: Vec<String> = conflict.iter().map(|c| ident(c)).collect();
    match res {
        Resolution::Ignore => {
            s.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", cc.join(", ")));
        }
        Resolution::Merge => {
            let set_cols = if cols.is_empty() { conflict } else { cols };
            let sets: Vec<String> = set_cols
                .iter()
                .map(|c| {
                    let c = ident(c);
                    format!("{c} = EXCLUDED.{c}")
                })
                .collect();
            s.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                cc.join(", "),
                sets.join(", ")
            ));
        }
    }
}

fn update_sql(
    q: &mut Sql,
    schema: &str,
    name: &str,
    cols: &[String],
    body: &str,
    conds: &[Cond],
    limited: Option<&Node>,
) -> String {
    let t = qualified(schema, name);
    let a = ident(name);
    let body_p = q.param(body);
    let wh = where_list(q, name, conds, limited);
    if cols.is_empty() {
        // Nothing to set: PostgREST answers without touching rows.
        return format!(
            "SELECT {a}.* FROM {t} AS {a} WHERE FALSE AND {}",
            if wh.is_empty() {
                "TRUE".into()
            } else {
                wh.join(" AND ")
            }
        );
    }
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

/// The conditions of an UPDATE/DELETE, then the ctid pick of `limit`.
fn where_list(q: &mut Sql, alias: &str, conds: &[Cond], limited: Option<&Node>) -> Vec<String> {
    let mut wh: Vec<String> = conds.iter().map(|c| sql_cond(q, alias, c)).collect();
    if let Some(l) = limited {
        wh.push(format!(
            "{}.ctid = ANY(ARRAY({}))",
            ident(alias),
            node_sql(q, l, None, Mode::Full)
        ));
    }
    wh
}

fn sql_cond(q: &mut Sql, alias: &str, c: &Cond) -> String {
    // Render one condition through a throwaway node (keeps one renderer of conditions).
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
    let s = node_sql(q, &n, None, Mode::Count);
    s.split_once(" WHERE ")
        .map(|(_, w)| w.to_string())
        .unwrap_or_else(|| "TRUE".into())
}

/// The exact statements of representative write plans.
#[cfg(test)]
mod tests {
    use super::super::tests::node;
    use super::*;
    use crate::rest::plan::{Expr, OrderItem};
    use crate::rest::query::Op;

    fn returning() -> Node {
        let cols = vec!["id".to_string(), "title".to_string()];
        node(Source::Cte("pgrst_source".into(), cols), "books")
    }

    fn eq(column: &str, v: &str) -> Cond {
        Cond::Filter {
            expr: Expr {
                column: column.into(),
                computed: None,
                path: vec![],
            },
            negate: false,
            op: Op::Simple {
                op: "eq".into(),
                quant: None,
                value: v.into(),
            },
        }
    }

    fn plan(mutation: Mutation) -> WritePlan {
        WritePlan {
            mutation,
            returning: returning(),
            body: Some((Media::Json, false)),
            count: false,
            location: false,
        }
    }

    #[test]
    fn insert_with_returning_and_location() {
        let mut p = plan(Mutation::Insert {
            schema: "public".into(),
            name: "books".into(),
            cols: vec!["id".into(), "title".into()],
            defaults: vec![None, Some("'untitled'::text".into())],
            rows: r#"[{"id":1}]"#.into(),
            conflict: None,
            mark_inserted: false,
        });
        p.location = true;
        p.count = true;
        let q = write_sql(&p);
        assert_eq!(
            q.text,
            "WITH pgrst_source AS (INSERT INTO \"public\".\"books\" AS \"books\" (\"id\", \"title\") SELECT pgrst_r.\"id\", CASE WHEN pgrst_j.j ? $2::text THEN pgrst_r.\"title\" ELSE pgrst_d.d1 END FROM jsonb_array_elements($1::jsonb) AS pgrst_j(j), LATERAL jsonb_populate_record(NULL::\"public\".\"books\", pgrst_j.j) AS pgrst_r, LATERAL (SELECT 'untitled'::text AS d1 WHERE pgrst_j.j IS NOT NULL) AS pgrst_d RETURNING \"books\".*) SELECT (SELECT count(*) FROM pgrst_source) AS total, pg_catalog.count(pgrst_t) AS page, coalesce(json_agg(pgrst_t), '[]')::text AS body, (SELECT row_to_json(pgrst_l)::text FROM pgrst_source AS pgrst_l LIMIT 1) AS location, NULL::int8 AS inserted FROM (SELECT \"books\".\"id\", \"books\".\"title\" FROM \"pgrst_source\" AS \"books\") AS pgrst_t"
        );
        assert_eq!(q.params, vec![r#"[{"id":1}]"#, "title"]);
    }

    #[test]
    fn upsert_on_conflict() {
        let mut p = plan(Mutation::Insert {
            schema: "public".into(),
            name: "books".into(),
            cols: vec!["id".into(), "title".into()],
            defaults: vec![None, None],
            rows: "[]".into(),
            conflict: Some((Resolution::Merge, vec!["id".into()])),
            mark_inserted: true,
        });
        p.body = None;
        let q = write_sql(&p);
        assert_eq!(
            q.text,
            "WITH pgrst_source AS (INSERT INTO \"public\".\"books\" AS \"books\" (\"id\", \"title\") SELECT pgrst_r.\"id\", pgrst_r.\"title\" FROM jsonb_array_elements($1::jsonb) AS pgrst_j(j), LATERAL jsonb_populate_record(NULL::\"public\".\"books\", pgrst_j.j) AS pgrst_r ON CONFLICT (\"id\") DO UPDATE SET \"id\" = EXCLUDED.\"id\", \"title\" = EXCLUDED.\"title\" RETURNING \"books\".*, (\"books\".xmax::text = '0') AS pgrst_inserted) SELECT NULL::int8 AS total, pg_catalog.count(pgrst_t) AS page, NULL::text AS body, NULL::text AS location, (SELECT count(*) FROM pgrst_source WHERE pgrst_inserted) AS inserted FROM (SELECT \"books\".\"id\", \"books\".\"title\" FROM \"pgrst_source\" AS \"books\") AS pgrst_t"
        );
        let p = plan(Mutation::Insert {
            schema: "public".into(),
            name: "books".into(),
            cols: vec![],
            defaults: vec![],
            rows: "[{}]".into(),
            conflict: Some((Resolution::Ignore, vec!["id".into(), "title".into()])),
            mark_inserted: false,
        });
        let q = write_sql(&p);
        assert!(q.text.starts_with("WITH pgrst_source AS (INSERT INTO \"public\".\"books\" AS \"books\"  SELECT  FROM jsonb_array_elements($1::jsonb) AS pgrst_j(j), LATERAL jsonb_populate_record(NULL::\"public\".\"books\", pgrst_j.j) AS pgrst_r ON CONFLICT (\"id\", \"title\") DO NOTHING RETURNING \"books\".*) SELECT "), "{}", q.text);
    }

    #[test]
    fn update_with_filters_and_limit() {
        let mut limited = node(
            Source::Table {
                schema: "public".into(),
                name: "books".into(),
            },
            "pgrst_l",
        );
        limited.conds.push(eq("title", "x"));
        limited.order.push(OrderItem {
            expr: Expr {
                column: "id".into(),
                computed: None,
                path: vec![],
            },
            embed: None,
            desc: true,
            nulls_first: None,
        });
        limited.limit = Some(2);
        let q = write_sql(&plan(Mutation::Update {
            schema: "public".into(),
            name: "books".into(),
            cols: vec!["title".into()],
            body: r#"{"title":"y"}"#.into(),
            conds: vec![eq("title", "x")],
            limited: Some(limited),
        }));
        assert_eq!(
            q.text,
            "WITH pgrst_source AS (UPDATE \"public\".\"books\" AS \"books\" SET \"title\" = pgrst_body.\"title\" FROM (SELECT * FROM jsonb_populate_record(NULL::\"public\".\"books\", $1::jsonb)) AS pgrst_body WHERE \"books\".\"title\" = $2 AND \"books\".ctid = ANY(ARRAY(SELECT \"pgrst_l\".* FROM \"public\".\"books\" AS \"pgrst_l\" WHERE \"pgrst_l\".\"title\" = $3 ORDER BY \"pgrst_l\".\"id\" DESC LIMIT 2)) RETURNING \"books\".*) SELECT NULL::int8 AS total, pg_catalog.count(pgrst_t) AS page, coalesce(json_agg(pgrst_t), '[]')::text AS body, NULL::text AS location, NULL::int8 AS inserted FROM (SELECT \"books\".\"id\", \"books\".\"title\" FROM \"pgrst_source\" AS \"books\") AS pgrst_t"
        );
        assert_eq!(q.params, vec![r#"{"title":"y"}"#, "x", "x"]);
        // Nothing to set: no row is touched.
        let q = write_sql(&plan(Mutation::Update {
            schema: "public".into(),
            name: "books".into(),
            cols: vec![],
            body: "{}".into(),
            conds: vec![],
            limited: None,
        }));
        assert!(q.text.starts_with("WITH pgrst_source AS (SELECT \"books\".* FROM \"public\".\"books\" AS \"books\" WHERE FALSE AND TRUE) SELECT "), "{}", q.text);
    }

    #[test]
    fn delete() {
        let q = write_sql(&plan(Mutation::Delete {
            schema: "public".into(),
            name: "books".into(),
            conds: vec![eq("id", "1")],
            limited: None,
        }));
        assert!(q.text.starts_with("WITH pgrst_source AS (DELETE FROM \"public\".\"books\" AS \"books\" WHERE \"books\".\"id\" = $1 RETURNING \"books\".*) SELECT NULL::int8 AS total, "), "{}", q.text);
        assert_eq!(q.params, vec!["1"]);
        let q = write_sql(&plan(Mutation::Delete {
            schema: "public".into(),
            name: "books".into(),
            conds: vec![],
            limited: None,
        }));
        assert!(q.text.starts_with("WITH pgrst_source AS (DELETE FROM \"public\".\"books\" AS \"books\" RETURNING \"books\".*) SELECT "), "{}", q.text);
    }
}
