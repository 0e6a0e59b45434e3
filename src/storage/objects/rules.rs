//! The bucket's rules for a write: size limit, MIME allow-list, content sniffing.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use uuid::Uuid;

use crate::state::AppState;
use crate::storage::error::StorageError;
use crate::storage::store::ByteStream;

/// Versions this server generates (UUIDs); anything else never becomes a store key.
pub fn is_our_version(v: &str) -> bool {
    Uuid::parse_str(v).is_ok()
}

pub struct BucketInfo {
    pub id: String,
    pub public: bool,
    pub limit: Option<i64>,
    pub mimes: Option<Vec<String>>,
}

/// Bucket lookup as the storage admin (uploads need the limits even when the caller may
/// not read `storage.buckets`, as in Supabase).
pub async fn bucket_info(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
) -> Result<BucketInfo, StorageError> {
    let row = tx
        .query_opt(
            "select id, coalesce(public, false), file_size_limit, allowed_mime_types \
             from storage.buckets where id = $1",
            &[&id],
        )
        .await
        .map_err(StorageError::pg)?
        .ok_or(StorageError::NoSuchBucket)?;
    Ok(BucketInfo {
        id: row.get(0),
        public: row.get(1),
        limit: row.get(2),
        mimes: row.get(3),
    })
}

pub fn effective_limit(state: &AppState, b: &BucketInfo) -> u64 {
    let global = state.config.storage.file_size_limit;
    match b.limit {
        Some(l) if l > 0 => (l as u64).min(global),
        _ => global,
    }
}

/// `allowed_mime_types` with wildcards (`image/*`); parameters (`;charset=`) ignored. No
/// list, or an empty one, allows everything (as Supabase).
pub fn mime_allowed(mimes: &Option<Vec<String>>, content_type: &str) -> bool {
    let Some(list) = mimes.as_ref().filter(|l| !l.is_empty()) else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (ty, _) = essence.split_once('/').unwrap_or((&essence, ""));
    list.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        p == essence || p == "*/*" || p.strip_suffix("/*").is_some_and(|pt| pt == ty)
    })
}

/// A content type without its parameters, as error messages name it.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The bucket's rules for a new object's declared type and size, as every write applies
/// them (upload, signed upload, TUS, copy, move).
pub fn check_rules(
    state: &AppState,
    b: &BucketInfo,
    content_type: &str,
    size: Option<u64>,
) -> Result<(), StorageError> {
    if size.is_some_and(|n| n > effective_limit(state, b)) {
        return Err(StorageError::EntityTooLarge);
    }
    if !mime_allowed(&b.mimes, content_type) {
        return Err(StorageError::InvalidMimeType(essence(content_type)));
    }
    Ok(())
}

/// In a bucket with a MIME allow-list, the content's first bytes must not contradict the
/// declared type (HTML or another kind of file declared as an image): refused as that type.
pub fn check_content(b: &BucketInfo, content_type: &str, head: &[u8]) -> Result<(), StorageError> {
    if !sniffs(b) {
        return Ok(());
    }
    match crate::functions::sniff::contradicts(content_type, head) {
        Some(actual) => Err(StorageError::InvalidMimeType(actual)),
        None => Ok(()),
    }
}

/// Whether the bucket's rules look at the content's bytes (see [`check_content`]).
pub fn sniffs(b: &BucketInfo) -> bool {
    b.mimes.as_ref().is_some_and(|l| !l.is_empty())
}

/// Read the first `n` bytes of `stream` (fewer if it ends sooner) and put them back in front.
pub async fn peek_head(stream: &mut ByteStream, n: usize) -> Result<Bytes, StorageError> {
    let mut head = BytesMut::new();
    let mut failed = None;
    while head.len() < n {
        match stream.next().await {
            Some(Ok(c)) => head.extend_from_slice(&c),
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            None => break,
        }
    }
    let head = head.freeze();
    let rest = std::mem::replace(stream, futures::stream::empty().boxed());
    *stream = futures::stream::once(futures::future::ready(Ok(head.clone())))
        .chain(rest)
        .boxed();
    match failed {
        Some(e) => Err(e),
        None => Ok(head),
    }
}
