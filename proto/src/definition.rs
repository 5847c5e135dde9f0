//! Decoding and validating a received [`pb::Definition`].

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use crate::digest::digest_of;
use crate::pb;

/// Why a definition was rejected.
///
/// Messages follow BuildKit's `solver/llbsolver/vertex.go` where it has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The bytes are not a `Definition` message.
    #[error("failed to parse llb definition")]
    Decode(#[source] prost::DecodeError),
    /// Element `index` of `Definition.def` is not an `Op` message.
    #[error("failed to parse llb proto op {index}")]
    DecodeOp {
        /// Position in `Definition.def`.
        index: usize,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// `Definition.def` is empty.
    #[error("invalid empty definition")]
    Empty,
    /// Fewer than two distinct ops (at least one op plus the terminal op are required).
    #[error("invalid LLB with {0} vertexes")]
    TooFewVertexes(usize),
    /// The last op does not have the terminal shape (one input, no operation).
    #[error("invalid terminal op `{digest}`: {reason}")]
    InvalidTerminal {
        /// Digest of the last element.
        digest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An input selects a negative output index.
    #[error("invalid input {input} output index {index} of op `{digest}`")]
    InvalidInputIndex {
        /// The op holding the input.
        digest: String,
        /// Position in `Op.inputs`.
        input: usize,
        /// The offending output index.
        index: i64,
    },
    /// An input names a digest that is not an op of the definition.
    #[error("invalid missing input digest {digest}")]
    MissingInput {
        /// The unknown digest.
        digest: String,
        /// The op (or terminal op) that references it.
        referenced_by: String,
    },
    /// The ops reference each other in a cycle.
    #[error("invalid LLB: cycle through op `{digest}`")]
    Cycle {
        /// An op on the cycle.
        digest: String,
    },
}

/// One op of a parsed definition with the digest of the bytes it was decoded from.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedOp {
    /// `"sha256:<hex>"` of the op's bytes as received.
    pub digest: String,
    /// The decoded op.
    pub op: pb::Op,
}

/// A validated definition: distinct ops ordered so every op follows its inputs, and the
/// terminal input naming the build result.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDefinition {
    ops: Vec<ParsedOp>,
    positions: HashMap<String, usize>,
    terminal: pb::Input,
    metadata: BTreeMap<String, pb::OpMetadata>,
    source: Option<pb::Source>,
}

/// Decodes a marshalled [`pb::Definition`] and validates it (see [`ParsedDefinition`]).
pub fn parse_definition(bytes: &[u8]) -> Result<ParsedDefinition, DefinitionError> {
    let def = pb::Definition::decode(bytes).map_err(DefinitionError::Decode)?;
    ParsedDefinition::try_from(def)
}

impl TryFrom<pb::Definition> for ParsedDefinition {
    type Error = DefinitionError;

    /// Checks the rules a BuildKit daemon applies when loading LLB: every element decodes as
    /// an `Op`; the last one is the terminal op (exactly one input, no operation); at least two
    /// distinct ops; every input digest names an op of the definition with a non-negative
    /// output index; no cycles. Duplicate elements are kept once.
    fn try_from(def: pb::Definition) -> Result<Self, DefinitionError> {
        let (terminal_bytes, body) = def.def.split_last().ok_or(DefinitionError::Empty)?;
        let terminal_digest = digest_of(terminal_bytes);
        let terminal = pb::Op::decode(terminal_bytes.as_slice()).map_err(|source| {
            DefinitionError::DecodeOp {
                index: body.len(),
                source,
            }
        })?;

        let mut ops = Vec::with_capacity(body.len());
        let mut seen = HashMap::with_capacity(body.len());
        for (index, bytes) in body.iter().enumerate() {
            let digest = digest_of(bytes);
            if digest == terminal_digest || seen.contains_key(&digest) {
                continue;
            }
            let op = pb::Op::decode(bytes.as_slice())
                .map_err(|source| DefinitionError::DecodeOp { index, source })?;
            seen.insert(digest.clone(), ());
            ops.push(ParsedOp { digest, op });
        }
        if ops.is_empty() {
            return Err(DefinitionError::TooFewVertexes(1));
        }
        Self::from_ops(ops, terminal_digest, terminal, def.metadata, def.source)
    }
}

impl ParsedDefinition {
    /// Validates already-digested ops; `ops` must hold distinct digests.
    fn from_ops(
        ops: Vec<ParsedOp>,
        terminal_digest: String,
        terminal: pb::Op,
        metadata: BTreeMap<String, pb::OpMetadata>,
        source: Option<pb::Source>,
    ) -> Result<Self, DefinitionError> {
        let terminal = match <[pb::Input; 1]>::try_from(terminal.inputs) {
            Ok([input]) if terminal.op.is_none() => input,
            Ok(_) => {
                return Err(DefinitionError::InvalidTerminal {
                    digest: terminal_digest,
                    reason: "last op must not have an operation",
                });
            }
            Err(_) => {
                return Err(DefinitionError::InvalidTerminal {
                    digest: terminal_digest,
                    reason: "last op must have exactly one input",
                });
            }
        };

        let positions: HashMap<String, usize> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| (op.digest.clone(), i))
            .collect();
        let resolve = |input: &pb::Input, i: usize, owner: &str| {
            if input.index < 0 {
                return Err(DefinitionError::InvalidInputIndex {
                    digest: owner.to_owned(),
                    input: i,
                    index: input.index,
                });
            }
            positions
                .get(&input.digest)
                .copied()
                .ok_or_else(|| DefinitionError::MissingInput {
                    digest: input.digest.clone(),
                    referenced_by: owner.to_owned(),
                })
        };

        let mut edges = Vec::with_capacity(ops.len());
        for op in &ops {
            let deps = op
                .op
                .inputs
                .iter()
                .enumerate()
                .map(|(i, input)| resolve(input, i, &op.digest))
                .collect::<Result<Vec<_>, _>>()?;
            edges.push(deps);
        }
        resolve(&terminal, 0, &terminal_digest)?;

        let order = post_order(&edges).map_err(|node| DefinitionError::Cycle {
            digest: ops[node].digest.clone(),
        })?;
        let mut slots: Vec<Option<ParsedOp>> = ops.into_iter().map(Some).collect();
        let ops: Vec<ParsedOp> = order.iter().filter_map(|&i| slots[i].take()).collect();
        let positions = ops
            .iter()
            .enumerate()
            .map(|(i, op)| (op.digest.clone(), i))
            .collect();
        Ok(Self {
            ops,
            positions,
            terminal,
            metadata,
            source,
        })
    }

    /// The distinct non-terminal ops, each after all of its inputs. When the definition was
    /// already in post-order (as Go and [`DefinitionBuilder`](crate::DefinitionBuilder) write
    /// it), this is the received order.
    pub fn ops(&self) -> &[ParsedOp] {
        &self.ops
    }

    /// The op with `digest`.
    pub fn get(&self, digest: &str) -> Option<&pb::Op> {
        self.positions.get(digest).map(|&i| &self.ops[i].op)
    }

    /// The build result: output `index` of op `digest`.
    pub fn terminal(&self) -> &pb::Input {
        &self.terminal
    }

    /// Metadata sent for the op with `digest` (also for the terminal op's digest).
    pub fn metadata(&self, digest: &str) -> Option<&pb::OpMetadata> {
        self.metadata.get(digest)
    }

    /// Source maps sent with the definition.
    pub fn source(&self) -> Option<&pb::Source> {
        self.source.as_ref()
    }

    /// Splits into ops (in [`ops`](Self::ops) order) and the terminal input.
    pub fn into_parts(self) -> (Vec<ParsedOp>, pb::Input) {
        (self.ops, self.terminal)
    }
}

/// Orders nodes so each comes after the nodes in its `edges` entry, visiting roots in index
/// order (so an input that is already post-order is returned unchanged). Iterative, so deep
/// chains cannot overflow the stack. On a cycle returns a node on it.
fn post_order(edges: &[Vec<usize>]) -> Result<Vec<usize>, usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; edges.len()];
    let mut order = Vec::with_capacity(edges.len());
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..edges.len() {
        if marks[root] != Mark::New {
            continue;
        }
        marks[root] = Mark::Active;
        stack.push((root, 0));
        while let Some(&(node, next)) = stack.last() {
            match edges[node].get(next) {
                Some(&dep) => {
                    if let Some(top) = stack.last_mut() {
                        top.1 += 1;
                    }
                    match marks[dep] {
                        Mark::New => {
                            marks[dep] = Mark::Active;
                            stack.push((dep, 0));
                        }
                        Mark::Active => return Err(dep),
                        Mark::Done => {}
                    }
                }
                None => {
                    marks[node] = Mark::Done;
                    order.push(node);
                    stack.pop();
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DefinitionBuilder;

    fn source(identifier: &str) -> pb::Op {
        pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: identifier.to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn exec_on(input: &str) -> pb::Op {
        pb::Op {
            inputs: vec![pb::Input::new(input, 0)],
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(pb::Meta {
                    args: vec!["true".into()],
                    ..Default::default()
                }),
                mounts: vec![pb::Mount {
                    dest: "/".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn encode(def: &pb::Definition) -> Vec<u8> {
        def.encode_to_vec()
    }

    #[test]
    fn builder_output_round_trips() {
        let mut b = DefinitionBuilder::new();
        let img = b.add_op(&source("docker-image://docker.io/library/alpine:latest"));
        let run = b.add_op(&exec_on(&img));
        let def = b.finish(pb::Input::new(&run, 0));
        let parsed = parse_definition(&encode(&def)).expect("valid definition");
        let digests: Vec<_> = parsed.ops().iter().map(|o| o.digest.as_str()).collect();
        assert_eq!(digests, [img.as_str(), run.as_str()]);
        assert_eq!(parsed.terminal(), &pb::Input::new(&run, 0));
        assert_eq!(parsed.get(&run), Some(&exec_on(&img)));
        assert!(parsed.metadata(&digest_of(&def.def[2])).is_some());
    }

    #[test]
    fn out_of_order_elements_are_sorted_inputs_first() {
        let img = source("docker-image://docker.io/library/alpine:latest");
        let img_d = digest_of(&img.encode_to_vec());
        let run = exec_on(&img_d);
        let run_d = digest_of(&run.encode_to_vec());
        let def = pb::Definition {
            def: vec![
                run.encode_to_vec(),
                img.encode_to_vec(),
                img.encode_to_vec(),
                pb::Op::terminal(pb::Input::new(&run_d, 0)).encode_to_vec(),
            ],
            ..Default::default()
        };
        let (ops, _) = parse_definition(&encode(&def))
            .expect("valid definition")
            .into_parts();
        let digests: Vec<_> = ops.into_iter().map(|o| o.digest).collect();
        assert_eq!(digests, [img_d, run_d]);
    }

    #[test]
    fn dangling_input_is_rejected() {
        let missing = digest_of(b"nothing");
        let mut b = DefinitionBuilder::new();
        let run = b.add_op(&exec_on(&missing));
        let def = b.finish(pb::Input::new(&run, 0));
        let err = parse_definition(&encode(&def)).expect_err("dangling input");
        assert!(matches!(err, DefinitionError::MissingInput { .. }));
        assert_eq!(
            err.to_string(),
            format!("invalid missing input digest {missing}")
        );
    }

    #[test]
    fn dangling_terminal_input_is_rejected() {
        let mut b = DefinitionBuilder::new();
        b.add_op(&source("local://context"));
        let def = b.finish(pb::Input::new("sha256:0000", 0));
        let err = parse_definition(&encode(&def)).expect_err("dangling terminal");
        assert_eq!(err.to_string(), "invalid missing input digest sha256:0000");
    }

    #[test]
    fn fewer_than_two_ops_is_rejected() {
        let empty = pb::Definition::default();
        assert!(matches!(
            parse_definition(&encode(&empty)),
            Err(DefinitionError::Empty)
        ));

        let only_terminal = DefinitionBuilder::new().finish(pb::Input::new("sha256:00", 0));
        let err = parse_definition(&encode(&only_terminal)).expect_err("one vertex");
        assert_eq!(err.to_string(), "invalid LLB with 1 vertexes");

        // The terminal op repeated is still one vertex.
        let t = pb::Op::terminal(pb::Input::new("sha256:00", 0)).encode_to_vec();
        let twice = pb::Definition {
            def: vec![t.clone(), t],
            ..Default::default()
        };
        assert!(matches!(
            parse_definition(&encode(&twice)),
            Err(DefinitionError::TooFewVertexes(1))
        ));
    }

    #[test]
    fn duplicate_elements_are_kept_once() {
        let op = source("local://context").encode_to_vec();
        let d = digest_of(&op);
        let dup = pb::Definition {
            def: vec![
                op.clone(),
                op,
                pb::Op::terminal(pb::Input::new(&d, 0)).encode_to_vec(),
            ],
            ..Default::default()
        };
        let parsed = parse_definition(&encode(&dup)).expect("op + terminal is valid");
        assert_eq!(parsed.ops().len(), 1);
        assert_eq!(parsed.ops()[0].digest, d);
    }

    #[test]
    fn malformed_terminal_is_rejected() {
        let op = source("local://context");
        let d = digest_of(&op.encode_to_vec());
        for terminal in [
            pb::Op::default(),
            pb::Op {
                inputs: vec![pb::Input::new(&d, 0), pb::Input::new(&d, 0)],
                ..Default::default()
            },
            exec_on(&d),
        ] {
            let def = pb::Definition {
                def: vec![op.encode_to_vec(), terminal.encode_to_vec()],
                ..Default::default()
            };
            assert!(matches!(
                parse_definition(&encode(&def)),
                Err(DefinitionError::InvalidTerminal { .. })
            ));
        }
    }

    #[test]
    fn negative_input_index_is_rejected() {
        let mut b = DefinitionBuilder::new();
        let d = b.add_op(&source("local://context"));
        let def = b.finish(pb::Input::new(d, -1));
        assert!(matches!(
            parse_definition(&encode(&def)),
            Err(DefinitionError::InvalidInputIndex { index: -1, .. })
        ));
    }

    #[test]
    fn cycle_is_rejected() {
        // Real digests cannot form a cycle (each would have to contain the other's hash),
        // so exercise the check with assigned digests.
        let a = ParsedOp {
            digest: "sha256:a".into(),
            op: exec_on("sha256:b"),
        };
        let b = ParsedOp {
            digest: "sha256:b".into(),
            op: exec_on("sha256:a"),
        };
        let c = ParsedOp {
            digest: "sha256:c".into(),
            op: exec_on("sha256:a"),
        };
        let err = ParsedDefinition::from_ops(
            vec![c, a, b],
            "sha256:t".into(),
            pb::Op::terminal(pb::Input::new("sha256:c", 0)),
            BTreeMap::new(),
            None,
        )
        .expect_err("cycle");
        assert!(matches!(err, DefinitionError::Cycle { .. }), "{err}");

        let self_loop = ParsedOp {
            digest: "sha256:s".into(),
            op: exec_on("sha256:s"),
        };
        assert!(matches!(
            ParsedDefinition::from_ops(
                vec![self_loop],
                "sha256:t".into(),
                pb::Op::terminal(pb::Input::new("sha256:s", 0)),
                BTreeMap::new(),
                None,
            ),
            Err(DefinitionError::Cycle { .. })
        ));
    }

    #[test]
    fn post_order_handles_deep_chains_without_recursion() {
        let n = 200_000;
        let edges: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        let order = post_order(&edges).expect("acyclic");
        assert_eq!(order.first(), Some(&(n - 1)));
        assert_eq!(order.last(), Some(&0));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let inputs: [&[u8]; 6] = [
            b"\xff\xff\xff\xff",
            b"\x0a\x05abc",
            b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\x12\x03\x0a\x01",
            b"not a protobuf at all",
            &[0x0a, 0x02, 0xff, 0xff, 0x0a, 0x00],
        ];
        for bytes in inputs {
            assert!(parse_definition(bytes).is_err(), "{bytes:?}");
        }
        // Byte flips and truncations of a valid definition: any result, never a panic.
        let mut b = DefinitionBuilder::new();
        let img = b.add_op(&source("docker-image://docker.io/library/alpine:latest"));
        let run = b.add_op(&exec_on(&img));
        let valid = encode(&b.finish(pb::Input::new(&run, 0)));
        let mut state = 0x2545_f491_u32;
        for _ in 0..5000 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let mut bytes = valid.clone();
            let at = usize::try_from(state >> 8).unwrap_or_default() % bytes.len();
            bytes[at] ^= u8::try_from(state & 0xff).unwrap_or(1).max(1);
            let _ = parse_definition(&bytes);
            let _ = parse_definition(&bytes[..at]);
        }
        // Well-formed Definition whose elements are not ops.
        let def = pb::Definition {
            def: vec![b"\xff\xff".to_vec(), b"\x0a\x01".to_vec()],
            ..Default::default()
        };
        assert!(matches!(
            parse_definition(&encode(&def)),
            Err(DefinitionError::DecodeOp { .. })
        ));
    }
}
