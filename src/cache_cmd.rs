//! `memobuild cache du|prune`: the size of the local cache, and least-recently-used pruning.
//!
//! The local cache is what `memobuild build` keeps under its state directory: layer blobs in
//! `blobs/sha256/<hex>` (with a verification stamp in `blobs/sha256/.verified/<hex>`) and action
//! records in `cache/ac/<2 hex>/<key>.json`, each record listing the blobs of its layers.
//! containerd's snapshots are counted with `du --snapshots`, and pruned (instead of the local
//! cache) with `prune --snapshots` ([`snapshots`]).
//!
//! Pruning treats records and blobs as one LRU list. A blob counts as used whenever a record
//! that names it was, so the oldest records go first and a blob goes only once no kept record
//! names it: pruning never leaves a kept record pointing at a removed blob.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use crate::cli::{CacheArgs, CacheCommand, CacheDuArgs, CachePruneArgs};

pub mod snapshots;

/// Runs `memobuild cache …`.
pub async fn run(args: CacheArgs) -> anyhow::Result<()> {
    match args.command {
        CacheCommand::Du(a) => {
            let (state, addr, ns, with_snapshots) = (
                a.state_dir.clone(),
                a.containerd.clone(),
                a.namespace.clone(),
                a.snapshots,
            );
            du(a)?;
            if with_snapshots {
                with_containerd(state, addr.as_deref(), &ns, |ctd| async move {
                    let snaps = snapshots::list(&ctd).await?;
                    let bytes: u64 = snaps.iter().map(|s| s.size).sum();
                    println!(
                        "snapshots: {} committed by MemoBuild, {} (containerd namespace `{}`)",
                        snaps.len(),
                        human_size(bytes),
                        ctd.namespace()
                    );
                    Ok(())
                })
                .await?;
            }
            Ok(())
        }
        CacheCommand::Prune(a) => {
            let (state, addr, ns) = (
                a.state_dir.clone(),
                a.containerd.clone(),
                a.namespace.clone(),
            );
            let (with_snapshots, all, keep_size, keep_duration, dry_run) =
                (a.snapshots, a.all, a.keep_size, a.keep_duration, a.dry_run);
            if !with_snapshots {
                return prune(a);
            }
            if !all && keep_size.is_none() && keep_duration.is_none() {
                bail!(
                    "say what to keep: `--keep-size BYTES`, `--keep-duration DURATION` or `--all`"
                );
            }
            {
                with_containerd(state, addr.as_deref(), &ns, |ctd| async move {
                    let p = snapshots::prune(&ctd, all, keep_size, keep_duration, dry_run).await?;
                    if dry_run {
                        println!(
                            "would remove {} snapshots, {}; {} kept, {}",
                            p.unrooted,
                            human_size(p.freed),
                            p.kept,
                            human_size(p.kept_bytes)
                        );
                    } else {
                        println!(
                            "removed {} snapshots, {} ({} unrooted; a snapshot a running build uses, or one a kept snapshot builds on, stays); {} kept, {}",
                            p.removed,
                            human_size(p.freed),
                            p.unrooted,
                            p.kept,
                            human_size(p.kept_bytes)
                        );
                    }
                    Ok(())
                })
                .await?;
            }
            Ok(())
        }
    }
}

/// Runs `f` with a client of the containerd `build` would use (an embedded one is started and
/// stopped again), in `namespace`.
async fn with_containerd<F, Fut>(
    state_dir: Option<PathBuf>,
    addr: Option<&str>,
    namespace: &str,
    f: F,
) -> anyhow::Result<()>
where
    F: FnOnce(memobuild_worker::containerd::Containerd) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let state = crate::cli::state_dir(state_dir);
    let selected = crate::embedded::Containerd::select(addr, &state).await?;
    let result = async {
        let ctd = memobuild_worker::containerd::Containerd::connect(selected.socket(), namespace)
            .await
            .with_context(|| {
                format!(
                    "connecting to containerd at `{}`",
                    selected.socket().display()
                )
            })?;
        f(ctd).await
    }
    .await;
    selected.release().await;
    result
}

/// The state directory: `--state-dir`, else `$HOME/.local/share/memobuild`, else
fn blob_dir(state: &Path) -> PathBuf {
    state.join("blobs").join("sha256")
}

fn record_dir(state: &Path) -> PathBuf {
    state.join("cache").join("ac")
}

/// Whether `name` is 64 lowercase hex digits.
fn is_hex64(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ItemKind {
    // Records sort before blobs used at the same moment: they are removed first.
    Record,
    Blob,
}

/// A record or blob of the local cache.
#[derive(Debug)]
struct Item {
    kind: ItemKind,
    /// The key (records) or the digest's hex (blobs).
    name: String,
    /// The file, and the blob's verification stamp.
    paths: Vec<PathBuf>,
    size: u64,
    last_used: SystemTime,
    /// Hex digests of the blobs a record names.
    layers: Vec<String>,
}

fn last_used(md: &fs::Metadata) -> SystemTime {
    let m = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let a = md.accessed().unwrap_or(SystemTime::UNIX_EPOCH);
    m.max(a)
}

/// The blobs and records under `state`. Files with other names (temporary files, stray files)
/// are not part of either.
fn scan(state: &Path) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    let blobs = blob_dir(state);
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
            let mut item = Item {
                kind: ItemKind::Blob,
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
            items.push(item);
        }
    }
    let records = record_dir(state);
    if let Some(shards) = read_dir_if_exists(&records)? {
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
                items.push(Item {
                    kind: ItemKind::Record,
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

fn read_dir_if_exists(dir: &Path) -> anyhow::Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", dir.display())),
    }
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

/// Files and bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    files: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
}

/// `memobuild cache du`.
fn du(args: CacheDuArgs) -> anyhow::Result<()> {
    let state = crate::cli::state_dir(args.state_dir);
    if !state.is_dir() {
        bail!("no state directory `{}`", state.display());
    }
    let (mut blobs, mut records, mut other) =
        (Tally::default(), Tally::default(), Tally::default());
    let blob_root = blob_dir(&state);
    let record_root = record_dir(&state);
    let containerd = state.join("containerd");
    let mut stack = vec![state.clone()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: cannot read `{}`: {e}", dir.display());
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
                blobs.add(md.len());
            } else if dir.parent() == Some(record_root.as_path()) && name.ends_with(".json") {
                records.add(md.len());
            } else {
                other.add(md.len());
            }
        }
    }
    let total = Tally {
        files: blobs.files + records.files + other.files,
        bytes: blobs.bytes + records.bytes + other.bytes,
    };
    println!("state directory: {}", state.display());
    let line = |label: &str, t: Tally, what: &str| {
        println!("{label:<9}{} files, {}{what}", t.files, human_size(t.bytes));
    };
    line("blobs:", blobs, " (layer blobs, blobs/sha256)");
    line("records:", records, " (action records, cache/ac)");
    line(
        "other:",
        other,
        " (verification stamps, stat cache, build history, temporary files)",
    );
    line("total:", total, "");
    if !args.snapshots {
        println!("not counted: containerd snapshots (add --snapshots)");
    }
    Ok(())
}

/// `memobuild cache prune`.
fn prune(args: CachePruneArgs) -> anyhow::Result<()> {
    if !args.all && args.keep_size.is_none() && args.keep_duration.is_none() {
        bail!("say what to keep: `--keep-size BYTES`, `--keep-duration DURATION` or `--all`");
    }
    let state = crate::cli::state_dir(args.state_dir);
    if !state.is_dir() {
        bail!("no state directory `{}`", state.display());
    }
    let items = scan(&state)?;
    let cutoff = args.keep_duration.map(|d| {
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let remove = choose(&items, args.all, args.keep_size, cutoff);

    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let (mut n_records, mut n_blobs, mut freed, mut failed) = (0u64, 0u64, 0u64, 0u64);
    for &i in &remove {
        let item = &items[i];
        if !args.dry_run {
            let mut ok = true;
            for p in &item.paths {
                if let Err(e) = fs::remove_file(p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    eprintln!("warning: cannot remove `{}`: {e}", p.display());
                    ok = false;
                }
            }
            if !ok {
                failed += 1;
                continue;
            }
        }
        match item.kind {
            ItemKind::Record => {
                n_records += 1;
                println!("{verb} record {} ({})", item.name, human_size(item.size));
            }
            ItemKind::Blob => {
                n_blobs += 1;
                println!(
                    "{verb} blob sha256:{} ({})",
                    item.name,
                    human_size(item.size)
                );
            }
        }
        freed += item.size;
    }
    if !args.dry_run {
        remove_empty_shards(&record_dir(&state));
    }
    let kept: u64 = items.iter().map(|i| i.size).sum::<u64>() - freed;
    println!(
        "{verb} {n_records} records and {n_blobs} blobs, {}; {} kept (containerd snapshots: --snapshots)",
        human_size(freed),
        human_size(kept),
    );
    if failed > 0 {
        bail!("{failed} entries could not be removed");
    }
    Ok(())
}

/// Indices of the items to remove: all of them with `all`; else, in least-recently-used order,
/// those used before `cutoff` and then more until the rest fits in `keep_size`.
fn choose(
    items: &[Item],
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
        .filter(|(_, i)| i.kind == ItemKind::Blob)
        .map(|(n, i)| (i.name.as_str(), n))
        .collect();
    for r in items.iter().filter(|i| i.kind == ItemKind::Record) {
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
    for r in items.iter().filter(|i| i.kind == ItemKind::Record) {
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
            ItemKind::Record => {
                for l in &item.layers {
                    if let Some(n) = refs.get_mut(l.as_str()) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            // By the order above every record naming this blob came first; this only
            // guards against that changing.
            ItemKind::Blob if refs.get(item.name.as_str()).is_some_and(|&n| n > 0) => continue,
            ItemKind::Blob => {}
        }
        total -= item.size;
        remove.push(i);
    }
    remove
}

/// Entries used this recently are never removed by the automatic GC: another build on the same
/// state directory may be about to read them.
const AUTO_GC_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// The automatic GC after a build (`build --cache-max-size`): least recently used records and
/// blobs go until the local cache fits in `max_size`, sparing anything used in the last
/// [`AUTO_GC_GRACE`] (and every blob a kept record names). Returns (entries, bytes) removed.
pub fn auto_prune(state: &Path, max_size: u64) -> anyhow::Result<(usize, u64)> {
    let items = scan(state)?;
    let total: u64 = items.iter().map(|i| i.size).sum();
    if total <= max_size {
        return Ok((0, 0));
    }
    let grace = SystemTime::now()
        .checked_sub(AUTO_GC_GRACE)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = (0, 0);
    for i in choose(&items, false, Some(max_size), None) {
        let item = &items[i];
        if item.last_used >= grace {
            continue;
        }
        if item.paths.iter().all(|p| match fs::remove_file(p) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }) {
            removed.0 += 1;
            removed.1 += item.size;
        }
    }
    remove_empty_shards(&record_dir(state));
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

/// Parses a size: a number of bytes with an optional suffix, `KB`/`MB`/`GB`/`TB` (powers of
/// 1000) or `KiB`/`MiB`/`GiB`/`TiB` and `K`/`M`/`G`/`T` (powers of 1024), case-insensitive.
/// Fractions are allowed with a suffix: `1.5GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    if num.is_empty() {
        return Err(format!("`{s}` is not a size (e.g. 500MB, 10GiB)"));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(multiplier)
            .ok_or_else(|| format!("`{s}` is too large"));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 500MB, 10GiB)"))?;
    let bytes = n * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: numbers with units `s`, `m`, `h`, `d`, `w`, e.g. `24h`, `7d`, `1d12h`,
/// `90m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration (e.g. 30m, 24h, 7d)");
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds: u64 = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(seconds)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("`{s}` is too long"))?;
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("10kib"), Ok(10_240));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "h", "7", "7x", "1.5h", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(300), "300 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 20), "5.0 MiB");
    }

    fn item(kind: ItemKind, name: &str, size: u64, age_s: u64, layers: &[&str]) -> Item {
        Item {
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
            item(ItemKind::Record, "r-old", 10, 500, &["a", "s"]),
            item(ItemKind::Record, "r-new", 10, 10, &["b", "s"]),
            item(ItemKind::Blob, "a", 100, 500, &[]),
            item(ItemKind::Blob, "b", 100, 10, &[]),
            item(ItemKind::Blob, "s", 100, 900, &[]), // old, but named by r-new
            item(ItemKind::Blob, "c", 100, 400, &[]), // named by nobody
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
    fn record_layers_cover_every_output() -> anyhow::Result<()> {
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
}
