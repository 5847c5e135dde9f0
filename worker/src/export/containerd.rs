//! `type=containerd`: the image straight into containerd's image store, in the namespace the build
//! used, so `ctr -n NAMESPACE run IMAGE` takes it by name with nothing imported.
//!
//! What `ctr images import` would do with our OCI layout, without the tar:
//!
//! 1. every layer blob is copied from the local [`BlobStore`] into the content store unless
//!    containerd has it (labelled `containerd.io/uncompressed` with its diff ID, as containerd's
//!    own unpacker expects);
//! 2. the config and the manifest are written there too; the manifest carries containerd's GC
//!    reference labels (`containerd.io/gc.ref.content.config`, `…l.<i>` per layer), so whatever an
//!    image record reaches is kept once the build's lease is gone;
//! 3. with `unpack`, the chain-ID snapshots are made (usually they exist already: the build ran
//!    on them) and the config is labelled `containerd.io/gc.ref.snapshot.<snapshotter>` with the
//!    top one, as containerd's `Unpack` does, so the image is ready to run;
//! 4. each name gets an image record whose target is the manifest (created, or re-pointed when
//!    the name exists).
//!
//! Everything is written under the build's lease, so nothing is collected between the steps.

use std::collections::HashMap;

use crate::Build;
use crate::blobs::{BlobError, BlobStore};
use crate::containerd::{self, Containerd};
use crate::export::manifest::{Descriptor, ImageManifest};
use crate::image;

/// containerd's label for the uncompressed digest of a layer blob.
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// Prefix of containerd's GC reference labels to other content.
const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Prefix of containerd's GC reference labels to snapshots (followed by `.<snapshotter>`).
const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";

/// Errors of the containerd exporter.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdExportError {
    /// containerd could not be reached (or started).
    #[error("type=containerd: {0}")]
    Unavailable(String),
    /// containerd refused a call.
    #[error("type=containerd: {0}")]
    Containerd(#[from] containerd::Error),
    /// A layer blob is missing from the local blob store.
    #[error("type=containerd: {0}")]
    Blob(#[from] BlobError),
    /// A layer blob could not be read from the local blob store.
    #[error("type=containerd: reading layer `{digest}` from the local blob store: {source}")]
    LocalBlob {
        /// Layer digest.
        digest: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Making the chain-ID snapshots failed (`unpack=true`).
    #[error("type=containerd: unpacking: {0}")]
    Unpack(#[from] image::Error),
    /// No name to give the image.
    #[error("type=containerd needs a name: give name=NAME or -t NAME")]
    NoName,
}

/// What [`import`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The containerd namespace the image records are in.
    pub namespace: String,
    /// The image names (as given: normalised references).
    pub names: Vec<String>,
    /// The top chain-ID snapshot, when unpacked (and the image has layers).
    pub snapshot: Option<String>,
}

/// Stores `img` in the containerd the build uses, in its namespace, under each of `names`
/// (normalised references such as `docker.io/library/app:latest`); with `unpack`, also makes
/// its snapshots.
pub async fn import(
    build: &Build,
    img: &ImageManifest,
    names: &[String],
    unpack: bool,
) -> Result<Imported, ContainerdExportError> {
    let ctd = build
        .containerd()
        .await
        .map_err(|e| ContainerdExportError::Unavailable(e.to_string()))?;
    import_with(ctd, build.blobs(), img, names, unpack).await
}

/// [`import`] with an explicit client (its namespace and lease are used) and blob store.
pub async fn import_with(
    ctd: &Containerd,
    blobs: &BlobStore,
    img: &ImageManifest,
    names: &[String],
    unpack: bool,
) -> Result<Imported, ContainerdExportError> {
    if names.is_empty() {
        return Err(ContainerdExportError::NoName);
    }
    for layer in &img.layers {
        if !ctd.has_blob_leased(&layer.digest).await? {
            let path = blobs.path(&layer.digest)?;
            let file = tokio::fs::File::open(&path).await.map_err(|source| {
                ContainerdExportError::LocalBlob {
                    digest: layer.digest.clone(),
                    source,
                }
            })?;
            ctd.write_blob(
                &layer.digest,
                layer.size,
                tokio::io::BufReader::with_capacity(1 << 20, file),
            )
            .await?;
        }
        ctd.label_blob(
            &layer.digest,
            HashMap::from([(UNCOMPRESSED_LABEL.to_owned(), layer.diff_id.clone())]),
        )
        .await?;
    }

    write_bytes(ctd, &img.config_desc, &img.config).await?;
    let snapshot = if unpack && !img.layers.is_empty() {
        let what = names.first().map(String::as_str).unwrap_or_default();
        let top = image::unpack(ctd, blobs, what, &img.layers).await?;
        if let Some(chain_id) = &top {
            ctd.label_blob(
                &img.config_desc.digest,
                HashMap::from([(
                    format!("{GC_REF_SNAPSHOT}.{}", ctd.snapshotter()),
                    chain_id.clone(),
                )]),
            )
            .await?;
        }
        top
    } else {
        None
    };

    write_bytes(ctd, &img.manifest_desc, &img.manifest).await?;
    ctd.label_blob(&img.manifest_desc.digest, manifest_gc_labels(img))
        .await?;

    let target = to_containerd(&img.manifest_desc);
    for name in names {
        ctd.put_image(name, target.clone(), HashMap::new()).await?;
    }
    Ok(Imported {
        namespace: ctd.namespace().to_owned(),
        names: names.to_vec(),
        snapshot,
    })
}

/// containerd's GC references from a manifest to its config and layers (the labels
/// `ctr images import` and pulls put on a manifest).
pub fn manifest_gc_labels(img: &ImageManifest) -> HashMap<String, String> {
    let mut labels = HashMap::from([(
        format!("{GC_REF_CONTENT}.config"),
        img.config_desc.digest.clone(),
    )]);
    for (i, l) in img.layers.iter().enumerate() {
        labels.insert(format!("{GC_REF_CONTENT}.l.{i}"), l.digest.clone());
    }
    labels
}

async fn write_bytes(
    ctd: &Containerd,
    desc: &Descriptor,
    bytes: &[u8],
) -> Result<(), ContainerdExportError> {
    ctd.write_blob(&desc.digest, bytes.len() as u64, bytes)
        .await?;
    Ok(())
}

fn to_containerd(d: &Descriptor) -> containerd::Descriptor {
    containerd::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerBlob;

    #[test]
    fn manifest_labels_reference_config_and_every_layer_in_order() {
        let layer = |d: &str| LayerBlob {
            digest: d.into(),
            diff_id: format!("{d}-diff"),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        };
        let img = crate::export::assemble(b"{}", &[layer("sha256:aa"), layer("sha256:bb")])
            .expect("assemble");
        let labels = manifest_gc_labels(&img);
        assert_eq!(labels.len(), 3);
        assert_eq!(
            labels["containerd.io/gc.ref.content.config"],
            img.config_desc.digest
        );
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], "sha256:aa");
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], "sha256:bb");
    }
}
