//! Object info and listing (v1 folders, v2 cursor pages).

use base64::Engine;
use chrono::DateTime;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::http::Resp;
use crate::identity::AuthContext;
use crate::state::AppState;
use crate::storage::coerce;
use crate::storage::endpoint::{Access, ObjectRef};
use crate::storage::error::StorageError;
use crate::storage::{ok, query_as_caller, str_field, ts};

use super::serve::{find_object, ObjectRow, Reader};

pub fn info_json(obj: &ObjectRef, row: &ObjectRow) -> Value {
    json!({
        "id": row.id,
        "name": obj.name,
        "version": row.version,
        "bucket_id": obj.bucket,
        "size": row.size(),
        "content_type": row.mimetype(),
        "cache_control": row.cache_control(),
        "etag": row.etag(),
        "metadata": row.user_metadata,
        "last_modified": row.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "created_at": row.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

pub async fn info(
    state: &AppState,
    ctx: Option<&AuthContext>,
    obj: ObjectRef,
    access: Access,
) -> Result<Resp, StorageError> {
    let who = match (access, ctx) {
        (Access::Authenticated, Some(c)) => Reader::Caller(c),
        _ => Reader::Public,
    };
    let row = find_object(state, who, &obj).await?;
    Ok(ok(&info_json(&obj, &row)))
}

fn sort_of(
    body: &Value,
    allowed: &[&'static str],
) -> Result<(&'static str, &'static str), StorageError> {
    let sb = body.get("sortBy");
    let col = sb
        .and_then(|s| s.get("column"))
        .and_then(Value::as_str)
        .unwrap_or("name");
    let col = allowed
        .iter()
        .find(|c| **c == col)
        .copied()
        .ok_or_else(|| StorageError::InvalidParameter("sortBy.column".into()))?;
    let ord = match sb
        .and_then(|s| s.get("order"))
        .and_then(Value::as_str)
        .unwrap_or("asc")
        .to_ascii_lowercase()
        .as_str()
    {
        "asc" => "asc",
        "desc" => "desc",
        _ => return Err(StorageError::InvalidParameter("sortBy.order".into())),
    };
    Ok((col, ord))
}

fn int_field(body: &Value, k: &str, default: i64, min: i64) -> Result<i64, StorageError> {
    match body.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => coerce::int(v)
            .filter(|n| *n >= min)
            .ok_or_else(|| StorageError::InvalidParameter(k.into())),
    }
}

/// v1 list: the entries directly under `prefix` (folders have null id and metadata).
pub async fn list(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
    bucket: &str,
) -> Result<Resp, StorageError> {
    let mut prefix = str_field(&body, "prefix").to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let limit = int_field(&body, "limit", 100, 0)?;
    let offset = int_field(&body, "offset", 0, 0)?;
    let search = str_field(&body, "search");
    let (col, ord) = sort_of(
        &body,
        &["name", "updated_at", "created_at", "last_accessed_at"],
    )?;
    let order = if col == "name" {
        format!("name collate \"C\" {ord}")
    } else {
        format!("{col} {ord} nulls last, name collate \"C\" asc")
    };
    let sql = format!(
        "with s as ( \
           select split_part(substr(name, length($2) + 1), '/', 1) as seg, \
                  position('/' in substr(name, length($2) + 1)) > 0 as folder, \
                  id, updated_at, created_at, last_accessed_at, metadata \
           from storage.objects \
           where bucket_id = $1 and left(name, length($2)) = $2 and length(name) > length($2) \
         ), f as ( \
           select distinct on (seg, folder) seg as name, \
                  case when folder then null else id end as id, \
                  case when folder then null else updated_at end as updated_at, \
                  case when folder then null else created_at end as created_at, \
                  case when folder then null else last_accessed_at end as last_accessed_at, \
                  case when folder then null else metadata end as metadata \
           from s where seg <> '' and ($3 = '' or seg ilike $3 || '%') \
           order by seg, folder \
         ) \
         select json_build_object('name', name, 'id', id, 'updated_at', {}, \
           'created_at', {}, 'last_accessed_at', {}, 'metadata', metadata) \
         from f order by {order} limit $4 offset $5",
        ts("updated_at"),
        ts("created_at"),
        ts("last_accessed_at"),
    );
    let rows = query_as_caller(
        state,
        ctx,
        &sql,
        &[
            &bucket,
            &prefix,
            &crate::storage::buckets::escape_like(search),
            &limit,
            &offset,
        ],
    )
    .await?;
    Ok(ok(&Value::Array(rows.iter().map(|r| r.get(0)).collect())))
}

/// A list-v2 page cursor: base64url JSON `{c: column, o: order, k: sort key (text), n: name}`.
struct Cursor {
    col: &'static str,
    ord: &'static str,
    /// The last entry's sort key (a timestamp; none when sorting by name).
    key: Option<String>,
    name: String,
}

impl Cursor {
    fn decode(cur: &str) -> Result<Cursor, StorageError> {
        let bad = || StorageError::InvalidParameter("cursor".into());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cur)
            .map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        let col = match v.get("c").and_then(Value::as_str) {
            Some("updated_at") => "updated_at",
            Some("created_at") => "created_at",
            Some("name") => "name",
            _ => return Err(bad()),
        };
        let ord = match v.get("o").and_then(Value::as_str) {
            Some("desc") => "desc",
            Some("asc") => "asc",
            _ => return Err(bad()),
        };
        let name = v
            .get("n")
            .and_then(Value::as_str)
            .ok_or_else(bad)?
            .to_string();
        let key = v.get("k").and_then(Value::as_str).map(str::to_string);
        // The sort key goes to SQL as a timestamp: refuse anything else here.
        if let Some(k) = &key {
            DateTime::parse_from_rfc3339(k).map_err(|_| bad())?;
        }
        Ok(Cursor {
            col,
            ord,
            key,
            name,
        })
    }

    fn encode(&self) -> String {
        let key = if self.col == "name" {
            None
        } else {
            self.key.as_deref()
        };
        let cur = json!({"c": self.col, "o": self.ord, "n": self.name, "k": key});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cur.to_string())
    }
}

/// The list-v2 statement for a sort column and order (both from fixed lists, never input).
/// Parameters: bucket, prefix, with_delimiter, cursor name, cursor key, limit.
fn list_v2_sql(col: &str, ord: &str) -> String {
    let cmp = if ord == "asc" { ">" } else { "<" };
    let (sk, cursor_cond) = if col == "name" {
        (
            "null::timestamptz".to_string(),
            format!(
                "($4::text is null or ename collate \"C\" {cmp} $4) and ($5::text is null or true)"
            ),
        )
    } else {
        (
            format!("coalesce({col}, 'epoch'::timestamptz)"),
            format!(
                "($4::text is null or (sk, ename collate \"C\") {cmp} ($5::text::timestamptz, $4::text collate \"C\"))"
            ),
        )
    };
    let order = if col == "name" {
        format!("ename collate \"C\" {ord}")
    } else {
        format!("sk {ord}, ename collate \"C\" {ord}")
    };
    format!(
        "with e as ( \
           select case when $3 and position('/' in substr(name, length($2) + 1)) > 0 \
                    then $2 || split_part(substr(name, length($2) + 1), '/', 1) || '/' \
                    else name end as ename, \
                  $3 and position('/' in substr(name, length($2) + 1)) > 0 as folder, \
                  id, name, updated_at, created_at, last_accessed_at, metadata \
           from storage.objects where bucket_id = $1 and left(name, length($2)) = $2 \
         ), g as ( \
           select ename, folder, \
                  (array_agg(id))[1] as id, max(updated_at) as updated_at, \
                  max(created_at) as created_at, max(last_accessed_at) as last_accessed_at, \
                  (array_agg(metadata))[1] as metadata \
           from e group by ename, folder \
         ), s as ( \
           select *, case when folder then null else {sk} end as sk0 from g \
         ), t as (select *, coalesce(sk0, 'epoch'::timestamptz) as sk from s) \
         select ename, folder, id, {}, {}, {}, metadata, \
                to_char(sk at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
         from t where {cursor_cond} order by {order} limit $6",
        ts("updated_at"),
        ts("created_at"),
        ts("last_accessed_at"),
    )
}

/// v2 list: cursor pages of objects (and folders with `with_delimiter`).
pub async fn list_v2(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
    bucket: &str,
) -> Result<Resp, StorageError> {
    let prefix = str_field(&body, "prefix");
    let delimiter = body
        .get("with_delimiter")
        .and_then(coerce::boolean)
        .unwrap_or(false);
    let limit = int_field(&body, "limit", 1000, 1)?.min(1000);
    let (mut col, mut ord) = sort_of(&body, &["name", "updated_at", "created_at"])?;
    let after = match body
        .get("cursor")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(cur) => Some(Cursor::decode(cur)?),
        None => None,
    };
    if let Some(c) = &after {
        (col, ord) = (c.col, c.ord);
    }
    let sql = list_v2_sql(col, ord);
    let after_name = after.as_ref().map(|c| c.name.clone());
    let after_key = after.and_then(|c| c.key);
    let rows = query_as_caller(
        state,
        ctx,
        &sql,
        &[
            &bucket,
            &prefix,
            &delimiter,
            &after_name,
            &after_key,
            &(limit + 1),
        ],
    )
    .await?;
    let has_next = rows.len() as i64 > limit;
    let mut folders = vec![];
    let mut objects = vec![];
    let mut next = None;
    for (i, r) in rows.iter().take(limit as usize).enumerate() {
        let ename: String = r.get(0);
        let folder: bool = r.get(1);
        let key = ename
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        if folder {
            folders.push(json!({"key": key, "name": ename}));
        } else {
            objects.push(json!({
                "id": r.get::<_, Option<Uuid>>(2),
                "key": key,
                "name": ename,
                "updated_at": r.get::<_, Option<String>>(3),
                "created_at": r.get::<_, Option<String>>(4),
                "last_accessed_at": r.get::<_, Option<String>>(5),
                "metadata": r.get::<_, Option<Value>>(6),
            }));
        }
        if has_next && i as i64 == limit - 1 {
            let cur = Cursor {
                col,
                ord,
                key: r.get(7),
                name: ename.clone(),
            };
            next = Some(cur.encode());
        }
    }
    let mut out = Map::new();
    out.insert("hasNext".into(), json!(has_next));
    if let Some(n) = next {
        out.insert("nextCursor".into(), json!(n));
    }
    out.insert("folders".into(), Value::Array(folders));
    out.insert("objects".into(), Value::Array(objects));
    Ok(ok(&Value::Object(out)))
}
