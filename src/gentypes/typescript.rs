//! Renders a [`Catalog`] as the `Database` type the Supabase CLI generates (postgres-meta's
//! TypeScript generator): per schema Tables (Row/Insert/Update/Relationships), Views,
//! Functions (Args/Returns, overloads as a union), Enums and CompositeTypes, followed by
//! the helper types and the `Constants` object. The layout follows prettier's (two-space
//! indent, no semicolons) so the output reads like the CLI's.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use super::catalog::{ArgMode, Catalog, Column, Function, PgType, RelKind, Relationship};

/// What the CLI's flags change in the output.
#[derive(Debug, Clone)]
pub struct Options {
    /// Emit `isOneToOne` in relationships (the CLI does unless `--postgrest-v9-compat`).
    pub detect_one_to_one: bool,
    /// Emit `__InternalSupabase: { PostgrestVersion }` (the hosted generator does).
    pub postgrest_version: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            detect_one_to_one: true,
            postgrest_version: None,
        }
    }
}

/// Like JavaScript's `localeCompare` in the root locale for identifiers: punctuation
/// before digits before letters, letters case-insensitively first, lower case first on ties.
pub fn locale_cmp(a: &str, b: &str) -> Ordering {
    fn primary(c: char) -> (u8, char) {
        if c.is_ascii_digit() {
            (1, c)
        } else if c.is_alphabetic() {
            (2, c.to_lowercase().next().unwrap_or(c))
        } else {
            (0, c)
        }
    }
    let pa: Vec<_> = a.chars().map(primary).collect();
    let pb: Vec<_> = b.chars().map(primary).collect();
    pa.cmp(&pb).then_with(|| {
        let ta: Vec<bool> = a.chars().map(|c| c.is_uppercase()).collect();
        let tb: Vec<bool> = b.chars().map(|c| c.is_uppercase()).collect();
        ta.cmp(&tb)
    })
}

/// A property name as prettier prints it: bare when it is an identifier.
fn key(name: &str) -> String {
    let mut chars = name.chars();
    let ident = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        }
        _ => false,
    };
    if ident {
        name.to_string()
    } else {
        quote(name)
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn nullable(ts: String, is_nullable: bool) -> String {
    // `Json` includes null: a NOT NULL json column is narrowed.
    if ts == "Json" && !is_nullable {
        return "NonNullable<Json>".into();
    }
    if ts == "unknown" || ts == "any" || !is_nullable {
        ts
    } else {
        format!("{ts} | null")
    }
}

struct FnEntry<'a> {
    f: &'a Function,
    in_args: Vec<&'a super::catalog::Arg>,
}

struct Ctx<'a> {
    cat: &'a Catalog,
    opts: &'a Options,
    types_by_id: HashMap<i64, &'a PgType>,
    name_by_rel: HashMap<i64, &'a str>,
    columns: HashMap<i64, Vec<&'a Column>>,
    rels: BTreeMap<(String, String), Vec<&'a Relationship>>,
}

const UNNAMED_OK: [i64; 3] = [114, 3802, 25]; // json, jsonb, text

impl<'a> Ctx<'a> {
    fn new(cat: &'a Catalog, opts: &'a Options) -> Ctx<'a> {
        let types_by_id = cat.types.iter().map(|t| (t.id, t)).collect();
        let name_by_rel = cat
            .relations
            .iter()
            .map(|r| (r.id, r.name.as_str()))
            .collect();
        let mut columns: HashMap<i64, Vec<&Column>> = HashMap::new();
        for c in &cat.columns {
            columns.entry(c.table_id).or_default().push(c);
        }
        for cols in columns.values_mut() {
            cols.sort_by(|a, b| locale_cmp(&a.name, &b.name));
        }
        let mut sorted: Vec<&Relationship> = cat.relationships.iter().collect();
        sorted.sort_by(|a, b| {
            locale_cmp(&a.foreign_key_name, &b.foreign_key_name)
                .then_with(|| locale_cmp(&a.referenced_relation, &b.referenced_relation))
                .then_with(|| {
                    locale_cmp(
                        &serde_json::to_string(&a.referenced_columns).unwrap_or_default(),
                        &serde_json::to_string(&b.referenced_columns).unwrap_or_default(),
                    )
                })
        });
        let mut rels: BTreeMap<(String, String), Vec<&Relationship>> = BTreeMap::new();
        for r in sorted {
            if r.referenced_schema == r.schema {
                rels.entry((r.schema.clone(), r.relation.clone()))
                    .or_default()
                    .push(r);
            }
        }
        Ctx {
            cat,
            opts,
            types_by_id,
            name_by_rel,
            columns,
            rels,
        }
    }

    fn cols(&self, id: i64) -> &[&'a Column] {
        self.columns.get(&id).map(|v| v.as_slice()).unwrap_or(&[])
    }

    fn is_relation_type(&self, type_id: i64) -> Option<&'a PgType> {
        self.types_by_id
            .get(&type_id)
            .copied()
            .filter(|t| t.type_relation_id.is_some())
    }

    /// The relation (or composite type) name a function's result can be embedded as.
    fn result_relation_name(&self, f: &Function) -> Option<String> {
        let rel = f.return_type_relation_id?;
        if let Some(n) = self.name_by_rel.get(&rel) {
            return Some(n.to_string());
        }
        self.is_relation_type(f.return_type_id)
            .map(|t| t.name.clone())
    }

    fn in_schema(&self, schema: &str) -> bool {
        self.cat.schemas.iter().any(|s| s == schema)
    }

    /// The TypeScript type of a PostgreSQL type name, as seen from `schema`; a same-named
    /// type in `type_schema` (the one the column or argument has) is preferred.
    fn ts(&self, schema: &str, pg: &str, type_schema: Option<&str>) -> String {
        match pg {
            "bool" => return "boolean".into(),
            "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" => return "number".into(),
            "bytea" | "bpchar" | "varchar" | "date" | "text" | "citext" | "time" | "timetz"
            | "timestamp" | "timestamptz" | "uuid" | "vector" | "interval" => {
                return "string".into()
            }
            "json" | "jsonb" => return "Json".into(),
            "void" => return "undefined".into(),
            "record" => return "Record<string, unknown>".into(),
            _ => {}
        }
        if let Some(elem) = pg.strip_prefix('_') {
            return format!("({})[]", self.ts(schema, elem, type_schema));
        }
        let schema = type_schema.unwrap_or(schema);
        let pick = |cands: Vec<&'a PgType>| -> Option<&'a PgType> {
            cands
                .iter()
                .find(|t| t.schema == schema)
                .or(cands.first())
                .copied()
        };
        let types = &self.cat.types;
        if let Some(e) = pick(
            types
                .iter()
                .filter(|t| t.name == pg && !t.enums.is_empty())
                .collect(),
        ) {
            if self.in_schema(&e.schema) {
                return format!(
                    "Database[{}][\"Enums\"][{}]",
                    quote(&e.schema),
                    quote(&e.name)
                );
            }
            return e
                .enums
                .iter()
                .map(|v| quote(v))
                .collect::<Vec<_>>()
                .join(" | ");
        }
        if let Some(c) = pick(
            types
                .iter()
                .filter(|t| t.name == pg && !t.attributes.is_empty())
                .collect(),
        ) {
            if self.in_schema(&c.schema) {
                return format!(
                    "Database[{}][\"CompositeTypes\"][{}]",
                    quote(&c.schema),
                    quote(&c.name)
                );
            }
            return "unknown".into();
        }
        // Relations of every kind, those in the preferred schema first.
        let kinds = [
            (RelKind::Table, "Tables"),
            (RelKind::Foreign, "Tables"),
            (RelKind::View, "Views"),
            (RelKind::MatView, "Views"),
        ];
        let find = |same_schema: bool| {
            kinds.iter().find_map(|(kind, key_name)| {
                self.cat
                    .relations
                    .iter()
                    .find(|r| {
                        r.kind == *kind && r.name == pg && (!same_schema || r.schema == schema)
                    })
                    .map(|r| (r, *key_name))
            })
        };
        if let Some((r, key_name)) = find(true).or_else(|| find(false)) {
            return format!(
                "Database[{}][\"{key_name}\"][{}][\"Row\"]",
                quote(&r.schema),
                quote(&r.name)
            );
        }
        "unknown".into()
    }

    fn column_def(&self, schema: &str, c: &Column, is_nullable: bool, optional: bool) -> String {
        format!(
            "{}{}: {}",
            key(&c.name),
            if optional { "?" } else { "" },
            nullable(
                self.ts(schema, &c.format, Some(&c.type_schema)),
                is_nullable
            )
        )
    }
}

/// The functions of a schema PostgREST can call, with their input arguments, by name.
fn schema_functions<'a>(ctx: &Ctx<'a>, schema: &str) -> Vec<FnEntry<'a>> {
    let mut out = Vec::new();
    for f in ctx.cat.functions.iter().filter(|f| f.schema == schema) {
        let mut args: Vec<&super::catalog::Arg> = f.args.iter().collect();
        args.sort_by(|a, b| locale_cmp(&a.name, &b.name));
        let in_args: Vec<_> = args
            .into_iter()
            .filter(|a| matches!(a.mode, ArgMode::In | ArgMode::Inout | ArgMode::Variadic))
            .collect();
        let unnamed_ok = |a: &&super::catalog::Arg| UNNAMED_OK.contains(&a.type_id);
        let callable = in_args.is_empty()
            || in_args.iter().all(|a| !a.name.is_empty())
            || in_args
                .iter()
                .all(|a| !a.name.is_empty() || (a.has_default && unnamed_ok(a)))
            || (in_args.len() == 1
                && in_args[0].name.is_empty()
                && (unnamed_ok(&in_args[0]) || ctx.is_relation_type(in_args[0].type_id).is_some()));
        if callable {
            out.push(FnEntry { f, in_args });
        }
    }
    out.sort_by(|a, b| locale_cmp(&a.f.name, &b.f.name));
    out
}

pub fn render(cat: &Catalog, opts: &Options) -> String {
    let ctx = Ctx::new(cat, opts);
    let mut schemas = cat.schemas.clone();
    schemas.sort_by(|a, b| locale_cmp(a, b));
    let mut o = String::new();
    o.push_str(
        "export type Json =\n  | string\n  | number\n  | boolean\n  | null\n  | { [key: string]: Json | undefined }\n  | Json[]\n\nexport type Database = {\n",
    );
    if let Some(v) = &opts.postgrest_version {
        o.push_str("  // Allows to automatically instantiate createClient with right options\n");
        o.push_str(
            "  // instead of createClient<Database, { PostgrestVersion: 'XX' }>(URL, KEY)\n",
        );
        o.push_str(&format!(
            "  __InternalSupabase: {{\n    PostgrestVersion: {}\n  }}\n",
            quote(v)
        ));
    }
    for s in &schemas {
        super::schema::render_schema(&ctx_view(&ctx), s, &mut o);
    }
    o.push_str("}\n");
    o.push_str(&super::helpers::helpers());
    o.push_str("\nexport const Constants = {\n");
    for s in &schemas {
        let enums = super::schema::enums_of(cat, s);
        o.push_str(&format!("  {}: {{\n    Enums: {{", key(s)));
        if enums.is_empty() {
            o.push_str("},\n  },\n");
            continue;
        }
        o.push('\n');
        for e in enums {
            let vals: Vec<String> = e.enums.iter().map(|v| quote(v)).collect();
            o.push_str(&format!("      {}: [{}],\n", key(&e.name), vals.join(", ")));
        }
        o.push_str("    },\n  },\n");
    }
    o.push_str("} as const\n");
    o
}

/// What the per-schema renderer needs from the context.
pub struct View<'c, 'a> {
    ctx: &'c Ctx<'a>,
}

fn ctx_view<'c, 'a>(ctx: &'c Ctx<'a>) -> View<'c, 'a> {
    View { ctx }
}

impl<'c, 'a> View<'c, 'a> {
    pub fn catalog(&self) -> &'a Catalog {
        self.ctx.cat
    }
    pub fn one_to_one(&self) -> bool {
        self.ctx.opts.detect_one_to_one
    }
    pub fn cols(&self, id: i64) -> &[&'a Column] {
        self.ctx.cols(id)
    }
    pub fn ts(&self, schema: &str, pg: &str, type_schema: Option<&str>) -> String {
        self.ctx.ts(schema, pg, type_schema)
    }
    /// The TypeScript type of a type by oid (`unknown` when it is not known).
    pub fn ts_of(&self, schema: &str, type_id: i64) -> String {
        match self.type_by_id(type_id) {
            Some(t) => self.ts(schema, &t.name, Some(&t.schema)),
            None => "unknown".into(),
        }
    }
    pub fn column_def(&self, schema: &str, c: &Column, n: bool, opt: bool) -> String {
        self.ctx.column_def(schema, c, n, opt)
    }
    pub fn relationships(&self, schema: &str, name: &str) -> Vec<&'a Relationship> {
        self.ctx
            .rels
            .get(&(schema.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default()
    }
    pub fn functions(&self, schema: &str) -> Vec<(&'a Function, Vec<&'a super::catalog::Arg>)> {
        schema_functions(self.ctx, schema)
            .into_iter()
            .map(|e| (e.f, e.in_args))
            .collect()
    }
    pub fn type_by_id(&self, id: i64) -> Option<&'a PgType> {
        self.ctx.types_by_id.get(&id).copied()
    }
    pub fn relation_type(&self, id: i64) -> Option<&'a PgType> {
        self.ctx.is_relation_type(id)
    }
    pub fn result_relation_name(&self, f: &Function) -> Option<String> {
        self.ctx.result_relation_name(f)
    }
    pub fn nullable(&self, ts: String, n: bool) -> String {
        nullable(ts, n)
    }
    pub fn key(&self, name: &str) -> String {
        key(name)
    }
    pub fn quote(&self, s: &str) -> String {
        quote(s)
    }
}
