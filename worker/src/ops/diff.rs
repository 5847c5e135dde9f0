//! DiffOp: the changes that turn `lower` into `upper`, as layers.
//!
//! When lower's layer chain is a prefix of upper's (upper was built on lower, the usual case), the
//! diff is upper's remaining layers and nothing runs. Otherwise both filesystems are mounted
//! read-only and compared, and the differences are written as one layer: entries that are new or
//! changed in upper (type, mode, owner, size, contents, link target, device, xattrs), and a
//! whiteout for each entry of lower that upper does not have. Applying that layer on lower gives
//! upper's files (hard links between changed files are not kept).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use memobuild_proto::pb;

use crate::containerd::MountGuard;
use crate::ops::mounts::mount_input;
use crate::solver::{FsRef, Output, Solve, SolveError};

impl Solve {
    pub(crate) async fn diff(
        &self,
        digest: &str,
        diff: pb::DiffOp,
        inputs: Vec<Output>,
    ) -> Result<Vec<Output>, SolveError> {
        let side = |i: i64, what: &str| -> Result<FsRef, SolveError> {
            match mount_input(&inputs, i).map_err(|m| self.error(digest, m))? {
                Output::Fs(fs) => Ok(fs),
                Output::Local(_) => Err(self.error(
                    digest,
                    format!("diff {what} is a local directory; copy it into a filesystem first"),
                )),
            }
        };
        let lower = side(diff.lower.map(|d| d.input).unwrap_or(-1), "lower")?;
        let upper = side(diff.upper.map(|d| d.input).unwrap_or(-1), "upper")?;
        if let Some(rest) = layers_after_prefix(&lower, &upper) {
            return Ok(vec![Output::Fs(FsRef { layers: rest })]);
        }

        let mut views: Vec<(MountGuard, String)> = Vec::new();
        let mut dirs: Vec<tempfile::TempDir> = Vec::new();
        let result = self
            .compute_diff(digest, &lower, &upper, &mut views, &mut dirs)
            .await;
        for (g, key) in views {
            let _ = g.unmount();
            self.build.remove_snapshot(&key).await;
        }
        drop(dirs);
        result.map(|fs| vec![Output::Fs(fs)])
    }

    async fn compute_diff(
        &self,
        digest: &str,
        lower: &FsRef,
        upper: &FsRef,
        views: &mut Vec<(MountGuard, String)>,
        dirs: &mut Vec<tempfile::TempDir>,
    ) -> Result<FsRef, SolveError> {
        let lower_root = self.mount_fs_or_empty(digest, lower, views, dirs).await?;
        let upper_root = self.mount_fs_or_empty(digest, upper, views, dirs).await?;
        let out = self.temp_dir().map_err(|m| self.error(digest, m))?;
        let out_path = out.path().to_path_buf();
        dirs.push(out);
        let blobs = self.build.blobs().clone();
        let opts = self.opts.layer;
        let layer = tokio::task::spawn_blocking(move || {
            let changed = diff_dir(&lower_root, &upper_root, &out_path, Path::new(""))
                .map_err(|e| format!("comparing the filesystems: {e}"))?;
            if !changed {
                return Ok(None);
            }
            crate::layer::write_layer(&out_path, &blobs, opts)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| self.error(digest, format!("diff task failed: {e}")))?
        .map_err(|m| self.error(digest, m))?;
        Ok(FsRef {
            layers: layer.into_iter().collect(),
        })
    }

    /// A read-only mount of `fs` (an empty directory for scratch).
    async fn mount_fs_or_empty(
        &self,
        digest: &str,
        fs: &FsRef,
        views: &mut Vec<(MountGuard, String)>,
        dirs: &mut Vec<tempfile::TempDir>,
    ) -> Result<PathBuf, SolveError> {
        if fs.layers.is_empty() {
            let t = self.temp_dir().map_err(|m| self.error(digest, m))?;
            let p = t.path().to_path_buf();
            dirs.push(t);
            return Ok(p);
        }
        let (g, key) = self.mount_view(digest, fs).await?;
        let p = g.path().to_path_buf();
        views.push((g, key));
        Ok(p)
    }
}

/// Upper's layers above lower's, if lower's chain (by diff ID) is a prefix of upper's.
fn layers_after_prefix(lower: &FsRef, upper: &FsRef) -> Option<Vec<crate::layer::LayerBlob>> {
    let n = lower.layers.len();
    if n > upper.layers.len() {
        return None;
    }
    let same = lower
        .layers
        .iter()
        .zip(&upper.layers)
        .all(|(l, u)| l.diff_id == u.diff_id);
    same.then(|| upper.layers[n..].to_vec())
}

/// Writes into `out` what turns directory `lower/rel` into `upper/rel` (both exist as
/// directories); returns whether anything was written. Directories of `out` are created as
/// needed with upper's metadata.
fn diff_dir(lower: &Path, upper: &Path, out: &Path, rel: &Path) -> io::Result<bool> {
    let (l_dir, u_dir, o_dir) = (lower.join(rel), upper.join(rel), out.join(rel));
    let mut changed = false;
    let u_names = sorted_names(&u_dir)?;
    for name in sorted_names(&l_dir)? {
        if u_names.binary_search(&name).is_err() {
            ensure_dir(upper, out, rel)?;
            whiteout(&o_dir.join(&name))?;
            changed = true;
        }
    }
    for name in &u_names {
        let child = rel.join(name);
        let u = u_dir.join(name);
        let u_md = fs::symlink_metadata(&u)?;
        let l_md = fs::symlink_metadata(l_dir.join(name)).ok();
        if u_md.is_dir() {
            match &l_md {
                Some(l) if l.is_dir() => {
                    if !same_meta(l, &u_md) || !same_xattrs(&l_dir.join(name), &u) {
                        ensure_dir(upper, out, &child)?;
                        changed = true;
                    }
                    changed |= diff_dir(lower, upper, out, &child)?;
                }
                _ => {
                    ensure_dir(upper, out, rel)?;
                    copy_tree(&u, &o_dir.join(name))?;
                    changed = true;
                }
            }
            continue;
        }
        let same = match &l_md {
            Some(l) => same_entry(&l_dir.join(name), l, &u, &u_md)?,
            None => false,
        };
        if !same {
            ensure_dir(upper, out, rel)?;
            copy_entry(&u, &u_md, &o_dir.join(name))?;
            changed = true;
        }
    }
    if changed && !rel.as_os_str().is_empty() {
        let md = fs::symlink_metadata(&u_dir)?;
        set_times(&o_dir, &md)?;
    }
    Ok(changed)
}

fn sorted_names(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// Creates `out/rel` and its missing parents with the metadata of the same paths in `upper`.
fn ensure_dir(upper: &Path, out: &Path, rel: &Path) -> io::Result<()> {
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let o = out.join(&cur);
        if fs::symlink_metadata(&o).is_ok() {
            continue;
        }
        let u = upper.join(&cur);
        let md = fs::symlink_metadata(&u)?;
        fs::create_dir(&o)?;
        apply_meta(&u, &md, &o)?;
    }
    Ok(())
}

/// An overlayfs whiteout (a 0/0 character device), which the layer writer turns into `.wh.NAME`.
fn whiteout(path: &Path) -> io::Result<()> {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .map_err(io::Error::from)
}

fn same_meta(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid()
}

fn same_xattrs(a: &Path, b: &Path) -> bool {
    xattrs(a) == xattrs(b)
}

fn xattrs(p: &Path) -> Vec<(std::ffi::OsString, Option<Vec<u8>>)> {
    let mut out: Vec<_> = xattr::list(p)
        .map(|names| {
            names
                .filter(|n| !n.to_string_lossy().starts_with("trusted.overlay."))
                .map(|n| {
                    let v = xattr::get(p, &n).ok().flatten();
                    (n, v)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether two non-directory entries are the same file as far as a layer can tell.
fn same_entry(l: &Path, l_md: &fs::Metadata, u: &Path, u_md: &fs::Metadata) -> io::Result<bool> {
    if !same_meta(l_md, u_md) || !same_xattrs(l, u) {
        return Ok(false);
    }
    let ft = u_md.file_type();
    if ft.is_symlink() {
        return Ok(fs::read_link(l)? == fs::read_link(u)?);
    }
    if ft.is_char_device() || ft.is_block_device() {
        return Ok(l_md.rdev() == u_md.rdev());
    }
    if ft.is_file() {
        if l_md.len() != u_md.len() {
            return Ok(false);
        }
        if l_md.dev() == u_md.dev() && l_md.ino() == u_md.ino() {
            return Ok(true);
        }
        return same_contents(l, u);
    }
    Ok(true)
}

fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies directory `src` and everything under it to `dest` (which must not exist).
fn copy_tree(src: &Path, dest: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    fs::create_dir(dest)?;
    for name in sorted_names(src)? {
        let s = src.join(&name);
        let s_md = fs::symlink_metadata(&s)?;
        if s_md.is_dir() {
            copy_tree(&s, &dest.join(&name))?;
        } else {
            copy_entry(&s, &s_md, &dest.join(&name))?;
        }
    }
    apply_meta(src, &md, dest)?;
    set_times(dest, &md)
}

/// Copies one non-directory entry with its owner, mode, xattrs and mtime. Sockets are skipped.
fn copy_entry(src: &Path, md: &fs::Metadata, dest: &Path) -> io::Result<()> {
    if !crate::fsops::create_like(src, md, dest)? {
        return Ok(());
    }
    apply_meta(src, md, dest)?;
    set_times(dest, md)
}

/// Owner, permission bits and xattrs of `src` onto `dest` (not following symlinks).
fn apply_meta(src: &Path, md: &fs::Metadata, dest: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(dest, Some(md.uid()), Some(md.gid()))?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(dest, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    for (name, value) in xattrs(src) {
        if let Some(v) = value {
            // Best effort, as for copies: a filesystem without xattrs just doesn't carry them.
            let _ = xattr::set(dest, &name, &v);
        }
    }
    Ok(())
}

fn set_times(dest: &Path, md: &fs::Metadata) -> io::Result<()> {
    let t = filetime::FileTime::from_last_modification_time(md);
    filetime::set_symlink_file_times(dest, t, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerBlob;

    fn layer(id: &str) -> LayerBlob {
        LayerBlob {
            digest: format!("sha256:{id}{id}"),
            diff_id: format!("sha256:{id}"),
            size: 1,
            media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
        }
    }

    fn fs(ids: &[&str]) -> FsRef {
        FsRef {
            layers: ids.iter().map(|i| layer(i)).collect(),
        }
    }

    #[test]
    fn prefix_diffs_are_the_remaining_layers() {
        let rest = layers_after_prefix(&fs(&["a", "b"]), &fs(&["a", "b", "c", "d"]));
        assert_eq!(rest, Some(vec![layer("c"), layer("d")]));
        assert_eq!(
            layers_after_prefix(&fs(&[]), &fs(&["a"])),
            Some(vec![layer("a")])
        );
        assert_eq!(layers_after_prefix(&fs(&["a"]), &fs(&["a"])), Some(vec![]));
        assert_eq!(
            layers_after_prefix(&fs(&["a", "x"]), &fs(&["a", "b"])),
            None
        );
        assert_eq!(layers_after_prefix(&fs(&["a", "b"]), &fs(&["a"])), None);
    }

    #[test]
    fn computed_diff_has_changes_and_whiteouts() -> io::Result<()> {
        let lower = tempfile::tempdir()?;
        let upper = tempfile::tempdir()?;
        let out = tempfile::tempdir()?;
        let (l, u) = (lower.path(), upper.path());
        for root in [l, u] {
            fs::create_dir_all(root.join("same/deep"))?;
            fs::write(root.join("same/deep/f"), b"unchanged")?;
            fs::write(root.join("edited"), if root == l { b"old" } else { b"new" })?;
            fs::create_dir(root.join("chmodded"))?;
        }
        fs::set_permissions(u.join("chmodded"), fs::Permissions::from_mode(0o700))?;
        fs::write(l.join("gone"), b"x")?;
        fs::create_dir_all(l.join("gonedir/sub"))?;
        fs::create_dir_all(u.join("newdir/sub"))?;
        fs::write(u.join("newdir/sub/f"), b"n")?;
        fs::write(u.join("same/deep/added"), b"a")?;
        std::os::unix::fs::symlink("edited", u.join("link"))?;

        assert!(diff_dir(l, u, out.path(), Path::new(""))?);
        let o = out.path();
        let md = |p: &str| fs::symlink_metadata(o.join(p));
        assert_eq!(fs::read(o.join("edited"))?, b"new");
        assert!(md("gone")?.file_type().is_char_device());
        assert!(md("gonedir")?.file_type().is_char_device());
        assert_eq!(fs::read(o.join("newdir/sub/f"))?, b"n");
        assert_eq!(fs::read(o.join("same/deep/added"))?, b"a");
        assert!(md("same/deep/f").is_err(), "unchanged files are left out");
        assert_eq!(md("chmodded")?.mode() & 0o7777, 0o700);
        assert_eq!(fs::read_link(o.join("link"))?, Path::new("edited"));

        let empty = tempfile::tempdir()?;
        assert!(!diff_dir(l, l, empty.path(), Path::new(""))?);
        assert_eq!(fs::read_dir(empty.path())?.count(), 0);
        Ok(())
    }
}
