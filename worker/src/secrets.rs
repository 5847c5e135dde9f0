//! Secret values a build hands to `RUN --mount=type=secret` and secret env vars.
//!
//! The worker only ever sees a secret's value here: ops carry secret ids, so values never enter
//! an op digest, a MemoBuild key, a layer or a progress event. `Debug` shows ids only.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Secret values by id. Cheap to clone.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Arc<Vec<u8>>>,
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) secret `id`.
    pub fn insert(&mut self, id: impl Into<String>, value: Vec<u8>) {
        self.values.insert(id.into(), Arc::new(value));
    }

    /// The value of secret `id`.
    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.values.get(id).map(|v| v.as_slice())
    }

    /// The value of secret `id`, shared.
    pub fn get_shared(&self, id: &str) -> Option<Arc<Vec<u8>>> {
        self.values.get(id).cloned()
    }

    /// The ids of all secrets, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.ids()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_ids_not_values() {
        let mut s = Secrets::new();
        s.insert("token", b"hunter2".to_vec());
        assert_eq!(s.get("token"), Some(&b"hunter2"[..]));
        let shown = format!("{s:?}");
        assert!(shown.contains("token"));
        assert!(!shown.contains("hunter2"));
    }
}
