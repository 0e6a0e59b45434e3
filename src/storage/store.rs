//! Object bytes through `object_store`: local files (default, `<data dir>/storage`),
//! S3 (`s3://bucket[/prefix]`, AWS_* variables) or memory (`memory://`, tests).
//!
//! Keys are never derived from user input: an object's bytes live at
//! `objects/<version>`, where the version is a UUID this server generated. So no request
//! can name a file outside the storage root, whatever its object name holds, and an
//! overwrite writes a new key and switches the row to it (readers see old or new bytes).

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart};

use super::error::StorageError;
use crate::config::Config;

pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Where bytes go, for the start-up log (no credentials).
    pub describe: String,
    /// Part size for streamed uploads (S3 needs at least 5 MiB).
    chunk: usize,
    /// The backup target's store (`[backup] target`): every version written is copied there
    /// and none is deleted here before it is (src/backup/objects.rs).
    archive: Option<Arc<dyn ObjectStore>>,
    /// Those copies in flight (a shutdown lets them finish).
    archiving: tokio_util::task::TaskTracker,
}

/// What a finished upload wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    /// Hex MD5 of the bytes (the S3-style ETag of a single-part object).
    pub md5: String,
}

#[derive(Debug)]
pub enum PutError {
    /// The limit was passed; nothing was kept.
    TooLarge,
    /// The request body failed (client went away, malformed multipart).
    Body(StorageError),
    Store(object_store::Error),
}

impl From<PutError> for StorageError {
    fn from(e: PutError) -> Self {
        match e {
            PutError::TooLarge => StorageError::EntityTooLarge,
            PutError::Body(e) => e,
            PutError::Store(e) => StorageError::internal(format!("object store: {e}")),
        }
    }
}

pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// Read and drop what is left of a rejected request body, up to a bound, so the client can
/// finish sending and then read our error. Closing a socket that still holds unread data
/// makes the kernel answer with a reset, which can destroy the error response in flight
/// (the client sees "connection reset" instead of 413). Past the bound we give up and let
/// the connection close.
pub async fn discard_rest(body: &mut ByteStream) {
    const MAX_BYTES: u64 = 64 << 20;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);
    let _ = tokio::time::timeout(MAX_TIME, async {
        let mut seen: u64 = 0;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len() as u64;
            if seen > MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

impl Store {
    pub fn open(cfg: &Config) -> Result<Store, String> {
        let mut store = Self::open_live(cfg)?;
        if let Some(t) = &cfg.backup.target {
            store.archive = Some(crate::backup::target::Target::open(t)?.store);
        }
        Ok(store)
    }

    fn open_live(cfg: &Config) -> Result<Store, String> {
        let url = cfg.storage.url.clone().unwrap_or_default();
        if url.is_empty() {
            return Self::local(&cfg.storage_dir());
        }
        if let Some(p) = url.strip_prefix("file://") {
            return Self::local(std::path::Path::new(p));
        }
        if url == "memory://" || url == "memory:" {
            return Ok(Store {
                inner: Arc::new(object_store::memory::InMemory::new()),
                describe: "memory".into(),
                chunk: 1 << 20,
                archive: None,
                archiving: Default::default(),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, p.trim_matches('/')),
                None => (rest, ""),
            };
            if bucket.is_empty() {
                return Err("storage url s3:// needs a bucket name".into());
            }
            let s3 = s3_bucket(bucket).map_err(|e| format!("S3 storage: {e}"))?;
            let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            };
            return Ok(Store {
                inner,
                describe: format!("s3://{bucket}"),
                chunk: 5 << 20,
                archive: None,
                archiving: Default::default(),
            });
        }
        Err(format!(
            "storage url '{url}': expected file:///path, s3://bucket or memory://"
        ))
    }

    fn local(dir: &std::path::Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create storage dir {}: {e}", dir.display()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| format!("storage dir {}: {e}", dir.display()))?;
        Ok(Store {
            inner: Arc::new(fs),
            describe: dir.display().to_string(),
            chunk: 1 << 20,
            archive: None,
            archiving: Default::default(),
        })
    }

    /// The key of one object version (a UUID we generated; never user input).
    pub fn object_key(version: &str) -> Path {
        debug_assert!(version.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        Path::from(format!("objects/{version}"))
    }

    /// Stream `body` to `key`, never holding more than a few parts in memory. Fails as soon
    /// as more than `limit` bytes arrived; on any failure nothing is left under `key`.
    pub async fn put_stream(
        &self,
        key: &Path,
        mut body: impl Stream<Item = Result<Bytes, StorageError>> + Unpin + Send,
        limit: u64,
    ) -> Result<Written, PutError> {
        let mut md5 = Md5::new();
        let mut size: u64 = 0;
        let mut first = BytesMut::new();
        // Small objects go up in one put; larger ones switch to a multipart upload.
        let mut upload: Option<WriteMultipart> = None;
        let result: Result<(), PutError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(PutError::Body)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(PutError::TooLarge);
                }
                md5.update(&chunk);
                match upload.as_mut() {
                    None => {
                        first.extend_from_slice(&chunk);
                        if first.len() >= self.chunk {
                            let mp = self
                                .inner
                                .put_multipart(key)
                                .await
                                .map_err(PutError::Store)?;
                            let mut w = WriteMultipart::new_with_chunk_size(mp, self.chunk);
                            w.put(std::mem::take(&mut first).freeze());
                            upload = Some(w);
                        }
                    }
                    Some(w) => {
                        w.wait_for_capacity(2).await.map_err(PutError::Store)?;
                        w.put(chunk);
                    }
                }
            }
            Ok(())
        }
        .await;
        match (result, upload) {
            (Ok(()), Some(w)) => {
                w.finish().await.map_err(PutError::Store)?;
            }
            (Ok(()), None) => {
                self.inner
                    .put(key, PutPayload::from(first.freeze()))
                    .await
                    .map_err(PutError::Store)?;
            }
            (Err(e), Some(w)) => {
                let _ = w.abort().await;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        }
        self.archive_soon(key);
        Ok(Written {
            size,
            md5: hex(&md5.finalize()),
        })
    }

    /// Bytes of `key`, optionally a range (end exclusive).
    pub async fn get(
        &self,
        key: &Path,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, object_store::Result<Bytes>>, object_store::Error> {
        let opts = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start as usize..r.end as usize)),
            ..Default::default()
        };
        Ok(self.inner.get_opts(key, opts).await?.into_stream())
    }

    pub async fn get_all(&self, key: &Path, max: u64) -> Result<Bytes, StorageError> {
        let r = self
            .inner
            .get(key)
            .await
            .map_err(|e| StorageError::internal(format!("object store get: {e}")))?;
        if r.meta.size as u64 > max {
            return Err(StorageError::ImageProcessing(
                "the image is too large to transform".into(),
            ));
        }
        r.bytes()
            .await
            .map_err(|e| StorageError::internal(format!("object store read: {e}")))
    }

    pub async fn put_bytes(&self, key: &Path, bytes: Bytes) -> Result<(), StorageError> {
        self.inner
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(|e| StorageError::internal(format!("object store put: {e}")))?;
        self.archive_soon(key);
        Ok(())
    }

    /// With a backup target, copy a new version there in the background.
    fn archive_soon(&self, key: &Path) {
        if let Some(a) = &self.archive {
            self.archiving.spawn(crate::backup::objects::archive_soon(
                self.inner.clone(),
                a.clone(),
                key.clone(),
            ));
        }
    }

    /// Wait (bounded) for object copies to the backup target still in flight.
    pub async fn settle_archive(&self, within: std::time::Duration) {
        self.archiving.close();
        let _ = tokio::time::timeout(within, self.archiving.wait()).await;
    }

    /// Delete, treating an already missing key as done. With a backup target the bytes are
    /// archived first (a restore to an earlier time may need them).
    pub async fn delete(&self, key: &Path) -> Result<(), object_store::Error> {
        if let Some(a) = &self.archive {
            crate::backup::objects::preserve(self.inner.as_ref(), a.as_ref(), key).await?;
        }
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Delete in the background after a commit; failures are logged (the sweeper retries).
    pub fn delete_later(self: &Arc<Self>, keys: Vec<Path>) {
        if keys.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            for k in keys {
                if let Err(e) = me.delete(&k).await {
                    tracing::warn!(key = %k, error = %e, "could not delete object bytes");
                }
            }
        });
    }

    pub async fn copy(&self, from: &Path, to: &Path) -> Result<(), object_store::Error> {
        self.inner.copy(from, to).await?;
        self.archive_soon(to);
        Ok(())
    }

    pub async fn size(&self, key: &Path) -> Result<u64, object_store::Error> {
        Ok(self.inner.head(key).await?.size as u64)
    }

    /// Every key under `prefix` with its last-modified time and size.
    pub async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<(Path, chrono::DateTime<chrono::Utc>, u64)>, object_store::Error> {
        let p = Path::from(prefix);
        let mut s = self.inner.list(Some(&p));
        let mut out = vec![];
        while let Some(m) = s.next().await {
            let m = m?;
            out.push((m.location, m.last_modified, m.size as u64));
        }
        Ok(out)
    }

    pub fn raw(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
}

/// An S3 bucket configured from the AWS_* variables (`AWS_ENDPOINT_URL` for an
/// S3-compatible server, path-style then; region us-east-1 unless set). Storage and backup
/// targets share it, so one set of variables serves both.
pub fn s3_bucket(bucket: &str) -> Result<object_store::aws::AmazonS3, object_store::Error> {
    let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .unwrap_or_default();
    if !endpoint.is_empty() {
        b = b
            .with_endpoint(&endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    b.build()
}

/// Remove the staging files (`<key>#<n>`) the local file store writes before renaming a
/// finished upload into place: after a crash they are half-written and nothing lists or
/// reads them. Only safe while no upload runs (at start). Returns how many went.
pub fn remove_staged_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            n += remove_staged_files(&p);
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        let staged = name.rsplit_once('#').is_some_and(|(_, suffix)| {
            !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
        });
        if staged && std::fs::remove_file(&p).is_ok() {
            n += 1;
        }
    }
    n
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Store {
        Store {
            inner: Arc::new(object_store::memory::InMemory::new()),
            describe: "memory".into(),
            chunk: 8,
            archive: None,
            archiving: Default::default(),
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, StorageError>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn small_and_multipart_uploads_round_trip() {
        let s = mem();
        let k = Store::object_key("00000000-0000-0000-0000-000000000001");
        let w = s.put_stream(&k, chunks(&[b"hello"]), 100).await.unwrap();
        assert_eq!(w.size, 5);
        assert_eq!(w.md5, "5d41402abc4b2a76b9719d911017c592");
        let k2 = Store::object_key("00000000-0000-0000-0000-000000000002");
        let w = s
            .put_stream(&k2, chunks(&[b"0123456789", b"abcdefghij", b"xyz"]), 100)
            .await
            .unwrap();
        assert_eq!(w.size, 23);
        let got: Vec<Bytes> = s
            .get(&k2, None)
            .await
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert_eq!(got.concat(), b"0123456789abcdefghijxyz");
        let part: Vec<Bytes> = s
            .get(&k2, Some(2..5))
            .await
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert_eq!(part.concat(), b"234");
    }

    #[tokio::test]
    async fn over_the_limit_leaves_nothing() {
        let s = mem();
        let k = Store::object_key("00000000-0000-0000-0000-000000000003");
        let r = s
            .put_stream(&k, chunks(&[b"0123456789", b"0123456789", b"x"]), 15)
            .await;
        assert!(matches!(r, Err(PutError::TooLarge)));
        assert!(s.size(&k).await.is_err());
        assert!(s.list("objects").await.unwrap().is_empty());
    }
}
