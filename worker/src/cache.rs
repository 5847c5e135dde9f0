//! MemoBuild's cache: action records that map a vertex's MemoBuild key to its output.
//!
//! A record names the output's layer chain; the layer blobs themselves live in the
//! content-addressed [`BlobStore`](crate::blobs::BlobStore). The tiers share one async trait
//! and compose as decorators ([`tier`]): L1 is this process' memory ([`tier::MemoryTier`]), L2
//! the local disk ([`ActionCache`]: `<state>/cache/ac/<2 hex>/<key>.json`, written to a
//! temporary file, fsynced and renamed, so a crash never leaves a torn record under a key), L3
//! a remote server ([`remote`]). A record whose blobs are gone, or that does not parse, or whose
//! key does not match its name, is a miss, never an error: the vertex just runs again and the
//! record is rewritten. A record that contradicts its blobs (a layer's diff ID or size is not the
//! blob's: an edited record, or a bad write to a shared server) is a miss with a warning, and is
//! deleted from the disk tier; otherwise it would put diff IDs that do not match the layers
//! into every image built from it ([`crate::layer::check`]).

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
use crate::layer::check::{LayerFault, check_layers};

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

    /// Whether the record can be served: every blob it names is in `blobs` and matches its
    /// digest, and every layer's size and diff ID are its blob's. Blocking (a first check of a
    /// blob decompresses it; later ones are a `stat`).
    pub fn check(&self, blobs: &BlobStore) -> Result<(), LayerFault> {
        check_layers(blobs, self.outputs().flatten())
    }

    /// The warning for a record `tier` refused because it contradicts its blobs.
    pub(crate) fn refused(&self, tier: &str, fault: &LayerFault) -> String {
        format!(
            "warning: cache record of `{}` in {tier} does not match its blobs ({fault}); dropped, the step runs again",
            self.name
        )
    }
}

/// What a tier found under a key.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A record that can be served.
    Hit(ActionRecord),
    /// Nothing usable: no record, or one whose blobs are gone.
    Miss,
    /// A record that contradicts its blobs (deleted from the disk tier).
    Refused(Box<ActionRecord>, LayerFault),
}

impl Lookup {
    /// Judges `record` against `blobs`. Blocking.
    pub(crate) fn of(record: ActionRecord, blobs: &BlobStore) -> Lookup {
        match record.check(blobs) {
            Ok(()) => Lookup::Hit(record),
            Err(LayerFault::Missing { .. }) => Lookup::Miss,
            Err(fault) => Lookup::Refused(Box::new(record), fault),
        }
    }

    /// The record to serve; a refused one is reported through `warn`, naming `tier`.
    pub(crate) fn into_hit(self, tier: &str, warn: &tier::Warn) -> Option<ActionRecord> {
        match self {
            Lookup::Hit(r) => Some(r),
            Lookup::Miss => None,
            Lookup::Refused(r, fault) => {
                warn(r.refused(tier, &fault));
                None
            }
        }
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

    /// Looks `key` up. Only records whose every layer blob (of every output) is in `blobs`,
    /// matches its digest and has the size and diff ID the record gives it count as hits.
    pub fn get(&self, key: &str, blobs: &BlobStore) -> Option<ActionRecord> {
        match self.lookup(key, blobs) {
            Lookup::Hit(r) => Some(r),
            _ => None,
        }
    }

    /// [`ActionCache::get`], telling a record that contradicts its blobs (deleted: it would
    /// be refused again on every build) from a plain miss.
    pub(crate) fn lookup(&self, key: &str, blobs: &BlobStore) -> Lookup {
        let Some(path) = self.path(key) else {
            return Lookup::Miss;
        };
        let Ok(bytes) = fs::read(&path) else {
            return Lookup::Miss;
        };
        let record: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cache record: {e}");
                return Lookup::Miss;
            }
        };
        if record.key != key {
            return Lookup::Miss;
        }
        let found = Lookup::of(record, blobs);
        match &found {
            // Mark the record used, for the least-recently-used GC (relatime mounts would not).
            Lookup::Hit(_) => {
                let _ = filetime::set_file_atime(&path, filetime::FileTime::now());
            }
            Lookup::Refused(..) => {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), "cannot remove a refused cache record: {e}");
                }
            }
            Lookup::Miss => {}
        }
        found
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
            let found = tokio::task::spawn_blocking(move || cache.lookup(&key, &blobs))
                .await
                .map_err(|e| self.tier_error(e.to_string()))?;
            Ok(found.into_hit(&self.describe(), &ctx.warn))
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
    use std::sync::Arc;

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

    /// A real gzip layer (one file) in `blobs`.
    fn gzip_layer(blobs: &BlobStore, content: &str) -> LayerBlob {
        let upper = tempfile::tempdir().unwrap();
        fs::write(upper.path().join("f"), content).unwrap();
        crate::layer::write_layer(upper.path(), blobs, crate::layer::LayerOptions::default())
            .unwrap()
    }

    /// `hash` with its last hex digit changed.
    fn flip_last_digit(hash: &str) -> String {
        let (head, last) = hash.split_at(hash.len() - 1);
        format!("{head}{}", if last == "0" { "1" } else { "0" })
    }

    // Verifies (issue 12, item 1): a record on disk whose layer names another diff ID than its
    // blob's (one hex digit edited, the JSON still valid) is not served: the disk tier answers a
    // miss, warns once naming the step, and deletes the record; the blob, which is fine, stays.
    // Checked twice: against the diff ID remembered when the layer was written (a stamp read)
    // and, with the stamps gone, by decompressing the blob.
    #[tokio::test]
    async fn a_record_whose_diff_id_is_not_its_blobs_is_refused_with_a_warning() {
        for stamped in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let blobs = BlobStore::open(d.path().join("blobs")).unwrap();
            let good = gzip_layer(&blobs, "hello");
            assert_ne!(good.digest, good.diff_id);
            let key = "5a".repeat(32);
            let mut r = record(&key, &good.digest);
            r.layers = vec![good.clone()];
            let c = ActionCache::open(d.path().join("ac")).unwrap();
            c.put(&r).unwrap();
            let warnings = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
            let w = warnings.clone();
            let ctx = TierCtx {
                blobs: blobs.clone(),
                warn: Arc::new(move |m| w.lock().unwrap().push(m)),
            };
            assert_eq!(Tier::get(&c, &key, &ctx).await.unwrap(), Some(r.clone()));

            let p = c.path(&key).unwrap();
            let json = fs::read_to_string(&p).unwrap();
            let tampered = json.replace(&good.diff_id, &flip_last_digit(&good.diff_id));
            assert_ne!(json, tampered);
            fs::write(&p, tampered).unwrap();
            if !stamped {
                fs::remove_dir_all(d.path().join("blobs/sha256/.verified")).unwrap();
            }
            assert_eq!(Tier::get(&c, &key, &ctx).await.unwrap(), None);
            let w = warnings.lock().unwrap().clone();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(
                w[0].contains("`[1/1] RUN x`")
                    && w[0].contains(&good.digest)
                    && w[0].contains(&good.diff_id)
                    && w[0].contains("runs again"),
                "{w:?}"
            );
            assert!(!p.exists(), "the refused record is deleted");
            assert!(
                blobs.verify(&good.digest, Some(good.size)),
                "the blob stays"
            );
            // The next lookup is a plain miss: nothing left to warn about.
            assert_eq!(Tier::get(&c, &key, &ctx).await.unwrap(), None);
            assert_eq!(warnings.lock().unwrap().len(), 1);
            // The step's new record is served again.
            c.put(&r).unwrap();
            assert_eq!(Tier::get(&c, &key, &ctx).await.unwrap(), Some(r));
        }
    }

    // Verifies: a record claiming another size for a blob is refused without removing the blob
    // (it matches its digest; the record is what is wrong).
    #[test]
    fn a_record_with_a_wrong_size_is_refused_and_the_blob_kept() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(d.path().join("blobs")).unwrap();
        let good = gzip_layer(&blobs, "sized");
        let key = "6b".repeat(32);
        let mut r = record(&key, &good.digest);
        r.layers = vec![LayerBlob {
            size: good.size + 1,
            ..good.clone()
        }];
        let c = ActionCache::open(d.path().join("ac")).unwrap();
        c.put(&r).unwrap();
        assert!(matches!(
            c.lookup(&key, &blobs),
            Lookup::Refused(_, LayerFault::Mismatch { what: "size", .. })
        ));
        assert!(blobs.verify(&good.digest, Some(good.size)));
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
