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

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use memobuild_worker::state::StateDir;
use memobuild_worker::state::usage::{self, EntryKind, PrunePolicy};

pub use memobuild_worker::state::usage::human_size;

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
    let state = StateDir::new(crate::cli::state_dir(state_dir));
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
    selected.release(std::time::Duration::ZERO).await;
    result
}

/// `memobuild cache du`.
fn du(args: CacheDuArgs) -> anyhow::Result<()> {
    let state = StateDir::new(crate::cli::state_dir(args.state_dir));
    if !state.root().is_dir() {
        bail!("no state directory `{}`", state.root().display());
    }
    let u = usage::disk_usage(&state)
        .with_context(|| format!("reading `{}`", state.root().display()))?;
    println!("state directory: {}", state.root().display());
    let line = |label: &str, t: usage::Tally, what: &str| {
        println!("{label:<9}{} files, {}{what}", t.files, human_size(t.bytes));
    };
    line("blobs:", u.blobs, " (layer blobs, blobs/sha256)");
    line("records:", u.records, " (action records, cache/ac)");
    line(
        "other:",
        u.other,
        " (verification stamps, stat cache, build history, synced contexts, temporary files)",
    );
    line("total:", u.total(), "");
    if !args.snapshots {
        println!("not counted: containerd snapshots (add --snapshots)");
    }
    Ok(())
}

/// `memobuild cache prune`.
fn prune(args: CachePruneArgs) -> anyhow::Result<()> {
    let policy = PrunePolicy {
        all: args.all,
        keep_size: args.keep_size,
        keep_duration: args.keep_duration,
        dry_run: args.dry_run,
    };
    if policy.is_empty() {
        bail!("say what to keep: `--keep-size BYTES`, `--keep-duration DURATION` or `--all`");
    }
    let state = StateDir::new(crate::cli::state_dir(args.state_dir));
    if !state.root().is_dir() {
        bail!("no state directory `{}`", state.root().display());
    }
    let done = usage::prune(&state, &policy)
        .with_context(|| format!("pruning `{}`", state.root().display()))?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let (mut n_records, mut n_blobs) = (0u64, 0u64);
    for item in &done.removed {
        match item.kind {
            EntryKind::Record => {
                n_records += 1;
                println!("{verb} record {} ({})", item.name, human_size(item.size));
            }
            EntryKind::Blob => {
                n_blobs += 1;
                println!(
                    "{verb} blob sha256:{} ({})",
                    item.name,
                    human_size(item.size)
                );
            }
        }
    }
    for (p, e) in &done.failed {
        eprintln!("warning: cannot remove `{}`: {e}", p.display());
    }
    println!(
        "{verb} {n_records} records and {n_blobs} blobs, {}; {} kept (containerd snapshots: --snapshots)",
        human_size(done.freed),
        human_size(done.kept),
    );
    if !done.failed.is_empty() {
        bail!("{} files could not be removed", done.failed.len());
    }
    Ok(())
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
}
