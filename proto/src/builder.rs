//! Assembling a [`pb::Definition`] from ops, as the frontend does when lowering.

use std::collections::{BTreeMap, HashMap};

use crate::digest::encode_op;
use crate::{caps, pb};

/// Builds a [`pb::Definition`] one op at a time.
///
/// Each op is encoded exactly once, when added; its digest is computed over those bytes and
/// the bytes go into the definition unchanged. Identical ops are stored once. Ops must be added
/// after the ops they take as inputs (post-order), which is the order Go's `client/llb` emits.
///
/// ```
/// use memobuild_proto::{pb, DefinitionBuilder};
///
/// let mut b = DefinitionBuilder::new();
/// let src = pb::Op {
///     op: Some(pb::op::Op::Source(pb::SourceOp {
///         identifier: "local://context".into(),
///         ..Default::default()
///     })),
///     ..Default::default()
/// };
/// let d1 = b.add_op(&src);
/// let d2 = b.add_op(&src);
/// assert_eq!(d1, d2);
/// assert_eq!(b.len(), 1);
/// let def = b.finish(pb::Input::new(d1, 0));
/// assert_eq!(def.def.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct DefinitionBuilder {
    /// Encoded ops in insertion order.
    def: Vec<Vec<u8>>,
    /// Digest → position in `def`.
    positions: HashMap<String, usize>,
    metadata: BTreeMap<String, pb::OpMetadata>,
    source: Option<pb::Source>,
}

impl DefinitionBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `op`, appends it unless an identical op is already present, and returns its
    /// digest (use it in [`pb::Input::digest`] of later ops).
    pub fn add_op(&mut self, op: &pb::Op) -> String {
        let (bytes, digest) = encode_op(op);
        if !self.positions.contains_key(&digest) {
            self.positions.insert(digest.clone(), self.def.len());
            self.def.push(bytes);
        }
        digest
    }

    /// Appends an op already encoded elsewhere (an op of another definition, kept byte for
    /// byte so that its digest is unchanged) unless present, and returns its digest.
    pub fn add_encoded(&mut self, bytes: &[u8]) -> String {
        let digest = crate::digest_of(bytes);
        if !self.positions.contains_key(&digest) {
            self.positions.insert(digest.clone(), self.def.len());
            self.def.push(bytes.to_vec());
        }
        digest
    }

    /// [`add_op`](Self::add_op) followed by [`merge_metadata`](Self::merge_metadata).
    pub fn add_op_with_metadata(&mut self, op: &pb::Op, metadata: pb::OpMetadata) -> String {
        let digest = self.add_op(op);
        self.merge_metadata(&digest, metadata);
        digest
    }

    /// Merges `metadata` into the metadata of the op with `digest`
    /// (see [`pb::OpMetadata::merge`]).
    pub fn merge_metadata(&mut self, digest: &str, metadata: pb::OpMetadata) {
        self.metadata_mut(digest).merge(metadata);
    }

    /// The metadata entry of `digest`, created empty if missing.
    pub fn metadata_mut(&mut self, digest: &str) -> &mut pb::OpMetadata {
        self.metadata.entry(digest.to_owned()).or_default()
    }

    /// Whether an op with `digest` has been added.
    pub fn contains(&self, digest: &str) -> bool {
        self.positions.contains_key(digest)
    }

    /// The encoded bytes of the op with `digest`, exactly as they will appear in the definition.
    pub fn op_bytes(&self, digest: &str) -> Option<&[u8]> {
        self.positions.get(digest).map(|&i| self.def[i].as_slice())
    }

    /// Number of distinct ops added so far (the terminal op is not counted).
    pub fn len(&self) -> usize {
        self.def.len()
    }

    /// Whether no op has been added yet.
    pub fn is_empty(&self) -> bool {
        self.def.is_empty()
    }

    /// Attaches source maps to the definition.
    pub fn set_source(&mut self, source: pb::Source) {
        self.source = Some(source);
    }

    /// Appends the terminal op selecting `output` and returns the definition.
    ///
    /// Like Go's `State.Marshal`, the terminal op's metadata gets caps `constraints` and
    /// `platform`, plus `meta.ignorecache` / `meta.description` / `meta.exportcache` when any
    /// op's metadata uses them.
    pub fn finish(mut self, output: pb::Input) -> pb::Definition {
        let (bytes, digest) = encode_op(&pb::Op::terminal(output));
        let mut terminal_caps = vec![caps::CAP_CONSTRAINTS, caps::CAP_PLATFORM];
        for md in self.metadata.values() {
            if md.ignore_cache {
                terminal_caps.push(caps::CAP_META_IGNORECACHE);
            }
            if !md.description.is_empty() {
                terminal_caps.push(caps::CAP_META_DESCRIPTION);
            }
            if md.export_cache.is_some() {
                terminal_caps.push(caps::CAP_META_EXPORTCACHE);
            }
        }
        let md = self.metadata_mut(&digest);
        md.caps
            .extend(terminal_caps.into_iter().map(|c| (c.to_owned(), true)));
        self.def.push(bytes);
        pb::Definition {
            def: self.def,
            metadata: self.metadata,
            source: self.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::digest_of;

    fn source(identifier: &str) -> pb::Op {
        pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: identifier.to_owned(),
                ..Default::default()
            })),
            constraints: Some(pb::WorkerConstraints::default()),
            ..Default::default()
        }
    }

    #[test]
    fn identical_ops_are_stored_once_in_insertion_order() {
        let mut b = DefinitionBuilder::new();
        let a = b.add_op(&source("local://a"));
        let c = b.add_op(&source("local://c"));
        let a2 = b.add_op(&source("local://a"));
        assert_eq!(a, a2);
        assert_ne!(a, c);
        assert_eq!(b.len(), 2);
        let def = b.finish(pb::Input::new(&c, 0));
        assert_eq!(def.def.len(), 3);
        assert_eq!(digest_of(&def.def[0]), a);
        assert_eq!(digest_of(&def.def[1]), c);
    }

    #[test]
    fn encoded_ops_keep_their_bytes_and_are_deduplicated() {
        let mut b = DefinitionBuilder::new();
        let d = b.add_op(&source("local://a"));
        let bytes = b.op_bytes(&d).map(<[u8]>::to_vec).unwrap_or_default();
        assert_eq!(b.add_encoded(&bytes), d);
        assert_eq!(b.len(), 1);
        let other = source("local://b").encode_to_vec();
        assert_eq!(b.add_encoded(&other), digest_of(&other));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn stored_bytes_are_the_hashed_bytes() {
        let mut b = DefinitionBuilder::new();
        let op = source("docker-image://docker.io/library/alpine:latest");
        let d = b.add_op(&op);
        let bytes = b.op_bytes(&d).map(<[u8]>::to_vec);
        assert_eq!(bytes.as_deref().map(digest_of), Some(d.clone()));
        assert_eq!(bytes, Some(op.encode_to_vec()));
    }

    #[test]
    fn terminal_op_has_exactly_one_input_and_nothing_else() {
        let mut b = DefinitionBuilder::new();
        let d = b.add_op(&source("local://context"));
        let def = b.finish(pb::Input::new(&d, 0));
        let last = def.def.last().map(Vec::as_slice).unwrap_or_default();
        let terminal = pb::Op::decode(last).expect("terminal op decodes");
        assert_eq!(terminal, pb::Op::terminal(pb::Input::new(&d, 0)));
        assert_eq!(terminal.inputs.len(), 1);
        assert!(terminal.op.is_none() && terminal.platform.is_none());
        assert!(terminal.constraints.is_none());
        // Only field 1 (inputs) is present on the wire.
        assert_eq!(last[0], 0x0a);
        assert_eq!(usize::from(last[1]) + 2, last.len());

        let md = &def.metadata[&digest_of(last)];
        assert_eq!(
            md.caps.keys().collect::<Vec<_>>(),
            [caps::CAP_CONSTRAINTS, caps::CAP_PLATFORM]
        );
    }

    #[test]
    fn metadata_is_merged_and_reflected_in_terminal_caps() {
        let mut b = DefinitionBuilder::new();
        let desc = pb::OpMetadata {
            description: [("llb.customname".to_owned(), "[1/2] FROM".to_owned())].into(),
            ..Default::default()
        };
        let d = b.add_op_with_metadata(&source("local://x"), desc);
        b.merge_metadata(
            &d,
            pb::OpMetadata {
                ignore_cache: true,
                ..Default::default()
            },
        );
        let def = b.finish(pb::Input::new(&d, 0));
        let md = &def.metadata[&d];
        assert!(md.ignore_cache);
        assert_eq!(md.description["llb.customname"], "[1/2] FROM");
        let terminal = digest_of(def.def.last().map(Vec::as_slice).unwrap_or_default());
        let got: Vec<_> = def.metadata[&terminal].caps.keys().cloned().collect();
        assert_eq!(
            got,
            [
                caps::CAP_CONSTRAINTS,
                caps::CAP_META_DESCRIPTION,
                caps::CAP_META_IGNORECACHE,
                caps::CAP_PLATFORM
            ]
        );
    }
}
