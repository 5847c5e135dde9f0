//! `type=local,dest=DIR`: the image's final filesystem, written to a directory.
//!
//! The layers are applied in order, as a runtime's unpacker does: OCI whiteouts (`.wh.NAME`
//! removes `NAME` from the layers below, `.wh..wh..opq` empties its directory of what the layers
//! below put there), modes as stored, owners as stored when asked and running as root (a
//! local export on this machine leaves files owned by the user running it, as BuildKit's
//! client writes them), mtimes as stored, `SCHILY.xattr.*` records when running as root.
//!
//! A layer is untrusted input. An entry path with `..` is refused; every parent directory is
//! resolved inside the output root ([`resolve_in_root`]: a symlink to `/etc` means `DIR/etc`);
//! the last component is never followed (an existing symlink there is replaced, not written
//! through). So no layer can make us write outside `DIR`.
//!
//! The tree is built in a temporary directory beside `DIR` and moved into place at the end: a
//! failed export leaves nothing. When `DIR` already has files (`--output .`), the new top-level
//! entries replace the same-named old ones and the others are kept, as buildx does.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use crate::blobs::BlobStore;
use crate::export::sink::{DirTarget, HostDir};
use crate::export::{ExportError, ImageManifest};
use crate::fsops::{remove_all, resolve_in_root};

/// Metadata applied to directories after every layer is in (a read-only directory must not stop
/// its later children from being written).
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: Mtime,
}

/// A modification time: seconds and nanoseconds since the epoch.
type Mtime = (i64, u32);

/// Writes the filesystem of `img` to `dest` as BuildKit's client writes a local export: files
/// owned by the user running it (a tree built beside `dest` and moved into place at the end).
pub fn write_local(dest: &Path, img: &ImageManifest, store: &BlobStore) -> Result<(), ExportError> {
    let err = |source| ExportError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let target = HostDir::create(dest).map_err(err)?;
    apply_image(target.path(), img, store, target.keep_owners())?;
    target.commit_blocking().map_err(err)
}

/// Applies the layers of `img` to `root` (an existing directory), keeping the owners the
/// image gives its files when `keep_owners` and running as root.
pub fn apply_image(
    root: &Path,
    img: &ImageManifest,
    store: &BlobStore,
    keep_owners: bool,
) -> Result<(), ExportError> {
    let err = |source| ExportError::Io {
        path: root.to_path_buf(),
        source,
    };
    let mut applier = Applier::new(root).keep_owners(keep_owners);
    for layer in &img.layers {
        let f = store.open_blob(&layer.digest)?;
        applier
            .apply(BufReader::with_capacity(1 << 20, f))
            .map_err(|e| {
                err(io::Error::new(
                    e.kind(),
                    format!("layer `{}`: {e}", layer.digest),
                ))
            })?;
    }
    applier.finish().map_err(err)
}

/// Applies layer tars to a root directory.
pub struct Applier {
    root: PathBuf,
    dirs: BTreeMap<PathBuf, DirMeta>,
    as_root: bool,
    /// Give files the owners the layers say (needs root).
    chown: bool,
    /// Leave the root directory's own metadata alone (an entry for `./` is ignored), as
    /// containerd's applier does when it unpacks into a snapshot.
    keep_root: bool,
}

impl Applier {
    /// An applier writing into `root` (which must exist).
    pub fn new(root: &Path) -> Self {
        Applier {
            root: root.to_path_buf(),
            dirs: BTreeMap::new(),
            as_root: nix::unistd::geteuid().is_root(),
            chown: nix::unistd::geteuid().is_root(),
            keep_root: false,
        }
    }

    /// An applier unpacking into a snapshot as containerd's applier does: owners as stored
    /// (as root), and the root directory's own metadata left as the snapshot has it.
    pub fn for_snapshot(root: &Path) -> Self {
        let mut applier = Applier::new(root);
        applier.keep_root = true;
        applier
    }

    /// Whether files get the owners the layers say (only possible as root; the default when
    /// running as root) or stay owned by the user running this.
    pub fn keep_owners(mut self, keep: bool) -> Self {
        self.chown = keep && self.as_root;
        self
    }

    /// Applies one layer (gzip, zstd or plain tar; detected from its first bytes).
    pub fn apply(&mut self, blob: impl io::BufRead) -> io::Result<()> {
        self.apply_tar(crate::export::compression::decompressed(blob)?)
    }

    /// [`Applier::apply`], returning the layer's diff ID: the sha256 of the whole decompressed
    /// stream, bytes after the tar's end included (what containerd's applier digests).
    pub fn apply_hashed(&mut self, blob: impl io::BufRead) -> io::Result<String> {
        let mut hashing =
            crate::blobs::HashReader::new(crate::export::compression::decompressed(blob)?);
        self.apply_tar(&mut hashing)?;
        io::copy(&mut hashing, &mut io::sink())?;
        Ok(hashing.finish())
    }

    fn apply_tar(&mut self, reader: impl Read) -> io::Result<()> {
        let mut archive = tar::Archive::new(reader);
        // Paths (absolute, relative to the root) written by this layer: an opaque whiteout
        // only hides what the layers below put in its directory.
        let mut written: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let with_name = |e: io::Error| io::Error::new(e.kind(), format!("`{shown}`: {e}"));
            let rel = clean(&raw).map_err(with_name)?;
            self.apply_entry(&mut entry, &rel, &mut written)
                .map_err(with_name)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        written: &mut HashSet<PathBuf>,
    ) -> io::Result<()> {
        let mtime = entry_mtime(entry)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode()? & 0o7777;
        let uid = header.uid()?;
        let gid = header.gid()?;
        let Some(name) = rel.file_name() else {
            // The root itself (`./`).
            if kind.is_dir() && !self.keep_root {
                self.dirs.insert(
                    self.root.clone(),
                    DirMeta {
                        mode,
                        uid,
                        gid,
                        mtime,
                    },
                );
            }
            return Ok(());
        };
        let parent = self.ensure_parent(rel.parent().unwrap_or(Path::new("")))?;
        let name_bytes = name.as_bytes();

        if name_bytes == b".wh..wh..opq" {
            for child in fs::read_dir(&parent)? {
                let child = child?.path();
                if !written.contains(&child) {
                    remove_all(&child)?;
                }
            }
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            if hidden.is_empty() {
                return Err(io::Error::other("whiteout without a name"));
            }
            return remove_all(&parent.join(OsStr::from_bytes(hidden)));
        }

        let target = parent.join(name);
        let existing = fs::symlink_metadata(&target).ok();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_all(&target)?;
                    fs::create_dir(&target)?;
                }
                self.dirs.insert(
                    target.clone(),
                    DirMeta {
                        mode,
                        uid,
                        gid,
                        mtime,
                    },
                );
            }
            T::Regular | T::Continuous => {
                if existing.is_some() {
                    remove_all(&target)?;
                }
                let mut f = File::options().write(true).create_new(true).open(&target)?;
                io::copy(entry, &mut f)?;
                drop(f);
                self.set_meta(&target, mode, uid, gid, mtime, false)?;
            }
            T::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| io::Error::other("symlink without a target"))?
                    .into_owned();
                if existing.is_some() {
                    remove_all(&target)?;
                }
                symlink(OsStr::from_bytes(&link), &target)?;
                self.set_meta(&target, mode, uid, gid, mtime, true)?;
            }
            T::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| io::Error::other("hard link without a target"))?
                    .into_owned();
                let link_rel = clean(&link)?;
                // The link's own parents are resolved in the root too; its last component is
                // not followed (a hard link to a symlink links the symlink).
                let source = resolve_in_root(&self.root, &link_rel.to_string_lossy(), false)?;
                let md = fs::symlink_metadata(&source).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("hard link target `{}`: {e}", String::from_utf8_lossy(&link)),
                    )
                })?;
                if md.is_dir() {
                    return Err(io::Error::other("hard link to a directory"));
                }
                if source == target {
                    return Ok(());
                }
                if existing.is_some() {
                    remove_all(&target)?;
                }
                fs::hard_link(&source, &target)?;
                // The link's own header gives the (shared) inode its owner, mode and time, as
                // containerd's applier does.
                self.set_meta(&target, mode, uid, gid, mtime, false)?;
            }
            T::Char | T::Block | T::Fifo => {
                if existing.is_some() {
                    remove_all(&target)?;
                }
                use nix::sys::stat::{Mode, SFlag, makedev, mknod};
                let (flag, dev) = match kind {
                    T::Char => (
                        SFlag::S_IFCHR,
                        makedev(
                            u64::from(header.device_major()?.unwrap_or(0)),
                            u64::from(header.device_minor()?.unwrap_or(0)),
                        ),
                    ),
                    T::Block => (
                        SFlag::S_IFBLK,
                        makedev(
                            u64::from(header.device_major()?.unwrap_or(0)),
                            u64::from(header.device_minor()?.unwrap_or(0)),
                        ),
                    ),
                    _ => (SFlag::S_IFIFO, 0),
                };
                // Special files keep only their permission bits: a setuid device node is no
                // one's business in an output directory.
                let mode = mode & 0o777;
                match mknod(&target, flag, Mode::from_bits_truncate(mode), dev) {
                    Ok(()) => self.set_meta(&target, mode, uid, gid, mtime, false)?,
                    // Device nodes need the privilege to make them (root, outside a user
                    // namespace, a filesystem that allows them); without it they are left out,
                    // as rootless tools do.
                    Err(nix::errno::Errno::EPERM) => {
                        tracing::warn!(
                            "skipping device node {}: not permitted here",
                            target.display()
                        );
                        return Ok(());
                    }
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
            // Global PAX headers and the like carry nothing for the filesystem.
            _ => return Ok(()),
        }
        if self.as_root
            && let Ok(Some(exts)) = entry.pax_extensions()
        {
            for ext in exts.flatten() {
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")
                    && let Err(e) = xattr::set(&target, OsStr::from_bytes(name), ext.value_bytes())
                {
                    tracing::debug!("xattr on {}: {e}", target.display());
                }
            }
        }
        let mut p = Some(target.as_path());
        while let Some(cur) = p {
            if cur == self.root || !written.insert(cur.to_path_buf()) {
                break;
            }
            p = cur.parent();
        }
        Ok(())
    }

    /// The directory `rel` resolved inside the root (following symlinks as the container
    /// would), created with mode 0755 where missing.
    fn ensure_parent(&mut self, rel: &Path) -> io::Result<PathBuf> {
        let dir = resolve_in_root(&self.root, &rel.to_string_lossy(), true)?;
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "parent `{}` is not a directory",
                    rel.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // resolve_in_root left the missing components as plain names under an existing,
                // symlink-free prefix: create them one by one (never through a symlink).
                let mut cur = self.root.clone();
                let tail = dir.strip_prefix(&self.root).map_err(io::Error::other)?;
                for c in tail.components() {
                    cur.push(c);
                    match fs::symlink_metadata(&cur) {
                        Ok(md) if md.is_dir() => {}
                        Ok(_) => {
                            return Err(io::Error::other(format!(
                                "parent `{}` is not a directory",
                                rel.display()
                            )));
                        }
                        Err(_) => fs::create_dir(&cur)?,
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(dir)
    }

    fn set_meta(
        &self,
        path: &Path,
        mode: u32,
        uid: u64,
        gid: u64,
        (secs, nanos): Mtime,
        is_link: bool,
    ) -> io::Result<()> {
        if self.chown {
            let uid = u32::try_from(uid).map_err(io::Error::other)?;
            let gid = u32::try_from(gid).map_err(io::Error::other)?;
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        }
        let t = filetime::FileTime::from_unix_time(secs, nanos);
        if is_link {
            filetime::set_symlink_file_times(path, t, t)?;
        } else {
            // After chown, which clears setuid/setgid. Times are set by path without opening
            // it: opening a FIFO would wait for a writer forever.
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            filetime::set_symlink_file_times(path, t, t)?;
        }
        Ok(())
    }

    /// Gives directories their stored mode, owner and time, deepest first.
    pub fn finish(self) -> io::Result<()> {
        for (dir, m) in self.dirs.iter().rev() {
            if fs::symlink_metadata(dir).is_ok_and(|md| md.is_dir()) {
                self.set_meta(dir, m.mode, m.uid, m.gid, m.mtime, false)?;
            }
        }
        Ok(())
    }
}

/// An entry's modification time: a PAX `mtime` record's, with its fraction, else the header's
/// whole seconds.
fn entry_mtime<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Mtime> {
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts.flatten() {
            if ext.key_bytes() == b"mtime"
                && let Some(t) = parse_pax_time(ext.value_bytes())
            {
                return Ok(t);
            }
        }
    }
    Ok((entry.header().mtime().unwrap_or(0) as i64, 0))
}

/// A PAX time (`SECONDS[.FRACTION]`, possibly negative) as seconds and nanoseconds.
fn parse_pax_time(raw: &[u8]) -> Option<Mtime> {
    let text = std::str::from_utf8(raw).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = whole.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{digits:0<9}").parse().ok()?;
    if nanos == 0 || !whole.starts_with('-') {
        return Some((secs, nanos));
    }
    // -1.25 is 1.25 s before the epoch: -2 s plus 0.75 s.
    Some((secs - 1, 1_000_000_000 - nanos))
}

/// An archive path as a relative path without `.`; `..` anywhere is refused.
fn clean(raw: &[u8]) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "path with `..` refused",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, EntryKind, TarWriter};
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn file(path: &str, data: &[u8], mode: u32) -> (Entry, Vec<u8>) {
        let mut e = Entry::new(path.as_bytes().to_vec(), EntryKind::File, mode);
        e.size = data.len() as u64;
        (e, data.to_vec())
    }
    fn other(path: &str, kind: EntryKind) -> (Entry, Vec<u8>) {
        (
            Entry::new(path.as_bytes().to_vec(), kind, 0o755),
            Vec::new(),
        )
    }

    fn layer(entries: &[(Entry, Vec<u8>)], gzip: bool) -> Vec<u8> {
        let mut tw = TarWriter::new(Vec::new());
        for (e, d) in entries {
            tw.append_bytes(e, d).unwrap();
        }
        let tar = tw.finish().unwrap();
        if !gzip {
            return tar;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn apply(root: &Path, layers: &[Vec<u8>]) -> io::Result<()> {
        let mut a = Applier::new(root);
        for l in layers {
            a.apply(io::Cursor::new(l))?;
        }
        a.finish()
    }

    // Verifies (issue 12 item 4): a FIFO in a layer is created, never opened (applying used to
    // block forever waiting for a writer), and special files keep only their permission bits.
    #[test]
    fn fifos_are_made_not_opened_and_special_files_lose_setuid() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut fifo = Entry::new(b"run/pipe".to_vec(), EntryKind::Fifo, 0o4644);
        fifo.mtime = 1000;
        let l = layer(&[other("run", EntryKind::Dir), (fifo, Vec::new())], true);
        // A hang is the failure: run it on a thread and give up after a while.
        let (tx, rx) = std::sync::mpsc::channel();
        let r = root.clone();
        std::thread::spawn(move || {
            let _ = tx.send(apply(&r, &[l]).map_err(|e| e.to_string()));
        });
        let applied = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("applying a layer with a FIFO must not block");
        applied.unwrap();
        let md = fs::symlink_metadata(root.join("run/pipe")).unwrap();
        assert!(md.file_type().is_fifo());
        assert_eq!(md.mode() & 0o7777, 0o644);
        assert_eq!(md.mtime(), 1000);
    }

    #[test]
    fn pax_times_keep_their_fraction() {
        assert_eq!(
            parse_pax_time(b"1600000000.123456789"),
            Some((1_600_000_000, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        // Digits past nanoseconds are dropped; before the epoch counts down.
        assert_eq!(parse_pax_time(b"1.0000000019"), Some((1, 1)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"1.5x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }

    #[test]
    fn zstd_and_plain_layers_apply_too() {
        // A base image may have zstd layers (and an uncompressed one): both are recognised by
        // their first bytes.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let tar = layer(
            &[other("z", EntryKind::Dir), file("z/one", b"1", 0o644)],
            false,
        );
        let zstd = zstd::encode_all(&tar[..], 3).unwrap();
        let plain = layer(&[file("z/two", b"2", 0o600)], false);
        apply(root, &[zstd, plain]).unwrap();
        assert_eq!(fs::read(root.join("z/one")).unwrap(), b"1");
        assert_eq!(fs::read(root.join("z/two")).unwrap(), b"2");
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let base = layer(
            &[
                other("etc", EntryKind::Dir),
                file("etc/keep", b"k", 0o644),
                file("etc/gone", b"g", 0o600),
                other("opq", EntryKind::Dir),
                file("opq/old", b"o", 0o644),
                other("bin", EntryKind::Dir),
                file("bin/tool", b"#!", 0o4755),
                other("bin/link", EntryKind::Symlink(b"tool".to_vec())),
            ],
            true,
        );
        let top = layer(
            &[
                other("etc", EntryKind::Dir),
                file("etc/.wh.gone", b"", 0o644),
                other("opq", EntryKind::Dir),
                file("opq/new", b"n", 0o640),
                file("opq/.wh..wh..opq", b"", 0o644),
                // A hard link's header carries its inode's metadata (and sets it, as
                // containerd's applier does): a tar writer gives it the target's.
                (
                    Entry::new(
                        b"bin/hard".to_vec(),
                        EntryKind::Hardlink(b"bin/tool".to_vec()),
                        0o4755,
                    ),
                    Vec::new(),
                ),
            ],
            false,
        );
        apply(root, &[base, top]).unwrap();
        assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"k");
        assert!(!root.join("etc/gone").exists());
        assert!(
            !root.join("opq/old").exists(),
            "opaque dir hides lower files"
        );
        assert_eq!(fs::read(root.join("opq/new")).unwrap(), b"n");
        let md = fs::metadata(root.join("opq/new")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(
            fs::metadata(root.join("bin/tool")).unwrap().mode() & 0o7777,
            0o4755
        );
        assert_eq!(
            fs::read_link(root.join("bin/link")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::metadata(root.join("bin/hard")).unwrap().ino(),
            fs::metadata(root.join("bin/tool")).unwrap().ino()
        );
        assert!(!root.join("opq/.wh..wh..opq").exists() && !root.join("etc/.wh.gone").exists());
    }

    #[test]
    fn hostile_layers_cannot_write_outside_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let victim = outer.path().join("victim");
        fs::create_dir(&victim).unwrap();

        // `..` in a path is refused outright.
        let dotdot = layer(&[file("../victim/x", b"pwned", 0o644)], true);
        let e = apply(&root, &[dotdot]).unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
        assert!(!victim.join("x").exists());

        // A symlink to an absolute path outside is resolved inside the root.
        let abs = victim.to_string_lossy().into_owned();
        let escape = layer(
            &[
                other("esc", EntryKind::Symlink(abs.clone().into_bytes())),
                file("esc/x", b"contained", 0o644),
                other("up", EntryKind::Symlink(b"../../../../../..".to_vec())),
                file("up/y", b"contained", 0o644),
                // Writing a file over a symlink replaces the link; it does not write through it.
                other("over", EntryKind::Symlink(format!("{abs}/z").into_bytes())),
                file("over", b"file", 0o644),
            ],
            true,
        );
        apply(&root, &[escape]).unwrap();
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "nothing outside");
        assert_eq!(
            fs::read(root.join(abs.trim_start_matches('/')).join("x")).unwrap(),
            b"contained"
        );
        assert_eq!(fs::read(root.join("y")).unwrap(), b"contained");
        assert!(fs::symlink_metadata(root.join("over")).unwrap().is_file());

        // A whiteout through a symlink removes inside the root only.
        fs::write(victim.join("keep"), "v").unwrap();
        let wh = layer(
            &[
                other("w", EntryKind::Symlink(abs.clone().into_bytes())),
                file("w/.wh.keep", b"", 0o644),
            ],
            true,
        );
        apply(&root, &[wh]).unwrap();
        assert!(victim.join("keep").exists());

        // Hard links to `..` are refused.
        let hl = layer(
            &[other("h", EntryKind::Hardlink(b"../victim/keep".to_vec()))],
            true,
        );
        assert!(apply(&root, &[hl]).is_err());
    }

    #[test]
    fn write_local_moves_the_tree_into_place() {
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let up = tempfile::tempdir().unwrap();
        fs::create_dir(up.path().join("app")).unwrap();
        fs::write(up.path().join("app/hello.txt"), "hi\n").unwrap();
        let l = crate::layer::write_layer(up.path(), &store, Default::default()).unwrap();
        let img = crate::export::assemble(b"{}", &[l]).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("rootfs");
        write_local(&dest, &img, &store).unwrap();
        assert_eq!(fs::read(dest.join("app/hello.txt")).unwrap(), b"hi\n");
        // Again, into the now non-empty directory with an unrelated file: that file stays.
        fs::write(dest.join("mine"), "m").unwrap();
        write_local(&dest, &img, &store).unwrap();
        assert_eq!(fs::read(dest.join("app/hello.txt")).unwrap(), b"hi\n");
        assert!(dest.join("mine").exists());
        // No temporary directories left beside it.
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
    }
}
