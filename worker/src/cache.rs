//! MemoBuild's cache: action records that map a vertex's MemoBuild key to its output.
//!
//! A record names the output's layer chain; the layer blobs themselves live in the
//! content-addressed [`BlobStore`](crate::blobs::BlobStore). Tiers: L1 is this process' memory,
//! L2 the local disk (`<state>/cache/ac/<2 hex>/<key>.json`, written to a temporary file,
//! fsynced and renamed, so a crash never leaves a torn record under a key). A record whose blobs
//! are gone, or that does not parse, or whose key does not match its name, is a miss, never an
//! error: the vertex just runs again and the record is rewritten.

pub mod explain;
pub mod history;
pub mod key;
pub mod remote;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::blobs::BlobStore;
use crate::layer::LayerBlob;

/// What a vertex produced, under its MemoBuild key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The MemoBuild key (BLAKE3 hex).
    pub key: String,
    /// The output filesystem's layer chain, bottom first.
    pub layers: Vec<LayerBlob>,
    /// The progress name of the vertex that produced it.
    pub name: String,
    /// How long the vertex took when it ran.
    pub duration_ms: u64,
    /// Every component that went into the key, by name (`op`, `input 0`, `file src/a.rs`, …),
    /// so that a later miss can be explained.
    pub components: BTreeMap<String, String>,
}

/// Errors of the cache. Lookups never return them (a broken entry is a miss); writes do.
#[derive(Debug, thiserror::Error)]
#[error("cache: {path}: {source}")]
pub struct CacheError {
    /// The file or directory.
    pub path: PathBuf,
    /// The underlying error.
    pub source: io::Error,
}

/// The action cache: L1 memory in front of L2 disk.
#[derive(Debug, Clone)]
pub struct ActionCache {
    dir: PathBuf,
    memory: Arc<Mutex<HashMap<String, ActionRecord>>>,
}

impl ActionCache {
    /// Opens (creating) the cache under `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| CacheError {
            path: dir.clone(),
            source,
        })?;
        Ok(ActionCache {
            dir,
            memory: Arc::default(),
        })
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        if key.len() < 3 || !key.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.join(&key[..2]).join(format!("{key}.json")))
    }

    /// Looks `key` up: memory first, then disk (backfilling memory). Only records whose every
    /// layer blob is in `blobs` and matches its digest count as hits.
    pub fn get(&self, key: &str, blobs: &BlobStore) -> Option<ActionRecord> {
        if let Some(r) = self.memory.lock().ok().and_then(|m| m.get(key).cloned())
            && r.layers
                .iter()
                .all(|l| blobs.verify(&l.digest, Some(l.size)))
        {
            return Some(r);
        }
        let path = self.path(key)?;
        let bytes = fs::read(&path).ok()?;
        let record: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cache record: {e}");
                return None;
            }
        };
        if record.key != key
            || !record
                .layers
                .iter()
                .all(|l| blobs.verify(&l.digest, Some(l.size)))
        {
            return None;
        }
        if let Ok(mut m) = self.memory.lock() {
            m.insert(key.to_string(), record.clone());
        }
        // Mark the record used, for the least-recently-used GC (relatime mounts would not).
        let _ = filetime::set_file_atime(&path, filetime::FileTime::now());
        Some(record)
    }

    /// Reads a record without checking its blobs (for explanations, not for reuse).
    pub fn peek(&self, key: &str) -> Option<ActionRecord> {
        if let Some(r) = self.memory.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Some(r);
        }
        let bytes = fs::read(self.path(key)?).ok()?;
        serde_json::from_slice::<ActionRecord>(&bytes)
            .ok()
            .filter(|r| r.key == key)
    }

    /// Stores a record in memory and on disk.
    pub fn put(&self, record: &ActionRecord) -> Result<(), CacheError> {
        if let Ok(mut m) = self.memory.lock() {
            m.insert(record.key.clone(), record.clone());
        }
        let Some(path) = self.path(&record.key) else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        let err = |source| CacheError {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(err)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(err)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| err(io::Error::other(e)))?;
        tmp.write_all(&bytes).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// The directory holding the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, blob: &str) -> ActionRecord {
        ActionRecord {
            key: key.into(),
            layers: vec![LayerBlob {
                digest: blob.into(),
                diff_id: blob.into(),
                size: 5,
                media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
            }],
            name: "[1/1] RUN x".into(),
            duration_ms: 3,
            components: BTreeMap::from([("op".into(), "abc".into())]),
        }
    }

    #[test]
    fn put_get_from_disk_and_memory() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path().join("blobs")).unwrap();
        let blob = blobs.put_bytes(b"layer").unwrap();
        let key = "ab".repeat(32);
        let c = ActionCache::open(d.path().join("ac")).unwrap();
        assert!(c.get(&key, &blobs).is_none());
        c.put(&record(&key, &blob)).unwrap();
        assert_eq!(c.get(&key, &blobs).unwrap().layers[0].digest, blob);
        // A fresh process (empty memory) reads it from disk.
        let c2 = ActionCache::open(d.path().join("ac")).unwrap();
        assert_eq!(c2.get(&key, &blobs).unwrap().name, "[1/1] RUN x");
    }

    #[test]
    fn broken_or_dangling_records_are_misses() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path().join("blobs")).unwrap();
        let c = ActionCache::open(d.path().join("ac")).unwrap();
        let key = "cd".repeat(32);
        // Its blob is not in the store.
        c.put(&record(&key, &format!("sha256:{}", "0".repeat(64))))
            .unwrap();
        let c2 = ActionCache::open(d.path().join("ac")).unwrap();
        assert!(c2.get(&key, &blobs).is_none());
        // Truncated JSON.
        let p = c2.path(&key).unwrap();
        fs::write(&p, b"{\"key\":").unwrap();
        assert!(c2.get(&key, &blobs).is_none());
        // A record filed under the wrong key.
        let blob = blobs.put_bytes(b"x").unwrap();
        let other = "ef".repeat(32);
        fs::write(&p, serde_json::to_vec(&record(&other, &blob)).unwrap()).unwrap();
        assert!(c2.get(&key, &blobs).is_none());
        // Keys that are not hex never touch the file system.
        assert!(c2.get("../../etc/passwd", &blobs).is_none());
    }
}
