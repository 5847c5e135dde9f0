//! The server's object store on disk: `DIR/ac/<2 hex>/<key>` and `DIR/cas/<2 hex>/<hex>`.
//!
//! Uploads are written to a temporary file under `DIR/tmp/`, fsynced, and renamed into place, so
//! a crash or a dropped connection never leaves a partial object under a final name, and two
//! uploads of the same object at once just rename twice. Every function here blocks: callers run
//! them on tokio's blocking pool.
//!
//! A blob (`cas/`) is checked against its name before it is served or claimed for the first time
//! since the server started or the file changed ([`Store::open_blob`]): a file damaged on disk
//! would otherwise be handed to every client, and HEAD would keep telling them it is there, so
//! none would ever upload a good copy. What was checked is remembered in memory by the file's
//! identity (device, inode, size, mtime), so a blob is hashed once, not on every read; an upload
//! is checked while it streams in and remembered as checked when it is committed. A damaged blob
//! is removed and reported as missing. Action records (`ac/`) are opaque to the server and are
//! not checked.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

/// The two namespaces of the Bazel HTTP cache protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Action records (`/ac/<key>`): opaque bytes under a key the client chose.
    Ac,
    /// Content blobs (`/cas/<sha256 hex>`): addressed by the SHA-256 of their bytes.
    Cas,
}

impl Kind {
    /// The URL path segment and directory name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ac => "ac",
            Kind::Cas => "cas",
        }
    }
}

/// One object: its namespace and its 32-byte name (a BLAKE3 key or a SHA-256 digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// Namespace.
    pub kind: Kind,
    /// The name, decoded from 64 lowercase hex digits.
    pub hash: [u8; 32],
}

impl ObjectId {
    /// Parses a name from a URL: exactly 64 lowercase hex digits, nothing else (so no path
    /// separators, dots or percent-escapes can reach the file system).
    pub fn parse(kind: Kind, name: &str) -> Option<ObjectId> {
        if name.len() != 64 || !name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(name, &mut hash).ok()?;
        Some(ObjectId { kind, hash })
    }

    /// The name as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.hex())
    }
}

/// An object found on disk when the server starts.
#[derive(Debug)]
pub struct Found {
    /// Which object.
    pub id: ObjectId,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last read or written (the later of atime and mtime).
    pub last_used: SystemTime,
}

/// Temporary files older than this are leftovers of a crash and removed when the server starts.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What a blob's file was when its content was last found to match its name. A write to the
/// file moves its mtime (at the file system clock's granularity, a few milliseconds at worst);
/// a replacement is another inode. Damage that leaves all four alone (bit rot under the file
/// system, or a tamperer who restores the mtime) is caught at the next start, when nothing is
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(md: &fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
        }
    }
}

/// A blob looked up with [`Store::open_blob`].
#[derive(Debug)]
pub enum Blob {
    /// Not stored.
    Missing,
    /// Stored and its content matches its name: the open file (at its start) and its size.
    Found(File, u64),
    /// The file did not match its name (it has been removed): the SHA-256 of what it held.
    Damaged(String),
}

/// Buffer for hashing a blob.
const HASH_BUFFER: usize = 256 * 1024;

/// The directory tree holding the objects.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Blobs whose content was found to match their name, by file identity.
    verified: Mutex<HashMap<[u8; 32], Stamp>>,
}

impl Store {
    /// Opens (creating) a store under `root` and removes stale temporary files.
    pub fn open(root: &Path) -> io::Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
            verified: Mutex::default(),
        };
        for dir in [
            store.root.join("ac"),
            store.root.join("cas"),
            store.tmp_dir(),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        }
        let now = SystemTime::now();
        for entry in fs::read_dir(store.tmp_dir())?.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMP);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where `id` lives (whether or not it exists).
    pub fn path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.hex();
        self.root.join(id.kind.as_str()).join(&hex[..2]).join(hex)
    }

    /// A new temporary file for an upload, to be [`Store::commit`]ted or dropped.
    pub fn temp(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.tmp_dir())
    }

    fn verified(&self) -> MutexGuard<'_, HashMap<[u8; 32], Stamp>> {
        // A stamp map half-updated by a panicking holder only costs a blob one more hash.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fsyncs `tmp` and renames it to the path of `id`, replacing any object already there.
    pub fn commit(&self, tmp: tempfile::NamedTempFile, id: &ObjectId) -> io::Result<()> {
        let dest = self.path(id);
        let shard = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&shard)?;
        self.verified().remove(&id.hash);
        persist_durably(tmp, &dest)
    }

    /// [`Store::commit`] for a blob whose content the caller has checked against its name (as
    /// it streamed in), so that serving it does not hash it again.
    pub fn commit_checked(&self, tmp: tempfile::NamedTempFile, id: &ObjectId) -> io::Result<()> {
        // The rename keeps the inode and times, so the stamp taken now holds for the result.
        let stamp = Stamp::of(&tmp.as_file().metadata()?);
        self.commit(tmp, id)?;
        if id.kind == Kind::Cas {
            self.verified().insert(id.hash, stamp);
        }
        Ok(())
    }

    /// Opens blob `id` for reading (marking it used now) once its content is known to match its
    /// name: checked now unless the same file was checked before. A damaged blob is removed.
    pub fn open_blob(&self, id: &ObjectId) -> io::Result<Blob> {
        debug_assert_eq!(id.kind, Kind::Cas);
        let path = self.path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Blob::Missing),
            Err(e) => return Err(e),
        };
        let md = file.metadata()?;
        let stamp = Stamp::of(&md);
        if self.verified().get(&id.hash) != Some(&stamp) {
            let actual = sha256_of(&mut file)?;
            if actual != id.hash {
                self.verified().remove(&id.hash);
                // Only this file: an upload may have put a good one in its place meanwhile.
                let same = fs::metadata(&path).is_ok_and(|now| Stamp::of(&now).ino == stamp.ino);
                if same {
                    self.remove(id)?;
                }
                return Ok(Blob::Damaged(hex::encode(actual)));
            }
            self.verified().insert(id.hash, stamp);
            file.rewind()?;
        }
        touch(&path);
        Ok(Blob::Found(file, md.len()))
    }

    /// Opens `id` for reading and marks it used now. `None` when it is not stored.
    pub fn open_object(&self, id: &ObjectId) -> io::Result<Option<(File, u64)>> {
        let path = self.path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        touch(&path);
        Ok(Some((file, len)))
    }

    /// The size of `id` (marking it used now). `None` when it is not stored.
    pub fn stat(&self, id: &ObjectId) -> io::Result<Option<u64>> {
        let path = self.path(id);
        match fs::metadata(&path) {
            Ok(m) => {
                touch(&path);
                Ok(Some(m.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes `id`; a missing object is not an error.
    pub fn remove(&self, id: &ObjectId) -> io::Result<()> {
        if id.kind == Kind::Cas {
            self.verified().remove(&id.hash);
        }
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every well-named object on disk. Files with other names are left alone and not counted.
    pub fn scan(&self) -> io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for kind in [Kind::Ac, Kind::Cas] {
            for shard in fs::read_dir(self.root.join(kind.as_str()))?.flatten() {
                let shard_name = shard.file_name();
                let Some(shard_name) = shard_name.to_str() else {
                    continue;
                };
                let Ok(entries) = fs::read_dir(shard.path()) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(id) = name.to_str().and_then(|n| ObjectId::parse(kind, n)) else {
                        continue;
                    };
                    if !id.hex().starts_with(shard_name) {
                        continue;
                    }
                    let Ok(md) = entry.metadata() else { continue };
                    if !md.is_file() {
                        continue;
                    }
                    found.push(Found {
                        id,
                        size: md.len(),
                        last_used: last_used(&md),
                    });
                }
            }
        }
        Ok(found)
    }
}

/// The SHA-256 of what `file` holds from its current position on.
fn sha256_of(file: &mut File) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize().into())
}

/// The later of a file's access and modification times.
pub fn last_used(md: &fs::Metadata) -> SystemTime {
    let m = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let a = md.accessed().unwrap_or(SystemTime::UNIX_EPOCH);
    m.max(a)
}

/// Sets a file's access time to now, so that its last use survives a server restart (the
/// in-memory index is rebuilt from these times). Explicit, because `noatime`/`relatime` mounts
/// do not update it on reads.
fn touch(path: &Path) {
    if let Err(e) = filetime::set_file_atime(path, filetime::FileTime::now()) {
        tracing::debug!(path = %path.display(), "cannot update access time: {e}");
    }
}

/// Fsyncs a directory so that renames and removals in it survive a crash; best effort (a
/// failure only weakens crash safety).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Fsyncs `tmp`, renames it to `dest` (replacing what is there) and fsyncs the directory: the
/// file is complete under its final name or not there at all, after a crash too.
pub fn persist_durably(tmp: tempfile::NamedTempFile, dest: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn names_must_be_64_lowercase_hex() {
        let good = "0123456789abcdef".repeat(4);
        assert!(ObjectId::parse(Kind::Cas, &good).is_some());
        assert!(ObjectId::parse(Kind::Cas, &good.to_uppercase()).is_none());
        assert!(ObjectId::parse(Kind::Cas, &good[..63]).is_none());
        assert!(ObjectId::parse(Kind::Cas, &format!("{good}0")).is_none());
        assert!(ObjectId::parse(Kind::Ac, "..").is_none());
        assert!(ObjectId::parse(Kind::Ac, &format!("../{}", &good[3..])).is_none());
        assert_eq!(ObjectId::parse(Kind::Ac, &good).unwrap().hex(), good);
    }

    // Verifies: a blob is hashed before it is first served; one whose bytes changed on disk is
    // reported damaged and removed; a checked upload is not hashed again (the stamp holds), but
    // any later write to the file (a new mtime) makes it checked again.
    #[test]
    fn blobs_are_checked_before_they_are_served() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let content = b"blob content";
        let id = ObjectId {
            kind: Kind::Cas,
            hash: Sha256::digest(content).into(),
        };
        assert!(matches!(store.open_blob(&id).unwrap(), Blob::Missing));
        let mut tmp = store.temp().unwrap();
        tmp.write_all(content).unwrap();
        store.commit_checked(tmp, &id).unwrap();
        let Blob::Found(mut f, 12) = store.open_blob(&id).unwrap() else {
            panic!("not found")
        };
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, content);

        // Same size, another mtime: checked again, found damaged, removed.
        let path = store.path(&id);
        fs::write(&path, b"blob kontent").unwrap();
        filetime::set_file_mtime(&path, filetime::FileTime::from_unix_time(1, 0)).unwrap();
        let Blob::Damaged(actual) = store.open_blob(&id).unwrap() else {
            panic!("damage not seen")
        };
        assert_eq!(actual, hex::encode(Sha256::digest(b"blob kontent")));
        assert!(!path.exists());
        assert!(matches!(store.open_blob(&id).unwrap(), Blob::Missing));

        // A blob put in place behind the server's back (or found at start) is checked on its
        // first read, then served from the stamp.
        fs::write(&path, content).unwrap();
        assert!(matches!(store.open_blob(&id).unwrap(), Blob::Found(_, 12)));
        assert!(store.verified().contains_key(&id.hash));
    }

    #[test]
    fn commit_open_scan_remove() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let id = ObjectId::parse(Kind::Ac, &"ab".repeat(32)).unwrap();
        assert!(store.open_object(&id).unwrap().is_none());
        let mut tmp = store.temp().unwrap();
        tmp.write_all(b"hello").unwrap();
        store.commit(tmp, &id).unwrap();
        assert_eq!(
            store.path(&id),
            d.path().join("ac/ab").join("ab".repeat(32))
        );
        assert_eq!(store.open_object(&id).unwrap().unwrap().1, 5);
        assert_eq!(store.stat(&id).unwrap(), Some(5));
        // A stray file is not an object.
        fs::write(d.path().join("ac/ab/notes.txt"), "x").unwrap();
        let found = store.scan().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, id);
        store.remove(&id).unwrap();
        store.remove(&id).unwrap();
        assert!(!store.path(&id).exists());
    }
}
