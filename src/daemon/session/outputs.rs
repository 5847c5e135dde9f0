//! Outputs sent to a session's client with FileSend: the daemon's [`ExportSink`].
//!
//! `FileSend.DiffCopy` is called once per output, with the exporter's index in
//! `buildkit-attachable-exporter-id` and its response keys as `exporter-md-<key>`. A tar
//! stream (oci, docker, tar) goes as `BytesMessage` chunks of at most 3 MiB (the client's
//! session server is a default gRPC server that takes at most 4 MiB per message); a directory
//! (local) goes as fsutil packets with the daemon as the sender, and the client writes it as
//! its own user.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use memobuild_proto::filesync::BytesMessage;
use memobuild_worker::export::sink::{DirTarget, ExportSink, FileTarget};
use memobuild_worker::filesync::{self, Packet, SendOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use super::{Scope, Session};
use crate::session::transport::MAX_DECODING_MESSAGE_SIZE;

/// The gRPC method the client must serve.
const FILE_SEND: &str = "/moby.filesync.v1.FileSend/DiffCopy";

/// Largest chunk of a tar stream in one message (BuildKit sends 3 MiB).
const CHUNK: usize = 3 << 20;

/// The [`ExportSink`] of a session's build.
pub struct SessionSink {
    scope: Arc<Scope>,
}

impl SessionSink {
    /// Outputs sent through `scope`'s own session.
    pub fn new(scope: Arc<Scope>) -> Self {
        SessionSink { scope }
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The metadata of a FileSend call for exporter `index`.
fn metadata(index: usize, response: &BTreeMap<String, String>) -> MetadataMap {
    let mut md = MetadataMap::new();
    if let Ok(v) = AsciiMetadataValue::try_from(index.to_string()) {
        md.insert("buildkit-attachable-exporter-id", v);
    }
    for (k, v) in response {
        let key = format!("exporter-md-{}", k.to_ascii_lowercase());
        if let (Ok(key), Ok(v)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(v.as_str()),
        ) {
            md.insert(key, v);
        }
    }
    md
}

async fn session(scope: &Scope) -> io::Result<Arc<Session>> {
    let s = scope.session(None).await.map_err(other)?;
    if !s.supports(FILE_SEND) {
        return Err(other(s.unsupported(FILE_SEND)));
    }
    Ok(s)
}

impl ExportSink for SessionSink {
    fn file<'a>(
        &'a self,
        index: usize,
        response: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, io::Result<Box<dyn FileTarget>>> {
        async move {
            let session = session(&self.scope).await?;
            let (tx, rx) = mpsc::channel::<BytesMessage>(4);
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            *request.metadata_mut() = metadata(index, response);
            let mut client = memobuild_proto::filesync::file_send_client::FileSendClient::new(
                session.channel.clone(),
            )
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
            let (done_tx, done_rx) = oneshot::channel();
            tokio::spawn(async move {
                let result = async {
                    let mut answers = client.diff_copy(request).await?.into_inner();
                    // The client answers nothing but the end of the stream (or an error).
                    while let Some(m) = answers.next().await {
                        m?;
                    }
                    Ok::<_, tonic::Status>(())
                }
                .await;
                let result = match result {
                    // BuildKit's rule: the client already having it is success.
                    Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(s) => Err(other(format!(
                        "sending the output to the client: {}",
                        s.message()
                    ))),
                    Ok(()) => Ok(()),
                };
                let _ = done_tx.send(result);
            });
            Ok(Box::new(StreamTarget {
                tx: Some(tx),
                buf: Vec::with_capacity(CHUNK),
                done: done_rx,
            }) as Box<dyn FileTarget>)
        }
        .boxed()
    }

    fn directory<'a>(&'a self, index: usize) -> BoxFuture<'a, io::Result<Box<dyn DirTarget>>> {
        async move {
            let session = session(&self.scope).await?;
            let tmp = self.scope.state.tmp();
            std::fs::create_dir_all(&tmp)?;
            let dir = tempfile::Builder::new()
                .prefix("export-")
                .tempdir_in(&tmp)?;
            Ok(Box::new(SessionDir {
                dir,
                index,
                session,
            }) as Box<dyn DirTarget>)
        }
        .boxed()
    }

    fn describe(&self, _index: usize) -> String {
        "the client".into()
    }
}

/// A tar stream to the client, written on a blocking thread.
struct StreamTarget {
    tx: Option<mpsc::Sender<BytesMessage>>,
    buf: Vec<u8>,
    done: oneshot::Receiver<io::Result<()>>,
}

impl StreamTarget {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| other("the output stream is closed"))?;
        tx.blocking_send(BytesMessage { data }).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client stopped taking the output",
            )
        })
    }
}

impl Write for StreamTarget {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileTarget for StreamTarget {
    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        let mut this = *self;
        async move {
            // The last chunk goes from a blocking thread too: `blocking_send` must not run on
            // the runtime's threads.
            let this = tokio::task::spawn_blocking(move || {
                this.send_buf()?;
                this.tx = None;
                Ok::<_, io::Error>(this)
            })
            .await
            .map_err(other)??;
            this.done
                .await
                .map_err(|_| other("the output stream ended unexpectedly"))?
        }
        .boxed()
    }
}

/// A directory built in the daemon's scratch space, then sent to the client as fsutil
/// packets.
struct SessionDir {
    dir: tempfile::TempDir,
    index: usize,
    session: Arc<Session>,
}

impl DirTarget for SessionDir {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn keep_owners(&self) -> bool {
        true
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        let this = *self;
        async move {
            let root: PathBuf = this.dir.path().to_path_buf();
            send_dir(&this.session, this.index, &root).await?;
            drop(this.dir);
            Ok(())
        }
        .boxed()
    }
}

/// Sends `root` to the client as the fsutil sender over `FileSend.DiffCopy`, whose frames are
/// fsutil packets although the method is declared with `BytesMessage`.
async fn send_dir(session: &Session, index: usize, root: &Path) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<Packet>(64);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    *request.metadata_mut() = metadata(index, &BTreeMap::new());
    let mut grpc = tonic::client::Grpc::new(session.channel.clone())
        .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
    let codec = tonic_prost::ProstCodec::<Packet, Packet>::default();
    let path = PathAndQuery::from_static(FILE_SEND);
    // The client answers (and so sends its response headers) only once it has listings to
    // request from: the call is awaited lazily, by the sender reading the first answer,
    // while the listing already goes out.
    let call = async move {
        grpc.ready().await.map_err(|e| {
            tonic::Status::unavailable(format!("the client's session is gone: {e}"))
        })?;
        grpc.streaming(request, path, codec)
            .await
            .map(tonic::Response::into_inner)
    };
    let incoming = Box::pin(
        futures::stream::once(call)
            .map(|r| match r {
                Ok(s) => s.boxed(),
                Err(status) => futures::stream::once(futures::future::ready(Err(status))).boxed(),
            })
            .flatten(),
    );
    filesync::send(root, SendOptions::default(), incoming, tx)
        .await
        .map_err(|e| other(format!("sending the directory to the client: {e}")))?;
    Ok(())
}
