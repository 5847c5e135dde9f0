//! What the local cache holds and least-recently-used pruning of it: `memobuild cache du|prune`,
//! `build --cache-max-size` and the daemon's DiskUsage and Prune.
//!
//! The local cache is layer blobs in `blobs/sha256/<hex>` (with a verification stamp in
//! `blobs/sha256/.verified/<hex>`) and action records in `cache/ac/<2 hex>/<key>.json`, each
//! record listing the blobs of its layers ([`super::StateDir`] names the paths).
//!
//! Pruning treats records and blobs as one LRU list. A blob counts as used whenever a record
//! that names it was, so the oldest records go first and a blob goes only once no kept record
//! names it: pruning never leaves a kept record pointing at a removed blob.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::StateDir;

/// Whether an entry is an action record or a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    // Records sort before blobs used at the same moment: they are removed first.
    /// An action record (key → layers).
    Record,
    /// A layer or config blob.
    Blob,
}

/// A record or blob of the local cache.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Record or blob.
    pub kind: EntryKind,
    /// The key (records) or the digest's hex (blobs).
    pub name: String,
    /// The file, and the blob's verification stamp.
    pub paths: Vec<PathBuf>,
    /// Bytes on disk.
    pub size: u64,
    /// Last modification or access, whichever is later.
    pub last_used: SystemTime,
    /// Hex digests of the blobs a record names.
    pub layers: Vec<String>,
}

/// What to keep when pruning.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrunePolicy {
    /// Remove everything.
    pub all: bool,
    /// Remove least recently used entries until the rest fits.
    pub keep_size: Option<u64>,
    /// Remove entries not used for this long.
    pub keep_duration: Option<Duration>,
    /// Only say what would go.
    pub dry_run: bool,
}

impl PrunePolicy {
    /// Whether the policy says what to keep at all (an empty policy removes nothing).
    pub fn is_empty(&self) -> bool {
        !self.all && self.keep_size.is_none() && self.keep_duration.is_none()
    }
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Pruned {
    /// The entries removed, in the order they went.
    pub removed: Vec<Entry>,
    /// Bytes freed.
    pub freed: u64,
    /// Bytes kept.
    pub kept: u64,
    /// Entries that could not be removed (with why).
    pub failed: Vec<(PathBuf, io::Error)>,
}

/// Files and bytes of one part of the state directory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Number of files.
    pub files: u64,
    /// Their size.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
}

/// The state directory's size by kind (the embedded containerd's root is not counted: its
/// snapshots are containerd's to report).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskUsage {
    /// Layer blobs.
    pub blobs: Tally,
    /// Action records.
    pub records: Tally,
    /// Everything else: stamps, stat caches, history, synced contexts, temporary files.
    pub other: Tally,
}

impl DiskUsage {
    /// All of it.
    pub fn total(&self) -> Tally {
        Tally {
            files: self.blobs.files + self.records.files + self.other.files,
            bytes: self.blobs.bytes + self.records.bytes + self.other.bytes,
        }
    }
}

/// Whether `name` is 64 lowercase hex digits.
fn is_hex64(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn last_used(md: &fs::Metadata) -> SystemTime {
    let m = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let a = md.accessed().unwrap_or(SystemTime::UNIX_EPOCH);
    m.max(a)
}

fn read_dir_if_exists(dir: &Path) -> io::Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read `{}`: {e}", dir.display()),
        )),
    }
}

/// The blobs and records of `state`. Files with other names (temporary files, stray files)
/// are not part of either.
pub fn scan(state: &StateDir) -> io::Result<Vec<Entry>> {
    let mut items = Vec::new();
    let blobs = state.sha256_blobs();
    if let Some(entries) = read_dir_if_exists(&blobs)? {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_hex64(&name) {
                continue;
            }
            let Ok(md) = entry.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            let mut item = Entry {
                kind: EntryKind::Blob,
                paths: vec![entry.path()],
                size: md.len(),
                last_used: last_used(&md),
                layers: Vec::new(),
                name,
            };
            let stamp = blobs.join(".verified").join(&item.name);
            if let Ok(smd) = fs::symlink_metadata(&stamp) {
                item.size += smd.len();
                item.last_used = item.last_used.max(last_used(&smd));
                item.paths.push(stamp);
            }
            let chunks = blobs.join(".gzip-chunks").join(&item.name);
            if let Ok(cmd) = fs::symlink_metadata(&chunks) {
                item.size += cmd.len();
                item.paths.push(chunks);
            }
            items.push(item);
        }
    }
    if let Some(shards) = read_dir_if_exists(&state.action_cache())? {
        for shard in shards.flatten() {
            let Ok(entries) = fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                let Some(key) = file_name.strip_suffix(".json") else {
                    continue;
                };
                if key.is_empty() || !key.bytes().all(|c| c.is_ascii_hexdigit()) {
                    continue;
                }
                let Ok(md) = entry.metadata() else { continue };
                if !md.is_file() {
                    continue;
                }
                items.push(Entry {
                    kind: EntryKind::Record,
                    name: key.to_string(),
                    paths: vec![entry.path()],
                    size: md.len(),
                    last_used: last_used(&md),
                    layers: record_layers(&entry.path()),
                });
            }
        }
    }
    Ok(items)
}

/// The hex digests of the layer blobs a record names, over all its outputs (`layers` is output
/// 0, `extra_outputs` the others). An unreadable record names none (the build treats it as a
/// miss anyway).
fn record_layers(path: &Path) -> Vec<String> {
    // Reading must not make the record look used: put its access time back afterwards.
    let atime = fs::metadata(path)
        .ok()
        .map(|md| filetime::FileTime::from_last_access_time(&md));
    let read = fs::read(path);
    if let Some(t) = atime {
        let _ = filetime::set_file_atime(path, t);
    }
    let Ok(bytes) = read else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let extra = v["extra_outputs"].as_array().into_iter().flatten();
    let mut out: Vec<String> = std::iter::once(&v["layers"])
        .chain(extra)
        .filter_map(|chain| chain.as_array())
        .flatten()
        .filter_map(|l| l["digest"].as_str()?.strip_prefix("sha256:"))
        .filter(|h| is_hex64(h))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The size of `state` by kind.
pub fn disk_usage(state: &StateDir) -> io::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let blob_root = state.sha256_blobs();
    let record_root = state.action_cache();
    let containerd = state.embedded_containerd();
    let mut stack = vec![state.root().to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if dir == state.root() => return Err(e),
            Err(e) => {
                tracing::warn!("cannot read `{}`: {e}", dir.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                // The embedded containerd's root holds the snapshots: not ours to count.
                if path != containerd {
                    stack.push(path);
                }
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if dir == blob_root && is_hex64(&name) {
                usage.blobs.add(md.len());
            } else if dir.parent() == Some(record_root.as_path()) && name.ends_with(".json") {
                usage.records.add(md.len());
            } else {
                usage.other.add(md.len());
            }
        }
    }
    Ok(usage)
}

/// Prunes the local cache of `state` as `policy` says (and, unless dry, the temporaries killed
/// processes left).
pub fn prune(state: &StateDir, policy: &PrunePolicy) -> io::Result<Pruned> {
    if !policy.dry_run {
        let swept = super::stale::sweep_state(state)?;
        if swept.entries > 0 {
            tracing::info!("removed {} stale temporary files", swept.entries);
        }
    }
    let items = scan(state)?;
    let cutoff = policy.keep_duration.map(|d| {
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let total: u64 = items.iter().map(|i| i.size).sum();
    let mut out = Pruned::default();
    if policy.is_empty() {
        out.kept = total;
        return Ok(out);
    }
    for i in choose(&items, policy.all, policy.keep_size, cutoff) {
        let item = &items[i];
        if !policy.dry_run && !remove_entry(item, &mut out.failed) {
            continue;
        }
        out.freed += item.size;
        out.removed.push(item.clone());
    }
    if !policy.dry_run {
        remove_empty_shards(&state.action_cache());
    }
    out.kept = total - out.freed;
    Ok(out)
}

/// Removes the files of `item`; false (with the failures noted) if one could not go.
fn remove_entry(item: &Entry, failed: &mut Vec<(PathBuf, io::Error)>) -> bool {
    let mut ok = true;
    for p in &item.paths {
        if let Err(e) = fs::remove_file(p)
            && e.kind() != io::ErrorKind::NotFound
        {
            failed.push((p.clone(), e));
            ok = false;
        }
    }
    ok
}

/// Indices of the items to remove: all of them with `all`; else, in least-recently-used order,
/// those used before `cutoff` and then more until the rest fits in `keep_size`.
fn choose(
    items: &[Entry],
    all: bool,
    keep_size: Option<u64>,
    cutoff: Option<SystemTime>,
) -> Vec<usize> {
    if all {
        return (0..items.len()).collect();
    }
    // A blob is as recently used as the most recent record that names it.
    let mut effective: Vec<SystemTime> = items.iter().map(|i| i.last_used).collect();
    let blob_index: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == EntryKind::Blob)
        .map(|(n, i)| (i.name.as_str(), n))
        .collect();
    for r in items.iter().filter(|i| i.kind == EntryKind::Record) {
        for l in &r.layers {
            if let Some(&b) = blob_index.get(l.as_str()) {
                effective[b] = effective[b].max(r.last_used);
            }
        }
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        (effective[a], items[a].kind, &items[a].name).cmp(&(
            effective[b],
            items[b].kind,
            &items[b].name,
        ))
    });

    // How many kept records name each blob.
    let mut refs: HashMap<&str, usize> = HashMap::new();
    for r in items.iter().filter(|i| i.kind == EntryKind::Record) {
        for l in &r.layers {
            *refs.entry(l.as_str()).or_default() += 1;
        }
    }
    let mut total: u64 = items.iter().map(|i| i.size).sum();
    let mut remove = Vec::new();
    for i in order {
        let item = &items[i];
        let too_old = cutoff.is_some_and(|c| effective[i] < c);
        let too_big = keep_size.is_some_and(|k| total > k);
        if !too_old && !too_big {
            break;
        }
        match item.kind {
            EntryKind::Record => {
                for l in &item.layers {
                    if let Some(n) = refs.get_mut(l.as_str()) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            // By the order above every record naming this blob came first; this only
            // guards against that changing.
            EntryKind::Blob if refs.get(item.name.as_str()).is_some_and(|&n| n > 0) => continue,
            EntryKind::Blob => {}
        }
        total -= item.size;
        remove.push(i);
    }
    remove
}

/// Entries used this recently are never removed by the automatic GC: another build on the same
/// state directory may be about to read them.
const AUTO_GC_GRACE: Duration = Duration::from_secs(600);

/// The automatic GC after a build (`build --cache-max-size`, the daemon's GC policy): least
/// recently used records and blobs go until the local cache fits in `max_size`, sparing
/// anything used in the last [`AUTO_GC_GRACE`] (and every blob a kept record names). Returns
/// (entries, bytes) removed.
pub fn auto_prune(state: &StateDir, max_size: u64) -> io::Result<(usize, u64)> {
    let items = scan(state)?;
    let total: u64 = items.iter().map(|i| i.size).sum();
    if total <= max_size {
        return Ok((0, 0));
    }
    let grace = SystemTime::now()
        .checked_sub(AUTO_GC_GRACE)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = (0, 0);
    let mut failed = Vec::new();
    for i in choose(&items, false, Some(max_size), None) {
        let item = &items[i];
        if item.last_used >= grace {
            continue;
        }
        if remove_entry(item, &mut failed) {
            removed.0 += 1;
            removed.1 += item.size;
        }
    }
    remove_empty_shards(&state.action_cache());
    Ok(removed)
}

fn remove_empty_shards(dir: &Path) {
    if let Ok(shards) = fs::read_dir(dir) {
        for shard in shards.flatten() {
            // Fails, harmlessly, unless the shard is empty.
            let _ = fs::remove_dir(shard.path());
        }
    }
}

/// `1.5 MiB`, `300 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(300), "300 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 20), "5.0 MiB");
    }

    fn item(kind: EntryKind, name: &str, size: u64, age_s: u64, layers: &[&str]) -> Entry {
        Entry {
            kind,
            name: name.to_string(),
            paths: Vec::new(),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_s),
            layers: layers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn choose_keeps_blobs_of_kept_records() {
        let items = vec![
            item(EntryKind::Record, "r-old", 10, 500, &["a", "s"]),
            item(EntryKind::Record, "r-new", 10, 10, &["b", "s"]),
            item(EntryKind::Blob, "a", 100, 500, &[]),
            item(EntryKind::Blob, "b", 100, 10, &[]),
            item(EntryKind::Blob, "s", 100, 900, &[]), // old, but named by r-new
            item(EntryKind::Blob, "c", 100, 400, &[]), // named by nobody
        ];
        let names = |v: Vec<usize>| v.iter().map(|&i| items[i].name.clone()).collect::<Vec<_>>();
        // 420 bytes in all; keeping 300 removes r-old, a (named only by it), then c.
        assert_eq!(
            names(choose(&items, false, Some(300), None)),
            ["r-old", "a", "c"]
        );
        let cutoff = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - 100);
        assert_eq!(
            names(choose(&items, false, None, Some(cutoff))),
            ["r-old", "a", "c"]
        );
        assert_eq!(choose(&items, true, None, None).len(), 6);
        assert!(choose(&items, false, Some(10_000), None).is_empty());
    }

    // Verifies: GC sees the blobs of every output of a record (`extra_outputs`), once each, and
    // still reads records written before that field existed.
    #[test]
    fn record_layers_cover_every_output() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let blob = |h: &str| serde_json::json!({"digest": format!("sha256:{h}"), "size": 1});
        let multi = d.path().join("multi.json");
        fs::write(
            &multi,
            serde_json::to_vec(&serde_json::json!({
                "key": "k",
                "layers": [blob(&a)],
                "extra_outputs": [[blob(&b), blob(&a)], [], [blob(&c)]],
            }))?,
        )?;
        assert_eq!(record_layers(&multi), [a.clone(), b, c]);
        let old = d.path().join("old.json");
        fs::write(
            &old,
            serde_json::to_vec(&serde_json::json!({"key": "k", "layers": [blob(&a)]}))?,
        )?;
        assert_eq!(record_layers(&old), [a]);
        Ok(())
    }

    // Verifies: a prune by size removes whole records before the blobs only they name, and
    // the usage scan tells blobs from records from the rest.
    #[test]
    fn prune_and_usage_on_a_real_directory() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let state = StateDir::new(d.path());
        let blob_hex = "d".repeat(64);
        fs::create_dir_all(state.sha256_blobs())?;
        fs::write(state.sha256_blobs().join(&blob_hex), vec![0u8; 1000])?;
        let shard = state.action_cache().join("ab");
        fs::create_dir_all(&shard)?;
        fs::write(
            shard.join("abcd.json"),
            serde_json::to_vec(&serde_json::json!({
                "key": "abcd",
                "layers": [{"digest": format!("sha256:{blob_hex}"), "size": 1000}],
            }))?,
        )?;
        fs::create_dir_all(state.tmp())?;
        fs::write(state.tmp().join("x"), b"12345")?;
        let u = disk_usage(&state)?;
        assert_eq!(
            u.blobs,
            Tally {
                files: 1,
                bytes: 1000
            }
        );
        assert_eq!(u.records.files, 1);
        assert_eq!(u.other, Tally { files: 1, bytes: 5 });
        let dry = prune(
            &state,
            &PrunePolicy {
                all: true,
                dry_run: true,
                ..Default::default()
            },
        )?;
        assert_eq!(dry.removed.len(), 2);
        assert!(state.sha256_blobs().join(&blob_hex).exists());
        let done = prune(
            &state,
            &PrunePolicy {
                keep_size: Some(0),
                ..Default::default()
            },
        )?;
        assert_eq!(done.removed[0].kind, EntryKind::Record);
        assert!(!state.sha256_blobs().join(&blob_hex).exists());
        assert_eq!(done.kept, 0);
        Ok(())
    }
}
