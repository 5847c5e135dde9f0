//! Where exporters write: the seam between an exporter and its caller.
//!
//! `memobuild build --output type=oci,dest=out.tar` writes a file of this machine; the daemon,
//! exporting for `buildctl --output type=oci,dest=out.tar`, streams the same bytes to the client
//! through the session's FileSend service, and the client writes the file. Exporters only see
//! an [`ExportSink`]: a tar stream ([`FileTarget`]) for `oci`, `docker` and `tar` outputs, a
//! directory ([`DirTarget`]) for `local` (and `oci,tar=false` on the host). [`HostSink`] is the
//! host implementation; the daemon's lives with its session code.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;

/// A tar stream being written. Written on a blocking thread; [`FileTarget::commit`] makes it
/// final (the host renames a temporary file, the session waits for the client to have it all).
/// Dropped without a commit, nothing is left under the final name.
pub trait FileTarget: Write + Send {
    /// Finishes the stream.
    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>>;
}

/// A directory being filled. [`DirTarget::commit`] makes it final (the session sends it).
pub trait DirTarget: Send {
    /// Where to write the files: a fresh, empty directory.
    fn path(&self) -> &Path;
    /// Whether files keep the owners they have in the image. BuildKit's client writes a
    /// local export as the user running it; the daemon keeps owners in its copy, because
    /// the client decides.
    fn keep_owners(&self) -> bool;
    /// Finishes the directory.
    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>>;
}

/// Where the outputs of one build go, by exporter index (the position of the exporter in the
/// request, BuildKit's exporter id).
pub trait ExportSink: Send + Sync {
    /// A tar stream for exporter `index`; `response` is what the exporter says about the
    /// image it writes (digest, names), which the session hands to the client beside the bytes.
    fn file<'a>(
        &'a self,
        index: usize,
        response: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, io::Result<Box<dyn FileTarget>>>;

    /// A directory for exporter `index`.
    fn directory<'a>(&'a self, index: usize) -> BoxFuture<'a, io::Result<Box<dyn DirTarget>>>;

    /// Where exporter `index` writes, for messages (`out.tar`, `the client`).
    fn describe(&self, index: usize) -> String;

    /// Whether exporter `index`'s destination still holds the archive named `identity` (what
    /// makes its bytes: format, manifest digest, names), as [`ExportSink::mark`] recorded it
    /// after writing it and unchanged since, so that writing it again can be skipped.
    fn holds(&self, _index: usize, _identity: &str) -> bool {
        false
    }

    /// Records that exporter `index`'s destination now holds the archive `identity`.
    fn mark(&self, _index: usize, _identity: &str) {}
}

/// The extended attribute recording which archive an export left in a file, with the file's
/// inode, size and modification time then: any later change of the file makes it stale.
const EXPORT_XATTR: &str = "user.memobuild.export";

/// What [`EXPORT_XATTR`] holds for `identity` in a file with metadata `md`.
fn export_record(identity: &str, md: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "v1\0{identity}\0{}\0{}\0{}.{}",
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec()
    )
}

/// The directory `dest` is in (`.` for a bare file name).
fn parent_dir(dest: &Path) -> &Path {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Outputs on this machine: exporter `index` writes to `dests[index]`.
#[derive(Debug, Clone, Default)]
pub struct HostSink {
    dests: BTreeMap<usize, PathBuf>,
}

impl HostSink {
    /// No destinations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exporter `index` writes to `dest`.
    pub fn insert(&mut self, index: usize, dest: impl Into<PathBuf>) {
        self.dests.insert(index, dest.into());
    }

    fn dest(&self, index: usize) -> io::Result<PathBuf> {
        self.dests.get(&index).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("output {index} has no destination (dest=)"),
            )
        })
    }
}

impl ExportSink for HostSink {
    fn holds(&self, index: usize, identity: &str) -> bool {
        let Ok(dest) = self.dest(index) else {
            return false;
        };
        let (Ok(md), Ok(Some(recorded))) = (fs::metadata(&dest), xattr::get(&dest, EXPORT_XATTR))
        else {
            return false;
        };
        let held = md.is_file() && recorded == export_record(identity, &md).as_bytes();
        if held {
            // The archive is not written again: partial exports of killed builds beside it go
            // now, as writing it ([`HostFile::create`]) would have removed them.
            crate::state::stale::sweep_dir(parent_dir(&dest), ".memobuild-export-");
        }
        held
    }

    fn mark(&self, index: usize, identity: &str) {
        let Ok(dest) = self.dest(index) else { return };
        // Where extended attributes are not supported the archive is simply written each time.
        if let Ok(md) = fs::metadata(&dest)
            && let Err(e) = xattr::set(&dest, EXPORT_XATTR, export_record(identity, &md).as_bytes())
        {
            tracing::debug!(dest = %dest.display(), error = %e, "cannot record the export");
        }
    }

    fn describe(&self, index: usize) -> String {
        self.dests
            .get(&index)
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "nowhere".into())
    }

    fn file<'a>(
        &'a self,
        index: usize,
        _response: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, io::Result<Box<dyn FileTarget>>> {
        let target = self
            .dest(index)
            .and_then(|dest| HostFile::create(&dest))
            .map(|f| Box::new(f) as Box<dyn FileTarget>);
        futures::future::ready(target).boxed()
    }

    fn directory<'a>(&'a self, index: usize) -> BoxFuture<'a, io::Result<Box<dyn DirTarget>>> {
        let target = self
            .dest(index)
            .and_then(|dest| HostDir::create(&dest))
            .map(|d| Box::new(d) as Box<dyn DirTarget>);
        futures::future::ready(target).boxed()
    }
}

/// A file written to a temporary name beside `dest` and renamed over it on commit, so a
/// failed export never leaves a half-written file under the name the user asked for.
pub struct HostFile {
    dest: PathBuf,
    tmp: tempfile::NamedTempFile,
    out: io::BufWriter<WriteBehind>,
}

/// A file whose written bytes are handed to the kernel's writeback as they come, in
/// [`WRITE_BEHIND`] steps (`sync_file_range`, which does not wait), so that the `fsync` that
/// makes the file durable at the end waits for the last step only: writing a 1 GB archive and
/// putting it on disk overlap instead of adding up.
struct WriteBehind {
    file: fs::File,
    written: u64,
    started: u64,
}

/// Bytes between two starts of writeback.
const WRITE_BEHIND: u64 = 32 << 20;

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITE_BEHIND {
            use std::os::fd::AsRawFd;
            let (Ok(off), Ok(len)) = (
                i64::try_from(self.started),
                i64::try_from(self.written - self.started),
            ) else {
                return Ok(n);
            };
            // SAFETY: sync_file_range only reads its integer arguments; the descriptor is
            // this open file's. A failure (a filesystem without it) leaves it all to fsync.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
            }
            self.started = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl HostFile {
    /// Starts writing `dest`.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = parent_dir(dest);
        // Partial exports of killed builds beside the same destination go first.
        crate::state::stale::sweep_dir(dir, ".memobuild-export-");
        // 0666 less the umask, as any file a program writes (tempfile's default is 0600).
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new()
            .prefix(&crate::state::stale::temp_prefix(".memobuild-export-"))
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| with_path(dest, e))?;
        let file = tmp.as_file().try_clone().map_err(|e| with_path(dest, e))?;
        Ok(HostFile {
            dest: dest.to_path_buf(),
            tmp,
            out: io::BufWriter::with_capacity(
                1 << 20,
                WriteBehind {
                    file,
                    written: 0,
                    started: 0,
                },
            ),
        })
    }

    /// Flushes, syncs and renames into place (blocking).
    pub fn commit_blocking(self) -> io::Result<()> {
        let HostFile { dest, tmp, mut out } = self;
        out.flush().map_err(|e| with_path(&dest, e))?;
        drop(out);
        tmp.as_file().sync_all().map_err(|e| with_path(&dest, e))?;
        tmp.persist(&dest).map_err(|e| with_path(&dest, e.error))?;
        Ok(())
    }
}

impl Write for HostFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl FileTarget for HostFile {
    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        let this = *self;
        async move {
            tokio::task::spawn_blocking(move || this.commit_blocking())
                .await
                .map_err(io::Error::other)?
        }
        .boxed()
    }
}

/// A directory built beside `dest` and moved into place on commit: a rename when `dest` is
/// missing or empty, else entry by entry (replacing same-named entries and keeping the
/// others, as buildx does with `--output .`).
pub struct HostDir {
    dest: PathBuf,
    tmp: tempfile::TempDir,
}

impl HostDir {
    /// Starts filling `dest`.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| with_path(dest, e))?;
        crate::state::stale::sweep_dir(parent, ".memobuild-local-");
        let tmp = tempfile::Builder::new()
            .prefix(&crate::state::stale::temp_prefix(".memobuild-local-"))
            .tempdir_in(parent)
            .map_err(|e| with_path(dest, e))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| with_path(dest, e))?;
        Ok(HostDir {
            dest: dest.to_path_buf(),
            tmp,
        })
    }
}

impl HostDir {
    /// Moves the tree into place (blocking).
    pub fn commit_blocking(self) -> io::Result<()> {
        place(self.tmp.path(), &self.dest).map_err(|e| with_path(&self.dest, e))
    }
}

impl DirTarget for HostDir {
    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn keep_owners(&self) -> bool {
        false
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, io::Result<()>> {
        let this = *self;
        async move {
            tokio::task::spawn_blocking(move || this.commit_blocking())
                .await
                .map_err(io::Error::other)?
        }
        .boxed()
    }
}

/// Moves the finished tree `from` to `dest`: a rename when `dest` is missing or an empty
/// directory, else entry by entry (replacing same-named entries).
fn place(from: &Path, dest: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return fs::rename(from, dest),
        Err(e) => return Err(e),
        Ok(md) if md.is_dir() => {
            if fs::read_dir(dest)?.next().is_none() {
                fs::remove_dir(dest)?;
                return fs::rename(from, dest);
            }
        }
        Ok(_) => {
            return Err(io::Error::other(
                "exists and is not a directory (type=local writes a directory)",
            ));
        }
    }
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = dest.join(entry.file_name());
        crate::fsops::remove_all(&target)?;
        fs::rename(entry.path(), &target)?;
    }
    Ok(())
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("`{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_export_is_held_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out.tar");
        let mut sink = HostSink::new();
        sink.insert(0, &dest);
        assert!(!sink.holds(0, "oci\0sha256:a"), "nothing written yet");

        let mut f = HostFile::create(&dest).expect("create");
        f.write_all(b"archive").expect("write");
        f.commit_blocking().expect("commit");
        assert!(!sink.holds(0, "oci\0sha256:a"), "written but not marked");
        sink.mark(0, "oci\0sha256:a");
        assert!(sink.holds(0, "oci\0sha256:a"));
        assert!(!sink.holds(0, "oci\0sha256:b"), "another archive");
        assert!(!sink.holds(1, "oci\0sha256:a"), "another output");

        // Any change to the file (here: appended bytes) makes the record stale.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&dest)
            .expect("open");
        f.write_all(b"!").expect("append");
        assert!(!sink.holds(0, "oci\0sha256:a"));

        // A file written anew is a new file, whatever it holds.
        sink.mark(0, "oci\0sha256:a");
        assert!(sink.holds(0, "oci\0sha256:a"));
        let mut f = HostFile::create(&dest).expect("create");
        f.write_all(b"archive").expect("write");
        f.commit_blocking().expect("commit");
        assert!(!sink.holds(0, "oci\0sha256:a"));
    }
}
