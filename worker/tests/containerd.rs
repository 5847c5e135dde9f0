//! containerd and registry clients against REAL daemons: the private containerd and registry that
//! `hack/services.sh start DIR` runs, with `library/busybox:latest` pushed by `hack/base-image.sh`.
//! They are found through `MEMOBUILD_TEST_CONTAINERD` (socket) and `MEMOBUILD_TEST_REGISTRY`
//! (`127.0.0.1:PORT`); without them each test prints a loud SKIPPED line and passes. Every test
//! works in its own containerd namespace, so they run in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memobuild_worker::blobs::BlobStore;
use memobuild_worker::containerd::{
    self, Containerd, Lease, MountGuard, OutputStream, RunRequest, gc_root_labels,
    overlay_lowerdirs, overlay_upperdir,
};
use memobuild_worker::image::{self, PulledImage};
use memobuild_worker::registry::{self, Platform, Registry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

struct Env {
    socket: PathBuf,
    registry: String,
}

fn env(test: &str) -> Option<Env> {
    let Some(socket) = std::env::var_os("MEMOBUILD_TEST_CONTAINERD") else {
        eprintln!("SKIPPED: MEMOBUILD_TEST_CONTAINERD not set ({test})");
        return None;
    };
    let Ok(registry) = std::env::var("MEMOBUILD_TEST_REGISTRY") else {
        eprintln!("SKIPPED: MEMOBUILD_TEST_REGISTRY not set ({test})");
        return None;
    };
    Some(Env {
        socket: PathBuf::from(socket),
        registry,
    })
}

impl Env {
    fn busybox(&self) -> String {
        format!("{}/library/busybox:latest", self.registry)
    }
}

/// A client in a fresh namespace, working under a fresh lease.
struct Session {
    ctd: Containerd,
    lease: Lease,
}

impl Session {
    async fn new(env: &Env, test: &str) -> Result<Self, containerd::Error> {
        let ns = format!(
            "memobuild-test-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let ctd = Containerd::connect(&env.socket, &ns).await?;
        let lease = ctd.create_lease(Duration::from_secs(600)).await?;
        let ctd = ctd.with_lease(&lease)?;
        Ok(Session { ctd, lease })
    }

    async fn close(self) -> Result<(), containerd::Error> {
        self.ctd.without_lease().delete_lease(&self.lease).await
    }
}

async fn pull_busybox(
    env: &Env,
    ctd: &Containerd,
    blobs: &Path,
) -> Result<PulledImage, Box<dyn std::error::Error + Send + Sync>> {
    let store = BlobStore::open(blobs)?;
    let reg = Registry::default();
    Ok(image::pull(ctd, &reg, &store, &env.busybox(), &Platform::host()).await?)
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Bundles of runc containers whose spec has `marker` (a bundle goes after its container has
/// been deleted and its rootfs unmounted).
fn runc_bundles_with(marker: &str) -> usize {
    std::path::Path::new("/run/memobuild/bundles")
        .read_dir()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|b| {
            std::fs::read(b.path().join("config.json"))
                .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
        .count()
}

/// Whether a process whose command line has `marker` runs on this machine.
fn sleeping(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
}

/// Containers left in the client's namespace (there should be none after `run` returns).
async fn container_count(
    env: &Env,
    ctd: &Containerd,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    use containerd_client::services::v1::ListContainersRequest;
    use containerd_client::services::v1::containers_client::ContainersClient;
    let channel = containerd_client::connect(&env.socket).await?;
    let mut req = tonic::Request::new(ListContainersRequest { filters: vec![] });
    req.metadata_mut()
        .insert("containerd-namespace", ctd.namespace().parse()?);
    Ok(ContainersClient::new(channel)
        .list(req)
        .await?
        .into_inner()
        .containers
        .len())
}

/// Tasks in the client's namespace that are running.
async fn running_tasks(
    env: &Env,
    ctd: &Containerd,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    use containerd_client::services::v1::ListTasksRequest;
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::types::v1::Status;
    let channel = containerd_client::connect(&env.socket).await?;
    let mut req = tonic::Request::new(ListTasksRequest::default());
    req.metadata_mut()
        .insert("containerd-namespace", ctd.namespace().parse()?);
    Ok(TasksClient::new(channel)
        .list(req)
        .await?
        .into_inner()
        .tasks
        .iter()
        .filter(|t| t.status == Status::Running as i32)
        .count())
}

fn is_mounted(path: &Path) -> std::io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = path.display().to_string();
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == wanted)))
}

// Verifies: pulling busybox fetches every layer into the local blob store, unpacks the layers
// into committed snapshots named by their chain IDs (with a gc.root label), and that a second
// pull and two concurrent pulls in a fresh namespace agree on the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_creates_chain_snapshots() -> TestResult {
    let Some(env) = env("pull_creates_chain_snapshots") else {
        return Ok(());
    };
    let s = Session::new(&env, "pull").await?;
    let blobs = tempfile::tempdir()?;
    let img = pull_busybox(&env, &s.ctd, blobs.path()).await?;

    assert!(!img.layers.is_empty());
    assert_eq!(img.chain_ids.len(), img.layers.len());
    assert_eq!(img.chain_ids[0], img.layers[0].diff_id);
    assert_eq!(img.top_snapshot.as_ref(), img.chain_ids.last());
    assert!(img.manifest_digest.starts_with("sha256:"));
    let config: serde_json::Value = serde_json::from_slice(&img.config)?;
    assert_eq!(
        config["rootfs"]["diff_ids"][0].as_str(),
        Some(img.layers[0].diff_id.as_str())
    );
    let store = BlobStore::open(blobs.path())?;
    for (i, chain_id) in img.chain_ids.iter().enumerate() {
        let info = s
            .ctd
            .stat(chain_id)
            .await?
            .ok_or_else(|| format!("snapshot {chain_id} missing"))?;
        let expected_parent = if i == 0 { "" } else { &img.chain_ids[i - 1] };
        assert_eq!(info.parent, expected_parent);
        assert!(info.labels.contains_key(containerd::GC_ROOT_LABEL));
        assert!(
            store.contains(&img.layers[i].digest),
            "layer {i} in the blob store"
        );
    }

    // Again: everything exists, nothing is redone.
    let again = pull_busybox(&env, &s.ctd, blobs.path()).await?;
    assert_eq!(again.chain_ids, img.chain_ids);
    assert_eq!(again.manifest_digest, img.manifest_digest);

    // Two concurrent pulls into a fresh namespace (no lease on the client: pull makes its own).
    let fresh = Containerd::connect(&env.socket, &format!("{}-2", s.ctd.namespace())).await?;
    let (a, b) = tokio::join!(
        pull_busybox(&env, &fresh, blobs.path()),
        pull_busybox(&env, &fresh, blobs.path())
    );
    assert_eq!(a?.chain_ids, img.chain_ids);
    assert_eq!(b?.chain_ids, img.chain_ids);
    for id in &img.chain_ids {
        assert!(fresh.stat(id).await?.is_some());
    }
    s.close().await?;
    Ok(())
}

// Verifies: Content.Write streams a multi-chunk blob, a second write of the same blob is Ok
// (AlreadyExists), Content.Read returns the same bytes, and a wrong digest is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_write_and_read() -> TestResult {
    let Some(env) = env("content_write_and_read") else {
        return Ok(());
    };
    let s = Session::new(&env, "content").await?;
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let digest = memobuild_worker::blobs::sha256_digest(&data);
    assert!(!s.ctd.has_blob(&digest).await?);
    s.ctd
        .write_blob(&digest, data.len() as u64, &data[..])
        .await?;
    assert!(s.ctd.has_blob(&digest).await?);
    s.ctd
        .write_blob(&digest, data.len() as u64, &data[..])
        .await?;
    assert_eq!(s.ctd.read_blob(&digest).await?, data);

    let other = b"not what the digest says";
    let bad = s
        .ctd
        .write_blob(
            &memobuild_worker::blobs::sha256_digest(b"something else"),
            other.len() as u64,
            &other[..],
        )
        .await;
    assert!(bad.is_err(), "digest mismatch must fail: {bad:?}");
    let short = s
        .ctd
        .write_blob(&digest, data.len() as u64 + 1, &data[..])
        .await;
    assert!(
        matches!(short, Ok(()) | Err(containerd::Error::BlobSize { .. })),
        "{short:?}"
    );
    assert!(matches!(
        s.ctd
            .read_blob(&memobuild_worker::blobs::sha256_digest(b"absent"))
            .await,
        Err(containerd::Error::BlobNotFound { .. })
    ));
    s.close().await?;
    Ok(())
}

// Verifies: a blob found in the content store while it is held only by another build's lease
// survives that lease's removal and a garbage collection, because the check that found it put
// it in the finder's lease (a plain `Info` would not, and the collection would take it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn found_blob_is_kept_by_the_finders_lease() -> TestResult {
    let Some(env) = env("found_blob_is_kept_by_the_finders_lease") else {
        return Ok(());
    };
    let s = Session::new(&env, "found-blob").await?;
    let plain = s.ctd.without_lease();
    let other_lease = plain.create_lease(Duration::from_secs(600)).await?;
    let other = plain.with_lease(&other_lease)?;
    let kept = format!("kept {}", uuid::Uuid::new_v4()).into_bytes();
    let kept_digest = memobuild_worker::blobs::sha256_digest(&kept);
    let control = format!("control {}", uuid::Uuid::new_v4()).into_bytes();
    let control_digest = memobuild_worker::blobs::sha256_digest(&control);
    for (d, b) in [(&kept_digest, &kept), (&control_digest, &control)] {
        other.write_blob(d, b.len() as u64, &b[..]).await?;
    }

    assert!(s.ctd.has_blob_leased(&kept_digest).await?);
    assert!(s.ctd.has_blob(&control_digest).await?);
    plain.delete_lease_and_collect(&other_lease).await?;

    assert_eq!(s.ctd.read_blob(&kept_digest).await?, kept);
    assert!(
        !plain.has_blob(&control_digest).await?,
        "the control blob, only looked at, is collected"
    );
    s.close().await?;
    Ok(())
}

// Verifies: snapshot calls map NotFound/AlreadyExists to typed errors naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_errors_are_typed() -> TestResult {
    let Some(env) = env("snapshot_errors_are_typed") else {
        return Ok(());
    };
    let s = Session::new(&env, "snaperr").await?;
    let err = s.ctd.prepare("k", "no-such-parent", HashMap::new()).await;
    assert!(
        matches!(&err, Err(containerd::Error::SnapshotNotFound { key }) if key == "no-such-parent"),
        "{err:?}"
    );
    s.ctd.prepare("k", "", HashMap::new()).await?;
    let err = s.ctd.prepare("k", "", HashMap::new()).await;
    assert!(
        matches!(&err, Err(containerd::Error::SnapshotExists { key }) if key == "k"),
        "{err:?}"
    );
    assert!(s.ctd.stat("absent").await?.is_none());
    assert!(matches!(
        s.ctd.mounts("absent").await,
        Err(containerd::Error::SnapshotNotFound { .. })
    ));
    assert!(matches!(
        s.ctd.remove("absent").await,
        Err(containerd::Error::SnapshotNotFound { .. })
    ));
    s.ctd.remove("k").await?;
    s.close().await?;
    Ok(())
}

// Verifies: a process runs on an active snapshot of busybox; stdout and stderr arrive as separate
// streams, and the exit code is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_output_and_exit_code() -> TestResult {
    let Some(env) = env("run_streams_output_and_exit_code") else {
        return Ok(());
    };
    let s = Session::new(&env, "run").await?;
    let blobs = tempfile::tempdir()?;
    let img = pull_busybox(&env, &s.ctd, blobs.path()).await?;
    let parent = img.top_snapshot.clone().unwrap_or_default();
    let mounts = s.ctd.prepare("run-1", &parent, HashMap::new()).await?;

    let (tx, mut rx) = mpsc::channel(16);
    let code = s
        .ctd
        .run(RunRequest {
            rootfs: mounts,
            args: sh("echo out; echo err >&2; exit 3"),
            output: Some(tx),
            ..RunRequest::default()
        })
        .await?;
    assert_eq!(code, 3);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some((stream, chunk)) = rx.recv().await {
        match stream {
            OutputStream::Stdout => out.extend(chunk),
            OutputStream::Stderr => err.extend(chunk),
        }
    }
    assert_eq!(String::from_utf8_lossy(&out), "out\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");

    // Environment, cwd, user, hostname and network=none reach the process.
    let mounts = s.ctd.mounts("run-1").await?;
    let (tx, mut rx) = mpsc::channel(16);
    let code = s
        .ctd
        .run(RunRequest {
            rootfs: mounts,
            args: sh("echo $FOO $(pwd) $(id -u):$(id -g) $(hostname); ls /sys/class/net"),
            env: vec!["FOO=bar".into()],
            cwd: "/tmp".into(),
            user: containerd::User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![],
            },
            hostname: "box".into(),
            network: containerd::NetworkMode::None,
            output: Some(tx),
            ..RunRequest::default()
        })
        .await?;
    let mut out = Vec::new();
    while let Some((_, chunk)) = rx.recv().await {
        out.extend(chunk);
    }
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "bar /tmp 1000:1000 box\nlo\n");

    // A missing executable is the runtime's error, not an exit code (runc's, or containerd's
    // at task creation); the container is still cleaned up.
    let mounts = s.ctd.mounts("run-1").await?;
    let res = s
        .ctd
        .run(RunRequest {
            rootfs: mounts,
            args: vec!["/no/such/binary".into()],
            ..RunRequest::default()
        })
        .await;
    match &res {
        Err(containerd::Error::Runtime { id, message }) => {
            assert!(message.contains("/no/such/binary"), "{message}");
            let bundle = std::path::Path::new("/run/memobuild/bundles").join(id);
            assert!(!bundle.exists(), "{} is left", bundle.display());
        }
        Err(containerd::Error::Rpc {
            op: "task create",
            message,
            ..
        }) => assert!(message.contains("/no/such/binary"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(container_count(&env, &s.ctd).await?, 0);
    s.ctd.remove("run-1").await?;
    s.close().await?;
    Ok(())
}

// Verifies: files written by a process land in the overlay upper directory (and nothing else:
// runc's mount points are cleaned up), and the snapshot can be committed and viewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_land_in_upperdir() -> TestResult {
    let Some(env) = env("run_writes_land_in_upperdir") else {
        return Ok(());
    };
    let s = Session::new(&env, "upper").await?;
    let blobs = tempfile::tempdir()?;
    let img = pull_busybox(&env, &s.ctd, blobs.path()).await?;
    let parent = img.top_snapshot.clone().unwrap_or_default();
    let mounts = s.ctd.prepare("upper-1", &parent, HashMap::new()).await?;
    let upper = overlay_upperdir(&mounts).ok_or("active snapshot has no upperdir")?;
    assert_eq!(overlay_lowerdirs(&mounts).len(), img.chain_ids.len());

    let code = s
        .ctd
        .run(RunRequest {
            rootfs: mounts,
            args: sh("mkdir -p /work && echo hi > /work/file"),
            ..RunRequest::default()
        })
        .await?;
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(upper.join("work/file"))?, "hi\n");
    let mut names: Vec<String> = std::fs::read_dir(&upper)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(
        names,
        ["work"],
        "only the process's writes in the upper dir"
    );

    s.ctd
        .commit("upper-done", "upper-1", gc_root_labels())
        .await?;
    let info = s.ctd.stat("upper-done").await?.ok_or("commit missing")?;
    assert_eq!(info.parent, parent);
    let view = s.ctd.view("upper-view", "upper-done").await?;
    let guard = MountGuard::mount(&view)?;
    assert_eq!(
        std::fs::read_to_string(guard.path().join("work/file"))?,
        "hi\n"
    );
    guard.unmount()?;
    s.ctd.remove("upper-view").await?;
    s.close().await?;
    Ok(())
}

// Verifies: MountGuard mounts snapshot mounts (overlay view and writable overlay) on a fresh
// directory, writes through it reach the upper directory, and drop unmounts and removes the
// directory (nothing left in /proc/self/mountinfo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_guard_mounts_and_unmounts() -> TestResult {
    let Some(env) = env("mount_guard_mounts_and_unmounts") else {
        return Ok(());
    };
    let s = Session::new(&env, "mount").await?;
    let blobs = tempfile::tempdir()?;
    let img = pull_busybox(&env, &s.ctd, blobs.path()).await?;
    let parent = img.top_snapshot.clone().unwrap_or_default();

    let view = s.ctd.view("mount-view", &parent).await?;
    let guard = MountGuard::mount(&view)?;
    let path = guard.path().to_path_buf();
    assert!(is_mounted(&path)?);
    assert!(path.join("bin/busybox").is_file());
    assert!(
        std::fs::write(path.join("nope"), b"x").is_err(),
        "views are read-only"
    );
    drop(guard);
    assert!(!is_mounted(&path)?);
    assert!(!path.exists());

    let active = s.ctd.prepare("mount-rw", &parent, HashMap::new()).await?;
    let upper = overlay_upperdir(&active).ok_or("no upperdir")?;
    let guard = MountGuard::mount(&active)?;
    let path = guard.path().to_path_buf();
    std::fs::write(path.join("hello"), b"world")?;
    guard.unmount()?;
    assert!(!is_mounted(&path)?);
    assert!(!path.exists());
    assert_eq!(std::fs::read(upper.join("hello"))?, b"world");

    s.ctd.remove("mount-view").await?;
    s.ctd.remove("mount-rw").await?;
    s.close().await?;
    Ok(())
}

// Verifies: cancelling a run kills the process promptly and removes the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cancel_kills_and_cleans_up() -> TestResult {
    let Some(env) = env("run_cancel_kills_and_cleans_up") else {
        return Ok(());
    };
    let s = Session::new(&env, "cancel").await?;
    let blobs = tempfile::tempdir()?;
    let img = pull_busybox(&env, &s.ctd, blobs.path()).await?;
    let mounts = s
        .ctd
        .prepare(
            "cancel-1",
            &img.top_snapshot.clone().unwrap_or_default(),
            HashMap::new(),
        )
        .await?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    });
    // Whichever executor runs it: containerd's containers and tasks, or runc's bundles.
    // (Not the shell's last command, which it would exec, leaving its command line.)
    let marker = format!("sleep 60; echo {}", std::process::id());
    let containers = || async {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            container_count(&env, &s.ctd).await? + runc_bundles_with(&marker),
        )
    };
    let started = Instant::now();
    let res = s
        .ctd
        .run(RunRequest {
            rootfs: mounts,
            args: sh(&marker),
            cancel: Some(token),
            ..RunRequest::default()
        })
        .await;
    assert!(
        matches!(res, Err(containerd::Error::Cancelled { .. })),
        "{res:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(containers().await?, 0);

    // Dropping the `run` future instead: the guard's spawned cleanup removes the container.
    let ctd = s.ctd.clone();
    let mounts = s.ctd.mounts("cancel-1").await?;
    let args = sh(&marker);
    let handle = tokio::spawn(async move {
        ctd.run(RunRequest {
            rootfs: mounts,
            args,
            ..RunRequest::default()
        })
        .await
    });
    // Abort once the process runs (not at a guessed moment, which a loaded machine may miss).
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_tasks(&env, &s.ctd).await? == 0 && !sleeping(&marker) {
        assert!(Instant::now() < deadline, "the process never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(containers().await?, 1, "the run is under way");
    handle.abort();
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers().await? != 0 || sleeping(&marker) {
        assert!(
            Instant::now() < deadline,
            "container not cleaned up after drop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The rootfs is released: the active snapshot can be removed.
    s.ctd.remove("cancel-1").await?;
    s.close().await?;
    Ok(())
}

// Verifies: registry errors name the registry and the failure: an unreachable port gives
// "cannot reach registry 127.0.0.1:PORT: connection refused", an unknown tag gives NotFound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_errors() -> TestResult {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let reg = Registry::default();
    let err = reg
        .resolve(
            &format!("127.0.0.1:{port}/library/busybox:latest"),
            &Platform::host(),
        )
        .await
        .err()
        .ok_or("resolving against a closed port succeeded")?;
    assert_eq!(
        err.to_string(),
        format!("cannot reach registry 127.0.0.1:{port}: connection refused")
    );

    let Some(env) = env("registry_errors (unknown tag part)") else {
        return Ok(());
    };
    let reference = format!("{}/library/busybox:no-such-tag", env.registry);
    let err = reg.resolve(&reference, &Platform::host()).await;
    assert!(
        matches!(&err, Err(registry::Error::NotFound { reference: r, .. }) if *r == reference),
        "{err:?}"
    );
    let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains(&env.registry), "{msg}");

    // Blobs: a wrong size in the descriptor and an unknown digest.
    let img = reg.resolve(&env.busybox(), &Platform::host()).await?;
    let mut wrong = img.config_descriptor.clone();
    wrong.size += 1;
    let mut sink = Vec::new();
    let err = reg.fetch_blob(&env.busybox(), &wrong, &mut sink).await;
    assert!(
        matches!(err, Err(registry::Error::SizeMismatch { .. })),
        "{err:?}"
    );
    let mut config = Vec::new();
    reg.fetch_blob(&env.busybox(), &img.config_descriptor, &mut config)
        .await?;
    assert_eq!(config, img.config);
    let mut unknown = img.config_descriptor.clone();
    unknown.digest = memobuild_worker::blobs::sha256_digest(b"no such blob");
    let err = reg.fetch_blob(&env.busybox(), &unknown, &mut sink).await;
    assert!(
        matches!(err, Err(registry::Error::NotFound { .. })),
        "{err:?}"
    );
    Ok(())
}

// Verifies: an image index is resolved to the manifest of the requested platform (variant
// included), and a platform the index lacks is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_selects_platform_from_index() -> TestResult {
    let Some(env) = env("resolve_selects_platform_from_index") else {
        return Ok(());
    };
    let reg = Registry::default();
    let single = reg.resolve(&env.busybox(), &Platform::host()).await?;
    assert_eq!(single.index_digest, None);

    // Push an index naming the busybox manifest twice, for two other platforms.
    let entry = |platform: &str| -> serde_json::Value {
        let p = Platform::parse(platform).expect("valid test platform");
        serde_json::json!({
            "mediaType": single.manifest_media_type,
            "digest": single.manifest_digest,
            "size": single.manifest.len(),
            "platform": p,
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("linux/arm/v6"), entry("linux/arm/v7")],
    });
    let tag = format!(
        "{}/library/busybox:index-{}",
        env.registry,
        uuid::Uuid::new_v4().simple()
    );
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    client
        .push_manifest_raw(
            &tag.parse()?,
            serde_json::to_vec(&index)?,
            "application/vnd.oci.image.index.v1+json".parse()?,
        )
        .await?;

    let v7 = reg.resolve(&tag, &Platform::parse("linux/arm/v7")?).await?;
    assert_eq!(v7.manifest_digest, single.manifest_digest);
    assert!(v7.index_digest.is_some());
    assert_eq!(v7.config, single.config);
    let err = reg.resolve(&tag, &Platform::parse("linux/riscv64")?).await;
    assert!(
        matches!(&err, Err(registry::Error::NoMatchingPlatform { available, .. }) if available == "linux/arm/v6, linux/arm/v7"),
        "{err:?}"
    );
    Ok(())
}

// Verifies: connecting to a missing socket names the path.
#[tokio::test]
async fn connect_error_names_the_socket() {
    let err = Containerd::connect("/nonexistent/containerd.sock", "default")
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "cannot connect to containerd at `/nonexistent/containerd.sock`: socket does not exist"
        )
    );
}

/// Appends a PAX extended header with `records` for the entry that follows.
fn append_pax(b: &mut tar::Builder<Vec<u8>>, records: &[(&str, &[u8])]) -> std::io::Result<()> {
    let mut data = Vec::new();
    for (key, value) in records {
        // "LEN key=value\n", LEN counting its own digits.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeaders/entry")?;
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &data[..])
}

/// A layer tar with what an unpacker must get right: the root's own entry, odd modes (setuid,
/// sticky, 0000), owners, a nanosecond PAX mtime, an xattr, a symlink, a hard link, a device
/// node and a FIFO.
fn tricky_layer() -> std::io::Result<Vec<u8>> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>,
               path: &str,
               kind: T,
               mode: u32,
               owner: (u64, u64),
               link: Option<&str>,
               data: &[u8]|
     -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path)?;
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_500_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l)?;
        }
        if kind == T::Char {
            h.set_device_major(1)?;
            h.set_device_minor(3)?;
        }
        h.set_cksum();
        b.append(&h, data)
    };
    add(&mut b, "./", T::Directory, 0o700, (0, 0), None, b"")?;
    add(&mut b, "bin/", T::Directory, 0o755, (0, 0), None, b"")?;
    add(
        &mut b,
        "bin/tool",
        T::Regular,
        0o4755,
        (0, 0),
        None,
        b"#!/bin/sh\n",
    )?;
    add(&mut b, "etc/", T::Directory, 0o750, (1000, 2000), None, b"")?;
    append_pax(
        &mut b,
        &[
            ("mtime", b"1600000000.123456789"),
            ("SCHILY.xattr.user.note", b"kept"),
        ],
    )?;
    add(
        &mut b,
        "etc/conf",
        T::Regular,
        0o640,
        (1000, 2000),
        None,
        b"a=1\n",
    )?;
    add(
        &mut b,
        "etc/link",
        T::Symlink,
        0o777,
        (1000, 2000),
        Some("conf"),
        b"",
    )?;
    // A hard link's header sets the shared inode's metadata too (here: the same as the file's).
    add(
        &mut b,
        "etc/hard",
        T::Link,
        0o4755,
        (0, 0),
        Some("bin/tool"),
        b"",
    )?;
    add(&mut b, "etc/secret", T::Regular, 0o000, (0, 0), None, b"x")?;
    add(&mut b, "tmp/", T::Directory, 0o1777, (0, 0), None, b"")?;
    add(&mut b, "dev/", T::Directory, 0o755, (0, 0), None, b"")?;
    add(&mut b, "dev/null", T::Char, 0o666, (0, 0), None, b"")?;
    add(&mut b, "run/", T::Directory, 0o755, (0, 0), None, b"")?;
    add(&mut b, "run/fifo", T::Fifo, 0o600, (0, 0), None, b"")?;
    b.into_inner()
}

/// Everything a user could see of each entry under `root` (the root itself left out).
fn describe_tree(root: &Path) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let md = std::fs::symlink_metadata(&p)?;
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let what = if md.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p)?.display())
            } else if md.is_file() {
                format!("{:?}", std::fs::read(&p)?)
            } else {
                format!("rdev {}", md.rdev())
            };
            let mut xattrs: Vec<String> = xattr::list(&p)?
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| n.starts_with("user."))
                .collect();
            xattrs.sort();
            out.push(format!(
                "{rel} mode {:o} owner {}:{} mtime {}.{:09} links {} {what} {xattrs:?}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec(),
                md.nlink(),
            ));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

// Verifies: an image's first layer, which MemoBuild unpacks into its snapshot itself, comes out
// as containerd's applier writes the same layer (applied above an empty one): modes with
// setuid and sticky bits, owners, the PAX nanosecond mtime, a user xattr, the symlink, the hard
// link, the device node and the FIFO; the root's own entry does not change the snapshot's root;
// the diff ID is checked (a wrong one fails the unpack and leaves no snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_layer_unpacks_as_containerd_unpacks_it() -> TestResult {
    let Some(env) = env("a_first_layer_unpacks_as_containerd_unpacks_it") else {
        return Ok(());
    };
    let s = Session::new(&env, "unpack").await?;
    let dir = tempfile::tempdir()?;
    let store = BlobStore::open(dir.path())?;
    let layer_of = |tar: &[u8]| -> Result<image::Layer, Box<dyn std::error::Error + Send + Sync>> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, tar)?;
        let gz = gz.finish()?;
        Ok(image::Layer {
            digest: store.put_bytes(&gz)?,
            diff_id: memobuild_worker::blobs::sha256_digest(tar),
            size: gz.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        })
    };
    let tricky = layer_of(&tricky_layer()?)?;
    let empty = layer_of(&tar::Builder::new(Vec::new()).into_inner()?)?;

    let ours = image::unpack(&s.ctd, &store, "ours", std::slice::from_ref(&tricky))
        .await?
        .ok_or("no snapshot")?;
    let theirs = image::unpack(&s.ctd, &store, "theirs", &[empty, tricky.clone()])
        .await?
        .ok_or("no snapshot")?;
    let listing = |parent: String, key: &'static str| {
        let ctd = s.ctd.clone();
        async move {
            let mounts = ctd.view(key, &parent).await?;
            let described = tokio::task::spawn_blocking(move || {
                let guard = MountGuard::mount(&mounts)?;
                let tree = describe_tree(guard.path());
                let root = std::fs::metadata(guard.path())
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
                guard.unmount()?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((tree?, root?))
            })
            .await??;
            ctd.remove(key).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(described)
        }
    };
    let (ours_tree, ours_root) = listing(ours, "view-ours").await?;
    let (theirs_tree, _) = listing(theirs, "view-theirs").await?;
    assert_eq!(ours_tree, theirs_tree);
    let conf = ours_tree
        .iter()
        .find(|l| l.starts_with("etc/conf "))
        .ok_or("etc/conf")?;
    assert!(
        conf.contains("mode 100640 owner 1000:2000 mtime 1600000000.123456789 links 1")
            && conf.contains("\"user.note\""),
        "{conf}"
    );
    assert!(
        ours_tree
            .iter()
            .any(|l| l
                .starts_with("bin/tool mode 104755 owner 0:0 mtime 1500000000.000000000 links 2")),
        "{ours_tree:#?}"
    );
    assert!(
        ours_tree
            .iter()
            .any(|l| l.starts_with("dev/null mode 20666 ") && l.contains("rdev 259")),
        "{ours_tree:#?}"
    );
    assert_eq!(ours_root, 0o755, "the snapshot's root keeps its mode");

    // A layer whose diff ID is not what the image says is refused, and leaves nothing.
    let mut one_file = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("x")?;
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    one_file.append(&h, &b"x"[..])?;
    let mut lying = layer_of(&one_file.into_inner()?)?;
    lying.diff_id = memobuild_worker::blobs::sha256_digest(b"something else");
    let e = image::unpack(&s.ctd, &store, "liar", &[lying.clone()])
        .await
        .expect_err("a wrong diff ID");
    assert!(
        e.to_string().contains(&lying.digest),
        "the error names the layer: {e}"
    );
    assert!(s.ctd.stat(&lying.diff_id).await?.is_none());
    s.close().await?;
    Ok(())
}
