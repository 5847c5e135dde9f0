//! Pulling a base image: registry → local blob store → committed overlayfs snapshots named by
//! chain ID.
//!
//! Every layer blob is kept in the local [`BlobStore`] (the exporter needs the compressed bytes of
//! base layers). An image's first layer (no parent: no whiteouts to turn into overlay ones) is
//! unpacked into its snapshot by MemoBuild itself from that copy, as containerd's applier would.
//! The layers above are also written to containerd's content store, under the lease only:
//! `Diff.Apply` reads them from there, and the local copy can always refill it. The
//! committed chain snapshots get `containerd.io/gc.root` labels, so they outlive the lease and serve
//! later builds as a cache; the active snapshots used while unpacking live only under the lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use sha2::Digest as _;

use crate::blobs::{BlobError, BlobStore};
use crate::containerd::{self, Containerd};
use crate::registry::{self, Descriptor, Platform, Registry};

/// One layer of a pulled image: blob digest, diff ID, size, media type.
pub use crate::layer::LayerBlob as Layer;

/// Blobs downloaded at the same time by one pull.
const PARALLEL_DOWNLOADS: usize = 3;
/// Expiry of the lease a pull creates when the caller gave none.
const PULL_LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// containerd's label for the uncompressed digest of a layer blob.
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Errors from pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// Talking to containerd failed.
    #[error(transparent)]
    Containerd(#[from] containerd::Error),
    /// The local blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Unpacking a layer into its snapshot failed.
    #[error("`{reference}`: unpacking layer `{digest}`: {source}")]
    Unpack {
        /// Normalised reference.
        reference: String,
        /// Layer digest.
        digest: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing or reading a layer in the local blob store failed.
    #[error("`{reference}`: storing layer `{digest}` locally: {source}")]
    LocalBlob {
        /// Normalised reference.
        reference: String,
        /// Layer digest.
        digest: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The image config does not parse (or lacks `rootfs`).
    #[error("`{reference}`: invalid image config: {reason}")]
    InvalidConfig {
        /// Normalised reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The manifest and the config disagree on the number of layers.
    #[error(
        "`{reference}`: the manifest lists {layers} layers but the config has {diff_ids} diff IDs"
    )]
    LayerCountMismatch {
        /// Normalised reference.
        reference: String,
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
    /// A layer media type containerd cannot unpack.
    #[error("`{reference}`: layer `{digest}` has unsupported media type `{media_type}`")]
    UnsupportedLayer {
        /// Normalised reference.
        reference: String,
        /// Layer digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// Unpacking a layer produced a different uncompressed digest than the config promises.
    #[error(
        "`{reference}`: layer `{digest}` unpacked to diff ID `{actual}`, the config says `{expected}`"
    )]
    DiffIdMismatch {
        /// Normalised reference.
        reference: String,
        /// Layer digest.
        digest: String,
        /// Diff ID from the config.
        expected: String,
        /// Digest of what was applied.
        actual: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An image unpacked into containerd.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// Normalised reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of the image manifest (of the chosen platform).
    pub manifest_digest: String,
    /// Manifest bytes as served by the registry.
    pub manifest: Vec<u8>,
    /// Config blob bytes.
    pub config: Vec<u8>,
    /// Layers, base first.
    pub layers: Vec<Layer>,
    /// Chain ID of each layer prefix; also the names of the committed snapshots.
    pub chain_ids: Vec<String>,
    /// Snapshot to use as the parent of the image's root filesystem (`None`: no layers).
    pub top_snapshot: Option<String>,
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Chain IDs as the OCI image spec defines them: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(L0|…|Ln) = sha256(ChainID(L0|…|Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => {
                let hash = sha2::Sha256::digest(format!("{parent} {diff_id}").as_bytes());
                format!("sha256:{}", hex::encode(hash))
            }
        };
        out.push(next);
    }
    out
}

/// Per-process locks so concurrent pulls do not download or unpack the same thing twice.
fn lock_for(key: String) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let map = LOCKS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = match map.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(key).or_default().clone()
}

fn scope(ctd: &Containerd) -> String {
    format!(
        "{}|{}|{}",
        ctd.socket_path().display(),
        ctd.namespace(),
        ctd.snapshotter()
    )
}

/// Pulls `reference` for `platform`: every layer blob into `blobs` (skipping ones it has), then the
/// layers whose chain snapshot is missing into containerd's content store and, in order, into
/// committed snapshots named by chain ID. Works under `ctd`'s lease, or a temporary one when it has
/// none. Concurrent pulls in one process share downloads and unpacks (per-digest and per-chain-ID
/// locks).
pub async fn pull(
    ctd: &Containerd,
    reg: &Registry,
    blobs: &BlobStore,
    reference: &str,
    platform: &Platform,
) -> Result<PulledImage> {
    pull_reporting(ctd, reg, blobs, reference, platform, None).await
}

/// Where a pull reports each layer it downloads: the progress of vertex `.1`.
pub type PullProgress<'a> = Option<(&'a crate::progress::Progress, &'a str)>;

/// [`pull`], reporting each layer it downloads as a status of a vertex.
pub async fn pull_reporting(
    ctd: &Containerd,
    reg: &Registry,
    blobs: &BlobStore,
    reference: &str,
    platform: &Platform,
    progress: PullProgress<'_>,
) -> Result<PulledImage> {
    if ctd.lease().is_some() {
        return pull_leased(ctd, reg, blobs, reference, platform, progress).await;
    }
    let lease = ctd.create_lease(PULL_LEASE_EXPIRY).await?;
    let res = match ctd.with_lease(&lease) {
        Ok(leased) => pull_leased(&leased, reg, blobs, reference, platform, progress).await,
        Err(e) => Err(e.into()),
    };
    let deleted = ctd.delete_lease(&lease).await;
    let image = res?;
    deleted?;
    Ok(image)
}

async fn pull_leased(
    ctd: &Containerd,
    reg: &Registry,
    blobs: &BlobStore,
    reference: &str,
    platform: &Platform,
    progress: PullProgress<'_>,
) -> Result<PulledImage> {
    let mut image = fetch(reg, blobs, reference, platform, progress).await?;
    image.top_snapshot = unpack(ctd, blobs, &image.reference, &image.layers).await?;
    Ok(image)
}

/// The first half of a pull, which needs no containerd: resolves `reference` and downloads
/// every layer blob into `blobs`, a few at a time. Nothing is unpacked yet
/// ([`PulledImage::top_snapshot`] is `None`; [`unpack`] makes the snapshots).
pub async fn fetch(
    reg: &Registry,
    blobs: &BlobStore,
    reference: &str,
    platform: &Platform,
    progress: PullProgress<'_>,
) -> Result<PulledImage> {
    let resolved = reg.resolve(reference, platform).await?;
    let reference = resolved.reference.clone();
    let config: ConfigRootfs =
        serde_json::from_slice(&resolved.config).map_err(|e| Error::InvalidConfig {
            reference: reference.clone(),
            reason: e.to_string(),
        })?;
    let diff_ids = config.rootfs.diff_ids;
    if diff_ids.len() != resolved.layers.len() {
        return Err(Error::LayerCountMismatch {
            reference,
            layers: resolved.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    for l in &resolved.layers {
        if !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()) {
            return Err(Error::UnsupportedLayer {
                reference,
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
            });
        }
    }
    let chain = chain_ids(&diff_ids);

    // All blobs locally (the exporter needs base layers), a few downloads at a time.
    // A plain loop, not `.map(|desc| …)`: a closure returning a borrowing future makes the whole
    // pull future fail "Send is not general enough" when callers box it.
    let mut downloads = Vec::with_capacity(resolved.layers.len());
    for desc in &resolved.layers {
        downloads.push(ensure_local_blob(reg, blobs, &reference, desc, progress));
    }
    futures::stream::iter(downloads)
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;

    let layers: Vec<Layer> = resolved
        .layers
        .iter()
        .zip(&diff_ids)
        .map(|(d, diff_id)| Layer {
            digest: d.digest.clone(),
            diff_id: diff_id.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
        })
        .collect();
    Ok(PulledImage {
        reference,
        manifest_digest: resolved.manifest_digest,
        manifest: resolved.manifest,
        config: resolved.config,
        layers,
        top_snapshot: None,
        chain_ids: chain,
    })
}

/// Makes sure committed snapshots named by chain ID exist for `layers` (all of whose blobs are in
/// `blobs`), unpacking only the missing tail, and returns the top one (`None`: no layers).
/// `what` names the image or vertex in errors.
pub async fn unpack(
    ctd: &Containerd,
    blobs: &BlobStore,
    what: &str,
    layers: &[Layer],
) -> Result<Option<String>> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let chain = chain_ids(&diff_ids);
    // Snapshots are committed in order, so the first missing chain ID marks where to start.
    // Each snapshot found is added to the lease first, so nothing collects it (or, through
    // it, its parents) while this build uses it.
    let mut first_missing = chain.len();
    for (i, id) in chain.iter().enumerate().rev() {
        if let Some(info) = ctd.stat_leased(id).await? {
            if i + 1 == chain.len() {
                touch(ctd, &info).await;
            }
            break;
        }
        first_missing = i;
    }
    for i in first_missing..chain.len() {
        let l = &layers[i];
        let desc = Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
            annotations: Default::default(),
            platform: None,
        };
        let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
        unpack_layer(ctd, blobs, what, &desc, &diff_ids[i], &chain[i], parent).await?;
    }
    Ok(chain.last().cloned())
}
/// Downloads a blob into the local store unless it is there (size and digest verified).
async fn ensure_local_blob(
    reg: &Registry,
    blobs: &BlobStore,
    reference: &str,
    desc: &Descriptor,
    progress: PullProgress<'_>,
) -> Result<()> {
    // Also validates the digest's form before it becomes a file name.
    let path = blobs.path(&desc.digest)?;
    let lock = lock_for(format!("local|{}", path.display()));
    let _held = lock.lock().await;
    if path.is_file() {
        return Ok(());
    }
    let local_err = |source| Error::LocalBlob {
        reference: reference.to_owned(),
        digest: desc.digest.clone(),
        source,
    };
    // As BuildKit's pull progress: one status per layer, by digest, with its size.
    let report = |current: u64, completed: bool| {
        if let Some((p, vertex)) = progress {
            p.send(crate::progress::ProgressEvent::Status {
                digest: vertex.to_owned(),
                id: desc.digest.clone(),
                current,
                total: Some(desc.size),
                completed,
            });
        }
    };
    report(0, false);
    let tmp = blobs.temp()?;
    let file = tmp.as_file().try_clone().map_err(local_err)?;
    let mut file = tokio::fs::File::from_std(file);
    reg.fetch_blob(reference, desc, &mut file).await?;
    report(desc.size, true);
    file.sync_all().await.map_err(local_err)?;
    drop(file);
    let store = blobs.clone();
    let digest = desc.digest.clone();
    tokio::task::spawn_blocking(move || store.commit(tmp, &digest))
        .await
        .map_err(|e| local_err(std::io::Error::other(e)))??;
    Ok(())
}

/// Refreshes the last-used label of a snapshot a build is about to use, when it is older than
/// [`containerd::LAST_USED_REFRESH`] (best effort: only pruning reads it).
async fn touch(ctd: &Containerd, info: &containerd_client::services::v1::snapshots::Info) {
    let now = containerd::unix_now();
    let fresh = info
        .labels
        .get(containerd::LAST_USED_LABEL)
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|t| now.saturating_sub(t) < containerd::LAST_USED_REFRESH.as_secs());
    let rooted = info.labels.contains_key(containerd::GC_ROOT_LABEL);
    // Only MemoBuild's own snapshots carry the label; others are left alone.
    let ours = rooted || info.labels.contains_key(containerd::LAST_USED_LABEL);
    if !ours || (fresh && rooted) {
        return;
    }
    // Used again: a root again, too, if a prune took that away while a build held it.
    let mut set = containerd::snapshot_labels();
    if rooted {
        set.remove(containerd::GC_ROOT_LABEL);
    }
    if let Err(e) = ctd.update_snapshot_labels(&info.name, set, &[]).await {
        tracing::debug!(snapshot = %info.name, error = %e, "cannot refresh the last-used label");
    }
}

/// Copies a layer blob from the local store into containerd's content store (under the lease)
/// unless containerd has it, labelled with its uncompressed digest.
async fn ensure_containerd_blob(
    ctd: &Containerd,
    blobs: &BlobStore,
    reference: &str,
    desc: &Descriptor,
    diff_id: &str,
) -> Result<()> {
    let lock = lock_for(format!("{}|blob|{}", scope(ctd), desc.digest));
    let _held = lock.lock().await;
    if !ctd.has_blob_leased(&desc.digest).await? {
        let path = blobs.path(&desc.digest)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| Error::LocalBlob {
                reference: reference.to_owned(),
                digest: desc.digest.clone(),
                source,
            })?;
        ctd.write_blob(&desc.digest, desc.size, tokio::io::BufReader::new(file))
            .await?;
    }
    let labels = HashMap::from([(UNCOMPRESSED_LABEL.to_owned(), diff_id.to_owned())]);
    ctd.label_blob(&desc.digest, labels).await?;
    Ok(())
}

/// Unpacks one layer on top of `parent` and commits it as `chain_id`, unless that exists.
async fn unpack_layer(
    ctd: &Containerd,
    blobs: &BlobStore,
    reference: &str,
    desc: &Descriptor,
    diff_id: &str,
    chain_id: &str,
    parent: &str,
) -> Result<()> {
    let lock = lock_for(format!("{}|snapshot|{}", scope(ctd), chain_id));
    let _held = lock.lock().await;
    if ctd.stat_leased(chain_id).await?.is_some() {
        return Ok(());
    }
    let key = format!(
        "memobuild-extract-{}-{}",
        uuid::Uuid::new_v4().simple(),
        chain_id
    );
    let mounts = ctd.prepare(&key, parent, HashMap::new()).await?;
    let res = async {
        let applied = if parent.is_empty() {
            apply_here(blobs, reference, desc, &mounts).await?
        } else {
            ensure_containerd_blob(ctd, blobs, reference, desc, diff_id).await?;
            apply_in_containerd(ctd, desc, &mounts).await?
        };
        if applied != diff_id {
            return Err(Error::DiffIdMismatch {
                reference: reference.to_owned(),
                digest: desc.digest.clone(),
                expected: diff_id.to_owned(),
                actual: applied,
            });
        }
        commit(ctd, chain_id, &key).await
    }
    .await;
    if res.is_ok() {
        // The tar of this very blob was just hashed (here, or by containerd from its content
        // store): remember the pair, so that checking a record or an image naming this layer
        // need not decompress it again ([`crate::layer::check`]).
        let (store, digest, diff_id) = (blobs.clone(), desc.digest.clone(), diff_id.to_owned());
        let _ =
            tokio::task::spawn_blocking(move || store.remember_diff_id(&digest, &diff_id)).await;
    }
    if res.is_err() {
        // Committed keys no longer exist; only a failed unpack leaves the active snapshot behind.
        if let Err(e) = ctd.remove(&key).await {
            tracing::warn!(key = %key, error = %e, "cannot remove the unpack snapshot");
        }
    }
    res
}

/// Unpacks a layer with no parent into its snapshot from the blob in the local store, as
/// containerd's applier would (owners, modes, times, xattrs, hard links and device nodes as
/// stored; the snapshot's root left as it is), and returns its diff ID. Such a layer has no
/// layers below for its whiteouts to hide, so no overlay whiteouts are made. The blob is then
/// never copied into containerd's content store, which containerd's applier reads from: a
/// base image's first layer is written once instead of twice, without any round trip.
async fn apply_here(
    blobs: &BlobStore,
    reference: &str,
    desc: &Descriptor,
    mounts: &[containerd::Mount],
) -> Result<String> {
    let (store, digest, mounts) = (blobs.clone(), desc.digest.clone(), mounts.to_vec());
    let unpack_err = |source| Error::Unpack {
        reference: reference.to_owned(),
        digest: desc.digest.clone(),
        source,
    };
    let applied = tokio::task::spawn_blocking(move || -> Result<std::io::Result<String>> {
        let guard = containerd::MountGuard::mount(&mounts)?;
        let unpacked = (|| {
            let blob = store.open_blob(&digest).map_err(std::io::Error::other)?;
            let mut tree = crate::export::local::Applier::for_snapshot(guard.path());
            let diff_id = tree.apply_hashed(std::io::BufReader::with_capacity(1 << 20, blob))?;
            tree.finish()?;
            Ok(diff_id)
        })();
        guard.unmount()?;
        Ok(unpacked)
    })
    .await
    .map_err(|e| unpack_err(std::io::Error::other(e)))??;
    applied.map_err(unpack_err)
}

/// Has containerd apply a layer (copied into its content store) onto the snapshot `mounts`
/// and returns the diff ID containerd computed.
async fn apply_in_containerd(
    ctd: &Containerd,
    desc: &Descriptor,
    mounts: &[containerd::Mount],
) -> Result<String> {
    let size = i64::try_from(desc.size).unwrap_or(i64::MAX);
    // containerd's applier picks the decompressor from the media type (gzip, zstd or none) and
    // then checks the stream's magic bytes. Docker-style names are given by their OCI name (the
    // same bytes): older containerd releases do not know Docker's `tar.zstd`.
    let media_type = crate::export::mediatypes::oci_layer_type(&desc.media_type);
    let applied = ctd
        .apply(
            mounts,
            &containerd::descriptor(media_type, &desc.digest, size),
        )
        .await?;
    Ok(applied.digest)
}

/// Commits the unpack snapshot `key` as `chain_id`.
async fn commit(ctd: &Containerd, chain_id: &str, key: &str) -> Result<()> {
    match ctd
        .commit(chain_id, key, containerd::snapshot_labels())
        .await
    {
        Ok(()) => Ok(()),
        // Another process committed the same chain ID first: same content, keep theirs.
        Err(containerd::Error::SnapshotExists { .. }) => {
            ctd.remove(key).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(ids[1], ab);
        let abc = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(format!("{ab} {c}").as_bytes()))
        );
        assert_eq!(ids[2], abc);
        assert!(chain_ids(&[]).is_empty());
    }

    /// Compile-time check: the futures callers box (`BoxFuture` is `Send + 'a`) stay boxable.
    #[allow(dead_code)]
    fn futures_are_boxable<'a>(
        ctd: &'a Containerd,
        reg: &'a Registry,
        blobs: &'a BlobStore,
        platform: &'a Platform,
    ) -> futures::future::BoxFuture<'a, ()> {
        use futures::FutureExt;
        async move {
            let _ = pull(ctd, reg, blobs, "busybox", platform).await;
            let _ = ctd.run(containerd::RunRequest::default()).await;
            let _ = reg.resolve("busybox", platform).await;
        }
        .boxed()
    }

    #[test]
    fn chain_id_matches_a_known_value() {
        // Expected value computed independently with `printf '%s' "<a> <b>" | sha256sum`.
        let diff_ids = [
            "sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1".to_owned(),
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef".to_owned(),
        ];
        assert_eq!(
            chain_ids(&diff_ids)[1],
            "sha256:c3191d32a37d7159b2e30830937d2e30268ad6c375a773a8994911a3aba9b93f"
        );
    }
}
