//! An in-memory LLB graph whose ops are encoded only at the end, in post-order, so that a source
//! whose attributes depend on the whole build (the context's followpaths) can be completed last.

use std::collections::{BTreeMap, HashMap};

use memobuild_proto::{DefinitionBuilder, pb};

use crate::error::Location;

/// A vertex in the graph.
pub(crate) type NodeId = usize;

/// One output of a vertex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Out {
    pub node: NodeId,
    pub index: i64,
}

#[derive(Debug, Clone)]
struct Node {
    /// The op without `inputs` (they are set from `inputs` when marshalling).
    op: pb::Op,
    inputs: Vec<Out>,
    metadata: pb::OpMetadata,
    location: Option<Location>,
    /// For a vertex standing for another definition's result: that definition's ops, copied
    /// into ours byte for byte (`op` and `inputs` are unused).
    imported: Option<Imported>,
}

/// The ops of another definition (a frontend input) and the output its terminal op selects.
#[derive(Debug, Clone)]
struct Imported {
    /// Encoded ops without the terminal op, inputs before the ops that read them.
    ops: Vec<Vec<u8>>,
    metadata: BTreeMap<String, pb::OpMetadata>,
    /// The digest of the op whose output the definition selects.
    output: String,
}

/// Why a definition cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ImportError {
    /// An op does not decode.
    #[error("op {index} does not decode: {reason}")]
    Decode { index: usize, reason: String },
    /// The last op is not a terminal op selecting one output.
    #[error("the last op does not select the definition's output")]
    NoTerminal,
    /// An op reads an op the definition does not hold before it.
    #[error("op {digest} reads {input}, which the definition does not hold before it")]
    MissingInput { digest: String, input: String },
}

/// The graph under construction.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    nodes: Vec<Node>,
}

impl Graph {
    /// Adds a vertex; `op.inputs` is ignored, `inputs` are the edges in order.
    pub(crate) fn add(
        &mut self,
        op: pb::Op,
        inputs: Vec<Out>,
        metadata: pb::OpMetadata,
        location: Option<Location>,
    ) -> NodeId {
        self.nodes.push(Node {
            op,
            inputs,
            metadata,
            location,
            imported: None,
        });
        self.nodes.len() - 1
    }

    /// Adds the result of another definition (a frontend input): its ops become ours, byte for
    /// byte, so its vertices keep their digests and cache keys. `None` for an empty definition
    /// (scratch).
    pub(crate) fn add_definition(
        &mut self,
        def: &pb::Definition,
    ) -> Result<Option<Out>, ImportError> {
        use prost::Message as _;
        let Some((last, ops)) = def.def.split_last() else {
            return Ok(None);
        };
        let decode = |index: usize, bytes: &[u8]| {
            pb::Op::decode(bytes).map_err(|e| ImportError::Decode {
                index,
                reason: e.to_string(),
            })
        };
        let terminal = decode(ops.len(), last)?;
        let output = match (&terminal.op, terminal.inputs.as_slice()) {
            (None, [output]) => output.clone(),
            _ => return Err(ImportError::NoTerminal),
        };
        // Every input must name an op before it, so that the copy is a valid definition.
        let mut seen = std::collections::HashSet::new();
        for (index, bytes) in ops.iter().enumerate() {
            let digest = memobuild_proto::digest_of(bytes);
            for input in decode(index, bytes)?.inputs {
                if !seen.contains(&input.digest) {
                    return Err(ImportError::MissingInput {
                        digest,
                        input: input.digest,
                    });
                }
            }
            seen.insert(digest);
        }
        if !seen.contains(&output.digest) {
            return Err(ImportError::MissingInput {
                digest: memobuild_proto::digest_of(last),
                input: output.digest,
            });
        }
        let metadata = def
            .metadata
            .iter()
            .filter(|(d, _)| seen.contains(*d))
            .map(|(d, m)| (d.clone(), m.clone()))
            .collect();
        self.nodes.push(Node {
            op: pb::Op::default(),
            inputs: Vec::new(),
            metadata: pb::OpMetadata::default(),
            location: None,
            imported: Some(Imported {
                ops: ops.to_vec(),
                metadata,
                output: output.digest,
            }),
        });
        Ok(Some(Out {
            node: self.nodes.len() - 1,
            index: output.index,
        }))
    }

    /// Replaces the op and metadata of `id` (used to complete the context source).
    pub(crate) fn replace(&mut self, id: NodeId, op: pb::Op, metadata: pb::OpMetadata) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.op = op;
            n.metadata = metadata;
        }
    }

    /// Encodes everything reachable from `target` into a Definition (post-order, deduplicated),
    /// with a source map of `file` for every op that came from an instruction.
    pub(crate) fn marshal(&self, target: Option<Out>, file: &str, data: &str) -> pb::Definition {
        let Some(target) = target else {
            return pb::Definition::default();
        };
        let mut b = DefinitionBuilder::new();
        let mut digests: HashMap<NodeId, String> = HashMap::new();
        let mut locations: BTreeMap<String, pb::Locations> = BTreeMap::new();
        self.visit(target.node, &mut b, &mut digests, &mut locations);
        let has_locations = !locations.is_empty();
        b.set_source(pb::Source {
            locations,
            infos: vec![pb::SourceInfo {
                filename: file.to_owned(),
                data: data.as_bytes().to_vec(),
                definition: None,
                language: "Dockerfile".into(),
            }],
        });
        let _ = has_locations;
        let digest = digests.get(&target.node).cloned().unwrap_or_default();
        b.finish(pb::Input::new(digest, target.index))
    }

    fn visit(
        &self,
        id: NodeId,
        b: &mut DefinitionBuilder,
        digests: &mut HashMap<NodeId, String>,
        locations: &mut BTreeMap<String, pb::Locations>,
    ) {
        if digests.contains_key(&id) {
            return;
        }
        let node = &self.nodes[id];
        if let Some(imported) = &node.imported {
            for bytes in &imported.ops {
                let digest = b.add_encoded(bytes);
                if let Some(md) = imported.metadata.get(&digest) {
                    b.merge_metadata(&digest, md.clone());
                }
            }
            digests.insert(id, imported.output.clone());
            return;
        }
        for inp in &node.inputs {
            self.visit(inp.node, b, digests, locations);
        }
        let mut op = node.op.clone();
        op.inputs = node
            .inputs
            .iter()
            .map(|i| pb::Input::new(digests.get(&i.node).cloned().unwrap_or_default(), i.index))
            .collect();
        let digest = b.add_op_with_metadata(&op, node.metadata.clone());
        if let Some(l) = node.location {
            let range = pb::Range {
                start: Some(pb::Position {
                    line: i32::try_from(l.line).unwrap_or(i32::MAX),
                    character: 0,
                }),
                end: Some(pb::Position {
                    line: i32::try_from(l.end_line).unwrap_or(i32::MAX),
                    character: 0,
                }),
            };
            let entry = locations.entry(digest.clone()).or_default();
            let loc = pb::Location {
                source_index: 0,
                ranges: vec![range],
            };
            if !entry.locations.contains(&loc) {
                entry.locations.push(loc);
            }
        }
        digests.insert(id, digest);
    }
}
