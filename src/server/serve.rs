//! Accepting connections: HTTP/1.1 over hyper, under limits a slow or hostile client cannot
//! exhaust. `axum::serve` has none of them (no header timeout, no connection bound), and about
//! 20,000 connections sending half a request head were enough to take the server's descriptors
//! and lock `/healthz` out.
//!
//! - A request head must arrive within `header_read_timeout` (hyper's own timer). It runs
//!   whenever the server waits for a head, so kept-alive connections idle that long close too.
//! - At most `max_connections` are open. When all are taken, a new connection makes room by
//!   closing *idle* ones (no request running: a client still sending its head, or a kept-alive
//!   one between requests), those that sent something and then nothing for longest first
//!   (`ConnTable::evict_idle`). A flood of half-sent heads therefore only ever displaces
//!   itself, while a new client (a health check, a build), whose request has just arrived, gets
//!   in at once. Only when every connection is running a request does the accept loop wait for
//!   one to end. The accept queue is deep (4096) so that a burst queues rather than drops.
//! - Bodies that stall are cut off by the router ([`crate::server::router`]), not here.
//! - A failed accept (out of descriptors) is logged and retried after a pause, not in a loop.
//!
//! Shutdown stops accepting, closes idle connections and lets running requests finish
//! (hyper-util's graceful shutdown).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

/// Connection limits ([`serve`]).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Time allowed for a request head.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Connections the kernel queues for `accept`. Linux caps it at `net.core.somaxconn` (4096 on
/// current kernels); tokio's default is 1024. Under a flood of connects a full queue drops new
/// SYNs, and a dropped SYN costs its client a 1 s retransmission: a deeper queue keeps a health
/// check waiting in line (milliseconds) rather than dropped.
const LISTEN_BACKLOG: u32 = 4096;

/// Descriptors kept free of connections for the store, the logs and the runtime.
const RESERVED_FDS: u64 = 256;
/// The default connection bound never exceeds this: far more than a team's builds open (a few
/// each), and few enough that their buffers stay in the tens of MiB.
const MAX_DEFAULT_CONNECTIONS: u64 = 4096;

/// The connection bound when none is given: half of the descriptors left after a reserve (a
/// connection can hold a second descriptor, the file it reads or the upload it writes), at
/// most [`MAX_DEFAULT_CONNECTIONS`].
pub fn default_max_connections(fd_limit: u64) -> usize {
    let n = fd_limit.saturating_sub(RESERVED_FDS) / 2;
    n.clamp(16, MAX_DEFAULT_CONNECTIONS) as usize
}

/// Raises the soft limit on open descriptors to the hard one (the default soft limit, often
/// 1024, is far below what a server with thousands of clients needs) and returns the limit in
/// effect.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            1024
        }
    }
}

/// Binds `addr` (`HOST:PORT`; the first address that binds) with a deep accept queue.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As std and tokio do for listeners: a restarted server can take its port back at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address to listen on")
    }))
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for running requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let table = Arc::new(ConnTable::default());
    let clock = Clock::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: the condition lasts a while, so wait rather than spin
                    // (axum::serve does the same).
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A response's head and its (file) body go out as separate writes: with Nagle's
        // algorithm the body waits for the client's delayed ACK of the head, 40 ms a request.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let permit = tokio::select! {
            p = acquire(&slots, limits.max_connections, &table) => p,
            () = &mut shutdown => break,
        };
        let conn = table.open(&clock);
        let svc = hyper::service::service_fn({
            let router = router.clone();
            let conn = conn.clone();
            move |req: Request<Incoming>| {
                let busy = Busy::new(&conn);
                let router = router.clone();
                async move {
                    let resp = router.oneshot(req.map(Body::new)).await?;
                    // The connection stays busy until the response body is sent (or dropped).
                    Ok::<Response, Infallible>(resp.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _ = &busy;
                            frame
                        }))
                    }))
                }
            }
        });
        let io = TokioIo::new(Tracked {
            stream,
            conn: conn.clone(),
            clock,
        });
        let served = graceful.watch(builder.serve_connection(io, svc));
        let table = table.clone();
        tokio::spawn(async move {
            tokio::pin!(served);
            loop {
                tokio::select! {
                    r = &mut served => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                        break;
                    }
                    () = conn.evict.notified() => {
                        // A request may have started since the connection was picked: then it
                        // is not idle any more and stays.
                        if conn.busy.load(Ordering::SeqCst) == 0 {
                            tracing::debug!(%peer, "closed an idle connection to make room");
                            break;
                        }
                    }
                }
            }
            table.close(conn.id);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection slot: at once when one is free, else after closing idle connections, else when
/// a running one ends.
async fn acquire(slots: &Arc<Semaphore>, max: usize, table: &ConnTable) -> OwnedSemaphorePermit {
    loop {
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return p;
        }
        // Several at once: each eviction costs the accept loop a wait for the evicted task,
        // which under a flood of connects lets the kernel's queue overflow.
        let evicted = table.evict_idle(evict_batch(max)) > 0;
        // An evicted connection gives its slot back as soon as its task sees the notice; without
        // one, look again now and then, as connections fall idle without ending.
        let wait = if evicted {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        };
        // The semaphore is never closed, so acquiring only fails by timing out.
        if let Ok(Ok(p)) = tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
            return p;
        }
    }
}

/// How many idle connections to close when all slots are taken: 1/64 of them (64 of 4096).
fn evict_batch(max: usize) -> usize {
    (max / 64).max(1)
}

/// A monotonic clock in microseconds since the server started, cheap to store in an atomic.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn new() -> Clock {
        Clock(Instant::now())
    }

    fn now(self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// One open connection, as the accept loop sees it.
#[derive(Debug, Default)]
struct Conn {
    id: u64,
    /// Requests running on it (0 or 1 for HTTP/1.1).
    busy: AtomicUsize,
    /// When it was accepted ([`Clock`]).
    accepted: u64,
    /// When it last sent bytes ([`Clock`]), 0 until it has.
    last_read: AtomicU64,
    /// Tells its task to close it.
    evict: Notify,
}

/// Marks a connection busy while it lives.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: &Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's socket that notes when the client last sent something.
struct Tracked {
    stream: TcpStream,
    conn: Arc<Conn>,
    clock: Clock,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn
                .last_read
                .store(self.clock.now().max(1), Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The open connections.
#[derive(Debug, Default)]
struct ConnTable {
    inner: Mutex<TableInner>,
}

#[derive(Debug, Default)]
struct TableInner {
    next: u64,
    open: HashMap<u64, Arc<Conn>>,
}

impl ConnTable {
    fn lock(&self) -> MutexGuard<'_, TableInner> {
        // Entries are inserted and removed whole; a panicking holder leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, clock: &Clock) -> Arc<Conn> {
        let mut t = self.lock();
        t.next += 1;
        let conn = Arc::new(Conn {
            id: t.next,
            accepted: clock.now(),
            ..Conn::default()
        });
        t.open.insert(conn.id, conn.clone());
        conn
    }

    fn close(&self, id: u64) {
        self.lock().open.remove(&id);
    }

    /// Tells `n` connections with no request running to close, and takes them out of the table
    /// (so none is picked twice); how many there were. First those that sent something and then
    /// nothing for longest (a half-sent head, a kept-alive client between requests), then those
    /// not read from yet, oldest first: under a burst a connection's task may not have read its
    /// first bytes yet, and a complete request may be waiting in its socket.
    fn evict_idle(&self, n: usize) -> usize {
        let mut t = self.lock();
        let mut idle: Vec<((bool, u64), u64)> = t
            .open
            .values()
            .filter(|c| c.busy.load(Ordering::SeqCst) == 0)
            .map(|c| {
                let key = match c.last_read.load(Ordering::Relaxed) {
                    0 => (true, c.accepted),
                    read => (false, read),
                };
                (key, c.id)
            })
            .collect();
        if idle.len() > n {
            idle.select_nth_unstable(n);
            idle.truncate(n);
        }
        for (_, id) in &idle {
            if let Some(conn) = t.open.remove(id) {
                conn.evict.notify_one();
            }
        }
        idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bound_leaves_room_for_files() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(20_000), 4096);
        assert_eq!(default_max_connections(100), 16);
        assert_eq!(evict_batch(4096), 64);
        assert_eq!(evict_batch(32), 1);
    }

    // Verifies: eviction takes the idle connections (no request running) that sent something and
    // then nothing for longest, then those not read from yet (oldest first), never a busy one: a
    // flood of half-sent heads displaces itself rather than a client whose request has just
    // arrived.
    #[test]
    fn eviction_picks_the_longest_silent_idle_connections() {
        let t = ConnTable::default();
        let clock = Clock::new();
        let conns: Vec<_> = (0..5).map(|_| t.open(&clock)).collect();
        let read_at = |i: usize, v: u64| conns[i].last_read.store(v, Ordering::Relaxed);
        // 0 and 4 have not been read from; of the others, 3 has been silent longest.
        read_at(1, 200);
        read_at(2, 300);
        read_at(3, 100);
        let _busy = Busy::new(&conns[1]);
        let left = |t: &ConnTable| {
            let mut ids: Vec<u64> = t.lock().open.keys().copied().collect();
            ids.sort();
            ids
        };
        let ids = |i: &[usize]| i.iter().map(|&i| conns[i].id).collect::<Vec<_>>();
        assert_eq!(t.evict_idle(1), 1);
        assert_eq!(left(&t), ids(&[0, 1, 2, 4]));
        assert_eq!(t.evict_idle(1), 1);
        assert_eq!(left(&t), ids(&[0, 1, 4]), "2 before the unread ones");
        assert_eq!(t.evict_idle(1), 1);
        assert_eq!(left(&t), ids(&[1, 4]), "then the oldest unread");
        assert_eq!(t.evict_idle(5), 1, "only 4 is idle");
        assert_eq!(t.evict_idle(5), 0, "every connection is busy");
    }
}
