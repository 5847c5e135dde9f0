//! Writing one entry of a listing into its (already open) parent directory, for every kind
//! but regular-file content, which arrives later ([`crate::filesync::write`]).
//!
//! An entry already right on disk only gets its metadata fixed. Anything new is created under
//! a temporary name, given its metadata there and renamed over the old entry, so the name never
//! holds something half made. Metadata order matters: chown clears setuid/setgid (and
//! `security.capability`), so ownership comes first, then mode, xattrs, and times last.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::stat::{FileStat, SFlag};

use crate::filesync::disk;
use crate::filesync::mode::{FileKind, unix_permissions};
use crate::filesync::{FilesyncError, Stat};

/// `(parent, name)` of a validated listing path; `""` is the destination itself.
pub(crate) fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// How entries are written into one destination.
pub(crate) struct Applier {
    /// The destination, for messages.
    pub dest: PathBuf,
    /// Apply the STAT's uid/gid.
    pub chown: bool,
    /// Running as root (privileged xattrs must then succeed).
    pub is_root: bool,
}

impl Applier {
    /// A closure turning an `io::Error` on `rel` into a [`FilesyncError`].
    pub(crate) fn io(
        &self,
        op: &'static str,
        rel: &str,
    ) -> impl FnOnce(io::Error) -> FilesyncError {
        let path = self.dest.join(rel);
        move |e| FilesyncError::io(op, path, e)
    }

    /// Makes `name` a directory we can write into (its final mode and mtime are set at the
    /// end, see [`Applier::dir_metadata`]) and opens it.
    pub(crate) fn dir(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        stat: &Stat,
        existing: Option<FileStat>,
    ) -> Result<OwnedFd, FilesyncError> {
        let path = &stat.path;
        let mut owner = None;
        match &existing {
            Some(st) if disk::is_dir(st) => {
                owner = Some((st.st_uid, st.st_gid));
                if st.st_mode & 0o700 != 0o700 {
                    disk::chmod_at(parent, name, (st.st_mode & 0o7777) | 0o700)
                        .map_err(self.io("changing mode of", path))?;
                }
            }
            other => {
                if other.is_some() {
                    disk::unlink_at(parent, name).map_err(self.io("removing", path))?;
                }
                disk::mkdir_at(parent, name, 0o700).map_err(self.io("creating", path))?;
            }
        }
        let fd = disk::open_dir_at(parent, name).map_err(self.io("opening", path))?;
        if self.chown && owner != Some((stat.uid, stat.gid)) {
            disk::chown_at(parent, name, stat.uid, stat.gid)
                .map_err(self.io("changing owner of", path))?;
        }
        disk::set_xattrs_at(parent, name, &stat.xattrs, self.is_root)
            .map_err(self.io("setting xattrs of", path))?;
        Ok(fd)
    }

    /// Sets a directory's final mode and mtime, once nothing more is written into it.
    pub(crate) fn dir_metadata(
        &self,
        root: BorrowedFd<'_>,
        path: &str,
        perm: u32,
        mtime: i64,
    ) -> Result<(), FilesyncError> {
        // A directory already right is left alone: a no-op re-sync then writes nothing and
        // keeps each directory's ctime. One stat by path: every component of `path` is a
        // directory this transfer has just opened with O_NOFOLLOW in `dir`.
        let here = if path.is_empty() { "." } else { path };
        if let Some(st) = disk::lstat_at(root, here).map_err(self.io("reading", path))?
            && disk::is_dir(&st)
            && st.st_mode & 0o7777 == perm
            && disk::mtime_ns(&st) == mtime
        {
            return Ok(());
        }
        let fd = disk::open_dir_path(root, path).map_err(self.io("opening", path))?;
        disk::chmod_fd(fd.as_fd(), perm).map_err(self.io("changing mode of", path))?;
        disk::set_times_fd(fd.as_fd(), mtime).map_err(self.io("setting times of", path))
    }

    pub(crate) fn symlink(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        stat: &Stat,
        existing: Option<FileStat>,
    ) -> Result<(), FilesyncError> {
        let path = &stat.path;
        if let Some(st) = &existing
            && disk::file_type(st) == libc::S_IFLNK
            && disk::read_link_at(parent, name).map_err(self.io("reading", path))?
                == stat.linkname.as_bytes()
        {
            return self.fix_metadata(parent, stat, st, FileKind::Symlink);
        }
        let temp = disk::symlink_temp(parent, &stat.linkname)
            .map_err(self.io("creating symlink", path))?;
        self.install(parent, &temp, stat, FileKind::Symlink)
    }

    /// A FIFO or device node, made with `mknod`; never opened.
    pub(crate) fn special(
        &self,
        parent: BorrowedFd<'_>,
        id: u32,
        stat: &Stat,
        kind: FileKind,
        existing: Option<FileStat>,
    ) -> Result<(), FilesyncError> {
        let invalid = || FilesyncError::InvalidStat {
            id,
            path: stat.path.clone(),
            field: "device number",
        };
        let major = u32::try_from(stat.devmajor).map_err(|_| invalid())?;
        let minor = u32::try_from(stat.devminor).map_err(|_| invalid())?;
        let (sflag, dev) = match kind {
            FileKind::Fifo => (SFlag::S_IFIFO, 0),
            FileKind::CharDevice => (SFlag::S_IFCHR, libc::makedev(major, minor)),
            _ => (SFlag::S_IFBLK, libc::makedev(major, minor)),
        };
        if let Some(st) = &existing
            && disk::file_type(st) == sflag.bits()
            && (kind == FileKind::Fifo || st.st_rdev == dev)
        {
            return self.fix_metadata(parent, stat, st, kind);
        }
        let temp = disk::mknod_temp(parent, sflag, unix_permissions(stat.mode), dev)
            .map_err(self.io("creating", &stat.path))?;
        self.install(parent, &temp, stat, kind)
    }

    /// Brings an entry that already has the right content to the STAT's metadata.
    pub(crate) fn fix_metadata(
        &self,
        parent: BorrowedFd<'_>,
        stat: &Stat,
        st: &FileStat,
        kind: FileKind,
    ) -> Result<(), FilesyncError> {
        let path = &stat.path;
        let (_, name) = split(path);
        let chown = self.chown && (st.st_uid, st.st_gid) != (stat.uid, stat.gid);
        if chown {
            disk::chown_at(parent, name, stat.uid, stat.gid)
                .map_err(self.io("changing owner of", path))?;
        }
        let perm = unix_permissions(stat.mode);
        if kind != FileKind::Symlink && (chown || st.st_mode & 0o7777 != perm) {
            disk::chmod_at(parent, name, perm).map_err(self.io("changing mode of", path))?;
        }
        disk::set_xattrs_at(parent, name, &stat.xattrs, self.is_root)
            .map_err(self.io("setting xattrs of", path))?;
        if disk::mtime_ns(st) != stat.mod_time {
            disk::set_times_at(parent, name, stat.mod_time)
                .map_err(self.io("setting times of", path))?;
        }
        Ok(())
    }

    /// Gives the new entry at `temp` its metadata and renames it over the STAT's name; the
    /// temporary entry is removed if that fails. Only for an entry created in the same step:
    /// its name cannot have been replaced in between (a file received over several packets
    /// goes through [`Applier::install_file`]).
    pub(crate) fn install(
        &self,
        parent: BorrowedFd<'_>,
        temp: &str,
        stat: &Stat,
        kind: FileKind,
    ) -> Result<(), FilesyncError> {
        let path = &stat.path;
        let result = (|| {
            if self.chown {
                disk::chown_at(parent, temp, stat.uid, stat.gid)
                    .map_err(self.io("changing owner of", path))?;
            }
            if kind != FileKind::Symlink {
                disk::chmod_at(parent, temp, unix_permissions(stat.mode))
                    .map_err(self.io("changing mode of", path))?;
            }
            disk::set_xattrs_at(parent, temp, &stat.xattrs, self.is_root)
                .map_err(self.io("setting xattrs of", path))?;
            disk::set_times_at(parent, temp, stat.mod_time)
                .map_err(self.io("setting times of", path))?;
            self.rename_over(parent, temp, path)
        })();
        if result.is_err() {
            let _ = disk::unlink_at(parent, temp);
        }
        result
    }

    /// [`Applier::install`] for a regular file still open as `file`: metadata goes through the
    /// descriptor, and the rename only happens if `temp` still names that file.
    pub(crate) fn install_file(
        &self,
        parent: BorrowedFd<'_>,
        temp: &str,
        file: &File,
        stat: &Stat,
    ) -> Result<(), FilesyncError> {
        let path = &stat.path;
        let fd = file.as_fd();
        if self.chown {
            disk::chown_fd(fd, stat.uid, stat.gid).map_err(self.io("changing owner of", path))?;
        }
        disk::chmod_fd(fd, unix_permissions(stat.mode))
            .map_err(self.io("changing mode of", path))?;
        disk::set_xattrs_fd(file, path, &stat.xattrs, self.is_root)
            .map_err(self.io("setting xattrs of", path))?;
        disk::set_times_fd(fd, stat.mod_time).map_err(self.io("setting times of", path))?;
        if !disk::is_same_file(parent, temp, fd).map_err(self.io("reading", path))? {
            return Err(self.io("renaming into", path)(io::Error::other(
                "its temporary file was replaced",
            )));
        }
        self.rename_over(parent, temp, path)
    }

    /// Renames `temp` to the name of `path`, removing a directory there first (rename(2)
    /// replaces anything else atomically).
    fn rename_over(
        &self,
        parent: BorrowedFd<'_>,
        temp: &str,
        path: &str,
    ) -> Result<(), FilesyncError> {
        let (_, name) = split(path);
        if disk::lstat_at(parent, name)
            .map_err(self.io("reading", path))?
            .as_ref()
            .is_some_and(disk::is_dir)
        {
            disk::remove_at(parent, name.as_bytes()).map_err(self.io("removing", path))?;
        }
        disk::rename_at(parent, temp, name).map_err(self.io("renaming into", path))
    }

    /// Makes `path` a hard link to the regular file at `target` (both resolved inside `root`),
    /// unless it already is one.
    pub(crate) fn link(
        &self,
        root: BorrowedFd<'_>,
        id: u32,
        path: &str,
        target: &str,
    ) -> Result<(), FilesyncError> {
        let ((dir_path, name), (target_dir_path, target_name)) = (split(path), split(target));
        let dir = disk::open_dir_path(root, dir_path).map_err(self.io("opening", dir_path))?;
        let target_dir = disk::open_dir_path(root, target_dir_path)
            .map_err(self.io("opening", target_dir_path))?;
        // The validator saw a regular file there; the receive filter may have kept it out.
        let target_st = disk::lstat_at(target_dir.as_fd(), target_name)
            .map_err(self.io("reading", target))?
            .filter(|st| disk::file_type(st) == libc::S_IFREG)
            .ok_or_else(|| FilesyncError::HardLinkTarget {
                id,
                path: path.to_string(),
                target: target.to_string(),
            })?;
        let existing = disk::lstat_at(dir.as_fd(), name).map_err(self.io("reading", path))?;
        if existing.is_some_and(|st| (st.st_dev, st.st_ino) == (target_st.st_dev, target_st.st_ino))
        {
            return Ok(());
        }
        let temp = disk::link_temp(target_dir.as_fd(), target_name, dir.as_fd())
            .map_err(self.io("linking", path))?;
        disk::rename_at(dir.as_fd(), &temp, name).map_err(|e| {
            let _ = disk::unlink_at(dir.as_fd(), &temp);
            self.io("renaming into", path)(e)
        })
    }
}
