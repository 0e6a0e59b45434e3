//! Planning: the parsed request plus the schema cache give a tree of `Node`s (one per
//! relation read, embeds as children) with every relationship resolved. This is the only
//! module that reads the schema cache; `sql` renders the result without it.

use serde_json::json;

use super::error::RestError;
use super::query::Agg;
use super::query::{Embed, Field, Filter, JoinType, Logic, Op, OrderTerm, SelectItem};
use super::schema::{Cardinality, Relationship, SchemaCache};

#[derive(Debug, Clone)]
pub enum Source {
    Table {
        schema: String,
        name: String,
    },
    /// The CTE holding a mutation's returned rows, and the relation's columns (so `*` does
    /// not pick up bookkeeping columns the CTE returns too).
    Cte(String, Vec<String>),
    /// A function call in FROM; arguments come from one JSON parameter.
    Call(Call),
}

#[derive(Debug, Clone)]
pub struct Call {
    pub schema: String,
    pub name: String,
    /// Arguments: (key in the JSON body, type (catalog text), parameter name or "").
    pub args: Vec<(String, String, String)>,
    /// Pass the whole JSON body as the single unnamed argument of this type.
    pub single_json: Option<String>,
    pub body: String,
    pub variadic_last: bool,
}

/// A value expression on the current node: a column or computed field, maybe a JSON path.
#[derive(Debug, Clone)]
pub struct Expr {
    pub column: String,
    pub computed: Option<(String, String)>,
    pub path: Vec<super::query::JsonOp>,
}

#[derive(Debug, Clone)]
pub enum OutItem {
    Star,
    Expr {
        expr: Expr,
        alias: String,
        cast: Option<String>,
        agg: Option<Agg>,
        agg_cast: Option<String>,
    },
    CountAll {
        alias: String,
        cast: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub enum Cond {
    Filter {
        expr: Expr,
        negate: bool,
        op: Op,
    },
    Tree {
        or: bool,
        negate: bool,
        children: Vec<Cond>,
    },
    /// `embed=is.null` / `not.is.null`: the embed's lateral value is (not) null.
    EmbedNull {
        lat: String,
        label: String,
        is_null: bool,
    },
}

#[derive(Debug, Clone)]
pub struct OrderItem {
    pub expr: Expr,
    /// Order by a to-one embed's value (lateral alias, label).
    pub embed: Option<(String, String)>,
    pub desc: bool,
    pub nulls_first: Option<bool>,
}

#[derive(Debug, Clone)]
pub enum Link {
    /// `child.col = parent.col` pairs.
    Fk(Vec<(String, String)>),
    /// Through a junction: (junction schema, name, alias, child col -> junction col,
    /// junction col -> parent col).
    Junction {
        schema: String,
        name: String,
        alias: String,
        child: Vec<(String, String)>,
        parent: Vec<(String, String)>,
    },
    /// Computed relationship: the child's FROM is `fn(parent_row)`.
    Computed,
}

#[derive(Debug, Clone)]
pub struct Child {
    pub node: Node,
    pub label: String,
    pub to_one: bool,
    pub inner: bool,
    pub spread: bool,
    pub lat: String,
    pub link: Link,
    /// Output column names of the child (for spreads).
    pub columns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub source: Source,
    pub alias: String,
    pub rel: Option<(String, String)>,
    pub items: Vec<OutItem>,
    pub conds: Vec<Cond>,
    pub order: Vec<OrderItem>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub children: Vec<Child>,
}

impl Node {
    pub fn has_aggregates(&self) -> bool {
        self.items.iter().any(|i| {
            matches!(
                i,
                OutItem::CountAll { .. } | OutItem::Expr { agg: Some(_), .. }
            )
        })
    }
}

/// Per-embed-path modifiers collected from the query string.
#[derive(Debug, Default, Clone)]
pub struct Modifiers {
    pub filters: Vec<Filter>,
    pub logic: Vec<Logic>,
    pub order: Vec<OrderTerm>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// `embed=is.null` conditions on children, by label.
    pub embed_null: Vec<(String, bool)>,
}

pub struct Planner<'a> {
    pub sc: &'a SchemaCache,
    pub aggregates: bool,
    pub mods: std::collections::HashMap<Vec<String>, Modifiers>,
}

impl<'a> Planner<'a> {
    pub fn new(sc: &'a SchemaCache, aggregates: bool) -> Self {
        Planner {
            sc,
            aggregates,
            mods: Default::default(),
        }
    }

    /// Plan a read of `source` (alias `alias`), with the select items and modifiers of
    /// embed path `path`.
    pub fn node(
        &mut self,
        source: Source,
        alias: &str,
        rel: Option<(String, String)>,
        items: &[SelectItem],
        path: &[String],
    ) -> Result<Node, RestError> {
        // Each embed path is planned once: its modifiers are taken, not copied.
        let mods = self.mods.remove(path).unwrap_or_default();
        let mut node = Node {
            source,
            alias: alias.to_string(),
            rel: rel.clone(),
            items: vec![],
            conds: vec![],
            order: vec![],
            limit: mods.limit,
            offset: mods.offset,
            children: vec![],
        };
        let star = [SelectItem::Star];
        let items = if items.is_empty() && path.is_empty() {
            &star[..]
        } else {
            items
        };
        for it in items {
            match it {
                SelectItem::Star => node.items.push(OutItem::Star),
                SelectItem::Field {
                    field,
                    alias,
                    cast,
                    agg,
                    agg_cast,
                } => {
                    if agg.is_some() && !self.aggregates {
                        return Err(aggregates_disabled());
                    }
                    let expr = self.expr(&rel, field);
                    let alias = alias.clone().unwrap_or_else(|| match agg {
                        Some(a) => a.sql().to_string(),
                        None => field.default_alias(),
                    });
                    node.items.push(OutItem::Expr {
                        expr,
                        alias,
                        cast: cast.clone(),
                        agg: *agg,
                        agg_cast: agg_cast.clone(),
                    });
                }
                SelectItem::CountAll { alias, cast } => {
                    if !self.aggregates {
                        return Err(aggregates_disabled());
                    }
                    node.items.push(OutItem::CountAll {
                        alias: alias.clone().unwrap_or_else(|| "count".into()),
                        cast: cast.clone(),
                    })
                }
                SelectItem::Embed(e) => {
                    let child = self.embed(&node, e, path)?;
                    node.children.push(child);
                }
            }
        }
        for f in mods.filters {
            node.conds.push(Cond::Filter {
                expr: self.expr(&rel, &f.field),
                negate: f.negate,
                op: f.op,
            });
        }
        for l in &mods.logic {
            node.conds.push(self.logic(&rel, l));
        }
        for (label, is_null) in &mods.embed_null {
            match node.children.iter().find(|c| &c.label == label) {
                Some(c) => node.conds.push(Cond::EmbedNull {
                    lat: c.lat.clone(),
                    label: c.label.clone(),
                    is_null: *is_null,
                }),
                None => {
                    return Err(RestError::new(
                        400,
                        "PGRST108",
                        format!("'{label}' is not an embedded resource in this request"),
                    )
                    .hint(format!(
                        "Verify that '{label}' is included in the 'select' query parameter."
                    )))
                }
            }
        }
        for o in &mods.order {
            let embed = match &o.relation {
                Some(r) => match node.children.iter().find(|c| &c.label == r && c.to_one) {
                    Some(c) => Some((c.lat.clone(), c.label.clone())),
                    None => {
                        return Err(RestError::new(
                            400,
                            "PGRST118",
                            format!("A related order on '{r}' is not possible"),
                        )
                        .details(format!(
                            "'{r}' is not a to-one embedded resource in this request"
                        )))
                    }
                },
                None => None,
            };
            node.order.push(OrderItem {
                expr: self.expr(&rel, &o.field),
                embed,
                desc: o.desc,
                nulls_first: o.nulls_first,
            });
        }
        Ok(node)
    }

    fn expr(&self, rel: &Option<(String, String)>, f: &Field) -> Expr {
        let mut computed = None;
        if let Some(r) = rel {
            let is_col = self
                .sc
                .relations
                .get(r)
                .is_some_and(|x| x.column(&f.name).is_some());
            if !is_col {
                if let Some(cf) = self.sc.computed_fields.get(r) {
                    if let Some((s, n, _)) = cf.iter().find(|(_, n, _)| n == &f.name) {
                        computed = Some((s.clone(), n.clone()));
                    }
                }
            }
        }
        Expr {
            column: f.name.clone(),
            computed,
            path: f.path.clone(),
        }
    }

    fn logic(&self, rel: &Option<(String, String)>, l: &Logic) -> Cond {
        match l {
            Logic::Filter(f) => Cond::Filter {
                expr: self.expr(rel, &f.field),
                negate: f.negate,
                op: f.op.clone(),
            },
            Logic::Tree {
                or,
                negate,
                children,
            } => Cond::Tree {
                or: *or,
                negate: *negate,
                children: children.iter().map(|c| self.logic(rel, c)).collect(),
            },
        }
    }

    fn embed(&mut self, parent: &Node, e: &Embed, path: &[String]) -> Result<Child, RestError> {
        let Some(src) = parent.rel.clone() else {
            return Err(RestError::new(
                400,
                "PGRST200",
                format!(
                    "Could not find a relationship between '{}' and '{}' in the schema cache",
                    parent.alias, e.name
                ),
            ));
        };
        let r = self.find_relationship(&src, &e.name, e.hint.as_deref())?;
        let label = e.label().to_string();
        let mut child_path = path.to_vec();
        child_path.push(label.clone());
        // PostgREST's aliases: `<target>_<depth>` and `<source>_<label>_<depth>` (two embeds
        // with one label at one level collide there as well: 42712).
        let depth = path.len() + 1;
        let alias = format!("{}_{depth}", r.target.1);
        let lat = format!("{}_{}_{depth}", src.1, label);
        let (source, link) = match (&r.function, &r.card) {
            (Some((fs, fname)), _) => (
                Source::Call(Call {
                    schema: fs.clone(),
                    name: fname.clone(),
                    args: vec![],
                    single_json: None,
                    body: String::new(),
                    variadic_last: false,
                }),
                Link::Computed,
            ),
            (
                None,
                Cardinality::ManyToMany {
                    junction,
                    source_cols,
                    target_cols,
                    ..
                },
            ) => {
                let jalias = format!("{}_{depth}", junction.1);
                (
                    Source::Table {
                        schema: r.target.0.clone(),
                        name: r.target.1.clone(),
                    },
                    Link::Junction {
                        schema: junction.0.clone(),
                        name: junction.1.clone(),
                        alias: jalias,
                        child: target_cols.clone(),
                        parent: source_cols
                            .iter()
                            .map(|(s, j)| (j.clone(), s.clone()))
                            .collect(),
                    },
                )
            }
            (None, _) => (
                Source::Table {
                    schema: r.target.0.clone(),
                    name: r.target.1.clone(),
                },
                Link::Fk(r.cols.iter().map(|(s, t)| (t.clone(), s.clone())).collect()),
            ),
        };
        let node = self.node(
            source,
            &alias,
            Some(r.target.clone()),
            &e.items,
            &child_path,
        )?;
        let to_one = r.is_to_one();
        let columns = self.output_columns(&node);
        Ok(Child {
            node,
            label,
            to_one,
            inner: e.join == Some(JoinType::Inner),
            spread: e.spread,
            lat,
            link,
            columns,
        })
    }

    /// Output column names of a node (`*` expanded through the schema cache).
    pub fn output_columns(&self, node: &Node) -> Vec<String> {
        let mut out = vec![];
        for it in &node.items {
            match it {
                OutItem::Star => {
                    if let Some(r) = node.rel.as_ref().and_then(|r| self.sc.relations.get(r)) {
                        out.extend(r.columns.iter().map(|c| c.name.clone()));
                    }
                }
                OutItem::Expr { alias, .. } | OutItem::CountAll { alias, .. } => {
                    out.push(alias.clone())
                }
            }
        }
        for c in &node.children {
            if c.spread {
                out.extend(c.columns.iter().cloned());
            } else {
                out.push(c.label.clone());
            }
        }
        out
    }

    pub fn find_relationship(
        &self,
        src: &(String, String),
        name: &str,
        hint: Option<&str>,
    ) -> Result<Relationship, RestError> {
        let sc = self.sc;
        let from_src = sc.relationships.iter().filter(|r| &r.source == src);
        // Computed relationships named like the embed win.
        let computed: Vec<&Relationship> = from_src
            .clone()
            .filter(|r| r.function.as_ref().is_some_and(|(_, f)| f == name))
            .collect();
        if computed.len() == 1 && hint.is_none() {
            return Ok(computed[0].clone());
        }
        let mut cands: Vec<&Relationship> = from_src
            .clone()
            .filter(|r| r.function.is_none() && r.target.1 == name && r.target.0 == src.0)
            .collect();
        if cands.is_empty() {
            cands = from_src
                .clone()
                .filter(|r| r.function.is_none() && r.target.1 == name)
                .collect();
        }
        if cands.is_empty() {
            // Embedding by FK constraint name or by FK column.
            cands = from_src
                .clone()
                .filter(|r| {
                    r.function.is_none()
                        && !r.cols.is_empty()
                        && r.base
                        && (r.constraint == name
                            || (r.forward && r.cols.len() == 1 && r.cols[0].0 == name))
                })
                .collect();
        }
        if let Some(h) = hint {
            cands.retain(|r| hint_names(r, h));
        }
        // Self-reference: a constraint-name hint does not pick a direction (as PostgREST),
        // and without a column hint the one-to-many direction wins.
        if cands
            .iter()
            .all(|r| r.source == r.target && r.function.is_none())
            && !cands.is_empty()
        {
            if let Some(h) = hint {
                if cands.iter().all(|r| r.constraint == h) {
                    cands.clear();
                }
            }
            if cands.len() == 2 && cands[0].constraint == cands[1].constraint {
                cands.retain(|r| matches!(r.card, Cardinality::OneToMany));
            }
        }
        match cands.len() {
            1 => Ok(cands[0].clone()),
            0 => Err(self.no_relationship(src, name, hint)),
            _ => Err(ambiguous(src, name, &cands)),
        }
    }

    /// PGRST200, with a near name as the hint when the schema has one.
    fn no_relationship(&self, src: &(String, String), name: &str, hint: Option<&str>) -> RestError {
        let mut e = RestError::new(
            400,
            "PGRST200",
            format!("Could not find a relationship between '{}' and '{}' in the schema cache", src.1, name),
        )
        .details(format!(
            "Searched for a foreign key relationship between '{}' and '{}'{} in the schema '{}', but no matches were found.",
            src.1,
            name,
            hint.map(|h| format!(" using the hint '{h}'")).unwrap_or_default(),
            src.0
        ));
        if let Some(s) = self
            .sc
            .relationships
            .iter()
            .filter(|r| &r.source == src)
            .map(|r| r.target.1.clone())
            .find(|t| similar(t, name))
        {
            e = e.hint(format!("Perhaps you meant '{s}' instead of '{name}'."));
        }
        e
    }
}

/// PGRST201: more than one relationship fits; the hint lists the ways to say which.
fn ambiguous(src: &(String, String), name: &str, cands: &[&Relationship]) -> RestError {
    let details: Vec<serde_json::Value> = cands
        .iter()
        .map(|r| {
            json!({
                "cardinality": r.card_name(),
                "embedding": format!("{} with {}", src.1, name),
                "relationship": describe(r),
            })
        })
        .collect();
    let opts: Vec<String> = cands
        .iter()
        .map(|r| {
            let h = match &r.card {
                Cardinality::ManyToMany { junction, .. } => junction.1.clone(),
                _ => r.constraint.clone(),
            };
            format!("'{name}!{h}'")
        })
        .collect();
    RestError::new(
        300,
        "PGRST201",
        format!("Could not embed because more than one relationship was found for '{}' and '{}'", src.1, name),
    )
    .details_json(serde_json::Value::Array(details))
    .hint(format!(
        "Try changing '{name}' to one of the following: {}. Find the desired relationship in the 'details' key.",
        opts.join(", ")
    ))
}

/// Whether `!hint` names this relationship: its constraint, one of its columns, or (many to
/// many) its junction table or the junction's key to the source.
fn hint_names(r: &Relationship, h: &str) -> bool {
    r.constraint == h
        || r.cols.iter().any(|(a, b)| a == h || b == h)
        || match &r.card {
            Cardinality::ManyToMany {
                junction,
                fk_source,
                ..
            } => junction.1 == h || fk_source == h,
            _ => false,
        }
}

fn describe(r: &Relationship) -> String {
    let cols = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>().join(", ");
    match &r.card {
        Cardinality::ManyToMany {
            junction,
            fk_source,
            fk_target,
            source_cols,
            target_cols,
        } => format!(
            "{}.{} using {}({}) and {}({})",
            junction.0,
            junction.1,
            fk_source,
            cols(source_cols.iter().map(|(_, j)| j).collect()),
            fk_target,
            cols(target_cols.iter().map(|(_, j)| j).collect())
        ),
        _ => format!(
            "{} using {}({}) and {}({})",
            r.constraint,
            r.source.1,
            cols(r.cols.iter().map(|(a, _)| a).collect()),
            r.target.1,
            cols(r.cols.iter().map(|(_, b)| b).collect())
        ),
    }
}

/// Dice coefficient over character bigrams (0..1), for "did you mean" hints.
pub fn dice(a: &str, b: &str) -> f64 {
    let grams = |s: &str| -> Vec<(char, char)> {
        let c: Vec<char> = s.to_lowercase().chars().collect();
        c.windows(2).map(|w| (w[0], w[1])).collect()
    };
    let (ga, mut gb) = (grams(a), grams(b));
    if ga.is_empty() || gb.is_empty() {
        return 0.0;
    }
    let total = ga.len() + gb.len();
    let mut common = 0;
    for g in &ga {
        if let Some(i) = gb.iter().position(|x| x == g) {
            gb.swap_remove(i);
            common += 1;
        }
    }
    2.0 * common as f64 / total as f64
}

/// A cheap "did you mean": same prefix or one is contained in the other.
pub fn similar(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    a.contains(&b)
        || b.contains(&a)
        || (a.chars().count() > 3
            && b.chars().count() > 3
            && a.chars().take(3).eq(b.chars().take(3)))
}

fn aggregates_disabled() -> RestError {
    RestError::new(400, "PGRST123", "Use of aggregate functions is not allowed")
}
