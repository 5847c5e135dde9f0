//! End to end: `memobuild daemon` (BuildKit's Control and LLBBridge services, sessions) on a
//! unix socket, driven by MemoBuild's own BuildKit client (`memobuild build --addr`, which
//! follows buildctl v0.32's flow) and, where the CLI cannot express a request, by gRPC calls of
//! `memobuild_proto`'s clients, on the real containerd and registry from hack/services.sh.
//! Outputs come back through the session (oci, docker, tar, local) identical to a local
//! build's; the context is transferred incrementally; secrets and the ssh agent reach RUN;
//! pushes land; errors are clear and the daemon survives malformed requests, vanishing
//! clients and concurrent builds; DiskUsage and Prune work; SIGTERM stops it cleanly.

#[path = "../common/mod.rs"]
mod common;

mod buildx;
mod context;
mod errors;
mod gateway;
mod history;
mod lifecycle;
mod outputs;
mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, wait_timeout};
use common::{
    Env, Sandbox, TWO_COPIES, assert_ok, error_line, progress_events, stderr, stdout, unique,
};
use memobuild_proto::control::{
    BuildHistoryEventType, BuildHistoryRecord, BuildHistoryRequest, DiskUsageRequest, Exporter,
    PruneRequest, SolveRequest as ControlSolve, UpdateBuildHistoryRequest,
};
use memobuild_proto::gateway::{
    PingRequest, ReadFileRequest, Ref, ReturnRequest, SolveRequest as GatewaySolve, result,
};
use memobuild_proto::{DefinitionBuilder, pb};
use prost::Message;
use sha2::{Digest, Sha256};

// ----- helpers ------------------------------------------------------------------------------

fn registry_arg(env: &Env) -> String {
    format!("REGISTRY={}", env.registry)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The files of a tar archive by path: (mode, uid, gid, contents).
fn tar_entries(archive: &Path) -> BTreeMap<String, (u32, u64, u64, Vec<u8>)> {
    let file =
        std::fs::File::open(archive).unwrap_or_else(|e| panic!("open {}: {e}", archive.display()));
    let mut tar = tar::Archive::new(file);
    let mut out = BTreeMap::new();
    for entry in tar.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let header = entry.header().clone();
        let path = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read entry");
        out.insert(
            path,
            (
                header.mode().expect("mode"),
                header.uid().expect("uid"),
                header.gid().expect("gid"),
                data,
            ),
        );
    }
    out
}

/// One file of a tar archive.
fn tar_file(archive: &Path, name: &str) -> Vec<u8> {
    tar_entries(archive)
        .remove(name)
        .unwrap_or_else(|| panic!("no `{name}` in {}", archive.display()))
        .3
}

/// The manifest digest an OCI (or docker) archive's `index.json` names.
fn oci_manifest_digest(archive: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&tar_file(archive, "index.json")).expect("index.json");
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    manifests[0]["digest"].as_str().expect("digest").to_string()
}

/// A blob of an OCI archive, parsed as JSON.
fn oci_blob_json(archive: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    serde_json::from_slice(&tar_file(archive, &format!("blobs/sha256/{hex}"))).expect("json blob")
}

/// Every layer of an OCI archive, uncompressed, concatenated.
fn oci_layers(archive: &Path) -> Vec<u8> {
    let manifest = oci_blob_json(archive, &oci_manifest_digest(archive));
    let entries = tar_entries(archive);
    let mut all = Vec::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let hex = layer["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .expect("layer digest");
        let blob = &entries[&format!("blobs/sha256/{hex}")].3;
        let mut plain = Vec::new();
        gunzip(blob, &mut plain);
        all.extend(plain);
    }
    all
}

/// gzip -d, through the system's gzip (the tests carry no decompressor of their own).
fn gunzip(data: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(out)
        .expect("read gzip");
    let _ = writer.join();
    assert!(child.wait().expect("gzip").success(), "gzip -d failed");
}

/// Vertex names in `state` of a `--progress json` run: steps of the Dockerfile only, without
/// the context loads (read on every build) and the exports (which the daemon reports as
/// vertices named `exporting to …`, BuildKit having no other kind).
fn steps_in_state(out: &Output, state: &str) -> BTreeSet<String> {
    progress_events(out)
        .iter()
        .filter(|e| e["state"] == state && e.get("vertex").is_some())
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .filter(|n| !n.starts_with("[internal]") && !n.starts_with("exporting to"))
        .collect()
}

/// Bytes the context transfer moved: the final `transferring context:` status of each
/// transfer, summed.
fn context_bytes(out: &Output) -> u64 {
    progress_events(out)
        .iter()
        .filter(|e| e["status"] == "transferring context:" && e["completed"] == true)
        .map(|e| e["current"].as_u64().expect("current"))
        .sum()
}

/// Waits until `path` (a client's captured stderr) has a line containing `needle`.
fn wait_for_line(path: &Path, needle: &str, timeout: Duration, daemon: &Daemon) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` never showed up; client said:\n{text}\n--- daemon:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to `timeout` until `check` holds.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every entry under `dir` (not `dir` itself), recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if e.file_type().expect("file type").is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// `path mode mtime contents-or-target` of every entry under `dir`, sorted.
fn tree_listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .iter()
        .map(|p| {
            let md = std::fs::symlink_metadata(p).expect("stat");
            let what = if md.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(p).expect("readlink").display())
            } else if md.is_file() {
                sha256_hex(&std::fs::read(p).expect("read"))
            } else {
                String::new()
            };
            format!(
                "{} {:o} {} {what}",
                p.strip_prefix(dir).expect("under dir").display(),
                md.mode(),
                md.mtime()
            )
        })
        .collect();
    out.sort();
    out
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A request to the LLBBridge tagged with the build it belongs to.
fn tagged<T>(message: T, build_ref: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "buildkit-controlapi-buildid",
        build_ref.parse().expect("metadata value"),
    );
    r
}

/// A Control/Solve request without session or exporters.
fn control_solve(build_ref: &str) -> ControlSolve {
    ControlSolve {
        r#ref: build_ref.to_owned(),
        ..Default::default()
    }
}

/// `memobuild lower` of the sandbox's context, decoded.
fn lower(sb: &Sandbox) -> pb::Definition {
    let mut cmd = common::memobuild();
    cmd.arg("lower").arg(sb.context());
    let out = common::run(cmd);
    assert_ok(&out, "memobuild lower");
    pb::Definition::decode(out.stdout.as_slice()).expect("a Definition")
}
