//! Checks of `memobuild k8s job`'s flags against Kubernetes' rules (names, labels, quantities)
//! and of its context (a git URL the pod can fetch, with no secret in it), so that a wrong
//! flag is refused here, naming it, rather than by the API server or in the pod.

use anyhow::bail;

/// A `NAME:KEY` reference to a key of a Secret or ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyRef {
    pub name: String,
    pub key: String,
}

/// Parses `--FLAG NAME:KEY`: `NAME` a DNS-1123 subdomain, `KEY` a valid data key (it becomes a
/// file name).
pub(super) fn parse_key_ref(flag: &str, spec: &str) -> anyhow::Result<KeyRef> {
    let Some((name, key)) = spec.split_once(':') else {
        bail!("--{flag} `{spec}`: expected `NAME:KEY`");
    };
    if !is_dns1123_subdomain(name) {
        bail!(
            "--{flag} `{spec}`: `{name}` is not a valid object name (lowercase letters, digits, `-`, `.`)"
        );
    }
    if !is_data_key(key) {
        bail!("--{flag} `{spec}`: `{key}` is not a valid key (letters, digits, `-`, `_`, `.`)");
    }
    Ok(KeyRef {
        name: name.to_string(),
        key: key.to_string(),
    })
}

/// A DNS-1123 label: 1 to 63 lowercase letters, digits and `-`, starting and ending with a
/// letter or digit.
pub(super) fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_part(s)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` with no length bound.
pub(super) fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// A DNS-1123 subdomain (most object names): dot-separated labels, at most 253 in all.
pub(super) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_part)
}

/// A Secret or ConfigMap data key: letters, digits, `-`, `_`, `.`; not `.` or `..`.
pub(super) fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label value: empty, or up to 63 letters, digits, `-`, `_`, `.`, starting and ending with a
/// letter or digit.
pub(super) fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    s.is_empty()
        || (s.len() <= 63
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// A label key: `[PREFIX/]NAME`, `PREFIX` a DNS-1123 subdomain, `NAME` a non-empty label value.
pub(super) fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// A Kubernetes quantity: a decimal number, then an optional suffix (`m`, `k`, `M`, `G`, …,
/// `Ki`, `Mi`, `Gi`, …, or an exponent `e3`).
pub(super) fn is_quantity(s: &str) -> bool {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num_ok =
        !num.is_empty() && num.matches('.').count() <= 1 && num.bytes().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()));
    num_ok && suffix_ok
}

/// How the pod's git fetches a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// `http://` or `https://` (also `github.com/…`).
    Http,
    /// `ssh://` or scp-like `USER@HOST:PATH`.
    Ssh,
    /// `git://`: no authentication.
    Git,
}

/// A context the pod can fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CheckedContext {
    /// How.
    pub transport: Transport,
    /// What git fetches from (see [`crate::gitctx::GitContext::remote`]).
    pub remote: String,
}

/// The scheme and the user part (`USER[:PASSWORD]`, before the last `@` of the authority) of a
/// `SCHEME://…` URL that has one.
pub(super) fn url_userinfo(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some((scheme, userinfo))
}

/// Whether a user part holds a secret: a password (`USER:PASSWORD@`), or, over http(s), any user
/// part at all (GitHub and GitLab take a token as the user: `https://TOKEN@HOST/…`).
pub(super) fn is_secret_userinfo(scheme: &str, userinfo: &str) -> bool {
    userinfo.contains(':')
        || scheme.eq_ignore_ascii_case("http")
        || scheme.eq_ignore_ascii_case("https")
}

/// `SCHEME://HOST[:PORT]/` of a URL (its user part, if any, dropped).
pub(super) fn http_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}/")
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`, the port digits (possibly none).
pub(super) fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(parts) => parts,
            None => return false,
        },
        None => s.split_at(s.find(':').unwrap_or(s.len())),
    };
    !host.is_empty()
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|c| c.is_ascii_digit())))
}

/// Reads the context as `memobuild build` does ([`crate::gitctx::GitContext::parse`]) and
/// refuses what the pod cannot fetch: what the build would take for a local path, a URL without
/// a host, an scp-like `USER@HOST:PATH` git would not read as one. A URL with a password or
/// token in it is refused too: it would be written into the Job's args.
pub(super) fn check_git_context(ctx: &str) -> anyhow::Result<CheckedContext> {
    let shown = crate::gitctx::redact(ctx);
    if let Some((scheme, userinfo)) = url_userinfo(ctx)
        && is_secret_userinfo(scheme, userinfo)
        && ["http", "https", "ssh", "git"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        let instead = match scheme.to_ascii_lowercase().as_str() {
            "ssh" => "and a key as `--ssh-secret SECRET:KEY`",
            "git" => "(`git://` has no authentication)",
            _ => {
                "and the credentials as `--git-auth-secret SECRET:KEY`, a Secret key holding an HTTP header such as `Authorization: Bearer TOKEN`"
            }
        };
        bail!(
            "context `{shown}` has credentials in its URL, which would be written into the Job for anyone who can read it: give the URL without them, {instead}"
        );
    }
    let refuse = || {
        anyhow::anyhow!(
            "context `{shown}` is not a git URL: a Job's pod cannot see this machine's disk; give the repository as `https://HOST/REPO.git#REF:DIR`, `github.com/OWNER/REPO`, `ssh://…`, `git://…` or `git@HOST:REPO.git#REF`"
        )
    };
    if ctx.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse());
    }
    let remote = crate::gitctx::GitContext::parse(ctx)
        .ok_or_else(refuse)?
        .remote;
    let scheme = [
        ("http://", Transport::Http),
        ("https://", Transport::Http),
        ("git://", Transport::Git),
        ("ssh://", Transport::Ssh),
    ]
    .into_iter()
    .find_map(|(prefix, t)| remote.strip_prefix(prefix).map(|rest| (t, rest)));
    let transport = match scheme {
        Some((transport, rest)) => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            if !is_host_port(host) {
                return Err(refuse());
            }
            transport
        }
        None => {
            // scp-like, as git reads it: `USER@HOST:PATH`, no `/` before the colon.
            let (user_host, path) = remote.split_once(':').ok_or_else(refuse)?;
            let (user, host) = user_host.split_once('@').ok_or_else(refuse)?;
            if user.is_empty() || host.is_empty() || user_host.contains('/') || path.is_empty() {
                return Err(refuse());
            }
            Transport::Ssh
        }
    };
    Ok(CheckedContext { transport, remote })
}
