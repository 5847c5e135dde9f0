//! Content store: streaming writes, existence checks, reads.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::{Containerd, Error, Result};

/// Largest chunk sent in one `Write` message.
const CHUNK: usize = 1 << 20;

impl Containerd {
    /// Streams a blob of `size` bytes with digest `digest` from `reader` into the content store.
    ///
    /// Uses a fresh ingest ref per call, so concurrent writers of the same blob do not block each other;
    /// containerd verifies size and digest at commit. A blob that already exists is not an error (the
    /// reader is then not consumed).
    pub async fn write_blob<R>(&self, digest: &str, size: u64, mut reader: R) -> Result<()>
    where
        R: AsyncRead + Unpin,
    {
        let total = i64::try_from(size).map_err(|_| Error::BlobSize {
            digest: digest.to_owned(),
            expected: size,
            actual: 0,
        })?;
        let ingest_ref = format!("memobuild-{}-{}", digest, uuid::Uuid::new_v4().simple());
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let rpc_err = |s: tonic::Status| Error::rpc("content write", digest, s);

        // The first message opens the ingest; containerd answers AlreadyExists at once if the
        // expected digest is already committed.
        let open = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: ingest_ref.clone(),
            total,
            expected: digest.to_owned(),
            ..Default::default()
        };
        // The receiver is alive (held by `rx` below), so this send cannot fail.
        let _ = tx.send(open).await;
        let call = ContentClient::new(self.channel())
            .write(self.request(receiver_stream(rx)))
            .await;
        let mut responses = match call {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(rpc_err(s)),
        };

        let status = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(rpc_err(tonic::Status::unknown(
                    "stream closed before the first reply",
                )));
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(rpc_err(s)),
        };
        // A fresh ref normally starts at 0. When the blob already exists in another namespace,
        // containerd shares it and reports the ingest as complete (offset == total): then we
        // only commit. Any other offset is skipped in the reader, as containerd's `content.Copy`.
        let mut offset = status.offset;
        let start = u64::try_from(offset).unwrap_or(0).min(size);
        if start > 0 {
            let skipped = tokio::io::copy(&mut (&mut reader).take(start), &mut tokio::io::sink())
                .await
                .map_err(|source| Error::BlobRead {
                    digest: digest.to_owned(),
                    source,
                })?;
            if skipped != start {
                return Err(Error::BlobSize {
                    digest: digest.to_owned(),
                    expected: size,
                    actual: skipped,
                });
            }
        }

        let mut buf = vec![0u8; CHUNK];
        let mut written: u64 = start;
        loop {
            let n = read_full(&mut reader, &mut buf)
                .await
                .map_err(|source| Error::BlobRead {
                    digest: digest.to_owned(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > size {
                return Err(Error::BlobSize {
                    digest: digest.to_owned(),
                    expected: size,
                    actual: written,
                });
            }
            let req = WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: ingest_ref.clone(),
                total,
                offset,
                data: buf[..n].to_vec(),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                // The server closed the stream; its error comes on the response side.
                break;
            }
            match responses.message().await {
                Ok(Some(r)) => offset = r.offset,
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(rpc_err(s)),
            }
        }
        if written != size {
            return Err(Error::BlobSize {
                digest: digest.to_owned(),
                expected: size,
                actual: written,
            });
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: ingest_ref.clone(),
            total,
            offset,
            expected: digest.to_owned(),
            ..Default::default()
        };
        let _ = tx.send(commit).await;
        match responses.message().await {
            Ok(Some(r)) if r.digest.is_empty() || r.digest == digest => Ok(()),
            Ok(Some(r)) => Err(rpc_err(tonic::Status::data_loss(format!(
                "committed as `{}`",
                r.digest
            )))),
            Ok(None) => Err(rpc_err(tonic::Status::unknown(
                "stream closed before the commit reply",
            ))),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(rpc_err(s)),
        }
    }

    /// Metadata of a blob, or `None` when the content store does not have it.
    pub async fn blob_info(&self, digest: &str) -> Result<Option<Info>> {
        let res = ContentClient::new(self.channel())
            .info(self.request(InfoRequest {
                digest: digest.to_owned(),
            }))
            .await;
        match res {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::rpc("content info", digest, s)),
        }
    }

    /// Whether the content store has a committed blob with this digest.
    pub async fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.blob_info(digest).await?.is_some())
    }

    /// Whether the content store has this blob, after adding it to the client's lease (when it
    /// has one). `Info` alone does not protect a blob: one that exists only under another
    /// build's lease, or that nothing references any more, could be collected between this
    /// check and its use. The lease holds the digest whether or not the blob exists yet.
    pub async fn has_blob_leased(&self, digest: &str) -> Result<bool> {
        self.lease_resource(digest, "content".to_owned()).await?;
        self.has_blob(digest).await
    }

    /// Adds (or overwrites) labels on a committed blob, e.g. [`super::gc_root_labels`].
    pub async fn label_blob(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let res = ContentClient::new(self.channel())
            .update(self.request(UpdateRequest {
                info: Some(Info {
                    digest: digest.to_owned(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Err(Error::BlobNotFound {
                digest: digest.to_owned(),
            }),
            Err(s) => Err(Error::rpc("content update", digest, s)),
        }
    }

    /// Reads a whole blob into memory (meant for manifests and configs, not layers).
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let res = ContentClient::new(self.channel())
            .read(self.request(ReadContentRequest {
                digest: digest.to_owned(),
                offset: 0,
                size: 0,
            }))
            .await;
        let not_found = || Error::BlobNotFound {
            digest: digest.to_owned(),
        };
        let mut stream = match res {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Err(not_found()),
            Err(s) => return Err(Error::rpc("content read", digest, s)),
        };
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    let expected = out.len() as i64;
                    if chunk.offset != expected {
                        return Err(Error::BlobStream {
                            digest: digest.to_owned(),
                            expected,
                            got: chunk.offset,
                        });
                    }
                    out.extend_from_slice(&chunk.data);
                }
                Ok(None) => return Ok(out),
                Err(s) if s.code() == tonic::Code::NotFound => return Err(not_found()),
                Err(s) => return Err(Error::rpc("content read", digest, s)),
            }
        }
    }
}

/// Reads until `buf` is full or the reader is at EOF; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Adapts an mpsc receiver into the request stream of a client-streaming call.
pub(crate) fn receiver_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}
