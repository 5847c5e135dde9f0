//! End to end: `memobuild daemon` (BuildKit's Control and LLBBridge services, sessions) on a
//! unix socket, driven by MemoBuild's own BuildKit client (`memobuild build --addr`, which
//! follows buildctl v0.32's flow) and, where the CLI cannot express a request, by gRPC calls of
//! `memobuild_proto`'s clients, on the real containerd and registry from hack/services.sh.
//! Outputs come back through the session (oci, docker, tar, local) identical to a local
//! build's; the context is transferred incrementally; secrets and the ssh agent reach RUN;
//! pushes land; errors are clear and the daemon survives malformed requests, vanishing
//! clients and concurrent builds; DiskUsage and Prune work; SIGTERM stops it cleanly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, wait_timeout};
use common::{Env, Sandbox, assert_ok, error_line, progress_events, stderr, stdout, unique};
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

// ----- outputs ------------------------------------------------------------------------------

const APP: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
WORKDIR /app
COPY --chown=1000:1000 message.txt ./
COPY --chmod=0755 tool.sh /usr/local/bin/tool
RUN echo "built by RUN" > run.txt && chmod 0640 run.txt
USER 1000:1000
CMD ["cat", "/app/message.txt"]
"#;

// Verifies: one build through the daemon with four outputs (oci, local, tar, docker) brings
// each back through the session; the image equals, byte for byte, what a local
// `memobuild build` (no daemon, its own state) writes for the same Dockerfile and context, and
// the printed digest is its manifest's; the image config has the Dockerfile's USER, WORKDIR
// and CMD; the local tree has the files with their modes, all owned by the invoking user (as
// BuildKit's client writes them), and equals the local build's tree (paths, modes, times,
// contents), while the tar output keeps the image's 1000:1000; the docker
// archive has a manifest.json naming the image's layers.
#[test]
fn outputs_come_back_through_the_session_as_a_local_build_writes_them() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", APP)
        .write("message.txt", "message from the context\n")
        .write("tool.sh", "#!/bin/sh\necho tool\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let outputs = |prefix: &str| -> Vec<String> {
        let p = |n: &str| sb.path(&format!("{prefix}-{n}")).display().to_string();
        vec![
            format!("type=oci,dest={}", p("oci.tar")),
            format!("type=local,dest={}", p("local")),
            format!("type=tar,dest={}", p("fs.tar")),
            format!("type=docker,dest={}", p("docker.tar")),
        ]
    };
    let args = |prefix: &str| -> Vec<String> {
        let mut a = vec![
            "--build-arg".to_string(),
            registry_arg(&env),
            "--progress".into(),
            "plain".into(),
        ];
        for o in outputs(prefix) {
            a.push("--output".into());
            a.push(o);
        }
        a
    };
    let remote_args = args("remote");
    let remote_args: Vec<&str> = remote_args.iter().map(String::as_str).collect();
    let remote = sb.build_remote(&daemon, &remote_args);
    assert_ok(&remote, "memobuild build --addr");
    let local_args = args("local");
    let local_args: Vec<&str> = local_args.iter().map(String::as_str).collect();
    let local = sb.build(&env, &local_args);
    assert_ok(&local, "memobuild build (local)");

    // The same image, and the digest the client printed is its manifest's.
    let oci = sb.path("remote-oci.tar");
    let digest = oci_manifest_digest(&oci);
    assert_eq!(stdout(&remote).trim(), digest);
    assert_eq!(oci_manifest_digest(&sb.path("local-oci.tar")), digest);
    assert_eq!(stdout(&local).trim(), digest);
    for f in ["oci.tar", "docker.tar", "fs.tar"] {
        let r = std::fs::read(sb.path(&format!("remote-{f}"))).expect("remote output");
        let l = std::fs::read(sb.path(&format!("local-{f}"))).expect("local output");
        assert!(
            r == l,
            "`{f}` differs between the daemon's build and a local build"
        );
    }

    let manifest = oci_blob_json(&oci, &digest);
    let config = oci_blob_json(&oci, manifest["config"]["digest"].as_str().expect("config"));
    assert_eq!(config["config"]["User"], "1000:1000");
    assert_eq!(config["config"]["WorkingDir"], "/app");
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["cat", "/app/message.txt"])
    );

    // The local tree: contents and modes of the image, owners of the invoking user.
    let tree = sb.path("remote-local");
    assert_eq!(
        std::fs::read_to_string(tree.join("app/message.txt")).expect("message.txt"),
        "message from the context\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("app/run.txt")).expect("run.txt"),
        "built by RUN\n"
    );
    assert_eq!(mode_of(&tree.join("app/message.txt")), 0o644);
    assert_eq!(mode_of(&tree.join("app/run.txt")), 0o640);
    assert_eq!(mode_of(&tree.join("usr/local/bin/tool")), 0o755);
    assert!(tree.join("bin/busybox").is_file());
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let foreign: Vec<String> = walk(&tree)
        .iter()
        .filter_map(|p| {
            let md = std::fs::symlink_metadata(p).expect("stat");
            (md.uid() != uid || md.gid() != gid)
                .then(|| format!("{} {}:{}", p.display(), md.uid(), md.gid()))
        })
        .collect();
    assert!(foreign.is_empty(), "not owned by {uid}:{gid}: {foreign:?}");

    // The same tree a local build writes: paths, types, modes, times, contents.
    assert_eq!(
        tree_listing(&tree),
        tree_listing(&sb.path("local-local")),
        "the local output differs between the daemon's build and a local build"
    );

    // The tar output keeps the image's owners and modes.
    let fs = tar_entries(&sb.path("remote-fs.tar"));
    let (mode, uid, gid, data) = &fs["app/message.txt"];
    assert_eq!((*uid, *gid), (1000, 1000));
    assert_eq!(mode & 0o7777, 0o644);
    assert_eq!(data.as_slice(), b"message from the context\n");
    let (mode, uid, gid, _) = &fs["app/run.txt"];
    assert_eq!((*uid, *gid, mode & 0o7777), (0, 0, 0o640));

    // The docker archive: manifest.json with the image's layers.
    let docker = sb.path("remote-docker.tar");
    let dm: serde_json::Value =
        serde_json::from_slice(&tar_file(&docker, "manifest.json")).expect("manifest.json");
    let dm = dm.as_array().expect("manifest.json is a list");
    assert_eq!(dm.len(), 1, "{dm:?}");
    assert_eq!(
        dm[0]["Layers"].as_array().map(Vec::len),
        manifest["layers"].as_array().map(Vec::len),
        "{dm:?}"
    );
    let config_path = dm[0]["Config"].as_str().expect("Config");
    assert!(
        tar_entries(&docker).contains_key(config_path),
        "{config_path}"
    );
}

// ----- incremental context ------------------------------------------------------------------

const TWO_COPIES: &str = "ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
COPY a.txt /a.txt
RUN cat /a.txt > /a-copy
COPY b.txt /b.txt
RUN cat /b.txt > /b-copy
";

// Verifies: the first build through the daemon transfers only the context files the COPYs
// read; a second build of an unchanged context transfers only the listing and runs nothing (every step
// cached, same image); after one file is edited exactly that file's bytes are transferred, and
// only the COPY reading it and the RUN after it run.
#[test]
fn the_context_is_transferred_incrementally_and_only_what_changed_runs() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", TWO_COPIES)
        .write("a.txt", "a1\n")
        .write("b.txt", "b1\n")
        .write("big.bin", &"x".repeat(200_000));
    let daemon = Daemon::start(&sb, &env, &[]);
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());
    let reg = registry_arg(&env);
    let args = ["--build-arg", &reg, "--progress", "json", "--output", &oci];
    let build = || {
        let started = Instant::now();
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, "memobuild build --addr");
        // Every vertex that started completed (none is left hanging in the client's view).
        let started_ids: BTreeSet<String> = progress_events(&out)
            .iter()
            .filter(|e| e["state"] == "started")
            .filter_map(|e| e["vertex"].as_str().map(str::to_string))
            .collect();
        let completed_ids: BTreeSet<String> = progress_events(&out)
            .iter()
            .filter(|e| e["state"] == "completed")
            .filter_map(|e| e["vertex"].as_str().map(str::to_string))
            .collect();
        assert_eq!(started_ids, completed_ids, "{}", stderr(&out));
        (out, started.elapsed())
    };

    let (first, _) = build();
    assert_eq!(
        steps_in_state(&first, "started").len(),
        5,
        "{:?}",
        steps_in_state(&first, "started")
    );
    // Only the files the COPYs read are transferred (the frontend asks for those paths, as
    // BuildKit's does): not big.bin, not the Dockerfile again. The figure is what fsutil
    // counts: every packet's bytes, listings and requests included.
    let first_bytes = context_bytes(&first);
    assert!((6..2_000).contains(&first_bytes), "{first_bytes} bytes");

    // The daemon ends the Status stream when the build is done: the client does not wait for
    // its 5 s of silence.
    let (second, took) = build();
    assert!(
        took < Duration::from_secs(5),
        "a cached build took {took:?}"
    );
    assert!(
        steps_in_state(&second, "started").is_empty(),
        "{:?}",
        steps_in_state(&second, "started")
    );
    assert_eq!(
        steps_in_state(&second, "cached").len(),
        5,
        "{:?}",
        steps_in_state(&second, "cached")
    );
    // Nothing changed: the listing goes over again, no file's content does.
    let listing_bytes = context_bytes(&second);
    assert!(listing_bytes < first_bytes, "{listing_bytes} bytes");
    assert_eq!(stdout(&second), stdout(&first));

    let edited = "b2, longer than before\n";
    sb.write("b.txt", edited);
    let (third, _) = build();
    // The edited file's bytes go over, with a packet's framing, and nothing else.
    let edit_bytes = context_bytes(&third) - listing_bytes;
    assert!(
        (edited.len() as u64..edited.len() as u64 + 64).contains(&edit_bytes),
        "{edit_bytes} bytes more than the listing"
    );
    let ran = steps_in_state(&third, "started");
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(
        ran.iter()
            .all(|n| n.contains("COPY b.txt") || n.contains("/b-copy")),
        "{ran:?}"
    );
    assert!(
        steps_in_state(&third, "cached")
            .iter()
            .any(|n| n.contains("COPY a.txt")),
        "{:?}",
        steps_in_state(&third, "cached")
    );
    assert_ne!(stdout(&third), stdout(&first));
}

// ----- secrets and ssh ----------------------------------------------------------------------

// Verifies: `--secret id=tok,src=FILE` and `--secret id=envtok,env=VAR` are served by the
// client's session and reach `RUN --mount=type=secret` as a file (default path and a target)
// and as an environment variable (the steps record their hashes); neither value is in any
// layer of the image or in the progress; the mount is gone after the step; a required secret
// the client does not have fails the build naming it.
#[test]
fn secrets_reach_run_through_the_session_and_stay_out_of_the_image() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let file_value = format!("file-secret-{}", unique("v"));
    let env_value = format!("env-secret-{}", unique("v"));
    std::fs::write(sb.path("tok"), &file_value).expect("write secret");
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}
RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /tok.sum
RUN --mount=type=secret,id=tok,target=/etc/app/token sha256sum /etc/app/token | cut -d' ' -f1 > /target.sum
RUN --mount=type=secret,id=envtok,env=MYTOK printf %s \"$MYTOK\" | sha256sum | cut -d' ' -f1 > /env.sum
RUN (test -e /run/secrets/tok && echo present || echo gone) > /after
",
            env.busybox()
        ),
    )
    .write(
        "Dockerfile.missing",
        &format!(
            "FROM {}\nRUN --mount=type=secret,id=needed,required true\n",
            env.busybox()
        ),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let secret_file = format!("id=tok,src={}", sb.path("tok").display());
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());
    let local = format!("type=local,dest={}", sb.path("fs").display());
    let mut cmd = sb.remote_command(
        &daemon,
        &[
            "--progress",
            "plain",
            "--secret",
            &secret_file,
            "--secret",
            "id=envtok,env=E2E_SECRET_VAR",
            "--output",
            &oci,
            "--output",
            &local,
        ],
    );
    cmd.env("E2E_SECRET_VAR", &env_value);
    let out = common::run(cmd);
    assert_ok(&out, "memobuild build --addr --secret");

    let read = |f: &str| std::fs::read_to_string(sb.path("fs").join(f)).expect("output file");
    assert_eq!(read("tok.sum").trim(), sha256_hex(file_value.as_bytes()));
    assert_eq!(read("target.sum").trim(), sha256_hex(file_value.as_bytes()));
    assert_eq!(read("env.sum").trim(), sha256_hex(env_value.as_bytes()));
    assert_eq!(read("after").trim(), "gone");
    assert!(!sb.path("fs/etc/app/token").exists());

    let layers = oci_layers(&sb.path("out.tar"));
    assert!(!layers.is_empty());
    for value in [&file_value, &env_value] {
        assert!(
            !layers.windows(value.len()).any(|w| w == value.as_bytes()),
            "a secret is in a layer"
        );
        assert!(!stderr(&out).contains(value.as_str()), "{}", stderr(&out));
    }

    // A required secret the client was not given.
    let dockerfile = sb.context().join("Dockerfile.missing");
    let out = sb.build_remote(
        &daemon,
        &[
            "--progress",
            "plain",
            "-f",
            &dockerfile.display().to_string(),
            "--secret",
            &secret_file,
        ],
    );
    assert!(!out.status.success(), "must fail:\n{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("needed"), "{line}");
    assert!(line.contains("required"), "{line}");
}

// Verifies: `--ssh default` (the agent at $SSH_AUTH_SOCK) and `--ssh keys=KEYFILE` (a key file
// the client loads into an agent of its own) are forwarded through the session to
// `RUN --mount=type=ssh` steps: inside, SSH_AUTH_SOCK names the mount and `ssh-add -l` lists
// exactly the forwarded agent's key.
#[test]
fn ssh_agents_are_forwarded_through_the_session() {
    let Some(env) = Env::get() else { return };
    if !common::ssh::have_ssh_tools() {
        return;
    }
    let sb = Sandbox::new();
    let agent = common::ssh::Agent::start(&sb);
    let (user_key, user_fp) = common::ssh::keygen(&sb, "id_user");
    agent.add(&user_key);
    let (file_key, file_fp) = common::ssh::keygen(&sb, "id_file");
    common::ssh::stage_ssh_add(&sb);
    let ssh_add = common::ssh::SSH_ADD;
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}
RUN --mount=type=bind,source=ssh,target=/ssh --mount=type=ssh echo \"$SSH_AUTH_SOCK\" > /sock && {ssh_add} -l > /default-keys
RUN --mount=type=bind,source=ssh,target=/ssh --mount=type=ssh,id=keys {ssh_add} -l > /file-keys
",
            env.busybox()
        ),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let keys = format!("keys={}", file_key.display());
    let local = format!("type=local,dest={}", sb.path("fs").display());
    let mut cmd = sb.remote_command(
        &daemon,
        &[
            "--progress",
            "plain",
            "--ssh",
            "default",
            "--ssh",
            &keys,
            "--output",
            &local,
        ],
    );
    cmd.env("SSH_AUTH_SOCK", &agent.socket);
    let out = common::run(cmd);
    assert_ok(&out, "memobuild build --addr --ssh");
    let read = |f: &str| std::fs::read_to_string(sb.path("fs").join(f)).expect("output file");
    assert_eq!(read("sock").trim(), "/run/buildkit/ssh_agent.0");
    let default_keys = read("default-keys");
    assert!(
        default_keys.contains(&user_fp) && !default_keys.contains(&file_fp),
        "{default_keys}"
    );
    let file_keys = read("file-keys");
    assert!(
        file_keys.contains(&file_fp) && !file_keys.contains(&user_fp),
        "{file_keys}"
    );
}

// ----- push ---------------------------------------------------------------------------------

// Verifies: `-t REGISTRY/daemon-test/NAME:1 -t …:2 --push` through the daemon pushes both tags
// to the registry; each tag's manifest, fetched over HTTP, has the digest the client printed.
#[test]
fn push_lands_in_the_registry_under_every_tag() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", APP)
        .write("message.txt", "pushed through the daemon\n")
        .write("tool.sh", "#!/bin/sh\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let repo = format!("daemon-test/{}", unique("app"));
    let tag1 = format!("{}/{repo}:1", env.registry);
    let tag2 = format!("{}/{repo}:2", env.registry);
    let reg = registry_arg(&env);
    let out = sb.build_remote(
        &daemon,
        &[
            "--build-arg",
            &reg,
            "--progress",
            "plain",
            "-t",
            &tag1,
            "-t",
            &tag2,
            "--push",
        ],
    );
    assert_ok(&out, "memobuild build --addr --push");
    let digest = stdout(&out).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest:?}");
    for tag in ["1", "2"] {
        let resp = common::http::request(
            &env.registry,
            "GET",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )],
            b"",
        );
        assert_eq!(resp.status, 200, "{tag}: {}", resp.text());
        assert_eq!(
            resp.header("Docker-Content-Digest"),
            Some(digest.as_str()),
            "{tag}"
        );
        assert_eq!(
            format!("sha256:{}", sha256_hex(&resp.body)),
            digest,
            "{tag}"
        );
    }
}

// ----- buildx's flags -------------------------------------------------------------------------

// Verifies: the frontend attributes buildx's own flags become reach the daemon's frontend and
// do there what they do on buildkitd: `--build-context assets=DIR` is the local named context
// `assets` (sent as `local:assets` with a shared key) whose own `.dockerignore` keeps a file
// out (the daemon reads it, as `[context assets] load .dockerignore`); `--label` is in the
// image config after the Dockerfile's LABEL; `--add-host` is in RUN's /etc/hosts;
// `--network none` leaves RUN only the loopback interface; `--metadata-file` holds the
// exporter response (`containerimage.digest` = the printed manifest digest,
// `containerimage.config.digest`, the descriptor as JSON) and `--iidfile` the config digest.
#[test]
fn buildx_flags_reach_the_frontend() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nLABEL from.dockerfile=1 overridden=dockerfile\nCOPY --from=assets . /assets/\nRUN grep myhost /etc/hosts > /hosts.txt && cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' > /ifaces.txt\n",
            env.busybox()
        ),
    );
    let assets = sb.path("assets");
    std::fs::create_dir_all(&assets).expect("mkdir assets");
    std::fs::write(assets.join("keep.txt"), "kept\n").expect("write");
    std::fs::write(assets.join("drop.tmp"), "dropped\n").expect("write");
    std::fs::write(assets.join(".dockerignore"), "*.tmp\n").expect("write");
    let daemon = Daemon::start(&sb, &env, &[]);
    let (oci, local) = (sb.path("oci.tar"), sb.path("fs"));
    let (meta, iid) = (sb.path("meta.json"), sb.path("iid"));
    let context = format!("assets={}", assets.display());
    let flags = [
        "--progress",
        "plain",
        "--build-context",
        &context,
        "--label",
        "overridden=flag",
        "--label",
        "org.example.flag=yes",
        "--add-host",
        "myhost:10.1.2.3",
        "--network",
        "none",
    ];
    let (meta_arg, iid_arg) = (meta.display().to_string(), iid.display().to_string());
    let oci_arg = format!("type=oci,dest={}", oci.display());
    let mut image_args = flags.to_vec();
    image_args.extend([
        "--metadata-file",
        &meta_arg,
        "--iidfile",
        &iid_arg,
        "--output",
        &oci_arg,
    ]);
    let out = sb.build_remote(&daemon, &image_args);
    assert_ok(&out, "memobuild build --addr with buildx's flags");
    assert!(
        stderr(&out).contains("[context assets] load .dockerignore"),
        "{}",
        stderr(&out)
    );
    // The files, from the cache (an image ID file and a local output do not go together).
    let local_arg = format!("type=local,dest={}", local.display());
    let mut local_args = flags.to_vec();
    local_args.extend(["--output", &local_arg]);
    let files = sb.build_remote(&daemon, &local_args);
    assert_ok(&files, "the same build, to a directory");
    let listing: BTreeSet<String> = std::fs::read_dir(local.join("assets"))
        .expect("assets")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listing,
        BTreeSet::from([".dockerignore".to_string(), "keep.txt".to_string()])
    );
    assert_eq!(
        std::fs::read_to_string(local.join("hosts.txt")).expect("hosts.txt"),
        "10.1.2.3\tmyhost\n"
    );
    assert_eq!(
        std::fs::read_to_string(local.join("ifaces.txt")).expect("ifaces.txt"),
        "lo\n"
    );

    let digest = stdout(&out).trim().to_string();
    assert_eq!(oci_manifest_digest(&oci), digest);
    let manifest = oci_blob_json(&oci, &digest);
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config = oci_blob_json(&oci, config_digest);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["from.dockerfile"], "1", "{config}");
    assert_eq!(labels["overridden"], "flag", "{config}");
    assert_eq!(labels["org.example.flag"], "yes", "{config}");

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("metadata file")).expect("json");
    assert_eq!(meta["containerimage.digest"], digest.as_str(), "{meta}");
    assert_eq!(
        meta["containerimage.config.digest"], config_digest,
        "{meta}"
    );
    assert_eq!(
        meta["containerimage.descriptor"]["digest"],
        digest.as_str(),
        "{meta}"
    );
    assert_eq!(
        std::fs::read_to_string(&iid).expect("iidfile"),
        config_digest
    );
}

// Verifies: a build asking for cache backends MemoBuild does not implement (`--cache-to
// type=registry`, `--cache-from REF`) is not failed: it builds, and warnings say the request
// was ignored and which cache is used instead. A step for a platform this machine cannot run
// (`--platform linux/s390x`, a binary the kernel refuses) fails with an error naming the
// platform, not only the bare "exec format error" exit.
#[test]
fn subrequests_answer_as_buildx_prints_them() {
    // `--call=outline`, `--call=targets` and `--check` (buildx's subrequests) are answered from
    // the Dockerfile with what buildx prints, and build nothing: no step of the Dockerfile runs.
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let dockerfile = format!(
        "# BASE the base image\nARG BASE={}\nfrom ${{BASE}} AS build\n# VERSION the version to stamp\nARG VERSION=1.0\nRUN --mount=type=secret,id=tok echo $VERSION > /v\n\n# release the shipped image\nFROM build AS release\nENV foo bar\n",
        env.busybox()
    );
    sb.write("Dockerfile", &dockerfile);
    let daemon = Daemon::start(&sb, &env, &[]);

    let outline = sb.build_remote(&daemon, &["--call=outline"]);
    assert_ok(&outline, "--call=outline");
    let text = stdout(&outline);
    assert!(text.contains("TARGET:      release"), "{text}");
    assert!(text.contains("DESCRIPTION: the shipped image"), "{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert!(
        rows.contains(&vec!["BASE", &env.busybox(), "the base image"]),
        "{text}"
    );
    assert!(
        rows.contains(&vec!["VERSION", "1.0", "the version to stamp"]),
        "{text}"
    );
    assert!(rows.contains(&vec!["tok"]), "the secret is listed: {text}");
    // As with BuildKit's frontend, an outline converts the target, so its lint findings are
    // reported.
    assert!(
        stderr(&outline).contains("FromAsCasing"),
        "{}",
        stderr(&outline)
    );

    let targets = sb.build_remote(&daemon, &["--call=targets"]);
    assert_ok(&targets, "--call=targets");
    let text = stdout(&targets);
    assert!(text.contains("build"), "{text}");
    assert!(
        text.contains("release (default) the shipped image"),
        "{text}"
    );

    // Findings are printed with the lines they are about; buildx exits 1 when there are any.
    let check = sb.build_remote(&daemon, &["--check"]);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    let text = format!("{}{}", stdout(&check), stderr(&check));
    assert!(
        text.contains(
            "WARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
        ),
        "{text}"
    );
    assert!(text.contains(" 3 | >>> from ${BASE} AS build"), "{text}");
    assert!(text.contains("WARNING: LegacyKeyValueFormat"), "{text}");
    for out in [&outline, &targets, &check] {
        assert!(
            !stderr(out).contains("[build ") && !stderr(out).contains("[release "),
            "a subrequest runs no step: {}",
            stderr(out)
        );
    }

    // `# check=error=true` makes the findings an error naming the rules.
    sb.write("Dockerfile", &format!("# check=error=true\n{dockerfile}"));
    let strict = sb.build_remote(&daemon, &["--check"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(
        stderr(&strict).contains("lint violation found for rules:"),
        "{}",
        stderr(&strict)
    );
    // A build of it fails the same way, the findings shown with their lines as BuildKit shows
    // them.
    let failed = sb.build_remote(&daemon, &[]);
    assert_eq!(failed.status.code(), Some(1));
    let text = stderr(&failed);
    assert!(text.contains("lint violation found for rules:"), "{text}");
    assert!(
        text.contains(
            "warning: FromAsCasing: 'AS' and 'from' keywords' casing do not match (line 4)"
        ),
        "{text}"
    );

    // A clean Dockerfile passes.
    sb.write("Dockerfile", &format!("FROM {}\nRUN true\n", env.busybox()));
    let clean = sb.build_remote(&daemon, &["--check"]);
    assert_ok(&clean, "--check of a clean Dockerfile");
    assert!(
        stdout(&clean).contains("Check complete, no warnings found."),
        "{}",
        stdout(&clean)
    );
}

#[test]
fn unsupported_cache_backends_warn_and_foreign_platforms_are_named() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo ok > /ok\n", env.busybox()),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let cache_ref = format!("{}/daemon-test/cache", env.registry);
    let to = format!("type=registry,ref={cache_ref}");
    let dest = format!("type=local,dest={}", sb.path("fs").display());
    let out = sb.build_remote(
        &daemon,
        &[
            "--progress",
            "plain",
            "--cache-to",
            &to,
            "--cache-from",
            &cache_ref,
            "--output",
            &dest,
        ],
    );
    assert_ok(&out, "a build with --cache-to/--cache-from");
    let text = stderr(&out);
    for w in [
        "cache export `registry` is not supported by MemoBuild and was ignored",
        "cache import `registry` is not supported by MemoBuild and was ignored",
    ] {
        assert!(text.contains(w), "no `{w}` in:\n{text}");
    }
    assert!(text.contains("remote-cache"), "{text}");
    assert_eq!(
        std::fs::read_to_string(sb.path("fs/ok")).expect("ok"),
        "ok\n"
    );

    if std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-s390x").exists() {
        eprintln!("SKIPPED the foreign-platform half: this machine runs s390x through qemu");
        return;
    }
    // An ELF header for a machine no kernel runs (e_machine 0x4d42): exec fails with ENOEXEC.
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.extend([0u8; 8]);
    elf.extend(2u16.to_le_bytes());
    elf.extend(0x4d42u16.to_le_bytes());
    elf.extend([0u8; 44]);
    let fake = sb.context().join("sh");
    std::fs::write(&fake, &elf).expect("write fake sh");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    sb.write("Dockerfile", "FROM scratch\nCOPY sh /bin/sh\nRUN true\n");
    let out = sb.build_remote(
        &daemon,
        &["--progress", "plain", "--platform", "linux/s390x"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("the step is for platform linux/s390x, which this machine cannot run"),
        "{line}"
    );
}

// ----- errors -------------------------------------------------------------------------------

// Verifies: a Dockerfile syntax error comes back as one line naming `Dockerfile:LINE`; a
// failing RUN shows the step's last output lines (the tail, not all of it) above an error
// naming the line and the exit code. Both errors carry BuildKit's source detail, which the
// client (as buildx) prints as the Dockerfile's lines with the failing one marked.
#[test]
fn dockerfile_and_step_errors_reach_the_client() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN true\nFORM x\n", env.busybox()),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let out = sb.build_remote(&daemon, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.starts_with("error: "), "{}", stderr(&out));
    assert!(line.contains("Dockerfile:3"), "{line}");
    assert!(
        line.to_lowercase().contains("unknown instruction"),
        "{line}"
    );
    assert!(
        stderr(&out).contains("Dockerfile:3\n--------------------\n")
            && stderr(&out).contains("   3 | >>> FORM x\n"),
        "{}",
        stderr(&out)
    );

    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN for i in $(seq 1 15); do echo output-line-$i; done; exit 7\n",
            env.busybox()
        ),
    );
    let out = sb.build_remote(&daemon, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("Dockerfile:2"), "{line}");
    assert!(line.contains("exit code: 7"), "{line}");
    assert!(
        stderr(&out).contains("   2 | >>> RUN for i in"),
        "{}",
        stderr(&out)
    );
    // The failure block above the error: the step's name, then its last lines.
    let text = stderr(&out);
    let block: Vec<&str> = text
        .split("------\n")
        .find(|b| b.starts_with(" > ") && b.contains("RUN for i"))
        .unwrap_or_else(|| panic!("no failure block:\n{text}"))
        .lines()
        .collect();
    assert!(
        block.last().is_some_and(|l| l.ends_with("output-line-15")),
        "{block:?}"
    );
    assert!(
        !block.iter().any(|l| l.ends_with("output-line-1")),
        "the whole output instead of its tail: {block:?}"
    );
}

// Verifies: host networking and privileged steps run only when the client asks for the
// entitlement and the daemon grants it, in the daemon's own Dockerfile frontend too (a step
// with `--network=host` never reaches the host's loopback unasked); asking for an entitlement
// the daemon does not grant fails the request up front, as buildkitd does.
#[test]
fn entitlements_are_asked_for_and_granted() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN --network=host true\n", env.busybox()),
    );
    let strict = Daemon::start(&sb, &env, &[]);
    let out = sb.build_remote(&strict, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("entitlement `network.host`"), "{line}");
    let out = sb.build_remote(&strict, &["--progress", "plain", "--allow", "network.host"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("granting entitlement network.host is not allowed"),
        "{line}"
    );
    drop(strict);

    let granting = Daemon::start(&sb, &env, &["--allow-insecure-entitlement", "network.host"]);
    let out = sb.build_remote(&granting, &["--progress", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--allow network.host"),
        "{}",
        stderr(&out)
    );
    let out = sb.build_remote(
        &granting,
        &["--progress", "plain", "--allow", "network.host"],
    );
    assert_ok(&out, "a granted entitlement");
}

/// A definition whose terminal names an op the definition does not hold.
fn dangling_definition() -> pb::Definition {
    DefinitionBuilder::new().finish(pb::Input::new(format!("sha256:{}", "0".repeat(64)), 0))
}

// Verifies: requests the CLI cannot make are refused with InvalidArgument naming what is
// wrong, and the daemon goes on serving: an unknown frontend in Control/Solve and in
// LLBBridge/Solve (whose error, returned, fails the waiting Control/Solve); a Definition of
// garbage bytes and one whose terminal names a missing op; an unknown exporter type. A build
// through the CLI then succeeds.
#[test]
fn malformed_requests_are_refused_and_the_daemon_keeps_serving() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo still serving > /ok\n", env.busybox()),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        let invalid = |what: &str, r: Result<tonic::Response<_>, tonic::Status>, needle: &str| {
            let status: tonic::Status = match r {
                Ok(_) => panic!("{what}: accepted"),
                Err(s) => s,
            };
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{what}: {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{what}: {:?}",
                status.message()
            );
        };

        // Unknown frontend, Control level.
        let r = control
            .solve(ControlSolve {
                frontend: "nope.v0".into(),
                ..control_solve(&common::unique("frontend"))
            })
            .await;
        invalid("Control/Solve frontend nope.v0", r, "nope.v0");

        // Unknown frontend, LLBBridge level, inside a gateway-mode build.
        let build_ref = common::unique("gateway");
        let solve = tokio::spawn({
            let mut control = control.clone();
            let req = control_solve(&build_ref);
            async move { control.solve(req).await }
        });
        let mut gateway = daemon.gateway().await;
        let pong = gateway
            .ping(tagged(PingRequest {}, &build_ref))
            .await
            .expect("ping")
            .into_inner();
        assert!(pong.frontend_api_caps.iter().any(|c| c.id == "return"));
        let r = gateway
            .solve(tagged(
                GatewaySolve {
                    frontend: "nope.v0".into(),
                    allow_result_return: true,
                    ..Default::default()
                },
                &build_ref,
            ))
            .await;
        let status = r.expect_err("LLBBridge/Solve nope.v0 accepted");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("nope.v0"), "{status:?}");
        gateway
            .r#return(tagged(
                ReturnRequest {
                    result: None,
                    error: Some(memobuild_proto::rpc::Status {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        details: Vec::new(),
                    }),
                },
                &build_ref,
            ))
            .await
            .expect("return");
        let solved = tokio::time::timeout(Duration::from_secs(30), solve)
            .await
            .expect("the Control/Solve ends after Return")
            .expect("task");
        invalid(
            "gateway-mode Control/Solve after Return{error}",
            solved,
            "nope.v0",
        );

        // Malformed definitions.
        let r = control
            .solve(ControlSolve {
                definition: Some(pb::Definition {
                    def: vec![b"\xff\xffnot an op".to_vec()],
                    ..Default::default()
                }),
                ..control_solve(&common::unique("garbage"))
            })
            .await;
        invalid("garbage definition", r, "definition");
        let r = control
            .solve(ControlSolve {
                definition: Some(dangling_definition()),
                ..control_solve(&common::unique("dangling"))
            })
            .await;
        invalid("dangling terminal", r, "definition");

        // Unknown exporter.
        let r = control
            .solve(ControlSolve {
                exporters: vec![Exporter {
                    r#type: "nope".into(),
                    attrs: BTreeMap::new(),
                }],
                definition: Some(dangling_definition()),
                ..control_solve(&common::unique("exporter"))
            })
            .await;
        invalid("unknown exporter", r, "nope");
    });

    let local = format!("type=local,dest={}", sb.path("fs").display());
    let out = sb.build_remote(&daemon, &["--progress", "plain", "--output", &local]);
    assert_ok(&out, "a build after the malformed requests");
    assert_eq!(
        std::fs::read_to_string(sb.path("fs/ok")).expect("ok"),
        "still serving\n"
    );
}

// Verifies: the raw-LLB flow of buildctl (`buildctl build < def.pb`, §2.B) on a definition
// `memobuild lower` wrote: a session-less gateway-mode Control/Solve, LLBBridge/Solve with the
// Definition, ReadFile of what its RUN wrote from the returned reference, and Return, after
// which the Control/Solve succeeds; and the old clients' path, a Control/Solve carrying the
// Definition, which runs it (a failing RUN fails it with its exit code).
#[test]
fn raw_llb_from_memobuild_lower_solves_over_the_gateway_and_control() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let marker = unique("raw");
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {marker} > /raw.txt\n", env.busybox()),
    );
    let def = lower(&sb);
    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {marker} && exit 3\n", env.busybox()),
    );
    let failing = lower(&sb);
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let control = daemon.control().await;
        let build_ref = unique("llb");
        let solve = tokio::spawn({
            let mut control = control.clone();
            let req = control_solve(&build_ref);
            async move { control.solve(req).await }
        });
        let mut gateway = daemon.gateway().await;
        gateway
            .ping(tagged(PingRequest {}, &build_ref))
            .await
            .expect("ping");
        let solved = gateway
            .solve(tagged(
                GatewaySolve {
                    definition: Some(def.clone()),
                    allow_result_return: true,
                    ..Default::default()
                },
                &build_ref,
            ))
            .await
            .expect("LLBBridge/Solve of the definition")
            .into_inner();
        let reference = match solved.result.and_then(|r| r.result) {
            Some(result::Result::Ref(r)) => r,
            other => panic!("no reference: {other:?}"),
        };
        assert!(!reference.id.is_empty());
        let data = gateway
            .read_file(tagged(
                ReadFileRequest {
                    r#ref: reference.id.clone(),
                    file_path: "/raw.txt".into(),
                    ..Default::default()
                },
                &build_ref,
            ))
            .await
            .expect("ReadFile")
            .into_inner()
            .data;
        assert_eq!(String::from_utf8_lossy(&data), format!("{marker}\n"));
        gateway
            .r#return(tagged(
                ReturnRequest {
                    result: Some(memobuild_proto::gateway::Result {
                        result: Some(result::Result::Ref(Ref {
                            id: reference.id,
                            def: None,
                        })),
                        ..Default::default()
                    }),
                    error: None,
                },
                &build_ref,
            ))
            .await
            .expect("return");
        tokio::time::timeout(Duration::from_secs(30), solve)
            .await
            .expect("the Control/Solve ends after Return")
            .expect("task")
            .expect("the Control/Solve succeeds");

        // The old path: the Definition in Control/Solve.
        let mut control = control.clone();
        control
            .solve(ControlSolve {
                definition: Some(def),
                ..control_solve(&unique("legacy"))
            })
            .await
            .expect("Control/Solve of the definition");
        let status = control
            .solve(ControlSolve {
                definition: Some(failing),
                ..control_solve(&unique("legacy-fail"))
            })
            .await
            .expect_err("a failing RUN fails the solve");
        assert!(status.message().contains("exit code: 3"), "{status:?}");
    });
}

/// `memobuild lower` of `dockerfile` (a Dockerfile that reads no context).
fn lower_text(dockerfile: &str) -> pb::Definition {
    let sb = Sandbox::new();
    sb.write("Dockerfile", dockerfile);
    lower(&sb)
}

// Verifies: buildx's frontend inputs (bake's `target:` contexts, remote bake definitions) work
// over LLBBridge: a `context:base=input:base` stage is the client's definition of `base`, with
// the env and working directory of its `input-metadata:base` config (not of the Dockerfile it
// came from); the `dockerfile` and `context` inputs stand for the Dockerfile's directory and
// the main context, so the build needs no session at all; the result's files and config are
// as a user would check them, and an input the request does not carry is named in the error.
#[test]
fn frontend_inputs_stand_for_targets_the_client_built() {
    use base64::Engine as _;
    let Some(env) = Env::get() else { return };
    let marker = unique("input");
    let base = lower_text(&format!(
        "FROM {}\nENV BASEVAR=from-the-dockerfile\nWORKDIR /srv\nRUN echo {marker} > /srv/marker\n",
        env.busybox()
    ));
    let dockerfile = lower_text(
        "FROM scratch\nCOPY <<'EOF' /Dockerfile\nFROM base\nCOPY ctx.txt /srv/ctx.txt\nRUN echo \"$BASEVAR $(pwd)\" > env.txt\nEOF\n",
    );
    let context = lower_text("FROM scratch\nCOPY <<'EOF' /ctx.txt\nfrom the context input\nEOF\n");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "BASEVAR=from-metadata"],
            "WorkingDir": "/srv"
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    let metadata = serde_json::json!({
        "containerimage.config": base64::engine::general_purpose::STANDARD
            .encode(config.to_string()),
    });
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let control = daemon.control().await;
        let build_ref = unique("inputs");
        let solve = tokio::spawn({
            let mut control = control.clone();
            let req = control_solve(&build_ref);
            async move { control.solve(req).await }
        });
        let mut gateway = daemon.gateway().await;
        let request = |opts: &[(&str, String)]| GatewaySolve {
            frontend: "dockerfile.v0".into(),
            frontend_opt: opts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            frontend_inputs: [
                ("base".to_owned(), base.clone()),
                ("dockerfile".to_owned(), dockerfile.clone()),
                ("context".to_owned(), context.clone()),
            ]
            .into(),
            allow_result_return: true,
            ..Default::default()
        };
        let solved = gateway
            .solve(tagged(
                request(&[
                    ("context:base", "input:base".into()),
                    ("input-metadata:base", metadata.to_string()),
                ]),
                &build_ref,
            ))
            .await
            .expect("LLBBridge/Solve with frontend inputs")
            .into_inner()
            .result
            .expect("a result");
        let image: serde_json::Value = serde_json::from_slice(
            solved
                .metadata
                .get("containerimage.config")
                .expect("the image config"),
        )
        .expect("config JSON");
        assert_eq!(image["config"]["WorkingDir"], "/srv", "{image}");
        assert!(
            image["config"]["Env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == "BASEVAR=from-metadata")),
            "{image}"
        );
        let reference = match solved.result {
            Some(result::Result::Ref(r)) => r,
            other => panic!("no reference: {other:?}"),
        };
        for (path, want) in [
            ("/srv/marker", format!("{marker}\n")),
            ("/srv/env.txt", "from-metadata /srv\n".to_owned()),
            ("/srv/ctx.txt", "from the context input\n".to_owned()),
        ] {
            let data = gateway
                .read_file(tagged(
                    ReadFileRequest {
                        r#ref: reference.id.clone(),
                        file_path: path.into(),
                        ..Default::default()
                    },
                    &build_ref,
                ))
                .await
                .unwrap_or_else(|e| panic!("ReadFile {path}: {e}"))
                .into_inner()
                .data;
            assert_eq!(String::from_utf8_lossy(&data), want, "{path}");
        }

        let missing = gateway
            .solve(tagged(
                request(&[("context:base", "input:nope".into())]),
                &build_ref,
            ))
            .await
            .expect_err("an input the request lacks");
        assert!(
            missing.message().contains("invalid input `nope`")
                && missing.message().contains("base"),
            "{missing:?}"
        );
        gateway
            .r#return(tagged(
                ReturnRequest {
                    result: Some(memobuild_proto::gateway::Result {
                        result: Some(result::Result::Ref(reference)),
                        ..Default::default()
                    }),
                    error: None,
                },
                &build_ref,
            ))
            .await
            .expect("return");
        tokio::time::timeout(Duration::from_secs(30), solve)
            .await
            .expect("the Control/Solve ends after Return")
            .expect("task")
            .expect("the Control/Solve succeeds");
    });
}

// Verifies: MemoBuild's frontend run as a gateway client (`--client-frontend`: the Dockerfile
// read through a solved local source and ReadFile, base images through ResolveImageConfig, the
// final definition solved and returned with its config over LLBBridge, as a `# syntax=` image
// runs) builds the same image, byte for byte, as the daemon's own `dockerfile.v0`; progress
// shows the same steps; lint findings arrive through `Warn` with their lines; subrequests
// answer the same; a Dockerfile error names its line.
#[test]
fn the_frontend_as_a_gateway_client_builds_what_the_daemons_frontend_builds() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let marker = unique("gw");
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {} as base\nWORKDIR /app\nCOPY a.txt ./\nRUN echo {marker} > run.txt\nENV MODE prod\nCMD [\"cat\", \"/app/a.txt\"]\n",
            env.busybox()
        ),
    )
    .write("a.txt", "from the context\n")
    .write(".dockerignore", "ignored.txt\n")
    .write("ignored.txt", "never sent\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let daemons = sb.path("daemons.tar");
    let clients = sb.path("clients.tar");
    let built = sb.build_remote(
        &daemon,
        &["--output", &format!("type=oci,dest={}", daemons.display())],
    );
    assert_ok(&built, "build with the daemon's frontend");
    let client = sb.build_remote(
        &daemon,
        &[
            "--client-frontend",
            "--output",
            &format!("type=oci,dest={}", clients.display()),
        ],
    );
    assert_ok(&client, "build with the frontend as a gateway client");
    assert_eq!(oci_manifest_digest(&clients), oci_manifest_digest(&daemons));
    let text = stderr(&client);
    for step in [
        "[internal] load build definition from Dockerfile",
        "[internal] load .dockerignore",
        &format!("[internal] load metadata for {}", env.busybox()),
        "[internal] load build context",
        "[4/4] RUN echo",
    ] {
        assert!(text.contains(step), "`{step}` is shown: {text}");
    }
    // The lint finding (FromAsCasing, LegacyKeyValueFormat) came through `Warn`.
    assert!(
        text.contains("FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"),
        "{text}"
    );
    assert!(text.contains("LegacyKeyValueFormat"), "{text}");

    let outline = |extra: &[&str]| {
        let mut args = vec!["--call=outline"];
        args.extend_from_slice(extra);
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, "--call=outline");
        stdout(&out)
    };
    assert_eq!(outline(&["--client-frontend"]), outline(&[]));

    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN true\nCOPY\n", env.busybox()),
    );
    let failed = sb.build_remote(&daemon, &["--client-frontend"]);
    assert_eq!(failed.status.code(), Some(1));
    let text = stderr(&failed);
    assert!(
        text.contains("Dockerfile:3"),
        "the failing line is named: {text}"
    );
}

// Verifies: `# syntax=IMAGE` makes the daemon run that frontend image (`gateway.v0`) as a
// container whose stdin/stdout carry LLBBridge, as buildkitd does; with MemoBuild's own
// frontend image it builds the same image, byte for byte, as the daemon's in-process frontend
// (the syntax line aside, which changes only the Dockerfile text, not the definition);
// `--call=outline` works through it; `# syntax=docker/dockerfile:1` is served in process
// without a pull and says so; an image that is no frontend fails with its output.
#[test]
fn syntax_images_run_as_gateway_frontends() {
    let Some(env) = Env::get() else { return };
    let image = common::daemon::frontend_image(&env);
    let sb = Sandbox::new();
    let marker = unique("syntax");
    let body = format!(
        "FROM {}\nARG GREETING=hello\nWORKDIR /srv\nCOPY a.txt ./\nRUN echo {marker} $GREETING > run.txt\nUSER 1000\nCMD [\"cat\", \"/srv/run.txt\"]\n",
        env.busybox()
    );
    sb.write("a.txt", "context file\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let build = |dockerfile: &str, name: &str, extra: &[&str]| {
        sb.write("Dockerfile", dockerfile);
        let dest = sb.path(name);
        let mut args = vec![
            "--output".to_owned(),
            format!("type=oci,dest={}", dest.display()),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, name);
        (dest, stderr(&out))
    };
    let (plain, _) = build(&body, "plain.tar", &[]);
    let (through_image, progress) = build(
        &format!("# syntax={image}\n{body}"),
        "image.tar",
        &["--build-arg", "GREETING=hi"],
    );
    assert!(
        progress.contains(&format!("resolve image config for docker-image://{image}")),
        "{progress}"
    );
    let (plain_hi, _) = build(&body, "plain-hi.tar", &["--build-arg", "GREETING=hi"]);
    assert_ne!(oci_manifest_digest(&plain), oci_manifest_digest(&plain_hi));
    assert_eq!(
        oci_manifest_digest(&through_image),
        oci_manifest_digest(&plain_hi),
        "the frontend image builds what the daemon's frontend builds"
    );

    sb.write("Dockerfile", &format!("# syntax={image}\n{body}"));
    let outline = sb.build_remote(&daemon, &["--call=outline"]);
    assert_ok(&outline, "--call=outline through the frontend image");
    assert!(
        stdout(&outline).contains("GREETING"),
        "{}",
        stdout(&outline)
    );

    let (official, progress) = build(
        &format!("# syntax=docker/dockerfile:1\n{body}"),
        "official.tar",
        &["--build-arg", "GREETING=hi"],
    );
    assert!(
        progress
            .contains("# syntax=docker/dockerfile:1: served by MemoBuild's Dockerfile frontend"),
        "{progress}"
    );
    assert_eq!(
        oci_manifest_digest(&official),
        oci_manifest_digest(&plain_hi)
    );

    // With `--official-frontend-images` that line runs Docker's image, as buildkitd does
    // (here it cannot be pulled: the error names it).
    let sb2 = Sandbox::new();
    sb2.write("a.txt", "context file\n").write(
        "Dockerfile",
        &format!("# syntax=docker/dockerfile:1\n{body}"),
    );
    let strict = Daemon::start(&sb2, &env, &["--official-frontend-images"]);
    let pulled = sb2.build_remote(&strict, &[]);
    assert_eq!(pulled.status.code(), Some(1), "{}", stderr(&pulled));
    assert!(
        stderr(&pulled).contains("docker.io/docker/dockerfile:1"),
        "{}",
        stderr(&pulled)
    );
    drop(strict);

    sb.write("Dockerfile", &format!("# syntax={}\n{body}", env.busybox()));
    let failed = sb.build_remote(&daemon, &[]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("without returning a result"),
        "{}",
        stderr(&failed)
    );
}

// ----- lifecycle ----------------------------------------------------------------------------

/// A Dockerfile whose RUN prints `ready-2` (its name shows `ready-$((1+1))`) and then sleeps.
fn sleeper(env: &Env) -> String {
    format!(
        "FROM {}\nRUN echo ready-$((1+1)) {} && sleep 30\n",
        env.busybox(),
        unique("sleep")
    )
}

// Verifies: when the client of a build vanishes (SIGKILL) while a `RUN sleep 30` runs, the
// daemon cancels the build: within seconds no task, container or lease is left in its
// containerd namespace; and it serves the next build.
#[test]
fn a_vanished_client_cancels_its_build() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", &sleeper(&env));
    let ns = unique("vanish");
    let daemon = Daemon::start(&sb, &env, &["--namespace", &ns]);
    let log = sb.path("client.log");
    let mut client = sb
        .remote_command(&daemon, &["--progress", "plain"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("client.log"))
        .spawn()
        .expect("start client");
    wait_for_line(&log, " ready-2", Duration::from_secs(60), &daemon);
    assert!(
        daemon
            .containerd_leftovers()
            .iter()
            .any(|l| l.starts_with("tasks ") || l.starts_with("runc ")),
        "the RUN's container should be running: {:?}",
        daemon.containerd_leftovers()
    );
    client.kill().expect("kill client");
    client.wait().expect("reap client");
    let mut left = Vec::new();
    let clean = eventually(Duration::from_secs(5), || {
        left = daemon.containerd_leftovers();
        left.is_empty()
    });
    assert!(clean, "left in containerd after 5 s: {left:?}");

    sb.write(
        "Dockerfile",
        &format!("FROM {}\nRUN echo next > /next\n", env.busybox()),
    );
    let local = format!("type=local,dest={}", sb.path("fs").display());
    let out = sb.build_remote(&daemon, &["--progress", "plain", "--output", &local]);
    assert_ok(&out, "the next build");
    assert_eq!(
        std::fs::read_to_string(sb.path("fs/next")).expect("next"),
        "next\n"
    );
}

// Verifies: two clients building different contexts on one daemon at the same time both
// succeed, each getting its own result; the builds really overlap (both RUNs are running at
// once).
#[test]
fn two_clients_build_at_once() {
    let Some(env) = Env::get() else { return };
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let daemon = Daemon::start(&a, &env, &[]);
    for (sb, name) in [(&a, "alpha"), (&b, "beta")] {
        sb.write(
            "Dockerfile",
            &format!(
                "FROM {}\nCOPY id.txt /id.txt\nRUN echo running-$(cat /id.txt) && sleep 5 && cp /id.txt /out.txt\n",
                env.busybox()
            ),
        )
        .write("id.txt", &format!("{name}-{}", unique("ctx")));
    }
    let mut clients = Vec::new();
    for (i, sb) in [&a, &b].into_iter().enumerate() {
        let log = sb.path("client.log");
        let local = format!("type=local,dest={}", sb.path("fs").display());
        let child = sb
            .remote_command(&daemon, &["--progress", "plain", "--output", &local])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("client.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        clients.push((child, log));
    }
    // Both RUNs run at once: when both have started, neither has finished.
    for (sb, name) in [(&a, "alpha"), (&b, "beta")] {
        wait_for_line(
            &sb.path("client.log"),
            &format!(" running-{name}"),
            Duration::from_secs(60),
            &daemon,
        );
    }
    for (sb, name) in [(&a, "alpha"), (&b, "beta")] {
        let text = std::fs::read_to_string(sb.path("client.log")).expect("client.log");
        let number = text
            .lines()
            .find(|l| l.contains(&format!(" running-{name}")))
            .and_then(|l| l.split_whitespace().next())
            .expect("the RUN's vertex number")
            .to_string();
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{number} DONE"))),
            "{name}'s RUN finished before the other's started: the builds did not overlap\n{text}"
        );
    }
    for ((sb, other), (mut child, log)) in [(&a, "beta"), (&b, "alpha")].into_iter().zip(clients) {
        let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("client ends");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "client failed:\n{text}");
        assert!(
            !text.contains(&format!("running-{other}")),
            "the other build's progress reached this client:\n{text}"
        );
        let id = std::fs::read_to_string(sb.context().join("id.txt")).expect("id");
        assert_eq!(
            std::fs::read_to_string(sb.path("fs/out.txt")).expect("out.txt"),
            id
        );
    }
}

// Verifies: Control/DiskUsage lists records after a build; Control/Prune{all} streams the
// records it removed, after which DiskUsage lists none; a build after the prune works and
// really runs its RUN again (its cache is gone).
/// Every history record the daemon has, as a listing that ends (`EarlyExit`) gives them.
async fn listed(
    control: &mut memobuild_proto::control::control_client::ControlClient<
        tonic::transport::Channel,
    >,
) -> Vec<memobuild_proto::control::BuildHistoryEvent> {
    let mut listing = control
        .listen_build_history(BuildHistoryRequest {
            early_exit: true,
            ..Default::default()
        })
        .await
        .expect("ListenBuildHistory")
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = listing.message().await.expect("listing") {
        events.push(e);
    }
    events
}

// Verifies: the daemon keeps a record of each build a client ran (`docker buildx history`):
// a listener sees it start and complete; a listing has the builds newest first with their
// errors, step counts and exporter response; buildx's probe of the API ends at once; a record
// can be deleted.
#[test]
fn build_history_lists_the_builds_clients_ran() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let ok_dockerfile = format!("FROM {}\nRUN echo {} > /x\n", env.busybox(), unique("hist"));
    sb.write("Dockerfile", &ok_dockerfile);
    let daemon = Daemon::start(&sb, &env, &[]);
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());

    let bad_ref = block_on(async {
        let mut control = daemon.control().await;
        // buildx's probe: only active builds, a ref no build has, end at once.
        let mut probe = control
            .listen_build_history(BuildHistoryRequest {
                active_only: true,
                r#ref: "buildx-test-history-api-feature".into(),
                early_exit: true,
                ..Default::default()
            })
            .await
            .expect("the history probe")
            .into_inner();
        assert!(probe.message().await.expect("probe stream").is_none());

        let mut live = control
            .listen_build_history(BuildHistoryRequest::default())
            .await
            .expect("ListenBuildHistory")
            .into_inner();
        let out = sb.build_remote(&daemon, &["--output", &oci]);
        assert_ok(&out, "memobuild build --addr");
        let digest = stdout(&out).trim().to_owned();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(30), live.message())
                .await
                .expect("a history event within 30 s")
                .expect("history stream")
                .expect("an event");
            seen.push(event.r#type);
        }
        assert_eq!(
            seen,
            [
                BuildHistoryEventType::Started as i32,
                BuildHistoryEventType::Complete as i32
            ]
        );

        sb.write("Dockerfile", &format!("{ok_dockerfile}RUN false\n"));
        let failed = sb.build_remote(&daemon, &["--output", &oci]);
        assert!(!failed.status.success());

        let mut records = Vec::new();
        for e in listed(&mut control).await {
            assert_eq!(e.r#type, BuildHistoryEventType::Complete as i32);
            records.push(e.record.expect("record"));
        }
        assert_eq!(records.len(), 2, "{records:?}");
        let (bad, good) = (&records[0], &records[1]);
        let error = bad.error.as_ref().expect("the failed build's error");
        assert!(error.message.contains("RUN false"), "{}", error.message);
        assert!(bad.num_completed_steps < bad.num_total_steps, "{bad:?}");
        assert!(good.error.is_none());
        assert_eq!(
            good.frontend_attrs.get("filename").map(String::as_str),
            Some("Dockerfile")
        );
        assert_eq!(good.exporters[0].r#type, "oci");
        assert_eq!(good.exporter_response["containerimage.digest"], digest);
        assert!(good.num_total_steps >= 2, "{good:?}");
        assert_eq!(good.num_completed_steps, good.num_total_steps);
        assert!(good.completed_at.is_some() && good.created_at.is_some());
        // The record lists the build's provenance as buildx looks for it, and the daemon's
        // content store serves its bytes (`--metadata-file`'s `buildx.build.provenance`).
        let predicate = provenance_of(&daemon, good).await;
        assert_eq!(
            predicate["buildDefinition"]["externalParameters"]["request"]["frontend"],
            "dockerfile.v0",
            "{predicate}"
        );
        let deps = predicate["buildDefinition"]["resolvedDependencies"].to_string();
        assert!(
            deps.contains("pkg:docker/") && deps.contains("busybox"),
            "{deps}"
        );
        assert_eq!(
            predicate["runDetails"]["metadata"]["invocationId"],
            good.r#ref.as_str()
        );
        // The failed build's FROM and RUN echo came from the cache.
        assert!(bad.num_cached_steps >= 2, "{bad:?}");

        control
            .update_build_history(UpdateBuildHistoryRequest {
                r#ref: good.r#ref.clone(),
                delete: true,
                ..Default::default()
            })
            .await
            .expect("delete a record");
        let left: Vec<String> = listed(&mut control)
            .await
            .into_iter()
            .map(|e| e.record.expect("record").r#ref)
            .collect();
        assert_eq!(left, std::slice::from_ref(&bad.r#ref));
        bad.r#ref.clone()
    });

    // After a restart the record is still there, and `Status` of the finished build replays
    // its progress (`docker buildx history logs`), the failed step among it.
    drop(daemon);
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        let left: Vec<String> = listed(&mut control)
            .await
            .into_iter()
            .map(|e| e.record.expect("record").r#ref)
            .collect();
        assert_eq!(left, std::slice::from_ref(&bad_ref));
        let mut status = control
            .status(memobuild_proto::control::StatusRequest {
                r#ref: bad_ref.clone(),
            })
            .await
            .expect("Status of a finished build")
            .into_inner();
        let mut failed = Vec::new();
        while let Some(r) = status.message().await.expect("status stream") {
            failed.extend(
                r.vertexes
                    .into_iter()
                    .filter(|v| !v.error.is_empty())
                    .map(|v| v.name),
            );
        }
        assert!(failed.iter().any(|n| n.contains("RUN false")), "{failed:?}");
    });
}

/// The provenance predicate `record` lists, read as buildx reads it: `Info` for the size, then
/// `Read` (checked against the digest, and a part of it from an offset); a digest no record
/// lists is not found.
async fn provenance_of(daemon: &Daemon, record: &BuildHistoryRecord) -> serde_json::Value {
    use memobuild_proto::containerd::services::content::v1::{
        InfoRequest, ReadContentRequest, content_client::ContentClient,
    };
    let a = record
        .result
        .as_ref()
        .and_then(|r| r.attestations.first())
        .unwrap_or_else(|| panic!("no attestation in {record:?}"));
    assert_eq!(a.media_type, "application/vnd.in-toto+json");
    assert_eq!(
        a.annotations["in-toto.io/predicate-type"],
        "https://slsa.dev/provenance/v1"
    );
    let mut content = ContentClient::new(daemon.channel().await);
    let info = content
        .info(InfoRequest {
            digest: a.digest.clone(),
        })
        .await
        .expect("Info of the provenance")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.size, a.size);
    let read = |offset: i64, size: i64| {
        let mut content = content.clone();
        let digest = a.digest.clone();
        async move {
            let mut stream = content
                .read(ReadContentRequest {
                    digest,
                    offset,
                    size,
                })
                .await
                .expect("Read of the provenance")
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await.expect("read stream") {
                bytes.extend(chunk.data);
            }
            bytes
        }
    };
    let whole = read(0, 0).await;
    assert_eq!(whole.len() as i64, a.size);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&whole)),
        a.digest,
        "the bytes are the digest's"
    );
    assert_eq!(read(10, 20).await, whole[10..30]);
    let missing = content
        .info(InfoRequest {
            digest: format!("sha256:{}", sha256_hex(b"no such blob")),
        })
        .await
        .expect_err("a blob no record lists");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    serde_json::from_slice(&whole).expect("the predicate is JSON")
}

// Verifies: contexts buildx sends other than a directory: a tar archive on standard input
// (pulled by the daemon through the session's Upload service; members' owners kept, `-f` a
// path inside), a Dockerfile alone on standard input, and a git URL the daemon fetches itself
// (`#ref:subdir`, `.git` left out); a rebuild of the same git context runs nothing.
#[test]
fn contexts_from_stdin_and_git_urls() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    let remote = |args: &[&str], stdin: Option<Vec<u8>>| -> Output {
        let mut cmd = common::daemon::remote_command_with_context(&daemon, args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("memobuild build --addr");
        if let Some(data) = stdin {
            let mut input = child.stdin.take().expect("stdin");
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = input.write_all(&data);
            });
        }
        child.wait_with_output().expect("wait")
    };

    // A tar archive on stdin is the context.
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], uid: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_cksum();
        archive.append_data(&mut h, path, data).expect("append");
    };
    add(
        "build/Dockerfile.ctx",
        format!("FROM {}\nCOPY . /ctx/\n", env.busybox()).as_bytes(),
        0,
    );
    add("data/owned.txt", b"from the archive\n", 1000);
    let archive = archive.into_inner().expect("tar");
    let out_tar = sb.path("from-tar.tar");
    let tar_arg = format!("type=tar,dest={}", out_tar.display());
    let out = remote(
        &["-f", "build/Dockerfile.ctx", "--output", &tar_arg, "-"],
        Some(archive),
    );
    assert_ok(&out, "a tar context on stdin");
    let entries = tar_entries(&out_tar);
    let (_, uid, _, data) = &entries["ctx/data/owned.txt"];
    assert_eq!(data, b"from the archive\n");
    assert_eq!(
        *uid, 1000,
        "the archive's owner is kept, as BuildKit keeps it"
    );

    // A Dockerfile alone on stdin, with an empty context.
    let out_df = sb.path("from-dockerfile");
    let df_arg = format!("type=local,dest={}", out_df.display());
    let out = remote(
        &["--output", &df_arg, "-"],
        Some(format!("FROM {}\nRUN echo alone > /alone\n", env.busybox()).into_bytes()),
    );
    assert_ok(&out, "a Dockerfile on stdin");
    assert_eq!(
        std::fs::read_to_string(out_df.join("alone")).expect("alone"),
        "alone\n"
    );

    // A git URL, fetched by the daemon.
    let repo = common::git::GitServer::start();
    common::git::commit(
        &repo.work(),
        &[(
            "sub/Dockerfile",
            &format!(
                "FROM {}\nCOPY . /src/\nRUN ls -a /src > /listing\n",
                env.busybox()
            ),
        )],
        "dockerfile",
    );
    common::git::git(&repo.work(), &["push", "-q", "../srv/repo.git", "main"]);
    let url = format!("{}#main:sub", repo.url());
    let out_git = sb.path("from-git");
    let git_arg = format!("type=local,dest={}", out_git.display());
    let args = ["--progress", "json", "--output", &git_arg, &url];
    let first = remote(&args, None);
    assert_ok(&first, "a git context");
    assert_eq!(
        std::fs::read_to_string(out_git.join("src/b.txt")).expect("b.txt"),
        "b2\n"
    );
    let listing = std::fs::read_to_string(out_git.join("listing")).expect("listing");
    assert!(!listing.contains(".git"), "{listing}");
    let again = remote(&args, None);
    assert_ok(&again, "the git context again");
    assert!(
        steps_in_state(&again, "started").is_empty(),
        "{:?}",
        steps_in_state(&again, "started")
    );
}

// Verifies: through the daemon, each step that runs says why in the progress (the file, the
// build argument, or what it builds on), a step from the cache says nothing, and the exporter
// response (`--metadata-file`) counts the steps that ran and those from the cache.
#[test]
fn each_step_that_runs_says_why() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nARG V=1\nCOPY a.txt /a\nRUN echo $V > /v\nCOPY b.txt /b\n",
            env.busybox()
        ),
    )
    .write("a.txt", &unique("a"))
    .write("b.txt", "b\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let meta = sb.path("meta.json");
    let meta_arg = meta.display().to_string();
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());
    let build = |extra: &[&str]| {
        let mut args = vec![
            "--progress",
            "plain",
            "--metadata-file",
            &meta_arg,
            "--output",
            &oci,
        ];
        args.extend_from_slice(extra);
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, "memobuild build --addr");
        let counts: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).expect("metadata")).expect("json");
        (
            stderr(&out),
            counts["memobuild.steps.executed"]
                .as_str()
                .map(str::to_owned),
            counts["memobuild.steps.cached"].as_str().map(str::to_owned),
        )
    };
    build(&[]);
    sb.write("b.txt", "b2\n");
    let (log, executed, cached) = build(&[]);
    assert!(
        log.contains("[memobuild] runs because file `b.txt` changed"),
        "{log}"
    );
    assert_eq!(log.matches("[memobuild] runs because").count(), 1, "{log}");
    assert_eq!(
        (executed.as_deref(), cached.as_deref()),
        (Some("1"), Some("3"))
    );
    let (log, executed, _) = build(&["--build-arg", "V=2"]);
    assert!(
        log.contains("[memobuild] runs because V changed from `1` to `2`"),
        "{log}"
    );
    assert_eq!(executed.as_deref(), Some("2"));
}

// Verifies: `no-cache` (buildx's and buildctl's `--no-cache`) makes the daemon run the steps
// again instead of taking them from the cache; without it the next build is cached.
#[test]
fn no_cache_runs_the_steps_again() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN cat /proc/sys/kernel/random/uuid > /u\n",
            env.busybox()
        ),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let build = |name: &str, extra: &[&str]| {
        let dest = sb.path(name);
        let out_arg = format!("type=local,dest={}", dest.display());
        let mut args = vec!["--output", &out_arg];
        args.extend_from_slice(extra);
        let out = sb.build_remote(&daemon, &args);
        assert_ok(&out, "memobuild build --addr");
        std::fs::read_to_string(dest.join("u")).expect("/u")
    };
    let first = build("first", &[]);
    assert_eq!(build("cached", &[]), first, "a rebuild is cached");
    let again = build("again", &["--no-cache"]);
    assert_ne!(again, first, "--no-cache runs the RUN again");
    assert_eq!(build("after", &[]), again, "and its result is the one kept");
}

#[test]
fn disk_usage_and_prune_over_grpc() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {} > /x\n",
            env.busybox(),
            unique("prune")
        ),
    );
    let daemon = Daemon::start(&sb, &env, &[]);
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());
    let build = || {
        let out = sb.build_remote(&daemon, &["--progress", "json", "--output", &oci]);
        assert_ok(&out, "memobuild build --addr");
        out
    };
    let runs = |out: &Output| {
        steps_in_state(out, "started")
            .iter()
            .filter(|n| n.contains("RUN echo"))
            .count()
    };
    let first = build();
    assert_eq!(runs(&first), 1, "{:?}", steps_in_state(&first, "started"));
    let (usage, pruned, after) = block_on(async {
        let mut control = daemon.control().await;
        let usage = control
            .disk_usage(DiskUsageRequest::default())
            .await
            .expect("DiskUsage")
            .into_inner()
            .record;
        let mut stream = control
            .prune(PruneRequest {
                all: true,
                ..Default::default()
            })
            .await
            .expect("Prune")
            .into_inner();
        let mut pruned = Vec::new();
        while let Some(r) = stream.message().await.expect("Prune stream") {
            pruned.push(r);
        }
        let after = control
            .disk_usage(DiskUsageRequest::default())
            .await
            .expect("DiskUsage")
            .into_inner()
            .record;
        (usage, pruned, after)
    });
    assert!(!usage.is_empty(), "no records after a build");
    assert!(usage.iter().map(|r| r.size).sum::<i64>() > 0, "{usage:?}");
    assert!(!pruned.is_empty(), "Prune removed nothing");
    assert!(
        after.is_empty(),
        "records left after Prune{{all}}: {after:?}"
    );

    let again = build();
    assert_eq!(
        runs(&again),
        1,
        "the RUN runs again after the prune: {:?}",
        steps_in_state(&again, "started")
    );
    assert_eq!(stdout(&again), stdout(&first), "same image");
}

// Verifies: SIGTERM while a build runs stops the daemon within 10 s; the client fails with
// an error instead of hanging; no task, container or lease of the build is left in containerd
// and the socket file is gone.
#[test]
fn sigterm_stops_the_daemon_and_cleans_up() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", &sleeper(&env));
    let ns = unique("sigterm");
    let mut daemon = Daemon::start(&sb, &env, &["--namespace", &ns]);
    let log = sb.path("client.log");
    let mut client = sb
        .remote_command(&daemon, &["--progress", "plain"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("client.log"))
        .spawn()
        .expect("start client");
    wait_for_line(&log, " ready-2", Duration::from_secs(60), &daemon);
    assert!(
        !daemon.containerd_leftovers().is_empty(),
        "the build should be using containerd"
    );

    let started = Instant::now();
    let status = daemon.terminate(Duration::from_secs(10));
    let Some(status) = status else {
        panic!(
            "the daemon did not exit within 10 s of SIGTERM:\n{}",
            daemon.log()
        );
    };
    assert!(
        status.success(),
        "the daemon's exit: {status}\n{}",
        daemon.log()
    );
    let client_status = wait_timeout(&mut client, Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let Some(client_status) = client_status else {
        let _ = client.kill();
        panic!(
            "the client hangs {:?} after the daemon stopped:\n{text}",
            started.elapsed()
        );
    };
    assert!(!client_status.success(), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{text}");
    assert!(!text.contains("panicked"), "{text}");

    let left = daemon.containerd_leftovers();
    assert!(left.is_empty(), "left in containerd: {left:?}");
    assert!(!daemon.socket().exists(), "the socket file is left");
}

// Verifies: the daemon starts its HTTP/2 connection inside a session only when it first calls
// into the session, as grpc-go's idle channels do. A client that opens a session and closes it
// again at once (buildx does, before its build's session) reads no byte back and sees the
// stream end promptly: BuildKit's `conn.Close` hands every message it drains to its HTTP/2
// server as a whole buffer of stale bytes, which failed the connection with PROTOCOL_ERROR
// and cost buildx a one-second GOAWAY wait in about one build in thirty.
#[test]
fn a_session_closed_unused_gets_no_bytes_from_the_daemon() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        for _ in 0..20 {
            // The client's own first bytes (its server preface), then its half-close.
            let preface: Vec<u8> = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
            let outgoing = futures::stream::iter(vec![memobuild_proto::control::BytesMessage {
                data: preface,
            }]);
            let mut request = tonic::Request::new(outgoing);
            request.metadata_mut().insert(
                "x-docker-expose-session-uuid",
                unique("unused").parse().expect("metadata value"),
            );
            let mut incoming = control
                .session(request)
                .await
                .expect("Control/Session")
                .into_inner();
            let drained = tokio::time::timeout(Duration::from_secs(10), async {
                let mut bytes = 0;
                while let Some(m) = incoming.message().await.expect("session stream") {
                    bytes += m.data.len();
                }
                bytes
            })
            .await
            .expect("the session stream ends after the client's half-close");
            assert_eq!(drained, 0, "bytes the daemon sent into an unused session");
        }
    });
}

// Verifies: a client may stream many small messages into its session faster than the daemon
// uses them (buildx sends one per file of a big context while the daemon compares): the daemon
// takes them off the connection instead of leaving them in HTTP/2's buffers, where h2 counts
// them as a flood of small DATA frames and closes the whole connection (GOAWAY
// ENHANCE_YOUR_CALM "too_many_data_frames", failing the build's Solve and Status with it).
#[test]
fn a_session_fed_many_small_messages_keeps_its_connection() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        // One message per item, each sent as its own DATA frame: the stream pauses between
        // items, so the client's encoder cannot join them. The daemon never calls into this
        // session, so nothing reads the tunnel's bytes as HTTP/2.
        let outgoing = futures::stream::unfold(0u32, |i| async move {
            if i == 20_000 {
                return None;
            }
            tokio::task::yield_now().await;
            Some((
                memobuild_proto::control::BytesMessage { data: vec![7; 100] },
                i + 1,
            ))
        });
        let mut request = tonic::Request::new(outgoing);
        request.metadata_mut().insert(
            "x-docker-expose-session-uuid",
            unique("small").parse().expect("metadata value"),
        );
        let mut incoming = control
            .session(request)
            .await
            .expect("Control/Session")
            .into_inner();
        let ended = tokio::time::timeout(Duration::from_secs(60), incoming.message())
            .await
            .expect("the session stream ends after the client's half-close");
        assert!(ended.is_ok(), "the session failed: {ended:?}");
        // The connection it shared is still up.
        control
            .list_workers(memobuild_proto::control::ListWorkersRequest::default())
            .await
            .expect("ListWorkers on the same connection after the session");
    });
}

// Verifies: a push with the provenance buildx asks for by default
// (`attest:provenance=mode=min,inline-only=true`) lands as BuildKit pushes it: the tag names an
// index of the image (its platform) and an attestation manifest (`unknown/unknown`, annotated
// with the image's digest), whose one layer is an in-toto statement with an SLSA v1 predicate
// about the image's manifest, the base image among its resolved dependencies, the Dockerfile
// frontend's request without build-arg values (min mode says it is incomplete); the exporter
// response names the index. In the same Solve an OCI archive gets no attestation (inline-only).
#[test]
fn pushed_images_carry_buildx_default_provenance() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", APP)
        .write("message.txt", "attested\n")
        .write("tool.sh", "#!/bin/sh\n");
    let daemon = Daemon::start(&sb, &env, &[]);
    let repo = format!("daemon-test/{}", unique("attested"));
    let tag = format!("{}/{repo}:1", env.registry);
    let reg = registry_arg(&env);
    let archive = sb.path("out.tar");
    let meta = sb.path("meta.json");
    let out = sb.build_remote(
        &daemon,
        &[
            "--build-arg",
            &reg,
            "--build-arg",
            "SECRET_VALUE=hunter2",
            "--provenance",
            "mode=min,inline-only=true",
            "-t",
            &tag,
            "--push",
            "--output",
            &format!("type=oci,dest={}", archive.display()),
            "--metadata-file",
            &meta.to_string_lossy(),
        ],
    );
    assert_ok(&out, "build --push with provenance");

    let index = common::raw_manifest(&tag);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2, "{index}");
    let image_digest = entries[0]["digest"].as_str().expect("digest");
    assert_eq!(entries[0]["platform"]["os"], "linux");
    assert_eq!(entries[1]["platform"]["os"], "unknown");
    let ann = &entries[1]["annotations"];
    assert_eq!(ann["vnd.docker.reference.type"], "attestation-manifest");
    assert_eq!(ann["vnd.docker.reference.digest"], image_digest);

    let att = common::raw_manifest(&format!(
        "{}/{repo}@{}",
        env.registry,
        entries[1]["digest"].as_str().expect("digest")
    ));
    assert_eq!(
        att["artifactType"],
        "application/vnd.docker.attestation.manifest.v1+json"
    );
    assert_eq!(att["subject"]["digest"], image_digest);
    let layer = &att["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.in-toto+json");
    let statement: serde_json::Value = serde_json::from_slice(&common::registry_blob(
        &env,
        &repo,
        layer["digest"].as_str().expect("digest"),
    ))
    .expect("statement JSON");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        image_digest.trim_start_matches("sha256:")
    );
    let def = &statement["predicate"]["buildDefinition"];
    let deps = def["resolvedDependencies"].to_string();
    assert!(deps.contains("busybox"), "{deps}");
    let request = &def["externalParameters"]["request"];
    assert_eq!(request["frontend"], "dockerfile.v0", "{statement}");
    assert!(!statement.to_string().contains("hunter2"), "{statement}");
    let complete = &statement["predicate"]["runDetails"]["metadata"]["buildkit_completeness"];
    assert_eq!(complete["request"], false);

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("metadata file")).expect("json");
    let raw = common::run({
        let mut c = std::process::Command::new("skopeo");
        c.args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{tag}"));
        c
    });
    let index_digest = format!("sha256:{}", hex::encode(Sha256::digest(&raw.stdout)));
    assert_eq!(
        meta["containerimage.digest"],
        index_digest.as_str(),
        "{meta}"
    );

    // The archive of the same Solve holds the image alone.
    let mut tar = tar::Archive::new(std::fs::File::open(&archive).expect("archive"));
    let mut index_json = String::new();
    for e in tar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.path().expect("path").to_string_lossy() == "index.json" {
            e.read_to_string(&mut index_json).expect("read");
        }
    }
    let archived: serde_json::Value = serde_json::from_str(&index_json).expect("index.json");
    assert_eq!(
        archived["manifests"].as_array().map(Vec::len),
        Some(1),
        "{archived}"
    );
}
