//! Buckets: create/get/list/update/empty/delete. Every row operation runs as the caller,
//! so RLS on `storage.buckets` decides for non-service roles (as in Supabase).

use serde_json::{json, Value};

use super::coerce;
use super::endpoint::validate_bucket_name;
use super::error::StorageError;
use super::{as_admin, caller_tx, client, ok, query_as_caller, ts};
use crate::http::{query_pairs, Req, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;

/// The bucket as clients see it (exactly these keys: the official suite snapshots them).
pub fn bucket_json_sql() -> String {
    format!(
        "json_build_object('id', id, 'name', name, 'owner', coalesce(owner::text, owner_id, ''), \
         'public', coalesce(public, false), 'file_size_limit', file_size_limit, \
         'allowed_mime_types', allowed_mime_types, 'created_at', {}, 'updated_at', {})",
        ts("created_at"),
        ts("updated_at")
    )
}

pub async fn list(state: &AppState, ctx: &AuthContext, req: &Req) -> Result<Resp, StorageError> {
    let q = query_pairs(req.uri().query());
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit: Option<i64> = match get("limit") {
        Some(v) => Some(
            coerce::int_str(v)
                .filter(|n| *n >= 1)
                .ok_or_else(|| StorageError::InvalidParameter("limit".into()))?,
        ),
        None => None,
    };
    let offset: i64 = match get("offset") {
        Some(v) => coerce::int_str(v)
            .filter(|n| *n >= 0)
            .ok_or_else(|| StorageError::InvalidParameter("offset".into()))?,
        None => 0,
    };
    // Identifiers only from this fixed list.
    let column = match get("sortColumn").unwrap_or("name") {
        c @ ("id" | "name" | "created_at" | "updated_at") => c,
        _ => return Err(StorageError::InvalidParameter("sortColumn".into())),
    };
    let order = match get("sortOrder").unwrap_or("asc") {
        "asc" => "asc",
        "desc" => "desc",
        _ => return Err(StorageError::InvalidParameter("sortOrder".into())),
    };
    let search = get("search").unwrap_or("").to_string();
    let sql = format!(
        "select {} from storage.buckets \
         where ($1 = '' or name ilike '%' || $1 || '%') \
         order by {column} {order} limit $2 offset $3",
        bucket_json_sql()
    );
    let rows = query_as_caller(state, ctx, &sql, &[&escape_like(&search), &limit, &offset]).await?;
    let out: Vec<Value> = rows.iter().map(|r| r.get::<_, Value>(0)).collect();
    Ok(ok(&Value::Array(out)))
}

pub async fn get(state: &AppState, ctx: &AuthContext, id: &str) -> Result<Resp, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, true).await?;
    let sql = format!(
        "select {} from storage.buckets where id = $1",
        bucket_json_sql()
    );
    let row = tx
        .query_opt(&sql, &[&id])
        .await
        .map_err(StorageError::pg)?
        .ok_or(StorageError::NoSuchBucket)?;
    Ok(ok(&row.get::<_, Value>(0)))
}

/// `file_size_limit` as a number of bytes or a string with a unit (`"20mb"`, decimal units
/// as in Supabase); null or 0 means no bucket limit.
pub fn parse_size_limit(v: &Value) -> Result<Option<i64>, StorageError> {
    let bad = || {
        StorageError::InvalidRequest(
            "Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B".into(),
        )
    };
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            let n = n.as_f64().ok_or_else(bad)?;
            if n < 0.0 || !n.is_finite() {
                return Err(bad());
            }
            Ok((n > 0.0).then_some(n as i64))
        }
        Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            if s.is_empty() {
                return Ok(None);
            }
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: f64 = num.parse().map_err(|_| bad())?;
            let mult = match unit.trim() {
                "gb" => 1e9,
                "mb" => 1e6,
                "kb" => 1e3,
                "b" | "" => 1.0,
                _ => return Err(bad()),
            };
            let bytes = (n * mult).round();
            if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
                return Err(bad());
            }
            Ok((bytes > 0.0).then_some(bytes as i64))
        }
        _ => Err(bad()),
    }
}

pub fn parse_mime_types(v: &Value) -> Result<Option<Vec<String>>, StorageError> {
    match v {
        Value::Null => Ok(None),
        Value::Array(a) => {
            let mut out = vec![];
            for t in a {
                let t = t
                    .as_str()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| valid_mime_pattern(s))
                    .ok_or_else(|| StorageError::InvalidParameter("allowed_mime_types".into()))?;
                out.push(t);
            }
            Ok((!out.is_empty()).then_some(out))
        }
        // a single type given once stands for a one-element list (Ajv's "array" coercion)
        Value::String(_) => parse_mime_types(&Value::Array(vec![v.clone()])),
        _ => Err(StorageError::InvalidParameter("allowed_mime_types".into())),
    }
}

fn valid_mime_pattern(s: &str) -> bool {
    let Some((a, b)) = s.split_once('/') else {
        return false;
    };
    let tok = |x: &str| {
        !x.is_empty()
            && x.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.+_!#$&^".contains(c))
    };
    tok(a) && (b == "*" || tok(b))
}

pub async fn create(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
) -> Result<Resp, StorageError> {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| body.get("id").and_then(Value::as_str))
        .ok_or_else(|| StorageError::MissingParameter("name".into()))?
        .to_string();
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(&name)
        .to_string();
    validate_bucket_name(&name)?;
    validate_bucket_name(&id)?;
    let public = match body.get("public") {
        None | Some(Value::Null) => false,
        Some(v) => {
            coerce::boolean(v).ok_or_else(|| StorageError::InvalidParameter("public".into()))?
        }
    };
    let limit = parse_size_limit(body.get("file_size_limit").unwrap_or(&Value::Null))?;
    check_limit_within_global(state, limit)?;
    let mimes = parse_mime_types(body.get("allowed_mime_types").unwrap_or(&Value::Null))?;
    let owner = ctx.user_id();
    let owner_id = ctx
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    tx.execute(
        "insert into storage.buckets (id, name, owner, owner_id, public, file_size_limit, allowed_mime_types) \
         values ($1, $2, $3, $4, $5, $6, $7)",
        &[&id, &name, &owner, &owner_id, &public, &limit, &mimes],
    )
    .await
    .map_err(|e| match StorageError::from_db(&e) {
        StorageError::KeyAlreadyExists => StorageError::BucketAlreadyExists,
        e => e,
    })?;
    tx.commit().await.map_err(StorageError::pg)?;
    Ok(ok(&json!({ "name": id })))
}

fn check_limit_within_global(state: &AppState, limit: Option<i64>) -> Result<(), StorageError> {
    if let Some(l) = limit {
        if l as u64 > state.config.storage.file_size_limit {
            return Err(StorageError::InvalidRequest(
                "file_size_limit is larger than the global upload limit".into(),
            ));
        }
    }
    Ok(())
}

pub async fn update(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
    id: &str,
) -> Result<Resp, StorageError> {
    let public = match body.get("public") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            coerce::boolean(v).ok_or_else(|| StorageError::InvalidParameter("public".into()))?,
        ),
    };
    let set_limit = body.get("file_size_limit").is_some();
    let limit = parse_size_limit(body.get("file_size_limit").unwrap_or(&Value::Null))?;
    check_limit_within_global(state, limit)?;
    let set_mimes = body.get("allowed_mime_types").is_some();
    let mimes = parse_mime_types(body.get("allowed_mime_types").unwrap_or(&Value::Null))?;
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    let n = tx
        .execute(
            "update storage.buckets set public = coalesce($2, public), \
             file_size_limit = case when $3 then $4 else file_size_limit end, \
             allowed_mime_types = case when $5 then $6 else allowed_mime_types end, \
             updated_at = now() where id = $1",
            &[&id, &public, &set_limit, &limit, &set_mimes, &mimes],
        )
        .await
        .map_err(StorageError::pg)?;
    if n == 0 {
        return Err(StorageError::NoSuchBucket);
    }
    super::commit_with_message(tx, "Successfully updated").await
}

pub async fn delete(state: &AppState, ctx: &AuthContext, id: &str) -> Result<Resp, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    // Objects keep a bucket from being deleted, visible to the caller or not.
    as_admin(&tx).await?;
    let objects: i64 = tx
        .query_one(
            "select count(*) from (select 1 from storage.objects where bucket_id = $1 limit 1) o",
            &[&id],
        )
        .await
        .map_err(StorageError::pg)?
        .get(0);
    super::as_caller(&tx, ctx).await?;
    let n = tx
        .execute("delete from storage.buckets where id = $1", &[&id])
        .await
        .map_err(|e| match StorageError::from_db(&e) {
            StorageError::NoSuchBucket => StorageError::BucketNotEmpty,
            e => e,
        })?;
    if n == 0 {
        return Err(StorageError::NoSuchBucket);
    }
    if objects > 0 {
        return Err(StorageError::BucketNotEmpty);
    }
    super::commit_with_message(tx, "Successfully deleted").await
}

/// Deletes every object row the caller may delete, then their bytes (in the background,
/// after the commit, so no reader ever sees a row without bytes).
pub async fn empty(state: &AppState, ctx: &AuthContext, id: &str) -> Result<Resp, StorageError> {
    let mut c = client(state).await?;
    let tx = caller_tx(&mut c, ctx, false).await?;
    let exists = tx
        .query_opt("select 1 from storage.buckets where id = $1", &[&id])
        .await
        .map_err(StorageError::pg)?;
    if exists.is_none() {
        return Err(StorageError::NoSuchBucket);
    }
    crate::storage::endpoint::check_declared(crate::storage::endpoint::RowOp::Delete)?;
    let rows = tx
        .query(
            "delete from storage.objects where bucket_id = $1 returning version",
            &[&id],
        )
        .await
        .map_err(StorageError::pg)?;
    tx.commit().await.map_err(StorageError::pg)?;
    super::objects::delete_versions_later(state, &rows);
    Ok(ok(
        &json!({"message": "Empty bucket has been queued. Completion may take up to an hour."}),
    ))
}

/// Escape `%`, `_` and `\` for a LIKE pattern.
pub fn escape_like(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits_parse_like_supabase() {
        assert_eq!(parse_size_limit(&json!("1mb")).unwrap(), Some(1_000_000));
        assert_eq!(parse_size_limit(&json!("20MB")).unwrap(), Some(20_000_000));
        assert_eq!(parse_size_limit(&json!("1kb")).unwrap(), Some(1000));
        assert_eq!(
            parse_size_limit(&json!("1.5gb")).unwrap(),
            Some(1_500_000_000)
        );
        assert_eq!(parse_size_limit(&json!(2048)).unwrap(), Some(2048));
        assert_eq!(parse_size_limit(&json!(null)).unwrap(), None);
        assert!(parse_size_limit(&json!("12 parsecs")).is_err());
        assert!(parse_size_limit(&json!(-1)).is_err());
    }

    #[test]
    fn mime_patterns() {
        assert_eq!(
            parse_mime_types(&json!(["image/*", "Text/Plain"])).unwrap(),
            Some(vec!["image/*".to_string(), "text/plain".to_string()])
        );
        assert!(parse_mime_types(&json!(["image"])).is_err());
        assert!(parse_mime_types(&json!(["*/png"])).is_err());
    }
}
