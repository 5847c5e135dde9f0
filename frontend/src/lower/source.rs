//! Source ops: `docker-image://` for FROM and `COPY --from=<image>`, `local://` for the context.

use std::collections::BTreeMap;

use memobuild_proto::{attr, caps, pb};

use crate::options::ImageResolveMode;
use crate::platform::Platform;

/// Op metadata with a progress name, optionally the Dockerfile command, and caps.
pub(crate) fn metadata(name: &str, command: Option<&str>, caps: &[&str]) -> pb::OpMetadata {
    let mut description = BTreeMap::new();
    description.insert(attr::ATTR_LLB_CUSTOMNAME.to_owned(), name.to_owned());
    if let Some(c) = command {
        description.insert(attr::ATTR_DOCKERFILE_COMMAND.to_owned(), c.to_owned());
    }
    pb::OpMetadata {
        description,
        caps: caps.iter().map(|c| ((*c).to_owned(), true)).collect(),
        ..Default::default()
    }
}

/// The `docker-image://` source op for a normalized, digest-pinned reference, and its caps. As
/// Go's `llb.Image`: `image.resolvemode` only for a non-default mode, and the
/// `source.image.resolvemode` cap only for `pull` (the mode a daemon must enforce).
pub(crate) fn image_op(
    identifier_ref: &str,
    platform: &Platform,
    mode: ImageResolveMode,
) -> (pb::Op, Vec<&'static str>) {
    let mut attrs = BTreeMap::new();
    let mut cap_list = vec![caps::CAP_SOURCE_IMAGE];
    if let Some(m) = mode.attr() {
        attrs.insert(attr::ATTR_IMAGE_RESOLVEMODE.to_owned(), m.to_owned());
        if mode == ImageResolveMode::Pull {
            cap_list.push(caps::CAP_SOURCE_IMAGE_RESOLVEMODE);
        }
    }
    let op = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: format!("{}{identifier_ref}", attr::SCHEME_DOCKER_IMAGE),
            attrs,
        })),
        platform: Some(platform.to_pb()),
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    };
    (op, cap_list)
}

/// Go's `json.Marshal` of a string list: HTML-sensitive characters escaped as BuildKit's
/// client does, so the attribute (and the op digest) matches BuildKit's.
pub(crate) fn go_json_list(items: &[String]) -> String {
    let s = serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// A `local://` source: the build context or a named `local:` context.
pub(crate) struct LocalSource<'a> {
    /// The local's name (FileSync `dir-name`).
    pub name: &'a str,
    /// `local.session`, if any.
    pub session: Option<&'a str>,
    /// `.dockerignore` patterns.
    pub excludes: &'a [String],
    /// The paths the build reads (empty = all).
    pub follow_paths: &'a [String],
    /// `local.sharedkeyhint`.
    pub shared_key_hint: &'a str,
    /// Progress name.
    pub custom_name: &'a str,
}

/// The `local://<name>` source op and its metadata.
pub(crate) fn local_op(l: &LocalSource<'_>) -> (pb::Op, pb::OpMetadata) {
    let mut attrs = BTreeMap::new();
    let mut cap_list = vec![caps::CAP_SOURCE_LOCAL];
    if let Some(s) = l.session.filter(|s| !s.is_empty()) {
        attrs.insert(attr::ATTR_LOCAL_SESSION.to_owned(), s.to_owned());
        cap_list.push(caps::CAP_SOURCE_LOCAL_SESSIONID);
    }
    if !l.follow_paths.is_empty() {
        attrs.insert(
            attr::ATTR_LOCAL_FOLLOWPATHS.to_owned(),
            go_json_list(l.follow_paths),
        );
        cap_list.push(caps::CAP_SOURCE_LOCAL_FOLLOWPATHS);
    }
    if !l.excludes.is_empty() {
        attrs.insert(
            attr::ATTR_LOCAL_EXCLUDEPATTERNS.to_owned(),
            go_json_list(l.excludes),
        );
        cap_list.push(caps::CAP_SOURCE_LOCAL_EXCLUDEPATTERNS);
    }
    attrs.insert(
        attr::ATTR_LOCAL_SHAREDKEYHINT.to_owned(),
        l.shared_key_hint.to_owned(),
    );
    cap_list.push(caps::CAP_SOURCE_LOCAL_SHAREDKEYHINT);
    let op = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: format!("{}{}", attr::SCHEME_LOCAL, l.name),
            attrs,
        })),
        platform: None,
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    };
    (op, metadata(l.custom_name, None, &cap_list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_like_go() {
        assert_eq!(
            go_json_list(&["a<b".into(), "*.md".into()]),
            r#"["a\u003cb","*.md"]"#
        );
    }

    #[test]
    fn local_attrs() {
        let (op, md) = local_op(&LocalSource {
            name: "context",
            session: Some("s1"),
            excludes: &["*.log".into()],
            follow_paths: &[],
            shared_key_hint: "context",
            custom_name: "[internal] load build context",
        });
        let Some(pb::op::Op::Source(s)) = op.op else {
            panic!("source op")
        };
        assert_eq!(s.identifier, "local://context");
        assert_eq!(s.attrs.get("local.session").map(String::as_str), Some("s1"));
        assert_eq!(
            s.attrs.get("local.excludepatterns").map(String::as_str),
            Some(r#"["*.log"]"#)
        );
        assert!(md.caps.contains_key("source.local.sessionid"));
        assert!(op.platform.is_none());
    }

    #[test]
    fn image_resolve_mode_attr_and_cap() {
        let p = Platform::new("linux", "amd64", None);
        let attrs = |mode| {
            let (op, caps) = image_op("docker.io/library/a:latest", &p, mode);
            let Some(pb::op::Op::Source(s)) = op.op else {
                panic!("source op")
            };
            (s.attrs, caps)
        };
        let (a, c) = attrs(ImageResolveMode::Default);
        assert!(a.is_empty());
        assert_eq!(c, vec!["source.image"]);
        let (a, c) = attrs(ImageResolveMode::Pull);
        assert_eq!(a["image.resolvemode"], "pull");
        assert_eq!(c, vec!["source.image", "source.image.resolvemode"]);
        let (a, c) = attrs(ImageResolveMode::Local);
        assert_eq!(a["image.resolvemode"], "local");
        assert_eq!(c, vec!["source.image"]);
    }
}
