//! ADD of a git repository: which sources are git URLs, and the `git://` source op for one,
//! as BuildKit's `dockerfile2llb` (with `gitutil.ParseGitRef`) and `llb.Git` make them.
//!
//! A source is a git URL when it is scp-like (`git@host:path`), `ssh://`, `git://`, or
//! `http(s)://` whose path ends in `.git`; `github.com/…` without a scheme and relative paths
//! stay local files. `#ref:subdir` picks a branch, tag or commit and a directory. The op's
//! identifier is `git://<host>/<path>[#ref[:subdir]]`, so https and ssh URLs of one repository
//! share it; the URL itself travels in `git.fullurl`.

use std::collections::BTreeMap;

use memobuild_proto::{attr, caps, pb};

use crate::instructions::Instruction;
use crate::lower::dispatch::Lowerer;
use crate::lower::graph::Out;
use crate::lower::paths::clean;
use crate::lower::source::metadata;

/// A git source of ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitRef {
    /// The repository URL (without the fragment).
    pub(crate) remote: String,
    /// Branch, tag or commit; empty for the remote's HEAD.
    pub(crate) reference: String,
    /// Directory inside the repository; empty for all of it.
    pub(crate) subdir: String,
}

/// How the URL reaches the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Http,
    Git,
    Ssh,
}

/// `user@host:path`, the scp-like ssh form: (host, path).
fn scp_like(s: &str) -> Option<(&str, &str)> {
    let (user, rest) = s.split_once('@')?;
    let (host, path) = rest.split_once(':')?;
    let user_ok = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (user_ok && host_ok).then_some((host, path))
}

/// (transport, host, path) of a URL git understands; `None` for anything else.
fn split_url(url: &str) -> Option<(Transport, &str, &str)> {
    for (scheme, t) in [
        ("https://", Transport::Http),
        ("http://", Transport::Http),
        ("git://", Transport::Git),
        ("ssh://", Transport::Ssh),
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let path = path.split('?').next().unwrap_or_default();
            return Some((t, host, path));
        }
    }
    scp_like(url).map(|(h, p)| (Transport::Ssh, h, p))
}

/// The git source an ADD source names, or `None` when it is not a git URL.
pub(crate) fn parse_git_ref(src: &str) -> Option<GitRef> {
    if src.starts_with("./") || src.starts_with("../") || src.starts_with("github.com/") {
        return None;
    }
    let (remote, fragment) = src.split_once('#').unwrap_or((src, ""));
    let (t, _, path) = split_url(remote)?;
    if t == Transport::Http && !path.ends_with(".git") {
        return None;
    }
    if remote.is_empty() {
        return None;
    }
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    Some(GitRef {
        remote: remote.to_owned(),
        reference: reference.to_owned(),
        subdir: subdir.to_owned(),
    })
}

/// The `git://` source op for `g` and the caps it needs.
pub(crate) fn git_op(g: &GitRef, keep_git_dir: bool) -> (pb::Op, Vec<&'static str>) {
    let subdir = clean(&format!("/{}", g.subdir))
        .trim_start_matches('/')
        .to_owned();
    let (transport, mut id) = match split_url(&g.remote) {
        Some((t, host, path)) => (Some(t), format!("{host}{}", clean(&format!("/{path}")))),
        None => (None, g.remote.clone()),
    };
    if !g.reference.is_empty() || !subdir.is_empty() {
        id.push('#');
        id.push_str(&g.reference);
        if !subdir.is_empty() {
            id.push(':');
            id.push_str(&subdir);
        }
    }
    let mut attrs = BTreeMap::new();
    let mut cap_list = Vec::new();
    if keep_git_dir {
        attrs.insert(attr::ATTR_GIT_KEEPGITDIR.to_owned(), "true".to_owned());
        cap_list.push(caps::CAP_SOURCE_GIT_KEEPGITDIR);
    }
    attrs.insert(attr::ATTR_GIT_FULLURL.to_owned(), g.remote.clone());
    cap_list.push(caps::CAP_SOURCE_GIT_FULLURL);
    attrs.insert(
        attr::ATTR_GIT_AUTHTOKENSECRET.to_owned(),
        "GIT_AUTH_TOKEN".to_owned(),
    );
    attrs.insert(
        attr::ATTR_GIT_AUTHHEADERSECRET.to_owned(),
        "GIT_AUTH_HEADER".to_owned(),
    );
    if transport == Some(Transport::Ssh) {
        // BuildKit's client also scans the host's keys into `git.knownsshhosts` (best effort);
        // the frontend does no I/O, so the user's own ssh known_hosts applies in the worker.
        cap_list.push(caps::CAP_SOURCE_GIT_KNOWNSSHHOSTS);
        attrs.insert(attr::ATTR_GIT_MOUNTSSHSOCK.to_owned(), "default".to_owned());
        cap_list.push(caps::CAP_SOURCE_GIT_MOUNTSSHSOCK);
    }
    cap_list.push(caps::CAP_SOURCE_GIT);
    let op = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: format!("{}{id}", attr::SCHEME_GIT),
            attrs,
        })),
        platform: None,
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    };
    cap_list.sort_unstable();
    (op, cap_list)
}

impl Lowerer<'_> {
    /// The source op of ADD's git source `g`, named `name` in progress.
    pub(crate) fn git_source(
        &mut self,
        ins: &Instruction,
        g: &GitRef,
        keep_git_dir: bool,
        name: &str,
    ) -> Out {
        let (op, cap_list) = git_op(g, keep_git_dir);
        let md = metadata(name, Some(""), &cap_list);
        let node = self.graph.add(op, Vec::new(), md, Some(ins.location));
        Out { node, index: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_and_url(src: &str, keep: bool) -> (String, BTreeMap<String, String>) {
        let g = parse_git_ref(src).expect("a git ref");
        let (op, _) = git_op(&g, keep);
        match op.op {
            Some(pb::op::Op::Source(s)) => (s.identifier, s.attrs),
            _ => unreachable!(),
        }
    }

    #[test]
    fn which_sources_are_git() {
        for yes in [
            "https://github.com/moby/buildkit.git",
            "https://github.com/moby/buildkit.git#v0.11.6",
            "http://127.0.0.1:8080/r.git#main:sub",
            "git://127.0.0.1:9418/repo",
            "git://127.0.0.1:9418/repo#v1:dir",
            "ssh://git@github.com/moby/buildkit.git",
            "git@github.com:moby/buildkit.git#main",
        ] {
            assert!(parse_git_ref(yes).is_some(), "{yes}");
        }
        for no in [
            "https://example.com/tool.tar.gz",
            "https://example.com/repo",
            "github.com/moby/buildkit",
            "./git@h:x",
            "src/",
            "file.git",
            "C:/x",
        ] {
            assert!(parse_git_ref(no).is_none(), "{no}");
        }
    }

    #[test]
    fn refs_and_subdirs() {
        let g = parse_git_ref("git://h/r#v1:a/b").unwrap();
        assert_eq!(
            (g.remote.as_str(), g.reference.as_str(), g.subdir.as_str()),
            ("git://h/r", "v1", "a/b")
        );
        let g = parse_git_ref("https://h/r.git").unwrap();
        assert_eq!((g.reference.as_str(), g.subdir.as_str()), ("", ""));
    }

    #[test]
    fn identifiers_as_llb_git() {
        let (id, attrs) = id_and_url("git://127.0.0.1:9418/repo#v1:./sub/", false);
        assert_eq!(id, "git://127.0.0.1:9418/repo#v1:sub");
        assert_eq!(attrs["git.fullurl"], "git://127.0.0.1:9418/repo");
        assert!(!attrs.contains_key("git.keepgitdir"));

        let (id, attrs) = id_and_url("https://user@github.com/moby/buildkit.git#main", true);
        assert_eq!(id, "git://github.com/moby/buildkit.git#main");
        assert_eq!(attrs["git.keepgitdir"], "true");

        let (id, attrs) = id_and_url("git@github.com:moby/buildkit.git", false);
        assert_eq!(id, "git://github.com/moby/buildkit.git");
        assert_eq!(attrs["git.fullurl"], "git@github.com:moby/buildkit.git");
        assert_eq!(attrs["git.mountsshsock"], "default");

        let (id, _) = id_and_url("git://h/r#:/", false);
        assert_eq!(id, "git://h/r");
    }
}
