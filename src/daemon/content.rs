//! The daemon's read-only content store (`containerd.services.content.v1.Content`), as
//! buildkitd serves one on its main socket: clients read the blobs the build history lists.
//! buildx reads a record's provenance through it for `--metadata-file`
//! (`buildx.build.provenance`) and `docker buildx history inspect`; the store holds exactly
//! the blobs of [`BuildHistory`]'s records, and the service's other calls answer
//! `Unimplemented`.

use std::sync::Arc;

use futures::StreamExt as _;
use memobuild_proto::containerd::services::content::v1::{
    Info, InfoRequest, InfoResponse, ReadContentRequest, ReadContentResponse,
    content_server::Content,
};
use tonic::{Request, Response, Status};

use crate::daemon::Daemon;
use crate::daemon::status::timestamp;

/// Bytes per `ReadContentResponse`.
const CHUNK: usize = 1 << 20;

type BoxStream<T> = futures::stream::BoxStream<'static, Result<T, Status>>;

/// The Content service over the build history's blobs.
pub struct ContentService {
    daemon: Arc<Daemon>,
}

impl ContentService {
    /// The store of `daemon`'s history blobs.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        ContentService { daemon }
    }

    /// The bytes of `digest`, checked against it; `NotFound` when no record lists it.
    async fn read(&self, digest: &str) -> Result<Vec<u8>, Status> {
        let not_found = || Status::not_found(format!("content {digest}: not found"));
        let (path, _) = self.daemon.history.blob(digest).ok_or_else(not_found)?;
        let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
        // A blob changed on disk is not served as the one the record lists.
        if memobuild_worker::blobs::sha256_digest(&bytes) != digest {
            tracing::warn!("`{}` no longer holds {digest}", path.display());
            return Err(Status::data_loss(format!(
                "content {digest}: the daemon's copy changed"
            )));
        }
        Ok(bytes)
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let digest = request.into_inner().digest;
        let (path, size) = self
            .daemon
            .history
            .blob(&digest)
            .ok_or_else(|| Status::not_found(format!("content {digest}: not found")))?;
        let modified = tokio::fs::metadata(&path)
            .await
            .and_then(|m| m.modified())
            .map_err(|_| Status::not_found(format!("content {digest}: not found")))?;
        Ok(Response::new(InfoResponse {
            info: Some(Info {
                digest,
                size,
                created_at: Some(timestamp(modified)),
                updated_at: Some(timestamp(modified)),
                labels: Default::default(),
            }),
        }))
    }

    async fn read(
        &self,
        request: Request<ReadContentRequest>,
    ) -> Result<Response<BoxStream<ReadContentResponse>>, Status> {
        let req = request.into_inner();
        let bytes = ContentService::read(self, &req.digest).await?;
        let start = usize::try_from(req.offset.max(0)).unwrap_or(usize::MAX);
        if start > bytes.len() {
            return Err(Status::out_of_range(format!(
                "content {}: offset {} is past its {} bytes",
                req.digest,
                req.offset,
                bytes.len()
            )));
        }
        let end = match usize::try_from(req.size) {
            Ok(n) if n > 0 => start.saturating_add(n).min(bytes.len()),
            _ => bytes.len(),
        };
        let chunks: Vec<Result<ReadContentResponse, Status>> = bytes[start..end]
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, data)| {
                Ok(ReadContentResponse {
                    offset: i64::try_from(start + i * CHUNK).unwrap_or(i64::MAX),
                    data: data.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(chunks).boxed()))
    }
}
