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

use crate::patterns::PatternMatcher;

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
        let md = if opts.follow_symlink {
            fs::metadata(&path)
        } else {
            fs::symlink_metadata(&path)
        }
        .map_err(|e| with_path(e, &format!("/{rel}")))?;
        let src_path =
            if opts.follow_symlink && fs::symlink_metadata(&path)?.file_type().is_symlink() {
                let followed = resolve_in_root(src_root, &rel, true)?;
                let followed_rel = followed
                    .strip_prefix(src_root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if context_ignores(opts, &followed, &followed_rel)? {
                    return Err(not_found(&rel));
                }
                followed
            } else {
                path.clone()
            };
        if opts.unpack && md.is_file() && is_archive(&src_path)? {
            let dest_dir = resolve_in_root(dest_root, dest, true)?;
            if !dest_dir.is_dir() {
                mkdir_all(&dest_dir, 0o755, opts.owner)?;
            }
            unpack_archive(&src_path, dest_root, &dest_dir, opts.owner)?;
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
        if md.is_dir() {
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

/// Whether the source's own exclude patterns (`.dockerignore`) leave `rel` (relative to the
/// source root; `path` on the host) out of the source: a directory they match is still there
/// when a `!` pattern brings back something below it.
fn context_ignores(opts: &CopyOptions, path: &Path, rel: &str) -> io::Result<bool> {
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

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The source paths a copy reads: (path relative to the source root, host path).
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
    if !(opts.allow_wildcard && has_glob(&rel)) {
        let p = resolve_in_root(root, &rel, false)?;
        if fs::symlink_metadata(&p).is_err() || context_ignores(opts, &p, &rel)? {
            return Err(not_found(&rel));
        }
        return Ok(vec![(rel, p)]);
    }
    // Glob component by component, each matched against directory entries.
    let mut matches: Vec<String> = vec![String::new()];
    for comp in rel.split('/') {
        let mut next = Vec::new();
        for base in &matches {
            if has_glob(comp) {
                let re = glob_component(comp)?;
                let dir = resolve_in_root(root, if base.is_empty() { "." } else { base }, true)?;
                let Ok(rd) = fs::read_dir(&dir) else { continue };
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| re.is_match(n))
                    .collect();
                names.sort();
                for n in names {
                    next.push(join_rel(base, &n));
                }
            } else {
                let cand = join_rel(base, comp);
                if fs::symlink_metadata(resolve_in_root(root, &cand, false)?).is_ok() {
                    next.push(cand);
                }
            }
        }
        matches = next;
    }
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

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn glob_component(comp: &str) -> io::Result<regex::Regex> {
    let mut re = String::from("^");
    let mut chars = comp.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => {
                re.push('[');
                if matches!(chars.peek(), Some('^') | Some('!')) {
                    chars.next();
                    re.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' || c == '[' {
                        re.push('\\');
                    }
                    re.push(c);
                }
                re.push(']');
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    re.push_str(&regex::escape(&n.to_string()));
                }
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
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
    for e in names {
        let name = e.file_name();
        let child_ctx = join_rel(ctx_rel, &name.to_string_lossy());
        let child_src = join_rel(src_rel, &name.to_string_lossy());
        let excluded = is_excluded(opts, &child_ctx, &child_src);
        let md = fs::symlink_metadata(e.path())?;
        if excluded && !(md.is_dir() && may_reinclude(opts)) {
            continue;
        }
        let target = dest.join(&name);
        if md.is_dir() {
            let included_somewhere =
                !excluded || dir_has_included(&e.path(), &child_ctx, &child_src, opts)?;
            if !included_somewhere {
                continue;
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
                continue;
            }
            copy_entry(&e.path(), &md, &target, opts)?;
        }
    }
    Ok(())
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
    if let Ok(existing) = fs::symlink_metadata(target) {
        if existing.is_dir() {
            fs::remove_dir_all(target)?;
        } else {
            fs::remove_file(target)?;
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
    let owner = opts.owner.or(opts.source_owner).unwrap_or(Owner {
        uid: md.uid(),
        gid: md.gid(),
    });
    std::os::unix::fs::lchown(target, Some(owner.uid), Some(owner.gid))?;
    if !md.file_type().is_symlink() {
        let own = md.mode() & 0o7777;
        let mode = match &opts.mode_str {
            Some(m) => m.apply(own, md.is_dir()),
            None => opts.mode.unwrap_or(own),
        };
        fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
    }
    let mtime = match opts.mtime {
        Some(t) => filetime::FileTime::from_unix_time(t, 0),
        None => filetime::FileTime::from_last_modification_time(md),
    };
    filetime::set_symlink_file_times(target, mtime, mtime)
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

/// Opens a possible archive decompressed: plain or gzip (by content, not name). `None` for
/// compressions without a decoder here (bzip2, xz, zstd): such a file is copied as is.
fn open_archive(path: &Path) -> io::Result<Option<Box<dyn Read>>> {
    let mut r = io::BufReader::new(fs::File::open(path)?);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Some(Box::new(flate2::read::MultiGzDecoder::new(r))));
    }
    let compressed = head.starts_with(b"BZh")
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if compressed {
        return Ok(None);
    }
    Ok(Some(Box::new(r)))
}

/// Whether a regular file is a tar archive ADD unpacks: its (decompressed) content starts with
/// a valid tar header, as BuildKit's `isArchivePath` checks.
pub fn is_archive(path: &Path) -> io::Result<bool> {
    let Some(r) = open_archive(path)? else {
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
        format!("unpacking archive: {name:?} is outside of the destination"),
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
    let Some(r) = open_archive(src)? else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unsupported archive compression",
        ));
    };
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
            mkdir_all(parent, 0o755, owner)?;
        }
        if let Ok(existing) = fs::symlink_metadata(&target)
            && !(existing.is_dir() && kind.is_dir())
        {
            remove_all(&target)?;
        }
        match kind {
            tar::EntryType::Directory => {
                if !target.is_dir() {
                    fs::create_dir(&target)?;
                }
                std::os::unix::fs::lchown(&target, Some(own.uid), Some(own.gid))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                dirs.push((target, mtime));
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f = fs::File::create(&target)?;
                io::copy(&mut entry, &mut f)?;
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
                symlink(&link, &target)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| breakout(&raw))?
                    .to_string_lossy()
                    .into_owned();
                let from = in_dest(&archive_rel(&link)?)?;
                fs::hard_link(&from, &target)?;
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
                    .map_err(io::Error::from)?;
            }
            _ => continue,
        }
        std::os::unix::fs::lchown(&target, Some(own.uid), Some(own.gid))?;
        if kind != tar::EntryType::Symlink {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        }
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        filetime::set_symlink_file_times(&target, t, t)?;
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
        assert_eq!(
            (mode("out"), mode("out/f"), mode("out/run")),
            (0o555, 0o444, 0o555)
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

    fn sample_tar_gz(path: &Path) {
        let f = fs::File::create(path).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
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
        b.into_inner().unwrap().finish().unwrap();
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
