//! Generates Rust types, gRPC clients and gRPC servers for the BuildKit wire protocol from our
//! own .proto files.
//!
//! prost writes one file per protobuf package (`moby.buildkit.v1.rs`, `pb.rs`, ...) into
//! `OUT_DIR`; `src/lib.rs` includes them in a module tree mirroring the package names.

use std::io;
use std::path::PathBuf;

/// Directory holding the .proto tree; also the protoc include root (imports are relative to it).
/// `google/protobuf/*.proto` come from protoc's own include directory.
const PROTO_ROOT: &str = "buildkit";

/// Files to compile, relative to [`PROTO_ROOT`]; each one's imports are pulled in as needed.
const PROTOS: &[&str] = &[
    // Messages only.
    "pb/ops.proto",
    "fsutil/types.proto",
    "google/rpc/status.proto",
    "apicaps/caps.proto",
    "types/worker.proto",
    "sourcepolicy/policy.proto",
    // Services the daemon serves.
    "control/control.proto",
    "gateway/gateway.proto",
    "containerd/content.proto",
    // Services the client serves inside its session.
    "session/filesync.proto",
    "session/auth.proto",
    "session/secrets.proto",
    "session/ssh.proto",
    "session/upload.proto",
];

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
        // Server traits get a default body answering `Unimplemented` for every RPC, so a
        // service implements only what it supports. Streaming RPCs then return
        // `BoxStream<T>` instead of an associated stream type.
        .generate_default_stubs(true)
        .compile_protos(&protos, &[root])
}
