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

use crate::containerd::{Mount, overlay_upperdir};

/// The directory writes to an active snapshot land in: the overlay upper directory, or for a
/// snapshot without a parent (which the overlayfs snapshotter hands out as a bind mount) the
/// bound directory itself.
pub(crate) fn writable_dir(mounts: &[Mount]) -> Option<PathBuf> {
    overlay_upperdir(mounts).or_else(|| match mounts {
        [m] if m.r#type == "bind" => Some(PathBuf::from(&m.source)),
        _ => None,
    })
}
