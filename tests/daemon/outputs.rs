//! Outputs the daemon sends back through the session, and pushes.

use super::*;

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
