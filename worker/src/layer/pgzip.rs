//! Parallel gzip that stays standard gzip (the pigz technique).
//!
//! The input is cut into fixed-size chunks; each chunk is raw-deflated on rayon's pool on its
//! own, ending with a sync flush (an empty stored block that leaves the stream byte-aligned), the
//! last one with a final block. Concatenated behind one gzip header and followed by the CRC-32
//! and length of the whole input, that is a single ordinary gzip member any reader accepts.
//!
//! The bytes depend only on the input, the level and [`CHUNK`], never on how many threads ran,
//! so a layer's digest is the same on every machine.
//!
//! Since every chunk's compressed bytes depend on that chunk's input alone, a chunk compressed
//! before can be copied instead of compressed again ([`ChunkSource`], kept by `layer::chunks`):
//! a one-file edit under a 1 GB `COPY` recompresses the megabyte that holds the file. The
//! result is byte for byte what compressing would give.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Uncompressed bytes per independently compressed chunk. Part of the output format: changing
/// it changes every layer digest.
pub const CHUNK: usize = 1 << 20;

/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown" (as Go writes).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

type Job = mpsc::Receiver<io::Result<Done>>;

/// A compressed chunk: its bytes, the CRC-32 of its input, and what a [`ChunkRecord`] keeps.
struct Done {
    out: Vec<u8>,
    crc: Crc,
    input: Option<[u8; 32]>,
    input_len: usize,
    last: bool,
}

/// Compressed chunks of earlier layers, found by their input.
pub trait ChunkSource: Send + Sync {
    /// The compressed bytes of a chunk whose input has BLAKE3 `input`, compressed at `level`
    /// as the last chunk of its stream or not; `None` when none is known or it cannot be read.
    fn fetch(&self, input: &[u8; 32], level: u32, last: bool) -> Option<Vec<u8>>;
}

/// One chunk of a stream written with [`ParallelGzWriter::recording`]: the BLAKE3 of its
/// input, its input and compressed lengths, and whether it ends the stream. Its compressed
/// bytes follow the 10-byte header and the chunks before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// BLAKE3 of the chunk's input.
    pub input: [u8; 32],
    /// Its input length ([`CHUNK`] but for the last).
    pub input_len: u64,
    /// Whether it is the stream's last chunk (a final block instead of a sync flush).
    pub last: bool,
    /// Its compressed length.
    pub compressed_len: u64,
}

/// Where a stream's chunks start: after the gzip header.
pub const HEADER_LEN: u64 = HEADER.len() as u64;

/// The compression threads: a pool of their own, so that a writer used from a thread of
/// rayon's global pool can never wait on jobs queued behind itself.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("memobuild-gzip-{i}"))
            .build()
            .or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
            .unwrap_or_else(|e| panic!("cannot start a compression thread: {e}"))
    })
}

/// A `Write` that gzips what it is given using all cores.
pub struct ParallelGzWriter<'p, W: Write> {
    pool: &'p rayon::ThreadPool,
    inner: W,
    level: u32,
    buf: Vec<u8>,
    pending: VecDeque<Job>,
    max_pending: usize,
    crc: Crc,
    header_written: bool,
    /// Chunks compressed before, and the chunks of this stream, when recording.
    source: Option<std::sync::Arc<dyn ChunkSource>>,
    records: Option<Vec<ChunkRecord>>,
}

impl<W: Write> ParallelGzWriter<'static, W> {
    /// Wraps `inner`, compressing at `level` (0-9) on MemoBuild's compression pool.
    pub fn new(inner: W, level: u32) -> Self {
        Self::with_pool(inner, level, pool())
    }
}

impl<'p, W: Write> ParallelGzWriter<'p, W> {
    /// Wraps `inner`, compressing at `level` (0-9) on `pool`.
    pub fn with_pool(inner: W, level: u32, pool: &'p rayon::ThreadPool) -> Self {
        ParallelGzWriter {
            pool,
            inner,
            level: level.min(9),
            buf: Vec::with_capacity(CHUNK),
            pending: VecDeque::new(),
            max_pending: pool.current_num_threads().max(1) * 2,
            crc: Crc::new(),
            header_written: false,
            source: None,
            records: None,
        }
    }

    /// Also records each chunk ([`ParallelGzWriter::finish_recorded`]), and copies from
    /// `source` the chunks it holds instead of compressing them.
    pub fn recording(mut self, source: Option<std::sync::Arc<dyn ChunkSource>>) -> Self {
        self.source = source;
        self.records = Some(Vec::new());
        self
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let level = self.level;
        let record = self.records.is_some();
        let source = self.source.clone();
        let (tx, rx) = mpsc::channel();
        self.pool.spawn(move || {
            let _ = tx.send(compress_chunk(
                &data,
                level,
                last,
                record,
                source.as_deref(),
            ));
        });
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = rx
            .recv()
            .map_err(|_| io::Error::other("gzip worker thread went away"))??;
        if !self.header_written {
            self.inner.write_all(&HEADER)?;
            self.header_written = true;
        }
        self.inner.write_all(&done.out)?;
        self.crc.combine(&done.crc);
        if let (Some(records), Some(input)) = (&mut self.records, done.input) {
            records.push(ChunkRecord {
                input,
                input_len: done.input_len as u64,
                last: done.last,
                compressed_len: done.out.len() as u64,
            });
        }
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.finish_recorded().map(|(w, _)| w)
    }

    /// [`ParallelGzWriter::finish`], with the stream's chunks when it was
    /// [`recording`](ParallelGzWriter::recording) (else none).
    pub fn finish_recorded(mut self) -> io::Result<(W, Vec<ChunkRecord>)> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok((self.inner, self.records.unwrap_or_default()))
    }
}

impl<W: Write> Write for ParallelGzWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks are cut by size only, so that the output never depends on flush timing.
        Ok(())
    }
}

/// One chunk, compressed or copied from `source`; hashed when recorded or looked up.
fn compress_chunk(
    data: &[u8],
    level: u32,
    last: bool,
    record: bool,
    source: Option<&dyn ChunkSource>,
) -> io::Result<Done> {
    let mut crc = Crc::new();
    crc.update(data);
    let input = (record || source.is_some()).then(|| *blake3::hash(data).as_bytes());
    let reused = match (source, &input) {
        (Some(s), Some(h)) => s.fetch(h, level, last),
        _ => None,
    };
    let out = match reused {
        Some(out) => out,
        None => deflate_chunk(data, level, last)?,
    };
    Ok(Done {
        out,
        crc,
        input,
        input_len: data.len(),
        last,
    })
}

/// The raw-deflated bytes of `data` as one chunk (for telling compressors apart).
pub fn deflate_sample(data: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    deflate_chunk(data, level.min(9), last)
}

/// Raw-deflates one chunk: a sync flush at the end unless it is the last chunk.
fn deflate_chunk(data: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => break,
            // With a sync flush the stream is complete once all input is in and the output
            // buffer was not filled up (zlib's contract for Z_SYNC_FLUSH).
            Status::Ok | Status::BufError if !last && done && out.len() < out.capacity() => break,
            _ => out.reserve(out.capacity().max(64 * 1024)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(data: &[u8], level: u32) -> Vec<u8> {
        roundtrip_on(data, level, pool())
    }

    fn roundtrip_on(data: &[u8], level: u32, pool: &rayon::ThreadPool) -> Vec<u8> {
        let mut w = ParallelGzWriter::with_pool(Vec::new(), level, pool);
        // Odd write sizes, to cross chunk boundaries mid-write.
        for part in data.chunks(77_777) {
            w.write_all(part).unwrap();
        }
        let gz = w.finish().unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        gz
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 3 == 0 {
                    (x >> 24) as u8
                } else {
                    b'a' + (i % 7) as u8
                }
            })
            .collect()
    }

    #[test]
    fn standard_gzip_across_chunks() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345] {
            roundtrip(&sample(len), 6);
        }
        roundtrip(&sample(CHUNK * 2), 0);
        roundtrip(&sample(CHUNK * 2), 9);
    }

    #[test]
    fn output_is_independent_of_thread_count() {
        let data = sample(5 * CHUNK / 2);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let four = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let a = roundtrip_on(&data, 6, &one);
        assert_eq!(a, roundtrip_on(&data, 6, &four));
        // From inside rayon's global pool too (it must not deadlock there).
        assert_eq!(a, rayon::scope(|_| roundtrip(&data, 6)));
    }

    #[test]
    fn compresses() {
        let data = vec![b'x'; 4 * CHUNK];
        let gz = roundtrip(&data, 6);
        assert!(gz.len() < data.len() / 100, "{}", gz.len());
    }
}
