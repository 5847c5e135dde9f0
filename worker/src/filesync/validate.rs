//! What a receiver checks of a listing before it touches the disk, as fsutil's `Validator` and
//! `Hardlinks` do: clean relative paths, strictly increasing [`compare_path`] order, every
//! parent sent (as a directory) before its children, valid modes and sizes, hard links only to
//! regular files sent earlier.
//!
//! Together these make the listing a pre-order walk of a tree whose inner nodes are all
//! directories, which is what lets the receiver write it with one open directory per level and
//! never resolve a path through anything it did not create as a directory itself.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::filesync::FilesyncError;
use crate::filesync::Stat;
use crate::filesync::mode::{FileKind, kind_of};

/// fsutil's path order: bytewise, except that `/` sorts before every other byte, so that a
/// directory's entries (`a/x`) come right after it and before its siblings (`a.txt`, `a0`).
pub fn compare_path(a: &str, b: &str) -> Ordering {
    let key = |c: u8| if c == b'/' { 0u16 } else { u16::from(c) + 1 };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// One open directory of the listing: its path and the last name seen in it.
struct Level {
    dir: String,
    last: Option<String>,
}

/// A STAT that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// Its id (index in the STAT sequence).
    pub id: u32,
    /// Its kind.
    pub kind: FileKind,
    /// How many open directories this entry closes (deepest first) before it goes into the
    /// directory left open: its parent.
    pub closed: usize,
    /// Whether it is a hard link (a regular file with `linkname`).
    pub hard_link: bool,
}

/// Checks a listing STAT by STAT.
pub(crate) struct Validator {
    /// The root (`""`) and the directories the next entry may still go into, outermost first.
    levels: Vec<Level>,
    /// Regular files seen so far: what a hard link may point to.
    linkable: HashSet<String>,
    next_id: u32,
}

impl Validator {
    pub(crate) fn new() -> Self {
        Validator {
            levels: vec![Level {
                dir: String::new(),
                last: None,
            }],
            linkable: HashSet::new(),
            next_id: 0,
        }
    }

    /// Checks the next STAT of the listing.
    pub(crate) fn check(&mut self, stat: &Stat) -> Result<Checked, FilesyncError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let path = &stat.path;
        let invalid = |reason| FilesyncError::InvalidPath {
            id,
            path: path.clone(),
            reason,
        };
        let bad_stat = |field| FilesyncError::InvalidStat {
            id,
            path: path.clone(),
            field,
        };
        if path.is_empty() {
            return Err(invalid("empty"));
        }
        if path.starts_with('/') {
            return Err(invalid("absolute path"));
        }
        if path.contains('\0') {
            return Err(invalid("NUL byte"));
        }
        for component in path.split('/') {
            match component {
                "" | "." => return Err(invalid("unclean path")),
                ".." => return Err(invalid("escapes the destination")),
                _ => {}
            }
        }
        let kind = kind_of(stat.mode).ok_or_else(|| bad_stat("mode"))?;
        if stat.size < 0 {
            return Err(bad_stat("size"));
        }
        let hard_link = kind == FileKind::Regular && !stat.linkname.is_empty();
        if kind == FileKind::Symlink && (stat.linkname.is_empty() || stat.linkname.contains('\0')) {
            return Err(bad_stat("symlink target"));
        }

        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let mut closed = 0;
        while self.levels.len() > 1 && self.levels.last().is_some_and(|l| l.dir != dir) {
            self.levels.pop();
            closed += 1;
        }
        let out_of_order = || FilesyncError::OutOfOrder {
            id,
            path: path.clone(),
        };
        let level = self.levels.last_mut().ok_or_else(out_of_order)?;
        // Names have no `/`, so bytewise order is compare_path order here.
        if level.dir != dir || level.last.as_deref().is_some_and(|last| last >= name) {
            return Err(out_of_order());
        }
        level.last = Some(name.to_string());

        if hard_link {
            if !self.linkable.contains(&stat.linkname) {
                return Err(FilesyncError::HardLinkTarget {
                    id,
                    path: path.clone(),
                    target: stat.linkname.clone(),
                });
            }
        } else if kind == FileKind::Regular {
            self.linkable.insert(path.clone());
        }
        if kind == FileKind::Dir {
            self.levels.push(Level {
                dir: path.clone(),
                last: None,
            });
        }
        Ok(Checked {
            id,
            kind,
            closed,
            hard_link,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesync::mode::{MODE_DIR, MODE_SYMLINK};

    fn st(path: &str, mode: u32) -> Stat {
        Stat {
            path: path.into(),
            mode,
            ..Stat::default()
        }
    }

    fn dir(path: &str) -> Stat {
        st(path, MODE_DIR | 0o755)
    }

    fn file(path: &str) -> Stat {
        st(path, 0o644)
    }

    fn link(path: &str, target: &str) -> Stat {
        Stat {
            linkname: target.into(),
            ..file(path)
        }
    }

    /// Runs a listing and returns the index of the first rejected stat.
    fn first_error(listing: &[Stat]) -> Option<usize> {
        let mut v = Validator::new();
        listing.iter().position(|s| v.check(s).is_err())
    }

    #[test]
    fn slash_sorts_lowest() {
        assert_eq!(compare_path("a/x", "a.txt"), Ordering::Less);
        assert_eq!(compare_path("a", "a/x"), Ordering::Less);
        assert_eq!(compare_path("a/x", "a0"), Ordering::Less);
        assert_eq!(compare_path("a/z", "a/z"), Ordering::Equal);
        assert_eq!(compare_path("b", "a/z"), Ordering::Greater);
        // Bytewise, not by char: 'Z' < 'a', and UTF-8 bytes sort high.
        assert_eq!(compare_path("Z", "a"), Ordering::Less);
        assert_eq!(compare_path("é", "z"), Ordering::Greater);
    }

    #[test]
    fn a_walk_in_order_passes_and_reports_closed_dirs() {
        let listing = [
            dir("a"),
            dir("a/b"),
            file("a/b/f"),
            file("a/c"),
            file("a.txt"),
            dir("b"),
        ];
        let mut v = Validator::new();
        let closed: Vec<usize> = listing.iter().map(|s| v.check(s).unwrap().closed).collect();
        assert_eq!(closed, [0, 0, 0, 1, 1, 0]);
    }

    #[test]
    fn bad_paths_are_rejected() {
        for p in [
            "",
            "/abs",
            "../x",
            "a/../../x",
            "..",
            "a/./b",
            "./a",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert_eq!(first_error(&[file(p)]), Some(0), "{p:?}");
        }
        assert_eq!(first_error(&[dir("a"), file("a/..")]), Some(1));
    }

    #[test]
    fn order_and_parents_are_enforced() {
        // Out of order, repeated, child before parent, parent missing.
        assert_eq!(first_error(&[file("b"), file("a")]), Some(1));
        assert_eq!(first_error(&[file("a"), file("a")]), Some(1));
        assert_eq!(first_error(&[file("a/b"), dir("a")]), Some(0));
        assert_eq!(first_error(&[dir("a"), file("b/c")]), Some(1));
        // `a.txt` sorts after `a/…`: a child of `a` after it is out of order.
        assert_eq!(
            first_error(&[dir("a"), file("a.txt"), file("a/x")]),
            Some(2)
        );
        // Going back into a closed directory.
        assert_eq!(first_error(&[dir("a"), dir("b"), file("a/x")]), Some(2));
    }

    #[test]
    fn children_only_under_directories() {
        let sym = Stat {
            linkname: "/etc".into(),
            ..st("a", MODE_SYMLINK | 0o777)
        };
        assert_eq!(first_error(&[sym, file("a/passwd")]), Some(1));
        assert_eq!(first_error(&[file("a"), file("a/b")]), Some(1));
    }

    #[test]
    fn hard_links_need_a_regular_file_sent_before() {
        assert_eq!(first_error(&[file("a"), link("b", "a")]), None);
        assert_eq!(first_error(&[link("a", "b"), file("b")]), Some(0));
        assert_eq!(first_error(&[dir("d"), link("e", "d")]), Some(1));
        assert_eq!(
            first_error(&[file("a"), link("b", "a"), link("c", "b")]),
            Some(2)
        );
        assert_eq!(first_error(&[file("a"), link("b", "../a")]), Some(1));
    }

    #[test]
    fn modes_sizes_and_symlinks_are_checked() {
        assert_eq!(first_error(&[st("a", MODE_DIR | MODE_SYMLINK)]), Some(0));
        let negative = Stat {
            size: -1,
            ..file("a")
        };
        assert_eq!(first_error(&[negative]), Some(0));
        assert_eq!(first_error(&[st("l", MODE_SYMLINK)]), Some(0));
    }

    #[test]
    fn ids_count_every_entry() {
        let mut v = Validator::new();
        let ids: Vec<u32> = [dir("a"), file("a/f"), dir("b")]
            .iter()
            .map(|s| v.check(s).unwrap().id)
            .collect();
        assert_eq!(ids, [0, 1, 2]);
    }
}
