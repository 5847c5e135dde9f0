//! A local content-addressed blob store: `<root>/sha256/<hex>`.
//!
//! Writes go to a temporary file in the same directory, are fsynced, and are renamed into place
//! only once their digest is known, so a crash never leaves a partial blob under a digest name.
//! Reads verify nothing here; callers that hand a blob to somebody else verify (the exporter
//! re-hashes as it copies).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// An I/O error on a path.
    #[error("blob store: {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A digest string that is not `sha256:<64 hex>`.
    #[error("blob store: invalid digest `{0}`")]
    BadDigest(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A content-addressed directory of blobs.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        let dir = root.join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(BlobStore { root })
    }

    /// The path a blob with `digest` has (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let hex = digest_hex(digest)?;
        Ok(self.root.join("sha256").join(hex))
    }

    /// Whether the store holds `digest`.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Whether the store holds `digest` with exactly the bytes it names (and `size`, if given).
    ///
    /// The first check of a blob reads and hashes it, then leaves a stamp (size, inode, mtime,
    /// ctime) under `sha256/.verified/`; later checks compare the stamp with `stat` and only
    /// re-hash when the file was touched since. A blob that fails is removed, so whoever needs
    /// it fetches or rebuilds it instead of serving corrupt bytes.
    pub fn verify(&self, digest: &str, size: Option<u64>) -> bool {
        let Ok(path) = self.path(digest) else {
            return false;
        };
        let Ok(md) = fs::metadata(&path) else {
            return false;
        };
        if size.is_some_and(|s| s != md.len()) {
            tracing::warn!(%digest, "blob has the wrong size; removing it");
            let _ = fs::remove_file(&path);
            return false;
        }
        let stamp = stamp_of(&md);
        let stamp_path = self
            .root
            .join("sha256/.verified")
            .join(digest_hex(digest).unwrap_or_default());
        if fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
            return true;
        }
        let ok = File::open(&path)
            .and_then(|mut f| {
                let mut h = Sha256::new();
                io::copy(&mut f, &mut h)?;
                Ok(format!("sha256:{}", hex::encode(h.finalize())))
            })
            .is_ok_and(|d| d == digest);
        if ok {
            let _ = fs::create_dir_all(self.root.join("sha256/.verified"));
            let _ = fs::write(&stamp_path, stamp);
        } else {
            tracing::warn!(%digest, "blob does not match its digest; removing it");
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(&stamp_path);
        }
        ok
    }

    /// A new temporary file inside the store, to be [`BlobStore::commit`]ted.
    pub fn temp(&self) -> Result<tempfile::NamedTempFile, BlobError> {
        let dir = self.root.join("sha256");
        tempfile::Builder::new()
            .prefix(&crate::state::stale::temp_prefix(".tmp-"))
            .tempfile_in(&dir)
            .map_err(io_err(&dir))
    }

    /// Fsyncs `tmp` and renames it to the blob path of `digest`.
    pub fn commit(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<PathBuf, BlobError> {
        let dest = self.path(digest)?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        tmp.persist(&dest).map_err(|e| BlobError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Stores `data` and returns its digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<String, BlobError> {
        let digest = sha256_digest(data);
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut tmp = self.temp()?;
        tmp.write_all(data).map_err(io_err(tmp.path()))?;
        self.commit(tmp, &digest)?;
        Ok(digest)
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, digest: &str) -> Result<File, BlobError> {
        let p = self.path(digest)?;
        File::open(&p).map_err(io_err(&p))
    }
}

fn stamp_of(md: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{} {} {}.{} {}.{}",
        md.len(),
        md.ino(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    )
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:` digest, validated.
pub fn digest_hex(digest: &str) -> Result<&str, BlobError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(BlobError::BadDigest(digest.to_string())),
    }
}

/// A writer that hashes (sha256) and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, the `sha256:` digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let d = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, d, self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(
            d,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(store.contains(&d));
        let mut s = String::new();
        io::Read::read_to_string(&mut store.open_blob(&d).unwrap(), &mut s).unwrap();
        assert_eq!(s, "hello");
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn verify_detects_flipped_and_truncated_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"some layer bytes").unwrap();
        assert!(store.verify(&d, Some(16)));
        assert!(store.verify(&d, None), "stamped");
        // Flip a byte: same size, different content.
        let p = store.path(&d).unwrap();
        fs::write(&p, b"some layer bytez").unwrap();
        assert!(!store.verify(&d, Some(16)));
        assert!(!p.exists(), "a corrupt blob is removed");
        let d = store.put_bytes(b"another").unwrap();
        let p = store.path(&d).unwrap();
        fs::write(&p, b"anoth").unwrap();
        assert!(!store.verify(&d, Some(7)));
        assert!(!store.verify("sha256:zz", None));
    }

    #[test]
    fn rejects_bad_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(store.path("sha256:../../etc/passwd").is_err());
        assert!(store.path("md5:abc").is_err());
        assert!(!store.contains("sha256:zz"));
    }

    #[test]
    fn hash_writer_counts_and_hashes() {
        let mut w = HashWriter::new(Vec::new());
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        let (inner, d, n) = w.finish();
        assert_eq!(inner, b"hello");
        assert_eq!(n, 5);
        assert_eq!(d, sha256_digest(b"hello"));
    }
}
