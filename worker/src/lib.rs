//! MemoBuild's worker: it takes a BuildKit LLB `Definition`, executes it on containerd, and
//! exports the result as an OCI image.
//!
//! ```text
//! Definition ─ solver::load ─> vertex graph ─ solver ─> snapshots + layers ─ export ─> OCI image
//! ```
//!
//! An [`Engine`] is what outlives builds (containerd, cache tiers, blobs, the [`StateDir`]); a
//! [`Build`] is one build on it, with what it reads from its caller behind the traits of
//! [`caller`] (host directories and files for `memobuild build`, a BuildKit session for the
//! daemon).
//!
//! The worker never parses a Dockerfile: its only input is the Definition (plus the image config
//! the frontend produced beside it, as opaque JSON).
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod blobs;
pub mod build;
pub mod cache;
pub mod caller;
pub mod cleanup;
pub mod containerd;
pub mod emulation;
pub mod engine;
pub mod export;
pub mod filesync;
pub mod fingerprint;
mod followpaths;
pub mod fsops;
pub mod gitignore;
pub mod image;
pub mod layer;
pub mod netns;
mod ops;
pub mod patterns;
pub mod progress;
pub mod registry;
pub mod secrets;
pub mod solver;
pub mod ssh;
pub mod state;
#[cfg(test)]
mod testhttp;
pub mod tls;

use memobuild_proto::pb;

pub use crate::build::Build;
pub use crate::caller::Caller;
pub use crate::engine::{DEFAULT_NAMESPACE, Engine, EngineConfig};
pub use crate::state::StateDir;

use crate::cache::remote::RemoteError;
use crate::registry::Registry;

/// Errors setting up or using a worker outside a solve.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// containerd could not be reached or refused a call.
    #[error(transparent)]
    Containerd(#[from] containerd::Error),
    /// The registry could not be reached or refused a call.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// Pulling an image failed.
    #[error(transparent)]
    Image(#[from] image::Error),
    /// The local blob store failed.
    #[error(transparent)]
    Blob(#[from] blobs::BlobError),
    /// The cache directory failed.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// The remote cache is misconfigured.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A local file operation or a blocking task failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Resolves an image reference to its (index or manifest) digest and config JSON, which is what
/// a frontend pins and reads.
pub async fn resolve_image_config(
    registry: &Registry,
    reference: &str,
    platform: &pb::Platform,
    mode: registry::ResolveMode,
) -> Result<(String, Vec<u8>), WorkerError> {
    let r = registry
        .resolve_with(reference, &to_platform(platform), mode)
        .await?;
    Ok((
        r.index_digest.clone().unwrap_or(r.manifest_digest.clone()),
        r.config,
    ))
}

pub(crate) fn to_platform(p: &pb::Platform) -> registry::Platform {
    registry::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: (!p.variant.is_empty()).then(|| p.variant.clone()),
    }
}
