//! `moby.upload.v1.Upload/Pull`: a context read from standard input (`memobuild build --addr
//! … -`, as `docker buildx build -`), offered to the daemon as
//! `http://buildkit-session/<id>` and streamed when it pulls that path (the call's `urlpath`
//! metadata). The bytes were kept in a temporary file when the build started.

use std::path::PathBuf;
use std::sync::Arc;

use memobuild_proto::upload::BytesMessage;
use memobuild_proto::upload::upload_server::Upload as UploadApi;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// The method the service serves.
pub const PULL: &str = "/moby.upload.v1.Upload/Pull";

/// Bytes per message: well under the 16 MiB gRPC limit both sides set.
const CHUNK: usize = 1 << 20;

/// One upload, as the daemon is told of it.
#[derive(Debug, Clone)]
pub struct Offered {
    /// The path of its URL (`/<id>`).
    pub path: String,
    /// The file holding it.
    pub file: Arc<tempfile::TempPath>,
}

impl PartialEq for Offered {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.file.to_path_buf() == other.file.to_path_buf()
    }
}

impl Eq for Offered {}

/// Serves one upload.
#[derive(Debug, Clone)]
pub struct UploadService {
    offered: Offered,
}

impl UploadService {
    /// Serves `offered`.
    pub fn new(offered: Offered) -> Self {
        UploadService { offered }
    }
}

#[tonic::async_trait]
impl UploadApi for UploadService {
    async fn pull(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<BoxStream<BytesMessage>>, Status> {
        let path = request
            .metadata()
            .get("urlpath")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if path != self.offered.path {
            return Err(Status::not_found(format!("no upload at `{path}`")));
        }
        let file: PathBuf = self.offered.file.to_path_buf();
        let mut f = tokio::fs::File::open(&file)
            .await
            .map_err(|e| Status::internal(format!("reading the upload: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match f.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("reading the upload: {e}"))))
                            .await;
                        return;
                    }
                };
                let message = BytesMessage {
                    data: buf[..n].to_vec(),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
