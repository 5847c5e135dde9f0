//! Parallel gzip that stays standard gzip (the pigz technique).
//!
//! The input is cut into fixed-size chunks; each chunk is raw-deflated on rayon's pool on its
//! own, ending with a sync flush (an empty stored block that leaves the stream byte-aligned), the
//! last one with a final block. Concatenated behind one gzip header and followed by the CRC-32
//! and length of the whole input, that is a single ordinary gzip member any reader accepts.
//!
//! The bytes depend only on the input, the level and [`CHUNK`], never on how many threads ran,
//! so a layer's digest is the same on every machine.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Uncompressed bytes per independently compressed chunk. Part of the output format: changing
/// it changes every layer digest.
pub const CHUNK: usize = 1 << 20;

/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown" (as Go writes).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

type Job = mpsc::Receiver<io::Result<(Vec<u8>, Crc)>>;

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
        }
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let level = self.level;
        let (tx, rx) = mpsc::channel();
        self.pool.spawn(move || {
            let _ = tx.send(deflate_chunk(&data, level, last));
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
        let (out, crc) = rx
            .recv()
            .map_err(|_| io::Error::other("gzip worker thread went away"))??;
        if !self.header_written {
            self.inner.write_all(&HEADER)?;
            self.header_written = true;
        }
        self.inner.write_all(&out)?;
        self.crc.combine(&crc);
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.inner)
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

/// Raw-deflates one chunk: a sync flush at the end unless it is the last chunk.
fn deflate_chunk(data: &[u8], level: u32, last: bool) -> io::Result<(Vec<u8>, Crc)> {
    let mut crc = Crc::new();
    crc.update(data);
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
    Ok((out, crc))
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
