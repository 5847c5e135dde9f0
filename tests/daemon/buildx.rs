//! What buildx's flags ask of the frontend, its subrequests, and the progress it prints.

use super::*;

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
