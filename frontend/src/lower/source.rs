//! Source ops: `docker-image://` for FROM and `COPY --from=<image>`, `local://` for the context.

use std::collections::BTreeMap;

use memobuild_proto::{attr, caps, pb};

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

/// The `docker-image://` source op for a normalized, digest-pinned reference.
pub(crate) fn image_op(identifier_ref: &str, platform: &Platform) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: format!("{}{identifier_ref}", attr::SCHEME_DOCKER_IMAGE),
            attrs: BTreeMap::new(),
        })),
        platform: Some(platform.to_pb()),
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    }
}

/// Go's `json.Marshal` of a string list: HTML-sensitive characters escaped as BuildKit's
/// client does, so the attribute (and the op digest) matches BuildKit's.
pub(crate) fn go_json_list(items: &[String]) -> String {
    let s = serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The `local://<name>` context source and its metadata.
pub(crate) fn local_op(
    name: &str,
    session: Option<&str>,
    excludes: &[String],
    follow_paths: &[String],
) -> (pb::Op, pb::OpMetadata) {
    let mut attrs = BTreeMap::new();
    let mut cap_list = vec![caps::CAP_SOURCE_LOCAL];
    if let Some(s) = session.filter(|s| !s.is_empty()) {
        attrs.insert(attr::ATTR_LOCAL_SESSION.to_owned(), s.to_owned());
        cap_list.push(caps::CAP_SOURCE_LOCAL_SESSIONID);
    }
    if !follow_paths.is_empty() {
        attrs.insert(
            attr::ATTR_LOCAL_FOLLOWPATHS.to_owned(),
            go_json_list(follow_paths),
        );
        cap_list.push(caps::CAP_SOURCE_LOCAL_FOLLOWPATHS);
    }
    if !excludes.is_empty() {
        attrs.insert(
            attr::ATTR_LOCAL_EXCLUDEPATTERNS.to_owned(),
            go_json_list(excludes),
        );
        cap_list.push(caps::CAP_SOURCE_LOCAL_EXCLUDEPATTERNS);
    }
    attrs.insert(attr::ATTR_LOCAL_SHAREDKEYHINT.to_owned(), name.to_owned());
    cap_list.push(caps::CAP_SOURCE_LOCAL_SHAREDKEYHINT);
    let op = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: format!("{}{name}", attr::SCHEME_LOCAL),
            attrs,
        })),
        platform: None,
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    };
    (
        op,
        metadata("[internal] load build context", None, &cap_list),
    )
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
        let (op, md) = local_op("context", Some("s1"), &["*.log".into()], &[]);
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
}
