//! `local.followpaths`: the paths a local source must make visible, with every symbolic link on
//! the way resolved, as BuildKit's file transfer (fsutil's `FollowLinks`) computes them.
//!
//! BuildKit sends only what the include patterns and these paths select: the Dockerfile
//! frontend lists every context path a COPY or ADD names, and the transfer turns them into
//! include patterns after adding the targets of the symbolic links they go through (a link at
//! any component, or a wildcard component matching links). The result is used as patterns, so
//! pattern syntax in a name means what it means in a pattern (`a\b.txt` selects `ab.txt`).
//! Links are resolved inside the directory: an absolute target names a path below its root.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;

use crate::fsops::{contains_wildcards, go_match};
use crate::patterns::clean_path;

/// Recursion bound, like the kernel's limit on nested symbolic links.
const MAX_LINKS: usize = 255;

/// The include paths `paths` stand for under `root`, sorted, none below another; `None` when
/// one of them is the root itself (nothing is filtered then).
pub(crate) fn follow_links(root: &Path, paths: &[String]) -> io::Result<Option<Vec<String>>> {
    let mut r = Resolver {
        root,
        resolved: BTreeSet::new(),
    };
    for p in paths {
        r.append(p, 0)?;
    }
    Ok(dedupe(r.resolved))
}

struct Resolver<'a> {
    root: &'a Path,
    resolved: BTreeSet<String>,
}

/// A path cleaned and relative to the root: `.` for the root, `..` components dropped.
fn rel(p: &str) -> String {
    let c = clean_path(p);
    let mut s = c.as_str();
    while let Some(rest) = s.strip_prefix("../") {
        s = rest;
    }
    if s == ".." || s.is_empty() {
        ".".into()
    } else {
        s.into()
    }
}

fn join(a: &str, b: &str) -> String {
    if a == "." || a.is_empty() {
        rel(b)
    } else {
        rel(&format!("{a}/{b}"))
    }
}

impl Resolver<'_> {
    fn append(&mut self, path: &str, depth: usize) -> io::Result<()> {
        if depth > MAX_LINKS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("resolving `{path}`: too many levels of symbolic links"),
            ));
        }
        let mut rest = rel(path);
        let mut current = ".".to_string();
        loop {
            let (head, tail) = match rest.split_once('/') {
                Some((h, t)) => (h.to_string(), t.to_string()),
                None => (rest.clone(), String::new()),
            };
            current = join(&current, &head);
            let targets = self.read_link(&current, true)?;
            if (tail.is_empty() || !targets.is_empty()) && self.resolved.contains(&current) {
                return Ok(());
            }
            if !targets.is_empty() {
                self.resolved.insert(current);
                for t in targets {
                    self.append(&join(&t, &tail), depth + 1)?;
                }
                return Ok(());
            }
            if tail.is_empty() {
                self.resolved.insert(current);
                return Ok(());
            }
            rest = tail;
        }
    }

    /// The targets (relative to the root) of `p` if it is a symbolic link; with a wildcard in
    /// its last component, of every matching entry that is one.
    fn read_link(&self, p: &str, allow_wildcard: bool) -> io::Result<Vec<String>> {
        let (dir, base) = match p.rsplit_once('/') {
            Some((d, b)) => (d, b),
            None => (".", p),
        };
        if allow_wildcard && contains_wildcards(base) {
            let entries = match fs::read_dir(self.root.join(dir)) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| go_match(base, n))
                .collect();
            names.sort();
            let mut out = Vec::new();
            for n in names {
                out.extend(self.read_link(&join(dir, &n), false)?);
            }
            return Ok(out);
        }
        let real = self.root.join(p);
        let md = match fs::symlink_metadata(&real) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if !md.file_type().is_symlink() {
            return Ok(Vec::new());
        }
        let link = fs::read_link(&real)?;
        let link = link.to_string_lossy();
        Ok(vec![if link.starts_with('/') {
            rel(&link)
        } else {
            join(dir, &link)
        }])
    }
}

/// Sorted paths without those below another one; `None` if the root is among them.
fn dedupe(sorted: BTreeSet<String>) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for s in sorted {
        if s == "." {
            return None;
        }
        if out
            .last()
            .is_some_and(|last| s.starts_with(&format!("{last}/")))
        {
            continue;
        }
        out.push(s);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn paths(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_paths_are_kept_and_nested_ones_folded() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("src/a")).unwrap();
        let got = follow_links(
            d.path(),
            &paths(&["src", "src/a/b.rs", "go.mod", "./x/../y"]),
        );
        assert_eq!(got.unwrap(), Some(paths(&["go.mod", "src", "y"])));
        assert_eq!(follow_links(d.path(), &paths(&["a", "."])).unwrap(), None);
        assert_eq!(follow_links(d.path(), &paths(&["/"])).unwrap(), None);
        assert_eq!(follow_links(d.path(), &[]).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn links_on_the_way_add_their_targets() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("real/sub")).unwrap();
        fs::write(d.path().join("real/sub/f"), "").unwrap();
        symlink("real", d.path().join("link")).unwrap();
        symlink("/real/sub/f", d.path().join("abs")).unwrap();
        symlink("../../outside", d.path().join("real/up")).unwrap();
        let got = follow_links(d.path(), &paths(&["link/sub/f", "abs", "real/up"])).unwrap();
        // The link, then what it resolves to; an absolute target is below the root; `..`
        // never leaves it.
        assert_eq!(
            got,
            Some(paths(&["abs", "link", "outside", "real/sub/f", "real/up"]))
        );
    }

    #[test]
    fn wildcards_follow_matching_links_and_loops_end() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("t1")).unwrap();
        symlink("t1", d.path().join("l1")).unwrap();
        fs::write(d.path().join("lx"), "").unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        let got = follow_links(d.path(), &paths(&["l*", "a"])).unwrap();
        assert_eq!(got, Some(paths(&["a", "b", "l*", "t1"])));
        // Pattern syntax stays pattern syntax: a backslash escapes, as BuildKit's transfer reads it.
        let got = follow_links(d.path(), &paths(&["a\\b.txt"])).unwrap();
        assert_eq!(got, Some(paths(&["a\\b.txt"])));
    }
}
