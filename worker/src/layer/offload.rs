//! Writers that move work off the thread making a layer.
//!
//! A layer's bytes are hashed twice (the tar for its diff ID, the gzip stream for its digest)
//! and written once; SHA-256 is sequential, so on the thread that also reads every file those
//! three passes add up. [`Offload`] runs an inner writer on a thread of its own, fed 1 MiB
//! buffers through a short queue; [`Tee`] gives the same bytes to two writers.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes handed to the thread at once.
const BUF: usize = 1 << 20;
/// Buffers in flight before `write` waits for the thread.
const QUEUE: usize = 4;

/// A writer whose `inner` runs on a thread of its own. [`Offload::finish`] returns it, or the
/// first error it met.
pub struct Offload<W: Write + Send + 'static> {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> Offload<W> {
    /// Starts the thread `name`, writing to `inner`.
    pub fn new(name: &str, mut inner: W) -> io::Result<Self> {
        let (tx, rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for chunk in rx {
                    inner.write_all(&chunk)?;
                }
                Ok(inner)
            })?;
        Ok(Offload {
            buf: Vec::with_capacity(BUF),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(BUF));
        let sent = self.tx.as_ref().map(|tx| tx.send(full));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its error says why.
            _ => Err(self.stop().err().unwrap_or_else(stopped)),
        }
    }

    /// Closes the queue and waits for the thread.
    fn stop(&mut self) -> io::Result<W> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(stopped()),
        }
    }

    /// Writes what is buffered and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.send()?;
        self.stop()
    }
}

fn stopped() -> io::Error {
    io::Error::other("a layer writing thread stopped")
}

impl<W: Write + Send + 'static> Write for Offload<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (BUF - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BUF {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for Offload<W> {
    fn drop(&mut self) {
        // On an error path: let the thread end before the writer it owns is dropped with it.
        let _ = self.stop();
    }
}

/// A writer giving every byte to `a`, then to `b`.
pub struct Tee<A: Write, B: Write> {
    a: A,
    b: B,
}

impl<A: Write, B: Write> Tee<A, B> {
    /// Writes to both `a` and `b`.
    pub fn new(a: A, b: B) -> Self {
        Tee { a, b }
    }

    /// The two writers.
    pub fn into_parts(self) -> (A, B) {
        (self.a, self.b)
    }
}

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.b.write(data)?;
        self.a.write_all(&data[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.a.flush()?;
        self.b.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::HashWriter;

    // Bytes written through an offloaded hasher and a tee reach both sides whole and in order.
    #[test]
    fn offloaded_and_teed_bytes_arrive_in_order() {
        let data: Vec<u8> = (0..5 * BUF + 123).map(|i| (i * 31 % 251) as u8).collect();
        let hashed = Offload::new("test-hash", HashWriter::new(io::sink())).unwrap();
        let mut tee = Tee::new(hashed, Vec::new());
        for piece in data.chunks(7919) {
            tee.write_all(piece).unwrap();
        }
        let (hashed, copy) = tee.into_parts();
        let (_, digest, len) = hashed.finish().unwrap().finish();
        let (_, want, _) = {
            let mut h = HashWriter::new(io::sink());
            h.write_all(&data).unwrap();
            h.finish()
        };
        assert_eq!((digest, len), (want, data.len() as u64));
        assert_eq!(copy, data);
    }

    // An error of the inner writer comes back from a later write or from finish.
    #[test]
    fn the_threads_error_is_returned() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Offload::new("test-full", Full).unwrap();
        let mut err = None;
        for _ in 0..(QUEUE + 3) {
            if let Err(e) = w.write_all(&vec![0u8; BUF]) {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => w.finish().err().expect("an error"),
        };
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
    }
}
