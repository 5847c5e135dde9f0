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

use std::collections::HashSet;
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
    /// Bytes of its own layer.
    pub size: u64,
    /// When a build last used it, Unix seconds.
    pub last_used: u64,
}

/// When a build last used `info`: the label, else when it was last changed.
fn last_used(info: &Info) -> u64 {
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

/// MemoBuild's committed, rooted snapshots with their sizes, least recently used first.
pub async fn list(ctd: &Containerd) -> anyhow::Result<Vec<Snap>> {
    let infos = ctd.list_snapshots().await.context("listing snapshots")?;
    let mut snaps = Vec::new();
    for info in infos
        .iter()
        .filter(|i| i.kind == Kind::Committed as i32 && i.labels.contains_key(GC_ROOT_LABEL))
    {
        // A snapshot removed meanwhile (another prune, a GC) just is not counted.
        let size = ctd.usage(&info.name).await.unwrap_or(0);
        snaps.push(Snap {
            name: info.name.clone(),
            size,
            last_used: last_used(info),
        });
    }
    snaps.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    Ok(snaps)
}

/// Which snapshots to unroot: all with `all`; else, least recently used first, those not used
/// for `keep_duration`, then more until the rest fits in `keep_size`.
pub fn choose(
    snaps: &[Snap],
    all: bool,
    keep_size: Option<u64>,
    keep_duration: Option<Duration>,
    now: u64,
) -> Vec<usize> {
    if all {
        return (0..snaps.len()).collect();
    }
    let cutoff = keep_duration.map(|d| now.saturating_sub(d.as_secs()));
    let mut total: u64 = snaps.iter().map(|s| s.size).sum();
    let mut chosen = Vec::new();
    for (i, s) in snaps.iter().enumerate() {
        let old = cutoff.is_some_and(|c| s.last_used < c);
        let over = keep_size.is_some_and(|k| total > k);
        if old || over {
            chosen.push(i);
            total -= s.size;
        }
    }
    chosen
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
        if !dry_run {
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

    fn snap(name: &str, size: u64, last_used: u64) -> Snap {
        Snap {
            name: name.into(),
            size,
            last_used,
        }
    }

    #[test]
    fn chooses_oldest_first_by_age_and_size() {
        let s = [snap("a", 10, 100), snap("b", 20, 500), snap("c", 30, 900)];
        assert_eq!(choose(&s, true, None, None, 1000), [0, 1, 2]);
        // Not used for 300 s: a and b are older than 700.
        assert_eq!(
            choose(&s, false, None, Some(Duration::from_secs(300)), 1000),
            [0, 1]
        );
        // 60 bytes, keep 35: a (50 left), b (30 left).
        assert_eq!(choose(&s, false, Some(35), None, 1000), [0, 1]);
        assert_eq!(choose(&s, false, Some(60), None, 1000), Vec::<usize>::new());
        assert_eq!(
            choose(&s, false, Some(60), Some(Duration::from_secs(600)), 1000),
            [0]
        );
    }
}
