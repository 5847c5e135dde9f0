//! One module per LLB op kind; each adds a method to the solver.

mod cachemount;
mod diff;
mod exec;
mod file;
mod git;
mod http;
mod merge;
mod mounts;
mod source;

use std::path::PathBuf;

use crate::containerd::{Mount, MountGuard, overlay_upperdir};
use crate::solver::{FsRef, Solve, SolveError};

/// The directory writes to an active snapshot land in: the overlay upper directory, or for a
/// snapshot without a parent (which the overlayfs snapshotter hands out as a bind mount) the
/// bound directory itself.
pub(crate) fn writable_dir(mounts: &[Mount]) -> Option<PathBuf> {
    overlay_upperdir(mounts).or_else(|| match mounts {
        [m] if m.r#type == "bind" => Some(PathBuf::from(&m.source)),
        _ => None,
    })
}

impl Solve {
    /// Mounts a read-only view of `fs` (its snapshot made first if needed). Returns the mount
    /// and the view's snapshot key, which the caller removes after unmounting.
    pub(crate) async fn mount_view(
        &self,
        digest: &str,
        fs: &FsRef,
    ) -> Result<(MountGuard, String), SolveError> {
        let snap = self
            .build
            .ensure_snapshot(&self.name(digest), fs)
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        let key = format!("memobuild-view-{}", uuid::Uuid::new_v4());
        let mounts = self
            .build
            .containerd()
            .await
            .map_err(|e| self.error(digest, e.to_string()))?
            .view(&key, &snap)
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        match MountGuard::mount(&mounts) {
            Ok(g) => Ok((g, key)),
            Err(e) => {
                self.build.remove_snapshot(&key).await;
                Err(self.error(digest, e.to_string()))
            }
        }
    }
}
