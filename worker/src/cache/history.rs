//! What the last build of a target keyed each vertex by, so the next build can say why a vertex
//! ran again (`memobuild build --explain`, `memobuild why`).
//!
//! One small JSON file per build identity (context, Dockerfile, target: the caller decides)
//! under `<state>/history/`. Vertices are matched across builds by their position, the
//! `[stage N/M]` prefix of their progress name, so an edited instruction still finds its
//! predecessor.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{ActionCache, explain::explain};

/// One vertex of a finished solve, as the cache saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexReport {
    /// LLB digest.
    pub digest: String,
    /// Progress name.
    pub name: String,
    /// MemoBuild key.
    pub key: String,
    /// Whether the result came from the cache.
    pub cached: bool,
    /// Milliseconds from the key's computation to the result (restore or execution).
    #[serde(default)]
    pub duration_ms: u64,
}

/// Why one vertex ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Progress name of the vertex.
    pub name: String,
    /// Reasons, most specific first.
    pub reasons: Vec<String>,
}

/// The saved state of the last build of one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Position → key.
    pub keys: BTreeMap<String, String>,
    /// Why each vertex of that build ran.
    pub explanations: Vec<Explanation>,
}

/// The file holding the history of `build_id` (any string identifying the build target).
pub fn path_for(state_dir: &Path, build_id: &str) -> PathBuf {
    state_dir.join("history").join(format!(
        "{}.json",
        blake3::hash(build_id.as_bytes()).to_hex()
    ))
}

/// Where a vertex sits in its Dockerfile: the `[…]` prefix of its name, else the whole name.
pub fn position(name: &str) -> String {
    match (name.starts_with('['), name.find(']')) {
        (true, Some(i)) => name[..=i].to_string(),
        _ => name.to_string(),
    }
}

impl History {
    /// Loads the history at `path` (empty when missing or unreadable).
    pub fn load(path: &Path) -> History {
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Explains every vertex of `reports` that ran, against this (previous) history, and
    /// returns the new history.
    pub fn next(&self, reports: &[VertexReport], cache: &ActionCache, no_cache: bool) -> History {
        let mut out = History::default();
        for r in reports {
            let pos = position(&r.name);
            out.keys.insert(pos.clone(), r.key.clone());
            if r.cached {
                continue;
            }
            let components = cache.peek(&r.key).map(|rec| rec.components);
            let reasons = self.reasons(&r.name, &r.key, components.as_ref(), cache, no_cache);
            out.explanations.push(Explanation {
                name: r.name.clone(),
                reasons,
            });
        }
        out
    }

    /// Why the vertex `name` runs with `key` (made of `components`, when known), against this
    /// (previous) history: most specific reason first.
    pub fn reasons(
        &self,
        name: &str,
        key: &str,
        components: Option<&BTreeMap<String, String>>,
        cache: &ActionCache,
        no_cache: bool,
    ) -> Vec<String> {
        match self.keys.get(&position(name)) {
            _ if no_cache => vec!["--no-cache was given".to_string()],
            None => vec!["no earlier build of this step".to_string()],
            Some(prev) if prev == key => {
                vec!["its cached result was missing or damaged".to_string()]
            }
            Some(prev) => match (cache.peek(prev), components) {
                (Some(old), Some(new)) => {
                    let why = explain(&old.components, new);
                    if why.is_empty() {
                        vec!["its key changed".to_string()]
                    } else {
                        why
                    }
                }
                _ => vec!["its previous result is no longer in the cache".to_string()],
            },
        }
    }

    /// Writes the history to `path` (temp file + rename), unless the file already holds it (a
    /// no-op rebuild writes nothing).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        if fs::read(path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&bytes)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(position("[stage-0 3/5] RUN make"), "[stage-0 3/5]");
        assert_eq!(position("[internal] load build context"), "[internal]");
        assert_eq!(position("copy"), "copy");
    }

    #[test]
    fn saving_the_same_history_again_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.json");
        let mut h = History::default();
        h.keys.insert("[1/2]".into(), "k1".into());
        h.save(&path).expect("save");
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).expect("stat"));
        let first = inode(&path);
        h.save(&path).expect("save again");
        assert_eq!(inode(&path), first, "an unchanged history is not rewritten");
        h.keys.insert("[2/2]".into(), "k2".into());
        h.save(&path).expect("save a change");
        assert_ne!(inode(&path), first);
        assert_eq!(History::load(&path).keys.len(), 2);
    }
}
