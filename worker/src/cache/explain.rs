//! Why a vertex was rebuilt: the difference between the key components of its previous result
//! and of this build, in words.

use std::collections::{BTreeMap, BTreeSet};

/// Reasons, most specific first, why `new` differs from `old`. Empty when they are equal.
pub fn explain(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut files = Vec::new();
    let mut env = Vec::new();
    let mut other = Vec::new();
    let mut inputs = Vec::new();
    let mut generic = Vec::new();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        if o == n {
            continue;
        }
        if let Some(path) = name.strip_prefix("file ") {
            files.push(match (o, n) {
                (None, Some(_)) => format!("file `{path}` was added"),
                (Some(_), None) => format!("file `{path}` was removed"),
                _ => format!("file `{path}` changed"),
            });
        } else if let Some(var) = name.strip_prefix("env ") {
            env.push(match (o, n) {
                (None, Some(v)) => format!("{var} was set to `{v}`"),
                (Some(v), None) => format!("{var} (was `{v}`) is no longer set"),
                (Some(a), Some(b)) => format!("{var} changed from `{a}` to `{b}`"),
                (None, None) => continue,
            });
        } else if name == "source" {
            let moved = n
                .and_then(|s| s.split_once('@'))
                .map(|(_, d)| d.to_string());
            other.push(match moved {
                Some(d) => format!("the base image moved to {d}"),
                None => format!(
                    "the source changed to `{}`",
                    n.map(String::as_str).unwrap_or("")
                ),
            });
        } else if name == "args" {
            other.push(format!(
                "the command changed from {} to {}",
                o.map(String::as_str).unwrap_or("(none)"),
                n.map(String::as_str).unwrap_or("(none)")
            ));
        } else if name.starts_with("copy ") || name == "cwd" || name == "user" || name == "platform"
        {
            other.push(format!(
                "{name} changed from `{}` to `{}`",
                o.map(String::as_str).unwrap_or(""),
                n.map(String::as_str).unwrap_or("")
            ));
        } else if let Some(i) = name.strip_prefix("input ") {
            inputs.push(format!(
                "input {i} changed (what it builds on has different files)"
            ));
        } else if name.starts_with("files of copy ") {
            generic.push("files read by the copy changed".to_string());
        } else if let Some(dest) = name.strip_prefix("files of mount ") {
            generic.push(format!("files of the context mounted at `{dest}` changed"));
        } else if name == "op" {
            generic.push("the instruction's options changed".to_string());
        } else {
            generic.push(format!("{name} changed"));
        }
    }
    let mut out = Vec::new();
    out.extend(other);
    out.extend(env);
    out.extend(files);
    if out.is_empty() {
        out.extend(inputs);
    }
    if out.is_empty() {
        out.extend(generic);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_the_changed_file() {
        let old = m(&[
            ("op", "1"),
            ("file src/a.rs", "x"),
            ("files of copy 0", "h1"),
        ]);
        let new = m(&[
            ("op", "1"),
            ("file src/a.rs", "y"),
            ("file src/b.rs", "z"),
            ("files of copy 0", "h2"),
        ]);
        assert_eq!(
            explain(&old, &new),
            ["file `src/a.rs` changed", "file `src/b.rs` was added"]
        );
    }

    #[test]
    fn names_the_changed_variable_and_base() {
        let old = m(&[("op", "1"), ("env VERSION", "1")]);
        let new = m(&[("op", "2"), ("env VERSION", "2")]);
        assert_eq!(explain(&old, &new), ["VERSION changed from `1` to `2`"]);
        let old = m(&[("op", "1"), ("source", "docker-image://r/x@sha256:aa")]);
        let new = m(&[("op", "2"), ("source", "docker-image://r/x@sha256:bb")]);
        assert_eq!(explain(&old, &new), ["the base image moved to sha256:bb"]);
    }

    #[test]
    fn parents_only_when_nothing_more_specific() {
        let old = m(&[("op", "1"), ("input 0", "a")]);
        let new = m(&[("op", "1"), ("input 0", "b")]);
        assert_eq!(
            explain(&old, &new),
            ["input 0 changed (what it builds on has different files)"]
        );
        assert!(explain(&old, &old).is_empty());
    }

    // Verifies: an exec whose context mount changed is explained by the file, or, when the
    // per-file components were capped, by the mount.
    #[test]
    fn names_the_mounted_file_or_the_mount() {
        let old = m(&[("files of mount /src", "h1"), ("file src/main.c", "a")]);
        let new = m(&[("files of mount /src", "h2"), ("file src/main.c", "b")]);
        assert_eq!(explain(&old, &new), ["file `src/main.c` changed"]);
        let old = m(&[("files of mount /src", "h1")]);
        let new = m(&[("files of mount /src", "h2")]);
        assert_eq!(
            explain(&old, &new),
            ["files of the context mounted at `/src` changed"]
        );
    }
}
