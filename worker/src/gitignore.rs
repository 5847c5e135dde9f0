//! `.gitignore` files of a build context, for `memobuild build --use-gitignore`.
//!
//! Git's rules (nested `.gitignore` files, a deeper file winning over a shallower one, `!`
//! re-inclusion, directory-only patterns, no re-inclusion below an ignored directory) are the
//! `ignore` crate's [`Gitignore`] matchers; this module walks the context top-down in parallel,
//! one matcher per directory that has a `.gitignore`, and returns the top-most ignored paths.
//! The caller adds them to the `.dockerignore` patterns as literal paths, so everything
//! downstream (the local source's exclude patterns in the LLB, the copies, the fingerprints that
//! key them) sees one set of exclusions, and a file git ignores never reaches an image or a key.
//! `.git` itself is always left out: git never tracks it.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use rayon::prelude::*;

/// A chain of `.gitignore` matchers from the context root down to one directory.
#[derive(Clone, Default)]
struct Chain(Option<Arc<(Gitignore, Chain)>>);

impl Chain {
    /// Whether git ignores `path`: the deepest matcher with an opinion decides.
    fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        let mut cur = &self.0;
        while let Some(node) = cur {
            match node.0.matched(path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => cur = &(node.1).0,
            }
        }
        false
    }
}

/// The paths under `root` that its `.gitignore` files ignore, relative to `root`, sorted; a
/// directory is listed once, never what is below it. `.git` is always listed when present.
pub fn ignored_paths(root: &Path) -> io::Result<Vec<String>> {
    let mut out = walk(root, root, "", &Chain::default())?;
    out.sort();
    Ok(out)
}

fn walk(root: &Path, dir: &Path, rel: &str, parent: &Chain) -> io::Result<Vec<String>> {
    let chain = match dir_matcher(root, dir)? {
        Some(gi) => Chain(Some(Arc::new((gi, parent.clone())))),
        None => parent.clone(),
    };
    let entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(|e| with_path(e, dir))?
        .collect::<Result<_, _>>()
        .map_err(|e| with_path(e, dir))?;
    let per_entry = |e: &fs::DirEntry| -> io::Result<Vec<String>> {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        // A symlink to a directory is not followed: git tracks the link itself.
        let is_dir = e.file_type().map_err(|e| with_path(e, dir))?.is_dir();
        let path = e.path();
        if (is_dir && name == ".git") || chain.ignored(&path, is_dir) {
            return Ok(vec![child_rel]);
        }
        if is_dir {
            walk(root, &path, &child_rel, &chain)
        } else {
            Ok(Vec::new())
        }
    };
    let lists: Vec<Vec<String>> = entries
        .par_iter()
        .map(per_entry)
        .collect::<Result<_, _>>()?;
    Ok(lists.into_iter().flatten().collect())
}

/// The matcher of `dir/.gitignore`, if there is one; an invalid line is an error naming it.
fn dir_matcher(root: &Path, dir: &Path) -> io::Result<Option<Gitignore>> {
    let file = dir.join(".gitignore");
    match fs::symlink_metadata(&file) {
        Ok(md) if md.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_path(e, &file)),
    }
    let mut b = GitignoreBuilder::new(dir);
    let shown = file
        .strip_prefix(root)
        .unwrap_or(&file)
        .display()
        .to_string();
    if let Some(e) = b.add(&file) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{shown}: {e}"),
        ));
    }
    b.build()
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{shown}: {e}")))
}

fn with_path(e: io::Error, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// `rel` as a Docker exclude pattern matching exactly that path: every character that could be
/// read as pattern syntax (`*?[]\!`, spaces a line would lose to trimming, …) is escaped.
pub fn literal_pattern(rel: &str) -> String {
    let mut out = String::with_capacity(rel.len() + 1);
    // Anchored at the context root, as the walk found it.
    out.push('/');
    for c in rel.chars() {
        if c.is_whitespace() {
            // A class, not `\ `: the pattern list trims its lines' ends.
            out.push('[');
            out.push(c);
            out.push(']');
            continue;
        }
        if !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::PatternMatcher;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, body) in files {
            let path = d.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        d
    }

    #[test]
    fn git_rules_nested_files_and_reinclusion() {
        let d = tree(&[
            (".gitignore", "*.log\n/build/\ntmp\n!keep.log\n"),
            ("a.log", ""),
            ("keep.log", ""),
            ("src/x.rs", ""),
            ("src/debug.log", ""),
            ("src/.gitignore", "generated.rs\n!important.log\n"),
            ("src/generated.rs", ""),
            ("src/important.log", ""),
            ("build/out.o", ""),
            (
                "sub/build",
                "a file named build is not the /build/ directory",
            ),
            ("sub/tmp/x", ""),
            ("deep/a/b/tmp", ""),
            (".git/HEAD", ""),
        ]);
        let got = ignored_paths(d.path()).unwrap();
        assert_eq!(
            got,
            [
                ".git",
                "a.log",
                "build",
                "deep/a/b/tmp",
                "src/debug.log",
                "src/generated.rs",
                "sub/tmp",
            ]
        );
    }

    #[test]
    fn no_gitignore_ignores_only_dot_git() {
        let d = tree(&[("a", ""), ("b/c", "")]);
        assert!(ignored_paths(d.path()).unwrap().is_empty());
        fs::create_dir(d.path().join(".git")).unwrap();
        assert_eq!(ignored_paths(d.path()).unwrap(), [".git"]);
    }

    #[test]
    fn literal_patterns_match_exactly_their_path() {
        let names = [
            "a*b",
            "[x]",
            "!bang",
            " sp ",
            "back\\slash",
            "ünï",
            "d/e?.f",
        ];
        let pats: Vec<String> = names.iter().map(|n| literal_pattern(n)).collect();
        let m = PatternMatcher::new(&pats).unwrap();
        for n in names {
            assert!(m.matches(n), "{n} should match");
        }
        for other in ["aXb", "x", "bang", "sp", "d/eX.f", "zzz"] {
            assert!(!m.matches(other), "{other} should not match");
        }
        assert!(m.matches("[x]/below"), "a directory's contents go with it");
        assert!(!m.has_exclusions());
    }
}
