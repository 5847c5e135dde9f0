//! File operations on a mounted root filesystem: BuildKit's FileOp actions (copy, mkdir, mkfile,
//! rm) with their options, done directly on disk without a container.
//!
//! Every path inside a root is resolved with [`resolve_in_root`], which follows symlinks as the
//! container would see them: an absolute link or a `..` never leaves the root. A hostile image or
//! context cannot make a COPY write outside the snapshot it targets.

use std::fs;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::patterns::PatternMatcher;

pub mod reuse;
pub use reuse::Reuse;

/// Maximum symlinks followed while resolving one path (Linux's limit is 40; Go's fsutil 255).
const MAX_SYMLINKS: usize = 255;

/// Resolves `path` (absolute or relative to the root) inside `root`, following symlinks as if
/// `root` were `/`. With `follow_last` false the last component is not followed (lstat
/// semantics). The result always lies under `root`; components that don't exist are kept as is.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    let mut pending: Vec<String> = components(path);
    pending.reverse();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&comp);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving `{path}`"
                    )));
                }
                let target = fs::read_link(&candidate)?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                let mut t = components(&target);
                t.reverse();
                pending.extend(t);
            }
            _ => resolved.push(comp),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(out)
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

/// Owner to give created or copied entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Options of a copy, as `FileActionCopy` carries them.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Follow a symlink named by the source path itself.
    pub follow_symlink: bool,
    /// When the source is a directory, copy its contents rather than the directory.
    pub dir_copy_contents: bool,
    /// Create missing parents of the destination.
    pub create_dest_path: bool,
    /// Treat the source as a glob.
    pub allow_wildcard: bool,
    /// A glob that matches nothing is not an error.
    pub allow_empty_wildcard: bool,
    /// Owner for everything copied (and created parents); `None` keeps the source's.
    pub owner: Option<Owner>,
    /// Permission bits for everything copied; `None` keeps the source's.
    pub mode: Option<u32>,
    /// A symbolic `--chmod` (`u+x,go-w`), applied to each entry's own mode; wins over `mode`.
    pub mode_str: Option<SymbolicMode>,
    /// ADD's archive handling: a source that is a tar archive (plain or gzip) is extracted into
    /// the destination directory instead of being copied.
    pub unpack: bool,
    /// Modification time (seconds) for everything copied; `None` keeps the source's.
    pub mtime: Option<i64>,
    /// The copy's own include patterns: only paths matching these, relative to the source path
    /// being copied, are copied (if non-empty).
    pub include: Option<PatternMatcher>,
    /// The copy's own exclude patterns (`COPY --exclude`), relative to the source path copied.
    pub exclude: Option<PatternMatcher>,
    /// The source's include patterns (`local.includepatterns`), relative to the source root.
    pub context_include: Option<PatternMatcher>,
    /// The source's exclude patterns (`.dockerignore`), relative to the source root: what they
    /// match is not in the source at all, even when named explicitly.
    pub context_exclude: Option<PatternMatcher>,
    /// Owner the source side claims for every entry (a local context is sent as root-owned).
    pub source_owner: Option<Owner>,
    /// An earlier result of the same copy whose identical files are linked, not written
    /// ([`reuse`]).
    pub reuse: Option<std::sync::Arc<Reuse>>,
}

/// Copies `src` (inside `src_root`) to `dest` (inside `dest_root`) with BuildKit's semantics.
pub fn copy(
    src_root: &Path,
    src: &str,
    dest_root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> io::Result<()> {
    let sources = expand_sources(src_root, src, opts)?;
    let dest_is_dir_hint = dest.ends_with('/') || sources.len() > 1;
    for (rel, path) in sources {
        let own = fs::symlink_metadata(&path).map_err(|e| with_path(e, &format!("/{rel}")))?;
        // A symbolic link is followed inside the source root, as the container would see it:
        // never to a file of the machine the build runs on.
        let (src_path, md) = if opts.follow_symlink && own.file_type().is_symlink() {
            let followed = resolve_in_root(src_root, &rel, true)?;
            let md = fs::symlink_metadata(&followed).map_err(|e| {
                let target = fs::read_link(&path)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "\"/{rel}\" is a symbolic link to `{target}`, which does not exist in the source"
                        ),
                    )
                } else {
                    with_path(e, &format!("/{rel}"))
                }
            })?;
            let followed_rel = followed
                .strip_prefix(src_root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if context_ignores(opts, &followed, &followed_rel)? {
                return Err(not_found(&rel));
            }
            (followed, md)
        } else {
            (path.clone(), own)
        };
        if opts.unpack && md.is_file() && is_archive(&src_path)? {
            let dest_dir = resolve_in_root(dest_root, dest, true)?;
            if !dest_dir.is_dir() {
                mkdir_all(&dest_dir, 0o755, opts.owner)?;
            }
            unpack_archive(&src_path, dest_root, &dest_dir, opts.owner)
                .map_err(|e| io::Error::new(e.kind(), format!("unpacking /{rel}: {e}")))?;
            continue;
        }
        let dest_resolved = resolve_in_root(dest_root, dest, true)?;
        let target = if md.is_dir() && opts.dir_copy_contents {
            dest_resolved.clone()
        } else if dest_is_dir_hint || dest_resolved.is_dir() {
            let base = Path::new(&rel)
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_default();
            dest_resolved.join(base)
        } else {
            dest_resolved.clone()
        };
        if let Some(parent) = target.parent()
            && !parent.exists()
        {
            if opts.create_dest_path {
                mkdir_all(parent, 0o755, opts.owner)?;
            } else {
                return Err(with_path(
                    io::Error::from(io::ErrorKind::NotFound),
                    &parent.to_string_lossy(),
                ));
            }
        }
        let rel_root = if rel == "." {
            String::new()
        } else {
            rel.clone()
        };
        if md.is_dir() && opts.dir_copy_contents {
            // As BuildKit (fsutil's copy): the destination of a directory's contents is made
            // like `mkdir -p` when missing (mode 0755, or a numeric `--chmod`; owner the
            // `--chown` one, else root) and left as it is when present; the source directory's
            // own mode and owner are not copied, those of everything below it are.
            if !target.exists() {
                let mode = match (&opts.mode_str, opts.mode) {
                    (None, Some(m)) => m,
                    _ => 0o755,
                };
                // Without `--chown` the worker's own user (root) owns it.
                mkdir_all(&target, mode, opts.owner)?;
            }
            copy_dir_contents(&src_path, &rel_root, "", &target, opts)?;
        } else if md.is_dir() {
            if !target.exists() {
                mkdir_all(&target, 0o755, None)?;
            }
            copy_dir_contents(&src_path, &rel_root, "", &target, opts)?;
            apply_meta(&target, &md, opts)?;
        } else {
            copy_entry(&src_path, &md, &target, opts)?;
        }
    }
    Ok(())
}

fn not_found(rel: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("\"/{}\": not found", if rel == "." { "" } else { rel }),
    )
}

/// Whether the source's own patterns leave `rel` (relative to the source root; `path` on the
/// host) out of the source: a file its include patterns do not select, or anything its exclude
/// patterns (`.dockerignore`) match, where a directory is still there when a `!` pattern brings
/// back something below it.
fn context_ignores(opts: &CopyOptions, path: &Path, rel: &str) -> io::Result<bool> {
    // A file the source's include patterns (or follow paths) leave out was never sent.
    if let Some(include) = opts.context_include.as_ref().filter(|m| !m.is_empty())
        && !rel.is_empty()
        && rel != "."
        && !include.matches(rel)
        && fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir())
    {
        return Ok(true);
    }
    let Some(ignore) = &opts.context_exclude else {
        return Ok(false);
    };
    if rel.is_empty() || rel == "." || !ignore.matches(rel) {
        return Ok(false);
    }
    if ignore.has_exclusions() && fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        let only_context = CopyOptions {
            context_exclude: opts.context_exclude.clone(),
            ..CopyOptions::default()
        };
        return Ok(!dir_has_included(path, rel, "", &only_context)?);
    }
    Ok(true)
}

/// Whether an entry is left out, by the source's patterns (matched against `ctx_rel`, relative
/// to the source root) or by the copy's (matched against `src_rel`, relative to the source path
/// being copied).
fn is_excluded(opts: &CopyOptions, ctx_rel: &str, src_rel: &str) -> bool {
    opts.context_exclude
        .as_ref()
        .is_some_and(|x| x.matches(ctx_rel))
        || opts.exclude.as_ref().is_some_and(|x| x.matches(src_rel))
}

/// Whether an excluded directory may still hold something a `!` pattern brings back.
fn may_reinclude(opts: &CopyOptions) -> bool {
    opts.context_exclude
        .as_ref()
        .is_some_and(PatternMatcher::has_exclusions)
        || opts
            .exclude
            .as_ref()
            .is_some_and(PatternMatcher::has_exclusions)
}

/// Whether a non-directory passes the include patterns (both sets, each with its base).
fn is_included(opts: &CopyOptions, ctx_rel: &str, src_rel: &str) -> bool {
    let passes = |m: &Option<PatternMatcher>, rel: &str| {
        m.as_ref().is_none_or(|m| m.is_empty() || m.matches(rel))
    };
    passes(&opts.context_include, ctx_rel) && passes(&opts.include, src_rel)
}

fn with_path(e: io::Error, p: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{p}: {e}"))
}

/// Whether a path component holds a wildcard, as fsutil's copy decides: `*`, `?` or `[` not
/// escaped by a backslash.
pub(crate) fn contains_wildcards(component: &str) -> bool {
    let mut bytes = component.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                bytes.next();
            }
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
    }
    false
}

/// The source paths a copy reads: (path relative to the source root, host path).
///
/// BuildKit's rules (fsutil's `ResolveWildcards`): the components before the first one holding
/// a wildcard are a literal path (a backslash in them is part of a name), followed when
/// `follow_symlink` is set; the rest is a pattern with Go's `filepath.Match` syntax (a backslash
/// escapes the next character) matched against every path below that base, walked without
/// following symbolic links; a directory that matches is taken whole. A path without any
/// wildcard is taken literally.
pub(crate) fn expand_sources(
    root: &Path,
    src: &str,
    opts: &CopyOptions,
) -> io::Result<Vec<(String, PathBuf)>> {
    let rel = crate::patterns::clean_path(src);
    let rel = if rel.starts_with("..") {
        ".".to_string()
    } else {
        rel
    };
    let split = rel.split('/').position(contains_wildcards);
    let Some(first_wild) = split.filter(|_| opts.allow_wildcard) else {
        let p = resolve_in_root(root, &rel, false)?;
        if fs::symlink_metadata(&p).is_err() || context_ignores(opts, &p, &rel)? {
            return Err(not_found(&rel));
        }
        return Ok(vec![(rel, p)]);
    };
    let comps: Vec<&str> = rel.split('/').collect();
    let base_rel = comps[..first_wild].join("/");
    let pattern = comps[first_wild..].join("/");
    let base = resolve_in_root(
        root,
        if base_rel.is_empty() { "." } else { &base_rel },
        opts.follow_symlink,
    )?;
    // A missing base is an error even when an empty match is allowed (fsutil's walk fails).
    let base_md = fs::symlink_metadata(&base).map_err(|e| {
        let why = if e.kind() == io::ErrorKind::NotFound {
            "no such file or directory".to_string()
        } else {
            e.to_string()
        };
        io::Error::new(e.kind(), format!("lstat /{base_rel}: {why}"))
    })?;
    let mut found = Vec::new();
    if base_md.is_dir() {
        // A path with more separators than the pattern can match cannot match, nor can anything
        // below it: `*` and `?` never match `/`, a character class matches at most one.
        let max_depth = pattern.matches(['/', '[']).count();
        walk_matches(&base, "", &pattern, max_depth, &mut found)?;
    }
    let mut matches: Vec<String> = found.iter().map(|m| join_rel(&base_rel, m)).collect();
    if let Some(ex) = &opts.exclude {
        matches.retain(|m| !ex.matches(m));
    }
    let mut kept = Vec::with_capacity(matches.len());
    for m in matches {
        if !context_ignores(opts, &resolve_in_root(root, &m, false)?, &m)? {
            kept.push(m);
        }
    }
    let matches = kept;
    if matches.is_empty() && !opts.allow_empty_wildcard {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no source files were specified matching `{src}`"),
        ));
    }
    matches
        .into_iter()
        .map(|m| resolve_in_root(root, &m, false).map(|p| (m, p)))
        .collect()
}

/// Walks `dir` (known as `rel` below the walk's base) in name order, depth first, without
/// following symbolic links, collecting the paths `pattern` matches; a matched directory is not
/// entered.
fn walk_matches(
    dir: &Path,
    rel: &str,
    pattern: &str,
    max_depth: usize,
    out: &mut Vec<String>,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let child = join_rel(rel, &e.file_name().to_string_lossy());
        if go_match(pattern, &child) {
            out.push(child);
        } else if child.matches('/').count() < max_depth && e.file_type()?.is_dir() {
            walk_matches(&e.path(), &child, pattern, max_depth, out)?;
        }
    }
    Ok(())
}

/// Go's `path/filepath.Match` on Unix: `*` (any run of non-`/` characters), `?` (one non-`/`
/// character), `[...]` classes (ranges, `^` negation) and `\` escaping the next character. A
/// malformed pattern matches nothing, as fsutil ignores Match's error.
pub(crate) fn go_match(pattern: &str, name: &str) -> bool {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest unless it holds a `/`.
            return !name.contains(&b'/');
        }
        match match_chunk(chunk, name) {
            Err(()) => return false,
            Ok(Some(t)) if t.is_empty() || !pattern.is_empty() => {
                name = t;
                continue;
            }
            Ok(_) => {}
        }
        if star {
            // Let the star take 1, 2, ... more bytes, never a `/`.
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    Err(()) => return false,
                    Ok(Some(t)) if !pattern.is_empty() || t.is_empty() => {
                        name = t;
                        continue 'chunks;
                    }
                    Ok(_) => {}
                }
                i += 1;
            }
        }
        return false;
    }
    name.is_empty()
}

/// Splits off the pattern's next chunk: leading stars, then everything up to the next star
/// outside a class.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let stars = pattern.iter().take_while(|&&b| b == b'*').count();
    let pattern = &pattern[stars..];
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (stars > 0, &pattern[..i], &pattern[i..])
}

/// Matches a star-free chunk at the start of `s`: `Ok(Some(rest))` on a match, `Ok(None)` on a
/// mismatch, `Err` for a malformed chunk (checked even after a mismatch, as Go does).
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, ()> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = None;
                if !failed {
                    let (ch, n) = decode_rune(s);
                    r = Some(ch);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = class_char(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if r.is_some_and(|r| lo <= r && r <= hi) {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(());
                    }
                }
                if !failed {
                    if chunk[0] != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

/// One (possibly escaped) character of a class; a class may not end here.
fn class_char(chunk: &[u8]) -> Result<(char, &[u8]), ()> {
    let mut chunk = match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(()),
        Some(b'\\') => &chunk[1..],
        Some(_) => chunk,
    };
    if chunk.is_empty() {
        return Err(());
    }
    let (r, n) = decode_rune(chunk);
    if r == char::REPLACEMENT_CHARACTER && n == 1 {
        return Err(());
    }
    chunk = &chunk[n..];
    if chunk.is_empty() {
        return Err(());
    }
    Ok((r, chunk))
}

/// The first UTF-8 character of a non-empty `s` and its length; an invalid byte decodes as
/// U+FFFD of length 1, as Go's `utf8.DecodeRune`.
fn decode_rune(s: &[u8]) -> (char, usize) {
    let len = match s[0] {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return (char::REPLACEMENT_CHARACTER, 1),
    };
    s.get(..len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.chars().next())
        .map_or((char::REPLACEMENT_CHARACTER, 1), |c| (c, len))
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

/// Copies the entries of `src` into `dest`; `ctx_rel` is `src` relative to the source root and
/// `src_rel` relative to the source path being copied (`""` at its top).
fn copy_dir_contents(
    src: &Path,
    ctx_rel: &str,
    src_rel: &str,
    dest: &Path,
    opts: &CopyOptions,
) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(src)?.collect::<Result<Vec<_>, _>>()?;
    names.sort_by_key(|e| e.file_name());
    // Entries are independent: they are copied on rayon's pool, subdirectories included (a
    // directory's own metadata is applied once everything under it is in place). A big COPY
    // is mostly file creation and metadata calls, which scale with cores.
    names.par_iter().try_for_each(|e| -> io::Result<()> {
        let name = e.file_name();
        let child_ctx = join_rel(ctx_rel, &name.to_string_lossy());
        let child_src = join_rel(src_rel, &name.to_string_lossy());
        let excluded = is_excluded(opts, &child_ctx, &child_src);
        let md = fs::symlink_metadata(e.path())?;
        if excluded && !(md.is_dir() && may_reinclude(opts)) {
            return Ok(());
        }
        let target = dest.join(&name);
        if md.is_dir() {
            let included_somewhere =
                !excluded || dir_has_included(&e.path(), &child_ctx, &child_src, opts)?;
            if !included_somewhere {
                return Ok(());
            }
            if !target.is_dir() {
                if target.exists() || fs::symlink_metadata(&target).is_ok() {
                    remove_all(&target)?;
                }
                fs::create_dir(&target)?;
            }
            copy_dir_contents(&e.path(), &child_ctx, &child_src, &target, opts)?;
            apply_meta(&target, &md, opts)?;
        } else {
            if excluded || !is_included(opts, &child_ctx, &child_src) {
                return Ok(());
            }
            copy_entry(&e.path(), &md, &target, opts)?;
        }
        Ok(())
    })
}

/// Whether an excluded directory holds something a `!` pattern brings back.
fn dir_has_included(
    dir: &Path,
    ctx_rel: &str,
    src_rel: &str,
    opts: &CopyOptions,
) -> io::Result<bool> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let child_ctx = join_rel(ctx_rel, &name.to_string_lossy());
        let child_src = join_rel(src_rel, &name.to_string_lossy());
        if !is_excluded(opts, &child_ctx, &child_src) {
            return Ok(true);
        }
        if e.file_type()?.is_dir() && dir_has_included(&e.path(), &child_ctx, &child_src, opts)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn copy_entry(src: &Path, md: &fs::Metadata, target: &Path, opts: &CopyOptions) -> io::Result<()> {
    let existed = match fs::symlink_metadata(target) {
        Ok(existing) if existing.is_dir() => fs::remove_dir_all(target).map(|()| true)?,
        Ok(_) => fs::remove_file(target).map(|()| true)?,
        Err(_) => false,
    };
    // Only a path that was free: removing one through the overlay can leave a whiteout in the
    // upper directory where the link would go.
    if let Some(reuse) = &opts.reuse
        && md.is_file()
        && !existed
    {
        let (owner, mode, mtime) = target_meta(md, opts);
        let expected = reuse::Expected {
            uid: owner.uid,
            gid: owner.gid,
            mode,
            size: md.len(),
            mtime: (mtime.unix_seconds(), i64::from(mtime.nanoseconds())),
        };
        if reuse.take(src, target, expected) {
            return Ok(());
        }
    }
    if !create_like(src, md, target)? {
        return Ok(()); // sockets are not copied
    }
    copy_xattrs(src, target);
    apply_meta(target, md, opts)
}

fn copy_xattrs(src: &Path, dest: &Path) {
    // Best effort, as BuildKit: a filesystem without xattrs just doesn't carry them.
    if let Ok(names) = xattr::list(src) {
        for n in names {
            if n.to_string_lossy().starts_with("trusted.overlay.") {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &n) {
                let _ = xattr::set(dest, &n, &v);
            }
        }
    }
}

/// Sets owner, mode and mtime of a copied entry from the source metadata and the options.
fn apply_meta(target: &Path, md: &fs::Metadata, opts: &CopyOptions) -> io::Result<()> {
    let (owner, mode, mtime) = target_meta(md, opts);
    std::os::unix::fs::lchown(target, Some(owner.uid), Some(owner.gid))?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
    }
    filetime::set_symlink_file_times(target, mtime, mtime)
}

/// The owner, permission bits and mtime a copy gives the entry with source metadata `md`.
fn target_meta(md: &fs::Metadata, opts: &CopyOptions) -> (Owner, u32, filetime::FileTime) {
    let owner = opts.owner.or(opts.source_owner).unwrap_or(Owner {
        uid: md.uid(),
        gid: md.gid(),
    });
    let own = md.mode() & 0o7777;
    let mode = match &opts.mode_str {
        Some(m) => m.apply(own, md.is_dir()),
        None => opts.mode.unwrap_or(own),
    };
    let mtime = match opts.mtime {
        Some(t) => filetime::FileTime::from_unix_time(t, 0),
        None => filetime::FileTime::from_last_modification_time(md),
    };
    (owner, mode, mtime)
}

/// Creates at `dest` an entry of the same kind as `src` (described by `md`, not followed):
/// a symlink with the same target, a copy of a regular file, or a fifo or device node.
/// Returns `false`, creating nothing, for a socket. Owner, mode and times are the caller's.
pub fn create_like(src: &Path, md: &fs::Metadata, dest: &Path) -> io::Result<bool> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    use std::os::unix::fs::FileTypeExt;
    let ft = md.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dest)?;
    } else if ft.is_file() {
        fs::copy(src, dest)?;
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        let kind = if ft.is_fifo() {
            SFlag::S_IFIFO
        } else if ft.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        mknod(
            dest,
            kind,
            Mode::from_bits_truncate(md.mode() & 0o7777),
            md.rdev(),
        )
        .map_err(io::Error::from)?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// `mkdir -p` with a mode and owner for the directories it creates.
pub fn mkdir_all(path: &Path, mode: u32, owner: Option<Owner>) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        mkdir_all(parent, mode, owner)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(with_path(e, &path.to_string_lossy())),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    if let Some(o) = owner {
        std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))?;
    }
    Ok(())
}

/// Removes a file, symlink or directory tree.
pub fn remove_all(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Looks up a user name (or numeric id) in `<root>/etc/passwd`: (uid, primary gid).
pub fn lookup_user(root: &Path, name: &str) -> io::Result<(u32, u32)> {
    if let Ok(uid) = name.parse::<u32>() {
        let gid = read_db(root, "etc/passwd")
            .into_iter()
            .find(|f| f.get(2).and_then(|s| s.parse::<u32>().ok()) == Some(uid))
            .and_then(|f| f.get(3).and_then(|s| s.parse().ok()))
            .unwrap_or(0);
        return Ok((uid, gid));
    }
    read_db(root, "etc/passwd")
        .into_iter()
        .find(|f| f.first().map(String::as_str) == Some(name))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("unable to find user {name}: no matching entries in passwd file"),
            )
        })
}

/// Looks up a group name (or numeric id) in `<root>/etc/group`.
pub fn lookup_group(root: &Path, name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    read_db(root, "etc/group")
        .into_iter()
        .find(|f| f.first().map(String::as_str) == Some(name))
        .and_then(|f| f.get(2)?.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("unable to find group {name}: no matching entries in group file"),
            )
        })
}

/// Supplementary groups of `user` from `<root>/etc/group`.
pub fn supplementary_groups(root: &Path, user: &str) -> Vec<u32> {
    let mut out: Vec<u32> = read_db(root, "etc/group")
        .into_iter()
        .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|u| u == user)))
        .filter_map(|f| f.get(2)?.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn read_db(root: &Path, rel: &str) -> Vec<Vec<String>> {
    let Ok(p) = resolve_in_root(root, rel, true) else {
        return Vec::new();
    };
    let Ok(text) = fs::read_to_string(p) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// Resolves a `user[:group]` spec as Docker does against a root filesystem:
/// (uid, gid, supplementary gids).
pub fn resolve_user_spec(root: &Path, spec: &str) -> io::Result<(u32, u32, Vec<u32>)> {
    if spec.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match lookup_user(root, user) {
        Ok(x) => x,
        Err(e) => match user.parse::<u32>() {
            Ok(uid) => (uid, 0),
            Err(_) => return Err(e),
        },
    };
    let gid = match group {
        Some(g) => lookup_group(root, g)?,
        None => primary,
    };
    let name = read_db(root, "etc/passwd")
        .into_iter()
        .find(|f| f.get(2).and_then(|s| s.parse::<u32>().ok()) == Some(uid))
        .and_then(|f| f.first().cloned())
        .unwrap_or_else(|| user.to_string());
    let extra = if group.is_some() {
        Vec::new()
    } else {
        supplementary_groups(root, &name)
    };
    Ok((uid, gid, extra))
}

/// A chmod(1) mode: octal, or symbolic clauses such as `u+x,go-w` or `a=rX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolicMode {
    clauses: Vec<ModeClause>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ModeClause {
    /// An octal mode: sets all bits.
    Absolute(u32),
    /// `who` bits (`u` 0o4700, `g` 0o2070, `o` 0o1007; none: all) and their operations.
    Symbolic {
        who: u32,
        ops: Vec<(char, ModePerm)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ModePerm {
    /// Letters among `rwxXst`.
    Letters(String),
    /// Copy the bits of `u`, `g` or `o`.
    Copy(char),
}

impl SymbolicMode {
    /// Parses a chmod(1) mode string.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid chmod mode `{s}`");
        if !s.is_empty() && s.chars().all(|c| ('0'..='7').contains(&c)) {
            let m = u32::from_str_radix(s, 8).map_err(|_| bad())?;
            if m > 0o7777 {
                return Err(bad());
            }
            return Ok(SymbolicMode {
                clauses: vec![ModeClause::Absolute(m)],
            });
        }
        let mut clauses = Vec::new();
        for clause in s.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => break,
                };
                chars.next();
            }
            let mut ops = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let perm = match chars.peek() {
                    Some(&c @ ('u' | 'g' | 'o')) => {
                        chars.next();
                        ModePerm::Copy(c)
                    }
                    _ => {
                        let mut letters = String::new();
                        while let Some(&c) = chars.peek() {
                            if !"rwxXst".contains(c) {
                                break;
                            }
                            letters.push(c);
                            chars.next();
                        }
                        ModePerm::Letters(letters)
                    }
                };
                ops.push((op, perm));
            }
            if ops.is_empty() {
                return Err(bad());
            }
            clauses.push(ModeClause::Symbolic {
                who: if who == 0 { 0o7777 } else { who },
                ops,
            });
        }
        Ok(SymbolicMode { clauses })
    }

    /// The permission bits chmod(1) gives an entry with permission bits `mode` (umask 0); `X`
    /// counts for a directory or when some execute bit is set.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let mut cur = mode & 0o7777;
        for clause in &self.clauses {
            let (who, ops) = match clause {
                ModeClause::Absolute(m) => {
                    cur = *m;
                    continue;
                }
                ModeClause::Symbolic { who, ops } => (*who, ops),
            };
            for (op, perm) in ops {
                let bits = match perm {
                    ModePerm::Copy(c) => {
                        let v = match c {
                            'u' => (cur >> 6) & 7,
                            'g' => (cur >> 3) & 7,
                            _ => cur & 7,
                        };
                        v * 0o111
                    }
                    ModePerm::Letters(l) => l.chars().fold(0, |acc, c| {
                        acc | match c {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || cur & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            't' => 0o1000,
                            _ => 0,
                        }
                    }),
                } & who;
                cur = match op {
                    '+' => cur | bits,
                    '-' => cur & !bits,
                    _ => (cur & !who) | bits,
                };
            }
        }
        cur
    }
}

/// A compression ADD recognizes by its first bytes, as moby's `compression.Detect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Bzip2,
    Gzip,
    Xz,
    Zstd,
}

fn detect_compression(head: &[u8]) -> Compression {
    let zstd_skippable = head.len() >= 8
        && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) & 0xffff_fff0 == 0x184d_2a50;
    if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || zstd_skippable {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Opens a possible archive decompressed: plain, gzip, bzip2, xz or zstd, told apart by
/// content, not name (as moby's `DecompressStream`). Concatenated streams are read through.
fn open_archive(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut r = io::BufReader::new(fs::File::open(path)?);
    let head = r.fill_buf()?;
    Ok(match detect_compression(head) {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
            // Windows up to 512 MiB, the Go decoder's default limit (zstd's own is 128 MiB).
            d.window_log_max(29)?;
            Box::new(d)
        }
    })
}

/// Whether a regular file is a tar archive ADD unpacks: its content, decompressed, starts with
/// a valid tar header, as BuildKit's `isArchivePath` checks. A file that does not decompress
/// that far is no archive (it is copied as is).
pub fn is_archive(path: &Path) -> io::Result<bool> {
    let Ok(r) = open_archive(path) else {
        return Ok(false);
    };
    let mut ar = tar::Archive::new(r);
    Ok(match ar.entries() {
        Ok(mut e) => matches!(e.next(), Some(Ok(_))),
        Err(_) => false,
    })
}

fn breakout(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{name:?} is outside of the destination"),
    )
}

/// An archive member name relative to the destination: cleaned, a leading `/` dropped; a name
/// that climbs out of the destination with `..` is refused, as Docker's untar does.
fn archive_rel(name: &str) -> io::Result<String> {
    let cleaned = crate::patterns::clean_path(name);
    if cleaned == ".." || cleaned.starts_with("../") {
        return Err(breakout(name));
    }
    Ok(if cleaned == "." {
        String::new()
    } else {
        cleaned
    })
}

/// Extracts the tar archive `src` into `dest_dir` (inside `dest_root`), keeping the members'
/// modes, owners (unless `owner` is set), times, symlinks and hard links. Every member is
/// resolved with [`resolve_in_root`], so neither `..`, absolute names nor symlinks met on the
/// way write outside `dest_root`; names or links that climb out of the destination are refused.
pub fn unpack_archive(
    src: &Path,
    dest_root: &Path,
    dest_dir: &Path,
    owner: Option<Owner>,
) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let r = open_archive(src)?;
    let base = dest_dir
        .strip_prefix(dest_root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let in_dest = |rel: &str| resolve_in_root(dest_root, &join_rel(&base, rel), false);
    let mut ar = tar::Archive::new(r);
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        // Every failure names the archive member it is about.
        let at = |e: io::Error| io::Error::new(e.kind(), format!("{raw:?}: {e}"));
        let rel = archive_rel(&raw)?;
        let kind = entry.header().entry_type();
        let target = if rel.is_empty() {
            dest_dir.to_path_buf()
        } else {
            in_dest(&rel)?
        };
        let hdr = entry.header();
        // Go's archive/tar reads an empty numeric field as 0; so does this.
        let mode = hdr.mode().unwrap_or(0) & 0o7777;
        let own = owner.unwrap_or(Owner {
            uid: hdr
                .uid()
                .ok()
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(0),
            gid: hdr
                .gid()
                .ok()
                .and_then(|g| u32::try_from(g).ok())
                .unwrap_or(0),
        });
        let mtime = i64::try_from(hdr.mtime().unwrap_or(0)).unwrap_or(0);
        if let Some(parent) = target.parent()
            && !parent.is_dir()
        {
            mkdir_all(parent, 0o755, owner).map_err(at)?;
        }
        if let Ok(existing) = fs::symlink_metadata(&target)
            && !(existing.is_dir() && kind.is_dir())
        {
            remove_all(&target).map_err(at)?;
        }
        match kind {
            tar::EntryType::Directory => {
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(at)?;
                }
                std::os::unix::fs::lchown(&target, Some(own.uid), Some(own.gid)).map_err(at)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(at)?;
                dirs.push((target, mtime));
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = fs::File::create(&target).map_err(at)?;
                // A member cut short (a truncated archive) is an error, as in Go's tar reader,
                // never a silently shorter file.
                if io::copy(&mut entry, &mut f).map_err(at)? != entry.size() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{raw:?}: unexpected end of archive"),
                    ));
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| breakout(&raw))?
                    .to_string_lossy()
                    .into_owned();
                if !link.starts_with('/') {
                    let dir = Path::new(&rel)
                        .parent()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let joined = crate::patterns::clean_path(&join_rel(&dir, &link));
                    if joined == ".." || joined.starts_with("../") {
                        return Err(breakout(&format!("{raw} -> {link}")));
                    }
                }
                symlink(&link, &target).map_err(at)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| breakout(&raw))?
                    .to_string_lossy()
                    .into_owned();
                let from = in_dest(&archive_rel(&link)?)?;
                fs::hard_link(&from, &target).map_err(|e| {
                    io::Error::new(e.kind(), format!("{raw:?}: hard link to {link:?}: {e}"))
                })?;
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = makedev(
                    u64::from(hdr.device_major().ok().flatten().unwrap_or(0)),
                    u64::from(hdr.device_minor().ok().flatten().unwrap_or(0)),
                );
                mknod(&target, flag, Mode::from_bits_truncate(mode), dev)
                    .map_err(|e| at(io::Error::from(e)))?;
            }
            _ => continue,
        }
        std::os::unix::fs::lchown(&target, Some(own.uid), Some(own.gid)).map_err(at)?;
        if kind != tar::EntryType::Symlink {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(at)?;
        }
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        filetime::set_symlink_file_times(&target, t, t).map_err(at)?;
    }
    // Directory times last: creating their entries changed them.
    for (d, mtime) in dirs.into_iter().rev() {
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        filetime::set_symlink_file_times(&d, t, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_never_leaves_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("a")).unwrap();
        symlink("/etc", r.join("a/abs")).unwrap();
        symlink("../../../../etc", r.join("a/rel")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/a/abs/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, "a/rel/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(r, "../../x", true).unwrap(), r.join("x"));
        // The last component is kept as the link itself without follow.
        assert_eq!(resolve_in_root(r, "a/abs", false).unwrap(), r.join("a/abs"));
        symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in_root(r, "loop/x", true).is_err());
    }

    fn dockerfile_copy() -> CopyOptions {
        CopyOptions {
            follow_symlink: true,
            dir_copy_contents: true,
            create_dest_path: true,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            ..Default::default()
        }
    }

    #[test]
    fn copy_file_into_dir_and_rename() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.txt"), "A").unwrap();
        copy(src.path(), "a.txt", dst.path(), "/app/", &dockerfile_copy()).unwrap();
        assert_eq!(
            fs::read_to_string(dst.path().join("app/a.txt")).unwrap(),
            "A"
        );
        copy(
            src.path(),
            "a.txt",
            dst.path(),
            "/b.txt",
            &dockerfile_copy(),
        )
        .unwrap();
        assert_eq!(fs::read_to_string(dst.path().join("b.txt")).unwrap(), "A");
    }

    #[test]
    fn copy_dir_contents_wildcards_and_excludes() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("src/sub")).unwrap();
        fs::write(src.path().join("src/sub/x.rs"), "x").unwrap();
        fs::write(src.path().join("src/skip.log"), "l").unwrap();
        fs::write(src.path().join("one.txt"), "1").unwrap();
        fs::write(src.path().join("two.txt"), "2").unwrap();
        let mut o = dockerfile_copy();
        o.exclude = Some(PatternMatcher::new(&["**/*.log"]).unwrap());
        copy(src.path(), "src", dst.path(), "/app", &o).unwrap();
        assert!(dst.path().join("app/sub/x.rs").is_file());
        assert!(!dst.path().join("app/skip.log").exists());
        copy(src.path(), "*.txt", dst.path(), "/t/", &o).unwrap();
        assert!(dst.path().join("t/one.txt").is_file() && dst.path().join("t/two.txt").is_file());
        // Empty wildcard allowed; a missing plain path is not.
        copy(src.path(), "*.none", dst.path(), "/t/", &o).unwrap();
        let e = copy(src.path(), "missing.txt", dst.path(), "/t/", &o).unwrap_err();
        assert!(e.to_string().contains("missing.txt"), "{e}");
    }

    #[test]
    fn copy_through_hostile_dest_symlink_stays_inside() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), "F").unwrap();
        symlink(outside.path(), dst.path().join("escape")).unwrap();
        copy(src.path(), "f", dst.path(), "/escape/", &dockerfile_copy()).unwrap();
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        let inside = dst
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("f");
        assert!(inside.is_file());
    }

    #[test]
    fn chown_and_chmod() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), "F").unwrap();
        let mut o = dockerfile_copy();
        o.owner = Some(Owner {
            uid: 1000,
            gid: 1001,
        });
        o.mode = Some(0o700);
        copy(src.path(), "f", dst.path(), "/new/dir/f", &o).unwrap();
        let md = fs::metadata(dst.path().join("new/dir/f")).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1000, 1001, 0o700)
        );
        let md = fs::metadata(dst.path().join("new/dir")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
    }

    #[test]
    fn user_specs() {
        let r = tempfile::tempdir().unwrap();
        fs::create_dir(r.path().join("etc")).unwrap();
        fs::write(
            r.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            r.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .unwrap();
        assert_eq!(
            resolve_user_spec(r.path(), "app").unwrap(),
            (1000, 1000, vec![10])
        );
        assert_eq!(
            resolve_user_spec(r.path(), "app:wheel").unwrap(),
            (1000, 10, vec![])
        );
        assert_eq!(resolve_user_spec(r.path(), "4242").unwrap().0, 4242);
        assert!(resolve_user_spec(r.path(), "nobody").is_err());
        assert_eq!(resolve_user_spec(r.path(), "").unwrap(), (0, 0, vec![]));
    }

    #[test]
    fn symbolic_modes_apply_like_chmod() {
        let m = |s: &str| SymbolicMode::parse(s).unwrap();
        assert_eq!(m("u+x,go-w").apply(0o644, false), 0o744);
        assert_eq!(m("u+x,go-w").apply(0o666, false), 0o744);
        assert_eq!(m("a=rX").apply(0o644, false), 0o444);
        assert_eq!(m("a=rX").apply(0o744, false), 0o555);
        assert_eq!(m("a=rX").apply(0o700, true), 0o555);
        assert_eq!(m("+x").apply(0o600, false), 0o711);
        assert_eq!(m("o=u").apply(0o750, false), 0o757);
        assert_eq!(m("g+s,u-w").apply(0o755, true), 0o2555);
        assert_eq!(m("u=rw,g=,o=").apply(0o777, false), 0o600);
        assert_eq!(m("0640").apply(0o777, false), 0o640);
        for bad in ["", "u", "z+x", "u+x,", "u+q", "99"] {
            assert!(SymbolicMode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symbolic_chmod_is_applied_per_entry() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/f"), "F").unwrap();
        fs::write(src.path().join("d/run"), "R").unwrap();
        fs::set_permissions(src.path().join("d/f"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(src.path().join("d/run"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(src.path().join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        let mut o = dockerfile_copy();
        o.mode = Some(0); // what the frontend sends beside a mode string
        o.mode_str = Some(SymbolicMode::parse("a=rX").unwrap());
        copy(src.path(), "d", dst.path(), "/out", &o).unwrap();
        let mode = |p: &str| fs::metadata(dst.path().join(p)).unwrap().mode() & 0o7777;
        // The destination directory itself is made as `mkdir -p` makes it (BuildKit).
        assert_eq!(
            (mode("out"), mode("out/f"), mode("out/run")),
            (0o755, 0o444, 0o555)
        );
        o.mode_str = Some(SymbolicMode::parse("u+x,go-w").unwrap());
        copy(src.path(), "d/f", dst.path(), "/f2", &o).unwrap();
        assert_eq!(mode("f2"), 0o744);
    }

    #[test]
    fn copy_excludes_are_relative_to_the_source_and_ignores_to_the_root() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("conf/sub")).unwrap();
        for f in [
            "conf/a.conf",
            "conf/a.bak",
            "conf/sub/b.bak",
            "conf/secret",
            "a.bak",
        ] {
            fs::write(src.path().join(f), f).unwrap();
        }
        let mut o = dockerfile_copy();
        o.exclude = Some(PatternMatcher::new(&["*.bak"]).unwrap());
        o.context_exclude = Some(PatternMatcher::new(&["conf/secret", "secret"]).unwrap());
        copy(src.path(), "conf/", dst.path(), "/etc/conf/", &o).unwrap();
        let d = dst.path().join("etc/conf");
        assert!(d.join("a.conf").is_file());
        assert!(
            !d.join("a.bak").exists(),
            "copy exclude relative to the source"
        );
        assert!(d.join("sub/b.bak").is_file(), "`*` does not cross `/`");
        assert!(
            !d.join("secret").exists(),
            ".dockerignore relative to the root"
        );
        // A context-root-relative reading of the copy's pattern would not match conf/a.bak.
        o.exclude = Some(PatternMatcher::new(&["conf/*.bak"]).unwrap());
        copy(src.path(), "conf", dst.path(), "/c2", &o).unwrap();
        assert!(dst.path().join("c2/a.bak").is_file());
    }

    #[test]
    fn ignored_sources_are_not_found_even_when_named() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("dir")).unwrap();
        fs::create_dir_all(src.path().join("keepdir")).unwrap();
        fs::write(src.path().join("ignored.txt"), "i").unwrap();
        fs::write(src.path().join("kept.txt"), "k").unwrap();
        fs::write(src.path().join("dir/x"), "x").unwrap();
        fs::write(src.path().join("keepdir/keep"), "k").unwrap();
        fs::write(src.path().join("keepdir/drop"), "d").unwrap();
        symlink("ignored.txt", src.path().join("link")).unwrap();
        let mut o = dockerfile_copy();
        o.context_exclude =
            Some(PatternMatcher::new(&["ignored.txt", "dir", "keepdir", "!keepdir/keep"]).unwrap());
        let e = copy(src.path(), "ignored.txt", dst.path(), "/", &o).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("\"/ignored.txt\": not found"), "{e}");
        let e = copy(src.path(), "/dir/x", dst.path(), "/", &o).unwrap_err();
        assert!(e.to_string().contains("\"/dir/x\": not found"), "{e}");
        let e = copy(src.path(), "link", dst.path(), "/", &o).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        copy(src.path(), "kept.txt", dst.path(), "/", &o).unwrap();
        // A directory with something re-included is there, holding only that.
        copy(src.path(), "keepdir", dst.path(), "/k", &o).unwrap();
        assert!(dst.path().join("k/keep").is_file() && !dst.path().join("k/drop").exists());
        // Globs do not see ignored entries.
        copy(src.path(), "*.txt", dst.path(), "/g/", &o).unwrap();
        assert!(dst.path().join("g/kept.txt").is_file());
        assert!(!dst.path().join("g/ignored.txt").exists());
    }

    #[test]
    fn go_match_follows_filepath_match() {
        let yes = [
            ("*.txt", "a.txt"),
            ("a\\*.txt", "a*.txt"),
            ("[a]\\*.txt", "a*.txt"),
            ("\\\\", "\\"),
            ("a?c", "abc"),
            ("[!a]", "!"), // `!` is no negation in Go
            ("[^a]", "b"),
            ("[a-c]x", "bx"),
            ("[\\]]", "]"),
            ("*/x", "d/x"),
            ("[^a]", "/"), // a class may match a separator
            ("*", ""),
            ("ä?", "äö"),
        ];
        for (p, n) in yes {
            assert!(go_match(p, n), "{p} should match {n}");
        }
        let no = [
            ("a\\*.txt", "ab.txt"),
            ("a\\*.txt", "a\\*.txt"),
            ("*", "a/b"),
            ("a?c", "a/c"),
            ("[!a]", "b"),
            ("[^a]", "a"),
            ("*/x", "d/e/x"),
            // Malformed patterns match nothing.
            ("[", "["),
            ("a\\", "a\\"),
            ("[]a]", "]"),
            ("[a-]", "a"),
            ("*[", "x["),
        ];
        for (p, n) in no {
            assert!(!go_match(p, n), "{p} should not match {n}");
        }
    }

    #[test]
    fn sources_escape_wildcards_only_in_a_pattern() {
        let src = tempfile::tempdir().unwrap();
        let r = src.path();
        for f in ["a*.txt", "a\\*.txt", "ab.txt", "d\\*r/in.txt", "d*r/in.txt"] {
            fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            fs::write(r.join(f), f).unwrap();
        }
        fs::create_dir_all(r.join("dir/sub")).unwrap();
        fs::write(r.join("dir/x"), "x").unwrap();
        fs::write(r.join("dir/sub/x"), "x").unwrap();
        symlink("dir", r.join("link")).unwrap();
        let o = dockerfile_copy();
        let found = |src: &str| -> Vec<String> {
            expand_sources(r, src, &o)
                .unwrap()
                .into_iter()
                .map(|(rel, _)| rel)
                .collect()
        };
        // No unescaped wildcard: the path is taken literally, backslash and all.
        assert_eq!(found("a\\*.txt"), ["a\\*.txt"]);
        // A wildcard in the component: `\*` is a literal star.
        assert_eq!(found("a\\*.tx[t]"), ["a*.txt"]);
        assert_eq!(found("[a]\\*.txt"), ["a*.txt"]);
        assert_eq!(found("a*.txt"), ["a*.txt", "a\\*.txt", "ab.txt"]);
        // Components before the first wildcard are literal; later ones are patterns.
        assert_eq!(found("d\\*r/*.txt"), ["d\\*r/in.txt"]);
        assert_eq!(found("d[*]r/i\\n.txt"), ["d*r/in.txt"]);
        // The walk does not follow symlinks below the base, and a matching directory is
        // taken whole.
        assert_eq!(found("*/x"), ["dir/x"]);
        assert_eq!(found("di?"), ["dir"]);
        assert_eq!(found("link/*"), ["link/sub", "link/x"]);
        // Without wildcards allowed, every path is literal.
        let mut literal = o.clone();
        literal.allow_wildcard = false;
        assert_eq!(
            expand_sources(r, "a*.txt", &literal).unwrap()[0].0,
            "a*.txt"
        );
        // A missing base fails even when an empty match is allowed; a malformed pattern
        // matches nothing.
        let e = expand_sources(r, "missing/*.txt", &o).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "lstat /missing: no such file or directory");
        assert!(found("[").is_empty());
        // The copy and the fingerprint of the copy read the same file.
        let dst = tempfile::tempdir().unwrap();
        copy(r, "a\\*.txt", dst.path(), "/", &o).unwrap();
        assert_eq!(
            fs::read_to_string(dst.path().join("a\\*.txt")).unwrap(),
            "a\\*.txt"
        );
        assert!(!dst.path().join("a*.txt").exists());
        let sel = crate::fingerprint::CopySelection {
            src: "a\\*.txt",
            allow_wildcard: true,
            follow_symlink: true,
            ..Default::default()
        };
        let stats = crate::fingerprint::StatCache::default();
        let fp = crate::fingerprint::copy_sources(r, &sel, &stats).unwrap();
        assert_eq!(fp.len(), 1);
        assert_eq!(fp[0].0, "a\\*.txt");
        let sel = crate::fingerprint::CopySelection {
            src: "a\\*.tx[t]",
            ..sel
        };
        let fp = crate::fingerprint::copy_sources(r, &sel, &stats).unwrap();
        assert_eq!(fp.len(), 1);
        assert_eq!(fp[0].0, "a*.txt");
    }

    /// A tar member with any name (even `..`), written raw.
    fn raw_member(
        b: &mut tar::Builder<impl io::Write>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        let n = &mut h.as_old_mut().name;
        n[..name.len()].copy_from_slice(name.as_bytes());
        let l = &mut h.as_old_mut().linkname;
        l[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    // Verifies (issue 12): a hard link to a member the archive does not have fails naming the
    // member and its link target.
    #[test]
    fn a_bad_hard_link_names_its_member() {
        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("bad.tar");
        let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
        raw_member(&mut b, "pkg/", tar::EntryType::Directory, "", b"");
        raw_member(&mut b, "pkg/hard", tar::EntryType::Link, "pkg/missing", b"");
        b.into_inner().unwrap();
        let root = d.path().join("root");
        fs::create_dir(&root).unwrap();
        let e = unpack_archive(&archive, &root, &root, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("\"pkg/hard\"") && msg.contains("pkg/missing"),
            "{msg}"
        );
    }

    fn sample_tar_gz(path: &Path) {
        let f = fs::File::create(path).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        sample_tar(gz).finish().unwrap();
    }

    /// The sample archive (a directory, a file, a symlink and a hard link) written to `w`.
    fn sample_tar<W: io::Write>(w: W) -> W {
        let mut b = tar::Builder::new(w);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o750);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1_000_000);
        h.set_size(0);
        b.append_data(&mut h, "pkg/", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o640);
        h.set_uid(5);
        h.set_gid(6);
        h.set_mtime(1_234_567);
        h.set_size(5);
        b.append_data(&mut h, "pkg/data.txt", &b"hello"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "pkg/link", "data.txt").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "pkg/hard", "pkg/data.txt").unwrap();
        b.into_inner().unwrap()
    }

    /// `data` compressed the way the named tool would.
    fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match kind {
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "bz2" => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "xz" => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "zst" => zstd::encode_all(data, 3).unwrap(),
            _ => unreachable!("{kind}"),
        }
    }

    /// Bytes that do not compress: a linear congruential generator's output.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn add_unpacks_bzip2_xz_and_zstd_archives() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let tar = sample_tar(Vec::new());
        let mut o = dockerfile_copy();
        o.unpack = true;
        for kind in ["gz", "bz2", "xz", "zst"] {
            // Named without a suffix: the content decides.
            let name = format!("archive-{kind}");
            fs::write(src.path().join(&name), compress(kind, &tar)).unwrap();
            let dest = format!("/{kind}");
            copy(src.path(), &name, dst.path(), &dest, &o).unwrap();
            let d = dst.path().join(kind).join("pkg");
            assert_eq!(fs::read_to_string(d.join("data.txt")).unwrap(), "hello");
            let md = fs::symlink_metadata(d.join("data.txt")).unwrap();
            assert_eq!(
                (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime()),
                (0o640, 5, 6, 1_234_567),
                "{kind}"
            );
            assert_eq!(
                fs::read_link(d.join("link")).unwrap(),
                Path::new("data.txt")
            );
            assert_eq!(fs::metadata(d.join("hard")).unwrap().ino(), md.ino());
            assert!(!dst.path().join(kind).join(&name).exists(), "{kind}");
        }
        // Concatenated streams are one archive (as `cat a.gz b.gz`), and zstd data may start
        // with a skippable frame.
        let half = tar.len() / 2 / 512 * 512;
        for kind in ["gz", "bz2", "xz", "zst"] {
            let mut two = compress(kind, &tar[..half]);
            two.extend(compress(kind, &tar[half..]));
            fs::write(src.path().join("two"), two).unwrap();
            copy(src.path(), "two", dst.path(), &format!("/two-{kind}"), &o).unwrap();
            assert!(dst.path().join(format!("two-{kind}/pkg/hard")).is_file());
        }
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skippable.extend(compress("zst", &tar));
        fs::write(src.path().join("skip.zst"), skippable).unwrap();
        copy(src.path(), "skip.zst", dst.path(), "/skip", &o).unwrap();
        assert!(dst.path().join("skip/pkg/data.txt").is_file());
    }

    #[test]
    fn compressed_files_that_are_not_tar_archives_are_copied() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut o = dockerfile_copy();
        o.unpack = true;
        for kind in ["gz", "bz2", "xz", "zst"] {
            // A compressed text file, and one whose data is damaged from the start: neither
            // decompresses to a tar header, so ADD copies them as they are.
            let good = compress(kind, b"just text\n");
            let mut bad = good.clone();
            let head = if kind == "zst" { 4 } else { 3 };
            for b in &mut bad[head + 3..] {
                *b ^= 0x5a;
            }
            for (name, bytes) in [("text", &good), ("damaged", &bad)] {
                let file = format!("{name}.tar.{kind}");
                fs::write(src.path().join(&file), bytes).unwrap();
                copy(src.path(), &file, dst.path(), "/c/", &o).unwrap();
                assert_eq!(&fs::read(dst.path().join("c").join(&file)).unwrap(), bytes);
            }
        }
    }

    #[test]
    fn a_truncated_compressed_archive_fails_naming_it() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..3 {
            let data = noise(400 << 10);
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("big/{i}.bin"), &data[..])
                .unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut o = dockerfile_copy();
        o.unpack = true;
        for kind in ["", "gz", "bz2", "xz", "zst"] {
            let full = if kind.is_empty() {
                tar.clone()
            } else {
                compress(kind, &tar)
            };
            // Cut in the middle of the second member: the first header reads fine, so this is
            // an archive, and the extraction fails.
            let name = format!("big.tar{}{kind}", if kind.is_empty() { "" } else { "." });
            fs::write(src.path().join(&name), &full[..full.len() / 2]).unwrap();
            let e = copy(src.path(), &name, dst.path(), "/dest/x", &o).unwrap_err();
            assert!(
                e.to_string().contains(&format!("unpacking /{name}: ")),
                "{kind}: {e}"
            );
            // Whatever was written stayed in the destination.
            let top: Vec<_> = fs::read_dir(dst.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(top, ["dest"], "{kind}");
            let under: Vec<_> = fs::read_dir(dst.path().join("dest"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(under, ["x"], "{kind}");
            remove_all(&dst.path().join("dest")).unwrap();
        }
    }

    #[test]
    fn add_unpacks_tar_archives_by_content() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        sample_tar_gz(&src.path().join("a.bin")); // named without any archive suffix
        fs::write(src.path().join("plain.tar.gz"), "not an archive").unwrap();
        let mut o = dockerfile_copy();
        o.unpack = true;
        copy(src.path(), "a.bin", dst.path(), "/opt", &o).unwrap();
        let d = dst.path().join("opt/pkg");
        let md = fs::symlink_metadata(d.join("data.txt")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime()),
            (0o640, 5, 6, 1_234_567)
        );
        assert_eq!(
            fs::read_link(d.join("link")).unwrap(),
            Path::new("data.txt")
        );
        assert_eq!(fs::metadata(d.join("hard")).unwrap().ino(), md.ino());
        let dmd = fs::metadata(&d).unwrap();
        assert_eq!(
            (dmd.mode() & 0o7777, dmd.uid(), dmd.mtime()),
            (0o750, 7, 1_000_000)
        );
        // A chown wins over the members' owners.
        o.owner = Some(Owner { uid: 9, gid: 9 });
        copy(src.path(), "a.bin", dst.path(), "/chowned", &o).unwrap();
        let md = fs::metadata(dst.path().join("chowned/pkg/data.txt")).unwrap();
        assert_eq!((md.uid(), md.gid()), (9, 9));
        // Not an archive: copied as a file. Without unpack: copied as a file.
        copy(src.path(), "plain.tar.gz", dst.path(), "/p/", &o).unwrap();
        assert!(dst.path().join("p/plain.tar.gz").is_file());
        o.unpack = false;
        copy(src.path(), "a.bin", dst.path(), "/raw/", &o).unwrap();
        assert!(dst.path().join("raw/a.bin").is_file());
    }

    #[test]
    fn hostile_archives_stay_inside() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut o = dockerfile_copy();
        o.unpack = true;
        let build = |name: &str, members: &[(&str, tar::EntryType, &str)]| {
            let mut b = tar::Builder::new(fs::File::create(src.path().join(name)).unwrap());
            for (n, k, l) in members {
                raw_member(&mut b, n, *k, l, if l.is_empty() { b"x" } else { b"" });
            }
            b.finish().unwrap();
        };
        let reg = tar::EntryType::Regular;
        let sym = tar::EntryType::Symlink;
        build("dotdot.tar", &[("../escape", reg, "")]);
        let e = copy(src.path(), "dotdot.tar", dst.path(), "/x/y", &o).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(!dst.path().join("x/escape").exists() && !dst.path().join("escape").exists());
        build("badlink.tar", &[("l", sym, "../../..")]);
        assert!(copy(src.path(), "badlink.tar", dst.path(), "/x/y", &o).is_err());
        // Absolute names and absolute links resolve inside the root.
        let out = outside.path().to_string_lossy().into_owned();
        build(
            "abs.tar",
            &[
                ("/abs.txt", reg, ""),
                ("out", sym, &out),
                ("out/through", reg, ""),
            ],
        );
        copy(src.path(), "abs.tar", dst.path(), "/z", &o).unwrap();
        assert!(dst.path().join("z/abs.txt").is_file());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        let inside = dst.path().join(out.trim_start_matches('/')).join("through");
        assert!(inside.is_file(), "{inside:?}");
    }
}
