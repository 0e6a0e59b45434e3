//! Reads what `gen types` needs from the PostgreSQL catalog: schemas, relations, columns,
//! foreign keys (and the views that expose them), functions and types. Each query returns
//! one JSON array, deserialised into the plain structs below.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio_postgres::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelKind {
    Table,
    Foreign,
    View,
    MatView,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Relation {
    pub id: i64,
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    /// A view PostgREST can insert into / update through (auto-updatable, or made
    /// writable by INSTEAD OF triggers or unconditional INSTEAD rules).
    pub is_insert_enabled: bool,
    pub is_update_enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Column {
    pub table_id: i64,
    pub name: String,
    /// The type's name (`typname`, e.g. `int4`, `_text`); a domain's base type.
    pub format: String,
    /// The schema of that type.
    pub type_schema: String,
    pub is_nullable: bool,
    pub is_identity: bool,
    /// A generated (stored) column: never written.
    pub is_generated: bool,
    pub identity_always: bool,
    pub has_default: bool,
    pub is_updatable: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Relationship {
    pub foreign_key_name: String,
    pub schema: String,
    pub relation: String,
    pub columns: Vec<String>,
    pub is_one_to_one: bool,
    pub referenced_schema: String,
    pub referenced_relation: String,
    pub referenced_columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgMode {
    In,
    Out,
    Inout,
    Variadic,
    Table,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Arg {
    pub mode: ArgMode,
    pub name: String,
    pub type_id: i64,
    pub has_default: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Function {
    pub schema: String,
    pub name: String,
    pub args: Vec<Arg>,
    /// `pg_get_function_arguments` (e.g. `todos` for a computed field).
    pub argument_types: String,
    /// `pg_get_function_result`.
    pub return_type: String,
    pub return_type_id: i64,
    pub return_type_relation_id: Option<i64>,
    pub is_set_returning: bool,
    pub prorows: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Attribute {
    pub name: String,
    pub type_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PgType {
    pub id: i64,
    pub name: String,
    pub schema: String,
    /// `format_type(oid, null)`, schema-qualified when not on the search path.
    pub format: String,
    pub enums: Vec<String>,
    pub attributes: Vec<Attribute>,
    pub type_relation_id: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The schemas asked for that exist, by name.
    pub schemas: Vec<String>,
    pub relations: Vec<Relation>,
    pub columns: Vec<Column>,
    pub relationships: Vec<Relationship>,
    pub functions: Vec<Function>,
    pub types: Vec<PgType>,
}

const SCHEMAS: &str = "
select n.nspname as name from pg_namespace n
where n.nspname = any($1) and not starts_with(n.nspname, 'pg_temp_')";

const RELATIONS: &str = "
select c.oid::int8 as id, n.nspname as schema, c.relname as name,
  case c.relkind when 'r' then 'table' when 'p' then 'table' when 'f' then 'foreign'
    when 'v' then 'view' else 'mat_view' end as kind,
  c.relkind = 'v' and (pg_relation_is_updatable(c.oid, true) & 8) = 8 as is_insert_enabled,
  c.relkind = 'v' and (pg_relation_is_updatable(c.oid, true) & 4) = 4 as is_update_enabled
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = any($1) and c.relkind in ('r', 'p', 'f', 'v', 'm') and not c.relispartition";

const COLUMNS: &str = "
select c.oid::int8 as table_id, a.attname as name,
  coalesce(bt.typname, t.typname) as format,
  (select nspname from pg_namespace where oid = coalesce(bt.typnamespace, t.typnamespace))
    as type_schema,
  a.attgenerated in ('s', 'v') as is_generated,
  not (a.attnotnull or (t.typtype = 'd' and t.typnotnull)) as is_nullable,
  a.attidentity in ('a', 'd') as is_identity,
  a.attidentity = 'a' as identity_always,
  a.atthasdef as has_default,
  (c.relkind in ('r', 'p') or (c.relkind in ('v', 'f') and (
    pg_column_is_updatable(c.oid, a.attnum, false)
    or exists (select 1 from pg_trigger tg where tg.tgrelid = c.oid and tg.tgtype & 64 <> 0
               and tg.tgtype & 20 <> 0 and not tg.tgisinternal)
    or exists (select 1 from pg_rewrite rw where rw.ev_class = c.oid and rw.is_instead
               and rw.ev_type in ('2', '3') and rw.ev_qual::text = '<>')))) as is_updatable
from pg_attribute a
join pg_class c on c.oid = a.attrelid
join pg_namespace n on n.oid = c.relnamespace
join pg_type t on t.oid = a.atttypid
left join pg_type bt on t.typtype = 'd' and bt.oid = t.typbasetype
where n.nspname = any($1) and a.attnum > 0 and not a.attisdropped
  and c.relkind in ('r', 'p', 'f', 'v', 'm')";

// A foreign key is one-to-one when its columns are exactly a primary key or unique key.
const RELATIONSHIPS: &str = "
with keys as (
  select k.conrelid, array(select a.attname from unnest(k.conkey) with ordinality u(n, o)
      join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.n order by o)::text[] as cols
  from pg_constraint k where k.contype in ('p', 'u'))
select f.conname as foreign_key_name, n1.nspname as schema, t1.relname as relation,
  cols.cols as columns, n2.nspname as referenced_schema, t2.relname as referenced_relation,
  cols.refs as referenced_columns,
  exists (select 1 from keys where keys.conrelid = f.conrelid and keys.cols = cols.cols)
    as is_one_to_one
from pg_constraint f
join pg_class t1 on t1.oid = f.conrelid join pg_namespace n1 on n1.oid = t1.relnamespace
join pg_class t2 on t2.oid = f.confrelid join pg_namespace n2 on n2.oid = t2.relnamespace
cross join lateral (
  select array_agg(a1.attname order by u.o)::text[] as cols,
         array_agg(a2.attname order by u.o)::text[] as refs
  from unnest(f.conkey, f.confkey) with ordinality u(c, r, o)
  join pg_attribute a1 on a1.attrelid = f.conrelid and a1.attnum = u.c
  join pg_attribute a2 on a2.attrelid = f.confrelid and a2.attnum = u.r) cols
where f.contype = 'f' and f.conparentid = 0
  and n1.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')";

const FUNCTIONS: &str = "
select n.nspname as schema, p.proname as name,
  coalesce((select jsonb_agg(jsonb_build_object(
      'mode', case m when 'i' then 'in' when 'o' then 'out' when 'b' then 'inout'
                     when 'v' then 'variadic' else 'table' end,
      'name', coalesce(p.proargnames[o], ''),
      'type_id', ty::int8,
      'has_default', o > p.pronargs - p.pronargdefaults and o <= p.pronargs) order by o)
    from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]),
                coalesce(p.proargmodes, array_fill('i'::\"char\",
                  array[cardinality(coalesce(p.proallargtypes, p.proargtypes::oid[]))])))
         with ordinality u(ty, m, o)), '[]') as args,
  pg_get_function_arguments(p.oid) as argument_types,
  pg_get_function_result(p.oid) as return_type,
  p.prorettype::int8 as return_type_id,
  nullif(rt.typrelid, 0)::int8 as return_type_relation_id,
  p.proretset as is_set_returning,
  case when p.proretset then nullif(p.prorows, 0)::float8 end as prorows
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
left join pg_type rt on rt.oid = p.prorettype
where n.nspname = any($1) and p.prokind = 'f'
  and p.prorettype not in ('trigger'::regtype, 'event_trigger'::regtype)";

const TYPES: &str = "
select t.oid::int8 as id, t.typname as name, n.nspname as schema,
  format_type(t.oid, null) as format,
  coalesce((select jsonb_agg(e.enumlabel order by e.enumsortorder) from pg_enum e
            where e.enumtypid = t.oid), '[]') as enums,
  coalesce((select jsonb_agg(jsonb_build_object('name', a.attname, 'type_id', a.atttypid::int8)
              order by a.attnum)
            from pg_class c join pg_attribute a on a.attrelid = c.oid
            where c.oid = t.typrelid and c.relkind = 'c' and a.attnum > 0
              and not a.attisdropped), '[]') as attributes,
  nullif(t.typrelid, 0)::int8 as type_relation_id
from pg_type t join pg_namespace n on n.oid = t.typnamespace
where t.typrelid = 0
   or (select c.relkind in ('c', 'r', 'v', 'm', 'p') from pg_class c where c.oid = t.typrelid)";

pub async fn load(client: &Client, schemas: &[String]) -> Result<Catalog, String> {
    let mut cat = Catalog {
        schemas: list::<NameRow>(client, SCHEMAS, schemas)
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect(),
        relations: list(client, RELATIONS, schemas).await?,
        columns: list(client, COLUMNS, schemas).await?,
        relationships: list(client, RELATIONSHIPS, &[]).await?,
        functions: list(client, FUNCTIONS, schemas).await?,
        types: list(client, TYPES, &[]).await?,
    };
    let through_views = super::viewdeps::load(client, &cat.relationships).await?;
    cat.relationships.extend(through_views);
    Ok(cat)
}

#[derive(Deserialize)]
struct NameRow {
    name: String,
}

/// Runs `sql` (with the schema list as `$1` where it has one) and reads its rows as `T`.
pub async fn list<T: DeserializeOwned>(
    client: &Client,
    sql: &str,
    schemas: &[String],
) -> Result<Vec<T>, String> {
    let wrapped = format!("select coalesce(jsonb_agg(x), '[]') from ({sql}) x");
    let row = if sql.contains("$1") {
        client.query_one(&wrapped, &[&schemas]).await
    } else {
        client.query_one(&wrapped, &[]).await
    }
    .map_err(|e| crate::db::error_text(&e))?;
    let v: serde_json::Value = row.get(0);
    serde_json::from_value(v).map_err(|e| format!("reading the catalog: {e}"))
}
