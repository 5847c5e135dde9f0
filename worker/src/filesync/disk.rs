//! File system primitives for the receiver, confined to the destination: every operation takes
//! an open directory and a single name (no `/`), never follows a symbolic link in that name,
//! and a directory is only ever entered with `O_DIRECTORY | O_NOFOLLOW`. Whatever a sender put
//! on disk earlier (a symlink to `/etc`, say), no path we resolve can leave the destination.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmodat, fstatat, futimens, mkdirat,
    mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

/// Prefix of the temporary names new entries are created under before they are renamed into
/// place; leftovers of an interrupted transfer are removed by the next one, as any name the
/// listing does not have.
pub(crate) const TEMP_PREFIX: &str = ".memobuild-filesync-";

/// The entry `name` in `dir`, not following a symlink; `None` if there is none.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type bits of a stat.
pub(crate) fn file_type(st: &FileStat) -> u32 {
    st.st_mode & libc::S_IFMT
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    file_type(st) == libc::S_IFDIR
}

/// Modification time of a stat in Unix nanoseconds, as fsutil sends it.
pub(crate) fn mtime_ns(st: &FileStat) -> i64 {
    st.st_mtime
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec)
}

/// Opens the directory `name` in `dir`; fails on a symlink or anything but a directory.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(dir, name, flags, Mode::empty())?)
}

/// Opens the directory at `rel` (`/`-separated, validated, `""` for `root`) one component at a
/// time with [`open_dir_at`].
pub(crate) fn open_dir_path(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let mut current = open_dir_at(root, ".")?;
    for name in rel.split('/').filter(|c| !c.is_empty()) {
        current = open_dir_at(current.as_fd(), name)?;
    }
    Ok(current)
}

/// The names in an open directory, without `.` and `..`.
pub(crate) fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut d = nix::dir::Dir::from_fd(open_dir_at(dir, ".")?)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes the entry `name` in `dir`, a whole tree if it is a directory (made writable first,
/// as a previous transfer may have left it read-only).
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let name = std::ffi::OsStr::from_bytes(name);
    let Some(st) = (match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Some(st),
        Err(Errno::ENOENT) => None,
        Err(e) => return Err(e.into()),
    }) else {
        return Ok(());
    };
    if !is_dir(&st) {
        return Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?);
    }
    if st.st_mode & 0o700 != 0o700 {
        // Just checked to be a directory, not a symlink: fchmodat cannot follow one here.
        fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(0o700),
            FchmodatFlags::FollowSymlink,
        )?;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let sub = openat(dir, name, flags, Mode::empty())?;
    for child in list_names(sub.as_fd())? {
        remove_at(sub.as_fd(), &child)?;
    }
    Ok(unlinkat(dir, name, UnlinkatFlags::RemoveDir)?)
}

/// A fresh name for a temporary entry; random, so a sender cannot aim at it.
pub(crate) fn temp_name() -> String {
    format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Runs `create` with fresh temporary names until one is free; returns the name used.
pub(crate) fn with_temp_name<T>(
    mut create: impl FnMut(&str) -> nix::Result<T>,
) -> io::Result<(String, T)> {
    loop {
        let name = temp_name();
        match create(&name) {
            Ok(v) => return Ok((name, v)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates a new empty file under a temporary name in `dir`, open for writing.
pub(crate) fn create_temp_file(dir: BorrowedFd<'_>) -> io::Result<(String, File)> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let (name, fd) = with_temp_name(|n| openat(dir, n, flags, Mode::from_bits_truncate(0o600)))?;
    Ok((name, File::from(fd)))
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    Ok(mkdirat(dir, name, Mode::from_bits_truncate(mode))?)
}

/// Creates a symlink under a temporary name; returns the name.
pub(crate) fn symlink_temp(dir: BorrowedFd<'_>, target: &str) -> io::Result<String> {
    with_temp_name(|n| symlinkat(target, dir, n)).map(|(n, ())| n)
}

/// Creates a FIFO or device node under a temporary name; returns the name.
pub(crate) fn mknod_temp(
    dir: BorrowedFd<'_>,
    kind: SFlag,
    perm: u32,
    dev: u64,
) -> io::Result<String> {
    with_temp_name(|n| mknodat(dir, n, kind, Mode::from_bits_truncate(perm), dev)).map(|(n, ())| n)
}

/// Hard-links `from` (in `from_dir`) under a temporary name in `dir`; returns the name.
pub(crate) fn link_temp(
    from_dir: BorrowedFd<'_>,
    from: &str,
    dir: BorrowedFd<'_>,
) -> io::Result<String> {
    // No AT_SYMLINK_FOLLOW: a symlink would be linked itself, never its target.
    with_temp_name(|n| linkat(from_dir, from, dir, n, AtFlags::empty())).map(|(n, ())| n)
}

pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Vec<u8>> {
    Ok(readlinkat(dir, name)?.as_bytes().to_vec())
}

pub(crate) fn rename_at(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    Ok(renameat(dir, from, dir, to)?)
}

pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?)
}

pub(crate) fn chown_at(dir: BorrowedFd<'_>, name: &str, uid: u32, gid: u32) -> io::Result<()> {
    let ids = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    Ok(fchownat(
        dir,
        name,
        ids.0,
        ids.1,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// `chmod` of an entry the caller has just found not to be a symlink (Linux's fchmodat cannot
/// refuse to follow one; the destination is ours, so nothing swaps it in between).
pub(crate) fn chmod_at(dir: BorrowedFd<'_>, name: &str, perm: u32) -> io::Result<()> {
    Ok(fchmodat(
        dir,
        name,
        Mode::from_bits_truncate(perm),
        FchmodatFlags::FollowSymlink,
    )?)
}

pub(crate) fn chmod_fd(fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
    Ok(nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(perm))?)
}

fn timespec(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// Sets access and modification time to `mtime_ns`, as fsutil does, not following a symlink.
pub(crate) fn set_times_at(dir: BorrowedFd<'_>, name: &str, mtime_ns: i64) -> io::Result<()> {
    let t = timespec(mtime_ns);
    Ok(utimensat(
        dir,
        name,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )?)
}

pub(crate) fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let ids = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    Ok(nix::unistd::fchown(fd, ids.0, ids.1)?)
}

/// Whether `name` in `dir` is still the file open as `fd` (same device and inode).
pub(crate) fn is_same_file(
    dir: BorrowedFd<'_>,
    name: &str,
    fd: BorrowedFd<'_>,
) -> io::Result<bool> {
    let open = nix::sys::stat::fstat(fd)?;
    Ok(lstat_at(dir, name)?.is_some_and(|st| (st.st_dev, st.st_ino) == (open.st_dev, open.st_ino)))
}

pub(crate) fn set_times_fd(fd: BorrowedFd<'_>, mtime_ns: i64) -> io::Result<()> {
    let t = timespec(mtime_ns);
    Ok(futimens(fd, &t, &t)?)
}

/// Sets extended attributes on `name` in `dir` without following it, through the directory's
/// `/proc/self/fd` link (there is no `lsetxattrat`).
pub(crate) fn set_xattrs_at(
    dir: BorrowedFd<'_>,
    name: &str,
    xattrs: &BTreeMap<String, Vec<u8>>,
    is_root: bool,
) -> io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let path = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
    set_xattrs_with(name, xattrs, is_root, |key, value| {
        xattr::set(&path, key, value)
    })
}

/// Sets extended attributes on an open file.
pub(crate) fn set_xattrs_fd(
    file: &File,
    name: &str,
    xattrs: &BTreeMap<String, Vec<u8>>,
    is_root: bool,
) -> io::Result<()> {
    use xattr::FileExt;
    set_xattrs_with(name, xattrs, is_root, |key, value| {
        file.set_xattr(key, value)
    })
}

/// Sets each attribute with `set`. Failures are errors except where the receiving side cannot
/// be expected to honour them: a file system without xattr support, `security.*`/`trusted.*`
/// names without root, and `user.*` names where Linux refuses them to everyone (symlinks,
/// devices, FIFOs).
fn set_xattrs_with(
    name: &str,
    xattrs: &BTreeMap<String, Vec<u8>>,
    is_root: bool,
    set: impl Fn(&str, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    for (key, value) in xattrs {
        match set(key, value) {
            Ok(()) => {}
            Err(e) if ignorable_xattr_error(key, &e, is_root) => {
                tracing::debug!(entry = name, xattr = key, error = %e, "xattr not set");
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("setting xattr `{key}`: {e}"),
                ));
            }
        }
    }
    Ok(())
}

fn ignorable_xattr_error(key: &str, e: &io::Error, is_root: bool) -> bool {
    let privileged = key.starts_with("security.") || key.starts_with("trusted.");
    match e.raw_os_error() {
        Some(libc::ENOTSUP) => true,
        Some(libc::EPERM | libc::EACCES) => (privileged && !is_root) || key.starts_with("user."),
        _ => false,
    }
}
