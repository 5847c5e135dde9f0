//! The first parsing layer: parser directives, line joining (continuations, comments and blank
//! lines inside them), heredoc bodies, and splitting each instruction into keyword, `--flags`
//! and the rest. Typed instructions are built from its [`Node`]s in [`crate::instructions`].

mod directives;
mod heredoc;
mod lines;
mod words;

pub use directives::Directive;
pub(crate) use directives::{DirectiveParser, split_directive};
pub use heredoc::{Heredoc, chomp_heredoc_content, parse_heredoc};
pub use lines::{Node, ParsedFile, node_from_line, parse_lines};
pub use words::{JsonArgs, parse_json_array, parse_words, split_whitespace};
