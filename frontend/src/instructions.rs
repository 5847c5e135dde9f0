//! The typed instruction AST (the second parsing layer) with Dockerfile positions.

mod ast;
mod flags;
mod parse;

pub use ast::{
    AddCmd, ArgPair, Command, CopyCmd, Dockerfile, FromCmd, HealthcheckCmd, Instruction, KeyValue,
    RunCmd, ShellCmd, SourceContent, SourcesAndDest, Stage,
};
pub use parse::{parse_command, parse_dockerfile};
