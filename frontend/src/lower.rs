//! Lowering: stages and instructions to an LLB [`memobuild_proto::pb::Definition`] plus the
//! image config, following what BuildKit's `dockerfile2llb` emits.

mod base;
mod context;
mod dispatch;
mod exec;
mod file;
mod git;
mod graph;
mod mounts;
mod naming;
mod onbuild;
mod paths;
pub(crate) mod source;
mod state;

pub(crate) use dispatch::{LowerOutput, Lowerer};
pub(crate) use git::parse_git_ref;
pub(crate) use mounts::{csv_fields, mount_from, parse_mount};
pub use naming::go_quote;
pub(crate) use onbuild::{CachedResolver, resolve_with_triggers};
pub(crate) use paths::clean as clean_path;
