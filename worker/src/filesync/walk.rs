//! The sender's walk: which entries of a directory go into the listing, in which order, with
//! which STAT. Blocking; runs on a blocking thread.
//!
//! Selection follows fsutil's `filterFS`: a path is sent when it matches the include patterns
//! (if any) and not the exclude patterns. A directory that fails a test is still walked when
//! something below it could pass (an include pattern below it; a `!` exception below it), and
//! is sent only if something below it is, right before that entry. A directory nothing below
//! could pass is skipped whole, as is an excluded one when no `!` pattern exists.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::filesync::mode::go_mode_from_unix;
use crate::filesync::{FilesyncError, SendOptions, Stat};
use crate::followpaths::follow_links;
use crate::patterns::PatternMatcher;

/// Characters that make a pattern more than a plain path (fsutil's `patternChars`).
const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

/// Include/exclude selection of one send.
pub(crate) struct Filter {
    include: Option<PatternMatcher>,
    /// With only plain-path include patterns: each one plus `/`, to tell whether a directory
    /// can hold something included. `None` when a pattern has wildcards (walk everything).
    include_prefixes: Option<Vec<String>>,
    exclude: Option<PatternMatcher>,
    /// The same for the `!` exceptions of the exclude patterns.
    exception_prefixes: Option<Vec<String>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Send,
    /// A directory that is not sent itself but may hold entries that are.
    Descend,
    Skip,
}

impl Filter {
    /// Compiles the options for the tree at `root` (follow paths are resolved there).
    pub(crate) fn new(root: &Path, options: &SendOptions) -> Result<Self, FilesyncError> {
        let mut include = options.include_patterns.clone();
        if !options.follow_paths.is_empty()
            && let Some(targets) = follow_links(root, &options.follow_paths)
                .map_err(|e| FilesyncError::io("resolving follow paths in", root, e))?
        {
            include.extend(targets);
            // fsutil drops the include filter when the combined list names the root.
            if include.iter().any(|p| p == ".") {
                include.clear();
            }
        }
        let compile = |which, list: &[String]| {
            PatternMatcher::new(list)
                .map(|m| Some(m).filter(|m| !m.is_empty()))
                .map_err(|source| FilesyncError::Pattern { which, source })
        };
        let include = compile("include", &include)?;
        let exclude = compile("exclude", &options.exclude_patterns)?;
        let include_prefixes = include.as_ref().and_then(|m| prefixes(m, false));
        let exception_prefixes = exclude.as_ref().and_then(|m| prefixes(m, true));
        Ok(Filter {
            include,
            include_prefixes,
            exclude,
            exception_prefixes,
        })
    }

    fn decide(&self, rel: &str, is_dir: bool) -> Decision {
        let below = |prefixes: &Option<Vec<String>>| match prefixes {
            None => true,
            Some(list) => {
                let dir = format!("{rel}/");
                list.iter().any(|p| p.starts_with(&dir))
            }
        };
        let mut send = true;
        if let Some(include) = &self.include
            && !include.matches(rel)
        {
            if !is_dir || !below(&self.include_prefixes) {
                return Decision::Skip;
            }
            send = false;
        }
        if let Some(exclude) = &self.exclude
            && exclude.matches(rel)
        {
            if !is_dir || !exclude.has_exclusions() || !below(&self.exception_prefixes) {
                return Decision::Skip;
            }
            send = false;
        }
        if send {
            Decision::Send
        } else {
            Decision::Descend
        }
    }
}

/// The patterns of one polarity (`!` exceptions or plain ones) without a trailing `/**` or
/// `/*`, each plus `/`; `None` if one of them still holds pattern syntax.
fn prefixes(m: &PatternMatcher, exceptions: bool) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for text in m.texts() {
        let (is_exception, body) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if is_exception != exceptions {
            continue;
        }
        let body = body.strip_suffix("/**").unwrap_or(body);
        let body = body.strip_suffix("/*").unwrap_or(body);
        if body.contains(PATTERN_CHARS) {
            return None;
        }
        out.push(format!("{body}/"));
    }
    Some(out)
}

/// A directory on the way to the current entry.
struct Ancestor {
    stat: Stat,
    /// Already in the listing.
    sent: bool,
    /// Left out by the map hook: so is everything below it.
    dropped: bool,
}

/// Walks `root` and hands each entry to `emit` in listing order, with the host path of
/// regular files (not hard links) whose content may be requested.
pub(crate) struct Walker<'a> {
    root: &'a Path,
    filter: &'a Filter,
    options: &'a SendOptions,
    /// Set when the transfer is over early; the walk stops at the next entry.
    cancelled: &'a AtomicBool,
    emit: &'a mut dyn FnMut(Stat, Option<PathBuf>) -> Result<(), FilesyncError>,
    ancestors: Vec<Ancestor>,
    /// (device, inode) of multiply-linked files → the first path sent for it.
    links: HashMap<(u64, u64), String>,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(
        root: &'a Path,
        filter: &'a Filter,
        options: &'a SendOptions,
        cancelled: &'a AtomicBool,
        emit: &'a mut dyn FnMut(Stat, Option<PathBuf>) -> Result<(), FilesyncError>,
    ) -> Self {
        Walker {
            root,
            filter,
            options,
            cancelled,
            emit,
            ancestors: Vec::new(),
            links: HashMap::new(),
        }
    }

    pub(crate) fn run(&mut self) -> Result<(), FilesyncError> {
        let root = self.root.to_path_buf();
        let names = read_names(&root).map_err(|e| FilesyncError::io("reading", &root, e))?;
        self.walk_entries(&root, "", names)
    }

    fn walk_dir(&mut self, host: &Path, rel: &str) -> Result<(), FilesyncError> {
        let names = match read_names(host) {
            Ok(names) => names,
            // Gone or replaced since it was listed: as if it had not been there.
            Err(e) if is_not_found(&e) => return Ok(()),
            // fsutil tolerates an unreadable directory it would not send anyway.
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    && self.ancestors.last().is_some_and(|a| !a.sent) =>
            {
                return Ok(());
            }
            Err(e) => return Err(FilesyncError::io("reading", host, e)),
        };
        self.walk_entries(host, rel, names)
    }

    fn walk_entries(
        &mut self,
        host_dir: &Path,
        rel_dir: &str,
        names: Vec<Vec<u8>>,
    ) -> Result<(), FilesyncError> {
        for name in names {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(FilesyncError::ChannelClosed);
            }
            let host = host_dir.join(std::ffi::OsStr::from_bytes(&name));
            let name = std::str::from_utf8(&name)
                .map_err(|_| FilesyncError::NonUtf8Path { path: host.clone() })?;
            let rel = if rel_dir.is_empty() {
                name.to_string()
            } else {
                format!("{rel_dir}/{name}")
            };
            let md = match fs::symlink_metadata(&host) {
                Ok(md) => md,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(FilesyncError::io("reading", &host, e)),
            };
            // fsutil clears the socket bit and so sends sockets as empty files; a socket
            // has no content to copy, so we leave it out.
            if md.file_type().is_socket() {
                continue;
            }
            let is_dir = md.is_dir();
            let decision = self.filter.decide(&rel, is_dir);
            if decision == Decision::Skip {
                continue;
            }
            let stat = make_stat(&host, rel.clone(), &md)?;
            if !is_dir {
                self.send(stat, &host, &md)?;
                continue;
            }
            let mut ancestor = Ancestor {
                stat,
                sent: false,
                dropped: false,
            };
            if decision == Decision::Send {
                // As fsutil: the entry's own map result first, then its unsent parents.
                let kept = self.map(&mut ancestor.stat) && self.send_pending()?;
                if kept {
                    (self.emit)(ancestor.stat.clone(), None)?;
                    ancestor.sent = true;
                } else {
                    continue;
                }
            }
            self.ancestors.push(ancestor);
            let walked = self.walk_dir(&host, &rel);
            self.ancestors.pop();
            walked?;
        }
        Ok(())
    }

    /// Sends the ancestors not sent yet; false if one of them is dropped.
    fn send_pending(&mut self) -> Result<bool, FilesyncError> {
        for i in 0..self.ancestors.len() {
            if self.ancestors[i].dropped {
                return Ok(false);
            }
            if self.ancestors[i].sent {
                continue;
            }
            let mut stat = self.ancestors[i].stat.clone();
            if !self.map(&mut stat) {
                self.ancestors[i].dropped = true;
                return Ok(false);
            }
            (self.emit)(stat, None)?;
            self.ancestors[i].sent = true;
        }
        Ok(true)
    }

    fn map(&self, stat: &mut Stat) -> bool {
        if self.options.reset_owner {
            stat.uid = 0;
            stat.gid = 0;
        }
        let Some(map) = &self.options.map_stat else {
            return true;
        };
        // The path is the walk's: a hook renaming entries would break the listing's order.
        let path = stat.path.clone();
        let keep = map(stat);
        stat.path = path;
        keep
    }

    /// Sends a non-directory (with its ancestors first).
    fn send(&mut self, mut stat: Stat, host: &Path, md: &Metadata) -> Result<(), FilesyncError> {
        if !self.map(&mut stat) || !self.send_pending()? {
            return Ok(());
        }
        let mut content = None;
        if md.is_file() {
            if md.nlink() > 1 {
                match self.links.get(&(md.dev(), md.ino())) {
                    Some(first) => {
                        stat.linkname = first.clone();
                        stat.size = 0;
                    }
                    None => {
                        self.links.insert((md.dev(), md.ino()), stat.path.clone());
                    }
                }
            }
            if stat.linkname.is_empty() {
                content = Some(host.to_path_buf());
            }
        }
        (self.emit)(stat, content)
    }
}

/// The names in a directory, sorted bytewise (fsutil's order within a directory).
fn read_names(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name().as_bytes().to_vec());
    }
    names.sort_unstable();
    Ok(names)
}

fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// The STAT of one entry, as fsutil's `mkstat` fills it (hard links are the walker's job).
fn make_stat(host: &Path, rel: String, md: &Metadata) -> Result<Stat, FilesyncError> {
    let ft = md.file_type();
    let mut stat = Stat {
        path: rel,
        mode: go_mode_from_unix(md.mode()),
        uid: md.uid(),
        gid: md.gid(),
        size: if md.is_dir() { 0 } else { md.size() as i64 },
        mod_time: md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec()),
        ..Stat::default()
    };
    if ft.is_symlink() {
        let target = fs::read_link(host).map_err(|e| FilesyncError::io("reading link", host, e))?;
        stat.linkname =
            target
                .into_os_string()
                .into_string()
                .map_err(|_| FilesyncError::NonUtf8Path {
                    path: host.to_path_buf(),
                })?;
    }
    if ft.is_block_device() || ft.is_char_device() {
        stat.devmajor = i64::from(libc::major(md.rdev()));
        stat.devminor = i64::from(libc::minor(md.rdev()));
    }
    read_xattrs(host, &mut stat)?;
    Ok(stat)
}

/// Extended attributes of `host` (not following a symlink), as fsutil's `loadXattr`: a file
/// system without them has none, and one that vanishes between list and get is skipped.
fn read_xattrs(host: &Path, stat: &mut Stat) -> Result<(), FilesyncError> {
    let names = match xattr::list(host) {
        Ok(names) => names,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) => return Ok(()),
        Err(e) => return Err(FilesyncError::io("listing xattrs of", host, e)),
    };
    for name in names {
        // Names are ASCII in practice; the wire wants strings.
        let Some(key) = name.to_str() else { continue };
        if key.starts_with("com.apple.") {
            continue;
        }
        if let Ok(Some(value)) = xattr::get(host, &name) {
            stat.xattrs.insert(key.to_string(), value);
        }
    }
    Ok(())
}
