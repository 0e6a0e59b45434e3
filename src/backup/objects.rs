//! Object bytes for point-in-time restores.
//!
//! Stored bytes are keyed by an immutable version (`objects/<uuid>`): an overwrite writes a
//! new key and switches the row, so the rows of any moment name exactly the bytes they need.
//! With a backup target, every version is copied to `objects/<version>` there (soon after it
//! is written, again by each backup for any the first copy missed, and — before the live
//! bytes may go — when it is deleted). A restore recovers the database to time T, then
//! copies exactly the versions its `storage.objects` rows name: every row has its bytes and
//! no other object appears. A deletion leaves `objects-deleted/<version>`; once every kept
//! base backup starts after it, no restore can want that version and pruning drops it.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use super::target::{copy_key, list, Target};

/// Only object versions are archived (not TUS parts or staging files).
pub fn is_version_key(key: &Path) -> bool {
    key.as_ref().starts_with("objects/")
}

async fn archived(archive: &dyn ObjectStore, key: &Path) -> Result<bool, object_store::Error> {
    match archive.head(key).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Before live bytes are deleted: make sure the archive holds them, and note when they
/// went. An error means the bytes must not be deleted yet.
pub async fn preserve(
    live: &dyn ObjectStore,
    archive: &dyn ObjectStore,
    key: &Path,
) -> Result<(), object_store::Error> {
    if !is_version_key(key) {
        return Ok(());
    }
    if !archived(archive, key).await? {
        copy_key(live, archive, key).await?;
    }
    if let Some(v) = key.filename() {
        let mark = Path::from(format!("objects-deleted/{v}"));
        archive.put(&mark, PutPayload::default()).await?;
    }
    Ok(())
}

/// After a write: copy the new version to the archive (run in the background; a backup
/// catches up on any this misses, and a deletion copies first).
pub async fn archive_soon(live: Arc<dyn ObjectStore>, archive: Arc<dyn ObjectStore>, key: Path) {
    if !is_version_key(&key) {
        return;
    }
    let r = async {
        if !archived(archive.as_ref(), &key).await? {
            copy_key(live.as_ref(), archive.as_ref(), &key).await?;
        }
        Ok::<_, object_store::Error>(())
    }
    .await;
    if let Err(e) = r {
        tracing::warn!(key = %key, error = %e, "could not archive object bytes (the next backup retries)");
    }
}

/// What a backup found and copied.
#[derive(Debug, Default, Clone, Copy)]
pub struct Caught {
    pub objects: u64,
    pub bytes: u64,
    pub copied: u64,
}

/// Copy every live version the archive lacks.
pub async fn catch_up(
    live: &dyn ObjectStore,
    archive: &Target,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Caught, String> {
    let have: HashSet<Path> = list(archive.store.as_ref(), "objects")
        .await
        .map_err(|e| format!("{}: {e}", archive.describe))?
        .into_iter()
        .map(|m| m.location)
        .collect();
    let live_keys = list(live, "objects")
        .await
        .map_err(|e| format!("object store: {e}"))?;
    let mut c = Caught::default();
    let missing: Vec<_> = live_keys
        .iter()
        .filter(|m| !have.contains(&m.location))
        .collect();
    for m in &live_keys {
        c.objects += 1;
        c.bytes += m.size as u64;
    }
    for (i, m) in missing.iter().enumerate() {
        if copy_key(live, archive.store.as_ref(), &m.location)
            .await
            .map_err(|e| format!("copying {}: {e}", m.location))?
            .is_some()
        {
            c.copied += 1;
        }
        if (i + 1) % 100 == 0 || i + 1 == missing.len() {
            progress(&format!("  objects: {}/{} copied", i + 1, missing.len()));
        }
    }
    Ok(c)
}

/// Copy the archived bytes of `versions` into `dest` (skipping those already there).
/// Returns (copied, bytes, versions missing from the archive).
pub async fn restore(
    archive: &Target,
    dest: &dyn ObjectStore,
    versions: &[String],
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(u64, u64, Vec<String>), String> {
    let (mut copied, mut bytes, mut missing) = (0, 0, vec![]);
    for (i, v) in versions.iter().enumerate() {
        let key = crate::storage::store::Store::object_key(v);
        if archived(dest, &key).await.unwrap_or(false) {
            continue;
        }
        match copy_key(archive.store.as_ref(), dest, &key)
            .await
            .map_err(|e| format!("copying {key}: {e}"))?
        {
            Some(n) => {
                copied += 1;
                bytes += n;
            }
            None => missing.push(v.clone()),
        }
        if (i + 1) % 100 == 0 || i + 1 == versions.len() {
            progress(&format!("  objects: {}/{}", i + 1, versions.len()));
        }
    }
    Ok((copied, bytes, missing))
}

/// Drop archived versions deleted before `before` (the start of the oldest kept backup).
pub async fn prune(archive: &Target, before: DateTime<Utc>) -> Result<usize, String> {
    let marks = list(archive.store.as_ref(), "objects-deleted")
        .await
        .map_err(|e| format!("{}: {e}", archive.describe))?;
    let mut n = 0;
    for m in marks.into_iter().filter(|m| m.last_modified < before) {
        let Some(v) = m.location.filename() else {
            continue;
        };
        let key = Path::from(format!("objects/{v}"));
        for k in [&key, &m.location] {
            match archive.store.delete(k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(format!("{}: {e}", archive.describe)),
            }
        }
        n += 1;
    }
    Ok(n)
}
