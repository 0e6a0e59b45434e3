//! Objects put into storage from outside a request: `[storage.buckets.*] objects_path`
//! folders and `oxibase import`. A file whose bytes are already the object's (same MD5
//! ETag) is skipped, so a copy can be run again after an interruption.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use md5::{Digest, Md5};
use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

use super::Bucket;
use crate::storage::store::Store;
use crate::Config;

/// A content type from a file name's extension (octet-stream when unknown).
pub fn mime_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("avif") => "image/avif",
        Some("ico") => "image/x-icon",
        Some("pdf") => "application/pdf",
        Some("json") => "application/json",
        Some("txt" | "md") => "text/plain",
        Some("csv") => "text/csv",
        Some("html" | "htm") => "text/html",
        Some("css") => "text/css",
        Some("js" | "mjs") => "text/javascript",
        Some("mp3") => "audio/mpeg",
        Some("mp4") => "video/mp4",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

/// Whether `bucket/name` already holds exactly these bytes.
async fn same_bytes(client: &Client, bucket: &str, name: &str, etag: &str) -> Result<bool, String> {
    let row = client
        .query_opt(
            "select metadata->>'eTag' from storage.objects where bucket_id = $1 and name = $2",
            &[&bucket, &name],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>(0)).as_deref() == Some(etag))
}

/// Store `bytes` as `bucket/name` (replacing a different object there); false when the
/// object already had these bytes. `owner` is kept as the row's owner.
pub async fn put_object(
    client: &Client,
    store: &Store,
    bucket: &str,
    name: &str,
    bytes: Bytes,
    content_type: &str,
    owner: Option<Uuid>,
) -> Result<bool, String> {
    let md5 = crate::storage::store::hex(&Md5::digest(&bytes));
    let etag = format!("\"{md5}\"");
    if same_bytes(client, bucket, name, &etag).await? {
        return Ok(false);
    }
    let version = Uuid::new_v4().to_string();
    let key = Store::object_key(&version);
    let size = bytes.len() as u64;
    store
        .put_bytes(&key, bytes)
        .await
        .map_err(|e| format!("cannot store {bucket}/{name}: {e:?}"))?;
    let metadata = json!({
        "eTag": etag, "size": size, "mimetype": content_type, "cacheControl": "max-age=3600",
        "lastModified": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "contentLength": size, "httpStatusCode": 200,
    });
    let owner_text = owner.map(|o| o.to_string());
    let old = client
        .query_opt(
            "select version from storage.objects where bucket_id = $1 and name = $2",
            &[&bucket, &name],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?
        .and_then(|r| r.get::<_, Option<String>>(0));
    let res = client
        .execute(
            "insert into storage.objects (bucket_id, name, owner, owner_id, version, metadata) \
             values ($1, $2, $3, $4, $5, $6) on conflict (bucket_id, name) do update set \
             version = excluded.version, metadata = excluded.metadata, updated_at = now()",
            &[&bucket, &name, &owner, &owner_text, &version, &metadata],
        )
        .await;
    if let Err(e) = res {
        let _ = store.delete(&key).await;
        return Err(format!("{bucket}/{name}: {}", crate::db::error_text(&e)));
    }
    if let Some(old) = old.filter(|o| Uuid::parse_str(o).is_ok()) {
        let _ = store.delete(&Store::object_key(&old)).await;
    }
    Ok(true)
}

/// Every file under `dir`, with its name relative to `dir` ('/'-separated), sorted.
pub fn files_under(dir: &Path) -> Vec<(String, PathBuf)> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, PathBuf)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.is_file() {
                let rel = p.strip_prefix(base).unwrap_or(&p);
                let name: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect();
                out.push((name.join("/"), p));
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Upload the files of each bucket's `objects_path` (skipping those already there).
pub async fn upload_bucket_folders(
    client: &Client,
    cfg: &Config,
    buckets: &[Bucket],
    progress: &dyn Fn(&str),
) -> Result<(), String> {
    let with_files: Vec<&Bucket> = buckets
        .iter()
        .filter(|b| b.objects_path.is_some())
        .collect();
    if with_files.is_empty() {
        return Ok(());
    }
    let store = Store::open(cfg)?;
    for b in with_files {
        let dir = b.objects_path.as_ref().expect("filtered");
        let mut uploaded = 0;
        for (name, path) in files_under(dir) {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if put_object(
                client,
                &store,
                &b.name,
                &name,
                bytes.into(),
                mime_of(&name),
                None,
            )
            .await?
            {
                uploaded += 1;
            }
        }
        if uploaded > 0 {
            progress(&format!(
                "Uploaded {uploaded} object(s) to bucket {} from {}",
                b.name,
                dir.display()
            ));
        }
    }
    Ok(())
}
