//! Where backups go: a folder or an S3 bucket (with an optional prefix), both through
//! `object_store`, laid out as
//!
//! ```text
//! base/<id>/base.tar.gz, pg_wal.tar.gz, backup_manifest, manifest.json (written last)
//! wal/<segment or history file>.gz    continuous WAL archive (archive_command)
//! objects/<version>                   every stored object version, immutable
//! objects-deleted/<version>           when the live copy was deleted (for pruning)
//! ```

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Part size of uploads (S3 needs 5 MiB at least).
const PART: usize = 8 << 20;

#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn ObjectStore>,
    /// For messages (no credentials).
    pub describe: String,
    /// The folder, for a folder target.
    pub folder: Option<PathBuf>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Target {
    /// `s3://bucket[/prefix]`, `file:///path` or a plain path (made absolute: the archive
    /// command runs in PostgreSQL's data directory).
    pub fn open(url: &str) -> Result<Target, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("backup target is empty (a folder or s3://bucket/prefix)".into());
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, p.trim_matches('/')),
                None => (rest, ""),
            };
            if bucket.is_empty() {
                return Err(format!("backup target '{url}' needs a bucket name"));
            }
            let s3 = crate::storage::store::s3_bucket(bucket)
                .map_err(|e| format!("backup target {url}: {e}"))?;
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            };
            return Ok(Target {
                store,
                describe: url.to_string(),
                folder: None,
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(format!(
                "backup target '{url}': expected a folder, file:///path or s3://bucket/prefix"
            ));
        }
        let dir = folder_path(url)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create backup folder {}: {e}", dir.display()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| format!("backup folder {}: {e}", dir.display()))?;
        Ok(Target {
            store: Arc::new(fs),
            describe: dir.display().to_string(),
            folder: Some(dir),
        })
    }

    pub async fn exists(&self, key: &Path) -> Result<bool, String> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(format!("{}: {e}", self.describe)),
        }
    }

    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), String> {
        self.store
            .put(key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write {key} to {}: {e}", self.describe))
    }

    /// Upload a local file in parts, calling `progress(done, total)` as parts go.
    pub async fn upload_file(
        &self,
        key: &Path,
        file: &FsPath,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, String> {
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let total = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        if total < PART as u64 {
            let mut buf = Vec::with_capacity(total as usize);
            f.read_to_end(&mut buf)
                .await
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            self.put(key, Bytes::from(buf)).await?;
            progress(total, total);
            return Ok(total);
        }
        let mp = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| format!("cannot upload {key} to {}: {e}", self.describe))?;
        let mut w = WriteMultipart::new_with_chunk_size(mp, PART);
        let mut done: u64 = 0;
        let result: Result<(), String> = async {
            loop {
                let mut buf = vec![0u8; PART];
                let mut n = 0;
                while n < PART {
                    let got = f
                        .read(&mut buf[n..])
                        .await
                        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                    if got == 0 {
                        break;
                    }
                    n += got;
                }
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| format!("upload of {key}: {e}"))?;
                w.put(Bytes::from(buf));
                done += n as u64;
                progress(done, total);
            }
        }
        .await;
        match result {
            Ok(()) => {
                w.finish()
                    .await
                    .map_err(|e| format!("upload of {key}: {e}"))?;
                Ok(done)
            }
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// Download `key` into a local file, calling `progress(done, total)`.
    pub async fn download_file(
        &self,
        key: &Path,
        file: &FsPath,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64, String> {
        let r = self
            .store
            .get(key)
            .await
            .map_err(|e| format!("cannot read {key} from {}: {e}", self.describe))?;
        let total = r.meta.size as u64;
        let mut out = tokio::fs::File::create(file)
            .await
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let mut s = r.into_stream();
        let mut done: u64 = 0;
        let mut shown: u64 = 0;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| format!("reading {key}: {e}"))?;
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            done += chunk.len() as u64;
            if done - shown >= PART as u64 || done == total {
                shown = done;
                progress(done, total);
            }
        }
        out.flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        Ok(done)
    }
}

/// Stream one key from `from` to `to` (object versions can be large). Returns its size;
/// `Ok(None)` when `from` has no such key.
pub async fn copy_key(
    from: &dyn ObjectStore,
    to: &dyn ObjectStore,
    key: &Path,
) -> Result<Option<u64>, object_store::Error> {
    let r = match from.get(key).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = r.meta.size as u64;
    if size < PART as u64 {
        to.put(key, PutPayload::from(r.bytes().await?)).await?;
        return Ok(Some(size));
    }
    let mut w = WriteMultipart::new_with_chunk_size(to.put_multipart(key).await?, PART);
    let mut s = r.into_stream();
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(c) => {
                w.wait_for_capacity(4).await?;
                w.put(c);
            }
            Err(e) => {
                let _ = w.abort().await;
                return Err(e);
            }
        }
    }
    w.finish().await?;
    Ok(Some(size))
}

/// Every key under `prefix` with its size and time.
pub async fn list(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
    let p = Path::from(prefix);
    let mut s = store.list(Some(&p));
    let mut out = vec![];
    while let Some(m) = s.next().await {
        out.push(m?);
    }
    Ok(out)
}

fn folder_path(url: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    std::path::absolute(&p).map_err(|e| format!("backup folder {url}: {e}"))
}

/// A byte count for people: `512 B`, `3.4 MB`, `1.2 GB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_why_not() {
        assert!(Target::open("").unwrap_err().contains("empty"));
        assert!(Target::open("ftp://x/y").unwrap_err().contains("expected"));
        assert!(Target::open("s3:///p").unwrap_err().contains("bucket"));
        let d = std::env::temp_dir().join(format!("oxibase-target-{}", std::process::id()));
        let t = Target::open(&format!("file://{}", d.display())).unwrap();
        assert_eq!(t.folder.as_deref(), Some(d.as_path()));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3_400_000), "3.4 MB");
    }
}
