//! `moby.filesync.v1.FileSend/DiffCopy`: exporters send their output back to us.
//!
//! The call's metadata `buildkit-attachable-exporter-id` names the exporter (its index in
//! the Solve's exporters; absent means 0). What the frames hold depends on that exporter
//! (`session/filesync/filesync.go`): tar-stream exporters (`oci`, `docker`, `tar`) send
//! `BytesMessage` chunks that we write to the output file, while the `local` exporter sends
//! fsutil `Packet`s under the same method (the generated service's types do not apply), with
//! the daemon as sender and us as receiver. This service therefore decodes each call with the
//! codec its exporter needs.
//!
//! A file is written to a temporary name beside `dest` and renamed once the daemon has sent
//! everything, so a failed export never leaves a truncated file under the final name. A
//! directory is received with our own uid and gid (the daemon's owners are not applied), and
//! what it already holds is kept unless the output says `mode=delete`, as buildctl does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use memobuild_proto::filesync::BytesMessage;
use memobuild_proto::fsutil::Packet;
use memobuild_worker::filesync::{self, ReceiveOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tonic::codegen::{BoxFuture, BoxStream, Service, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::client::exporters::Target;
use crate::client::session::outcome_stream;

/// The method path; the service has no other.
pub const DIFF_COPY: &str = "/moby.filesync.v1.FileSend/DiffCopy";
/// Metadata naming the exporter a call belongs to.
const EXPORTER_ID: &str = "buildkit-attachable-exporter-id";
/// Metadata with which a newer daemon says it sends every platform of a local export in one
/// call, the condition for `mode=delete` (which would otherwise delete one platform's files
/// when the next arrives).
const MULTI_PLATFORM: &str = "buildkit-exporter-multi-platform";

/// Where each exporter's output goes, by exporter id.
#[derive(Debug, Clone)]
pub struct FileSendService {
    targets: Arc<BTreeMap<usize, Target>>,
}

impl FileSendService {
    /// Serves `targets` (exporters without one are answered NotFound).
    pub fn new(targets: BTreeMap<usize, Target>) -> Self {
        Self {
            targets: Arc::new(targets),
        }
    }
}

impl NamedService for FileSendService {
    const NAME: &'static str = "moby.filesync.v1.FileSend";
}

/// The exporter id of a call, read as BuildKit's `chooser` reads it: the first value as a
/// decimal integer, 0 when absent or unreadable.
fn exporter_id(headers: &http::HeaderMap) -> usize {
    headers
        .get(EXPORTER_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl<B> Service<http::Request<B>> for FileSendService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != DIFF_COPY {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let id = exporter_id(request.headers());
        let multi_platform = request
            .headers()
            .get_all(MULTI_PLATFORM)
            .iter()
            .any(|v| v.as_bytes() == b"1");
        let target = self.targets.get(&id).cloned();
        Box::pin(async move {
            Ok(match target {
                Some(Target::File(dest)) => {
                    let mut grpc = Grpc::new(ProstCodec::<BytesMessage, BytesMessage>::default());
                    grpc.streaming(TarReceiver { dest }, request).await
                }
                Some(Target::Dir { path, delete }) => {
                    if delete && !multi_platform {
                        return Ok(Status::unknown(
                            "local exporter mode=delete requires a BuildKit daemon with multi-platform local export support",
                        )
                        .into_http());
                    }
                    let mut grpc = Grpc::new(ProstCodec::<Packet, Packet>::default());
                    grpc.streaming(
                        DirReceiver {
                            dest: path,
                            merge: !delete,
                        },
                        request,
                    )
                    .await
                }
                Some(Target::None) | None => {
                    Status::not_found(format!("exporter {id} not found")).into_http()
                }
            })
        })
    }
}

/// Writes one tar stream to its file.
struct TarReceiver {
    dest: PathBuf,
}

impl StreamingService<BytesMessage> for TarReceiver {
    type Response = BytesMessage;
    type ResponseStream = BoxStream<BytesMessage>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<BytesMessage>>) -> Self::Future {
        let dest = self.dest.clone();
        Box::pin(async move {
            let incoming = request.into_inner();
            // The response ends only once the file is in place: the daemon's writer waits
            // for that end before it reports the export done.
            let work = async move {
                write_file(&dest, incoming)
                    .await
                    .map_err(|e| Status::unknown(format!("{e:#}")))
            };
            let stream = futures::stream::once(work)
                .filter_map(|r| std::future::ready(r.err().map(Err)))
                .boxed();
            Ok(Response::new(stream))
        })
    }
}

/// Removes a temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn write_file(dest: &Path, mut incoming: Streaming<BytesMessage>) -> anyhow::Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .with_context(|| format!("output `{}` names no file", dest.display()))?;
    let temp = dir.join(format!(
        ".{}.{}.partial",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    // 0666 less the umask, as Go's os.Create: the output is the user's file.
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(&temp)
        .await
        .with_context(|| format!("creating `{}`", temp.display()))?;
    let mut guard = TempFile(Some(temp.clone()));
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    while let Some(message) = incoming
        .try_next()
        .await
        .context("receiving the exported tar stream")?
    {
        out.write_all(&message.data)
            .await
            .with_context(|| format!("writing `{}`", temp.display()))?;
    }
    out.flush()
        .await
        .with_context(|| format!("writing `{}`", temp.display()))?;
    let file = out.into_inner();
    file.sync_all()
        .await
        .with_context(|| format!("writing `{}`", temp.display()))?;
    drop(file);
    tokio::fs::rename(&temp, dest)
        .await
        .with_context(|| format!("renaming `{}` to `{}`", temp.display(), dest.display()))?;
    guard.0 = None;
    Ok(())
}

/// Receives one local export into its directory.
struct DirReceiver {
    dest: PathBuf,
    merge: bool,
}

/// Packets queued towards the daemon at most.
const QUEUED: usize = 64;

impl StreamingService<Packet> for DirReceiver {
    type Response = Packet;
    type ResponseStream = BoxStream<Packet>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Packet>>) -> Self::Future {
        let (dest, merge) = (self.dest.clone(), self.merge);
        Box::pin(async move {
            // 0700 as buildctl's `MkdirAll(dest, 0700)` for a directory it creates; an
            // existing one keeps its mode.
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dest)
                .await
                .map_err(|e| {
                    Status::unknown(format!(
                        "failed to create synctarget dest dir {}: {e}",
                        dest.display()
                    ))
                })?;
            let options = ReceiveOptions {
                chown: false,
                merge,
                ..ReceiveOptions::default()
            };
            let (tx, rx) = mpsc::channel(QUEUED);
            let incoming = request.into_inner();
            let task =
                tokio::spawn(async move { filesync::receive(&dest, options, incoming, tx).await });
            Ok(Response::new(outcome_stream(rx, task)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_id_as_buildkit_reads_it() {
        let mut h = http::HeaderMap::new();
        assert_eq!(exporter_id(&h), 0);
        h.insert(EXPORTER_ID, http::HeaderValue::from_static("2"));
        assert_eq!(exporter_id(&h), 2);
        h.insert(EXPORTER_ID, http::HeaderValue::from_static("x"));
        assert_eq!(exporter_id(&h), 0);
    }
}
