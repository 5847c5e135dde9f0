//! A small, deterministic tar writer (ustar headers + PAX extended headers).
//!
//! The `tar` crate writes long names as GNU LongLink entries and cannot write PAX records or
//! xattrs (see crates.md), and its deterministic mode rewrites owners and modes. Layers must carry
//! exactly what is on disk, so headers are written here: every field is set from the entry and
//! nothing from the environment (no user-name lookups, no current time), so the same entries always
//! give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

const BLOCK: usize = 512;

/// What kind of tar entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its bytes follow the header.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to the given target.
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry's path (relative, as written in this archive).
    Hardlink(Vec<u8>),
    /// A character device.
    Char {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// One entry's header fields.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path inside the archive, relative, `/`-separated; directories without a trailing slash.
    pub path: Vec<u8>,
    /// Kind of the entry.
    pub kind: EntryKind,
    /// Permission bits plus setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Size of the content that follows (regular files only).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, written as `SCHILY.xattr.<name>` PAX records.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    /// A new entry with zero owner, zero time and no xattrs.
    pub fn new(path: impl Into<Vec<u8>>, kind: EntryKind, mode: u32) -> Self {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

/// Writes tar entries to `W`.
pub struct TarWriter<W: Write> {
    out: W,
    /// Bytes of content still owed by the current file entry.
    pending: u64,
    /// Bytes written for the current file, for padding.
    written: u64,
}

impl<W: Write> TarWriter<W> {
    /// Wraps a writer.
    pub fn new(out: W) -> Self {
        TarWriter {
            out,
            pending: 0,
            written: 0,
        }
    }

    /// Writes the header (and PAX header when needed) for `entry`. For regular files the caller
    /// then writes exactly `entry.size` bytes with [`TarWriter::write_data`] and calls
    /// [`TarWriter::finish_entry`].
    pub fn append_header(&mut self, entry: &Entry) -> io::Result<()> {
        if self.pending != 0 {
            return Err(io::Error::other(
                "tar: previous file entry was not completely written",
            ));
        }
        let mut dir_path;
        let path: &[u8] = if entry.kind == EntryKind::Dir && !entry.path.ends_with(b"/") {
            dir_path = entry.path.clone();
            dir_path.push(b'/');
            &dir_path
        } else {
            &entry.path
        };
        let link: &[u8] = match &entry.kind {
            EntryKind::Symlink(t) | EntryKind::Hardlink(t) => t,
            _ => b"",
        };
        let size = if entry.kind == EntryKind::File {
            entry.size
        } else {
            0
        };

        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (name_field, prefix_field) = match split_ustar_path(path) {
            Some(split) => split,
            None => {
                pax.push(("path".into(), path.to_vec()));
                (truncate(path, 100), &b""[..])
            }
        };
        if link.len() > 100 {
            pax.push(("linkpath".into(), link.to_vec()));
        }
        if entry.uid > 0o7777777 {
            pax.push(("uid".into(), entry.uid.to_string().into_bytes()));
        }
        if entry.gid > 0o7777777 {
            pax.push(("gid".into(), entry.gid.to_string().into_bytes()));
        }
        if size > 0o77777777777 {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        let mtime = entry.mtime.clamp(0, 0o77777777777);
        for (k, v) in &entry.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            pax.sort_by(|a, b| a.0.cmp(&b.0));
            let body = pax_body(&pax);
            let mut pax_name = b"PaxHeaders.0/".to_vec();
            pax_name.extend_from_slice(last_component(path));
            let hdr = Header {
                name: truncate(&pax_name, 100),
                prefix: b"",
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: body.len() as u64,
                mtime,
                typeflag: b'x',
                linkname: b"",
                devmajor: 0,
                devminor: 0,
            };
            self.out.write_all(&hdr.encode())?;
            self.out.write_all(&body)?;
            self.out.write_all(&vec![0u8; pad(body.len() as u64)])?;
        }

        let (typeflag, devmajor, devminor) = match &entry.kind {
            EntryKind::File => (b'0', 0, 0),
            EntryKind::Hardlink(_) => (b'1', 0, 0),
            EntryKind::Symlink(_) => (b'2', 0, 0),
            EntryKind::Char { major, minor } => (b'3', *major, *minor),
            EntryKind::Block { major, minor } => (b'4', *major, *minor),
            EntryKind::Dir => (b'5', 0, 0),
            EntryKind::Fifo => (b'6', 0, 0),
        };
        let hdr = Header {
            name: name_field,
            prefix: prefix_field,
            mode: entry.mode & 0o7777,
            uid: entry.uid.min(0o7777777),
            gid: entry.gid.min(0o7777777),
            size: size.min(0o77777777777),
            mtime,
            typeflag,
            linkname: truncate(link, 100),
            devmajor,
            devminor,
        };
        self.out.write_all(&hdr.encode())?;
        self.pending = size;
        self.written = 0;
        Ok(())
    }

    /// Writes content of the current regular file.
    pub fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > self.pending {
            return Err(io::Error::other(
                "tar: file grew while it was being archived",
            ));
        }
        self.out.write_all(data)?;
        self.pending -= data.len() as u64;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Pads the current file's content to a block boundary.
    pub fn finish_entry(&mut self) -> io::Result<()> {
        if self.pending != 0 {
            return Err(io::Error::other(
                "tar: file shrank while it was being archived",
            ));
        }
        let p = pad(self.written);
        if p > 0 {
            self.out.write_all(&[0u8; BLOCK][..p])?;
        }
        self.written = 0;
        Ok(())
    }

    /// Writes a whole entry whose content is in memory.
    pub fn append_bytes(&mut self, entry: &Entry, data: &[u8]) -> io::Result<()> {
        let mut e = entry.clone();
        e.size = data.len() as u64;
        self.append_header(&e)?;
        self.write_data(data)?;
        self.finish_entry()
    }

    /// Writes the two zero blocks that end an archive and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; BLOCK * 2])?;
        Ok(self.out)
    }
}

fn pad(len: u64) -> usize {
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

fn truncate(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

fn last_component(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    match trimmed.iter().rposition(|&c| c == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Splits a path into ustar (name, prefix) fields, or `None` when it needs a PAX record
/// (too long, or not ASCII, which ustar readers may mangle).
fn split_ustar_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if !path.is_ascii() {
        return None;
    }
    if path.len() <= 100 {
        return Some((path, b""));
    }
    // Split at a '/' so that prefix <= 155 and name <= 100 (name may carry the dir's trailing '/').
    let limit = path.len().min(156);
    let mut i = limit;
    while i > 0 {
        i -= 1;
        if path[i] == b'/' {
            let (prefix, name) = (&path[..i], &path[i + 1..]);
            if prefix.len() <= 155 && name.len() <= 100 && !name.is_empty() {
                return Some((name, prefix));
            }
            if name.len() > 100 {
                return None;
            }
        }
    }
    None
}

fn pax_body(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        // "%d %s=%s\n" where %d counts the whole record including its own digits.
        let rest = k.len() + v.len() + 3; // space, '=', '\n'
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(k.as_bytes());
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

struct Header<'a> {
    name: &'a [u8],
    prefix: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    typeflag: u8,
    linkname: &'a [u8],
    devmajor: u32,
    devminor: u32,
}

impl Header<'_> {
    fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..self.name.len()].copy_from_slice(self.name);
        octal(&mut b[100..108], u64::from(self.mode));
        octal(&mut b[108..116], self.uid);
        octal(&mut b[116..124], self.gid);
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], self.mtime.max(0) as u64);
        b[156] = self.typeflag;
        b[157..157 + self.linkname.len()].copy_from_slice(self.linkname);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        if matches!(self.typeflag, b'3' | b'4') {
            octal(&mut b[329..337], u64::from(self.devmajor));
            octal(&mut b[337..345], u64::from(self.devminor));
        }
        b[345..345 + self.prefix.len()].copy_from_slice(self.prefix);
        // Checksum: sum of all bytes with the checksum field read as spaces.
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        let s = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(s.as_bytes());
        b
    }
}

/// Writes `v` as zero-padded octal filling the field but its last byte (NUL).
fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    let s = s.as_bytes();
    // Values were clamped by the caller so they fit.
    let start = s.len().saturating_sub(width);
    field[..width].copy_from_slice(&s[start..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    type Read = (String, u8, u64, u64, u32, Vec<u8>, Option<String>);

    fn read_back(bytes: &[u8]) -> Vec<Read> {
        let mut ar = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let h = e.header().clone();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            out.push((
                path,
                h.entry_type().as_byte(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mode().unwrap(),
                data,
                link,
            ));
        }
        out
    }

    #[test]
    fn round_trips_through_a_standard_reader() {
        let mut w = TarWriter::new(Vec::new());
        let mut d = Entry::new("etc", EntryKind::Dir, 0o755);
        d.uid = 1000;
        d.gid = 1001;
        w.append_header(&d).unwrap();
        let f = Entry::new("etc/passwd", EntryKind::File, 0o4755);
        w.append_bytes(&f, b"root:x:0:0\n").unwrap();
        w.append_header(&Entry::new(
            "bin/sh",
            EntryKind::Symlink(b"busybox".to_vec()),
            0o777,
        ))
        .unwrap();
        w.append_header(&Entry::new(
            "etc/passwd2",
            EntryKind::Hardlink(b"etc/passwd".to_vec()),
            0o644,
        ))
        .unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let got = read_back(&bytes);
        assert_eq!(got[0].0, "etc/");
        assert_eq!((got[0].2, got[0].3), (1000, 1001));
        assert_eq!(got[1].0, "etc/passwd");
        assert_eq!(got[1].4, 0o4755);
        assert_eq!(got[1].5, b"root:x:0:0\n");
        assert_eq!(got[2].6.as_deref(), Some("busybox"));
        assert_eq!(got[3].1, b'1');
        assert_eq!(got[3].6.as_deref(), Some("etc/passwd"));
    }

    #[test]
    fn long_paths_links_and_xattrs_use_pax() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        let mut w = TarWriter::new(Vec::new());
        let mut e = Entry::new(long.clone(), EntryKind::File, 0o644);
        e.xattrs
            .insert("security.capability".into(), vec![1, 0, 0, 2]);
        e.uid = 10_000_000;
        w.append_bytes(&e, b"x").unwrap();
        let target = "t".repeat(150);
        w.append_header(&Entry::new(
            "l",
            EntryKind::Symlink(target.clone().into_bytes()),
            0o777,
        ))
        .unwrap();
        let bytes = w.finish().unwrap();

        let got = read_back(&bytes);
        assert_eq!(got[0].0, long);
        assert_eq!(got[0].2, 10_000_000);
        assert_eq!(got[1].6.as_deref(), Some(target.as_str()));

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut first = ar.entries().unwrap().next().unwrap().unwrap();
        let exts: Vec<(String, Vec<u8>)> = first
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value_bytes().to_vec())
            })
            .collect();
        assert!(exts.contains(&("SCHILY.xattr.security.capability".into(), vec![1, 0, 0, 2])));
    }

    #[test]
    fn medium_paths_use_the_ustar_prefix() {
        let p = format!("{}/{}", "a".repeat(90), "b".repeat(90));
        let (name, prefix) = split_ustar_path(p.as_bytes()).unwrap();
        assert_eq!(name.len(), 90);
        assert_eq!(prefix.len(), 90);
        let mut w = TarWriter::new(Vec::new());
        w.append_bytes(&Entry::new(p.clone(), EntryKind::File, 0o600), b"")
            .unwrap();
        let got = read_back(&w.finish().unwrap());
        assert_eq!(got[0].0, p);
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        // 5 + 1 + 1 + 1 + 1 = 9 bytes without the length; with "10" it is 11? -> "11 k=vvvvv\n"
        let body = pax_body(&[("k".into(), b"vvvvv".to_vec())]);
        let s = String::from_utf8(body).unwrap();
        let (n, _) = s.split_once(' ').unwrap();
        assert_eq!(n.parse::<usize>().unwrap(), s.len());
        let body = pax_body(&[("path".into(), vec![b'x'; 93])]);
        let s = String::from_utf8(body).unwrap();
        let (n, _) = s.split_once(' ').unwrap();
        assert_eq!(n.parse::<usize>().unwrap(), s.len());
    }

    #[test]
    fn refuses_short_writes() {
        let mut w = TarWriter::new(Vec::new());
        let mut e = Entry::new("f", EntryKind::File, 0o644);
        e.size = 3;
        w.append_header(&e).unwrap();
        w.write_data(b"ab").unwrap();
        assert!(w.finish_entry().is_err());
        assert!(w.write_data(b"cd").is_err());
    }
}
