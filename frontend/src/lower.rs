//! Lowering: stages and instructions to an LLB [`memobuild_proto::pb::Definition`] plus the
//! image config, following what BuildKit's `dockerfile2llb` emits.

mod dispatch;
mod exec;
mod file;
mod graph;
mod mounts;
mod naming;
mod paths;
mod source;
mod state;

pub(crate) use dispatch::Lowerer;
pub(crate) use mounts::mount_from;
pub use naming::go_quote;
