//! One schema's block of the `Database` type: Tables, Views, Functions, Enums and
//! CompositeTypes.

use super::catalog::{Arg, ArgMode, Catalog, Function, PgType, RelKind, Relation, Relationship};
use super::typescript::{locale_cmp, View};

const NEVER: &str = "[_ in never]: never";

pub fn enums_of<'a>(cat: &'a Catalog, schema: &str) -> Vec<&'a PgType> {
    let mut v: Vec<&PgType> = cat
        .types
        .iter()
        .filter(|t| t.schema == schema && !t.enums.is_empty())
        .collect();
    v.sort_by(|a, b| locale_cmp(&a.name, &b.name));
    v
}

fn composites_of<'a>(cat: &'a Catalog, schema: &str) -> Vec<&'a PgType> {
    let mut v: Vec<&PgType> = cat
        .types
        .iter()
        .filter(|t| t.schema == schema && !t.attributes.is_empty())
        .collect();
    v.sort_by(|a, b| locale_cmp(&a.name, &b.name));
    v
}

fn relations<'a>(cat: &'a Catalog, schema: &str, kinds: &[RelKind]) -> Vec<&'a Relation> {
    let mut v: Vec<&Relation> = cat
        .relations
        .iter()
        .filter(|r| r.schema == schema && kinds.contains(&r.kind))
        .collect();
    v.sort_by(|a, b| locale_cmp(&a.name, &b.name));
    v
}

/// Writes `lines` as the members of a `{ }` block at `indent`, or the never-mapping.
fn block(o: &mut String, indent: usize, name: &str, lines: &[String]) {
    let pad = " ".repeat(indent);
    if lines.is_empty() {
        o.push_str(&format!("{pad}{name}: {{\n{pad}  {NEVER}\n{pad}}}\n"));
        return;
    }
    o.push_str(&format!("{pad}{name}: {{\n"));
    for l in lines {
        o.push_str(l);
    }
    o.push_str(&format!("{pad}}}\n"));
}

fn fields(o: &mut String, indent: usize, name: &str, items: &[String]) {
    let pad = " ".repeat(indent);
    if items.is_empty() {
        o.push_str(&format!("{pad}{name}: {{}}\n"));
        return;
    }
    o.push_str(&format!("{pad}{name}: {{\n"));
    for i in items {
        o.push_str(&format!("{pad}  {i}\n"));
    }
    o.push_str(&format!("{pad}}}\n"));
}

fn relationships_block(v: &View, rels: &[&Relationship], indent: usize) -> String {
    let pad = " ".repeat(indent);
    if rels.is_empty() {
        return format!("{pad}Relationships: []\n");
    }
    let mut o = format!("{pad}Relationships: [\n");
    for r in rels {
        o.push_str(&format!("{pad}  {{\n"));
        o.push_str(&format!(
            "{pad}    foreignKeyName: {}\n",
            v.quote(&r.foreign_key_name)
        ));
        o.push_str(&format!("{pad}    columns: {}\n", json_list(&r.columns)));
        if v.one_to_one() {
            o.push_str(&format!("{pad}    isOneToOne: {}\n", r.is_one_to_one));
        }
        o.push_str(&format!(
            "{pad}    referencedRelation: {}\n",
            v.quote(&r.referenced_relation)
        ));
        o.push_str(&format!(
            "{pad}    referencedColumns: {}\n",
            json_list(&r.referenced_columns)
        ));
        o.push_str(&format!("{pad}  }},\n"));
    }
    o.push_str(&format!("{pad}]\n"));
    o
}

fn json_list(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(", "))
}

/// Computed fields: functions taking the relation's row as their only argument (by the
/// argument's type, so a named argument counts too).
fn computed_fields(v: &View, schema: &str, rel: &Relation) -> Vec<String> {
    v.functions(schema)
        .into_iter()
        .filter(|(f, in_args)| match in_args.as_slice() {
            [a] => match v.relation_type(a.type_id) {
                Some(t) => t.type_relation_id == Some(rel.id),
                None => f.argument_types == rel.name,
            },
            _ => f.argument_types == rel.name,
        })
        .map(|(f, _)| {
            format!(
                "{}: {}",
                v.key(&f.name),
                v.nullable(return_type(v, schema, f), true)
            )
        })
        .collect()
}

pub fn render_schema(v: &View, schema: &str, o: &mut String) {
    let cat = v.catalog();
    o.push_str(&format!("  {}: {{\n", v.key(schema)));
    let mut tables = Vec::new();
    for t in relations(cat, schema, &[RelKind::Table, RelKind::Foreign]) {
        let mut s = format!("      {}: {{\n", v.key(&t.name));
        let cols = v.cols(t.id);
        let mut row: Vec<String> = cols
            .iter()
            .map(|c| v.column_def(schema, c, c.is_nullable, false))
            .collect();
        row.extend(computed_fields(v, schema, t));
        fields(&mut s, 8, "Row", &row);
        let insert: Vec<String> = cols
            .iter()
            .map(|c| {
                if c.identity_always || c.is_generated {
                    format!("{}?: never", v.key(&c.name))
                } else {
                    let opt = c.is_nullable || c.is_identity || c.has_default;
                    v.column_def(schema, c, c.is_nullable, opt)
                }
            })
            .collect();
        fields(&mut s, 8, "Insert", &insert);
        let update: Vec<String> = cols
            .iter()
            .map(|c| {
                if c.identity_always || c.is_generated {
                    format!("{}?: never", v.key(&c.name))
                } else {
                    v.column_def(schema, c, c.is_nullable, true)
                }
            })
            .collect();
        fields(&mut s, 8, "Update", &update);
        s.push_str(&relationships_block(
            v,
            &v.relationships(schema, &t.name),
            8,
        ));
        s.push_str("      }\n");
        tables.push(s);
    }
    block(o, 4, "Tables", &tables);
    let mut views = Vec::new();
    for w in relations(cat, schema, &[RelKind::View, RelKind::MatView]) {
        let mut s = format!("      {}: {{\n", v.key(&w.name));
        let cols = v.cols(w.id);
        let mut row: Vec<String> = cols
            .iter()
            .map(|c| v.column_def(schema, c, c.is_nullable, false))
            .collect();
        row.extend(computed_fields(v, schema, w));
        fields(&mut s, 8, "Row", &row);
        let write: Vec<String> = cols
            .iter()
            .map(|c| {
                if c.is_updatable {
                    v.column_def(schema, c, true, true)
                } else {
                    format!("{}?: never", v.key(&c.name))
                }
            })
            .collect();
        if w.is_insert_enabled {
            fields(&mut s, 8, "Insert", &write);
        }
        if w.is_update_enabled {
            fields(&mut s, 8, "Update", &write);
        }
        s.push_str(&relationships_block(
            v,
            &v.relationships(schema, &w.name),
            8,
        ));
        s.push_str("      }\n");
        views.push(s);
    }
    block(o, 4, "Views", &views);
    block(o, 4, "Functions", &super::functions::render(v, schema));
    let enums: Vec<String> = enums_of(cat, schema)
        .iter()
        .map(|e| {
            let vals: Vec<String> = e.enums.iter().map(|x| v.quote(x)).collect();
            format!("      {}: {}\n", v.key(&e.name), vals.join(" | "))
        })
        .collect();
    block(o, 4, "Enums", &enums);
    let comps: Vec<String> = composites_of(cat, schema)
        .iter()
        .map(|c| {
            let mut s = format!("      {}: {{\n", v.key(&c.name));
            for a in &c.attributes {
                let ts = v.nullable(v.ts_of(schema, a.type_id), true);
                s.push_str(&format!("        {}: {}\n", v.key(&a.name), ts));
            }
            s.push_str("      }\n");
            s
        })
        .collect();
    block(o, 4, "CompositeTypes", &comps);
    o.push_str("  }\n");
}

/// The TypeScript type of what a function returns (before `[]` and SetofOptions).
pub fn return_type(v: &View, schema: &str, f: &Function) -> String {
    let table_args: Vec<&Arg> = {
        let mut a: Vec<&Arg> = f.args.iter().filter(|a| a.mode == ArgMode::Table).collect();
        a.sort_by(|x, y| locale_cmp(&x.name, &y.name));
        a
    };
    if !table_args.is_empty() {
        let items: Vec<String> = table_args
            .iter()
            .map(|a| format!("{}: {}", v.key(&a.name), v.ts_of(schema, a.type_id)))
            .collect();
        return format!("{{ {} }}", items.join("; "));
    }
    if let Some(rel_id) = f.return_type_relation_id {
        let cat = v.catalog();
        if let Some(rel) = cat
            .relations
            .iter()
            .find(|r| r.id == rel_id && r.schema == schema)
        {
            let items: Vec<String> = v
                .cols(rel.id)
                .iter()
                .map(|c| v.column_def(schema, c, c.is_nullable, false))
                .collect();
            return format!("{{ {} }}", items.join("; "));
        }
    }
    v.ts_of(schema, f.return_type_id)
}
