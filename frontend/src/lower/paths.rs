//! Slash-separated path helpers with Go's `path` semantics.

/// Go's `path.Clean`.
pub(crate) fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Go's `path.Join`.
pub(crate) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => String::new(),
        (true, false) => clean(b),
        (false, true) => clean(a),
        (false, false) => clean(&format!("{a}/{b}")),
    }
}

/// BuildKit's `system.NormalizePath` for Unix paths: `new` resolved against `parent`, cleaned;
/// with `keep_slash` a trailing `/` or `/.` survives (it means "into this directory").
pub(crate) fn normalize(parent: &str, new: &str, keep_slash: bool) -> String {
    let parent = if parent.is_empty() { "/" } else { parent };
    let mut p = if new.starts_with('/') {
        clean(new)
    } else {
        let parent = if parent.starts_with('/') {
            parent.to_owned()
        } else {
            join("/", parent)
        };
        join(&parent, new)
    };
    if keep_slash {
        if new.ends_with('/') && !p.ends_with('/') {
            p.push('/');
        } else if new.ends_with("/.") {
            if p != "/" {
                p.push('/');
            }
            p.push('.');
        }
    }
    p
}

/// A COPY destination relative to the working directory (`.` and `` mean the directory).
pub(crate) fn relative_to_workdir(cwd: &str, dest: &str) -> String {
    if dest.starts_with('/') {
        return normalize("/", dest, true);
    }
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    normalize(cwd, dest, true)
}

/// `WORKDIR` resolution: relative paths are joined to the current working directory.
pub(crate) fn normalize_workdir(current: &str, requested: &str) -> String {
    if requested.starts_with('/') {
        clean(requested)
    } else {
        let cur = if current.is_empty() { "/" } else { current };
        clean(&join(&join("/", cur), requested))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_semantics() {
        assert_eq!(clean("/a/../b/./c/"), "/b/c");
        assert_eq!(clean("a/../.."), "..");
        assert_eq!(join("/", "x/y"), "/x/y");
        assert_eq!(normalize("/app", "x/", true), "/app/x/");
        assert_eq!(normalize("/", "/a/.", true), "/a/.");
        assert_eq!(relative_to_workdir("/app", "."), "/app/");
        assert_eq!(relative_to_workdir("/app", "sub"), "/app/sub");
        assert_eq!(relative_to_workdir("/app", "/abs/"), "/abs/");
        assert_eq!(normalize_workdir("/app", "sub"), "/app/sub");
        assert_eq!(normalize_workdir("/app", "/x/../y"), "/y");
    }
}
