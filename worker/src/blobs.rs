//! A local content-addressed blob store: `<root>/sha256/<hex>`.
//!
//! Writes go to a temporary file in the same directory, are fsynced, and are renamed into place
//! only once their digest is known, so a crash never leaves a partial blob under a digest name.
//! Reads verify nothing here; callers that hand a blob to somebody else verify
//! ([`BlobStore::verify`], once per blob, then a stamp), and the layers a cache record or an
//! image names are checked against their diff IDs too ([`crate::layer::check`]), whose results
//! the same stamp remembers.

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
        let stat = stamp_of(&md);
        let old = self.read_stamp(digest);
        if old.as_ref().is_some_and(|s| s.stat == stat) {
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
            // The diff ID a stamp remembers belongs to the digest, not to the file: bytes that
            // hash to `digest` again decompress to it again.
            let diff_id = old.and_then(|s| s.diff_id);
            self.write_stamp(digest, &Stamp { stat, diff_id });
        } else {
            tracing::warn!(%digest, "blob does not match its digest; removing it");
            let _ = fs::remove_file(&path);
            if let Ok(p) = self.stamp_path(digest) {
                let _ = fs::remove_file(p);
            }
            if let Ok(p) = self.chunk_table(digest) {
                let _ = fs::remove_file(p);
            }
        }
        ok
    }

    /// The diff ID (sha256 of the uncompressed tar) remembered for layer blob `digest`, if one
    /// was: by [`BlobStore::remember_diff_id`] when the layer was made or unpacked, or after a
    /// check decompressed it. It says what the bytes of `digest` decompress to, so it holds
    /// only while the blob [verifies](BlobStore::verify); callers check that first.
    pub fn known_diff_id(&self, digest: &str) -> Option<String> {
        self.read_stamp(digest)?.diff_id
    }

    /// Remembers that the bytes of `digest` decompress to a tar whose sha256 is `diff_id`, next
    /// to the blob's verification stamp, so that checking a layer's diff ID again is a read of
    /// that stamp. Only for a pair established from the bytes themselves (the layer was written
    /// or decompressed and both hashes taken), never for one a record or a config claims.
    /// Best effort: a stamp that cannot be written means the next check decompresses again.
    pub fn remember_diff_id(&self, digest: &str, diff_id: &str) {
        if digest_hex(diff_id).is_err() {
            return;
        }
        // Without a stamp the file's stat is unknown to be good: `-` never matches one, so the
        // next `verify` hashes the blob (and keeps the diff ID).
        let stat = self
            .read_stamp(digest)
            .map_or_else(|| "-".to_string(), |s| s.stat);
        self.write_stamp(
            digest,
            &Stamp {
                stat,
                diff_id: Some(diff_id.to_string()),
            },
        );
    }

    /// Where the chunk tables of compressed layers are (`layer::chunks`).
    pub fn chunk_tables(&self) -> PathBuf {
        self.root.join("sha256/.gzip-chunks")
    }

    /// The chunk table of layer blob `digest` (whether or not it exists).
    pub fn chunk_table(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self.chunk_tables().join(digest_hex(digest)?))
    }

    fn stamp_path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let hex = digest_hex(digest)?;
        Ok(self.root.join("sha256/.verified").join(hex))
    }

    fn read_stamp(&self, digest: &str) -> Option<Stamp> {
        Stamp::parse(&fs::read_to_string(self.stamp_path(digest).ok()?).ok()?)
    }

    /// Replaces the stamp of `digest` by rename, so that a concurrent reader (another build on
    /// the same state directory) never sees half of one: a torn stamp could pair a good stat
    /// with a cut-off diff ID. Best effort: a stamp is only a shortcut.
    fn write_stamp(&self, digest: &str, stamp: &Stamp) {
        let Ok(path) = self.stamp_path(digest) else {
            return;
        };
        let dir = self.root.join("sha256/.verified");
        let _ = fs::create_dir_all(&dir);
        let written = tempfile::Builder::new()
            .prefix(&crate::state::stale::temp_prefix(".tmp-"))
            .tempfile_in(&dir)
            .and_then(|mut tmp| {
                tmp.write_all(stamp.render().as_bytes())?;
                tmp.persist(&path).map_err(|e| e.error)?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::debug!(%digest, "cannot write the blob's stamp: {e}");
        }
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

    /// Stores the layer the caller just wrote to `tmp`, hashing it to `digest` (compressed)
    /// and `diff_id` (uncompressed) as it went: committed unless the store has it already,
    /// and stamped once with both, so that neither its first [`BlobStore::verify`] nor a check
    /// of its diff ID reads it again.
    pub fn commit_layer(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &str,
        diff_id: &str,
    ) -> Result<(), BlobError> {
        if self.contains(digest) {
            self.remember_diff_id(digest, diff_id);
            return Ok(());
        }
        let dest = self.commit(tmp, digest)?;
        let stat = fs::metadata(&dest).map_or_else(|_| "-".to_string(), |md| stamp_of(&md));
        let diff_id = digest_hex(diff_id).is_ok().then(|| diff_id.to_string());
        self.write_stamp(digest, &Stamp { stat, diff_id });
        Ok(())
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

/// What `.verified/<hex>` holds: the blob file's `stat` when it last hashed to its digest and,
/// for a layer whose tar was hashed, its diff ID (`<size> <inode> <mtime> <ctime>[ <diff ID>]`;
/// stamps written before diff IDs were remembered have no fifth field).
struct Stamp {
    stat: String,
    diff_id: Option<String>,
}

impl Stamp {
    fn parse(text: &str) -> Option<Stamp> {
        let text = text.trim_end();
        match text.rsplit_once(' ') {
            Some((stat, d)) if d.starts_with("sha256:") => Some(Stamp {
                stat: stat.to_string(),
                diff_id: digest_hex(d).is_ok().then(|| d.to_string()),
            }),
            _ => Some(Stamp {
                stat: text.to_string(),
                diff_id: None,
            }),
        }
    }

    fn render(&self) -> String {
        match &self.diff_id {
            Some(d) => format!("{} {d}", self.stat),
            None => self.stat.clone(),
        }
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

/// A reader that hashes (sha256) what is read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: io::Read> HashReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The `sha256:` digest of what was read.
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

impl<R: io::Read> io::Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
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

    // Verifies: a remembered diff ID lives in the blob's stamp and survives a re-hash (the file
    // was touched, its content unchanged), and goes with the stamp when the blob is damaged;
    // remembering one for a blob never checked does not make the blob count as verified.
    #[test]
    fn diff_ids_are_kept_in_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"layer").unwrap();
        let diff = sha256_digest(b"tar");
        store.remember_diff_id(&d, &diff);
        assert_eq!(store.known_diff_id(&d), Some(diff.clone()));
        let stamp = dir
            .path()
            .join("sha256/.verified")
            .join(digest_hex(&d).unwrap());
        assert!(fs::read_to_string(&stamp).unwrap().starts_with("- "));
        assert!(store.verify(&d, Some(5)), "hashed, then stamped");
        let text = fs::read_to_string(&stamp).unwrap();
        assert!(!text.starts_with('-') && text.ends_with(&diff), "{text}");

        // Same bytes, new inode: re-hashed, the diff ID kept.
        let p = store.path(&d).unwrap();
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"layer").unwrap();
        assert!(store.verify(&d, Some(5)));
        assert_eq!(store.known_diff_id(&d), Some(diff.clone()));
        assert_ne!(fs::read_to_string(&stamp).unwrap(), text);

        fs::write(&p, b"lay3r").unwrap();
        assert!(!store.verify(&d, Some(5)));
        assert_eq!(store.known_diff_id(&d), None);
        // A stamp written before diff IDs were remembered still verifies.
        let d = store.put_bytes(b"old").unwrap();
        assert!(store.verify(&d, None));
        assert_eq!(store.known_diff_id(&d), None);
        assert!(store.verify(&d, None));
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
