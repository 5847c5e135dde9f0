//! Image references of the common shape, parsed without a regular expression.
//!
//! oci-spec parses a reference with one regular expression whose tag part is a Unicode word
//! class repeated up to 128 times; the first parse in a process compiles it, which costs some
//! 70 ms, as much as the rest of a cold build's start. [`parse_plain`] reads the references
//! builds actually use (`busybox`, `host:5000/team/app:1.2@sha256:…`) by hand and gives up on
//! anything else, which then goes to oci-spec: it accepts only what oci-spec accepts too, and
//! splits it the same way (Docker's normalisation: `docker.io`, `library/`, `latest`).

use oci_client::Reference;

/// The registry an unqualified name belongs to.
const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's old name, normalised to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Longest repository name.
const NAME_MAX: usize = 255;
/// Longest tag.
const TAG_MAX: usize = 128;

/// `reference` parsed, if it has the plain shape this reads; `None` for everything else
/// (including what is invalid), which the caller hands to oci-spec.
pub fn parse_plain(reference: &str) -> Option<Reference> {
    if !reference.is_ascii() {
        return None;
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:")?;
        let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if hex.len() != 64 || !hex.chars().all(lower_hex) {
            return None;
        }
    }
    let after_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[after_slash..].rfind(':') {
        Some(i) => (&rest[..after_slash + i], Some(&rest[after_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag
        && !is_tag(t)
    {
        return None;
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            if !is_domain(first) {
                return None;
            }
            (first, path)
        }
        _ => (DOCKER_HUB, name),
    };
    if path.is_empty() || !path.split('/').all(is_path_component) {
        return None;
    }
    let registry = if registry == DOCKER_HUB_LEGACY {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_owned()
    };
    if repository.len() > NAME_MAX {
        return None;
    }
    let (registry, tag, digest) = (
        registry.to_owned(),
        tag.map(str::to_owned),
        digest.map(str::to_owned),
    );
    Some(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (Some(t), None) => Reference::with_tag(registry, repository, t),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_owned()),
    })
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = t.chars();
    t.len() <= TAG_MAX
        && chars.next().is_some_and(word)
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// Host labels (`[A-Za-z0-9]`, inner `-`) joined by `.`, with an optional `:port`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (d, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0] as char) || !alnum(bytes[bytes.len() - 1] as char) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let ch = bytes[i] as char;
        if alnum(ch) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumeric runs.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i] as char) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|s| s == '-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verifies: every reference the hand parser takes, it splits exactly as oci-spec does (and
    // it takes nothing oci-spec refuses), over combinations of registries, paths, tags and
    // digests chosen to cross each rule's edge; and it does take the common shapes.
    #[test]
    fn agrees_with_oci_spec_wherever_it_answers() {
        let hex = "0123456789abcdef".repeat(4);
        let digests = [
            String::new(),
            format!("@sha256:{hex}"),
            format!("@sha256:{}", hex.to_uppercase()),
            format!("@sha256:{}", &hex[1..]),
            format!("@sha512:{hex}{hex}"),
            "@md5:abc".to_owned(),
        ];
        let registries = [
            "",
            "localhost/",
            "localhost:5000/",
            "127.0.0.1:5000/",
            "reg.example.com/",
            "index.docker.io/",
            "docker.io/",
            "Reg.Example.com/",
            "foo_bar.com/",
            "-bad.com/",
            "a-b.c:/",
            "host:port/",
            "Foo/",
        ];
        let paths = [
            "busybox",
            "library/busybox",
            "a/b/c",
            "a__b",
            "a___b",
            "a--b",
            "a.b",
            "a..b",
            "A",
            "a_",
            "_a",
            "",
            "a//b",
            "test.com",
        ];
        let tags: Vec<String> = [
            "", ":latest", ":1.0", ":V_1-x", ":.bad", ":-bad", ":", ":5000",
        ]
        .iter()
        .map(|t| (*t).to_owned())
        .chain([
            format!(":{}", "x".repeat(128)),
            format!(":{}", "x".repeat(129)),
        ])
        .collect();
        let mut answered = 0;
        for r in &registries {
            for p in &paths {
                for t in &tags {
                    for d in &digests {
                        let s = format!("{r}{p}{t}{d}");
                        let theirs = s.parse::<Reference>();
                        if let Some(ours) = parse_plain(&s) {
                            answered += 1;
                            assert_eq!(Some(&ours), theirs.as_ref().ok(), "`{s}`");
                        }
                    }
                }
            }
        }
        assert!(answered > 500, "{answered}");
        for common in [
            "busybox",
            "alpine:3.20",
            "127.0.0.1:5000/library/busybox:latest",
            &format!("127.0.0.1:5000/library/busybox:latest@sha256:{hex}"),
            &format!("ghcr.io/team/app@sha256:{hex}"),
        ] {
            let ours = parse_plain(common).unwrap_or_else(|| panic!("`{common}` not taken"));
            assert_eq!(Ok(ours), common.parse::<Reference>(), "`{common}`");
        }
    }
}
