//! Go's `os.FileMode` bits, which fsutil puts in `Stat.mode`, and their conversion to and from
//! Unix `st_mode`.
//!
//! fsutil fills `Stat.mode` with `uint32(fi.Mode())` of a Go `os.FileInfo`, so the wire carries
//! Go's layout: the type in high bits (one bit per kind, not the `S_IFMT` field), setuid, setgid
//! and sticky in bits of their own, and only the nine permission bits in the low bits.

/// `os.ModeDir`.
pub const MODE_DIR: u32 = 1 << 31;
/// `os.ModeAppend` (Plan 9 only; never produced from Unix `st_mode`).
pub const MODE_APPEND: u32 = 1 << 30;
/// `os.ModeExclusive` (Plan 9 only).
pub const MODE_EXCLUSIVE: u32 = 1 << 29;
/// `os.ModeTemporary` (Plan 9 only).
pub const MODE_TEMPORARY: u32 = 1 << 28;
/// `os.ModeSymlink`.
pub const MODE_SYMLINK: u32 = 1 << 27;
/// `os.ModeDevice`; a block device unless [`MODE_CHAR_DEVICE`] is set too.
pub const MODE_DEVICE: u32 = 1 << 26;
/// `os.ModeNamedPipe` (FIFO).
pub const MODE_NAMED_PIPE: u32 = 1 << 25;
/// `os.ModeSocket`; fsutil's senders clear it, ours leave sockets out.
pub const MODE_SOCKET: u32 = 1 << 24;
/// `os.ModeSetuid`.
pub const MODE_SETUID: u32 = 1 << 23;
/// `os.ModeSetgid`.
pub const MODE_SETGID: u32 = 1 << 22;
/// `os.ModeCharDevice`, always together with [`MODE_DEVICE`].
pub const MODE_CHAR_DEVICE: u32 = 1 << 21;
/// `os.ModeSticky`.
pub const MODE_STICKY: u32 = 1 << 20;
/// `os.ModeIrregular` (a file Go could not classify).
pub const MODE_IRREGULAR: u32 = 1 << 19;
/// `os.ModePerm`: the nine `rwx` bits.
pub const MODE_PERM: u32 = 0o777;

/// `os.ModeType`: every bit that makes an entry something other than a regular file. fsutil
/// lets a receiver request content only for entries with none of them (`fileCanRequestData`).
pub const MODE_TYPE: u32 = MODE_DIR
    | MODE_SYMLINK
    | MODE_NAMED_PIPE
    | MODE_SOCKET
    | MODE_DEVICE
    | MODE_CHAR_DEVICE
    | MODE_IRREGULAR;

/// The kind of a transferred entry, as its Go mode says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file (or, with `linkname`, a hard link to an earlier one).
    Regular,
    /// A directory.
    Dir,
    /// A symbolic link; the target is in `linkname`.
    Symlink,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// Go's `os.FileMode` for a Unix `st_mode`, as Go's `os.Lstat` computes it.
pub fn go_mode_from_unix(st_mode: u32) -> u32 {
    let mut mode = st_mode & MODE_PERM;
    mode |= match st_mode & libc::S_IFMT {
        libc::S_IFDIR => MODE_DIR,
        libc::S_IFLNK => MODE_SYMLINK,
        libc::S_IFBLK => MODE_DEVICE,
        libc::S_IFCHR => MODE_DEVICE | MODE_CHAR_DEVICE,
        libc::S_IFIFO => MODE_NAMED_PIPE,
        libc::S_IFSOCK => MODE_SOCKET,
        _ => 0,
    };
    if st_mode & libc::S_ISUID != 0 {
        mode |= MODE_SETUID;
    }
    if st_mode & libc::S_ISGID != 0 {
        mode |= MODE_SETGID;
    }
    if st_mode & libc::S_ISVTX != 0 {
        mode |= MODE_STICKY;
    }
    mode
}

/// The kind a Go mode names, or `None` for a combination no Unix file has (two type bits, a
/// char-device bit without the device bit, Go's irregular or Plan 9 bits).
pub fn kind_of(go_mode: u32) -> Option<FileKind> {
    if go_mode & (MODE_IRREGULAR | MODE_APPEND | MODE_EXCLUSIVE | MODE_TEMPORARY) != 0 {
        return None;
    }
    let kind = match go_mode & MODE_TYPE {
        0 => FileKind::Regular,
        MODE_DIR => FileKind::Dir,
        MODE_SYMLINK => FileKind::Symlink,
        MODE_DEVICE => FileKind::BlockDevice,
        t if t == MODE_DEVICE | MODE_CHAR_DEVICE => FileKind::CharDevice,
        MODE_NAMED_PIPE => FileKind::Fifo,
        MODE_SOCKET => FileKind::Socket,
        _ => return None,
    };
    Some(kind)
}

/// The permission bits of a Go mode as `chmod` takes them: `rwx` bits plus setuid (0o4000),
/// setgid (0o2000) and sticky (0o1000).
pub fn unix_permissions(go_mode: u32) -> u32 {
    let mut perm = go_mode & MODE_PERM;
    if go_mode & MODE_SETUID != 0 {
        perm |= libc::S_ISUID;
    }
    if go_mode & MODE_SETGID != 0 {
        perm |= libc::S_ISGID;
    }
    if go_mode & MODE_STICKY != 0 {
        perm |= libc::S_ISVTX;
    }
    perm
}

/// The full Unix `st_mode` (file type field plus permissions) for a Go mode; `None` when the
/// Go mode names no Unix file type (see [`kind_of`]).
pub fn unix_mode_from_go(go_mode: u32) -> Option<u32> {
    let ifmt = match kind_of(go_mode)? {
        FileKind::Regular => libc::S_IFREG,
        FileKind::Dir => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::BlockDevice => libc::S_IFBLK,
        FileKind::CharDevice => libc::S_IFCHR,
        FileKind::Fifo => libc::S_IFIFO,
        FileKind::Socket => libc::S_IFSOCK,
    };
    Some(ifmt | unix_permissions(go_mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (Unix st_mode, Go FileMode) pairs, checked against what Go's `os.Lstat` reports.
    const PAIRS: &[(u32, u32)] = &[
        (libc::S_IFREG | 0o644, 0o644),
        (libc::S_IFREG, 0),
        (libc::S_IFREG | 0o4755, MODE_SETUID | 0o755),
        (libc::S_IFREG | 0o2711, MODE_SETGID | 0o711),
        (libc::S_IFDIR | 0o755, MODE_DIR | 0o755),
        (libc::S_IFDIR | 0o1777, MODE_DIR | MODE_STICKY | 0o777),
        (libc::S_IFDIR, MODE_DIR),
        (libc::S_IFLNK | 0o777, MODE_SYMLINK | 0o777),
        (libc::S_IFBLK | 0o660, MODE_DEVICE | 0o660),
        (
            libc::S_IFCHR | 0o666,
            MODE_DEVICE | MODE_CHAR_DEVICE | 0o666,
        ),
        (libc::S_IFIFO | 0o600, MODE_NAMED_PIPE | 0o600),
        (libc::S_IFSOCK | 0o755, MODE_SOCKET | 0o755),
        (
            libc::S_IFREG | 0o7777,
            MODE_SETUID | MODE_SETGID | MODE_STICKY | 0o777,
        ),
    ];

    #[test]
    fn unix_to_go() {
        for &(unix, go) in PAIRS {
            assert_eq!(go_mode_from_unix(unix), go, "st_mode {unix:#o}");
        }
        // Go's numbers spelled out, so a typo in the constants cannot hide.
        assert_eq!(go_mode_from_unix(libc::S_IFDIR | 0o755), 0x8000_01ed);
        assert_eq!(go_mode_from_unix(libc::S_IFLNK | 0o777), 0x0800_01ff);
        assert_eq!(
            go_mode_from_unix(libc::S_IFCHR | 0o620),
            (1 << 26) | (1 << 21) | 0o620
        );
    }

    #[test]
    fn go_to_unix() {
        for &(unix, go) in PAIRS {
            assert_eq!(unix_mode_from_go(go), Some(unix), "go mode {go:#x}");
            assert_eq!(unix_permissions(go), unix & 0o7777);
        }
    }

    #[test]
    fn kinds_and_invalid_combinations() {
        assert_eq!(kind_of(0o644), Some(FileKind::Regular));
        assert_eq!(kind_of(MODE_DIR | 0o700), Some(FileKind::Dir));
        assert_eq!(kind_of(MODE_DEVICE), Some(FileKind::BlockDevice));
        assert_eq!(
            kind_of(MODE_DEVICE | MODE_CHAR_DEVICE),
            Some(FileKind::CharDevice)
        );
        assert_eq!(kind_of(MODE_DIR | MODE_SYMLINK), None);
        assert_eq!(kind_of(MODE_CHAR_DEVICE), None);
        assert_eq!(kind_of(MODE_IRREGULAR), None);
        assert_eq!(kind_of(MODE_APPEND | 0o644), None);
        assert_eq!(unix_mode_from_go(MODE_DIR | MODE_NAMED_PIPE), None);
    }
}
