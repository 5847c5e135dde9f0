//! MemoBuild's cache: action records that map a vertex's MemoBuild key to its output.
//!
//! A record names the output's layer chain; the layer blobs themselves live in the
//! content-addressed [`BlobStore`](crate::blobs::BlobStore). The tiers share one async trait
//! and compose as decorators ([`tier`]): L1 is this process' memory ([`tier::MemoryTier`]), L2
//! the local disk ([`ActionCache`]: `<state>/cache/ac/<2 hex>/<key>.json`, written to a
//! temporary file, fsynced and renamed, so a crash never leaves a torn record under a key), L3
//! a remote server ([`remote`]). A record whose blobs are gone, or that does not parse, or whose
//! key does not match its name, is a miss, never an error: the vertex just runs again and the
//! record is rewritten.

pub mod explain;
pub mod history;
pub mod key;
pub mod remote;
pub mod tier;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use tier::{Tier, TierCtx, TierError};

use crate::blobs::BlobStore;
use crate::layer::LayerBlob;

/// What a vertex produced, under its MemoBuild key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The MemoBuild key (BLAKE3 hex).
    pub key: String,
    /// Output 0's layer chain, bottom first.
    pub layers: Vec<LayerBlob>,
    /// The layer chains of outputs 1, 2, … of a vertex with several outputs (an exec with
    /// writable output mounts, a file op with several output actions). Absent from records of
    /// single-output vertices, so those read as they always did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_outputs: Vec<Vec<LayerBlob>>,
    /// The progress name of the vertex that produced it.
    pub name: String,
    /// How long the vertex took when it ran.
    pub duration_ms: u64,
    /// Every component that went into the key, by name (`op`, `input 0`, `file src/a.rs`, …),
    /// so that a later miss can be explained.
    pub components: BTreeMap<String, String>,
}

impl ActionRecord {
    /// How many outputs the record holds.
    pub fn output_count(&self) -> usize {
        1 + self.extra_outputs.len()
    }

    /// Every output's layer chain, output 0 first.
    pub fn outputs(&self) -> impl Iterator<Item = &[LayerBlob]> {
        std::iter::once(self.layers.as_slice()).chain(self.extra_outputs.iter().map(Vec::as_slice))
    }

    /// Every layer blob the record names, over all outputs, each once (first occurrence order).
    pub fn blobs(&self) -> Vec<&LayerBlob> {
        let mut seen = std::collections::HashSet::new();
        self.outputs()
            .flatten()
            .filter(|l| seen.insert(l.digest.as_str()))
            .collect()
    }

    /// Whether every blob the record names is in `blobs` and matches its digest.
    fn verified(&self, blobs: &BlobStore) -> bool {
        self.blobs()
            .iter()
            .all(|l| blobs.verify(&l.digest, Some(l.size)))
    }
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

/// L2: action records on the local disk, one JSON file per key, sharded by its first byte.
#[derive(Debug, Clone)]
pub struct ActionCache {
    dir: PathBuf,
}

impl ActionCache {
    /// Opens (creating) the cache under `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| CacheError {
            path: dir.clone(),
            source,
        })?;
        Ok(ActionCache { dir })
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        if key.len() < 3 || !key.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.join(&key[..2]).join(format!("{key}.json")))
    }

    /// Looks `key` up. Only records whose every layer blob (of every output) is in `blobs` and
    /// matches its digest count as hits.
    pub fn get(&self, key: &str, blobs: &BlobStore) -> Option<ActionRecord> {
        let path = self.path(key)?;
        let bytes = fs::read(&path).ok()?;
        let record: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cache record: {e}");
                return None;
            }
        };
        if record.key != key || !record.verified(blobs) {
            return None;
        }
        // Mark the record used, for the least-recently-used GC (relatime mounts would not).
        let _ = filetime::set_file_atime(&path, filetime::FileTime::now());
        Some(record)
    }

    /// Reads a record without checking its blobs (for explanations, not for reuse).
    pub fn peek(&self, key: &str) -> Option<ActionRecord> {
        let bytes = fs::read(self.path(key)?).ok()?;
        serde_json::from_slice::<ActionRecord>(&bytes)
            .ok()
            .filter(|r| r.key == key)
    }

    /// Stores a record on disk (temp file, fsync, rename: never a torn record under a key).
    pub fn put(&self, record: &ActionRecord) -> Result<(), CacheError> {
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
            .prefix(&crate::state::stale::temp_prefix(".tmp-"))
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

impl ActionCache {
    fn tier_error(&self, message: String) -> TierError {
        TierError {
            tier: self.describe(),
            message,
        }
    }
}

impl Tier for ActionCache {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    // File reads, fsyncs and first-time blob hashing run on the blocking pool, not on the
    // runtime's threads.
    fn get<'a>(
        &'a self,
        key: &'a str,
        ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<Option<ActionRecord>, TierError>> {
        let (cache, key, blobs) = (self.clone(), key.to_string(), ctx.blobs.clone());
        async move {
            tokio::task::spawn_blocking(move || ActionCache::get(&cache, &key, &blobs))
                .await
                .map_err(|e| self.tier_error(e.to_string()))
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        record: &'a ActionRecord,
        _ctx: &'a TierCtx,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        let (cache, record) = (self.clone(), record.clone());
        async move {
            tokio::task::spawn_blocking(move || ActionCache::put(&cache, &record))
                .await
                .map_err(|e| self.tier_error(e.to_string()))?
                .map_err(|e| self.tier_error(e.to_string()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(blob: &str, size: u64) -> LayerBlob {
        LayerBlob {
            digest: blob.into(),
            diff_id: blob.into(),
            size,
            media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
        }
    }

    fn record(key: &str, blob: &str) -> ActionRecord {
        ActionRecord {
            key: key.into(),
            layers: vec![layer(blob, 5)],
            extra_outputs: Vec::new(),
            name: "[1/1] RUN x".into(),
            duration_ms: 3,
            components: BTreeMap::from([("op".into(), "abc".into())]),
        }
    }

    #[test]
    fn put_get_from_disk() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path().join("blobs")).unwrap();
        let blob = blobs.put_bytes(b"layer").unwrap();
        let key = "ab".repeat(32);
        let c = ActionCache::open(d.path().join("ac")).unwrap();
        assert!(c.get(&key, &blobs).is_none());
        c.put(&record(&key, &blob)).unwrap();
        assert_eq!(c.get(&key, &blobs).unwrap().layers[0].digest, blob);
        // A fresh process reads it too.
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

    // Verifies: a record with several outputs keeps every output's chain across the disk round
    // trip, and is a hit only while the blobs of *every* output verify (a missing blob of output
    // 1 makes the whole record a miss).
    #[test]
    fn several_outputs_round_trip_and_all_blobs_are_verified() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path().join("blobs")).unwrap();
        let b0 = blobs.put_bytes(b"root layer").unwrap();
        let b1 = blobs.put_bytes(b"out-1").unwrap();
        let key = "12".repeat(32);
        let mut r = record(&key, &b0);
        r.layers[0].size = 10;
        r.extra_outputs = vec![vec![layer(&b1, 5)], Vec::new()];
        assert_eq!(r.output_count(), 3);
        assert_eq!(r.blobs().len(), 2);
        let c = ActionCache::open(d.path().join("ac")).unwrap();
        c.put(&r).unwrap();
        let c2 = ActionCache::open(d.path().join("ac")).unwrap();
        let got = c2.get(&key, &blobs).unwrap();
        assert_eq!(got, r);
        let chains: Vec<Vec<LayerBlob>> = got.outputs().map(<[_]>::to_vec).collect();
        assert_eq!(chains, [vec![layer(&b0, 10)], vec![layer(&b1, 5)], vec![]]);

        // Output 1's blob disappears: a miss, for this reader and a fresh one.
        let hex = b1.strip_prefix("sha256:").unwrap();
        fs::remove_file(d.path().join("blobs/sha256").join(hex)).unwrap();
        let fresh = ActionCache::open(d.path().join("ac")).unwrap();
        assert!(fresh.get(&key, &blobs).is_none());
        assert!(c2.get(&key, &blobs).is_none());
    }

    // Verifies: a record written before records had `extra_outputs` (no such field) still loads,
    // as a single-output record, and a single-output record is written without the field.
    #[test]
    fn old_format_records_load_as_single_output() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path().join("blobs")).unwrap();
        let blob = blobs.put_bytes(b"old layer").unwrap();
        let key = "34".repeat(32);
        let old = serde_json::json!({
            "key": key,
            "layers": [{
                "digest": blob,
                "diff_id": blob,
                "size": 9,
                "media_type": crate::layer::MEDIA_TYPE_LAYER_GZIP,
            }],
            "name": "[2/2] RUN old",
            "duration_ms": 12,
            "components": {"op": "abc"},
        });
        let c = ActionCache::open(d.path().join("ac")).unwrap();
        let p = c.path(&key).unwrap();
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, serde_json::to_vec(&old).unwrap()).unwrap();
        let got = c.get(&key, &blobs).unwrap();
        assert_eq!(got.output_count(), 1);
        assert!(got.extra_outputs.is_empty());
        assert_eq!(got.layers[0].digest, blob);
        assert_eq!(got.name, "[2/2] RUN old");

        let written = serde_json::to_value(&got).unwrap();
        assert!(written.get("extra_outputs").is_none(), "{written}");
    }
}
