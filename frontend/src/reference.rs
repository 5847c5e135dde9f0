//! Docker image reference normalisation (`busybox` → `docker.io/library/busybox:latest`).

/// Why a reference is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format `{reference}`: {reason}")]
pub struct ReferenceError {
    /// The reference as given.
    pub reference: String,
    /// What is wrong.
    pub reason: String,
}

/// Normalizes an image reference as Docker does: adds the `docker.io` registry and the
/// `library/` namespace for official images, adds `:latest` when there is neither tag nor
/// digest, keeps a `host[:port]` registry and an `@sha256:…` digest.
pub fn normalize_image_ref(reference: &str) -> Result<String, ReferenceError> {
    let err = |reason: &str| ReferenceError {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    if reference.is_empty() {
        return Err(err("empty reference"));
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return Err(err("digest must be `algorithm:hex`"));
        };
        let hex_ok = hex.len() >= 32
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if algo.is_empty() || !hex_ok {
            return Err(err("invalid digest"));
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let valid = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(err("invalid tag"));
        }
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(err("repository name must be lowercase"));
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_alphanumeric())
            && c.chars()
                .last()
                .is_some_and(|ch| ch.is_ascii_alphanumeric())
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
    };
    if !path.split('/').all(component_ok) {
        return Err(err("invalid repository name"));
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    Ok(out)
}

/// Docker's short ("familiar") form of a normalized reference, minus a `:latest` tag: the name
/// BuildKit looks a named context up by (`dockerui.Client.NamedContext`), so `FROM alpine`,
/// `FROM alpine:latest` and `FROM docker.io/library/alpine` all find `context:alpine`.
pub(crate) fn familiar_name(normalized: &str) -> String {
    let short = match normalized.strip_prefix("docker.io/") {
        Some(rest) => match rest.strip_prefix("library/") {
            // `library/` is dropped only for one-component names (`library/a/b` stays).
            Some(official) if !official.contains('/') => official,
            _ => rest,
        },
        None => normalized,
    };
    short.strip_suffix(":latest").unwrap_or(short).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names() {
        let f = |s: &str| familiar_name(&normalize_image_ref(s).expect("valid"));
        assert_eq!(f("alpine"), "alpine");
        assert_eq!(f("docker.io/library/alpine:latest"), "alpine");
        assert_eq!(f("alpine:3.20"), "alpine:3.20");
        assert_eq!(f("user/app"), "user/app");
        assert_eq!(f("library/a/b"), "library/a/b");
        assert_eq!(f("127.0.0.1:5000/x:latest"), "127.0.0.1:5000/x");
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(f(&format!("alpine@{d}")), format!("alpine@{d}"));
    }

    #[test]
    fn normalizes() {
        let n = |s: &str| normalize_image_ref(s).expect("valid");
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            n("127.0.0.1:5000/library/busybox:latest"),
            "127.0.0.1:5000/library/busybox:latest"
        );
        assert_eq!(n("localhost/x"), "localhost/x:latest");
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            n(&format!("alpine@{d}")),
            format!("docker.io/library/alpine@{d}")
        );
        assert_eq!(
            n(&format!("alpine:3@{d}")),
            format!("docker.io/library/alpine:3@{d}")
        );
        assert!(normalize_image_ref("Busybox").is_err());
        assert!(normalize_image_ref("").is_err());
        assert!(normalize_image_ref("a:b:c").is_err());
    }
}
