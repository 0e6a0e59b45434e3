//! Signed URLs. A token is an HS256 JWT (the project's JWT secret, as Supabase) whose claims
//! bind it to one `bucket/key`, a purpose (`typ`: download or upload) and an expiry, so a
//! token cannot be reused for another path, turned from a download into an upload, or
//! stretched past its expiry; a user's access token (no `url`) is never a signed URL.

use serde_json::{json, Value};

use super::coerce;
use super::endpoint::{validate_key, ObjectRef};
use super::error::StorageError;
use super::objects::{self, find_object, Reader, WriteAs};
use super::{name_list, ok, query_as_caller};
use crate::http::{query_pairs, Req, Resp};
use crate::identity::AuthContext;
use crate::jwt::JwtError;
use crate::state::AppState;

const TYP_DOWNLOAD: &str = "storage-download";
const TYP_UPLOAD: &str = "storage-upload";
/// Signed upload URLs live two hours, as in Supabase.
const UPLOAD_TTL: i64 = 2 * 60 * 60;

/// Characters kept as-is in a URL path (everything else percent-encoded).
const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'@')
    .remove(b'=')
    .remove(b':')
    .remove(b',')
    .remove(b';')
    .remove(b'$')
    .remove(b'&');

pub fn encode_path(p: &str) -> String {
    percent_encoding::utf8_percent_encode(p, PATH).to_string()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn sign(state: &AppState, claims: Value) -> String {
    state.keys.jwt.sign_hs256(&claims)
}

/// Verify a signed-URL token for exactly `obj` and purpose `typ`.
pub fn verify(
    state: &AppState,
    token: &str,
    obj: &ObjectRef,
    typ: &str,
) -> Result<Value, StorageError> {
    let claims = state.keys.jwt.verify(token).map_err(|e| match e {
        JwtError::Expired => StorageError::ExpiredToken,
        _ => StorageError::InvalidSignature("Invalid signature".into()),
    })?;
    // Tokens without exp are never ours.
    if claims.get("exp").and_then(Value::as_i64).is_none() {
        return Err(StorageError::InvalidSignature("Invalid signature".into()));
    }
    if claims.get("typ").and_then(Value::as_str) != Some(typ)
        || claims.get("url").and_then(Value::as_str) != Some(obj.full_path().as_str())
    {
        return Err(StorageError::InvalidSignature("Invalid signature".into()));
    }
    Ok(claims)
}

fn token_param(req: &Req) -> Result<String, StorageError> {
    query_pairs(req.uri().query())
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| StorageError::MissingParameter("token".into()))
}

fn expires_in(body: &Value) -> Result<i64, StorageError> {
    match body.get("expiresIn") {
        None | Some(Value::Null) => Err(StorageError::MissingParameter("expiresIn".into())),
        // an integer, coerced as storage-api's schema validation does ("3600" from storage3)
        Some(v) => coerce::int(v)
            .filter(|n| *n >= 1 && *n <= 10 * 365 * 24 * 3600)
            .ok_or_else(|| StorageError::InvalidParameter("expiresIn".into())),
    }
}

/// The `transform` options as the `x-transformations` string (imgproxy's vocabulary, as
/// Supabase reports it): `height:200,width:200,resizing_type:fill,quality:60`.
pub fn transformations(t: &Value) -> Option<String> {
    let t = t.as_object()?;
    let mut parts = vec![];
    let uint = |k: &str| t.get(k).and_then(coerce::int).filter(|n| *n >= 0);
    if let Some(h) = uint("height") {
        parts.push(format!("height:{h}"));
    }
    if let Some(w) = uint("width") {
        parts.push(format!("width:{w}"));
    }
    if parts.is_empty() && t.get("quality").is_none() && t.get("format").is_none() {
        return None;
    }
    let resize = match t.get("resize").and_then(Value::as_str).unwrap_or("cover") {
        "contain" => "fit",
        "fill" => "force",
        _ => "fill",
    };
    parts.push(format!("resizing_type:{resize}"));
    if let Some(q) = uint("quality") {
        parts.push(format!("quality:{q}"));
    }
    if let Some(f) = t.get("format").and_then(Value::as_str) {
        if f.chars().all(|c| c.is_ascii_alphanumeric()) {
            parts.push(format!("format:{f}"));
        }
    }
    Some(parts.join(","))
}

pub fn download_url(
    state: &AppState,
    obj: &ObjectRef,
    ttl: i64,
    transform: Option<String>,
) -> String {
    let iat = now();
    let mut claims =
        json!({"url": obj.full_path(), "typ": TYP_DOWNLOAD, "iat": iat, "exp": iat + ttl});
    let route = if let Some(t) = &transform {
        claims["transformations"] = json!(t);
        "render/image/sign"
    } else {
        "object/sign"
    };
    let token = sign(state, claims);
    format!("/{route}/{}?token={token}", encode_path(&obj.full_path()))
}

pub async fn sign_one(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
    obj: ObjectRef,
) -> Result<Resp, StorageError> {
    let ttl = expires_in(&body)?;
    let transform = body.get("transform").and_then(transformations);
    // The caller must be allowed to read it (RLS select), as in Supabase.
    find_object(state, Reader::Caller(ctx), &obj).await?;
    Ok(ok(
        &json!({"signedURL": download_url(state, &obj, ttl, transform)}),
    ))
}

pub async fn sign_many(
    state: &AppState,
    ctx: &AuthContext,
    body: Value,
    bucket: &str,
) -> Result<Resp, StorageError> {
    let ttl = expires_in(&body)?;
    let paths = name_list(&body, "paths")?;
    let visible: std::collections::HashSet<String> = query_as_caller(
        state,
        ctx,
        "select name from storage.objects where bucket_id = $1 and name = any($2)",
        &[&bucket, &paths],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let out: Vec<Value> = paths
        .iter()
        .map(|p| {
            if visible.contains(p) && validate_key(p).is_ok() {
                let obj = ObjectRef {
                    bucket: bucket.to_string(),
                    name: p.clone(),
                };
                json!({"error": null, "path": p, "signedURL": download_url(state, &obj, ttl, None)})
            } else {
                json!({"error": "Either the object does not exist or you do not have access to it", "path": p, "signedURL": null})
            }
        })
        .collect();
    Ok(ok(&Value::Array(out)))
}

pub async fn get_signed(state: &AppState, req: Req, obj: ObjectRef) -> Result<Resp, StorageError> {
    let token = token_param(&req)?;
    verify(state, &token, &obj, TYP_DOWNLOAD)?;
    objects::download(
        state,
        req,
        None,
        obj,
        super::endpoint::Access::Signed,
        false,
    )
    .await
}

pub async fn sign_upload(
    state: &AppState,
    ctx: &AuthContext,
    req: Req,
    obj: ObjectRef,
) -> Result<Resp, StorageError> {
    let upsert = objects::wants_upsert(&req);
    let who = WriteAs::caller(ctx, upsert);
    // The permission is checked now, as the caller; the upload later runs on the token.
    objects::check_can_write(state, &who, &obj).await?;
    let iat = now();
    let token = sign(
        state,
        json!({"url": obj.full_path(), "typ": TYP_UPLOAD, "owner": who.owner_id, "upsert": upsert, "iat": iat, "exp": iat + UPLOAD_TTL}),
    );
    Ok(ok(&json!({
        "url": format!("/object/upload/sign/{}?token={token}", encode_path(&obj.full_path())),
        "token": token,
    })))
}

pub async fn upload_signed(
    state: &AppState,
    req: Req,
    obj: ObjectRef,
) -> Result<Resp, StorageError> {
    let token = token_param(&req)?;
    let claims = verify(state, &token, &obj, TYP_UPLOAD)?;
    let upsert = claims
        .get("upsert")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let owner_id = claims
        .get("owner")
        .and_then(Value::as_str)
        .map(str::to_string);
    let service = AuthContext::service();
    let who = WriteAs {
        ctx: &service,
        owner_id,
        upsert,
    };
    let src = objects::read_upload(req).await?;
    let id = objects::store_object(state, &who, &obj, src).await?;
    Ok(ok(&json!({"Id": id, "Key": obj.full_path()})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformation_strings_match_supabase() {
        assert_eq!(
            transformations(&json!({"width":200,"height":200,"quality":60})).unwrap(),
            "height:200,width:200,resizing_type:fill,quality:60"
        );
        assert_eq!(
            transformations(&json!({"width":10,"resize":"contain"})).unwrap(),
            "width:10,resizing_type:fit"
        );
        assert_eq!(transformations(&json!({})), None);
    }

    #[test]
    fn paths_are_encoded_for_urls() {
        assert_eq!(encode_path("b/a b/c?.txt"), "b/a%20b/c%3F.txt");
    }
}
