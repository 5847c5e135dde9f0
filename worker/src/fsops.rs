//! File operations on a mounted root filesystem: BuildKit's FileOp actions (copy, mkdir, mkfile,
//! rm) with their options, done directly on disk without a container.
//!
//! Every path inside a root is resolved with [`resolve_in_root`], which follows symlinks as the
//! container would see them: an absolute link or a `..` never leaves the root. A hostile image or
//! context cannot make a COPY write outside the snapshot it targets.

use std::fs;
use std::io;
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
    /// Modification time (seconds) for everything copied; `None` keeps the source's.
    pub mtime: Option<i64>,
    /// Only source paths matching these (relative to the source root) are copied, if non-empty.
    pub include: Option<PatternMatcher>,
    /// Source paths matching these (relative to the source root) are skipped.
    pub exclude: Option<PatternMatcher>,
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
                resolve_in_root(src_root, &rel, true)?
            } else {
                path.clone()
            };
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
            copy_dir_contents(&src_path, &rel_root, &target, opts)?;
            apply_meta(&target, &md, opts)?;
        } else {
            copy_entry(&src_path, &md, &target, opts)?;
        }
    }
    Ok(())
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
        if fs::symlink_metadata(&p).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("\"/{}\": not found", if rel == "." { "" } else { &rel }),
            ));
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

fn copy_dir_contents(src: &Path, rel: &str, dest: &Path, opts: &CopyOptions) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(src)?.collect::<Result<Vec<_>, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name();
        let child_rel = join_rel(rel, &name.to_string_lossy());
        let excluded = opts.exclude.as_ref().is_some_and(|x| x.matches(&child_rel));
        let md = fs::symlink_metadata(e.path())?;
        if excluded && !(md.is_dir() && opts.exclude.as_ref().is_some_and(|x| x.has_exclusions())) {
            continue;
        }
        let target = dest.join(&name);
        if md.is_dir() {
            let included_somewhere = !excluded || dir_has_included(&e.path(), &child_rel, opts)?;
            if !included_somewhere {
                continue;
            }
            if !target.is_dir() {
                if target.exists() || fs::symlink_metadata(&target).is_ok() {
                    remove_all(&target)?;
                }
                fs::create_dir(&target)?;
            }
            copy_dir_contents(&e.path(), &child_rel, &target, opts)?;
            apply_meta(&target, &md, opts)?;
        } else {
            if excluded {
                continue;
            }
            if let Some(inc) = &opts.include
                && !inc.matches(&child_rel)
            {
                continue;
            }
            copy_entry(&e.path(), &md, &target, opts)?;
        }
    }
    Ok(())
}

/// Whether an excluded directory holds something a `!` pattern brings back.
fn dir_has_included(dir: &Path, rel: &str, opts: &CopyOptions) -> io::Result<bool> {
    let Some(ex) = &opts.exclude else {
        return Ok(true);
    };
    for e in fs::read_dir(dir)? {
        let e = e?;
        let child = join_rel(rel, &e.file_name().to_string_lossy());
        if !ex.matches(&child) {
            return Ok(true);
        }
        if e.file_type()?.is_dir() && dir_has_included(&e.path(), &child, opts)? {
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
        let mode = opts.mode.unwrap_or(md.mode() & 0o7777);
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
}
