//! The in-memory LRU index of the store: every object's size and last use, in use order.
//!
//! Rebuilt from the files' access times when the server starts; updated on every GET, HEAD and
//! PUT. It decides what garbage collection evicts; the files themselves are removed by
//! [`crate::server::gc`]. Uses a logical clock, not wall time, so two uses within the same
//! second are still ordered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::server::store::ObjectId;

/// After a collection the store holds at most this share of `--max-size` (in percent), so that
/// the next few uploads do not trigger another one straight away.
const LOW_WATER_PERCENT: u64 = 90;

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    tick: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<ObjectId, Entry>,
    /// Use order: tick → object. The smallest tick is the least recently used.
    order: BTreeMap<u64, ObjectId>,
    total: u64,
    clock: u64,
}

/// Sizes and use order of the stored objects, bounded by `max_size` bytes.
#[derive(Debug)]
pub struct LruIndex {
    inner: Mutex<Inner>,
    max_size: Option<u64>,
}

impl LruIndex {
    /// An empty index; `max_size` `None` means unbounded.
    pub fn new(max_size: Option<u64>) -> LruIndex {
        LruIndex {
            inner: Mutex::default(),
            max_size,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The index holds no invariant a panicking holder could half-break beyond a wrong
        // size, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `id` (of `size` bytes) was stored or read just now.
    pub fn touch(&self, id: &ObjectId, size: u64) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.clock += 1;
        let tick = inner.clock;
        if let Some(old) = inner.entries.insert(id.clone(), Entry { size, tick }) {
            inner.order.remove(&old.tick);
            inner.total -= old.size;
        }
        inner.order.insert(tick, id.clone());
        inner.total += size;
    }

    /// Drops `id` from the index (it is no longer on disk).
    pub fn forget(&self, id: &ObjectId) {
        let mut g = self.lock();
        if let Some(old) = g.entries.remove(id) {
            g.order.remove(&old.tick);
            g.total -= old.size;
        }
    }

    /// Total bytes of the indexed objects.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// How many objects are indexed.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store is over its bound.
    pub fn over_limit(&self) -> bool {
        self.max_size.is_some_and(|max| self.total() > max)
    }

    /// The bound, if any.
    pub fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    /// When over the bound: takes the least recently used objects out of the index until the
    /// rest fits in 90 % of it, and returns them (with their sizes) for deletion.
    pub fn take_victims(&self) -> Vec<(ObjectId, u64)> {
        let Some(max) = self.max_size else {
            return Vec::new();
        };
        let mut g = self.lock();
        if g.total <= max {
            return Vec::new();
        }
        let target = max / 100 * LOW_WATER_PERCENT + max % 100 * LOW_WATER_PERCENT / 100;
        let mut victims = Vec::new();
        while g.total > target {
            let Some((_, id)) = g.order.pop_first() else {
                break;
            };
            if let Some(e) = g.entries.remove(&id) {
                g.total -= e.size;
                victims.push((id, e.size));
            }
        }
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Kind;

    fn id(n: u8) -> ObjectId {
        ObjectId {
            kind: Kind::Cas,
            hash: [n; 32],
        }
    }

    #[test]
    fn evicts_least_recently_used_down_to_ninety_percent() {
        let lru = LruIndex::new(Some(1000));
        for n in 1..=3 {
            lru.touch(&id(n), 300);
        }
        assert!(!lru.over_limit());
        lru.touch(&id(1), 300); // read: now the most recent
        lru.touch(&id(4), 300);
        assert_eq!(lru.total(), 1200);
        assert!(lru.over_limit());
        let victims: Vec<_> = lru.take_victims().into_iter().map(|(i, _)| i).collect();
        // 1200 → 900 needs one eviction: object 2, the oldest unread one.
        assert_eq!(victims, vec![id(2)]);
        assert_eq!(lru.total(), 900);
        assert_eq!(lru.len(), 3);
        assert!(lru.take_victims().is_empty());
    }

    #[test]
    fn replacing_and_forgetting_keep_the_total_right() {
        let lru = LruIndex::new(None);
        lru.touch(&id(1), 10);
        lru.touch(&id(1), 15);
        assert_eq!(lru.total(), 15);
        lru.forget(&id(1));
        lru.forget(&id(1));
        assert_eq!((lru.total(), lru.len()), (0, 0));
        assert!(lru.take_victims().is_empty());
    }
}
