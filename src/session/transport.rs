//! The session byte tunnel: a whole HTTP/2 connection carried inside the `Control/Session` RPC.
//!
//! BuildKit reverses the usual roles for sessions (`session/grpchijack/dial.go`, `session/grpc.go`):
//! the CLI opens the bidi `Control/Session` stream, then acts as the HTTP/2 *server* inside it,
//! serving FileSync, Auth, Secrets, Health and friends; the daemon is the HTTP/2 *client*.
//! Every `BytesMessage.data` in either direction is an opaque slice of that one connection's byte
//! stream, with no relation to HTTP/2 frame boundaries.
//!
//! [`TunnelIo`] turns the two halves of the RPC into one `AsyncRead + AsyncWrite` connection;
//! [`connect_lazy`] speaks gRPC over it as the daemon does, [`serve`] answers gRPC on it as the
//! CLI does. Nothing here knows the generated `BytesMessage` type: callers map it to and from
//! bytes.
//!
//! Wiring on the daemon (`daemon/session.rs`): the `Control/Session` handler builds a
//! [`TunnelIo`] from the request stream and an `mpsc` sender and returns the receiver (mapped to
//! `BytesMessage`) as its response stream *at once*; the channel of [`connect_lazy`] sends its
//! first byte only when the daemon first calls into the session. The client's half-close
//! (BuildKit's `Session.Close` after Solve) is watched on the request stream itself, since an
//! idle connection does not read it; it ends the response stream and the session.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tonic::Status;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

/// Most bytes [`TunnelIo`] puts into one outgoing message.
///
/// Each message is one `BytesMessage` of the outer `Control/Session` stream, which the peer
/// decodes under a gRPC limit of 4 MiB (grpc-go and tonic defaults) or 16 MiB (BuildKit's
/// client). A quarter MiB stays far below either; h2 writes about one 16 KiB frame at a time
/// anyway, so the bound only matters for writers that hand over larger buffers.
pub const MAX_MESSAGE_DATA: usize = 256 * 1024;

/// Decode limit for gRPC clients over a session [`Channel`]: BuildKit's daemon accepts up to
/// 16 MiB from a session (`session/grpc.go`, `containerd/defaults`), four times tonic's default.
#[allow(dead_code, reason = "the daemon's session clients use this next")]
pub const MAX_DECODING_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The `:authority` of requests the daemon sends into the tunnel; nothing routes on it over a
/// single connection (BuildKit itself dials `localhost`).
const TUNNEL_URI: &str = "http://session";

/// Failures of the session transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A tunnel carries exactly one connection; once that ends, reconnecting must fail instead
    /// of waiting for a connection that can never come.
    #[error("the session tunnel already carried its one connection")]
    TunnelUsed,
    /// Serving gRPC over the tunnel ended with a connection error.
    #[error("serving gRPC over the session tunnel failed")]
    Serve(#[source] hyper::Error),
}

/// What the reading half has seen of the incoming stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    Ended,
    Failed,
}

/// One connection's bytes over the two halves of a `BytesMessage` stream.
///
/// Reads return the received `data` fields back to back; an incoming stream that ends reads
/// as EOF, one that fails reads as an [`io::ErrorKind::ConnectionAborted`] error carrying the
/// [`Status`]. Each write queues one outgoing message of at most [`MAX_MESSAGE_DATA`] bytes and
/// waits while the channel is full, which is how the peer's flow control reaches the writer.
/// Shutdown ends the outgoing stream (a half-close, as BuildKit's `CloseSend`); the receiver
/// also ends once this value is dropped, provided it held the only sender.
pub struct TunnelIo {
    incoming: BoxStream<'static, Result<Bytes, Status>>,
    /// Received bytes not yet handed to a reader.
    pending: Bytes,
    read_state: ReadState,
    outgoing: PollSender<Vec<u8>>,
}

impl TunnelIo {
    /// Joins the received data fields (`incoming`) and the queue whose items become sent
    /// messages (`outgoing`) into one connection.
    ///
    /// The queue's capacity bounds what waits unsent, at most [`MAX_MESSAGE_DATA`] per slot;
    /// a handful of slots keeps the pipe full, since HTTP/2 flow control limits the rest.
    #[allow(
        dead_code,
        reason = "the daemon's Control/Session handler wires this up next"
    )]
    pub fn new<S, B>(incoming: S, outgoing: mpsc::Sender<Vec<u8>>) -> Self
    where
        S: Stream<Item = Result<B, Status>> + Send + 'static,
        B: Into<Bytes> + 'static,
    {
        Self {
            incoming: incoming.map_ok(Into::into).boxed(),
            pending: Bytes::new(),
            read_state: ReadState::Open,
            outgoing: PollSender::new(outgoing),
        }
    }
}

impl std::fmt::Debug for TunnelIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelIo")
            .field("pending", &self.pending.len())
            .field("read_state", &self.read_state)
            .field("outgoing_closed", &self.outgoing.is_closed())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Empty messages are legal on the wire and must not read as EOF, hence the loop.
        while this.pending.is_empty() {
            match this.read_state {
                ReadState::Open => {}
                ReadState::Ended => return Poll::Ready(Ok(())),
                // The status went to the first reader; later reads must not look like a clean EOF.
                ReadState::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the session stream failed earlier",
                    )));
                }
            }
            match ready!(this.incoming.poll_next_unpin(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(status)) => {
                    this.read_state = ReadState::Failed;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        status,
                    )));
                }
                None => this.read_state = ReadState::Ended,
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// h2 hands a frame header and its payload as separate slices; taking both into one
    /// message halves the message count compared with one message per slice.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if ready!(this.outgoing.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(outgoing_closed()));
        }
        let len = total.min(MAX_MESSAGE_DATA);
        let mut message = Vec::with_capacity(len);
        for buf in bufs {
            let take = buf.len().min(len - message.len());
            message.extend_from_slice(&buf[..take]);
            if message.len() == len {
                break;
            }
        }
        match this.outgoing.send_item(message) {
            Ok(()) => Poll::Ready(Ok(len)),
            Err(_) => Poll::Ready(Err(outgoing_closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Every write already sits in the outgoing queue; nothing is held back here.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().outgoing.close();
        Poll::Ready(Ok(()))
    }
}

fn outgoing_closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the session stream no longer accepts data",
    )
}

/// Hands out the tunnel to tonic's first connection attempt and refuses every later one.
///
/// tonic reconnects a [`Channel`] whose connection ended; a tunnel cannot be redialled, so the
/// refusal turns calls after the end into prompt errors rather than hangs.
struct TunnelConnector<I> {
    io: Option<I>,
}

impl<I> Service<Uri> for TunnelConnector<I> {
    type Response = TokioIo<I>;
    type Error = TransportError;
    type Future = std::future::Ready<Result<TokioIo<I>, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        std::future::ready(
            self.io
                .take()
                .map(TokioIo::new)
                .ok_or(TransportError::TunnelUsed),
        )
    }
}

/// Opens a gRPC client channel over `io`, as the daemon does on a session: HTTP/2 with prior
/// knowledge. The connection starts (client preface, SETTINGS) only with the first call, as
/// grpc-go's channels start idle: a session the client opens and closes again without the
/// daemon calling into it sees no byte from the daemon (BuildKit's `conn.Close` would feed
/// such bytes to its HTTP/2 server as stale buffers, a PROTOCOL_ERROR).
///
/// The connection lives as long as the tunnel, not as long as the [`Channel`]: when the peer
/// ends its stream, in-flight calls fail and later calls fail with `Unavailable`; dropping every
/// clone of the channel closes the connection and so ends our outgoing stream. Clients built on
/// it should raise their decode limit to [`MAX_DECODING_MESSAGE_SIZE`] and keep each message
/// they send under 4 MiB, the CLI session server's grpc-go default.
pub fn connect_lazy<I>(io: I) -> Channel
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Endpoint::from_static(TUNNEL_URI)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_with_connector_lazy(TunnelConnector { io: Some(io) })
}

/// Receive window of each call on the connections sessions travel: the daemon's listeners,
/// the CLI's connection to a daemon, and both ends of the connection inside a session
/// ([`connect_lazy`], [`serve`]). hyper's server default.
///
/// Sessions carry one small message per file (FileSync's stat, request and end-of-file
/// packets, each its own DATA frame inside the tunnel and, as grpc-go sends them, outside it
/// too), and h2 closes a connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames") once the
/// small DATA frames waiting unread in it cost more than half its connection window, each
/// frame of `n < 256` bytes costing `256 - n`. With hyper's defaults (a server's connection
/// window the size of its stream window) a reader that fell behind by a few thousand messages
/// lost the connection: buildx's builds of big contexts failed so. hyper exposes no setting of
/// that allowance, so the connection window is made large against the stream windows: a whole
/// stream window of the mix a context sends (a stat packet of some 60 bytes per file besides
/// its 10-byte end-of-file packet) costs about 5 MiB of the 32 allowed, and even one of
/// nothing but 10-byte frames (25 MiB) fits.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// Receive window of a whole connection (see [`STREAM_WINDOW`]). It bounds what a peer may
/// have in flight, not what is allocated: buffers grow only as unread data waits.
pub const CONNECTION_WINDOW: u32 = 64 << 20;

/// Serves `routes` over `io` as the HTTP/2 server, as the CLI does on a session, until the
/// connection ends: the peer closes it or the incoming stream ends.
#[allow(dead_code, reason = "our own session client wires this up next")]
pub async fn serve<I>(io: I, routes: Routes) -> Result<(), TransportError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_with_shutdown(io, routes, std::future::pending()).await
}

/// [`serve`], but once `shutdown` completes the server sends GOAWAY, lets calls in flight
/// finish, and closes the connection.
#[allow(dead_code, reason = "our own session client wires this up next")]
pub async fn serve_with_shutdown<I, F>(
    io: I,
    routes: Routes,
    shutdown: F,
) -> Result<(), TransportError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()>,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // hyper panics on keep-alive settings without a timer; set one so later tuning is safe.
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let conn =
        builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(routes.prepare()));
    let mut conn = pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result.map_err(TransportError::Serve),
        () = shutdown => conn.as_mut().graceful_shutdown(),
    }
    conn.await.map_err(TransportError::Serve)
}

#[cfg(test)]
mod tests;
