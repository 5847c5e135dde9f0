//! `type=image,push=true`: an assembled image pushed to a registry by [`Pusher`].

use std::sync::Arc;

use crate::blobs::BlobStore;
use crate::export::{ExportError, ImageManifest};
use crate::registry::push::{BlobData, PushBlob, PushError, PushedImage, Pusher};

/// Errors of a push export.
#[derive(Debug, thiserror::Error)]
pub enum PushExportError {
    /// A layer the image needs is missing from the local blob store, or corrupt there.
    #[error("pushing `{name}`: layer `{digest}` is missing or corrupt in the local blob store")]
    MissingLayer {
        /// The image name.
        name: String,
        /// The layer digest.
        digest: String,
    },
    /// The blob store failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The registry push failed.
    #[error(transparent)]
    Push(#[from] PushError),
}

/// Pushes `img` (layers from `store`, then config, then manifest) to `name`.
pub async fn push_image(
    pusher: &Pusher,
    store: &BlobStore,
    img: &ImageManifest,
    name: &str,
) -> Result<PushedImage, PushExportError> {
    let mut blobs = Vec::with_capacity(img.layers.len() + 1);
    let mut seen = std::collections::BTreeSet::new();
    for l in &img.layers {
        if !seen.insert(l.digest.clone()) {
            continue;
        }
        // Checks the bytes once (a stamp makes later checks a stat): a corrupt local blob would
        // otherwise only be caught by the registry, as an unhelpful DIGEST_INVALID.
        let (s, d, size) = (store.clone(), l.digest.clone(), l.size);
        let ok = tokio::task::spawn_blocking(move || s.verify(&d, Some(size)))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(PushExportError::MissingLayer {
                name: name.to_owned(),
                digest: l.digest.clone(),
            });
        }
        blobs.push(PushBlob {
            digest: l.digest.clone(),
            size: l.size,
            data: BlobData::File(store.path(&l.digest).map_err(ExportError::from)?),
        });
    }
    blobs.push(PushBlob {
        digest: img.config_desc.digest.clone(),
        size: img.config_desc.size,
        data: BlobData::Bytes(Arc::from(img.config.as_slice())),
    });
    Ok(pusher
        .push(name, &blobs, &img.manifest, &img.manifest_desc.media_type)
        .await?)
}

/// Pushes `img` with its attestation `att` under `name`: the image's manifest and the
/// attestation manifest by digest, then the index of both under the tag, as BuildKit pushes
/// an image with provenance. The result names the index.
pub async fn push_attested(
    pusher: &Pusher,
    store: &BlobStore,
    img: &ImageManifest,
    att: &crate::export::attestation::Attached,
    name: &str,
) -> Result<PushedImage, PushExportError> {
    use crate::export::attestation::EMPTY_CONFIG;
    use crate::export::manifest::MEDIA_TYPE_INDEX;
    let r = crate::registry::normalize_reference(name).map_err(|e| {
        PushExportError::Push(PushError::InvalidReference {
            name: name.to_owned(),
            reason: e.to_string(),
        })
    })?;
    let by_digest = |d: &str| format!("{}/{}@{d}", r.registry(), r.repository());
    let image = push_image(pusher, store, img, &by_digest(&img.manifest_desc.digest)).await?;
    let blobs = [
        PushBlob {
            digest: crate::blobs::sha256_digest(EMPTY_CONFIG),
            size: EMPTY_CONFIG.len() as u64,
            data: BlobData::Bytes(Arc::from(EMPTY_CONFIG)),
        },
        PushBlob {
            digest: att.statement_desc.digest.clone(),
            size: att.statement_desc.size,
            data: BlobData::Bytes(Arc::from(att.statement.as_slice())),
        },
    ];
    let attestation = pusher
        .push(
            &by_digest(&att.manifest_desc.digest),
            &blobs,
            &att.manifest,
            &att.manifest_desc.media_type,
        )
        .await?;
    let mut index = pusher.push(name, &[], &att.index, MEDIA_TYPE_INDEX).await?;
    index.blobs.extend(image.blobs);
    index.blobs.extend(attestation.blobs);
    Ok(index)
}
