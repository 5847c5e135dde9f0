//! Reusing the files an earlier run of the same copy made.
//!
//! When an edit makes a big `COPY` run again, most of what it copies is what its previous run
//! copied, and that run's result is still a committed snapshot. Writing a gigabyte again costs
//! seconds of kernel time; a hard link to the earlier file costs a directory entry. So a copy
//! given a [`Reuse`] does not write a regular file whose bytes, size, owner, mode, mtime and
//! (absent) extended attributes are exactly those of the file at the same path in the earlier
//! result (the *donor*): it records it, and [`Reuse::link`] links the donor's file into the
//! active snapshot's upper directory once the snapshot is unmounted. The layer made from the
//! upper directory is byte for byte the layer a copy would give.
//!
//! Why this is safe:
//! - the contents are compared byte for byte, not trusted from a fingerprint or a time stamp;
//! - a committed snapshot's files are never written in place: overlayfs copies a lower file up
//!   before changing it, and MemoBuild writes only into active snapshots through overlay;
//! - links go into the upper directory after the overlay is unmounted (changing an upper
//!   directory under a mounted overlay is undefined), and only for a copy that is the last
//!   action on its snapshot, so nothing reads the snapshot through the overlay after it;
//! - a path the copy finds already present is copied as always, and a link that finds its path
//!   taken (a later source of the same copy wrote it) leaves it to that source;
//! - the directories a link changes get back the times the copy gave them.
//!
//! What a build can see: a reused file has a link count of 2 or more inside later steps, as
//! BuildKit's own hard-link merges of overlay snapshots give. Layers, images and digests are
//! unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use rayon::prelude::*;

/// A copy's earlier result, and the links it decided on.
#[derive(Debug)]
pub struct Reuse {
    /// Where the copy writes: the mounted active snapshot.
    root: PathBuf,
    /// That snapshot's upper directory, where its own files land.
    upper: PathBuf,
    /// The donor: the earlier result's own directory (the files of its layer only).
    donor: PathBuf,
    /// The donor, open: its files are opened beneath it without following any symbolic link,
    /// so that a link in the donor's tree can never lead to a file outside it.
    donor_dir: OwnedFd,
    /// Paths (relative to the root) to link from the donor, with their sizes.
    deferred: Mutex<Vec<(PathBuf, u64)>>,
}

/// What a copied file will look like: the donor's file must match it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
}

/// What [`Reuse::link`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Linked {
    /// Files linked from the donor.
    pub files: u64,
    /// Their bytes, not written again.
    pub bytes: u64,
}

impl Reuse {
    /// A copy into `root` (mounted, with upper directory `upper`) that may link files of
    /// `donor`.
    pub fn new(root: PathBuf, upper: PathBuf, donor: PathBuf) -> io::Result<Self> {
        let donor_dir = nix::fcntl::open(
            &donor,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(Reuse {
            root,
            upper,
            donor,
            donor_dir,
            deferred: Mutex::new(Vec::new()),
        })
    }

    /// The donor's file at `rel`, if it is a regular file reached through directories only.
    fn open_donor(&self, rel: &Path) -> Option<fs::File> {
        let how = OpenHow::new()
            // Comparing does not touch the donor's access time (the caller is its owner, root).
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOATIME)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        nix::fcntl::openat2(&self.donor_dir, rel, how)
            .ok()
            .map(fs::File::from)
    }

    /// Whether the regular file `src` (to be copied to `target`, which does not exist, as
    /// `expected`) is the donor's file at the same path. If so it is recorded for linking and
    /// the caller writes nothing. Any doubt (an error, an extended attribute, a parent that is
    /// not in the upper directory) answers no.
    pub(crate) fn take(&self, src: &Path, target: &Path, expected: Expected) -> bool {
        let Ok(rel) = target.strip_prefix(&self.root) else {
            return false;
        };
        let Some(donor) = self.open_donor(rel) else {
            return false;
        };
        let Ok(md) = donor.metadata() else {
            return false;
        };
        let found = Expected {
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
            size: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
        };
        if !md.is_file() || found != expected {
            return false;
        }
        // The parent must already be a directory of this snapshot's own, not only of a layer
        // below: the link goes into the upper directory.
        let parent_here = self
            .upper
            .join(rel)
            .parent()
            .and_then(|p| fs::symlink_metadata(p).ok())
            .is_some_and(|m| m.is_dir());
        let donor_xattrs =
            xattr::FileExt::list_xattr(&donor).map_or(true, |mut names| names.next().is_some());
        if !parent_here
            || donor_xattrs
            || has_xattrs(src)
            || !same_bytes(src, donor).unwrap_or(false)
        {
            return false;
        }
        if let Ok(mut d) = self.deferred.lock() {
            d.push((rel.to_path_buf(), md.len()));
            true
        } else {
            false
        }
    }

    /// Links the recorded files into the upper directory. Call once the snapshot is unmounted
    /// and before its layer is made. A path already taken is left as it is; a link that fails
    /// otherwise (the donor file gone, too many links) is a copy of the donor's file.
    pub fn link(self) -> io::Result<Linked> {
        let deferred = self
            .deferred
            .into_inner()
            .map_err(|_| io::Error::other("a copy thread panicked"))?;
        let mut times = BTreeMap::new();
        for (rel, _) in &deferred {
            if let Some(parent) = rel.parent()
                && !times.contains_key(parent)
            {
                let md = fs::symlink_metadata(self.upper.join(parent))?;
                let at = filetime::FileTime::from_last_access_time(&md);
                let mt = filetime::FileTime::from_last_modification_time(&md);
                times.insert(parent.to_path_buf(), (at, mt));
            }
        }
        // Links in different directories do not contend; rayon's pool spreads them.
        let linked = deferred
            .par_iter()
            .map(|(rel, size)| -> io::Result<Linked> {
                let (from, to) = (self.donor.join(rel), self.upper.join(rel));
                match fs::hard_link(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Ok(Linked::default());
                    }
                    Err(_) => copy_with_metadata(&from, &to)?,
                }
                Ok(Linked {
                    files: 1,
                    bytes: *size,
                })
            })
            .try_reduce(Linked::default, |a, b| {
                Ok(Linked {
                    files: a.files + b.files,
                    bytes: a.bytes + b.bytes,
                })
            })?;
        for (dir, (at, mt)) in times {
            filetime::set_symlink_file_times(self.upper.join(dir), at, mt)?;
        }
        Ok(linked)
    }
}

/// Where the last result of each copy is: the snapshot a copy of the same *shape* (its base,
/// its action, its source, but not the source's files) committed last, and its layer's size.
/// One small file per shape under [`crate::state::StateDir::copy_donors`]; a snapshot it names
/// may be gone since (pruned), which the caller finds out and ignores.
#[derive(Debug, Clone)]
pub struct Donors {
    dir: PathBuf,
}

impl Donors {
    /// The index in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Donors { dir }
    }

    /// The shape of a copy: what stays the same when only the files it copies change.
    pub fn shape(base: &str, action: &[u8], source: &str) -> String {
        let mut h = blake3::Hasher::new();
        for part in [
            b"memobuild copy donor v1".as_slice(),
            base.as_bytes(),
            action,
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(source.as_bytes());
        h.finalize().to_hex().to_string()
    }

    /// The snapshot and layer size last recorded for `shape`.
    pub fn lookup(&self, shape: &str) -> Option<(String, u64)> {
        let text = fs::read_to_string(self.dir.join(shape)).ok()?;
        let (snapshot, size) = text.trim().split_once(' ')?;
        Some((snapshot.to_string(), size.parse().ok()?))
    }

    /// Records `snapshot` (its layer `size` bytes) as the last result of `shape`.
    pub fn record(&self, shape: &str, snapshot: &str, size: u64) -> io::Result<()> {
        if self.lookup(shape).is_some_and(|(s, _)| s == snapshot) {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&crate::state::stale::temp_prefix(".tmp-"))
            .tempfile_in(&self.dir)?;
        io::Write::write_all(&mut tmp, format!("{snapshot} {size}\n").as_bytes())?;
        tmp.persist(self.dir.join(shape)).map_err(|e| e.error)?;
        Ok(())
    }
}

fn has_xattrs(path: &Path) -> bool {
    // Unknown counts as present: the copy then does what it always does.
    xattr::list(path).map_or(true, |mut names| names.next().is_some())
}

/// Whether the file `a` has the bytes of `fb` (their sizes are known to be equal).
fn same_bytes(a: &Path, mut fb: fs::File) -> io::Result<bool> {
    const BUF: usize = 128 * 1024;
    thread_local! {
        static BUFS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
            std::cell::RefCell::new((vec![0u8; BUF], vec![0u8; BUF]));
    }
    let mut fa = fs::File::open(a)?;
    BUFS.with(|bufs| {
        let (ba, bb) = &mut *bufs.borrow_mut();
        loop {
            let n = read_full(&mut fa, ba)?;
            let m = read_full(&mut fb, bb)?;
            if n != m || ba[..n] != bb[..m] {
                return Ok(false);
            }
            if n < BUF {
                return Ok(true);
            }
        }
    })
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A copy of `from` at `to` with its owner, mode and times.
fn copy_with_metadata(from: &Path, to: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(from)?;
    fs::copy(from, to)?;
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
    fs::set_permissions(
        to,
        <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(md.mode() & 0o7777),
    )?;
    let mt = filetime::FileTime::from_last_modification_time(&md);
    filetime::set_symlink_file_times(to, mt, mt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsops::{CopyOptions, Owner, copy};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn opts(reuse: Option<Arc<Reuse>>) -> CopyOptions {
        CopyOptions {
            follow_symlink: true,
            dir_copy_contents: true,
            create_dest_path: true,
            source_owner: Some(Owner { uid: 0, gid: 0 }),
            reuse,
            ..CopyOptions::default()
        }
    }

    /// Copies `src` into a new `upper` with `donor` to reuse from, links, and returns both.
    fn copy_reusing(t: &Path, src: &Path, dest: &str, donor: &Path) -> (PathBuf, Linked) {
        // No overlay here: the "mounted root" and the upper directory are the same tree.
        let upper = t.join("upper");
        fs::create_dir(&upper).unwrap();
        let reuse =
            Arc::new(Reuse::new(upper.clone(), upper.clone(), donor.to_path_buf()).unwrap());
        copy(src, ".", &upper, dest, &opts(Some(reuse.clone()))).unwrap();
        let linked = Arc::try_unwrap(reuse).unwrap().link().unwrap();
        (upper, linked)
    }

    /// One tree as a sorted listing of path, mode, owner, size, mtime and bytes.
    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let md = fs::symlink_metadata(&p).unwrap();
                let bytes = if md.is_file() {
                    blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string()
                } else {
                    String::new()
                };
                let rel = p.strip_prefix(root).unwrap();
                // The copy's destination is made when the copy runs: its time is that moment.
                let mtime = if rel == Path::new("app") {
                    String::from("now")
                } else {
                    format!("{}.{}", md.mtime(), md.mtime_nsec())
                };
                out.push(format!(
                    "{} {:o} {}:{} {} {mtime} {bytes}",
                    rel.display(),
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.len(),
                ));
                if md.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    // A copy with a donor gives the tree a plain copy gives; files equal to the donor's are
    // links to them, an edited file and one whose donor differs only in mode are copies, and
    // directories keep the times the copy gave them.
    #[test]
    fn a_reused_copy_is_the_copy_and_links_only_identical_files() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src.join("a/one.txt"), b"one");
        write(&src.join("a/two.txt"), b"two");
        write(&src.join("b/three.txt"), &vec![7u8; 300_000]);
        write(&src.join("mode.txt"), b"mode");
        // The earlier result: a plain copy of the same tree.
        let donor = t.path().join("donor");
        fs::create_dir(&donor).unwrap();
        copy(&src, ".", &donor, "/app/", &opts(None)).unwrap();
        // Edits: one file's bytes (same size), another's mode in the donor only.
        write(&src.join("a/two.txt"), b"TWO");
        fs::set_permissions(
            donor.join("app/mode.txt"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();

        let plain = t.path().join("plain");
        fs::create_dir(&plain).unwrap();
        copy(&src, ".", &plain, "/app/", &opts(None)).unwrap();

        let (upper, linked) = copy_reusing(t.path(), &src, "/app/", &donor);
        assert_eq!(linked.files, 2, "one.txt and three.txt");
        assert_eq!(linked.bytes, 300_003);

        assert_eq!(listing(&upper), listing(&plain));
        let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        for (f, shared) in [
            ("app/a/one.txt", true),
            ("app/b/three.txt", true),
            ("app/a/two.txt", false),
            ("app/mode.txt", false),
        ] {
            assert_eq!(ino(&upper.join(f)) == ino(&donor.join(f)), shared, "{f}");
        }
    }

    // A donor whose directory is a symbolic link is never followed, even to an identical file
    // outside it.
    #[test]
    fn a_symbolic_link_in_the_donor_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src.join("d/f.txt"), b"same");
        // An identical copy outside the donor, and the donor's `d` a link to its `d`.
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        copy(&src, ".", &outside, "/", &opts(None)).unwrap();
        let donor = t.path().join("donor");
        fs::create_dir(&donor).unwrap();
        std::os::unix::fs::symlink("../outside/d", donor.join("d")).unwrap();

        let (upper, linked) = copy_reusing(t.path(), &src, "/", &donor);
        assert_eq!(linked.files, 0);
        let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        assert_ne!(ino(&upper.join("d/f.txt")), ino(&outside.join("d/f.txt")));
        assert_eq!(fs::read(upper.join("d/f.txt")).unwrap(), b"same");
    }

    // A donor whose bytes differ (same size, owner, mode and time) is never linked.
    #[test]
    fn a_donor_with_other_bytes_is_copied_over() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src.join("f.txt"), b"right");
        let donor = t.path().join("donor");
        fs::create_dir(&donor).unwrap();
        copy(&src, ".", &donor, "/", &opts(None)).unwrap();
        let d = donor.join("f.txt");
        let md = fs::metadata(&d).unwrap();
        fs::write(&d, b"wrong").unwrap();
        let mt = filetime::FileTime::from_last_modification_time(&md);
        filetime::set_file_times(&d, mt, mt).unwrap();

        let (upper, linked) = copy_reusing(t.path(), &src, "/", &donor);
        assert_eq!(linked.files, 0);
        assert_eq!(fs::read(upper.join("f.txt")).unwrap(), b"right");
    }
}
