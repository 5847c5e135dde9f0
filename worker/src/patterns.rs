//! Docker's path patterns (`.dockerignore`, `local.excludepatterns`, copy include/exclude).
//!
//! These follow moby/patternmatcher, not gitignore: patterns are path-cleaned and anchored at the
//! context root (a leading `/` is dropped); `*` and `?` never cross `/`; `**` matches any number
//! of directories, including none; `[…]` classes with `^`/`!` negation; `\` escapes; a pattern
//! that matches a parent directory matches everything below it; a pattern starting with `!`
//! re-includes; the last matching pattern wins.

use std::collections::HashSet;

use regex::bytes::Regex;

/// One compiled pattern, or a run of consecutive literal ones.
#[derive(Debug, Clone)]
struct Pattern {
    exclusion: bool,
    kind: Kind,
    /// The cleaned pattern texts this entry stands for, in order.
    texts: Vec<String>,
}

#[derive(Debug, Clone)]
enum Kind {
    Re(Regex),
    /// Paths without any pattern syntax (as `--use-gitignore` adds by the thousand): one hash
    /// lookup per path instead of one regex each.
    Literals(HashSet<String>),
}

impl Pattern {
    fn is_match(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Re(re) => re.is_match(path.as_bytes()),
            Kind::Literals(set) => set.contains(path),
        }
    }
}

/// The path a pattern names when it has no unescaped `*`, `?` or `[`: its text unescaped.
fn literal_of(pattern: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | '[' => return None,
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    Some(out)
}

/// Errors compiling patterns.
#[derive(Debug, thiserror::Error)]
#[error("invalid pattern `{pattern}`: {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A list of Docker patterns.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
}

impl PatternMatcher {
    /// Compiles `patterns` (already split into lines; comments and blanks are skipped).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut out: Vec<Pattern> = Vec::new();
        for p in patterns {
            let raw = p.as_ref().trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let (exclusion, body) = match raw.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, raw),
            };
            let cleaned = clean_path(body);
            if cleaned.is_empty() || cleaned == "." {
                // "." or "/" would match the root itself; Docker ignores it for excluding.
                continue;
            }
            let literal = literal_of(&cleaned);
            let text = if exclusion {
                format!("!{cleaned}")
            } else {
                cleaned.clone()
            };
            if let (Some(lit), Some(last)) = (&literal, out.last_mut())
                && last.exclusion == exclusion
                && let Kind::Literals(set) = &mut last.kind
            {
                set.insert(lit.clone());
                last.texts.push(text);
                continue;
            }
            let kind = match literal {
                Some(lit) => Kind::Literals(HashSet::from([lit])),
                None => Kind::Re(compile(&cleaned).map_err(|reason| PatternError {
                    pattern: raw.to_string(),
                    reason,
                })?),
            };
            out.push(Pattern {
                exclusion,
                kind,
                texts: vec![text],
            });
        }
        Ok(PatternMatcher { patterns: out })
    }

    /// Whether no pattern is set.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern re-includes (`!`), in which case an excluded directory must still be
    /// walked because something below it may come back.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (relative, `/`-separated, cleaned) matches, given the patterns in order.
    /// A pattern that matches one of the path's parent directories matches the path too.
    pub fn matches(&self, path: &str) -> bool {
        let mut matched = false;
        let parents: Vec<&str> = parent_paths(path);
        for p in &self.patterns {
            // Only a pattern that could flip the current answer needs testing.
            if p.exclusion != matched {
                continue;
            }
            let hit = p.is_match(path) || parents.iter().any(|d| p.is_match(d));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// The cleaned pattern texts (`!` kept), which compile to the same matcher again.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.patterns
            .iter()
            .flat_map(|p| p.texts.iter().map(String::as_str))
    }
}

/// `a/b/c` → `["a", "a/b"]`.
fn parent_paths(path: &str) -> Vec<&str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).collect()
}

/// Lexically cleans a pattern path as Go's `filepath.Clean` does, minus a leading `/`.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(&s) if s != "..") {
                    parts.pop();
                } else if !p.starts_with('/') {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// The regex of `pattern`, over the path's UTF-8 bytes. `*` and `**` become byte classes:
/// no byte of a multi-byte character is `/` or a newline, so they match what the character
/// classes would, and a byte class compiles in microseconds where a Unicode `[^/]` takes
/// milliseconds (which every build paid for every pattern). `?` stays one character.
fn compile(pattern: &str) -> Result<Regex, String> {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '*' => {
                if chars.get(i + 1) == Some(&'*') {
                    i += 1;
                    // Swallow a following '/' so "**/x" matches "x" too.
                    if chars.get(i + 1) == Some(&'/') {
                        i += 1;
                        re.push_str("(?-u:.*/)?");
                    } else {
                        re.push_str("(?-u:.*)");
                    }
                } else {
                    re.push_str("(?-u:[^/]*)");
                }
            }
            '?' => re.push_str("[^/]"),
            '[' => {
                let mut j = i + 1;
                let mut class = String::from("[");
                if matches!(chars.get(j), Some('^') | Some('!')) {
                    class.push('^');
                    j += 1;
                }
                let mut closed = false;
                while j < chars.len() {
                    match chars[j] {
                        ']' => {
                            closed = true;
                            break;
                        }
                        '\\' if j + 1 < chars.len() => {
                            class.push_str(&regex::escape(&chars[j + 1].to_string()));
                            j += 2;
                            continue;
                        }
                        '/' => return Err("`/` inside a character class".into()),
                        ch => {
                            if ch == '[' || ch == '&' || ch == '~' {
                                class.push('\\');
                            }
                            class.push(ch);
                        }
                    }
                    j += 1;
                }
                if !closed {
                    return Err("unterminated character class".into());
                }
                class.push(']');
                re.push_str(&class);
                i = j;
            }
            '\\' => {
                let Some(next) = chars.get(i + 1) else {
                    return Err("trailing backslash".into());
                };
                re.push_str(&regex::escape(&next.to_string()));
                i += 1;
            }
            other => re.push_str(&regex::escape(&other.to_string())),
        }
        i += 1;
    }
    re.push('$');
    Regex::new(&re).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pats: &[&str], path: &str) -> bool {
        PatternMatcher::new(pats).unwrap().matches(path)
    }

    #[test]
    fn star_does_not_cross_slash() {
        assert!(m(&["*.txt"], "a.txt"));
        assert!(!m(&["*.txt"], "dir/a.txt"));
        assert!(m(&["*/a.txt"], "dir/a.txt"));
        assert!(m(&["di?/a.txt"], "dir/a.txt"));
    }

    #[test]
    fn wildcards_match_characters_beyond_ascii() {
        assert!(m(&["*.txt"], "héllo.txt"));
        assert!(m(&["?.txt"], "é.txt"));
        assert!(!m(&["?.txt"], "éé.txt"));
        assert!(m(&["**/ü/*"], "a/b/ü/ö"));
        assert!(m(&["[é]x"], "éx"));
        assert!(!m(&["é*"], "a/é"), "anchored at the root");
    }

    #[test]
    fn double_star() {
        assert!(m(&["**/*.log"], "a.log"));
        assert!(m(&["**/*.log"], "x/y/a.log"));
        assert!(m(&["x/**"], "x/y/z"));
        assert!(m(&["x/**/z"], "x/z"));
        assert!(m(&["x/**/z"], "x/a/b/z"));
        assert!(!m(&["x/**/z"], "y/z"));
    }

    #[test]
    fn parent_dir_match_excludes_children() {
        assert!(m(&["node_modules"], "node_modules/a/b.js"));
        assert!(!m(&["node_modules"], "src/node_modules/a.js"));
    }

    #[test]
    fn leading_slash_and_cleaning() {
        assert!(m(&["/secret"], "secret"));
        assert!(m(&["./a/../b"], "b"));
        assert_eq!(clean_path("/a//b/./c/"), "a/b/c");
    }

    #[test]
    fn exclusions_and_last_match_wins() {
        assert!(!m(&["*.md", "!README.md"], "README.md"));
        assert!(m(&["*.md", "!README.md"], "CHANGES.md"));
        assert!(m(&["!README.md", "*.md"], "README.md"));
        // Re-inclusion inside an excluded directory.
        assert!(!m(&["docs", "!docs/keep.txt"], "docs/keep.txt"));
        assert!(m(&["docs", "!docs/keep.txt"], "docs/other.txt"));
        assert!(PatternMatcher::new(&["a", "!b"]).unwrap().has_exclusions());
    }

    #[test]
    fn literal_runs_keep_pattern_order() {
        let pats = ["a", "b/c", "!b/c/keep", "d", "*.tmp", "e"];
        let m = PatternMatcher::new(&pats).unwrap();
        assert!(m.matches("a") && m.matches("b/c/x") && m.matches("d/y") && m.matches("e"));
        assert!(!m.matches("b/c/keep"), "a later `!` still re-includes");
        assert!(m.matches("x.tmp") && !m.matches("b"));
        assert_eq!(m.texts().collect::<Vec<_>>(), pats);
        // A literal re-excluded after a `!` wins again.
        assert!(PatternMatcher::new(&["x", "!x", "x"]).unwrap().matches("x"));
    }

    #[test]
    fn comments_blank_and_classes() {
        assert!(!m(&["# *.txt", ""], "a.txt"));
        assert!(m(&["[ab].txt"], "a.txt"));
        assert!(!m(&["[^ab].txt"], "a.txt"));
        assert!(m(&["[!ab].txt"], "c.txt"));
        assert!(m(&["a\\*b"], "a*b"));
        assert!(!m(&["a\\*b"], "axb"));
        assert!(PatternMatcher::new(&["[abc"]).is_err());
    }
}
