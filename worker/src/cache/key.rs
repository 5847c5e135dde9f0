//! The MemoBuild key: BLAKE3 over a vertex's named key components.
//!
//! ```text
//! key(v) = BLAKE3("memobuild/v3" ∥ for each (name, value) in name order: len ∥ name ∥ len ∥ value)
//! ```
//!
//! Components: `op` (the op with its input digests and cosmetic or per-session source attrs
//! removed), `input N` (the *output identity* of what input N produced: its layer chain, so a
//! parent that re-ran but produced identical files changes nothing downstream — early cutoff),
//! readable parts of the op for explanations (`args`, `env NAME`, `cwd`, `user`, `copy N`), and
//! `file PATH` fingerprints of exactly the context files the vertex reads. Values are text, so a
//! record can show what changed; a secret's value never appears (ops carry only secret ids).

use std::collections::BTreeMap;

use memobuild_proto::{attr, pb};
use prost::Message;

use crate::image::chain_ids;
use crate::layer::LayerBlob;

/// Version tag of every key. Bump it when the key derivation changes meaning, *and* when an op
/// can produce different files for the same key (a fixed copy, archive or chmod semantic): a
/// cache filled by an older binary must then miss instead of serving the old result.
/// v2: ADD extracts bzip2/xz/zstd archives; copy sources use Go's `filepath.Match`; symbolic
/// `--chmod`, copy excludes relative to the source and explicitly named ignored files fixed;
/// local sources honour `local.followpaths`.
/// v3: the destination of a directory copy is made 0755 (owner: `--chown` or root), not given
/// the source directory's mode and owner; tar contexts keep their owners.
const KEY_VERSION: &[u8] = b"memobuild/v3";

/// Source attrs that do not change what a source produces.
const COSMETIC_SOURCE_ATTRS: &[&str] = &[
    attr::ATTR_LOCAL_SESSION,
    attr::ATTR_LOCAL_UNIQUE,
    attr::ATTR_LOCAL_SHAREDKEYHINT,
];

/// Collects key components and hashes them.
#[derive(Debug, Default, Clone)]
pub struct KeyBuilder {
    components: BTreeMap<String, String>,
}

impl KeyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a component.
    pub fn add(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.components.insert(name.into(), value.into());
        self
    }

    /// The key (64 hex digits) and the components that made it.
    pub fn finish(self) -> (String, BTreeMap<String, String>) {
        let mut h = blake3::Hasher::new();
        h.update(KEY_VERSION);
        for (k, v) in &self.components {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        (h.finalize().to_hex().to_string(), self.components)
    }
}

/// The identity of a filesystem output: the chain ID of its layers (`scratch` when empty). Two
/// vertices whose outputs have the same files have the same identity, however they were made.
pub fn fs_identity(layers: &[LayerBlob]) -> String {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    chain_ids(&diff_ids)
        .pop()
        .unwrap_or_else(|| "scratch".to_string())
}

/// The op as it matters for the cache: input digests removed (inputs enter the key through their
/// output identities), and source attrs that only name a session or a sharing hint dropped.
pub fn canonical_op(op: &pb::Op) -> Vec<u8> {
    let mut op = op.clone();
    for input in &mut op.inputs {
        input.digest.clear();
    }
    if let Some(pb::op::Op::Source(src)) = &mut op.op {
        for a in COSMETIC_SOURCE_ATTRS {
            src.attrs.remove(*a);
        }
    }
    op.encode_to_vec()
}

/// Starts a key for `op`: the canonical op hash plus readable parts for explanations.
pub fn op_components(op: &pb::Op) -> KeyBuilder {
    let mut k = KeyBuilder::new();
    k.add("op", blake3::hash(&canonical_op(op)).to_hex().to_string());
    match &op.op {
        Some(pb::op::Op::Exec(e)) => {
            if let Some(m) = &e.meta {
                k.add("args", serde_json::to_string(&m.args).unwrap_or_default());
                for kv in &m.env {
                    let (name, value) = kv.split_once('=').unwrap_or((kv, ""));
                    k.add(format!("env {name}"), value);
                }
                k.add("cwd", m.cwd.clone());
                k.add("user", m.user.clone());
            }
        }
        Some(pb::op::Op::Source(s)) => {
            k.add("source", s.identifier.clone());
        }
        Some(pb::op::Op::File(f)) => {
            for (i, a) in f.actions.iter().enumerate() {
                if let Some(pb::file_action::Action::Copy(c)) = &a.action {
                    k.add(format!("copy {i}"), format!("{} -> {}", c.src, c.dest));
                }
            }
        }
        _ => {}
    }
    if let Some(p) = &op.platform {
        k.add(
            "platform",
            format!(
                "{}/{}{}",
                p.os,
                p.architecture,
                if p.variant.is_empty() {
                    String::new()
                } else {
                    format!("/{}", p.variant)
                }
            ),
        );
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(env: &[&str]) -> pb::Op {
        pb::Op {
            inputs: vec![pb::Input::new("sha256:aaaa", 0)],
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(pb::Meta {
                    args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
                    env: env.iter().map(|s| s.to_string()).collect(),
                    cwd: "/src".into(),
                    ..Default::default()
                }),
                mounts: vec![pb::Mount {
                    dest: "/".into(),
                    input: 0,
                    output: 0,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn key_is_stable_and_order_independent() {
        let mut a = KeyBuilder::new();
        a.add("x", "1").add("y", "2");
        let mut b = KeyBuilder::new();
        b.add("y", "2").add("x", "1");
        assert_eq!(a.finish().0, b.finish().0);
    }

    #[test]
    fn component_boundaries_are_unambiguous() {
        let mut a = KeyBuilder::new();
        a.add("ab", "c");
        let mut b = KeyBuilder::new();
        b.add("a", "bc");
        assert_ne!(a.finish().0, b.finish().0);
    }

    #[test]
    fn input_digests_do_not_enter_the_key_but_env_does() {
        let one = exec(&["A=1"]);
        let mut other_parent = one.clone();
        other_parent.inputs[0].digest = "sha256:bbbb".into();
        assert_eq!(
            op_components(&one).finish().0,
            op_components(&other_parent).finish().0
        );
        let (k2, c2) = op_components(&exec(&["A=2"])).finish();
        assert_ne!(op_components(&one).finish().0, k2);
        assert_eq!(c2["env A"], "2");
    }

    #[test]
    fn session_attrs_do_not_enter_the_key() {
        let src = |session: &str| pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: "local://context".into(),
                attrs: [
                    (attr::ATTR_LOCAL_SESSION.to_string(), session.to_string()),
                    (
                        attr::ATTR_LOCAL_EXCLUDEPATTERNS.to_string(),
                        "[\"*.log\"]".to_string(),
                    ),
                ]
                .into(),
            })),
            ..Default::default()
        };
        assert_eq!(canonical_op(&src("one")), canonical_op(&src("two")));
    }

    #[test]
    fn fs_identity_is_the_chain_id() {
        assert_eq!(fs_identity(&[]), "scratch");
        let l = |d: &str| LayerBlob {
            digest: "sha256:x".into(),
            diff_id: d.into(),
            size: 1,
            media_type: String::new(),
        };
        let a = format!("sha256:{}", "a".repeat(64));
        assert_eq!(fs_identity(&[l(&a)]), a);
        // Same files, different compression: same identity.
        let mut other = l(&a);
        other.digest = "sha256:y".into();
        assert_eq!(fs_identity(&[other]), a);
    }
}
