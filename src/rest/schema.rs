//! The schema cache: relations, columns, keys, relationships (including through views and
//! computed ones) and functions of the exposed schemas, read from the catalogs in a few
//! queries. Only the planner reads it.

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column (written into SQL for casts; catalog text).
    pub ty: String,
    pub nullable: bool,
    pub default: Option<String>,
    pub description: Option<String>,
    pub enum_values: Vec<String>,
    pub generated: bool,
    pub position: i32,
}

#[derive(Debug, Clone)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// 'r' table, 'p' partitioned, 'v' view, 'm' matview, 'f' foreign
    pub kind: char,
    pub columns: Vec<Column>,
    pub pk: Vec<String>,
    pub description: Option<String>,
    pub insertable: bool,
    pub updatable: bool,
    pub deletable: bool,
}

impl Relation {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    pub fn is_view(&self) -> bool {
        matches!(self.kind, 'v' | 'm')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cardinality {
    ManyToOne,
    OneToMany,
    OneToOne,
    ManyToMany {
        junction: (String, String),
        fk_source: String,
        fk_target: String,
        source_cols: Vec<(String, String)>,
        target_cols: Vec<(String, String)>,
    },
}

/// A relationship from `source` to `target`; `cols` pairs source column with target column.
#[derive(Debug, Clone)]
pub struct Relationship {
    pub source: (String, String),
    pub target: (String, String),
    pub constraint: String,
    pub cols: Vec<(String, String)>,
    pub card: Cardinality,
    /// Computed relationship: the function (schema, name) taking a source row.
    pub function: Option<(String, String)>,
    pub to_one_computed: bool,
    /// The FK between its own tables (not a copy through a view).
    pub base: bool,
    /// Source holds the FK columns (many-to-one / one-to-one from the referencing side).
    pub forward: bool,
}

impl Relationship {
    pub fn is_to_one(&self) -> bool {
        match &self.card {
            Cardinality::ManyToOne | Cardinality::OneToOne => true,
            Cardinality::OneToMany => self.to_one_computed,
            Cardinality::ManyToMany { .. } => false,
        }
    }
    pub fn card_name(&self) -> &'static str {
        match &self.card {
            Cardinality::ManyToOne => "many-to-one",
            Cardinality::OneToMany => "one-to-many",
            Cardinality::OneToOne => "one-to-one",
            Cardinality::ManyToMany { .. } => "many-to-many",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Arg {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub mode: String,
    #[serde(default)]
    pub has_default: bool,
}

#[derive(Debug, Clone)]
pub enum RetType {
    /// A relation's row type (table, view or named composite that is a relation).
    Relation(String, String),
    /// `returns table(...)` / OUT parameters / a composite type: columns of a record.
    Record(Vec<(String, String)>),
    Scalar(String),
    Void,
}

#[derive(Debug, Clone)]
pub struct Function {
    pub schema: String,
    pub name: String,
    /// Input arguments in order (IN, INOUT, VARIADIC).
    pub args: Vec<Arg>,
    pub ret: RetType,
    pub returns_set: bool,
    /// 'i', 's' or 'v'
    pub volatility: char,
    pub variadic: bool,
    pub rows: f32,
    pub description: Option<String>,
}

impl Function {
    pub fn signature(&self) -> String {
        let a: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                if a.name.is_empty() {
                    format!(" => {}", a.ty)
                } else {
                    format!("{} => {}", a.name, a.ty)
                }
            })
            .collect();
        format!("{}.{}({})", self.schema, self.name, a.join(", "))
    }
}

/// A computed field: (function schema, function name, result type).
pub type ComputedField = (String, String, String);

#[derive(Debug, Default)]
pub struct SchemaCache {
    pub relations: HashMap<(String, String), Relation>,
    pub by_oid: HashMap<u32, (String, String)>,
    pub relationships: Vec<Relationship>,
    pub functions: HashMap<(String, String), Vec<Function>>,
    /// Computed fields: (schema, relation name) -> function names returning a scalar.
    pub computed_fields: HashMap<(String, String), Vec<ComputedField>>,
    /// `alter role authenticator set pgrst.*` overrides.
    pub role_settings: HashMap<String, String>,
    /// statement_timeout set on roles, in ms.
    pub role_timeouts: HashMap<String, u64>,
    pub postgis: bool,
}

impl SchemaCache {
    pub fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.relations.get(&(schema.to_string(), name.to_string()))
    }
    pub fn setting_bool(&self, key: &str) -> Option<bool> {
        self.role_settings
            .get(key)
            .map(|v| matches!(v.as_str(), "true" | "on" | "1"))
    }
}

pub use super::schema_load::load;
