//! Deterministic OCI layers made from an overlayfs upper directory.
//!
//! MemoBuild writes layers itself instead of asking containerd's walking differ, so that the same
//! files always give the same bytes: entries are visited depth first with each directory's names
//! sorted bytewise, owners and modes are taken as stored, mtimes are clamped to the build's
//! SOURCE_DATE_EPOCH, and no user-name lookups or current times enter a header. overlayfs markers
//! become OCI whiteouts: a 0/0 character device is a `.wh.<name>` file, a directory with
//! `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry.
//!
//! One pass produces both identities of a layer: the diff-id (sha256 of the tar) and the digest
//! (sha256 of the gzip blob), compressing on all cores ([`pgzip`]) into standard gzip.

pub mod check;
pub mod chunks;
pub mod offload;
pub mod pgzip;
mod tarwriter;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::blobs::{BlobError, BlobStore, HashWriter};
use offload::{Offload, Tee};
use pgzip::ParallelGzWriter;
pub use tarwriter::{Entry, EntryKind, TarWriter};

/// OCI media type of a gzip-compressed layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Options that decide a layer's bytes. Everything here is part of the layer's identity.
#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    /// Modification times later than this (seconds since the epoch) are clamped to it.
    pub source_date_epoch: i64,
    /// gzip level 0-9.
    pub gzip_level: u32,
}

impl Default for LayerOptions {
    /// Clamps every mtime to 0 (1970-01-01) unless SOURCE_DATE_EPOCH says otherwise, and uses
    /// gzip level 6 (Go's and BuildKit's default).
    fn default() -> Self {
        LayerOptions {
            source_date_epoch: 0,
            gzip_level: 6,
        }
    }
}

/// A layer blob in the local blob store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// `sha256:` of the compressed blob.
    pub digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the compressed blob.
    pub size: u64,
    /// Media type of the blob.
    pub media_type: String,
}

/// Errors while making a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading a file of the upper directory failed.
    #[error("layer: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Storing the blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Archives `upper` (an overlayfs upper directory, or any directory holding a diff) into a gzip
/// layer in `store`. Blocking: run it on a blocking thread.
pub fn write_layer(
    upper: &Path,
    store: &BlobStore,
    opts: LayerOptions,
) -> Result<LayerBlob, LayerError> {
    let tmp = store.temp()?;
    let file = tmp.as_file().try_clone().map_err(io_err(tmp.path()))?;
    // This thread reads the files and frames the tar; hashing the tar (the diff ID) and hashing
    // and writing the gzip stream happen on threads of their own, compressing on the pool.
    let compressed = Offload::new(
        "memobuild-layer-write",
        HashWriter::new(BufWriter::with_capacity(1 << 20, file)),
    )
    .map_err(io_err(tmp.path()))?;
    // Chunks an earlier layer compressed are copied from it (`chunks`).
    let tables = std::sync::Arc::new(chunks::ChunkTables::new(store.clone(), opts.gzip_level));
    let gz = ParallelGzWriter::new(compressed, opts.gzip_level).recording(Some(tables));
    let diff_hash = Offload::new("memobuild-layer-hash", HashWriter::new(io::sink()))
        .map_err(io_err(tmp.path()))?;
    let mut tw = TarWriter::new(Tee::new(diff_hash, gz));

    let mut walker = Walker {
        opts,
        links: HashMap::new(),
        buf: vec![0u8; 1 << 16],
    };
    walker.walk_dir(upper, b"", &mut tw)?;

    let (diff_hash, gz) = tw.finish().map_err(io_err(upper))?.into_parts();
    let (_, diff_id, _) = diff_hash.finish().map_err(io_err(upper))?.finish();
    let (compressed, chunks) = gz.finish_recorded().map_err(io_err(tmp.path()))?;
    let (mut bufw, digest, size) = compressed.finish().map_err(io_err(tmp.path()))?.finish();
    io::Write::flush(&mut bufw).map_err(io_err(tmp.path()))?;
    drop(bufw);
    // Both hashes were taken from the bytes just written: a later check of a record naming this
    // layer need not decompress it ([`check`]).
    store.commit_layer(tmp, &digest, &diff_id)?;
    chunks::save(store, &digest, opts.gzip_level, &chunks);
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
        media_type: MEDIA_TYPE_LAYER_GZIP.to_string(),
    })
}

/// Writes the tree under `root` as a plain tar to `out` (`type=tar`): sorted entries, owners,
/// modes and mtimes as stored, hard links kept. Blocking.
pub fn write_tree_tar(root: &Path, out: &mut dyn io::Write) -> Result<(), LayerError> {
    let mut tw = TarWriter::new(out);
    let mut walker = Walker {
        opts: LayerOptions {
            source_date_epoch: i64::MAX,
            gzip_level: 0,
        },
        links: HashMap::new(),
        buf: vec![0u8; 1 << 16],
    };
    walker.walk_dir(root, b"", &mut tw)?;
    let out = tw.finish().map_err(io_err(root))?;
    out.flush().map_err(io_err(root))?;
    Ok(())
}

struct Walker {
    opts: LayerOptions,
    /// (dev, inode) of files with several links → the path written first.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
}

impl Walker {
    fn walk_dir<W: io::Write>(
        &mut self,
        dir: &Path,
        rel: &[u8],
        tw: &mut TarWriter<W>,
    ) -> Result<(), LayerError> {
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let mut rel_path = rel.to_vec();
            if !rel_path.is_empty() {
                rel_path.push(b'/');
            }
            rel_path.extend_from_slice(name.as_bytes());
            self.entry(&path, name.as_bytes(), rel, rel_path, tw)?;
        }
        Ok(())
    }

    fn entry<W: io::Write>(
        &mut self,
        path: &Path,
        name: &[u8],
        parent_rel: &[u8],
        rel: Vec<u8>,
        tw: &mut TarWriter<W>,
    ) -> Result<(), LayerError> {
        let md = fs::symlink_metadata(path).map_err(io_err(path))?;
        let ft = md.file_type();
        let mtime = md.mtime().min(self.opts.source_date_epoch);

        if ft.is_char_device() && md.rdev() == 0 {
            // overlayfs whiteout → OCI whiteout file.
            let mut wh = parent_rel.to_vec();
            if !wh.is_empty() {
                wh.push(b'/');
            }
            wh.extend_from_slice(b".wh.");
            wh.extend_from_slice(name);
            let mut e = Entry::new(wh, EntryKind::File, 0);
            e.mtime = mtime;
            return tw.append_bytes(&e, b"").map_err(io_err(path));
        }

        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err(path))?;
            EntryKind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if ft.is_file() {
            if md.nlink() > 1 {
                let key = (md.dev(), md.ino());
                if let Some(first) = self.links.get(&key) {
                    EntryKind::Hardlink(first.clone())
                } else {
                    self.links.insert(key, rel.clone());
                    EntryKind::File
                }
            } else {
                EntryKind::File
            }
        } else if ft.is_char_device() {
            let (major, minor) = dev_numbers(md.rdev());
            EntryKind::Char { major, minor }
        } else if ft.is_block_device() {
            let (major, minor) = dev_numbers(md.rdev());
            EntryKind::Block { major, minor }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            // Sockets do not belong in images.
            return Ok(());
        };

        let xattrs = read_xattrs(path)?;
        let opaque = ft.is_dir()
            && xattrs_opaque(path)
                .map_err(io_err(path))?
                .is_some_and(|v| v == b"y");

        let mut e = Entry::new(rel.clone(), kind.clone(), md.mode() & 0o7777);
        e.uid = u64::from(md.uid());
        e.gid = u64::from(md.gid());
        e.mtime = mtime;
        e.xattrs = xattrs;

        match kind {
            EntryKind::File => {
                e.size = md.len();
                tw.append_header(&e).map_err(io_err(path))?;
                let mut f = File::open(path).map_err(io_err(path))?;
                loop {
                    let n = f.read(&mut self.buf).map_err(io_err(path))?;
                    if n == 0 {
                        break;
                    }
                    tw.write_data(&self.buf[..n]).map_err(io_err(path))?;
                }
                tw.finish_entry().map_err(io_err(path))?;
            }
            EntryKind::Dir => {
                tw.append_header(&e).map_err(io_err(path))?;
                if opaque {
                    let mut opq = rel.clone();
                    opq.extend_from_slice(b"/.wh..wh..opq");
                    let mut w = Entry::new(opq, EntryKind::File, 0);
                    w.mtime = mtime;
                    tw.append_bytes(&w, b"").map_err(io_err(path))?;
                }
                self.walk_dir(path, &rel, tw)?;
            }
            _ => tw.append_header(&e).map_err(io_err(path))?,
        }
        Ok(())
    }
}

fn dev_numbers(rdev: u64) -> (u32, u32) {
    (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    )
}

/// Extended attributes that belong in a layer: everything but overlayfs' own `trusted.overlay.*`
/// bookkeeping (and SELinux labels, which the runtime assigns).
fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, LayerError> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(io_err(path)(e)),
    };
    for name in names {
        let Some(n) = name.to_str() else { continue };
        if n.starts_with("trusted.overlay.") || n == "security.selinux" {
            continue;
        }
        if let Some(v) = xattr::get(path, &name).map_err(io_err(path))? {
            out.insert(n.to_string(), v);
        }
    }
    Ok(out)
}

fn xattrs_opaque(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match xattr::get(path, "trusted.overlay.opaque") {
        Ok(v) => Ok(v),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn entries(store: &BlobStore, blob: &LayerBlob) -> Vec<(String, u8, u32, Vec<u8>)> {
        let mut f = store.open_blob(&blob.digest).unwrap();
        let mut gz = Vec::new();
        f.read_to_end(&mut gz).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(crate::blobs::sha256_digest(&raw), blob.diff_id);
        assert_eq!(crate::blobs::sha256_digest(&gz), blob.digest);
        assert_eq!(gz.len() as u64, blob.size);
        let mut ar = tar::Archive::new(&raw[..]);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().to_string_lossy().into_owned();
                let t = e.header().entry_type().as_byte();
                let m = e.header().mode().unwrap();
                let mut d = Vec::new();
                e.read_to_end(&mut d).unwrap();
                (p, t, m, d)
            })
            .collect()
    }

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("app/sub")).unwrap();
        fs::write(root.join("app/b.txt"), "b").unwrap();
        fs::write(root.join("app/a.txt"), "a").unwrap();
        fs::set_permissions(root.join("app/a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(root.join("app/a.txt"), root.join("app/sub/a-link")).unwrap();
        symlink("a.txt", root.join("app/link")).unwrap();
    }

    #[test]
    fn sorted_entries_modes_links() {
        let up = tempfile::tempdir().unwrap();
        tree(up.path());
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let blob = write_layer(up.path(), &store, LayerOptions::default()).unwrap();
        let es = entries(&store, &blob);
        let names: Vec<&str> = es.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "app/",
                "app/a.txt",
                "app/b.txt",
                "app/link",
                "app/sub/",
                "app/sub/a-link"
            ]
        );
        assert_eq!(es[1].2, 0o640);
        assert_eq!(es[1].3, b"a");
        assert_eq!(es[3].1, b'2');
        assert_eq!(es[5].1, b'1');
    }

    #[test]
    fn same_files_different_mtimes_same_digest() {
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let a = tempfile::tempdir().unwrap();
        tree(a.path());
        let first = write_layer(a.path(), &store, LayerOptions::default()).unwrap();
        let b = tempfile::tempdir().unwrap();
        tree(b.path());
        filetime::set_file_mtime(
            b.path().join("app/b.txt"),
            filetime::FileTime::from_unix_time(1_000_000, 0),
        )
        .unwrap();
        let second = write_layer(b.path(), &store, LayerOptions::default()).unwrap();
        assert_eq!(first, second);

        // A different epoch is a different layer (mtimes are in the bytes).
        let third = write_layer(
            b.path(),
            &store,
            LayerOptions {
                source_date_epoch: 500,
                gzip_level: 6,
            },
        )
        .unwrap();
        assert_ne!(first.diff_id, third.diff_id);
    }

    #[test]
    fn overlay_whiteouts_become_oci_whiteouts() {
        let up = tempfile::tempdir().unwrap();
        fs::create_dir(up.path().join("etc")).unwrap();
        nix::sys::stat::mknod(
            &up.path().join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        fs::create_dir(up.path().join("opq")).unwrap();
        fs::write(up.path().join("opq/new"), "n").unwrap();
        // trusted.* xattrs need CAP_SYS_ADMIN; tests run as root on the CI machine.
        let opaque_ok = xattr::set(up.path().join("opq"), "trusted.overlay.opaque", b"y").is_ok();
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let blob = write_layer(up.path(), &store, LayerOptions::default()).unwrap();
        let names: Vec<String> = entries(&store, &blob).into_iter().map(|e| e.0).collect();
        assert!(names.contains(&"etc/.wh.gone".to_string()), "{names:?}");
        assert!(!names.contains(&"etc/gone".to_string()));
        if opaque_ok {
            assert_eq!(
                names[names.len() - 3..],
                ["opq/", "opq/.wh..wh..opq", "opq/new"]
            );
        }
    }

    #[test]
    fn empty_upper_is_an_empty_tar() {
        let up = tempfile::tempdir().unwrap();
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let blob = write_layer(up.path(), &store, LayerOptions::default()).unwrap();
        assert!(entries(&store, &blob).is_empty());
        // sha256 of 1024 zero bytes: the canonical empty layer diff-id.
        assert_eq!(
            blob.diff_id,
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
    }
}
