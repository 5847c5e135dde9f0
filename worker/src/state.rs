//! The state directory: the one place that knows where MemoBuild keeps what on disk.
//!
//! ```text
//! <root>/
//!   blobs/sha256/<hex>                 layer and config blobs (+ .verified/<hex> stamps,
//!                                      .gzip-chunks/<hex> chunk tables of our layers)
//!   cache/ac/<2 hex>/<key>.json        action records (L2)
//!   cache/stat/<hash of dir>           stat caches of local directories
//!   cache/compression/<2 hex>/<key>    export-time layer conversions
//!   cache/git/<hash of remote>         bare mirrors of git sources
//!   cache-mounts/<id>-<hash>/          `RUN --mount=type=cache` directories
//!   history/<hash of target>.json      last build per target (`--explain`, `memobuild why`)
//!   contexts/<hash of url>/            git URL contexts' work trees
//!   locals/<hash of shared key>/       directories clients synced into the daemon (FileSync)
//!   containerd/                        the embedded containerd's root, state and socket
//!   locks/<2 hex>/<key>                held while a build executes that vertex
//!   tmp/<pid>/                         scratch space of a running process
//! ```
//!
//! Every crate asks a [`StateDir`] for these paths instead of joining them by hand, so the
//! layout is written down once, here, and `cache du`/`prune` (and the daemon's DiskUsage and
//! Prune) walk exactly what builds write.

pub mod stale;
pub mod usage;
mod vertex_lock;

pub use vertex_lock::VertexLock;

use std::path::{Path, PathBuf};

/// The layout of one state directory. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (nothing is created until something is written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store's root (`blobs/`; digests live in `blobs/sha256/`).
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Where blobs of algorithm sha256 are stored.
    pub fn sha256_blobs(&self) -> PathBuf {
        self.blobs().join("sha256")
    }

    /// The action records of the local (L2) cache tier.
    pub fn action_cache(&self) -> PathBuf {
        self.root.join("cache").join("ac")
    }

    /// The stat cache of the local directory `dir` (one file per directory).
    pub fn stat_cache(&self, dir: &Path) -> PathBuf {
        let name = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
        self.root.join("cache").join("stat").join(name.as_str())
    }

    /// The memo of export-time layer conversions (`compression=`).
    pub fn compression_memo(&self) -> PathBuf {
        self.root.join("cache").join("compression")
    }

    /// The last result of each copy, by its shape ([`crate::fsops::reuse::Donors`]).
    pub fn copy_donors(&self) -> PathBuf {
        self.root.join("cache").join("copy-donors")
    }

    /// Recently resolved image references (`registry::resolved`).
    pub fn resolved_images(&self) -> PathBuf {
        self.root.join("cache").join("resolved")
    }

    /// Bare mirrors of git sources.
    pub fn git_mirrors(&self) -> PathBuf {
        self.root.join("cache").join("git")
    }

    /// The directories of `RUN --mount=type=cache`.
    pub fn cache_mounts(&self) -> PathBuf {
        self.root.join("cache-mounts")
    }

    /// The history of the build target named `build_id` (any string identifying it).
    pub fn history(&self, build_id: &str) -> PathBuf {
        self.root.join("history").join(format!(
            "{}.json",
            blake3::hash(build_id.as_bytes()).to_hex()
        ))
    }

    /// The work tree of a git URL context, by a hash of its URL.
    pub fn git_context(&self, url_hash: &str) -> PathBuf {
        self.root.join("contexts").join(url_hash)
    }

    /// The daemon's records of its clients' builds (BuildKit's build history), one file each.
    pub fn build_records(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// Directories clients synced into the daemon, one per shared key.
    pub fn locals(&self) -> PathBuf {
        self.root.join("locals")
    }

    /// The synced copy of a client's local directory, named by its shared key (BuildKit's
    /// `name:sharedkeyhint:session-sharedkey`), so the next build of the same directory sends
    /// only what changed.
    pub fn local(&self, shared_key: &str) -> PathBuf {
        let name = blake3::hash(shared_key.as_bytes()).to_hex();
        self.locals().join(&name.as_str()[..32])
    }

    /// The embedded containerd's directory (root, state, socket, config).
    pub fn embedded_containerd(&self) -> PathBuf {
        self.root.join("containerd")
    }

    /// The lock file of the vertex with MemoBuild key `key`: held while one build executes it,
    /// so that another build of the same state directory (another process, or the daemon's
    /// next job) waits for that result instead of running it again.
    pub fn vertex_lock(&self, key: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("00");
        self.root.join("locks").join(shard).join(key)
    }

    /// Scratch space of this process (private agent sockets, filtered contexts, exports):
    /// `tmp/<pid>/`, so what a killed process left is known to be garbage
    /// ([`stale::sweep_state`]).
    pub fn tmp(&self) -> PathBuf {
        self.tmp_root().join(std::process::id().to_string())
    }

    /// The directory holding every process's scratch space.
    pub fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// Whether process `pid` exists (a process of another user counts).
pub fn process_alive(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let s = StateDir::new("/s");
        assert_eq!(s.sha256_blobs(), Path::new("/s/blobs/sha256"));
        assert_eq!(s.action_cache(), Path::new("/s/cache/ac"));
        assert_eq!(s.embedded_containerd(), Path::new("/s/containerd"));
        assert!(s.stat_cache(Path::new("/ctx")).starts_with("/s/cache/stat"));
        assert_ne!(s.local("context:context:"), s.local("context:context:k"));
        assert!(s.local("x").starts_with("/s/locals"));
        assert_ne!(s.history("a"), s.history("b"));
    }
}
