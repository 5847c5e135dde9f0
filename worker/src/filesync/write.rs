//! The receiver's disk side: applies a listing to the destination, incrementally. Blocking;
//! runs on one blocking thread that owns all of the transfer's disk state.
//!
//! Each STAT is validated ([`Validator`]), compared with the disk and written by [`Applier`];
//! regular files that differ are queued and requested a few at a time, received into temporary
//! files and renamed into place. When the listing leaves a directory, whatever it did not name
//! in it is removed. Hard links and directory modes/mtimes come last, once contents are final.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memobuild_proto::fsutil::Packet;
use nix::sys::stat::FileStat;
use tokio::sync::mpsc;

use crate::filesync::apply::{Applier, join, split};
use crate::filesync::disk;
use crate::filesync::mode::{FileKind, kind_of, unix_permissions};
use crate::filesync::transport::{self, Message};
use crate::filesync::validate::Validator;
use crate::filesync::{FilesyncError, ReceiveOptions, ReceiveStats, Stat};

/// Files requested and not complete yet, at most: each holds an open temporary file.
const REQUESTS_IN_FLIGHT: usize = 16;

/// What the protocol side hands to the disk side.
#[derive(Debug)]
pub(crate) enum Event {
    Stat(Stat),
    EndOfListing,
    Data(u32, Vec<u8>),
}

/// A directory of the listing the next entries may go into.
struct OpenDir {
    path: String,
    /// `None` for a directory the filter left out (and everything below it).
    fd: Option<Arc<OwnedFd>>,
    /// Names the listing gave it: everything else in it is removed when it closes.
    names: HashSet<Vec<u8>>,
}

/// A file being received into a temporary name.
struct InFlight {
    stat: Stat,
    dir: Arc<OwnedFd>,
    temp: String,
    file: File,
    written: u64,
}

pub(crate) struct DiskWriter {
    apply: Applier,
    root: Arc<OwnedFd>,
    options: ReceiveOptions,
    outgoing: mpsc::Sender<Packet>,
    validator: Validator,
    /// Mirrors the validator's open directories; `[0]` is the destination itself.
    dirs: Vec<OpenDir>,
    /// Files to request, in listing order: (id, stat).
    wanted: VecDeque<(u32, Stat)>,
    in_flight: HashMap<u32, InFlight>,
    /// Paths of live temporary files, which closing a directory must not remove.
    temps: HashSet<String>,
    /// (id, path, target) of hard links, made once every file's content is final.
    hard_links: Vec<(u32, String, String)>,
    /// (path, permissions, mtime) of every directory written, in listing order.
    dir_meta: Vec<(String, u32, i64)>,
    listing_done: bool,
    stats: ReceiveStats,
    /// Bytes received on the wire so far, counted by the protocol side.
    wire: Option<Arc<AtomicU64>>,
}

impl DiskWriter {
    pub(crate) fn open(
        dest: &Path,
        options: ReceiveOptions,
        outgoing: mpsc::Sender<Packet>,
    ) -> Result<Self, FilesyncError> {
        std::fs::create_dir_all(dest).map_err(|e| FilesyncError::io("creating", dest, e))?;
        let root = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dest)
            .map_err(|e| FilesyncError::io("opening", dest, e))?;
        let root = Arc::new(OwnedFd::from(root));
        Ok(DiskWriter {
            apply: Applier {
                dest: dest.to_path_buf(),
                chown: options.chown,
                is_root: nix::unistd::geteuid().is_root(),
            },
            root: root.clone(),
            options,
            outgoing,
            validator: Validator::new(),
            dirs: vec![OpenDir {
                path: String::new(),
                fd: Some(root),
                names: HashSet::new(),
            }],
            wanted: VecDeque::new(),
            in_flight: HashMap::new(),
            temps: HashSet::new(),
            hard_links: Vec::new(),
            dir_meta: Vec::new(),
            listing_done: false,
            stats: ReceiveStats::default(),
            wire: None,
        })
    }

    /// Reports `wire` (bytes received, counted by the protocol side) in the progress.
    pub(crate) fn counting_wire(mut self, wire: Arc<AtomicU64>) -> Self {
        self.wire = Some(wire);
        self
    }

    /// Whether every file has been received: the transfer can end.
    pub(crate) fn is_complete(&self) -> bool {
        self.listing_done && self.wanted.is_empty() && self.in_flight.is_empty()
    }

    pub(crate) fn handle(&mut self, event: Event) -> Result<(), FilesyncError> {
        match event {
            Event::Stat(_) | Event::EndOfListing if self.listing_done => {
                return Err(FilesyncError::UnexpectedPacket {
                    packet: "STAT",
                    context: "after the end of the listing",
                });
            }
            Event::Stat(stat) => self.on_stat(stat)?,
            Event::EndOfListing => self.end_listing()?,
            Event::Data(id, data) => self.on_data(id, data)?,
        }
        self.request_more()?;
        if let Some(progress) = &self.options.progress {
            if let Some(wire) = &self.wire {
                self.stats.wire_bytes = wire.load(Ordering::Relaxed);
            }
            progress(&self.stats);
        }
        Ok(())
    }

    fn on_stat(&mut self, mut stat: Stat) -> Result<(), FilesyncError> {
        let checked = self.validator.check(&stat)?;
        if self.temps.contains(&stat.path) {
            // Only a sender guessing our temporary names gets here; it must not get to swap
            // the file we are writing for something else.
            return Err(FilesyncError::InvalidPath {
                id: checked.id,
                path: stat.path,
                reason: "is the name of a file being received",
            });
        }
        for _ in 0..checked.closed {
            self.close_dir()?;
        }
        self.stats.entries += 1;
        let path = stat.path.clone();
        let (_, name) = split(&path);
        let creates = self.creates(checked.kind);
        let parent = self
            .dirs
            .last_mut()
            .ok_or(FilesyncError::TaskFailed("receiver"))?;
        let mut keep = parent.fd.is_some();
        if keep && let Some(filter) = &self.options.filter {
            let (size, linkname) = (stat.size, stat.linkname.clone());
            keep = filter(&mut stat);
            // The filter may change metadata, not what the validator checked.
            (stat.path, stat.size, stat.linkname) = (path.clone(), size, linkname);
            if kind_of(stat.mode) != Some(checked.kind) {
                return Err(FilesyncError::InvalidStat {
                    id: checked.id,
                    path,
                    field: "mode (file type changed by the filter)",
                });
            }
            if !keep {
                // Left alone on disk, neither written nor removed.
                parent.names.insert(name.as_bytes().to_vec());
            }
        }
        let Some(dir) = parent.fd.clone().filter(|_| keep) else {
            if checked.kind == FileKind::Dir {
                self.dirs.push(OpenDir {
                    path,
                    fd: None,
                    names: HashSet::new(),
                });
            }
            return Ok(());
        };
        if !creates {
            // Not created; whatever held the name is removed with the directory's extras.
            tracing::debug!(path, "special file not created");
            self.stats.skipped += 1;
            return Ok(());
        }
        parent.names.insert(name.as_bytes().to_vec());
        let existing =
            disk::lstat_at(dir.as_fd(), name).map_err(self.apply.io("reading", &path))?;
        let apply = &self.apply;
        match checked.kind {
            FileKind::Dir => {
                let fd = apply.dir(dir.as_fd(), name, &stat, existing)?;
                self.dir_meta
                    .push((path.clone(), unix_permissions(stat.mode), stat.mod_time));
                self.dirs.push(OpenDir {
                    path,
                    fd: Some(Arc::new(fd)),
                    names: HashSet::new(),
                });
                Ok(())
            }
            FileKind::Regular if checked.hard_link => {
                if existing.as_ref().is_some_and(disk::is_dir) {
                    disk::remove_at(dir.as_fd(), name.as_bytes())
                        .map_err(apply.io("removing", &path))?;
                }
                self.hard_links.push((checked.id, path, stat.linkname));
                Ok(())
            }
            FileKind::Regular => self.write_file(&dir, checked.id, stat, existing),
            FileKind::Symlink => apply.symlink(dir.as_fd(), name, &stat, existing),
            kind => apply.special(dir.as_fd(), checked.id, &stat, kind, existing),
        }
    }

    /// Whether entries of this kind are created: FIFOs and devices only as root and when the
    /// options allow it, sockets never.
    fn creates(&self, kind: FileKind) -> bool {
        match kind {
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                self.options.special_files && self.apply.is_root
            }
            FileKind::Socket => false,
            FileKind::Regular | FileKind::Dir | FileKind::Symlink => true,
        }
    }

    fn write_file(
        &mut self,
        dir: &Arc<OwnedFd>,
        id: u32,
        stat: Stat,
        existing: Option<FileStat>,
    ) -> Result<(), FilesyncError> {
        let (_, name) = split(&stat.path);
        if let Some(st) = &existing {
            if disk::file_type(st) == libc::S_IFREG
                && st.st_size == stat.size
                && disk::mtime_ns(st) == stat.mod_time
            {
                return self
                    .apply
                    .fix_metadata(dir.as_fd(), &stat, st, FileKind::Regular);
            }
            if disk::is_dir(st) {
                // A file now: the new content gets renamed over the name later.
                disk::remove_at(dir.as_fd(), name.as_bytes())
                    .map_err(self.apply.io("removing", &stat.path))?;
            }
        }
        if stat.size == 0 {
            // Nothing to ask for.
            let (temp, file) = disk::create_temp_file(dir.as_fd())
                .map_err(self.apply.io("creating", &stat.path))?;
            let installed = self.apply.install_file(dir.as_fd(), &temp, &file, &stat);
            if installed.is_err() {
                let _ = disk::unlink_at(dir.as_fd(), &temp);
            }
            return installed;
        }
        self.wanted.push_back((id, stat));
        Ok(())
    }

    /// Closes the innermost open directory, removing what the listing did not name in it
    /// (unless merging).
    fn close_dir(&mut self) -> Result<(), FilesyncError> {
        let Some(closed) = self.dirs.pop() else {
            return Ok(());
        };
        let Some(fd) = closed.fd else {
            return Ok(());
        };
        if self.options.merge {
            return Ok(());
        }
        let names = disk::list_names(fd.as_fd()).map_err(self.apply.io("listing", &closed.path))?;
        for name in names {
            if closed.names.contains(&name) {
                continue;
            }
            let lossy = String::from_utf8_lossy(&name);
            let rel = join(&closed.path, &lossy);
            if self.temps.contains(&rel) {
                continue;
            }
            disk::remove_at(fd.as_fd(), &name).map_err(self.apply.io("removing", &rel))?;
            self.stats.removed += 1;
        }
        Ok(())
    }

    fn end_listing(&mut self) -> Result<(), FilesyncError> {
        while !self.dirs.is_empty() {
            self.close_dir()?;
        }
        self.listing_done = true;
        Ok(())
    }

    /// Requests wanted files while fewer than [`REQUESTS_IN_FLIGHT`] are outstanding.
    fn request_more(&mut self) -> Result<(), FilesyncError> {
        while self.in_flight.len() < REQUESTS_IN_FLIGHT {
            let Some((id, stat)) = self.wanted.pop_front() else {
                break;
            };
            let (dir_path, _) = split(&stat.path);
            let open = self.dirs.iter().rev().find(|d| d.path == dir_path);
            let dir = match open.and_then(|d| d.fd.clone()) {
                Some(fd) => fd,
                None => Arc::new(
                    disk::open_dir_path(self.root.as_fd(), dir_path)
                        .map_err(self.apply.io("opening", dir_path))?,
                ),
            };
            let (temp, file) = disk::create_temp_file(dir.as_fd())
                .map_err(self.apply.io("creating", &stat.path))?;
            self.temps.insert(join(dir_path, &temp));
            self.in_flight.insert(
                id,
                InFlight {
                    stat,
                    dir,
                    temp,
                    file,
                    written: 0,
                },
            );
            self.stats.files_requested += 1;
            transport::blocking_send(&self.outgoing, Message::Req(id))?;
        }
        Ok(())
    }

    fn on_data(&mut self, id: u32, data: Vec<u8>) -> Result<(), FilesyncError> {
        let unrequested = FilesyncError::UnrequestedData { id };
        if data.is_empty() {
            let f = self.in_flight.remove(&id).ok_or(unrequested)?;
            return self.complete(f);
        }
        let f = self.in_flight.get_mut(&id).ok_or(unrequested)?;
        let size = u64::try_from(f.stat.size).unwrap_or(0);
        let len = data.len() as u64;
        if f.written.saturating_add(len) > size {
            return Err(FilesyncError::DataPastSize {
                id,
                path: f.stat.path.clone(),
                size,
            });
        }
        let path = self.apply.dest.join(&f.stat.path);
        f.file
            .write_all(&data)
            .map_err(|e| FilesyncError::io("writing", path, e))?;
        f.written += len;
        self.stats.bytes_received += len;
        Ok(())
    }

    fn complete(&mut self, f: InFlight) -> Result<(), FilesyncError> {
        if f.written as i64 != f.stat.size {
            // As fsutil: a file that shrank while being sent is taken as it came; its size no
            // longer matches the STAT, so the next transfer asks for it again.
            tracing::debug!(
                path = f.stat.path,
                f.written,
                size = f.stat.size,
                "short file"
            );
        }
        let (dir, temp) = (f.dir.as_fd(), &f.temp);
        let result = self.apply.install_file(dir, temp, &f.file, &f.stat);
        if result.is_err() {
            let _ = disk::unlink_at(dir, temp);
        }
        self.temps.remove(&join(split(&f.stat.path).0, temp));
        result
    }

    /// Makes the hard links and sets directory metadata; the transfer is then complete.
    pub(crate) fn finish(self) -> Result<ReceiveStats, FilesyncError> {
        let root = self.root.as_fd();
        for (id, path, target) in &self.hard_links {
            self.apply.link(root, *id, path, target)?;
        }
        // Deepest first: a parent's final mode may lock us out of its children.
        for (path, perm, mtime) in self.dir_meta.iter().rev() {
            self.apply.dir_metadata(root, path, *perm, *mtime)?;
        }
        Ok(self.stats)
    }

    /// Removes the temporary files of an aborted transfer.
    pub(crate) fn abort(&mut self) {
        for (_, f) in self.in_flight.drain() {
            let _ = disk::unlink_at(f.dir.as_fd(), &f.temp);
        }
    }
}
