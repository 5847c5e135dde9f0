//! The cache, end to end on the real containerd: only what changed rebuilds. Each test builds
//! twice (or more) with one state directory and counts, from `--progress json`, which vertices
//! executed ("started") and which came from the cache ("cached").

mod common;

use std::collections::BTreeSet;
use std::process::Output;

use common::{Env, Sandbox, TWO_COPIES, assert_ok, progress_events, stderr};

/// Names of vertices that executed (state `started`) in a `--progress json` run.
fn executed(out: &Output) -> BTreeSet<String> {
    names_in_state(out, "started")
}

fn cached(out: &Output) -> BTreeSet<String> {
    names_in_state(out, "cached")
}

fn names_in_state(out: &Output, state: &str) -> BTreeSet<String> {
    progress_events(out)
        .iter()
        // Vertices of the definition only: exports are steps, not vertices.
        .filter(|e| e["state"] == state && e.get("vertex").is_some())
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        // The context source is read live on every build; it is not a cached step.
        .filter(|n| !n.starts_with("[internal]"))
        .collect()
}

fn build(sb: &Sandbox, env: &Env, extra: &[&str]) -> Output {
    let mut args = vec![
        "--build-arg".to_string(),
        format!("REGISTRY={}", env.registry),
        "--progress".into(),
        "json".into(),
        "--output".into(),
        format!("type=oci,dest={}", sb.path("out.tar").display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sb.build(env, &args);
    assert_ok(&out, "memobuild build");
    out
}

fn digest(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_file_change_reruns_only_what_follows_the_copy_that_reads_it() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", TWO_COPIES)
        .write("a.txt", "a1\n")
        .write("b.txt", "b1\n");
    let first = build(&sb, &env, &[]);
    assert_eq!(executed(&first).len(), 5, "{:?}", executed(&first));

    // Same inputs: nothing executes, same image.
    let again = build(&sb, &env, &[]);
    assert!(executed(&again).is_empty(), "{:?}", executed(&again));
    assert_eq!(digest(&again), digest(&first));

    // b.txt is read by the second COPY only.
    sb.write("b.txt", "b2\n");
    let third = build(&sb, &env, &[]);
    let ran = executed(&third);
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(
        ran.iter()
            .all(|n| n.contains("b.txt") || n.contains("/b-copy")),
        "{ran:?}"
    );
    assert!(cached(&third).iter().any(|n| n.contains("COPY a.txt")));
    assert_ne!(digest(&third), digest(&first));
}

/// Files of noise (incompressible, like most binaries), `count` of `size` bytes, under `dir`.
fn noise_files(sb: &Sandbox, dir: &str, count: usize, size: usize, seed: u64) {
    for i in 0..count {
        let bytes = common::noise(size, seed + i as u64);
        let path = sb.context().join(dir).join(format!("f{i:03}.bin"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
}

#[test]
fn an_edited_big_layer_is_the_image_a_fresh_build_gives() {
    let Some(env) = Env::get() else { return };
    // 4 MiB under one COPY: several of the compressor's 1 MiB chunks, which a rebuild after
    // a one-file edit copies from the last layer instead of compressing again.
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nCOPY src/ /src/\n",
    );
    noise_files(&sb, "src", 32, 128 << 10, 1);
    let first = build(&sb, &env, &[]);
    let tables = sb.state().join("blobs/sha256/.gzip-chunks");
    assert_eq!(
        std::fs::read_dir(&tables).map(|d| d.count()).unwrap_or(0),
        1,
        "the layer's chunk table is kept"
    );
    // One file changes, its size does not: the other chunks are the last layer's.
    let victim = sb.context().join("src/f017.bin");
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[1000] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("write");
    let edited = build(&sb, &env, &[]);
    assert_eq!(executed(&edited).len(), 1, "{:?}", executed(&edited));
    assert_ne!(digest(&edited), digest(&first));

    let fresh = Sandbox::new();
    fresh.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nCOPY src/ /src/\n",
    );
    noise_files(&fresh, "src", 32, 128 << 10, 1);
    std::fs::write(fresh.context().join("src/f017.bin"), &bytes).expect("write");
    let from_scratch = build(&fresh, &env, &[]);
    assert_eq!(digest(&edited), digest(&from_scratch));
}

/// The layer digests of the image in the OCI archive `archive`.
fn layer_digests(archive: &std::path::Path) -> Vec<String> {
    let member = |name: &str| -> serde_json::Value {
        let mut c = std::process::Command::new("tar");
        c.arg("-xOf").arg(archive).arg(name);
        let out = common::run(c);
        assert_ok(&out, &format!("tar -xOf {name}"));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let blob = |d: &serde_json::Value| {
        format!(
            "blobs/sha256/{}",
            d.as_str().unwrap_or_default().trim_start_matches("sha256:")
        )
    };
    let index = member("index.json");
    let manifest = member(&blob(&index["manifests"][0]["digest"]));
    manifest["layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// Verifies: a big COPY that runs again after a one-file edit links the files its previous
// result holds unchanged instead of writing them again (the step after it sees two links on
// those, one on the edited file), and its layer is the one a build from nothing makes.
#[test]
fn a_big_copy_run_again_links_its_unchanged_files() {
    let Some(env) = Env::get() else { return };
    const DOCKERFILE: &str = "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\n\
        COPY src/ /src/\n\
        RUN stat -c '%h %n' /src/f000.bin /src/f017.bin /src/f039.bin > /links\n\
        CMD [\"cat\", \"/links\"]\n";
    // 10 MiB of noise: over the size from which a copy's result is reused. Never the noise of
    // an earlier run: containerd would still hold (and share) that run's snapshots.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let sb = Sandbox::new();
    sb.write("Dockerfile", DOCKERFILE);
    noise_files(&sb, "src", 40, 256 << 10, seed);
    build(&sb, &env, &["-t", "reuse:test"]);
    let run = sb.ctr_run(&env, &sb.path("out.tar"), "docker.io/library/reuse:test");
    assert_ok(&run, "ctr run");
    assert_eq!(
        common::stdout(&run),
        "1 /src/f000.bin\n1 /src/f017.bin\n1 /src/f039.bin\n"
    );

    let victim = sb.context().join("src/f017.bin");
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[5000] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("write");
    let edited = build(&sb, &env, &["-t", "reuse:test"]);
    assert_eq!(executed(&edited).len(), 2, "{:?}", executed(&edited));
    let run = sb.ctr_run(&env, &sb.path("out.tar"), "docker.io/library/reuse:test");
    assert_ok(&run, "ctr run");
    assert_eq!(
        common::stdout(&run),
        "2 /src/f000.bin\n1 /src/f017.bin\n2 /src/f039.bin\n"
    );
    let edited_layers = layer_digests(&sb.path("out.tar"));

    let fresh = Sandbox::new();
    fresh.write("Dockerfile", DOCKERFILE);
    noise_files(&fresh, "src", 40, 256 << 10, seed);
    std::fs::write(fresh.context().join("src/f017.bin"), &bytes).expect("write");
    build(&fresh, &env, &[]);
    let fresh_layers = layer_digests(&fresh.path("out.tar"));
    // Base and COPY layers; the RUN's differs, as it wrote the link counts it saw.
    assert_eq!(edited_layers.len(), 3);
    assert_eq!(edited_layers[..2], fresh_layers[..2]);
}

#[test]
fn touching_files_reruns_nothing() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", TWO_COPIES)
        .write("a.txt", "a\n")
        .write("b.txt", "b\n");
    let first = build(&sb, &env, &[]);
    for f in ["a.txt", "b.txt", "Dockerfile"] {
        filetime::set_file_mtime(
            sb.context().join(f),
            filetime::FileTime::from_unix_time(2_000_000_000, 0),
        )
        .expect("touch");
    }
    let second = build(&sb, &env, &[]);
    assert!(executed(&second).is_empty(), "{:?}", executed(&second));
    assert_eq!(digest(&second), digest(&first));
}

#[test]
fn ignored_files_rerun_nothing() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nCOPY . /ctx\nRUN ls /ctx > /listing\n",
    )
    .write(".dockerignore", "*.log\nbuild/\n")
    .write("keep.txt", "k\n")
    .write("debug.log", "1\n")
    .write("build/out.bin", "x\n");
    let first = build(&sb, &env, &[]);
    sb.write("debug.log", "2\n")
        .write("build/out.bin", "y\n")
        .write("new.log", "n\n");
    let second = build(&sb, &env, &[]);
    assert!(executed(&second).is_empty(), "{:?}", executed(&second));
    assert_eq!(digest(&second), digest(&first));
    // A file that is not ignored does count.
    sb.write("keep.txt", "changed\n");
    let third = build(&sb, &env, &[]);
    assert_eq!(executed(&third).len(), 2, "{:?}", executed(&third));
}

#[test]
fn a_file_a_copy_excludes_is_not_part_of_its_key() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nCOPY --exclude=*.txt src/ /src/\nRUN ls -R /src > /listing\n",
    )
    .write("src/a.txt", "notes\n")
    .write("src/b.rs", "code\n")
    .write("src/deep/c.txt", "deep notes\n");
    let first = build(&sb, &env, &[]);
    // `*.txt` is relative to the copied `src/`: src/a.txt is left out, src/deep/c.txt is not.
    sb.write("src/a.txt", "edited notes\n");
    let second = build(&sb, &env, &[]);
    assert!(executed(&second).is_empty(), "{:?}", executed(&second));
    assert_eq!(digest(&second), digest(&first));
    sb.write("src/deep/c.txt", "edited deep notes\n");
    let third = build(&sb, &env, &[]);
    assert_eq!(executed(&third).len(), 2, "{:?}", executed(&third));
}

#[test]
fn use_gitignore_leaves_out_what_git_ignores_from_image_and_key() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nCOPY . /ctx\nRUN cd /ctx && find . | sort > /listing\n",
    )
    .write(".gitignore", "target/\n*.o\n!keep.o\n")
    .write("sub/.gitignore", "gen.rs\n")
    .write("src/main.rs", "fn main() {}\n")
    .write("target/debug/app", "binary\n")
    .write("a.o", "object\n")
    .write("keep.o", "kept\n")
    .write("sub/gen.rs", "generated\n")
    .write("sub/lib.rs", "lib\n")
    .write(".git/HEAD", "ref: refs/heads/main\n");
    let local = |name: &str| format!("type=local,dest={}", sb.path(name).display());
    let first = build(&sb, &env, &["--use-gitignore", "--output", &local("fs1")]);
    let listing = std::fs::read_to_string(sb.path("fs1/listing")).expect("listing");
    for present in ["./src/main.rs", "./keep.o", "./sub/lib.rs", "./.gitignore"] {
        assert!(
            listing.lines().any(|l| l == present),
            "{present} missing:\n{listing}"
        );
    }
    for absent in ["./target", "./a.o", "./sub/gen.rs", "./.git"] {
        assert!(
            !listing
                .lines()
                .any(|l| l == absent || l.starts_with(&format!("{absent}/"))),
            "{absent} copied:\n{listing}"
        );
    }
    assert!(!sb.path("fs1/ctx/target").exists());

    // What git ignores is not part of any key either.
    sb.write("target/debug/app", "rebuilt\n")
        .write("a.o", "changed\n")
        .write("sub/gen.rs", "regenerated\n")
        .write(".git/HEAD", "ref: refs/heads/other\n");
    let second = build(&sb, &env, &["--use-gitignore"]);
    assert!(executed(&second).is_empty(), "{:?}", executed(&second));
    assert_eq!(digest(&second), digest(&first));

    // Without the flag (the default, as in BuildKit) the context is everything but .dockerignore.
    let third = build(&sb, &env, &["--output", &local("fs3")]);
    assert_eq!(executed(&third).len(), 2, "{:?}", executed(&third));
    let listing = std::fs::read_to_string(sb.path("fs3/listing")).expect("listing");
    assert!(
        listing.lines().any(|l| l == "./target/debug/app"),
        "{listing}"
    );
}

// Verifies: a RUN that binds the context is cached by the files the mount shows: it stays cached
// when only mtimes change or a .dockerignored file changes, re-runs when a bound file changes
// (and `--explain` names the file), and a RUN binding only a subdirectory ignores changes
// outside it.
#[test]
fn owners_count_only_where_a_step_sees_them() {
    // A COPY from the context makes its files root-owned (as BuildKit's transfer does), so who
    // owns them on this machine is no input: checkouts by different users share cache
    // entries. A RUN binding the context as it is sees the owners, so for it they are one.
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nCOPY a.txt /a.txt\n\
         RUN stat -c %u:%g /a.txt > /copied-owner\n\
         RUN --mount=type=bind,target=/ctx stat -c %u:%g /ctx/a.txt > /bound-owner\n",
    )
    .write("a.txt", "a\n");
    let local = |name: &str| format!("type=local,dest={}", sb.path(name).display());
    let first = build(&sb, &env, &["--output", &local("fs1")]);
    assert_eq!(executed(&first).len(), 4, "{:?}", executed(&first));
    std::os::unix::fs::chown(sb.context().join("a.txt"), Some(1234), Some(4321)).expect("chown");
    let second = build(&sb, &env, &["--output", &local("fs2")]);
    let ran = executed(&second);
    assert_eq!(ran.len(), 1, "only the RUN that binds the context: {ran:?}");
    assert!(ran.iter().all(|n| n.contains("/bound-owner")), "{ran:?}");
    let read = |p: &str| std::fs::read_to_string(sb.path(p)).expect(p);
    assert_eq!(read("fs2/copied-owner"), "0:0\n");
    assert_eq!(read("fs2/bound-owner"), "1234:4321\n");
    assert_eq!(read("fs1/bound-owner"), "0:0\n");
}

#[test]
fn a_run_binding_the_context_reruns_only_when_a_bound_file_changes() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\n\
         RUN --mount=type=bind,target=/src cat /src/app.txt > /app-copy\n\
         RUN --mount=type=bind,source=sub,target=/sub cat /sub/x.txt > /x-copy\n",
    )
    .write(".dockerignore", "*.log\n")
    .write("app.txt", "app\n")
    .write("other.txt", "other\n")
    .write("debug.log", "1\n")
    .write("sub/x.txt", "x\n");
    let first = build(&sb, &env, &[]);
    assert_eq!(
        executed(&first).len(),
        3,
        "FROM and both RUNs: {:?}",
        executed(&first)
    );

    // Unchanged, touched, and an ignored file changed or added: nothing runs.
    let again = build(&sb, &env, &[]);
    assert!(executed(&again).is_empty(), "{:?}", executed(&again));
    for f in ["app.txt", "other.txt", "sub/x.txt", "Dockerfile"] {
        filetime::set_file_mtime(
            sb.context().join(f),
            filetime::FileTime::from_unix_time(2_000_000_000, 0),
        )
        .expect("touch");
    }
    sb.write("debug.log", "2\n").write("new.log", "n\n");
    let touched = build(&sb, &env, &[]);
    assert!(executed(&touched).is_empty(), "{:?}", executed(&touched));
    assert_eq!(digest(&touched), digest(&first));

    // A file only the first RUN sees: it re-runs (its output is the same, so the second RUN,
    // which binds only sub/, stays cached), and --explain names the file.
    sb.write("other.txt", "changed\n");
    let third = build(&sb, &env, &["--explain"]);
    let ran = executed(&third);
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran.iter().all(|n| n.contains("/app-copy")), "{ran:?}");
    assert!(
        stderr(&third).contains("file `other.txt` changed"),
        "{}",
        stderr(&third)
    );
    assert!(cached(&third).iter().any(|n| n.contains("/x-copy")));

    // A file under sub/: both RUNs see it.
    sb.write("sub/x.txt", "x2\n");
    let fourth = build(&sb, &env, &[]);
    let ran = executed(&fourth);
    assert!(ran.iter().any(|n| n.contains("/x-copy")), "{ran:?}");
    assert!(ran.iter().any(|n| n.contains("/app-copy")), "{ran:?}");
    assert_ne!(digest(&fourth), digest(&first));
}

#[test]
fn a_rerun_with_identical_output_leaves_later_steps_cached() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    // NOISE is in the RUN's environment (so a new value re-runs it) but not in its output.
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nARG NOISE=1\n\
         RUN echo \"noise is $NOISE\" && echo stable > /stable\nCOPY a.txt /a\nWORKDIR /work\n",
    )
    .write("a.txt", "a\n");
    build(&sb, &env, &[]);
    let first = diff_ids(&sb);
    let second = build(&sb, &env, &["--build-arg", "NOISE=2"]);
    let ran = executed(&second);
    assert_eq!(ran.len(), 1, "only the RUN re-executes: {ran:?}");
    assert!(ran.iter().all(|n| n.contains("RUN echo")), "{ran:?}");
    let hits = cached(&second);
    assert!(hits.iter().any(|n| n.contains("COPY a.txt")), "{hits:?}");
    assert!(hits.iter().any(|n| n.contains("WORKDIR /work")), "{hits:?}");
    // The config differs (history records the build arg, as BuildKit's does); the layers don't.
    assert_eq!(diff_ids(&sb), first, "identical files, identical layers");
}

/// The layer diff-ids of the image the last build exported.
fn diff_ids(sb: &Sandbox) -> serde_json::Value {
    let out = common::run({
        let mut c = std::process::Command::new("skopeo");
        c.args([
            "inspect",
            "--config",
            &format!("oci-archive:{}", sb.path("out.tar").display()),
        ]);
        c
    });
    assert_ok(&out, "skopeo inspect --config");
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config");
    cfg["rootfs"]["diff_ids"].clone()
}

#[test]
fn explain_names_the_changed_file_and_build_arg() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nARG VERSION=1\nCOPY a.txt /a\nRUN echo $VERSION > /v\n",
    )
    .write("a.txt", "a\n");
    build(&sb, &env, &[]);
    sb.write("a.txt", "changed\n");
    let out = build(&sb, &env, &["--explain", "--build-arg", "VERSION=2"]);
    let text = stderr(&out);
    assert!(text.contains("file `a.txt` changed"), "{text}");

    // `memobuild why` says the same afterwards.
    let mut why = common::memobuild();
    why.arg("why")
        .arg("--state-dir")
        .arg(sb.state())
        .arg(sb.context());
    let why = common::run(why);
    assert_ok(&why, "memobuild why");
    let said = common::stdout(&why);
    assert!(said.contains("file `a.txt` changed"), "{said}");

    // A build-arg change alone: the RUN reruns because of it.
    let out = build(&sb, &env, &["--explain", "--build-arg", "VERSION=3"]);
    let text = stderr(&out);
    assert!(text.contains("VERSION changed from `2` to `3`"), "{text}");
}

#[test]
fn a_corrupted_cached_layer_is_never_served_and_is_rebuilt() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo precious > /data\n",
    );
    let first = build(&sb, &env, &[]);
    // Damage every blob MemoBuild wrote for the RUN (flip one byte in each blob in the store
    // that is not a base layer: base layers come back from the registry anyway).
    let blobs = sb.state().join("blobs/sha256");
    let mut damaged = 0;
    for e in std::fs::read_dir(&blobs).expect("blobs dir") {
        let p = e.expect("entry").path();
        if !p.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&p).expect("read blob");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&p, bytes).expect("write blob");
        damaged += 1;
    }
    assert!(damaged >= 2, "base and RUN layers");
    let second = build(&sb, &env, &[]);
    assert!(
        executed(&second)
            .iter()
            .any(|n| n.contains("RUN echo precious")),
        "{:?}",
        executed(&second)
    );
    assert_eq!(digest(&second), digest(&first), "rebuilt to the same image");
    // And the exported image is intact: skopeo reads it.
    let inspect = common::run({
        let mut c = std::process::Command::new("skopeo");
        c.args([
            "inspect",
            &format!("oci-archive:{}", sb.path("out.tar").display()),
        ]);
        c
    });
    assert_ok(&inspect, "skopeo inspect");
}

#[test]
fn a_record_with_a_tampered_diff_id_is_refused_and_rebuilt() {
    // Issue 12, item 1: one hex digit of a diff ID changed in the RUN step's action record
    // under `<state>/cache/ac/` (the JSON still valid). The next build must not serve it: a
    // warning names the step, the step runs again, and the exported image is the first build's
    // (its config's diff IDs match its layers: `umoci unpack`, which checks them, unpacks it).
    // Before the fix the step came out CACHED and the image had the edited diff ID.
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo precious > /data\n",
    );
    let layout = sb.path("layout");
    let layout_output = format!(
        "type=oci,tar=false,dest={},name=tamper:v1",
        layout.display()
    );
    let first = build(&sb, &env, &["--output", &layout_output]);

    let mut tampered = 0;
    for path in walk(&sb.state().join("cache/ac")) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(mut record) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if !record["name"]
            .as_str()
            .is_some_and(|n| n.contains("RUN echo precious"))
        {
            continue;
        }
        let Some(layer) = record["layers"].as_array_mut().and_then(|l| l.last_mut()) else {
            continue;
        };
        let diff_id = layer["diff_id"].as_str().expect("diff_id").to_string();
        let (head, last) = diff_id.split_at(diff_id.len() - 1);
        layer["diff_id"] = format!("{head}{}", if last == "0" { "1" } else { "0" }).into();
        std::fs::write(&path, serde_json::to_vec_pretty(&record).expect("json")).expect("write");
        tampered += 1;
    }
    assert_eq!(tampered, 1, "the RUN step's record");

    std::fs::remove_dir_all(&layout).expect("remove layout");
    let second = build(&sb, &env, &["--output", &layout_output]);
    let warnings: Vec<String> = progress_events(&second)
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .filter(|m| m.contains("does not match its blobs"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", stderr(&second));
    assert!(
        warnings[0].starts_with("warning:") && warnings[0].contains("RUN echo precious"),
        "{warnings:?}"
    );
    assert!(
        executed(&second)
            .iter()
            .any(|n| n.contains("RUN echo precious")),
        "{:?}",
        executed(&second)
    );
    assert_eq!(digest(&second), digest(&first), "rebuilt to the same image");
    let unpack = common::run({
        let mut c = std::process::Command::new("umoci");
        c.arg("unpack")
            .arg("--image")
            .arg(format!("{}:v1", layout.display()))
            .arg(sb.path("bundle"));
        c
    });
    assert_ok(&unpack, "umoci unpack");
    let data = std::fs::read_to_string(sb.path("bundle/rootfs/data")).unwrap_or_default();
    assert_eq!(data, "precious\n");

    // The record was rewritten by the step: the next build serves it without a word.
    let third = build(&sb, &env, &[]);
    assert!(executed(&third).is_empty(), "{:?}", executed(&third));
    assert!(
        !stderr(&third).contains("does not match its blobs"),
        "{}",
        stderr(&third)
    );
}

#[test]
fn a_build_killed_midway_leaves_a_usable_cache() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo one > /one\nRUN sleep 30\n",
    );
    let mut cmd = common::memobuild();
    cmd.arg("build")
        .arg("--containerd")
        .arg(&env.containerd)
        .arg("--state-dir")
        .arg(sb.state())
        .args(["--build-arg", &format!("REGISTRY={}", env.registry)])
        .args(["--progress", "json"])
        .arg(sb.context())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn memobuild");
    // Wait until the sleep step has started, then kill -9.
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    for line in reader {
        let line = line.expect("line");
        if line.contains("sleep 30") && line.contains("\"started\"") {
            break;
        }
    }
    let killed = child.id();
    // The killed build's containers: containerd's (labelled with its pid) and runc's (whose
    // bundle names it as owner).
    let containers = |env: &Env| {
        let filter = format!("labels.\"memobuild.pid\"=={killed}");
        let out = common::run(common::ctr(
            env,
            "memobuild",
            &["containers", "ls", "-q", &filter],
        ));
        assert_ok(&out, "ctr containers ls");
        common::stdout(&out).lines().count() + common::runc_containers_of(killed).len()
    };
    // Killed once the step's container exists, which then outlives the build.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while containers(&env) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(containers(&env), 1, "the killed build's container");
    let left = common::runc_containers_of(killed);

    // The next build of a shorter Dockerfile reuses the finished step and succeeds, and removes
    // what the killed one left (issue 12 item 8).
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo one > /one\nRUN true\n",
    );
    let out = build(&sb, &env, &[]);
    assert!(
        cached(&out).iter().any(|n| n.contains("echo one")),
        "{:?}",
        cached(&out)
    );
    assert_eq!(containers(&env), 0, "the killed build's container is left");
    let listed = common::runc_listed();
    for id in &left {
        assert!(!listed.contains(id), "runc still has `{id}`");
    }
}

#[test]
fn cache_max_size_shrinks_the_local_cache_after_a_build() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN head -c 300000 /dev/urandom > /noise\n",
    );
    build(&sb, &env, &[]);
    let blobs = sb.state().join("blobs/sha256");
    let count = || {
        std::fs::read_dir(&blobs)
            .expect("blobs")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
            .count()
    };
    let before = count();
    // Age every entry past the 10-minute grace period, as if the build were long ago.
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    for dir in [blobs.clone(), sb.state().join("cache/ac")] {
        for e in walk(&dir) {
            filetime::set_file_times(&e, old, old).expect("age");
        }
    }
    // A different Dockerfile, so this build's own entries are new and the old ones can go.
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo small > /small\n",
    );
    let out = build(&sb, &env, &["--cache-max-size", "1KB"]);
    assert!(stderr(&out).contains("cache: removed"), "{}", stderr(&out));
    assert_eq!(count(), before, "the old RUN layer went, the new one came");
    // The next build of the same Dockerfile is still fully cached: recent entries were spared.
    let again = build(&sb, &env, &["--cache-max-size", "1KB"]);
    assert!(executed(&again).is_empty(), "{:?}", executed(&again));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Committed snapshots in `namespace`.
fn committed_snapshots(env: &Env, namespace: &str) -> usize {
    let out = common::run(common::ctr(env, namespace, &["snapshots", "ls"]));
    assert_ok(&out, "ctr snapshots ls");
    common::stdout(&out)
        .lines()
        .filter(|l| l.split_whitespace().last() == Some("Committed"))
        .count()
}

fn cache_cmd(sb: &Sandbox, env: &Env, args: &[&str]) -> Output {
    let mut cmd = common::memobuild();
    cmd.arg("cache")
        .args(args)
        .arg("--state-dir")
        .arg(sb.state())
        .arg("--containerd")
        .arg(&env.containerd);
    let out = common::run(cmd);
    assert_ok(&out, "memobuild cache");
    out
}

// Verifies: the snapshots a build commits (in its own `--namespace`) are counted by
// `cache du --snapshots`; `cache prune --snapshots --keep-duration 1h` keeps them (just used);
// `--all` removes every one from containerd without touching the local cache; the next build
// takes every step from the cache with the same image, and a changed last step runs on
// snapshots unpacked again from the cached layers.
#[test]
fn snapshots_are_counted_and_pruned_and_come_back_from_the_cache() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let ns = format!("{}-snap", sb.namespace);
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo one > /one\nRUN echo two > /two\n",
    );
    let first = build(&sb, &env, &["--namespace", &ns]);
    let made = committed_snapshots(&env, &ns);
    assert!(made >= 3, "base layer and two RUNs: {made}");

    let du = cache_cmd(&sb, &env, &["du", "--snapshots", "--namespace", &ns]);
    let du_text = common::stdout(&du);
    assert!(
        du_text.contains(&format!("snapshots: {made} committed by MemoBuild")),
        "{du_text}"
    );

    let kept = cache_cmd(
        &sb,
        &env,
        &[
            "prune",
            "--snapshots",
            "--keep-duration",
            "1h",
            "--namespace",
            &ns,
        ],
    );
    assert!(
        common::stdout(&kept).contains("removed 0 snapshots"),
        "{}",
        common::stdout(&kept)
    );
    assert_eq!(committed_snapshots(&env, &ns), made);

    let records = walk(&sb.state().join("cache/ac")).len();
    let pruned = cache_cmd(
        &sb,
        &env,
        &["prune", "--snapshots", "--all", "--namespace", &ns],
    );
    assert!(
        common::stdout(&pruned).contains(&format!("removed {made} snapshots")),
        "{}",
        common::stdout(&pruned)
    );
    assert_eq!(committed_snapshots(&env, &ns), 0);
    assert_eq!(
        walk(&sb.state().join("cache/ac")).len(),
        records,
        "local cache untouched"
    );

    let again = build(&sb, &env, &["--namespace", &ns]);
    assert!(executed(&again).is_empty(), "{:?}", executed(&again));
    assert_eq!(digest(&again), digest(&first));

    // A step on top of the pruned ones runs on snapshots unpacked again from the cache.
    sb.write(
        "Dockerfile",
        "ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
RUN echo one > /one
RUN echo three > /two
CMD cat /one /two
",
    );
    let changed = build(&sb, &env, &["--namespace", &ns, "-t", "snap:test"]);
    let ran: Vec<String> = executed(&changed).into_iter().collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(ran[0].contains("echo three"), "{ran:?}");
    let run = sb.ctr_run(&env, &sb.path("out.tar"), "docker.io/library/snap:test");
    assert_ok(&run, "ctr run");
    assert_eq!(common::stdout(&run), "one\nthree\n");
}

// Verifies (issue 12 item 10): builds that share a state directory and run at the same time
// execute a vertex once: the others wait for it and take its result from the cache, so every
// build's image has the same stamp the one execution wrote.
#[test]
fn concurrent_builds_on_one_state_dir_run_each_vertex_once() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\n\
         RUN cat /proc/sys/kernel/random/uuid > /stamp && sleep 2\n\
         RUN cp /stamp /stamp-copy\n",
    );
    const BUILDS: usize = 4;
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..BUILDS)
            .map(|i| {
                let (sb, env) = (&sb, &env);
                s.spawn(move || {
                    let dest = sb.path(&format!("out-{i}"));
                    let args = [
                        "--build-arg".to_string(),
                        format!("REGISTRY={}", env.registry),
                        "--progress".into(),
                        "json".into(),
                        "--output".into(),
                        format!("type=local,dest={}", dest.display()),
                    ];
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    sb.build(env, &args)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("build thread"))
            .collect()
    });
    for o in &outs {
        assert_ok(o, "memobuild build");
    }
    let runs: usize = outs
        .iter()
        .map(|o| {
            executed(o)
                .iter()
                .filter(|n| n.contains("random/uuid"))
                .count()
        })
        .sum();
    assert_eq!(
        runs, 1,
        "the stamping RUN executed {runs} times across {BUILDS} builds"
    );
    let stamps: BTreeSet<String> = (0..BUILDS)
        .map(|i| std::fs::read_to_string(sb.path(&format!("out-{i}/stamp"))).expect("stamp"))
        .collect();
    assert_eq!(stamps.len(), 1, "{stamps:?}");
}

// Verifies (issue 12 item 8): what a killed build leaves (a partial blob download, its scratch
// directory, a partial export beside the output) is removed by the next build, and
// `cache prune` removes it too; a live process's temporaries are kept.
#[test]
fn temporaries_of_killed_builds_are_removed() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write("Dockerfile", TWO_COPIES)
        .write("a.txt", "a1\n")
        .write("b.txt", "b1\n");
    build(&sb, &env, &[]);
    // A process id that no longer exists.
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let dead = child.id();
    child.wait().expect("wait");
    let state = sb.state();
    let partial_blob = state.join(format!("blobs/sha256/.tmp-{dead}-partial"));
    std::fs::write(&partial_blob, vec![0u8; 4096]).expect("write");
    let scratch = state.join(format!("tmp/{dead}/export-1"));
    std::fs::create_dir_all(&scratch).expect("mkdir");
    std::fs::write(scratch.join("layer"), b"junk").expect("write");
    let partial_export = sb.path(&format!(".memobuild-export-{dead}-abc"));
    std::fs::write(&partial_export, b"half a tar").expect("write");
    let live = state.join(format!("blobs/sha256/.tmp-{}-mine", std::process::id()));
    std::fs::write(&live, b"in use").expect("write");

    build(&sb, &env, &[]);
    assert!(!partial_blob.exists(), "partial blob left");
    assert!(!state.join(format!("tmp/{dead}")).exists(), "scratch left");
    assert!(!partial_export.exists(), "partial export left");
    assert!(live.exists(), "a live process's temporary was removed");

    std::fs::write(&partial_blob, b"again").expect("write");
    let out = cache_cmd(&sb, &env, &["prune", "--keep-duration", "1000d"]);
    assert_ok(&out, "cache prune");
    assert!(!partial_blob.exists(), "prune left the partial blob");
}
