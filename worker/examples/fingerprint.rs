//! Fingerprints every file under a directory the way a `COPY . /dst` does, for benchmarks:
//! `cargo run --release -p memobuild-worker --example fingerprint -- DIR STAT_CACHE_FILE`.
//! Prints the number of entries, the combined hash and the wall time; saves the stat cache.
//!
//! `… --example fingerprint -- --floor DIR` is the floor a no-op is measured against: a bare
//! parallel walk that reads every directory and `lstat`s every entry, nothing else.

use std::path::PathBuf;
use std::time::Instant;

use memobuild_worker::fingerprint::{CopySelection, StatCache, copy_sources};

/// Reads `dir` and `lstat`s its entries, its subdirectories in parallel; the entries seen.
fn stat_walk(dir: &std::path::Path) -> std::io::Result<usize> {
    use rayon::prelude::*;
    let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries
        .par_iter()
        .map(|e| {
            let meta = std::fs::symlink_metadata(e.path())?;
            Ok(1 + if meta.is_dir() {
                stat_walk(&e.path())?
            } else {
                0
            })
        })
        .sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--floor") {
        let dir = PathBuf::from(args.nth(1).ok_or("usage: fingerprint --floor DIR")?);
        let start = Instant::now();
        let n = stat_walk(&dir)?;
        println!("entries={n} seconds={:.3}", start.elapsed().as_secs_f64());
        return Ok(());
    }
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: fingerprint DIR STAT_CACHE_FILE")?,
    );
    let stat = PathBuf::from(
        args.next()
            .ok_or("usage: fingerprint DIR STAT_CACHE_FILE")?,
    );
    let start = Instant::now();
    let cache = StatCache::load(stat);
    let sel = CopySelection {
        src: ".",
        allow_wildcard: true,
        follow_symlink: true,
        ..Default::default()
    };
    let files = copy_sources(&dir, &sel, &cache)?;
    let mut all = blake3::Hasher::new();
    let mut hex = [0u8; 64];
    for (p, h) in &files {
        all.update(p.as_bytes());
        all.update(h.hex_into(&mut hex));
    }
    let elapsed = start.elapsed();
    cache.save()?;
    println!(
        "entries={} hash={} seconds={:.3}",
        files.len(),
        &all.finalize().to_hex()[..16],
        elapsed.as_secs_f64()
    );
    Ok(())
}
