//! Diff service: unpacking a layer blob from the content store into snapshot mounts.

use std::collections::HashMap;

use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::types::{Descriptor, Mount};

use super::{Containerd, Error, Result};

impl Containerd {
    /// Unpacks the layer `layer` (gzip or plain tar, already in the content store) into `mounts`,
    /// handling OCI whiteouts. Returns the applied descriptor, whose digest is the uncompressed
    /// digest (the diff ID).
    pub async fn apply(&self, mounts: &[Mount], layer: &Descriptor) -> Result<Descriptor> {
        let resp = DiffClient::new(self.channel())
            .apply(self.request(ApplyRequest {
                diff: Some(layer.clone()),
                mounts: mounts.to_vec(),
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => Error::BlobNotFound {
                    digest: layer.digest.clone(),
                },
                _ => Error::rpc("diff apply", &layer.digest, s),
            })?;
        resp.into_inner()
            .applied
            .ok_or_else(|| Error::ApplyNoDescriptor {
                digest: layer.digest.clone(),
            })
    }
}

/// A layer descriptor for [`Containerd::apply`].
pub fn descriptor(media_type: &str, digest: &str, size: i64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_owned(),
        size,
        annotations: HashMap::new(),
    }
}
