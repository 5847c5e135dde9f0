//! `memobuild cache du|prune --snapshots`: MemoBuild's committed containerd snapshots.
//!
//! Every snapshot a build commits (an unpacked image layer, a step's result) carries
//! `containerd.io/gc.root`, so that the next build finds it, and MemoBuild's last-used label
//! (refreshed when a build uses it, at most hourly). Nothing else ever removes them: on a
//! long-lived machine they pile up. Pruning takes the gc root label off the snapshots chosen
//! (least recently used first) and runs containerd's garbage collector, which removes those
//! that nothing else holds: a snapshot a running build leased, or the parent of a kept one,
//! stays. Removing a snapshot loses nothing: a later build unpacks it again from the layer
//! blobs of the local cache.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use containerd_client::services::v1::snapshots::{Info, Kind};
use memobuild_worker::containerd::{Containerd, GC_ROOT_LABEL, LAST_USED_LABEL, unix_now};

use super::human_size;

/// A committed snapshot of MemoBuild's.
#[derive(Debug, Clone)]
pub struct Snap {
    /// Its name (a chain ID).
    pub name: String,
    /// Its parent's name (`""` for a base layer).
    pub parent: String,
    /// Bytes of its own layer.
    pub size: u64,
    /// When a build last used it or a snapshot built on it, Unix seconds.
    pub last_used: u64,
    /// Whether it is a gc root (else it stays only while something holds it).
    pub rooted: bool,
}

/// When a build last used `info`: the label, else when it was last changed.
fn own_last_used(info: &Info) -> u64 {
    info.labels
        .get(LAST_USED_LABEL)
        .and_then(|v| v.parse().ok())
        .or_else(|| {
            info.updated_at
                .as_ref()
                .or(info.created_at.as_ref())
                .and_then(|t| u64::try_from(t.seconds).ok())
        })
        .unwrap_or(0)
}

/// MemoBuild's committed snapshots (rooted, or unrooted by a prune but still there), least
/// recently used first. A snapshot counts as used whenever one built on it was: a build
/// refreshes only the top of the chain it uses.
pub async fn list(ctd: &Containerd) -> anyhow::Result<Vec<Snap>> {
    let infos = ctd.list_snapshots().await.context("listing snapshots")?;
    let mut snaps = Vec::new();
    for info in infos.iter().filter(|i| {
        i.kind == Kind::Committed as i32
            && (i.labels.contains_key(GC_ROOT_LABEL) || i.labels.contains_key(LAST_USED_LABEL))
    }) {
        // A snapshot removed meanwhile (another prune, a GC) just is not counted.
        let size = ctd.usage(&info.name).await.unwrap_or(0);
        snaps.push(Snap {
            name: info.name.clone(),
            parent: info.parent.clone(),
            size,
            last_used: own_last_used(info),
            rooted: info.labels.contains_key(GC_ROOT_LABEL),
        });
    }
    // Propagate use down the chains: a parent is as recent as its most recent descendant.
    let index: HashMap<String, usize> = snaps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    for i in 0..snaps.len() {
        let (mut at, used) = (snaps[i].parent.clone(), snaps[i].last_used);
        let mut hops = 0;
        while let Some(&p) = index.get(&at) {
            if snaps[p].last_used >= used || hops > snaps.len() {
                break;
            }
            snaps[p].last_used = used;
            at = snaps[p].parent.clone();
            hops += 1;
        }
    }
    snaps.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    Ok(snaps)
}

/// Which snapshots to unroot: all with `all`; else, least recently used first, those not used
/// for `keep_duration`, then more until the rest fits in `keep_size`. Only snapshots whose
/// every child is chosen too can go (a kept child holds its parent), so children come first.
pub fn choose(
    snaps: &[Snap],
    all: bool,
    keep_size: Option<u64>,
    keep_duration: Option<Duration>,
    now: u64,
) -> Vec<usize> {
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in snaps.iter().enumerate() {
        children.entry(s.parent.as_str()).or_default().push(i);
    }
    let index: HashMap<&str, usize> = snaps
        .iter()
        .enumerate()
        .map(|(j, s)| (s.name.as_str(), j))
        .collect();
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(&p) = index.get(snaps[i].parent.as_str()) {
            d += 1;
            i = p;
            if d > snaps.len() {
                break;
            }
        }
        d
    };
    let mut order: Vec<usize> = (0..snaps.len()).collect();
    let depths: Vec<usize> = order.iter().map(|&i| depth(i)).collect();
    order.sort_by(|&a, &b| {
        snaps[a]
            .last_used
            .cmp(&snaps[b].last_used)
            .then(depths[b].cmp(&depths[a]))
            .then(snaps[a].name.cmp(&snaps[b].name))
    });
    let cutoff = keep_duration.map(|d| now.saturating_sub(d.as_secs()));
    let mut total: u64 = snaps.iter().map(|s| s.size).sum();
    let mut chosen = vec![false; snaps.len()];
    let mut out = Vec::new();
    for i in order {
        let s = &snaps[i];
        let wanted =
            all || cutoff.is_some_and(|c| s.last_used < c) || keep_size.is_some_and(|k| total > k);
        let free = children
            .get(s.name.as_str())
            .is_none_or(|kids| kids.iter().all(|&k| chosen[k]));
        if wanted && free {
            chosen[i] = true;
            out.push(i);
            total -= s.size;
        }
    }
    out
}

/// What a prune did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Snapshots whose gc root label was taken off.
    pub unrooted: usize,
    /// Snapshots gone after the collection.
    pub removed: usize,
    /// Their bytes.
    pub freed: u64,
    /// Rooted snapshots left, and their bytes.
    pub kept: usize,
    /// Bytes kept.
    pub kept_bytes: u64,
}

/// Unroots the chosen snapshots and collects; with `dry_run`, only says what it would unroot.
pub async fn prune(
    ctd: &Containerd,
    all: bool,
    keep_size: Option<u64>,
    keep_duration: Option<Duration>,
    dry_run: bool,
) -> anyhow::Result<Pruned> {
    let snaps = list(ctd).await?;
    let chosen = choose(&snaps, all, keep_size, keep_duration, unix_now());
    let verb = if dry_run { "would remove" } else { "unrooted" };
    let mut out = Pruned::default();
    for &i in &chosen {
        let s = &snaps[i];
        println!("{verb} snapshot {} ({})", s.name, human_size(s.size));
        if !dry_run && s.rooted {
            match ctd
                .update_snapshot_labels(&s.name, Default::default(), &[GC_ROOT_LABEL])
                .await
            {
                Ok(()) => out.unrooted += 1,
                Err(memobuild_worker::containerd::Error::SnapshotNotFound { .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("unrooting snapshot {}", s.name)),
            }
        }
    }
    if dry_run {
        out.unrooted = chosen.len();
        out.freed = chosen.iter().map(|&i| snaps[i].size).sum();
        out.kept = snaps.len() - chosen.len();
        out.kept_bytes = snaps.iter().map(|s| s.size).sum::<u64>() - out.freed;
        return Ok(out);
    }
    // A lease removed with `sync` returns once a garbage collection has run.
    let lease = ctd
        .create_lease(Duration::from_secs(60))
        .await
        .context("creating a lease to trigger garbage collection")?;
    ctd.delete_lease_and_collect(&lease)
        .await
        .context("running containerd's garbage collection")?;
    let left: HashSet<String> = ctd
        .list_snapshots()
        .await
        .context("listing snapshots")?
        .into_iter()
        .map(|i| i.name)
        .collect();
    for s in &snaps {
        if !left.contains(&s.name) {
            out.removed += 1;
            out.freed += s.size;
        }
    }
    let kept = list(ctd).await?;
    out.kept = kept.len();
    out.kept_bytes = kept.iter().map(|s| s.size).sum();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, parent: &str, size: u64, last_used: u64) -> Snap {
        Snap {
            name: name.into(),
            parent: parent.into(),
            size,
            last_used,
            rooted: true,
        }
    }

    #[test]
    fn chooses_oldest_first_by_age_and_size() {
        // Three unrelated chains of one snapshot each.
        let s = [
            snap("a", "", 10, 100),
            snap("b", "", 20, 500),
            snap("c", "", 30, 900),
        ];
        assert_eq!(choose(&s, true, None, None, 1000).len(), 3);
        // Not used for 300 s: a and b are older than 700.
        assert_eq!(
            choose(&s, false, None, Some(Duration::from_secs(300)), 1000),
            [0, 1]
        );
        // 60 bytes, keep 35: a (50 left), b (30 left).
        assert_eq!(choose(&s, false, Some(35), None, 1000), [0, 1]);
        assert_eq!(choose(&s, false, Some(60), None, 1000), Vec::<usize>::new());
    }

    #[test]
    fn a_kept_child_keeps_its_parent_and_children_go_first() {
        // base <- mid <- top, and base <- other; `list` has made parents as recent as their
        // most recent descendant.
        let s = [
            snap("base", "", 100, 900),
            snap("mid", "base", 10, 900),
            snap("top", "mid", 10, 900),
            snap("other", "base", 10, 200),
        ];
        // Old: only `other` (the base is still used through `top`).
        assert_eq!(
            choose(&s, false, None, Some(Duration::from_secs(500)), 1000),
            [3]
        );
        // Everything: children before parents.
        let all = choose(&s, true, None, None, 1000);
        let pos = |n: &str| {
            all.iter()
                .position(|&i| s[i].name == n)
                .unwrap_or(usize::MAX)
        };
        assert!(pos("top") < pos("mid") && pos("mid") < pos("base") && pos("other") < pos("base"));
        // Keep 115 of 130 bytes: `other` (10) is not enough; then the chain top-down, since
        // the base alone cannot go while `mid` stays.
        let some = choose(&s, false, Some(115), None, 1000);
        let names: Vec<&str> = some.iter().map(|&i| s[i].name.as_str()).collect();
        assert_eq!(names, ["other", "top"]);
    }
}
