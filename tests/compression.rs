//! End to end, layer compression on image outputs (`compression=gzip|zstd|uncompressed`,
//! `compression-level=N`, `force-compression=true`) against the real containerd and registry
//! from hack/services.sh: a zstd push that skopeo shows with zstd media types and containerd
//! pulls and runs; a zstd image used as a base image (unpacked by containerd, applied by
//! `type=local`); an uncompressed OCI layout that `umoci` unpacks; gzip level 9 giving other
//! layer digests but the same diff IDs and config; reproducible zstd digests from empty state
//! directories, and a second export that compresses nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Env, Sandbox, assert_ok, stderr, stdout, unique};
use serde_json::Value;

const DOCKERFILE: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
WORKDIR /app
RUN echo "built by RUN" > run.txt && seq 1 20000 > numbers.txt
COPY message.txt ./
CMD ["/bin/sh", "-c", "cat /app/run.txt /app/message.txt; wc -l < /app/numbers.txt"]
"#;

const EXPECTED: &str = "built by RUN\nmessage from the context\n20000\n";

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("Dockerfile", DOCKERFILE)
        .write("message.txt", "message from the context\n");
    sb
}

/// `memobuild build` of the sandbox's context with the test registry as `REGISTRY` and an empty
/// Docker config (no credentials from the machine).
fn build(sb: &Sandbox, env: &Env, args: &[&str]) -> Output {
    let docker_config = sb.path("docker-config");
    std::fs::create_dir_all(&docker_config).expect("mkdir");
    let mut cmd = common::memobuild();
    cmd.env("DOCKER_CONFIG", &docker_config)
        .arg("build")
        .arg("--containerd")
        .arg(&env.containerd)
        .arg("--state-dir")
        .arg(sb.state())
        .args(["--progress", "plain", "--build-arg"])
        .arg(format!("REGISTRY={}", env.registry))
        .args(args)
        .arg(sb.context());
    common::run(cmd)
}

fn skopeo(args: &[&str]) -> Output {
    let mut c = Command::new("skopeo");
    c.args(args);
    common::run(c)
}

fn tls(image: &str) -> &'static [&'static str] {
    if image.starts_with("docker://") {
        &["--tls-verify=false"]
    } else {
        &[]
    }
}

/// `skopeo inspect --raw` of `image` (`docker://…` or `oci-archive:…`): the manifest as stored,
/// parsed, and its digest.
fn inspect_raw(image: &str) -> (Value, String) {
    let raw = skopeo(&[&["inspect", "--raw"], tls(image), &[image]].concat());
    assert_ok(&raw, "skopeo inspect --raw");
    (
        serde_json::from_slice(&raw.stdout).expect("manifest JSON"),
        format!("sha256:{}", sha256_hex(&raw.stdout)),
    )
}

/// [`inspect_raw`] plus `skopeo inspect --config` (the image config, parsed).
fn inspect(image: &str) -> (Value, Value, String) {
    let (manifest, digest) = inspect_raw(image);
    let cfg = skopeo(&[&["inspect", "--config"], tls(image), &[image]].concat());
    assert_ok(&cfg, "skopeo inspect --config");
    (
        manifest,
        serde_json::from_slice(&cfg.stdout).expect("config JSON"),
        digest,
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn layers(manifest: &Value) -> Vec<(String, String)> {
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap_or_default().to_string(),
                l["digest"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|d| d.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The OCI image spec's chain IDs of `diff_ids`.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(p) => format!("sha256:{}", sha256_hex(format!("{p} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

/// Pulls `image` from the plain-HTTP test registry into the sandbox's namespace and runs it.
fn ctr_pull_run(sb: &Sandbox, env: &Env, image: &str) -> Output {
    let pull = common::run(common::ctr(
        env,
        &sb.namespace,
        &["images", "pull", "--plain-http", image],
    ));
    assert_ok(&pull, "ctr images pull");
    common::ctr_run(env, &sb.namespace, image, &[])
}

#[test]
fn zstd_push_is_pulled_and_run_by_containerd() {
    // `compression=zstd` on a push: the layers the build made are zstd, the base image's layer is
    // pushed as pulled (gzip), as BuildKit does; with `force-compression=true` every layer is
    // zstd. skopeo reads the zstd media types from the registry, the config (and so the diff IDs)
    // is the same as the gzip image's, and containerd pulls, unpacks and runs both images.
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let repo = format!("{}/{}", env.registry, unique("zstd"));
    let (own, all, plain) = (
        format!("{repo}:own"),
        format!("{repo}:all"),
        format!("{repo}:gzip"),
    );
    let out = build(
        &sb,
        &env,
        &[
            "--output",
            &format!("type=image,name={plain},push=true"),
            "--output",
            &format!("type=image,name={own},push=true,compression=zstd"),
            "--output",
            &format!("type=registry,name={all},compression=zstd,force-compression=true"),
        ],
    );
    assert_ok(&out, "memobuild build compression=zstd");
    assert!(
        stderr(&out).contains("layers as zstd level 3: 3 compressed"),
        "{}",
        stderr(&out)
    );

    let (m_plain, c_plain, _) = inspect(&format!("docker://{plain}"));
    let (m_own, c_own, _) = inspect(&format!("docker://{own}"));
    let (m_all, c_all, _) = inspect(&format!("docker://{all}"));
    let (l_plain, l_own, l_all) = (layers(&m_plain), layers(&m_own), layers(&m_all));
    assert_eq!(
        l_plain.len(),
        4,
        "busybox + WORKDIR + RUN + COPY: {l_plain:?}"
    );
    assert!(l_plain.iter().all(|(t, _)| t == GZIP), "{l_plain:?}");
    // Without force: the base layer is the pulled blob, the build's layers are zstd.
    assert_eq!(l_own[0], l_plain[0]);
    assert!(l_own[1..].iter().all(|(t, _)| t == ZSTD), "{l_own:?}");
    // Forced: every layer is zstd, the build's layers are the same blobs as without force.
    assert!(l_all.iter().all(|(t, _)| t == ZSTD), "{l_all:?}");
    assert_eq!(l_all[1..], l_own[1..]);
    assert_ne!(l_all[0].1, l_plain[0].1);
    // Same files: same diff IDs, same config digest.
    assert_eq!(diff_ids(&c_own), diff_ids(&c_plain));
    assert_eq!(diff_ids(&c_all), diff_ids(&c_plain));
    assert_eq!(m_own["config"]["digest"], m_plain["config"]["digest"]);
    assert_eq!(m_all["config"]["digest"], m_plain["config"]["digest"]);

    for image in [&own, &all] {
        let run = ctr_pull_run(&sb, &env, image);
        assert_ok(&run, &format!("ctr run {image}"));
        assert_eq!(stdout(&run), EXPECTED, "{image}");
    }
}

#[test]
fn zstd_images_serve_as_base_images() {
    // An image whose layers are all zstd (here with Docker media types, containerd's
    // `…diff.tar.zstd`, as BuildKit writes for `oci-mediatypes=false`) is a base image like any
    // other: MemoBuild pulls it, containerd unpacks its layers to RUN on them, and `type=local`
    // applies them to a directory.
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    // A COPY layer no other build has: containerd must unpack it from the zstd blob below.
    let marker = unique("marker");
    sb.write("message.txt", &format!("{marker}\n"));
    let base = format!("{}/{}:1", env.registry, unique("zstd-base"));
    let oci = sb.path("base.tar");
    let out = build(
        &sb,
        &env,
        &[
            "--output",
            &format!(
                "type=image,name={base},push=true,oci-mediatypes=false,compression=zstd,force-compression=true"
            ),
            "--output",
            &format!("type=oci,dest={}", oci.display()),
        ],
    );
    assert_ok(&out, "memobuild build (zstd base)");
    // The build left the chain-ID snapshot of its COPY layer in containerd; remove it, so the
    // next build has to unpack that layer (a Docker-typed zstd blob) again.
    let (_, config, _) = inspect(&format!("oci-archive:{}", oci.display()));
    let top = chain_ids(&diff_ids(&config)).pop().unwrap_or_default();
    let rm = common::run(common::ctr(
        &env,
        memobuild_worker::DEFAULT_NAMESPACE,
        &["snapshots", "rm", &top],
    ));
    assert_ok(&rm, "ctr snapshots rm");
    assert!(
        stderr(&out).contains("warning: compression=zstd with oci-mediatypes=false"),
        "{}",
        stderr(&out)
    );
    // (skopeo reads the manifest but, like other containers/image tools, not such an image.)
    let (m, _) = inspect_raw(&format!("docker://{base}"));
    assert!(
        layers(&m).iter().all(|(t, _)| t == DOCKER_ZSTD),
        "{:?}",
        layers(&m)
    );

    // A fresh state directory: nothing of the base is known locally.
    let child = Sandbox::new();
    child.write(
        "Dockerfile",
        &format!("FROM {base}\nRUN cat /app/run.txt > /from-base.txt && wc -l < /app/numbers.txt >> /from-base.txt\n"),
    );
    let dest = child.path("rootfs");
    let out = build(
        &child,
        &env,
        &["--output", &format!("type=local,dest={}", dest.display())],
    );
    assert_ok(&out, "memobuild build FROM a zstd image");
    assert_eq!(
        std::fs::read_to_string(dest.join("from-base.txt")).unwrap_or_default(),
        "built by RUN\n20000\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("app/message.txt")).unwrap_or_default(),
        format!("{marker}\n")
    );
    let snap = common::run(common::ctr(
        &env,
        memobuild_worker::DEFAULT_NAMESPACE,
        &["snapshots", "info", &top],
    ));
    assert_ok(&snap, "the COPY layer was unpacked again");
    assert!(dest.join("bin/busybox").is_file());
}

#[test]
fn uncompressed_oci_layout_is_unpacked_by_umoci() {
    // `compression=uncompressed,force-compression=true` to an OCI layout directory: every layer
    // is a plain tar (`…layer.v1.tar`) whose digest is its diff ID, and `umoci unpack` makes a
    // bundle of it with the base image's and the build's files.
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let layout = sb.path("layout");
    let out = build(
        &sb,
        &env,
        &[
            "--output",
            &format!(
                "type=oci,tar=false,dest={},name=plain:v1,compression=uncompressed,force-compression=true",
                layout.display()
            ),
        ],
    );
    assert_ok(&out, "memobuild build compression=uncompressed");
    let read_json = |p: PathBuf| -> Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = read_json(layout.join("index.json"));
    let manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap_or("")));
    let config = read_json(blob(manifest["config"]["digest"].as_str().unwrap_or("")));
    let ls = layers(&manifest);
    assert_eq!(ls.len(), 4);
    for ((t, d), diff_id) in ls.iter().zip(diff_ids(&config)) {
        assert_eq!(t, TAR);
        assert_eq!(d, &diff_id, "an uncompressed layer's digest is its diff ID");
        let bytes = std::fs::read(blob(d)).unwrap_or_default();
        assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), *d);
        assert_eq!(&bytes[257..262], b"ustar", "a tar, not compressed");
    }

    let bundle = sb.path("bundle");
    let unpack = common::run({
        let mut c = Command::new("umoci");
        c.arg("unpack")
            .arg("--image")
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle);
        c
    });
    assert_ok(&unpack, "umoci unpack");
    let rootfs = bundle.join("rootfs");
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
    assert_eq!(read("app/run.txt"), "built by RUN\n");
    assert_eq!(read("app/message.txt"), "message from the context\n");
    assert_eq!(read("app/numbers.txt").lines().count(), 20000);
    assert!(rootfs.join("bin/busybox").is_file());
}

#[test]
fn gzip_level_9_forced_changes_layer_digests_not_diff_ids() {
    // `compression=gzip,compression-level=9,force-compression=true` recompresses every layer,
    // the base image's too: other layer digests than the default export, the same diff IDs and
    // config, and the image still runs under containerd.
    let Some(env) = Env::get() else { return };
    let sb = sandbox();
    let (default, nine) = (sb.path("default.tar"), sb.path("nine.tar"));
    let out = build(
        &sb,
        &env,
        &[
            "-t",
            "gz9:1",
            "--output",
            &format!("type=oci,dest={}", default.display()),
            "--output",
            &format!(
                "type=oci,dest={},compression=gzip,compression-level=9,force-compression=true",
                nine.display()
            ),
        ],
    );
    assert_ok(&out, "memobuild build compression-level=9");
    let (m_def, c_def, d_def) = inspect(&format!("oci-archive:{}", default.display()));
    let (m_nine, c_nine, d_nine) = inspect(&format!("oci-archive:{}", nine.display()));
    assert_ne!(d_def, d_nine);
    let (l_def, l_nine) = (layers(&m_def), layers(&m_nine));
    assert_eq!(l_def.len(), l_nine.len());
    for (a, b) in l_def.iter().zip(&l_nine) {
        assert_eq!(a.0, GZIP);
        assert_eq!(b.0, GZIP);
        assert_ne!(a.1, b.1, "every layer recompressed");
    }
    assert_eq!(diff_ids(&c_def), diff_ids(&c_nine));
    assert_eq!(m_def["config"]["digest"], m_nine["config"]["digest"]);
    // stdout names the first output's image (the default export).
    assert_eq!(stdout(&out).lines().last().unwrap_or_default(), d_def);

    let run = sb.ctr_run(&env, &nine, "docker.io/library/gz9:1");
    assert_ok(&run, "ctr run (gzip 9)");
    assert_eq!(stdout(&run), EXPECTED);
}

/// The digest of the manifest in an OCI archive.
fn archive_digest(tar: &Path) -> String {
    inspect(&format!("oci-archive:{}", tar.display())).2
}

#[test]
fn zstd_exports_are_reproducible_and_remembered() {
    // Two builds from empty state directories export the same zstd image (same manifest digest,
    // byte-identical archives). A second export from the same state compresses nothing (the
    // conversions are remembered) and gives the same image; the cache keeps its gzip blobs.
    let Some(env) = Env::get() else { return };
    let opts = "compression=zstd,compression-level=12,force-compression=true";
    let export = |sb: &Sandbox, name: &str| -> (Output, PathBuf) {
        let tar = sb.path(name);
        let out = build(
            sb,
            &env,
            &[
                "--output",
                &format!("type=oci,dest={},{opts}", tar.display()),
            ],
        );
        assert_ok(&out, "memobuild build (zstd)");
        (out, tar)
    };
    let (a, b) = (sandbox(), sandbox());
    let (out_a, tar_a) = export(&a, "a.tar");
    let (_, tar_b) = export(&b, "b.tar");
    assert!(
        stderr(&out_a).contains("layers as zstd level 12: 4 compressed"),
        "{}",
        stderr(&out_a)
    );
    let digest = archive_digest(&tar_a);
    assert_eq!(digest, archive_digest(&tar_b));
    assert_eq!(
        sha256_hex(&std::fs::read(&tar_a).unwrap_or_default()),
        sha256_hex(&std::fs::read(&tar_b).unwrap_or_default())
    );
    assert!(stderr(&out_a).contains(&format!("exported {digest} to")));
    // stdout names the image the output wrote, zstd layers and all.
    assert_eq!(stdout(&out_a).lines().last().unwrap_or_default(), digest);

    let (again, tar_again) = export(&a, "again.tar");
    assert!(
        stderr(&again).contains("layers as zstd level 12: 0 compressed")
            && stderr(&again).contains("4 from earlier exports"),
        "{}",
        stderr(&again)
    );
    assert_eq!(archive_digest(&tar_again), digest);

    // The action cache's layers are still the gzip blobs the build made.
    let (m, _, _) = inspect(&format!("oci-archive:{}", tar_a.display()));
    let plain = a.path("plain.tar");
    let out = build(
        &a,
        &env,
        &["--output", &format!("type=oci,dest={}", plain.display())],
    );
    assert_ok(&out, "memobuild build (default)");
    let (m_plain, _, _) = inspect(&format!("oci-archive:{}", plain.display()));
    for (t, d) in layers(&m_plain).iter().skip(1) {
        assert_eq!(t, GZIP);
        assert!(
            a.state()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
                .is_file(),
            "{d}"
        );
    }
    assert!(layers(&m).iter().all(|(t, _)| t == ZSTD));
}

#[test]
fn containerd_output_takes_zstd_layers() {
    // `type=containerd,compression=zstd,force-compression=true`: the image record in containerd's
    // store points at a manifest with zstd layers (their blobs in its content store), and
    // `ctr run` runs it by name.
    let Some(env) = Env::get() else { return };
    let ns = memobuild_worker::DEFAULT_NAMESPACE;
    let sb = sandbox();
    let name = format!("docker.io/library/{}:1", unique("ctd-zstd"));
    let out = build(
        &sb,
        &env,
        &[
            "--output",
            &format!("type=containerd,name={name},compression=zstd,force-compression=true"),
        ],
    );
    let rm = || {
        let _ = common::ctr(&env, ns, &["images", "rm", &name]).output();
    };
    if !out.status.success() {
        rm();
    }
    assert_ok(&out, "memobuild build type=containerd,compression=zstd");
    let line = stderr(&out)
        .lines()
        .find(|l| l.starts_with(&format!("imported {name}@")))
        .map(str::to_string)
        .unwrap_or_default();
    let digest = line
        .split('@')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let manifest = common::run(common::ctr(&env, ns, &["content", "get", &digest]));
    let run = common::ctr_run(&env, ns, &name, &[]);
    rm();
    assert_ok(&manifest, "ctr content get");
    let m: Value = serde_json::from_slice(&manifest.stdout).expect("manifest");
    assert!(
        layers(&m).iter().all(|(t, _)| t == ZSTD),
        "{:?}",
        layers(&m)
    );
    assert_ok(&run, "ctr run");
    assert_eq!(stdout(&run), EXPECTED);
}
