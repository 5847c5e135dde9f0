//! Fingerprints every file under a directory the way a `COPY . /dst` does, for benchmarks:
//! `cargo run --release -p memobuild-worker --example fingerprint -- DIR STAT_CACHE_FILE`.
//! Prints the number of entries, the combined hash and the wall time; saves the stat cache.

use std::path::PathBuf;
use std::time::Instant;

use memobuild_worker::fingerprint::{CopySelection, StatCache, copy_sources};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
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
    for (p, h) in &files {
        all.update(p.as_bytes());
        all.update(h.as_bytes());
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
