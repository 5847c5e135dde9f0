//! The tunnel end to end: a real tonic server on one [`TunnelIo`], a real tonic client on the
//! other, joined in memory by relays that count what crosses and can cut either direction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_prost::ProstCodec;

use crate::session::transport::{
    MAX_DECODING_MESSAGE_SIZE, MAX_MESSAGE_DATA, TransportError, TunnelConnector, TunnelIo,
    connect_lazy, serve, serve_with_shutdown,
};

/// Turns a hang into a test failure.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

fn receiver_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// What crossed the tunnel, seen by the relays.
#[derive(Default)]
struct Traffic {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    largest: AtomicUsize,
}

/// Both ends of an in-memory session tunnel.
struct Tunnel {
    /// The daemon's end: the HTTP/2 client.
    daemon: TunnelIo,
    /// The CLI's end: the HTTP/2 server.
    cli: TunnelIo,
    wire: Wire,
}

/// The middle of a tunnel, where the `Control/Session` RPC would be.
struct Wire {
    traffic: Arc<Traffic>,
    /// Cancelling ends what the daemon receives, as the CLI's `CloseSend` would.
    cli_to_daemon: CancellationToken,
    /// Cancelling ends what the CLI receives.
    daemon_to_cli: CancellationToken,
}

/// Forwards one direction's messages, as the `Control/Session` RPC would, until the writer
/// side ends or `cut` fires; either way the reader side then sees the end of its stream.
fn relay(
    mut from: mpsc::Receiver<Vec<u8>>,
    to: mpsc::Sender<Result<Vec<u8>, Status>>,
    cut: CancellationToken,
    traffic: Arc<Traffic>,
) {
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                () = cut.cancelled() => break,
                message = from.recv() => message,
            };
            let Some(message) = message else { break };
            traffic.messages.fetch_add(1, Ordering::Relaxed);
            traffic.bytes.fetch_add(message.len(), Ordering::Relaxed);
            traffic.largest.fetch_max(message.len(), Ordering::Relaxed);
            if to.send(Ok(message)).await.is_err() {
                break;
            }
        }
    });
}

fn tunnel() -> Tunnel {
    let traffic = Arc::new(Traffic::default());
    let (cli_to_daemon, daemon_to_cli) = (CancellationToken::new(), CancellationToken::new());
    let (daemon_out, daemon_sent) = mpsc::channel(8);
    let (cli_out, cli_sent) = mpsc::channel(8);
    let (to_daemon, daemon_in) = mpsc::channel(8);
    let (to_cli, cli_in) = mpsc::channel(8);
    relay(daemon_sent, to_cli, daemon_to_cli.clone(), traffic.clone());
    relay(cli_sent, to_daemon, cli_to_daemon.clone(), traffic.clone());
    Tunnel {
        daemon: TunnelIo::new(receiver_stream(daemon_in), daemon_out),
        cli: TunnelIo::new(receiver_stream(cli_in), cli_out),
        wire: Wire {
            traffic,
            cli_to_daemon,
            daemon_to_cli,
        },
    }
}

const ECHO_SERVICE: &str = "memobuild.test.Echo";
const ECHO_PATH: &str = "/memobuild.test.Echo/Echo";

/// Stands in for `BytesMessage`, the shape of FileSend and SSH forwarding.
#[derive(Clone, PartialEq, prost::Message)]
struct Chunk {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// A bidi service that sends every request message straight back, written the way
/// tonic-build would generate it.
#[derive(Clone)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = ECHO_SERVICE;
}

struct EchoCall;

impl tonic::server::StreamingService<Chunk> for EchoCall {
    type Response = Chunk;
    type ResponseStream = tonic::Streaming<Chunk>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Chunk>>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != ECHO_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Chunk, Chunk>::default());
            Ok(grpc.streaming(EchoCall, request).await)
        })
    }
}

/// The CLI's services: Health (as every BuildKit session has) and Echo.
async fn cli_routes() -> tonic::service::Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(ECHO_SERVICE, ServingStatus::Serving)
        .await;
    tonic::service::Routes::new(health).add_service(EchoServer)
}

/// Serves the CLI's services on the tunnel and connects the daemon's channel to it.
async fn start(
    tunnel: Tunnel,
) -> (
    tonic::transport::Channel,
    JoinHandle<Result<(), TransportError>>,
    Wire,
) {
    let server = tokio::spawn(serve(tunnel.cli, cli_routes().await));
    let channel = connect_lazy(tunnel.daemon);
    (channel, server, tunnel.wire)
}

async fn health(channel: &tonic::transport::Channel, service: &str) -> Result<i32, Status> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status)
}

/// Opens an Echo call fed from the returned sender.
async fn open_echo(
    channel: &tonic::transport::Channel,
) -> Result<(mpsc::Sender<Chunk>, tonic::Streaming<Chunk>), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(4);
    let response = grpc
        .streaming(
            tonic::Request::new(receiver_stream(rx)),
            PathAndQuery::from_static(ECHO_PATH),
            ProstCodec::<Chunk, Chunk>::default(),
        )
        .await?;
    Ok((tx, response.into_inner()))
}

/// Sends `chunks` through Echo while reading the answers, and returns the answers.
async fn echo(
    channel: &tonic::transport::Channel,
    chunks: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, Status> {
    let (tx, responses) = open_echo(channel).await?;
    let sender = tokio::spawn(async move {
        for data in chunks {
            if tx.send(Chunk { data }).await.is_err() {
                break;
            }
        }
    });
    let answers = responses.map_ok(|c| c.data).try_collect().await;
    sender.await.map_err(|e| Status::internal(e.to_string()))?;
    answers
}

/// `count` chunks of `size` bytes, each with its own byte pattern.
fn chunks(count: usize, size: usize, seed: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            (0..size)
                .map(|j| ((i * 31 + j * 7 + seed) % 251) as u8)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn unary_call_crosses_the_tunnel() {
    let (channel, _server, _wire) = start(tunnel()).await;
    let serving = WireStatus::Serving as i32;
    assert_eq!(
        within("check", health(&channel, "")).await.unwrap(),
        serving
    );
    assert_eq!(
        within("check", health(&channel, ECHO_SERVICE))
            .await
            .unwrap(),
        serving
    );
    let missing = within("check", health(&channel, "no.such.Service")).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn bidi_stream_moves_more_than_ten_mib_in_bounded_messages() {
    let (channel, _server, wire) = start(tunnel()).await;
    // 1 MiB messages, 12 each way: past both HTTP/2 windows, so progress needs WINDOW_UPDATEs
    // to cross the tunnel too.
    let sent = chunks(12, 1024 * 1024, 0);
    let answers = within("echo", echo(&channel, sent.clone())).await.unwrap();
    assert!(answers == sent, "echoed bytes differ from the sent ones");
    let crossed = wire.traffic.bytes.load(Ordering::Relaxed);
    assert!(crossed > 24 * 1024 * 1024, "only {crossed} bytes crossed");
    let largest = wire.traffic.largest.load(Ordering::Relaxed);
    assert!(largest <= MAX_MESSAGE_DATA, "a {largest}-byte message");
    assert!(wire.traffic.messages.load(Ordering::Relaxed) > 2 * 12 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_the_tunnel() {
    let (channel, _server, _wire) = start(tunnel()).await;
    let streams = (0..4).map(|seed| {
        let channel = channel.clone();
        async move {
            let sent = chunks(6, 512 * 1024, seed);
            let answers = echo(&channel, sent.clone()).await.unwrap();
            assert!(answers == sent, "stream {seed} got bytes it did not send");
        }
    });
    let checks = (0..64).map(|_| {
        let channel = channel.clone();
        async move {
            let status = health(&channel, "").await.unwrap();
            assert_eq!(status, WireStatus::Serving as i32);
        }
    });
    within(
        "concurrent calls",
        futures::future::join(
            futures::future::join_all(streams),
            futures::future::join_all(checks),
        ),
    )
    .await;
}

#[tokio::test]
async fn dropping_the_channel_ends_serve() {
    let (channel, server, _wire) = start(tunnel()).await;
    within("check", health(&channel, "")).await.unwrap();
    drop(channel);
    within("serve", server).await.unwrap().unwrap();
}

/// BuildKit's end of a session: the CLI half-closes after Solve and the daemon, seeing EOF,
/// ends its side too, so the CLI's drain of the stream finishes.
#[tokio::test]
async fn cli_half_close_ends_the_daemon_side_and_serve() {
    let (channel, server, wire) = start(tunnel()).await;
    within("check", health(&channel, "")).await.unwrap();
    wire.cli_to_daemon.cancel();
    within("serve", server).await.unwrap().unwrap();
    // The tunnel cannot be redialled: the next call fails instead of waiting.
    let after = within("check after close", health(&channel, "")).await;
    assert_eq!(after.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn cutting_the_tunnel_fails_pending_calls() {
    let (channel, server, wire) = start(tunnel()).await;
    let (tx, mut responses) = within("open echo", open_echo(&channel)).await.unwrap();
    tx.send(Chunk {
        data: b"ping".to_vec(),
    })
    .await
    .unwrap();
    let pong = within("first echo", responses.message()).await.unwrap();
    assert_eq!(pong.map(|c| c.data), Some(b"ping".to_vec()));

    wire.cli_to_daemon.cancel();
    wire.daemon_to_cli.cancel();
    let pending = within("pending echo", responses.message()).await;
    assert!(
        pending.is_err(),
        "a cut tunnel ended the call cleanly: {pending:?}"
    );
    let after = within("check after cut", health(&channel, "")).await;
    assert!(after.is_err());
    // The CLI saw its incoming stream end; whether hyper calls that an error does not matter.
    let _ = within("serve", server).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_lets_calls_in_flight_finish() {
    let tunnel = tunnel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_shutdown(tunnel.cli, cli_routes().await, async {
        let _ = stopped.await;
    }));
    let channel = connect_lazy(tunnel.daemon);
    let (tx, mut responses) = within("open echo", open_echo(&channel)).await.unwrap();
    tx.send(Chunk { data: vec![1] }).await.unwrap();
    within("first echo", responses.message()).await.unwrap();

    stop.send(()).unwrap();
    tx.send(Chunk { data: vec![2] }).await.unwrap();
    drop(tx);
    let second = within("second echo", responses.message()).await.unwrap();
    assert_eq!(second.map(|c| c.data), Some(vec![2]));
    assert!(within("end", responses.message()).await.unwrap().is_none());
    within("serve", server).await.unwrap().unwrap();
    assert!(
        within("check after shutdown", health(&channel, ""))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn connector_hands_out_the_tunnel_once() {
    let io = TunnelIo::new(
        stream::empty::<Result<Vec<u8>, Status>>(),
        mpsc::channel(1).0,
    );
    let mut connector = TunnelConnector { io: Some(io) };
    let uri = http::Uri::from_static("http://session");
    assert!(connector.call(uri.clone()).await.is_ok());
    assert!(matches!(
        connector.call(uri).await,
        Err(TransportError::TunnelUsed)
    ));
}

#[tokio::test]
async fn writes_are_split_into_bounded_messages() {
    let (tx, rx) = mpsc::channel(2);
    let mut io = TunnelIo::new(stream::empty::<Result<Vec<u8>, Status>>(), tx);
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 253) as u8).collect();
    let collector = tokio::spawn(receiver_stream(rx).collect::<Vec<_>>());
    io.write_all(&data).await.unwrap();
    io.shutdown().await.unwrap();
    drop(io);
    let messages = within("collect", collector).await.unwrap();
    assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE_DATA));
    assert!(messages.concat() == data, "reassembled bytes differ");
}

#[tokio::test]
async fn vectored_write_becomes_one_message() {
    let (tx, mut rx) = mpsc::channel(2);
    let mut io = TunnelIo::new(stream::empty::<Result<Vec<u8>, Status>>(), tx);
    let header = [0u8; 9];
    let payload = [7u8; 100];
    let slices = [
        std::io::IoSlice::new(&header),
        std::io::IoSlice::new(&payload),
    ];
    assert_eq!(io.write_vectored(&slices).await.unwrap(), 109);
    assert_eq!(rx.recv().await.unwrap().len(), 109);
}

#[tokio::test]
async fn reads_join_messages_and_skip_empty_ones() {
    let incoming = stream::iter(
        [&b"ab"[..], b"", b"cdef"].map(|m| Ok::<_, Status>(bytes::Bytes::from_static(m))),
    );
    let mut io = TunnelIo::new(incoming, mpsc::channel(1).0);
    let mut buf = [0u8; 3];
    assert_eq!(io.read(&mut buf).await.unwrap(), 2);
    assert_eq!(&buf[..2], b"ab");
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"cdef");
    assert_eq!(io.read(&mut buf).await.unwrap(), 0, "EOF stays EOF");
}

#[tokio::test]
async fn incoming_error_reads_as_connection_aborted() {
    let incoming = stream::iter([
        Ok(b"x".to_vec()),
        Err(Status::cancelled("client went away")),
    ]);
    let mut io = TunnelIo::new(incoming, mpsc::channel(1).0);
    let mut buf = [0u8; 8];
    assert_eq!(io.read(&mut buf).await.unwrap(), 1);
    let err = io.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    let status = err.get_ref().and_then(|e| e.downcast_ref::<Status>());
    assert_eq!(status.map(Status::code), Some(Code::Cancelled));
    let again = io.read(&mut buf).await.unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::ConnectionAborted);
}

#[tokio::test]
async fn shutdown_ends_the_outgoing_stream() {
    let (tx, mut rx) = mpsc::channel(4);
    let mut io = TunnelIo::new(stream::pending::<Result<Vec<u8>, Status>>(), tx);
    io.write_all(b"hi").await.unwrap();
    io.shutdown().await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), b"hi");
    assert!(rx.recv().await.is_none());
    let err = io.write_all(b"late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn dropping_the_io_ends_the_outgoing_stream() {
    let (tx, mut rx) = mpsc::channel(4);
    let io = TunnelIo::new(stream::pending::<Result<Vec<u8>, Status>>(), tx);
    drop(io);
    assert!(rx.recv().await.is_none());
}

#[tokio::test]
async fn write_after_the_receiver_is_gone_is_broken_pipe() {
    let (tx, rx) = mpsc::channel(4);
    let mut io = TunnelIo::new(stream::pending::<Result<Vec<u8>, Status>>(), tx);
    drop(rx);
    let err = io.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}
