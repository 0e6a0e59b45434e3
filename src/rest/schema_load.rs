//! Reading the schema cache from the catalogs: a few queries, then the relationships
//! (foreign keys, seen through views too, many-to-many junctions and computed ones) worked
//! out in Rust, one step per function.

use std::collections::HashMap;

use tokio_postgres::{GenericClient, Row};

use super::schema::{
    Arg, Cardinality, Column, Function, Relation, Relationship, RetType, SchemaCache,
};

const RELATIONS: &str = r#"
select n.nspname::text, c.relname::text, c.relkind::text, c.oid::oid,
       obj_description(c.oid, 'pg_class'),
       pg_relation_is_updatable(c.oid::regclass, true)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = any($1) and c.relkind in ('r','v','m','f','p')
"#;

const COLUMNS: &str = r#"
select a.attrelid::oid, a.attname::text, a.attnum::int4, format_type(a.atttypid, a.atttypmod),
       not a.attnotnull,
       case when a.attidentity <> '' then (select format('nextval(%L::regclass)', sq.oid::regclass::text)
              from pg_depend dp join pg_class sq on sq.oid = dp.objid and sq.relkind = 'S'
              where dp.classid = 'pg_class'::regclass and dp.refobjid = a.attrelid and dp.refobjsubid = a.attnum limit 1)
            else pg_get_expr(d.adbin, d.adrelid) end,
       col_description(a.attrelid, a.attnum),
       coalesce((select array_agg(e.enumlabel::text order by e.enumsortorder) from pg_enum e
                 where e.enumtypid = a.atttypid), '{}'),
       a.attgenerated <> ''
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where n.nspname = any($1) and c.relkind in ('r','v','m','f','p') and a.attnum > 0
  and not a.attisdropped
order by a.attrelid, a.attnum
"#;

/// Primary keys, unique constraints and foreign keys, column names resolved.
const CONSTRAINTS: &str = r#"
select con.contype::text, con.conname::text, con.conrelid::oid,
       array(select a.attname::text from unnest(con.conkey) with ordinality k(n, o)
             join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.n order by k.o),
       con.confrelid::oid,
       array(select a.attname::text from unnest(coalesce(con.confkey, '{}')) with ordinality k(n, o)
             join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.n order by k.o)
from pg_constraint con
where con.contype in ('p','u','f')
  and (con.conrelid in (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = any($1))
    or con.confrelid in (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = any($1)))
order by con.oid
"#;

const VIEWS: &str = r#"
select r.ev_class::oid, r.ev_action::text
from pg_rewrite r join pg_class c on c.oid = r.ev_class join pg_namespace n on n.oid = c.relnamespace
where r.rulename = '_RETURN' and c.relkind in ('v','m') and n.nspname = any($1)
"#;

const FUNCTIONS: &str = r#"
select n.nspname::text, p.proname::text,
  coalesce((select json_agg(json_build_object('name', coalesce(a.name, ''), 'type', format_type(a.typ, null), 'mode', a.mode::text) order by a.ord)
     from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]),
                 coalesce(p.proargmodes, array_fill('i'::"char", array[p.pronargs::int])),
                 coalesce(p.proargnames, array_fill(''::text, array[coalesce(array_length(p.proallargtypes, 1), p.pronargs::int)])))
          with ordinality as a(typ, mode, name, ord)), '[]')::text,
  p.pronargdefaults::int4, p.proretset, p.provolatile::text, p.provariadic <> 0,
  p.prorows::float4, t.typtype::text, t.typrelid::oid, format_type(p.prorettype, null),
  obj_description(p.oid, 'pg_proc'),
  case when t.typtype = 'c' then (select json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod), 'mode', 'o') order by a.attnum)
     from pg_attribute a where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped)::text end,
  case when p.pronargs = 1 then (select at.typrelid from pg_type at where at.oid = p.proargtypes[0]) else 0 end::oid
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type t on t.oid = p.prorettype
where n.nspname = any($1) and p.prokind = 'f'
order by p.oid
"#;

fn opt_desc(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

pub async fn load<C: GenericClient>(
    client: &C,
    schemas: &[String],
) -> Result<SchemaCache, tokio_postgres::Error> {
    let mut sc = SchemaCache::default();
    relations(client, schemas, &mut sc).await?;
    columns(client, schemas, &mut sc).await?;
    let keys = constraints(client, schemas, &mut sc).await?;
    let views = view_map(client, schemas).await?;
    view_primary_keys(&mut sc, &views, &keys.uniques);
    fk_relationships(&mut sc, &keys, &views);
    many_to_many(&mut sc);
    functions(client, schemas, &mut sc).await?;
    role_settings(client, &mut sc).await;
    sc.postgis = client
        .query_opt("select 1 from pg_extension where extname = 'postgis'", &[])
        .await?
        .is_some();
    Ok(sc)
}

async fn relations<C: GenericClient>(
    client: &C,
    schemas: &[String],
    sc: &mut SchemaCache,
) -> Result<(), tokio_postgres::Error> {
    for r in client.query(RELATIONS, &[&schemas]).await? {
        let kind: String = r.get(2);
        let upd: i32 = r.get(5);
        let key = (r.get::<_, String>(0), r.get::<_, String>(1));
        let oid: u32 = r.get(3);
        let k = kind.chars().next().unwrap_or('r');
        let is_table = matches!(k, 'r' | 'p');
        sc.by_oid.insert(oid, key.clone());
        sc.relations.insert(
            key.clone(),
            Relation {
                oid,
                schema: key.0,
                name: key.1,
                kind: k,
                columns: vec![],
                pk: vec![],
                description: opt_desc(r.get(4)),
                // pg_relation_is_updatable bits: 8 insert, 4 update, 16 delete.
                insertable: is_table || upd & 8 != 0,
                updatable: is_table || upd & 4 != 0,
                deletable: is_table || upd & 16 != 0,
            },
        );
    }
    Ok(())
}

async fn columns<C: GenericClient>(
    client: &C,
    schemas: &[String],
    sc: &mut SchemaCache,
) -> Result<(), tokio_postgres::Error> {
    for r in client.query(COLUMNS, &[&schemas]).await? {
        let oid: u32 = r.get(0);
        let Some(key) = sc.by_oid.get(&oid) else {
            continue;
        };
        if let Some(rel) = sc.relations.get_mut(key) {
            rel.columns.push(Column {
                name: r.get(1),
                position: r.get(2),
                ty: r.get(3),
                nullable: r.get(4),
                default: r.get(5),
                description: opt_desc(r.get(6)),
                enum_values: r.get(7),
                generated: r.get(8),
            });
        }
    }
    Ok(())
}

struct Fk {
    name: String,
    rel: u32,
    cols: Vec<String>,
    frel: u32,
    fcols: Vec<String>,
}

/// The foreign keys, and every relation's unique column sets (primary key included).
struct Keys {
    fks: Vec<Fk>,
    uniques: HashMap<u32, Vec<Vec<String>>>,
}

impl Keys {
    fn is_unique(&self, t: u32, cols: &[String]) -> bool {
        self.uniques.get(&t).is_some_and(|us| {
            us.iter().any(|u| {
                !u.is_empty() && u.iter().all(|c| cols.contains(c)) && u.len() <= cols.len()
            })
        })
    }
}

/// Reads the constraints; primary keys go straight onto their relations.
async fn constraints<C: GenericClient>(
    client: &C,
    schemas: &[String],
    sc: &mut SchemaCache,
) -> Result<Keys, tokio_postgres::Error> {
    let mut fks = vec![];
    let mut uniques: HashMap<u32, Vec<Vec<String>>> = HashMap::new();
    for r in client.query(CONSTRAINTS, &[&schemas]).await? {
        let ty: String = r.get(0);
        let rel: u32 = r.get(2);
        let cols: Vec<String> = r.get(3);
        match ty.as_str() {
            "p" => {
                if let Some(key) = sc.by_oid.get(&rel).cloned() {
                    if let Some(x) = sc.relations.get_mut(&key) {
                        x.pk = cols.clone();
                    }
                }
                uniques.entry(rel).or_default().push(cols);
            }
            "u" => uniques.entry(rel).or_default().push(cols),
            _ => fks.push(Fk {
                name: r.get(1),
                rel,
                cols,
                frel: r.get(4),
                fcols: r.get(5),
            }),
        }
    }
    Ok(Keys { fks, uniques })
}

/// For each view: (view column, base table oid, base column name), following views of views.
type ViewMap = HashMap<u32, Vec<(String, u32, String)>>;

async fn view_map<C: GenericClient>(
    client: &C,
    schemas: &[String],
) -> Result<ViewMap, tokio_postgres::Error> {
    // Views: which view column comes from which (table oid, column number).
    let mut view_cols: HashMap<u32, Vec<(String, u32, i32)>> = HashMap::new();
    for r in client.query(VIEWS, &[&schemas]).await? {
        let oid: u32 = r.get(0);
        let action: String = r.get(1);
        view_cols.insert(oid, parse_view_targets(&action));
    }
    // Column numbers -> names for every relation referenced by views.
    let referenced: Vec<u32> = view_cols.values().flatten().map(|(_, t, _)| *t).collect();
    let mut attnames: HashMap<(u32, i32), String> = HashMap::new();
    if !referenced.is_empty() {
        for r in client
            .query(
                "select attrelid::oid, attnum::int4, attname::text from pg_attribute where attrelid = any($1) and attnum > 0",
                &[&referenced],
            )
            .await?
        {
            attnames.insert((r.get(0), r.get(1)), r.get(2));
        }
    }
    let mut view_map: ViewMap = HashMap::new();
    for (&v, cols) in &view_cols {
        let mut out = vec![];
        for (vcol, t, n) in cols {
            if let Some(bn) = attnames.get(&(*t, *n)) {
                out.push((vcol.clone(), *t, bn.clone()));
            }
        }
        view_map.insert(v, out);
    }
    resolve_view_chains(&mut view_map);
    Ok(view_map)
}

/// Views over views: map their columns down to the base tables (up to a few levels).
fn resolve_view_chains(view_map: &mut ViewMap) {
    for _ in 0..4 {
        let snapshot = view_map.clone();
        for (_, cols) in view_map.iter_mut() {
            let mut extra = vec![];
            for (vcol, t, bn) in cols.iter() {
                if let Some(inner) = snapshot.get(t) {
                    for (ivcol, it, ibn) in inner {
                        if ivcol == bn
                            && !cols
                                .iter()
                                .any(|(a, b, c)| a == vcol && b == it && c == ibn)
                        {
                            extra.push((vcol.clone(), *it, ibn.clone()));
                        }
                    }
                }
            }
            cols.extend(extra);
        }
    }
}

/// Every relation (table or view) that exposes all of `cols` of table `t`: (oid, mapped cols).
fn expose(view_map: &ViewMap, t: u32, cols: &[String]) -> Vec<(u32, Vec<String>)> {
    let mut out = vec![(t, cols.to_vec())];
    let mut views: Vec<_> = view_map.iter().collect();
    views.sort_by_key(|(v, _)| **v);
    for (&v, m) in views {
        // A view may expose a column twice; take the first mapping per base column.
        let mut mapped = vec![];
        for c in cols {
            match m.iter().find(|(_, bt, bn)| *bt == t && bn == c) {
                Some((vc, _, _)) => mapped.push(vc.clone()),
                None => break,
            }
        }
        if mapped.len() == cols.len() {
            out.push((v, mapped));
        }
    }
    out
}

/// View primary keys come from their base table.
fn view_primary_keys(
    sc: &mut SchemaCache,
    view_map: &ViewMap,
    uniques: &HashMap<u32, Vec<Vec<String>>>,
) {
    for &v in view_map.keys() {
        let Some(vkey) = sc.by_oid.get(&v).cloned() else {
            continue;
        };
        let mut pk = vec![];
        let mut tables: Vec<(&u32, &Vec<Vec<String>>)> = uniques.iter().collect();
        tables.sort_by_key(|(t, _)| **t);
        for (&t, _) in tables {
            let Some(tkey) = sc.by_oid.get(&t) else {
                continue;
            };
            let Some(trel) = sc.relations.get(tkey) else {
                continue;
            };
            if trel.pk.is_empty() {
                continue;
            }
            for (vo, mapped) in expose(view_map, t, &trel.pk) {
                if vo == v {
                    pk = mapped;
                }
            }
            if !pk.is_empty() {
                break;
            }
        }
        if let Some(r) = sc.relations.get_mut(&vkey) {
            r.pk = pk;
        }
    }
}

/// Each foreign key, between every pair of relations exposing its two sides, both ways.
fn fk_relationships(sc: &mut SchemaCache, keys: &Keys, view_map: &ViewMap) {
    for fk in &keys.fks {
        let one_to_one = keys.is_unique(fk.rel, &fk.cols);
        for (s, scols) in expose(view_map, fk.rel, &fk.cols) {
            for (t, tcols) in expose(view_map, fk.frel, &fk.fcols) {
                let (Some(sk), Some(tk)) = (sc.by_oid.get(&s).cloned(), sc.by_oid.get(&t).cloned())
                else {
                    continue;
                };
                let pairs: Vec<(String, String)> =
                    scols.iter().cloned().zip(tcols.iter().cloned()).collect();
                sc.relationships.push(Relationship {
                    source: sk.clone(),
                    target: tk.clone(),
                    constraint: fk.name.clone(),
                    cols: pairs.clone(),
                    card: if one_to_one {
                        Cardinality::OneToOne
                    } else {
                        Cardinality::ManyToOne
                    },
                    function: None,
                    to_one_computed: false,
                    base: s == fk.rel && t == fk.frel,
                    forward: true,
                });
                sc.relationships.push(Relationship {
                    source: tk,
                    target: sk,
                    constraint: fk.name.clone(),
                    cols: pairs.into_iter().map(|(a, b)| (b, a)).collect(),
                    card: if one_to_one {
                        Cardinality::OneToOne
                    } else {
                        Cardinality::OneToMany
                    },
                    function: None,
                    to_one_computed: false,
                    base: s == fk.rel && t == fk.frel,
                    forward: false,
                });
            }
        }
    }
}

/// Many-to-many through junctions: two FKs out of the same relation.
fn many_to_many(sc: &mut SchemaCache) {
    let m2o: Vec<Relationship> = sc
        .relationships
        .iter()
        .filter(|r| r.forward && r.function.is_none())
        .cloned()
        .collect();
    for a in &m2o {
        for b in &m2o {
            if a.source != b.source || a.constraint == b.constraint {
                continue;
            }
            // Junction rows point at a (source of the m2m) and b (target).
            sc.relationships.push(Relationship {
                source: a.target.clone(),
                target: b.target.clone(),
                constraint: b.constraint.clone(),
                cols: vec![],
                card: Cardinality::ManyToMany {
                    junction: a.source.clone(),
                    fk_source: a.constraint.clone(),
                    fk_target: b.constraint.clone(),
                    source_cols: a.cols.iter().map(|(j, s)| (s.clone(), j.clone())).collect(),
                    target_cols: b.cols.iter().map(|(j, t)| (t.clone(), j.clone())).collect(),
                },
                function: None,
                to_one_computed: false,
                base: a.base && b.base,
                forward: false,
            });
        }
    }
}

async fn functions<C: GenericClient>(
    client: &C,
    schemas: &[String],
    sc: &mut SchemaCache,
) -> Result<(), tokio_postgres::Error> {
    for r in client.query(FUNCTIONS, &[&schemas]).await? {
        let (f, arg_rel) = read_function(&r, sc);
        // Computed relationships/fields: one argument of a relation's row type.
        if f.args.len() == 1 {
            if let Some(src) = sc.by_oid.get(&arg_rel).cloned() {
                add_computed(sc, &f, src);
            }
        }
        sc.functions
            .entry((f.schema.clone(), f.name.clone()))
            .or_default()
            .push(f);
    }
    Ok(())
}

/// One row of [`FUNCTIONS`]: the function, and the relation whose row type its single
/// argument is (0 if none).
fn read_function(r: &Row, sc: &SchemaCache) -> (Function, u32) {
    let schema: String = r.get(0);
    let name: String = r.get(1);
    let all: Vec<Arg> = serde_json::from_str(&r.get::<_, String>(2)).unwrap_or_default();
    let ndefaults: i32 = r.get(3);
    let returns_set: bool = r.get(4);
    let vol: String = r.get(5);
    let variadic: bool = r.get(6);
    let rows: f32 = r.get(7);
    let typtype: String = r.get(8);
    let typrelid: u32 = r.get(9);
    let rettype: String = r.get(10);
    let description = opt_desc(r.get(11));
    let comp_cols: Option<String> = r.get(12);
    let arg_rel: u32 = r.get(13);
    let mut args: Vec<Arg> = all
        .iter()
        .filter(|a| matches!(a.mode.as_str(), "i" | "b" | "v"))
        .cloned()
        .collect();
    let outs: Vec<(String, String)> = all
        .iter()
        .filter(|a| matches!(a.mode.as_str(), "o" | "b" | "t"))
        .map(|a| (a.name.clone(), a.ty.clone()))
        .collect();
    let n = args.len();
    for (i, a) in args.iter_mut().enumerate() {
        a.has_default = (i as i32) >= n as i32 - ndefaults;
    }
    let ret = if let Some(k) = sc.by_oid.get(&typrelid).filter(|_| typrelid != 0) {
        RetType::Relation(k.0.clone(), k.1.clone())
    } else if rettype == "void" {
        RetType::Void
    } else if rettype == "record" && !outs.is_empty() {
        RetType::Record(outs)
    } else if typtype == "c" {
        let cols: Vec<Arg> = comp_cols
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default();
        RetType::Record(cols.into_iter().map(|a| (a.name, a.ty)).collect())
    } else {
        RetType::Scalar(rettype)
    };
    let f = Function {
        schema,
        name,
        args,
        ret,
        returns_set,
        volatility: vol.chars().next().unwrap_or('v'),
        variadic,
        rows,
        description,
    };
    (f, arg_rel)
}

/// A function of one row of `src`: a computed relationship (it returns rows of a relation)
/// or a computed field (it returns one scalar).
fn add_computed(sc: &mut SchemaCache, f: &Function, src: (String, String)) {
    let (schema, name) = (&f.schema, &f.name);
    match &f.ret {
        RetType::Relation(ts, tn) => sc.relationships.push(Relationship {
            source: src,
            target: (ts.clone(), tn.clone()),
            constraint: name.clone(),
            cols: vec![],
            card: if f.returns_set {
                Cardinality::OneToMany
            } else {
                Cardinality::ManyToOne
            },
            function: Some((schema.clone(), name.clone())),
            to_one_computed: !f.returns_set || f.rows == 1.0,
            base: true,
            forward: false,
        }),
        RetType::Scalar(t) if !f.returns_set => sc.computed_fields.entry(src).or_default().push((
            schema.clone(),
            name.clone(),
            t.clone(),
        )),
        _ => {}
    }
}

/// Role settings: the login role's `pgrst.*` (PostgREST reads them from it), and every
/// role's statement_timeout (`alter role anon set statement_timeout = '3s'`): SET ROLE
/// does not apply role settings, so requests set it themselves, as PostgREST does.
async fn role_settings<C: GenericClient>(client: &C, sc: &mut SchemaCache) {
    if let Ok(rows) = client
        .query(
            "select unnest(s.setconfig) from pg_db_role_setting s join pg_roles r on r.oid = s.setrole
             where r.rolname = 'authenticator' and s.setdatabase in (0, (select oid from pg_database where datname = current_database()))",
            &[],
        )
        .await
    {
        for r in rows {
            let kv: String = r.get(0);
            if let Some((k, v)) = kv.split_once('=') {
                if let Some(k) = k.strip_prefix("pgrst.") {
                    sc.role_settings.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    if let Ok(rows) = client
        .query(
            "select r.rolname::text, unnest(s.setconfig) from pg_db_role_setting s join pg_roles r on r.oid = s.setrole
             where s.setdatabase in (0, (select oid from pg_database where datname = current_database()))",
            &[],
        )
        .await
    {
        for r in rows {
            let kv: String = r.get(1);
            if let Some(v) = kv.strip_prefix("statement_timeout=") {
                if let Some(ms) = parse_duration_ms(v) {
                    sc.role_timeouts.insert(r.get(0), ms);
                }
            }
        }
    }
}

/// A PostgreSQL duration setting (`3s`, `8000`, `1min`, `500ms`) in milliseconds.
fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches('\'').trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `(resname, resorigtbl, resorigcol)` of every TARGETENTRY in a rule's node tree. Later
/// entries win for a name, so the outer query's target list (printed last) decides.
fn parse_view_targets(action: &str) -> Vec<(String, u32, i32)> {
    let mut out: Vec<(String, u32, i32)> = vec![];
    let mut rest = action;
    while let Some(i) = rest.find(":resname ") {
        rest = &rest[i + 9..];
        let Some(end) = rest.find(" :ressortgroupref") else {
            break;
        };
        let name = rest[..end].replace('\\', "");
        let num = |key: &str, s: &str| -> Option<i64> {
            let j = s.find(key)? + key.len();
            let t = &s[j..];
            let e = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            t[..e].parse().ok()
        };
        let tbl = num(":resorigtbl ", rest).unwrap_or(0) as u32;
        let col = num(":resorigcol ", rest).unwrap_or(0) as i32;
        out.retain(|(n, _, _)| n != &name);
        if tbl != 0 && name != "<>" {
            out.push((name, tbl, col));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration_ms("3s"), Some(3000));
        assert_eq!(super::parse_duration_ms("8000"), Some(8000));
        assert_eq!(super::parse_duration_ms("1min"), Some(60000));
        assert_eq!(super::parse_duration_ms("x"), None);
    }

    #[test]
    fn view_targets() {
        let s = "({QUERY :targetList ({TARGETENTRY :expr {VAR} :resno 1 :resname id :ressortgroupref 0 :resorigtbl 1234 :resorigcol 1 :resjunk false} {TARGETENTRY :expr {FUNCEXPR} :resno 2 :resname x :ressortgroupref 0 :resorigtbl 0 :resorigcol 0 :resjunk false} {TARGETENTRY :resname weird\\ col :ressortgroupref 0 :resorigtbl 9 :resorigcol 3 :resjunk false})})";
        let t = super::parse_view_targets(s);
        assert_eq!(t, vec![("id".into(), 1234, 1), ("weird col".into(), 9, 3)]);
    }
}
