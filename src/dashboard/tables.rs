//! The table editor: schemas, tables and views; rows with pagination, sort and filters;
//! structure; RLS and policies. Changes are in `tables_edit`. Identifiers are quoted,
//! values bound; type names come from the catalog (`format_type`).

use maud::{html, Markup};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::layout::{self, button_form, csrf};
use super::{db, qs, DashError, DashReq, DashResult, PREFIX};
use crate::state::AppState;

pub use super::tables_edit::action;

const PAGE: i64 = 50;

pub struct Column {
    pub name: String,
    pub ty: String,
    pub not_null: bool,
    pub default: Option<String>,
    pub identity: bool,
}

pub struct Rel {
    pub schema: String,
    pub name: String,
    /// `r` table, `v` view, `m` materialized view, `p` partitioned, `f` foreign.
    pub kind: String,
    pub rls: bool,
    pub columns: Vec<Column>,
}

impl Rel {
    pub fn editable(&self) -> bool {
        self.kind == "r" || self.kind == "p"
    }
    pub fn qualified(&self) -> String {
        db::qualified(&self.schema, &self.name)
    }
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

pub async fn relation(c: &Client, schema: &str, name: &str) -> DashResult<Rel> {
    let row = c
        .query_opt(
            "select c.oid, c.relkind::text, c.relrowsecurity from pg_class c \
             join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r','v','m','p','f')",
            &[&schema, &name],
        )
        .await
        .map_err(|e| db::err(&e))?
        .ok_or(DashError::NotFound)?;
    let oid: u32 = row.get(0);
    let cols = c
        .query(
            "select a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
             pg_get_expr(d.adbin, d.adrelid), a.attidentity <> '' or a.attgenerated <> '' \
             from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum \
             where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped order by a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| db::err(&e))?;
    Ok(Rel {
        schema: schema.into(),
        name: name.into(),
        kind: row.get(1),
        rls: row.get(2),
        columns: cols
            .iter()
            .map(|r| Column {
                name: r.get(0),
                ty: r.get(1),
                not_null: r.get(2),
                default: r.get(3),
                identity: r.get(4),
            })
            .collect(),
    })
}

/// The WHERE clause of the page's filter, its parameter appended to `params`.
fn filter_sql(rel: &Rel, r: &DashReq, params: &mut Vec<String>) -> String {
    let (Some(col), Some(op)) = (r.q("fcol").and_then(|c| rel.column(c)), r.q("fop")) else {
        return String::new();
    };
    let id = db::ident(&col.name);
    let val = r.q("fval").unwrap_or("").to_string();
    let mut bind = |v: String| {
        params.push(v);
        format!("${}", params.len())
    };
    match op {
        "eq" => format!(" where {id}::text = {}", bind(val)),
        "neq" => format!(" where {id}::text is distinct from {}", bind(val)),
        "ilike" => format!(" where {id}::text ilike {}", bind(format!("%{val}%"))),
        "gt" | "lt" | "gte" | "lte" => {
            let sym = match op {
                "gt" => ">",
                "lt" => "<",
                "gte" => ">=",
                _ => "<=",
            };
            format!(" where {id} {sym} {}::text::{}", bind(val), col.ty)
        }
        "null" => format!(" where {id} is null"),
        "notnull" => format!(" where {id} is not null"),
        _ => String::new(),
    }
}

async fn rows(c: &Client, rel: &Rel, r: &DashReq) -> DashResult<(i64, Vec<Vec<Option<String>>>)> {
    let mut params = vec![];
    let filter = filter_sql(rel, r, &mut params);
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let total: i64 = c
        .query_one(
            &format!("select count(*) from {}{filter}", rel.qualified()),
            &refs,
        )
        .await
        .map_err(|e| db::err(&e))?
        .get(0);
    let order = match r.q("sort").and_then(|s| rel.column(s)) {
        Some(col) => format!(
            " order by {} {} nulls last",
            db::ident(&col.name),
            if r.q("dir") == Some("desc") {
                "desc"
            } else {
                "asc"
            }
        ),
        None if rel.editable() => " order by ctid".into(),
        None => String::new(),
    };
    let page: i64 = r.q("page").and_then(|p| p.parse().ok()).unwrap_or(0).max(0);
    let key = if rel.editable() {
        "ctid::text"
    } else {
        "null::text"
    };
    let cols: Vec<String> = rel
        .columns
        .iter()
        .map(|c| format!("{}::text", db::ident(&c.name)))
        .collect();
    let sql = format!(
        "select {key}{}{} from {}{filter}{order} limit {PAGE} offset {}",
        if cols.is_empty() { "" } else { ", " },
        cols.join(", "),
        rel.qualified(),
        page * PAGE
    );
    let out = c
        .query(&sql, &refs)
        .await
        .map_err(|e| db::err(&e))?
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<_, Option<String>>(i))
                .collect()
        })
        .collect();
    Ok((total, out))
}

pub async fn page(state: &AppState, r: &DashReq) -> DashResult<Markup> {
    let c = db::connect(state).await?;
    let schemas: Vec<String> = c
        .query(
            "select nspname::text from pg_namespace where nspname !~ '^pg_' \
             and nspname <> 'information_schema' order by nspname <> 'public', nspname",
            &[],
        )
        .await
        .map_err(|e| db::err(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let schema = r.q("schema").unwrap_or("public").to_string();
    let rels: Vec<(String, String)> = c
        .query(
            "select c.relname::text, c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relkind in ('r','v','m','p','f') order by c.relname",
            &[&schema],
        )
        .await
        .map_err(|e| db::err(&e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let rel = match r.q("table") {
        Some(t) => Some(relation(&c, &schema, t).await?),
        None => None,
    };
    let main = match &rel {
        Some(rel) => rel_view(&c, rel, r).await?,
        None => html! { div.card { p.muted { "Choose a table or view, or create a table." } } },
    };
    let body = html! {
        div.split {
            aside.card {
                form method="get" action={ (PREFIX) "tables" } {
                    label { "Schema"
                        select name="schema" data-autosubmit {
                            @for s in &schemas { option value=(s) selected[*s == schema] { (s) } }
                        }
                    }
                    noscript { button type="submit" { "Go" } }
                }
                h3 { "Tables and views" }
                ul.list #rel-list {
                    @for (name, kind) in &rels {
                        li { a.active[r.q("table") == Some(name.as_str())]
                              href={ (PREFIX) "tables?" (qs(&[("schema", &schema), ("table", name)])) } {
                            (name) @if kind != "r" && kind != "p" { " " span.muted { "(view)" } } } }
                    }
                    @if rels.is_empty() { li.muted { "none" } }
                }
                details {
                    summary { "New table" }
                    form.stack method="post" action={ (PREFIX) "tables/create" } {
                        (csrf(r))
                        input type="hidden" name="schema" value=(schema);
                        label { "Name" input name="name" required; }
                        label { "Columns (one per line: name type)"
                            textarea name="columns" rows="4" placeholder="title text\nuser_id uuid" {} }
                        label.check { input type="checkbox" name="id" value="1" checked; "id, created_at columns" }
                        label.check { input type="checkbox" name="rls" value="1" checked; "Enable Row Level Security" }
                        button.primary type="submit" { "Create table" }
                    }
                }
            }
            section { (main) }
        }
    };
    Ok(layout::page(r, "Table editor", "tables", body))
}

fn rel_qs(rel: &Rel, extra: &[(&str, &str)]) -> String {
    let mut p = vec![
        ("schema", rel.schema.as_str()),
        ("table", rel.name.as_str()),
    ];
    p.extend_from_slice(extra);
    qs(&p)
}

async fn rel_view(c: &Client, rel: &Rel, r: &DashReq) -> DashResult<Markup> {
    let tab = r.q("tab").unwrap_or("rows");
    let inner = match tab {
        "structure" => structure(rel, r),
        "policies" => super::tables_edit::policies(c, rel, r).await?,
        _ => rows_view(c, rel, r).await?,
    };
    Ok(html! {
        div.card {
            div.toolbar {
                h2 { (rel.schema) "." (rel.name) }
                @if rel.editable() {
                    span.badge.on[rel.rls].off[!rel.rls] { "RLS " @if rel.rls { "enabled" } @else { "disabled" } }
                    (button_form(r, "tables/rls", &[("schema", &rel.schema), ("table", &rel.name), ("on", if rel.rls { "0" } else { "1" })],
                        if rel.rls { "Disable RLS" } else { "Enable RLS" }, "small",
                        rel.rls.then_some("Disable Row Level Security? Every role with grants will see every row.")))
                }
                span.grow {}
                @for (t, label) in [("rows", "Rows"), ("structure", "Structure"), ("policies", "Policies")] {
                    a.button.small.active[tab == t] href={ (PREFIX) "tables?" (rel_qs(rel, &[("tab", t)])) } { (label) }
                }
            }
        }
        (inner)
    })
}

async fn rows_view(c: &Client, rel: &Rel, r: &DashReq) -> DashResult<Markup> {
    let (total, data) = rows(c, rel, r).await?;
    let page: i64 = r.q("page").and_then(|p| p.parse().ok()).unwrap_or(0).max(0);
    let sort = r.q("sort").unwrap_or("");
    let dir = r.q("dir").unwrap_or("asc");
    let keep = |extra: &[(&str, &str)]| {
        let mut p: Vec<(&str, &str)> = ["fcol", "fop", "fval", "sort", "dir"]
            .iter()
            .filter_map(|k| r.q(k).map(|v| (*k, v)))
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .collect();
        p.extend_from_slice(extra);
        rel_qs(rel, &p)
    };
    let back = format!("tables?{}", keep(&[("page", &page.to_string())]));
    let ops = [
        ("eq", "="),
        ("neq", "≠"),
        ("ilike", "contains"),
        ("gt", ">"),
        ("lt", "<"),
        ("gte", "≥"),
        ("lte", "≤"),
        ("null", "is null"),
        ("notnull", "is not null"),
    ];
    Ok(html! {
        form.card.filters method="get" action={ (PREFIX) "tables" } {
            input type="hidden" name="schema" value=(rel.schema);
            input type="hidden" name="table" value=(rel.name);
            select name="fcol" { @for col in &rel.columns { option value=(col.name) selected[r.q("fcol") == Some(col.name.as_str())] { (col.name) } } }
            select name="fop" { @for (v, l) in ops { option value=(v) selected[r.q("fop") == Some(v)] { (l) } } }
            input name="fval" placeholder="value" value=[r.q("fval")];
            button type="submit" { "Filter" }
            a.button href={ (PREFIX) "tables?" (rel_qs(rel, &[])) } { "Clear" }
        }
        @if rel.editable() {
            details.card #insert-row {
                summary { "Insert row" }
                form.row-form method="post" action={ (PREFIX) "tables/row/insert" } {
                    (csrf(r))
                    input type="hidden" name="schema" value=(rel.schema);
                    input type="hidden" name="table" value=(rel.name);
                    input type="hidden" name="back" value=(back);
                    @for col in &rel.columns {
                        label { (col.name) " " span.muted { (col.ty) }
                            input name={ "c:" (col.name) } placeholder=(col.default.as_deref().unwrap_or(if col.identity { "identity" } else { "" })); }
                    }
                    button.primary type="submit" { "Insert" }
                }
                p.muted { "Empty fields take the column's default." }
            }
        }
        div.card.scroll {
            p.muted { (total) @if total == 1 { " row" } @else { " rows" } @if total > 0 { " · " (page * PAGE + 1) "–" (((page + 1) * PAGE).min(total)) } }
            table.grid #rows {
                thead { tr {
                    @if rel.editable() { th {} }
                    @for col in &rel.columns {
                        @let next = if sort == col.name && dir == "asc" { "desc" } else { "asc" };
                        th { a href={ (PREFIX) "tables?" (keep(&[("sort", &col.name), ("dir", next)])) } {
                            (col.name) @if sort == col.name { @if dir == "desc" { " ↓" } @else { " ↑" } } } }
                    }
                } }
                tbody {
                    @for row in &data {
                        tr {
                            @if rel.editable() {
                                @let key = row[0].clone().unwrap_or_default();
                                td.actions {
                                    details.row-edit {
                                        summary { "Edit" }
                                        form.stack method="post" action={ (PREFIX) "tables/row/update" } {
                                            (csrf(r))
                                            input type="hidden" name="schema" value=(rel.schema);
                                            input type="hidden" name="table" value=(rel.name);
                                            input type="hidden" name="ctid" value=(key);
                                            input type="hidden" name="back" value=(back);
                                            @for (i, col) in rel.columns.iter().enumerate() {
                                                label { (col.name) input name={ "c:" (col.name) } value=[row[i + 1].as_deref()]; }
                                            }
                                            button.primary type="submit" { "Save" }
                                        }
                                    }
                                    (button_form(r, "tables/row/delete", &[("schema", &rel.schema), ("table", &rel.name), ("ctid", &key), ("back", &back)], "Delete", "small danger", Some("Delete this row?")))
                                }
                            }
                            @for v in &row[1..] {
                                @match v { Some(v) => td title=(v) { (v) }, None => td.null { "NULL" } }
                            }
                        }
                    }
                }
            }
            div.pager {
                @if page > 0 { a.button.small href={ (PREFIX) "tables?" (keep(&[("page", &(page - 1).to_string())])) } { "← Previous" } }
                @if (page + 1) * PAGE < total { a.button.small href={ (PREFIX) "tables?" (keep(&[("page", &(page + 1).to_string())])) } { "Next →" } }
            }
        }
    })
}

fn structure(rel: &Rel, r: &DashReq) -> Markup {
    html! {
        div.card.scroll {
            table.grid {
                thead { tr { th { "Column" } th { "Type" } th { "Nullable" } th { "Default" } } }
                tbody { @for c in &rel.columns { tr {
                    td { (c.name) } td.mono { (c.ty) } td { @if c.not_null { "no" } @else { "yes" } }
                    td.mono { (c.default.as_deref().unwrap_or(if c.identity { "identity" } else { "" })) }
                } } }
            }
        }
        @if rel.editable() {
            form.card.row-form method="post" action={ (PREFIX) "tables/column" } {
                (csrf(r))
                input type="hidden" name="schema" value=(rel.schema);
                input type="hidden" name="table" value=(rel.name);
                label { "New column" input name="name" required; }
                label { "Type" input name="type" value="text" list="types" required; }
                datalist #types { @for t in ["text", "int8", "int4", "numeric", "bool", "uuid", "timestamptz", "date", "jsonb", "text[]"] { option value=(t) {} } }
                label { "Default value" input name="default" placeholder="none, a value, now() or gen_random_uuid()"; }
                label.check { input type="checkbox" name="not_null" value="1"; "not null" }
                button.primary type="submit" { "Add column" }
            }
        }
    }
}
