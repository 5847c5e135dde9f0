//! Recently resolved image references, kept briefly so that rebuilds do not ask the registry
//! again what a tag names.
//!
//! A rebuild lowers its Dockerfile again, and lowering resolves every `FROM` (the tag to a
//! digest, plus the image's config). Against a remote registry that round trip costs more than
//! the rest of a no-op rebuild. The cache holds each answer for [`FRESH_FOR`] in memory (shared
//! by every build of an engine, so the daemon's clients share it) and on disk under the state
//! directory (so consecutive `memobuild build` processes share it). [`ResolveMode::Pull`]
//! (`--pull`, BuildKit's `image-resolve-mode=pull`) always asks the registry and refreshes the
//! entry; [`ResolveMode::Local`] (`image-resolve-mode=local`) takes an entry of any age. A
//! reference pinned by digest names the same content forever, so its entry does not expire.
//!
//! An entry on disk is checked before use (its manifest and config against their digests); one
//! that does not verify, or does not parse, is ignored and replaced.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Descriptor, Platform, ResolvedImage};
use crate::blobs::sha256_digest;

/// How long a resolved tag is reused without asking the registry.
pub const FRESH_FOR: Duration = Duration::from_secs(60);

/// Entries kept in memory; the oldest go first.
const MEMORY_ENTRIES: usize = 256;

/// How a build wants its image references resolved (BuildKit's `image-resolve-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResolveMode {
    /// Reuse an answer younger than [`FRESH_FOR`], else ask the registry.
    #[default]
    Default,
    /// Always ask the registry (`--pull`).
    Pull,
    /// Reuse an answer of any age; ask the registry only without one.
    Local,
}

impl ResolveMode {
    /// BuildKit's names (`default`, `pull`, `local`); anything else is `default`, as BuildKit
    /// treats an empty mode.
    pub fn from_name(name: &str) -> Self {
        match name {
            "pull" => ResolveMode::Pull,
            "local" => ResolveMode::Local,
            _ => ResolveMode::Default,
        }
    }
}

/// The cache. One per engine; every build's [`super::Registry`] shares it.
#[derive(Debug)]
pub struct ResolvedCache {
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, (SystemTime, ResolvedImage)>>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    resolved_at_ms: u64,
    reference: String,
    manifest_digest: String,
    manifest_media_type: String,
    manifest: String,
    config_descriptor: Descriptor,
    layers: Vec<Descriptor>,
    config: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index_digest: Option<String>,
}

impl ResolvedCache {
    /// A cache in memory only.
    pub fn in_memory() -> Self {
        ResolvedCache {
            dir: None,
            memory: Mutex::default(),
        }
    }

    /// A cache in memory and in `dir` (created when first written).
    pub fn on_disk(dir: PathBuf) -> Self {
        ResolvedCache {
            dir: Some(dir),
            memory: Mutex::default(),
        }
    }

    /// The key of `reference` (as written) for `platform`.
    pub fn key(reference: &str, platform: &Platform) -> String {
        format!("{reference} {platform}")
    }

    /// The answer for `key` if `mode` allows reusing it.
    pub fn get(&self, key: &str, pinned: bool, mode: ResolveMode) -> Option<ResolvedImage> {
        let usable = |at: SystemTime| match mode {
            ResolveMode::Pull => false,
            ResolveMode::Local => true,
            ResolveMode::Default => {
                pinned
                    || SystemTime::now()
                        .duration_since(at)
                        .is_ok_and(|age| age < FRESH_FOR)
            }
        };
        if mode == ResolveMode::Pull {
            return None;
        }
        if let Some((at, image)) = self.lock().get(key)
            && usable(*at)
        {
            return Some(image.clone());
        }
        let (at, image) = self.load(key)?;
        if !usable(at) {
            return None;
        }
        self.remember(key, at, image.clone());
        Some(image)
    }

    /// Records `image` as the answer for `key`, now.
    pub fn put(&self, key: &str, image: &ResolvedImage) {
        let now = SystemTime::now();
        self.remember(key, now, image.clone());
        if let Err(e) = self.store(key, now, image) {
            tracing::debug!("cannot keep the resolution of `{}`: {e}", image.reference);
        }
    }

    /// Drops every answer for `reference` (normalized, as [`ResolvedImage::reference`] holds
    /// it), whatever the platform or spelling it was asked under: a push just moved the tag,
    /// and a later build must not use what it named before. Blocks (reads the entries on disk).
    pub fn forget(&self, reference: &str) {
        self.lock()
            .retain(|_, (_, image)| image.reference != reference);
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        /// The one field this needs of an [`Entry`].
        #[derive(Deserialize)]
        struct Named {
            reference: String,
        }
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let named = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Named>(&b).ok());
            if named.is_some_and(|n| n.reference == reference)
                && let Err(err) = std::fs::remove_file(&path)
            {
                tracing::debug!("cannot drop the resolution of `{reference}`: {err}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SystemTime, ResolvedImage)>> {
        match self.memory.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn remember(&self, key: &str, at: SystemTime, image: ResolvedImage) {
        let mut memory = self.lock();
        if memory.len() >= MEMORY_ENTRIES
            && !memory.contains_key(key)
            && let Some(oldest) = memory
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            memory.remove(&oldest);
        }
        memory.insert(key.to_owned(), (at, image));
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        let name = blake3::hash(key.as_bytes()).to_hex();
        Some(
            self.dir
                .as_ref()?
                .join(format!("{}.json", &name.as_str()[..32])),
        )
    }

    fn load(&self, key: &str) -> Option<(SystemTime, ResolvedImage)> {
        let bytes = std::fs::read(self.path(key)?).ok()?;
        let e: Entry = serde_json::from_slice(&bytes).ok()?;
        // A file of another key (a hash collision) or one that does not verify is no answer.
        if e.key != key
            || sha256_digest(e.manifest.as_bytes()) != e.manifest_digest
            || sha256_digest(e.config.as_bytes()) != e.config_descriptor.digest
        {
            return None;
        }
        let at = UNIX_EPOCH + Duration::from_millis(e.resolved_at_ms);
        Some((
            at,
            ResolvedImage {
                reference: e.reference,
                manifest_digest: e.manifest_digest,
                manifest_media_type: e.manifest_media_type,
                manifest: e.manifest.into_bytes(),
                config_descriptor: e.config_descriptor,
                layers: e.layers,
                config: e.config.into_bytes(),
                index_digest: e.index_digest,
            },
        ))
    }

    fn store(&self, key: &str, at: SystemTime, image: &ResolvedImage) -> std::io::Result<()> {
        let Some(path) = self.path(key) else {
            return Ok(());
        };
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| std::io::Error::other("manifest or config is not UTF-8 JSON"))
        };
        let entry = Entry {
            key: key.to_owned(),
            resolved_at_ms: at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            reference: image.reference.clone(),
            manifest_digest: image.manifest_digest.clone(),
            manifest_media_type: image.manifest_media_type.clone(),
            manifest: text(&image.manifest)?,
            config_descriptor: image.config_descriptor.clone(),
            layers: image.layers.clone(),
            config: text(&image.config)?,
            index_digest: image.index_digest.clone(),
        };
        let json = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("no parent directory"))?;
        std::fs::create_dir_all(dir)?;
        // A torn write is rejected by `load` (it does not parse or verify), so no fsync: the
        // worst a crash costs is one more registry round trip.
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(tmp.path(), json)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tag: &str) -> ResolvedImage {
        let manifest = br#"{"schemaVersion":2}"#.to_vec();
        let config = format!(r#"{{"config":{{"Env":["T={tag}"]}}}}"#).into_bytes();
        ResolvedImage {
            reference: format!("docker.io/library/busybox:{tag}"),
            manifest_digest: sha256_digest(&manifest),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest,
            config_descriptor: Descriptor {
                media_type: "application/vnd.oci.image.config.v1+json".into(),
                digest: sha256_digest(&config),
                size: config.len() as u64,
                annotations: Default::default(),
                platform: None,
            },
            layers: vec![],
            config,
            index_digest: None,
        }
    }

    #[test]
    fn forget_drops_a_reference_under_every_key_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResolvedCache::on_disk(dir.path().to_owned());
        cache.put("busybox:1 linux/amd64", &image("1"));
        cache.put("docker.io/library/busybox:1 linux/amd64", &image("1"));
        cache.put("busybox:2 linux/amd64", &image("2"));
        cache.forget("docker.io/library/busybox:1");
        for c in [&cache, &ResolvedCache::on_disk(dir.path().to_owned())] {
            assert!(
                c.get("busybox:1 linux/amd64", false, ResolveMode::Local)
                    .is_none()
            );
            let spelled = "docker.io/library/busybox:1 linux/amd64";
            assert!(c.get(spelled, false, ResolveMode::Local).is_none());
            assert!(
                c.get("busybox:2 linux/amd64", false, ResolveMode::Local)
                    .is_some()
            );
        }
    }

    #[test]
    fn answers_are_shared_through_disk_and_pull_skips_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = ResolvedCache::on_disk(dir.path().to_owned());
        first.put("k", &image("1"));
        // Another process: nothing in memory, the file answers.
        let second = ResolvedCache::on_disk(dir.path().to_owned());
        let got = second.get("k", false, ResolveMode::Default).unwrap();
        assert_eq!(got.config, image("1").config);
        assert!(second.get("k", false, ResolveMode::Pull).is_none());
        assert!(second.get("other", false, ResolveMode::Local).is_none());
    }

    #[test]
    fn stale_answers_serve_only_local_mode_or_pinned_references() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResolvedCache::on_disk(dir.path().to_owned());
        let old = SystemTime::now() - FRESH_FOR - Duration::from_secs(1);
        cache.store("k", old, &image("1")).unwrap();
        assert!(cache.get("k", false, ResolveMode::Default).is_none());
        assert!(cache.get("k", true, ResolveMode::Default).is_some());
        assert!(cache.get("k", false, ResolveMode::Local).is_some());
    }

    #[test]
    fn a_damaged_entry_is_no_answer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResolvedCache::on_disk(dir.path().to_owned());
        cache.put("k", &image("1"));
        let path = cache.path("k").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("T=1", "T=2")).unwrap();
        let fresh = ResolvedCache::on_disk(dir.path().to_owned());
        assert!(fresh.get("k", false, ResolveMode::Default).is_none());
        std::fs::write(&path, "{not json").unwrap();
        assert!(fresh.get("k", false, ResolveMode::Default).is_none());
    }
}
