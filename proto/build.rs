//! Generates Rust types for the BuildKit wire protocol from our own .proto files.

use std::io;
use std::path::PathBuf;

/// Directory holding the .proto tree; also the protoc include root.
const PROTO_ROOT: &str = "buildkit";

/// Files to compile, relative to [`PROTO_ROOT`]. Service definitions
/// (Control, LLBBridge, fsutil, ...) are added to this list; tonic-prost-build
/// then emits their clients and servers next to the messages.
const PROTOS: &[&str] = &["pb/ops.proto", "fsutil/types.proto"];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let root = PathBuf::from(PROTO_ROOT);
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    tonic_prost_build::configure()
        // Map fields must encode in sorted key order: op digests hash these bytes.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &[root])
}
