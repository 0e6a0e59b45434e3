//! Continuous WAL archiving: PostgreSQL's `archive_command` runs `oxibase wal-push`, its
//! `restore_command` during a restore runs `oxibase wal-fetch`. Files are gzipped (a segment
//! closed early by archive_timeout is mostly zeros) and never overwritten with other bytes.

use std::io::{Read, Write};
use std::path::Path as FsPath;

use bytes::Bytes;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use object_store::path::Path;

use super::target::{list, Target};

/// The archive key of a WAL file name (`000000010000000000000003`, `00000002.history`).
fn key(name: &str) -> Result<Path, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    {
        return Err(format!("'{name}' is not a WAL file name"));
    }
    Ok(Path::from(format!("wal/{name}.gz")))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut e = GzEncoder::new(Vec::with_capacity(bytes.len() / 8), Compression::fast());
    e.write_all(bytes).map_err(|e| e.to_string())?;
    e.finish().map_err(|e| e.to_string())
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("archived WAL is not readable gzip: {e}"))?;
    Ok(out)
}

/// `archive_command`: copy the WAL file at `path` (relative to the data directory) into the
/// archive. Archiving the same bytes twice succeeds; other bytes under the name fail.
pub async fn push(target: &Target, path: &FsPath) -> Result<(), String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no file name", path.display()))?;
    let key = key(name)?;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match target.store.get(&key).await {
        Ok(r) => {
            let old = r.bytes().await.map_err(|e| e.to_string())?;
            if gunzip(&old)? == bytes {
                return Ok(());
            }
            return Err(format!(
                "{name} is already archived in {} with other contents (another server \
                 archiving to the same target?)",
                target.describe
            ));
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(format!("{}: {e}", target.describe)),
    }
    let packed = tokio::task::spawn_blocking(move || gzip(&bytes))
        .await
        .map_err(|e| e.to_string())??;
    target.put(&key, Bytes::from(packed)).await
}

/// `restore_command`: write archived `name` to `dest`. `Ok(false)` when it is not in the
/// archive (PostgreSQL asks for files that may not exist, such as the next timeline's
/// history).
pub async fn fetch(target: &Target, name: &str, dest: &FsPath) -> Result<bool, String> {
    let key = key(name)?;
    let packed = match target.store.get(&key).await {
        Ok(r) => r.bytes().await.map_err(|e| e.to_string())?,
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(format!("{}: {e}", target.describe)),
    };
    let bytes = tokio::task::spawn_blocking(move || gunzip(&packed))
        .await
        .map_err(|e| e.to_string())??;
    let tmp = dest.with_extension("oxibase-partial");
    tokio::fs::write(&tmp, &bytes)
        .await
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, dest)
        .await
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    Ok(true)
}

/// The segment part (log and segment number, timeline left out) of a WAL segment or
/// `.backup` file name; None for history files and anything else.
fn segment_of(name: &str) -> Option<&str> {
    let stem = name.split('.').next()?;
    (stem.len() == 24 && stem.chars().all(|c| c.is_ascii_hexdigit())).then(|| &stem[8..])
}

/// Delete archived WAL older than `oldest_needed` (the start segment of the oldest kept
/// base backup), on every timeline; history files stay. Returns how many went.
pub async fn prune(target: &Target, oldest_needed: &str) -> Result<usize, String> {
    let Some(floor) = segment_of(oldest_needed).map(str::to_ascii_uppercase) else {
        return Err(format!("'{oldest_needed}' is not a WAL segment name"));
    };
    let keys = list(target.store.as_ref(), "wal")
        .await
        .map_err(|e| format!("{}: {e}", target.describe))?;
    let mut n = 0;
    for m in keys {
        let Some(name) = m.location.filename() else {
            continue;
        };
        let Some(seg) = segment_of(name) else {
            continue;
        };
        if seg.to_ascii_uppercase() < floor {
            match target.store.delete(&m.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(e) => return Err(format!("{}: {e}", target.describe)),
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_names_are_checked() {
        assert!(key("000000010000000000000003").is_ok());
        assert!(key("00000002.history").is_ok());
        assert!(key("000000010000000000000002.00000028.backup").is_ok());
        assert!(key("../x").is_err());
        assert!(key("").is_err());
    }

    #[test]
    fn segments_compare_across_timelines() {
        assert_eq!(
            segment_of("000000020000000100000003"),
            Some("0000000100000003")
        );
        assert_eq!(
            segment_of("000000010000000000000002.00000028.backup"),
            Some("0000000000000002")
        );
        assert_eq!(segment_of("00000002.history"), None);
    }

    #[tokio::test]
    async fn push_fetch_round_trip_and_refuse_other_bytes() {
        let dir = std::env::temp_dir().join(format!("oxibase-wal-{}", std::process::id()));
        let t = Target::open(dir.join("target").to_str().unwrap()).unwrap();
        std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
        let seg = dir.join("pg_wal/000000010000000000000001");
        std::fs::write(&seg, vec![7u8; 4096]).unwrap();
        push(&t, &seg).await.unwrap();
        push(&t, &seg).await.unwrap(); // the same bytes again: fine
        std::fs::write(&seg, vec![8u8; 4096]).unwrap();
        assert!(push(&t, &seg).await.unwrap_err().contains("other contents"));
        let out = dir.join("restored");
        assert!(fetch(&t, "000000010000000000000001", &out).await.unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 4096]);
        assert!(!fetch(&t, "00000002.history", &out).await.unwrap());
        assert_eq!(prune(&t, "000000010000000000000002").await.unwrap(), 1);
        assert!(!fetch(&t, "000000010000000000000001", &out).await.unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
