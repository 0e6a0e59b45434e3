//! Postgres Changes without extensions: one temporary logical replication slot (pgoutput)
//! per process, created on the first postgres_changes subscription and polled with
//! `pg_logical_slot_get_binary_changes`; the binary protocol is decoded here, each change is
//! matched against the subscribers' bindings and filters, and RLS is checked by reading the
//! row back as the subscriber (through `begin_as`), as Supabase's `apply_rls` does.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;

use super::hub::Out;
use crate::db::begin_as;
use crate::http::apikey::AuthContext;
use crate::state::AppState;

/// How often the slot is read.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq)]
pub enum FilterOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Is,
    Like,
    Ilike,
    IsDistinct,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: String,
    pub op: FilterOp,
    pub value: String,
    pub negate: bool,
}

/// One `postgres_changes` entry of a join, as the server matches it.
#[derive(Debug, Clone, PartialEq)]
pub struct PgBinding {
    pub id: u32,
    /// `*`, `INSERT`, `UPDATE` or `DELETE`.
    pub action: String,
    pub schema: String,
    /// `*` for every table of the schema.
    pub table: String,
    pub filters: Vec<Filter>,
    /// `select`: only these columns (plus the primary key) are delivered.
    pub select: Option<Vec<String>>,
}

/// A stable id for a binding's parameters (Supabase uses a hash of them too).
pub fn binding_id(params: &Value) -> u32 {
    let mut clean = params.clone();
    if let Some(o) = clean.as_object_mut() {
        o.remove("id");
    }
    let s = clean.to_string();
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h & 0x07ff_ffff
}

/// Split at top-level commas (not inside parentheses or double quotes).
fn split_top_level(s: &str) -> Vec<String> {
    let (mut depth, mut quoted, mut cur, mut out) = (0i32, false, String::new(), vec![]);
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn parse_filter(seg: &str) -> Result<Filter, String> {
    let seg = seg.trim();
    let err = || {
        let parts: Vec<&str> = seg.splitn(2, '=').collect();
        let shown: Vec<String> = match parts.as_slice() {
            [_, rest] => rest.splitn(2, '.').map(|p| format!("{p:?}")).collect(),
            _ => vec![format!("{seg:?}")],
        };
        format!("Error parsing `filter` params: [{}]", shown.join(", "))
    };
    let (column, rest) = seg.split_once('=').ok_or_else(err)?;
    if column.is_empty() {
        return Err(err());
    }
    let (negate, rest) = match rest.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (op, value) = rest.split_once('.').ok_or_else(err)?;
    let op = match op {
        "eq" => FilterOp::Eq,
        "neq" => FilterOp::Neq,
        "lt" => FilterOp::Lt,
        "lte" => FilterOp::Lte,
        "gt" => FilterOp::Gt,
        "gte" => FilterOp::Gte,
        "in" => FilterOp::In,
        "is" => FilterOp::Is,
        "like" => FilterOp::Like,
        "ilike" => FilterOp::Ilike,
        "isdistinct" => FilterOp::IsDistinct,
        _ => return Err(err()),
    };
    if op == FilterOp::In && !(value.starts_with('(') && value.ends_with(')')) {
        return Err(err());
    }
    Ok(Filter {
        column: column.to_string(),
        op,
        value: value.to_string(),
        negate,
    })
}

/// Parse one join entry with Supabase's rules (schema+table[+filter], schema only, table only).
pub fn parse_binding(p: &Value, id: u32) -> Result<PgBinding, String> {
    let action = match p
        .get("event")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
    {
        Some(e) if matches!(e.as_str(), "INSERT" | "UPDATE" | "DELETE") => e,
        _ => "*".to_string(),
    };
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let has = |k: &str| p.get(k).is_some_and(|v| !v.is_null());
    let (schema, table, filter) = match (s("schema"), s("table"), s("filter")) {
        (Some(sc), Some(t), f) if f.is_some() || !has("filter") => (sc, t, f),
        (Some(sc), None, None) if !has("table") && !has("filter") => (sc, "*".into(), None),
        (None, Some(t), None) if !has("schema") && !has("filter") => ("public".into(), t, None),
        _ => {
            return Err(format!(
                "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {p}"
            ))
        }
    };
    let select = match p.get("select") {
        None | Some(Value::Null) => None,
        Some(Value::Array(cols)) => {
            let cols: Vec<String> = cols
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            (!cols.is_empty()).then_some(cols)
        }
        Some(_) => {
            return Err("Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]".into())
        }
    };
    if select.is_some() && (schema == "*" || table == "*") {
        return Err("Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name.".into());
    }
    let mut filters = vec![];
    if let Some(f) = filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
        for seg in split_top_level(f) {
            filters.push(parse_filter(&seg)?);
        }
    }
    Ok(PgBinding {
        id,
        action,
        schema,
        table,
        filters,
        select,
    })
}

fn in_list(v: &str) -> Vec<String> {
    let inner = &v[1..v.len() - 1];
    split_top_level(inner)
        .into_iter()
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

fn like_match(pattern: &str, text: &str, ci: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if ci {
        (
            pattern.to_lowercase().chars().collect(),
            text.to_lowercase().chars().collect(),
        )
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    // Iterative wildcard match: % any run, _ one char (PostgREST also accepts *).
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && (p[pi] == '%' || p[pi] == '*') {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && (p[pi] == '%' || p[pi] == '*') {
        pi += 1;
    }
    pi == p.len()
}

fn compare(v: &Value, f: &str) -> Option<std::cmp::Ordering> {
    match v {
        Value::Number(n) => n.as_f64()?.partial_cmp(&f.parse::<f64>().ok()?),
        Value::Bool(b) => Some(b.cmp(&f.parse::<bool>().ok()?)),
        Value::String(s) => Some(s.as_str().cmp(f)),
        Value::Null => None,
        other => Some(other.to_string().as_str().cmp(f)),
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Does a row (JSON record) pass every filter of a binding?
pub fn passes(filters: &[Filter], record: &Map<String, Value>) -> bool {
    use std::cmp::Ordering::*;
    filters.iter().all(|f| {
        let v = record.get(&f.column).unwrap_or(&Value::Null);
        let r = match f.op {
            FilterOp::Eq => compare(v, &f.value) == Some(Equal),
            FilterOp::Neq => matches!(compare(v, &f.value), Some(Less | Greater)),
            FilterOp::Lt => compare(v, &f.value) == Some(Less),
            FilterOp::Lte => matches!(compare(v, &f.value), Some(Less | Equal)),
            FilterOp::Gt => compare(v, &f.value) == Some(Greater),
            FilterOp::Gte => matches!(compare(v, &f.value), Some(Greater | Equal)),
            FilterOp::In => in_list(&f.value)
                .iter()
                .any(|x| compare(v, x) == Some(Equal)),
            FilterOp::Is => match f.value.to_ascii_lowercase().as_str() {
                "null" => v.is_null(),
                "true" => v == &Value::Bool(true),
                "false" => v == &Value::Bool(false),
                _ => false,
            },
            FilterOp::Like => !v.is_null() && like_match(&f.value, &as_text(v), false),
            FilterOp::Ilike => !v.is_null() && like_match(&f.value, &as_text(v), true),
            FilterOp::IsDistinct => {
                if f.value.eq_ignore_ascii_case("null") {
                    !v.is_null()
                } else {
                    v.is_null() || compare(v, &f.value) != Some(Equal)
                }
            }
        };
        r != f.negate
    })
}

/// Is the binding's table in the `supabase_realtime` publication?
pub async fn check_published(state: &AppState, b: &PgBinding) -> Result<(), String> {
    let fail = || {
        let filters: Vec<String> = b
            .filters
            .iter()
            .map(|f| {
                format!(
                    "{{{:?}, {:?}, {:?}}}",
                    f.column,
                    format!("{:?}", f.op).to_lowercase(),
                    f.value
                )
            })
            .collect();
        format!(
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: [event: {}, schema: {}, table: {}, filters: [{}]]",
            b.action,
            b.schema,
            b.table,
            filters.join(", ")
        )
    };
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "select 1 from pg_publication_tables where pubname = 'supabase_realtime'
               and ($1 = '*' or schemaname = $1) and ($2 = '*' or tablename = $2) limit 1",
            &[&b.schema, &b.table],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    if rows.is_empty() {
        return Err(fail());
    }
    Ok(())
}

/// The capture task's state, kept in the realtime `State`.
pub struct Capture {
    running: tokio::sync::Mutex<bool>,
    /// When a join last asked for capture (the task idles out only well after that).
    last_demand: std::sync::Mutex<std::time::Instant>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            running: tokio::sync::Mutex::new(false),
            last_demand: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }
}

/// With no postgres_changes subscriber for this long, the slot is dropped.
const IDLE: Duration = Duration::from_secs(30);

/// A capture session: its client, slot, and whether each poll must first flush the WAL.
struct Session {
    client: deadpool_postgres::ClientWrapper,
    slot: String,
    /// With `synchronous_commit = off` (e.g. fsync off in tests), commits reach the decoder
    /// only when the WAL writer flushes (up to 200 ms); a synchronous commit of our own that
    /// wrote WAL (a logical message, ignored by pgoutput) flushes everything before it.
    force_flush: bool,
}

/// A session of its own holding a temporary slot (dropped with the session).
async fn open_slot(state: &AppState) -> Result<Session, String> {
    let obj = state.pool.get().await.map_err(|e| e.to_string())?;
    // Detached from the pool: the temporary slot belongs to this session.
    let client = deadpool_postgres::Object::take(obj);
    // The owner role of `realtime` has REPLICATION (0400); a superuser URL works as is.
    if let Err(e) = client
        .batch_execute("set role supabase_realtime_admin")
        .await
    {
        tracing::debug!(error = %crate::db::error_text(&e), "realtime: staying in the login role for capture");
    }
    let slot = format!(
        "oxibase_rt_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // Creating a slot waits for every transaction already running in the cluster; a session
    // left idle in a transaction must not hang the join that asked for capture.
    let created = async {
        client
            .batch_execute("set statement_timeout = '10s'")
            .await?;
        client
            .query(
                "select pg_create_logical_replication_slot($1, 'pgoutput', true)",
                &[&slot],
            )
            .await?;
        client.batch_execute("set statement_timeout = 0").await
    }
    .await;
    created.map_err(|e| {
        format!(
            "cannot create the replication slot: {}",
            crate::db::error_text(&e)
        )
    })?;
    let force_flush = client
        .query_one("show synchronous_commit", &[])
        .await
        .map(|r| r.get::<_, String>(0) == "off")
        .unwrap_or(false);
    if force_flush {
        let _ = client.batch_execute("set synchronous_commit = on").await;
    }
    tracing::info!(%slot, "realtime: change capture started");
    Ok(Session {
        client,
        slot,
        force_flush,
    })
}

/// Start the capture task if it is not running; returns once the slot exists, so every
/// change committed after a join reply is seen.
pub async fn ensure_started(state: &AppState) -> Result<(), String> {
    *state.realtime.capture.last_demand.lock().expect("lock") = std::time::Instant::now();
    let mut running = state.realtime.capture.running.lock().await;
    if *running {
        return Ok(());
    }
    let session = open_slot(state).await?;
    *running = true;
    tokio::spawn(capture(state.clone(), session));
    Ok(())
}

/// No postgres_changes subscriber now, and no join asked for one within `IDLE`.
fn idle(st: &AppState) -> bool {
    !st.realtime.hub.has_pg_subscribers()
        && st
            .realtime
            .capture
            .last_demand
            .lock()
            .expect("lock")
            .elapsed()
            > IDLE
}

async fn capture(st: AppState, mut session: Session) {
    let mut decoder = Decoder::default();
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if idle(&st) {
            let mut running = st.realtime.capture.running.lock().await;
            // Re-checked under the lock a join takes before it subscribes.
            if idle(&st) {
                *running = false;
                tracing::info!(slot = %session.slot, "realtime: no postgres_changes subscribers; capture stopped");
                return;
            }
        }
        if session.force_flush {
            // Only when something is written but not yet flushed (no WAL while idle).
            let _ = session
                .client
                .simple_query(
                    "select case when pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()
                       then pg_logical_emit_message(true, 'oxibase', '') end",
                )
                .await;
        }
        let rows = session
            .client
            .query(
                "select data from pg_logical_slot_get_binary_changes($1, NULL, 2000,
                   'proto_version', '1', 'publication_names', 'supabase_realtime')",
                &[&session.slot],
            )
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                if !session.client.is_closed() && !crate::db::is_connection_error(&e) {
                    tracing::error!(error = %crate::db::error_text(&e), "realtime: reading the replication slot failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // The session (and its temporary slot) is gone, e.g. the database restarted:
                // open a new one while anyone listens. Changes committed before the new
                // slot exists are not delivered (as in Supabase Realtime).
                if st.pool.is_closed() {
                    *st.realtime.capture.running.lock().await = false;
                    return;
                }
                tracing::warn!(error = %crate::db::error_text(&e), "realtime: change capture lost its database connection; reconnecting");
                let mut backoff = crate::db::Backoff::new(Duration::from_secs(2));
                let mut attempt = 0u32;
                loop {
                    if st.pool.is_closed() || !st.realtime.hub.has_pg_subscribers() {
                        *st.realtime.capture.running.lock().await = false;
                        return;
                    }
                    attempt += 1;
                    match open_slot(&st).await {
                        Ok(s) => {
                            session = s;
                            decoder = Decoder::default();
                            tracing::info!(attempt, "realtime: change capture resumed");
                            break;
                        }
                        Err(e) if attempt == 1 || attempt.is_multiple_of(10) => {
                            tracing::warn!(attempt, error = %e, "realtime: change capture unavailable; retrying");
                        }
                        Err(e) => {
                            tracing::debug!(attempt, error = %e, "realtime: change capture unavailable; retrying");
                        }
                    }
                    backoff.wait().await;
                }
                continue;
            }
        };
        if rows.is_empty() {
            continue;
        }
        let mut changes = vec![];
        for r in &rows {
            let data: &[u8] = r.get(0);
            match decoder.message(data) {
                Ok(Some(c)) => changes.push(c),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "realtime: undecodable pgoutput message"),
            }
        }
        for rel in decoder.take_new_relations() {
            if let Err(e) = decoder.describe(&session.client, rel).await {
                tracing::warn!(error = %e, "realtime: cannot describe a relation");
            }
        }
        if !changes.is_empty() {
            dispatch(&st, &decoder, changes).await;
        }
    }
}

// ------------------------------------------------------------------ pgoutput decoding

#[derive(Debug, Clone)]
struct Column {
    key: bool,
    name: String,
    type_name: String,
    /// `format_type` text, for casting key values back in the RLS check.
    type_sql: String,
}

#[derive(Debug, Clone)]
struct Relation {
    schema: String,
    table: String,
    columns: Vec<Column>,
    rls: bool,
    pk: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Unchanged,
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Insert,
    Update,
    Delete,
}

#[derive(Debug)]
struct Change {
    rel: u32,
    kind: Kind,
    new: Option<Vec<Cell>>,
    old: Option<Vec<Cell>>,
    /// The old tuple holds only the replica identity key ('K').
    old_is_key: bool,
    commit_ts: i64,
}

#[derive(Default)]
struct Decoder {
    relations: HashMap<u32, Relation>,
    fresh: Vec<u32>,
    commit_ts: i64,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("truncated message")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let rest = &self.b[self.at..];
        let end = rest
            .iter()
            .position(|c| *c == 0)
            .ok_or("unterminated string")?;
        let s = String::from_utf8_lossy(&rest[..end]).to_string();
        self.at += end + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>, String> {
        let n = self.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?.max(0) as usize;
                    Cell::Text(String::from_utf8_lossy(self.take(len)?).to_string())
                }
                other => return Err(format!("unknown tuple cell kind {other}")),
            });
        }
        Ok(out)
    }
}

impl Decoder {
    fn message(&mut self, data: &[u8]) -> Result<Option<Change>, String> {
        let mut r = Reader { b: data, at: 1 };
        match data.first() {
            Some(b'B') => {
                let _lsn = r.i64()?;
                self.commit_ts = r.i64()?;
                Ok(None)
            }
            Some(b'R') => {
                let oid = r.i32()? as u32;
                let schema = r.cstr()?;
                let table = r.cstr()?;
                let _ident = r.u8()?;
                let n = r.i16()?;
                let mut columns = vec![];
                for _ in 0..n {
                    let flags = r.u8()?;
                    let name = r.cstr()?;
                    let _type_oid = r.i32()?;
                    let _typmod = r.i32()?;
                    columns.push(Column {
                        key: flags & 1 == 1,
                        name,
                        type_name: String::new(),
                        type_sql: String::new(),
                    });
                }
                let old = self.relations.get(&oid);
                let rel = Relation {
                    schema,
                    table,
                    columns,
                    rls: old.map(|o| o.rls).unwrap_or(false),
                    pk: old.map(|o| o.pk.clone()).unwrap_or_default(),
                };
                self.relations.insert(oid, rel);
                self.fresh.push(oid);
                Ok(None)
            }
            Some(b'I') => {
                let rel = r.i32()? as u32;
                if r.u8()? != b'N' {
                    return Err("insert without a new tuple".into());
                }
                let new = r.tuple()?;
                Ok(Some(Change {
                    rel,
                    kind: Kind::Insert,
                    new: Some(new),
                    old: None,
                    old_is_key: false,
                    commit_ts: self.commit_ts,
                }))
            }
            Some(b'U') => {
                let rel = r.i32()? as u32;
                let mut tag = r.u8()?;
                let (mut old, mut old_is_key) = (None, false);
                if tag == b'K' || tag == b'O' {
                    old_is_key = tag == b'K';
                    old = Some(r.tuple()?);
                    tag = r.u8()?;
                }
                if tag != b'N' {
                    return Err("update without a new tuple".into());
                }
                let new = r.tuple()?;
                Ok(Some(Change {
                    rel,
                    kind: Kind::Update,
                    new: Some(new),
                    old,
                    old_is_key,
                    commit_ts: self.commit_ts,
                }))
            }
            Some(b'D') => {
                let rel = r.i32()? as u32;
                let tag = r.u8()?;
                let old = r.tuple()?;
                Ok(Some(Change {
                    rel,
                    kind: Kind::Delete,
                    new: None,
                    old: Some(old),
                    old_is_key: tag == b'K',
                    commit_ts: self.commit_ts,
                }))
            }
            // Commit, Origin, Type, Truncate, Message: nothing to deliver.
            _ => Ok(None),
        }
    }

    fn take_new_relations(&mut self) -> Vec<u32> {
        let mut v = std::mem::take(&mut self.fresh);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Read type names, RLS and primary key of a relation from the catalog.
    async fn describe(&mut self, client: &tokio_postgres::Client, oid: u32) -> Result<(), String> {
        let e = |e: tokio_postgres::Error| crate::db::error_text(&e);
        let oid_i = i64::from(oid);
        let rows = client
            .query(
                "select a.attname::text, t.typname::text, format_type(a.atttypid, a.atttypmod)
                   from pg_attribute a join pg_type t on t.oid = a.atttypid
                  where a.attrelid = $1::int8::oid and a.attnum > 0 and not a.attisdropped",
                &[&oid_i],
            )
            .await
            .map_err(e)?;
        let meta = client
            .query_one(
                "select c.relrowsecurity,
                        coalesce((select array_agg(a.attname::text order by a.attnum)
                                    from pg_index i join pg_attribute a
                                      on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
                                   where i.indrelid = c.oid and i.indisprimary), '{}')
                   from pg_class c where c.oid = $1::int8::oid",
                &[&oid_i],
            )
            .await
            .map_err(e)?;
        let Some(rel) = self.relations.get_mut(&oid) else {
            return Ok(());
        };
        for c in rel.columns.iter_mut() {
            if let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == c.name) {
                c.type_name = row.get(1);
                c.type_sql = row.get(2);
            }
        }
        rel.rls = meta.get(0);
        rel.pk = meta.get(1);
        Ok(())
    }
}

/// A column's text value as JSON the way `to_jsonb` would give it.
fn typed(type_name: &str, text: &str) -> Value {
    match type_name {
        "bool" => Value::Bool(text == "t" || text == "true"),
        "int2" | "int4" | "int8" | "oid" | "float4" | "float8" | "numeric" => {
            serde_json::from_str::<serde_json::Number>(text)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(text.to_string()))
        }
        "json" | "jsonb" => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        "timestamptz" => {
            let mut s = text.replacen(' ', "T", 1);
            // A bare hour offset ("+00") becomes "+00:00".
            let b = s.as_bytes();
            if b.len() >= 3
                && matches!(b[b.len() - 3], b'+' | b'-')
                && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
            {
                s.push_str(":00");
            }
            Value::String(s)
        }
        "timestamp" => Value::String(text.replacen(' ', "T", 1)),
        t if t.starts_with('_') => {
            parse_array(text, &t[1..]).unwrap_or_else(|| Value::String(text.to_string()))
        }
        _ => Value::String(text.to_string()),
    }
}

/// A PostgreSQL array literal (`{1,2}`, `{"a b",NULL}`, nested) as a JSON array whose
/// elements are typed like `to_jsonb` types them.
fn parse_array(text: &str, elem: &str) -> Option<Value> {
    fn parse(chars: &[char], at: &mut usize, elem: &str) -> Option<Value> {
        if chars.get(*at) != Some(&'{') {
            return None;
        }
        *at += 1;
        let mut out = vec![];
        if chars.get(*at) == Some(&'}') {
            *at += 1;
            return Some(Value::Array(out));
        }
        loop {
            match chars.get(*at)? {
                '{' => out.push(parse(chars, at, elem)?),
                '"' => {
                    *at += 1;
                    let mut s = String::new();
                    loop {
                        match chars.get(*at)? {
                            '\\' => {
                                *at += 1;
                                s.push(*chars.get(*at)?);
                            }
                            '"' => break,
                            c => s.push(*c),
                        }
                        *at += 1;
                    }
                    *at += 1;
                    out.push(typed(elem, &s));
                }
                _ => {
                    let start = *at;
                    while !matches!(chars.get(*at)?, ',' | '}') {
                        *at += 1;
                    }
                    let raw: String = chars[start..*at].iter().collect();
                    let raw = raw.trim();
                    out.push(if raw.eq_ignore_ascii_case("null") {
                        Value::Null
                    } else {
                        typed(elem, raw)
                    });
                }
            }
            match chars.get(*at)? {
                ',' => *at += 1,
                '}' => {
                    *at += 1;
                    return Some(Value::Array(out));
                }
                _ => return None,
            }
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let v = parse(&chars, &mut at, elem)?;
    (at == chars.len()).then_some(v)
}

fn record(
    rel: &Relation,
    cells: &[Cell],
    fallback: Option<&Map<String, Value>>,
    only_keys: bool,
) -> Map<String, Value> {
    let mut m = Map::new();
    for (c, cell) in rel.columns.iter().zip(cells) {
        if only_keys && !c.key {
            continue;
        }
        match cell {
            Cell::Null => {
                m.insert(c.name.clone(), Value::Null);
            }
            Cell::Text(t) => {
                m.insert(c.name.clone(), typed(&c.type_name, t));
            }
            Cell::Unchanged => {
                if let Some(v) = fallback.and_then(|f| f.get(&c.name)) {
                    m.insert(c.name.clone(), v.clone());
                }
            }
        }
    }
    m
}

fn commit_timestamp(ts_us: i64) -> String {
    // pgoutput timestamps count microseconds from 2000-01-01 UTC.
    let epoch_2000 = 946_684_800i64;
    let secs = epoch_2000 + ts_us.div_euclid(1_000_000);
    let nanos = (ts_us.rem_euclid(1_000_000) * 1000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

use crate::db::quote_ident;

/// Can this subscriber SELECT the row (by primary key) under RLS?
async fn visible(
    state: &AppState,
    ctx: &AuthContext,
    rel: &Relation,
    rec: &Map<String, Value>,
) -> bool {
    let keys: Vec<&Column> = rel
        .pk
        .iter()
        .filter_map(|k| rel.columns.iter().find(|c| &c.name == k))
        .collect();
    if keys.is_empty() || keys.iter().any(|c| c.type_sql.is_empty()) {
        return false;
    }
    let mut conds = vec![];
    let mut vals: Vec<String> = vec![];
    for (i, c) in keys.iter().enumerate() {
        let Some(v) = rec.get(&c.name).filter(|v| !v.is_null()) else {
            return false;
        };
        vals.push(as_text(v));
        conds.push(format!(
            "{} = ${}::text::{}",
            quote_ident(&c.name),
            i + 1,
            c.type_sql
        ));
    }
    let sql = format!(
        "select exists(select 1 from {}.{} where {})",
        quote_ident(&rel.schema),
        quote_ident(&rel.table),
        conds.join(" and ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    match query_as_subscriber(state, ctx, &sql, &params).await {
        Some(Ok(row)) => row.get(0),
        Some(Err(e)) => {
            tracing::debug!(error = %crate::db::error_text(&e), "realtime: RLS check failed");
            false
        }
        None => false,
    }
}

/// May this subscriber SELECT from the table at all?
async fn can_select(state: &AppState, ctx: &AuthContext, rel: u32) -> bool {
    query_as_subscriber(
        state,
        ctx,
        "select has_table_privilege(current_user, $1::int8::oid, 'SELECT')",
        &[&i64::from(rel)],
    )
    .await
    .and_then(Result::ok)
    .is_some_and(|row| row.get(0))
}

/// One read-only query as the subscriber (privileges and RLS apply), rolled back.
/// `None` when no connection or transaction could be had.
async fn query_as_subscriber(
    state: &AppState,
    ctx: &AuthContext,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Option<Result<tokio_postgres::Row, tokio_postgres::Error>> {
    let mut client = state.pool.get().await.ok()?;
    let tx = begin_as(&mut client, ctx, &super::authz::gucs(), true)
        .await
        .ok()?;
    let r = tx.query_one(sql, params).await;
    let _ = tx.rollback().await;
    Some(r)
}

async fn dispatch(state: &AppState, dec: &Decoder, changes: Vec<Change>) {
    let subs = state.realtime.hub.pg_subscribers();
    if subs.is_empty() {
        return;
    }
    for ch in changes {
        let Some(rel) = dec.relations.get(&ch.rel) else {
            continue;
        };
        let old = ch.old.as_ref().map(|o| record(rel, o, None, ch.old_is_key));
        let new = ch.new.as_ref().map(|n| record(rel, n, old.as_ref(), false));
        let kind = match ch.kind {
            Kind::Insert => "INSERT",
            Kind::Update => "UPDATE",
            Kind::Delete => "DELETE",
        };
        let filter_rec = match ch.kind {
            Kind::Delete => old.clone().unwrap_or_default(),
            _ => new.clone().unwrap_or_default(),
        };
        let columns: Vec<Value> = rel
            .columns
            .iter()
            .map(|c| json!({"name": c.name, "type": c.type_name}))
            .collect();
        let mut data = json!({
            "schema": rel.schema,
            "table": rel.table,
            "commit_timestamp": commit_timestamp(ch.commit_ts),
            "type": kind,
            "columns": columns,
            "errors": null,
        });
        if let Some(n) = &new {
            data["record"] = Value::Object(n.clone());
        }
        match ch.kind {
            Kind::Update => data["old_record"] = Value::Object(old.clone().unwrap_or_default()),
            Kind::Delete => {
                let mut o = old.clone().unwrap_or_default();
                // With RLS a delete cannot be checked, so only the key goes out (as Supabase).
                if rel.rls {
                    o.retain(|k, _| rel.pk.contains(k));
                }
                data["old_record"] = Value::Object(o);
            }
            Kind::Insert => {}
        }
        // RLS results per distinct claims, so many channels of one user cost one query.
        let mut seen: HashMap<String, bool> = HashMap::new();
        for (chan, tx, bindings, ctx) in &subs {
            let matching: Vec<&PgBinding> = bindings
                .iter()
                .filter(|b| {
                    (b.schema == "*" || b.schema == rel.schema)
                        && (b.table == "*" || b.table == rel.table)
                        && (b.action == "*" || b.action == kind)
                        && passes(&b.filters, &filter_rec)
                })
                .collect();
            if matching.is_empty() {
                continue;
            }
            // The subscriber must be able to SELECT the row (privileges and RLS); a deleted
            // row cannot be read back, so only the table privilege is checked for it.
            if !ctx.role.is_service() {
                let k = format!("{}|{}", ctx.role.as_str(), ctx.claims);
                let ok = match seen.get(&k) {
                    Some(v) => *v,
                    None => {
                        let v = match &new {
                            Some(row) if ch.kind != Kind::Delete => {
                                visible(state, ctx, rel, row).await
                            }
                            _ => can_select(state, ctx, ch.rel).await,
                        };
                        seen.insert(k, v);
                        v
                    }
                };
                if !ok {
                    continue;
                }
            }
            // One message per distinct column selection (as Supabase groups them).
            let mut groups: Vec<(Option<&Vec<String>>, Vec<u32>)> = vec![];
            for b in matching {
                match groups.iter_mut().find(|(sel, _)| *sel == b.select.as_ref()) {
                    Some((_, ids)) => ids.push(b.id),
                    None => groups.push((b.select.as_ref(), vec![b.id])),
                }
            }
            for (sel, ids) in groups {
                let payload = match sel {
                    None => json!({"ids": ids, "data": data}),
                    Some(cols) => json!({"ids": ids, "data": select_columns(&data, cols, &rel.pk)}),
                };
                let _ = tx.try_send(Out::Push {
                    chan: *chan,
                    event: "postgres_changes",
                    payload,
                });
            }
        }
    }
}

/// Keep only the selected columns (and the primary key) in a change's data.
fn select_columns(data: &Value, cols: &[String], pk: &[String]) -> Value {
    let keep = |name: &str| cols.iter().any(|c| c == name) || pk.iter().any(|c| c == name);
    let mut d = data.clone();
    for k in ["record", "old_record"] {
        if let Some(o) = d.get_mut(k).and_then(Value::as_object_mut) {
            o.retain(|name, _| keep(name));
        }
    }
    if let Some(a) = d.get_mut("columns").and_then(Value::as_array_mut) {
        a.retain(|c| c["name"].as_str().is_some_and(keep));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bindings_like_supabase() {
        let b = parse_binding(
            &json!({"event":"INSERT","schema":"public","table":"messages","filter":"user_id=eq.7"}),
            1,
        )
        .unwrap();
        assert_eq!(b.action, "INSERT");
        assert_eq!(b.filters[0].op, FilterOp::Eq);
        assert_eq!(b.filters[0].value, "7");
        let b = parse_binding(&json!({"event":"*","schema":"public"}), 1).unwrap();
        assert_eq!(b.table, "*");
        let b = parse_binding(&json!({"table":"t"}), 1).unwrap();
        assert_eq!(b.schema, "public");
        let b = parse_binding(
            &json!({"event":"*","schema":"s","table":"t","filter":"a=in.(x,\"y,z\"),b=not.gt.3"}),
            1,
        )
        .unwrap();
        assert_eq!(b.filters.len(), 2);
        assert!(b.filters[1].negate);
        assert!(
            parse_binding(&json!({"schema":"s","table":"t","filter":"a=foo.1"}), 1)
                .unwrap_err()
                .starts_with("Error parsing `filter` params")
        );
        assert!(parse_binding(&json!({"event":"*"}), 1)
            .unwrap_err()
            .starts_with("No subscription params provided"));
        let b = parse_binding(&json!({"schema":"s","table":"t","select":["a"]}), 1).unwrap();
        assert_eq!(b.select, Some(vec!["a".to_string()]));
        assert!(parse_binding(&json!({"schema":"s","select":["a"]}), 1)
            .unwrap_err()
            .starts_with("Column selection is not supported"));
        assert!(parse_binding(&json!({"schema":"s","table":"t","select":"a"}), 1).is_err());
        let d = select_columns(
            &json!({"record":{"id":1,"a":2,"b":3},"columns":[{"name":"id"},{"name":"a"},{"name":"b"}]}),
            &["a".to_string()],
            &["id".to_string()],
        );
        assert_eq!(d["record"], json!({"id":1,"a":2}));
        assert_eq!(d["columns"].as_array().unwrap().len(), 2);
        assert_eq!(
            binding_id(&json!({"event":"*","schema":"public"})),
            binding_id(&json!({"event":"*","schema":"public"}))
        );
    }

    #[test]
    fn filters_evaluate() {
        let rec: Map<String, Value> = serde_json::from_value(
            json!({"n": 5, "s": "hello", "b": true, "z": null, "u": "7f1b7c3e-6a39-4d2b-9a55-0e0c1d7e2f11"}),
        )
        .unwrap();
        let f = |s: &str| vec![parse_filter(s).unwrap()];
        assert!(passes(&f("n=eq.5"), &rec));
        assert!(passes(&f("n=gt.4.5"), &rec));
        assert!(!passes(&f("n=lt.5"), &rec));
        assert!(passes(&f("n=lte.5"), &rec));
        assert!(passes(&f("n=neq.6"), &rec));
        assert!(passes(&f("n=in.(1,5)"), &rec));
        assert!(!passes(&f("n=in.(1,2)"), &rec));
        assert!(passes(&f("s=eq.hello"), &rec));
        assert!(passes(&f("s=like.he%"), &rec));
        assert!(passes(&f("s=ilike.HE_LO"), &rec));
        assert!(passes(&f("s=not.eq.bye"), &rec));
        assert!(passes(&f("b=is.true"), &rec));
        assert!(passes(&f("z=is.null"), &rec));
        assert!(!passes(&f("z=eq.1"), &rec));
        assert!(passes(
            &f("u=eq.7f1b7c3e-6a39-4d2b-9a55-0e0c1d7e2f11"),
            &rec
        ));
    }

    #[test]
    fn decodes_pgoutput() {
        let mut d = Decoder::default();
        // Relation 16384 public.t (id int4 key, name text)
        let mut rel = vec![b'R'];
        rel.extend(16384i32.to_be_bytes());
        rel.extend(b"public\0t\0");
        rel.push(b'd');
        rel.extend(2i16.to_be_bytes());
        rel.push(1);
        rel.extend(b"id\0");
        rel.extend(23i32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.push(0);
        rel.extend(b"name\0");
        rel.extend(25i32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        assert!(d.message(&rel).unwrap().is_none());
        let mut ins = vec![b'I'];
        ins.extend(16384i32.to_be_bytes());
        ins.push(b'N');
        ins.extend(2i16.to_be_bytes());
        ins.push(b't');
        ins.extend(1i32.to_be_bytes());
        ins.push(b'7');
        ins.push(b'n');
        let c = d.message(&ins).unwrap().unwrap();
        assert_eq!(c.kind, Kind::Insert);
        assert_eq!(c.new.unwrap(), vec![Cell::Text("7".into()), Cell::Null]);
        let mut del = vec![b'D'];
        del.extend(16384i32.to_be_bytes());
        del.push(b'K');
        del.extend(2i16.to_be_bytes());
        del.push(b't');
        del.extend(1i32.to_be_bytes());
        del.push(b'7');
        del.push(b'n');
        let c = d.message(&del).unwrap().unwrap();
        assert!(c.old_is_key);
        assert!(d.message(&del[..6]).is_err());
        assert_eq!(d.take_new_relations(), vec![16384]);
    }

    #[test]
    fn typed_values_and_timestamps() {
        assert_eq!(typed("int8", "42"), json!(42));
        assert_eq!(typed("bool", "t"), json!(true));
        assert_eq!(typed("jsonb", r#"{"a":1}"#), json!({"a":1}));
        assert_eq!(
            typed("timestamptz", "2024-01-02 03:04:05.123+00"),
            json!("2024-01-02T03:04:05.123+00:00")
        );
        assert_eq!(typed("numeric", "NaN"), json!("NaN"));
        assert_eq!(commit_timestamp(0), "2000-01-01T00:00:00.000Z");
        assert_eq!(typed("_int4", "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(
            typed("_text", r#"{a,"b c","d\"e",NULL,"NULL"}"#),
            json!(["a", "b c", "d\"e", null, "NULL"])
        );
        assert_eq!(typed("_int4", "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(typed("_text", "{}"), json!([]));
        assert_eq!(typed("_int4", "[0:1]={1,2}"), json!("[0:1]={1,2}"));
        assert_eq!(typed("_bool", "{t,f}"), json!([true, false]));
    }
}
