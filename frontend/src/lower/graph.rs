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
        });
        self.nodes.len() - 1
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
