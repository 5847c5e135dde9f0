//! Chunk tables of the layers MemoBuild compressed, so that a new layer copies the chunks an
//! earlier one compressed instead of compressing them again.
//!
//! [`pgzip`](super::pgzip) compresses a layer's tar in 1 MiB chunks, each on its own, so a
//! chunk's compressed bytes depend on its input alone. When a layer of two chunks or more is
//! stored, its table goes beside the blob (`sha256/.gzip-chunks/<hex>`): the BLAKE3 of each
//! chunk's input and its compressed length, in order. A one-file edit under a 1 GB `COPY`
//! then leaves all chunks but the edited file's the same (tar pads every file to 512 bytes,
//! so a small edit rarely moves what follows it), and those are copied from the earlier blob.
//! The layer's bytes and digest are exactly what compressing would give.
//!
//! A table is believed only when its BLAKE3 trailer matches, it was written by a compressor
//! that gives the same bytes (MemoBuild's version and a sample compressed by this one), and its
//! blob still [verifies](BlobStore::verify) at the size the table implies; anything else is
//! skipped and the chunk compressed.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::pgzip::{self, CHUNK, ChunkRecord, ChunkSource};
use crate::blobs::BlobStore;

/// First line of a chunk table.
const HEADER: &[u8] = b"memobuild-gzip-chunks 1\n";

/// Bytes of one record: input BLAKE3, input length, last flag, compressed length.
const RECORD_LEN: usize = 32 + 8 + 1 + 8;

/// The gzip trailer (CRC-32 and length) after the last chunk.
const GZIP_TRAILER: u64 = 8;

/// The chunks of the tables in a blob store, for layers compressed at one level.
pub struct ChunkTables {
    store: BlobStore,
    level: u32,
    index: OnceLock<HashMap<([u8; 32], bool), Location>>,
}

/// Where a compressed chunk is: a byte range of a stored blob.
#[derive(Debug, Clone)]
struct Location {
    blob: Arc<PathBuf>,
    offset: u64,
    len: u64,
}

impl ChunkTables {
    /// The tables of `store` for level `level`, read at the first lookup.
    pub fn new(store: BlobStore, level: u32) -> Self {
        ChunkTables {
            store,
            level,
            index: OnceLock::new(),
        }
    }

    fn index(&self) -> &HashMap<([u8; 32], bool), Location> {
        self.index.get_or_init(|| self.load())
    }

    /// Every chunk of every table that holds, by its input and whether it is a last chunk.
    fn load(&self) -> HashMap<([u8; 32], bool), Location> {
        let mut index = HashMap::new();
        let Ok(dir) = fs::read_dir(self.store.chunk_tables()) else {
            return index;
        };
        let compressor = compressor_id(self.level);
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            let Ok(blob) = self.store.path(&digest) else {
                continue;
            };
            let Some(records) = fs::read(entry.path())
                .ok()
                .and_then(|data| parse(&data, &compressor, self.level))
            else {
                continue;
            };
            let size = pgzip::HEADER_LEN
                + records.iter().map(|r| r.compressed_len).sum::<u64>()
                + GZIP_TRAILER;
            if !self.store.verify(&digest, Some(size)) {
                continue;
            }
            let blob = Arc::new(blob);
            let mut offset = pgzip::HEADER_LEN;
            for r in records {
                index.entry((r.input, r.last)).or_insert(Location {
                    blob: blob.clone(),
                    offset,
                    len: r.compressed_len,
                });
                offset += r.compressed_len;
            }
        }
        index
    }
}

impl ChunkSource for ChunkTables {
    fn fetch(&self, input: &[u8; 32], level: u32, last: bool) -> Option<Vec<u8>> {
        if level != self.level {
            return None;
        }
        let loc = self.index().get(&(*input, last))?;
        let mut out = vec![0u8; usize::try_from(loc.len).ok()?];
        let file = fs::File::open(loc.blob.as_ref()).ok()?;
        file.read_exact_at(&mut out, loc.offset).ok()?;
        Some(out)
    }
}

/// Keeps the table of the layer blob `digest`, compressed at `level` in `records`. Best
/// effort: without a table, a later layer compresses these chunks again.
pub fn save(store: &BlobStore, digest: &str, level: u32, records: &[ChunkRecord]) {
    if records.len() < 2 {
        return;
    }
    let Ok(path) = store.chunk_table(digest) else {
        return;
    };
    if path.exists() {
        return;
    }
    let mut data = HEADER.to_vec();
    data.extend_from_slice(&compressor_id(level));
    data.extend_from_slice(&level.to_le_bytes());
    data.extend_from_slice(&(CHUNK as u64).to_le_bytes());
    for r in records {
        data.extend_from_slice(&r.input);
        data.extend_from_slice(&r.input_len.to_le_bytes());
        data.push(u8::from(r.last));
        data.extend_from_slice(&r.compressed_len.to_le_bytes());
    }
    let sum = blake3::hash(&data);
    data.extend_from_slice(sum.as_bytes());
    let dir = store.chunk_tables();
    let written = fs::create_dir_all(&dir).and_then(|()| {
        let mut tmp = tempfile::Builder::new()
            .prefix(&crate::state::stale::temp_prefix(".tmp-"))
            .tempfile_in(&dir)?;
        tmp.write_all(&data)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    });
    if let Err(e) = written {
        tracing::debug!(%digest, "cannot keep the layer's chunk table: {e}");
    }
}

/// The records of a table, when it is whole and was written for `compressor` at `level` with
/// this chunk size.
fn parse(data: &[u8], compressor: &[u8; 32], level: u32) -> Option<Vec<ChunkRecord>> {
    let (body, sum) = data.split_at_checked(data.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let rest = body.strip_prefix(HEADER)?;
    let (id, rest) = rest.split_first_chunk::<32>()?;
    let (lvl, rest) = rest.split_first_chunk::<4>()?;
    let (chunk, rest) = rest.split_first_chunk::<8>()?;
    if id != compressor || u32::from_le_bytes(*lvl) != level {
        return None;
    }
    if u64::from_le_bytes(*chunk) != CHUNK as u64 || rest.len() % RECORD_LEN != 0 {
        return None;
    }
    let records: Vec<ChunkRecord> = rest
        .chunks_exact(RECORD_LEN)
        .filter_map(|r| {
            let (input, r) = r.split_first_chunk::<32>()?;
            let (input_len, r) = r.split_first_chunk::<8>()?;
            let (last, r) = r.split_first()?;
            let (compressed_len, _) = r.split_first_chunk::<8>()?;
            Some(ChunkRecord {
                input: *input,
                input_len: u64::from_le_bytes(*input_len),
                last: *last == 1,
                compressed_len: u64::from_le_bytes(*compressed_len),
            })
        })
        .collect();
    // Every chunk but the last is whole, and only the last says so.
    let n = records.len();
    let shaped = records
        .iter()
        .enumerate()
        .all(|(i, r)| (i + 1 == n) == r.last && (r.last || r.input_len == CHUNK as u64));
    shaped.then_some(records)
}

/// What a table's chunks were compressed by: MemoBuild's version and the bytes this build's
/// deflate gives for a fixed sample at `level`. Another version, or a deflate that compresses
/// differently, never reuses a table (its chunks would not be the bytes compressing gives).
fn compressor_id(level: u32) -> [u8; 32] {
    static IDS: [OnceLock<[u8; 32]>; 10] = [const { OnceLock::new() }; 10];
    let level = level.min(9);
    *IDS[level as usize].get_or_init(|| {
        let mut sample = Vec::with_capacity(64 * 1024);
        let mut x: u32 = 0x9e37_79b9;
        while sample.len() < 64 * 1024 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Half text-like runs, half noise: both of deflate's paths.
            if sample.len() % 2048 < 1024 {
                sample.extend_from_slice(b"memobuild layer chunk ");
            } else {
                sample.extend_from_slice(&x.to_le_bytes());
            }
        }
        let mut h = blake3::Hasher::new();
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        for last in [false, true] {
            match pgzip::deflate_sample(&sample, level, last) {
                Ok(out) => h.update(&out),
                Err(_) => h.update(b"error"),
            };
        }
        *h.finalize().as_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_believed_only_whole_and_for_this_compressor() {
        let recs = vec![
            ChunkRecord {
                input: [1; 32],
                input_len: CHUNK as u64,
                last: false,
                compressed_len: 100,
            },
            ChunkRecord {
                input: [2; 32],
                input_len: 5,
                last: true,
                compressed_len: 7,
            },
        ];
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        save(&store, &digest, 6, &recs);
        let data = fs::read(store.chunk_table(&digest).unwrap()).unwrap();
        assert_eq!(parse(&data, &compressor_id(6), 6), Some(recs));
        assert_eq!(parse(&data, &compressor_id(6), 9), None, "another level");
        assert_eq!(parse(&data, &[0; 32], 6), None, "another compressor");
        let mut flipped = data.clone();
        flipped[HEADER.len() + 50] ^= 1;
        assert_eq!(parse(&flipped, &compressor_id(6), 6), None);
        assert_eq!(parse(&data[..data.len() - 1], &compressor_id(6), 6), None);
        // Its blob is missing: nothing is found.
        let tables = ChunkTables::new(store, 6);
        assert!(tables.fetch(&[1; 32], 6, false).is_none());
    }

    /// Counts the chunks a source handed out.
    struct Counting(ChunkTables, std::sync::atomic::AtomicUsize);

    impl ChunkSource for Counting {
        fn fetch(&self, input: &[u8; 32], level: u32, last: bool) -> Option<Vec<u8>> {
            let got = self.0.fetch(input, level, last);
            if got.is_some() {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            got
        }
    }

    /// Noise (deflate cannot shrink it, like the benchmark's files) of `len` bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.finalize_xof().fill(&mut out);
        out
    }

    /// Compresses `data` as a layer into `store` (its table kept), copying from `source`.
    fn store_layer(
        store: &BlobStore,
        data: &[u8],
        source: Option<Arc<dyn ChunkSource>>,
    ) -> (String, Vec<u8>) {
        let mut w = pgzip::ParallelGzWriter::new(Vec::new(), 6).recording(source);
        w.write_all(data).unwrap();
        let (gz, records) = w.finish_recorded().unwrap();
        let digest = crate::blobs::sha256_digest(&gz);
        assert_eq!(store.put_bytes(&gz).unwrap(), digest);
        save(store, &digest, 6, &records);
        (digest, gz)
    }

    #[test]
    fn an_edited_layer_copies_its_other_chunks_and_gives_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let mut data = noise(4 * CHUNK + 1000, 7);
        let (first, _) = store_layer(&store, &data, None);
        // One byte of the third chunk changes, the length does not.
        data[2 * CHUNK + 5] ^= 0xff;
        let fresh = {
            let mut w = pgzip::ParallelGzWriter::new(Vec::new(), 6);
            w.write_all(&data).unwrap();
            w.finish().unwrap()
        };
        let counting = Arc::new(Counting(
            ChunkTables::new(store.clone(), 6),
            Default::default(),
        ));
        let source: Arc<dyn ChunkSource> = counting.clone();
        let (second, reused) = store_layer(&store, &data, Some(source));
        assert_eq!(
            reused, fresh,
            "copied chunks are the bytes compressing gives"
        );
        assert_ne!(second, first);
        assert_eq!(counting.1.load(std::sync::atomic::Ordering::Relaxed), 4);
        // A damaged blob is not copied from: it fails verification and goes away.
        let d2 = tempfile::tempdir().unwrap();
        let store2 = BlobStore::open(d2.path()).unwrap();
        let (bad, _) = store_layer(&store2, &data, None);
        let path = store2.path(&bad).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[100] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let counting = Arc::new(Counting(
            ChunkTables::new(store2.clone(), 6),
            Default::default(),
        ));
        let source: Arc<dyn ChunkSource> = counting.clone();
        let mut w = pgzip::ParallelGzWriter::new(Vec::new(), 6).recording(Some(source));
        w.write_all(&data).unwrap();
        let (again, _) = w.finish_recorded().unwrap();
        assert_eq!(again, fresh);
        assert_eq!(counting.1.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(!path.exists());
    }
}
