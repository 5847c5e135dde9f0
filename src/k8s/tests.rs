//! Tests of the Job manifest and its YAML.

use super::checks::*;
use super::*;
use clap::Parser;
use serde_json::json;

/// `memobuild k8s` alone, to parse flags as the binary will.
#[derive(Debug, Parser)]
struct K8sCli {
    #[command(subcommand)]
    command: K8sCommand,
}

fn parse(args: &[&str]) -> anyhow::Result<JobArgs> {
    let argv = ["k8s", "job"].iter().chain(args);
    let K8sCommand::Job(job) = K8sCli::try_parse_from(argv)?.command;
    Ok(job)
}

const REPO: &str = "https://example.invalid/repo.git#main:app";

// Verifies: clap accepts the flag definitions (no clashing names or shorts).
#[test]
fn flags_are_well_formed() {
    use clap::CommandFactory;
    K8sCli::command().debug_assert();
}

// Verifies: the container runs `memobuild build` with embedded containerd, the state volume,
// plain progress, each forwarded flag in a fixed order, and the context last, as given.
#[test]
fn container_args_forward_the_build_flags() -> anyhow::Result<()> {
    let a = parse(&[
        "--image",
        "reg.example/memobuild:1",
        "-f",
        "docker/Dockerfile",
        "--target",
        "prod",
        "--build-arg",
        "A=1",
        "--build-arg",
        "B=x y",
        "-t",
        "reg.example/app:1",
        "--tag",
        "reg.example/app:latest",
        "--push",
        "--output",
        "type=oci,dest=/tmp/out.tar",
        "--no-cache",
        "--project",
        "app",
        "--remote-cache",
        "http://cache.ci.svc:8080",
        "--ssh-secret",
        "git-ssh:id_ed25519",
        REPO,
    ])?;
    let want: Vec<&str> = vec![
        "--progress",
        "plain",
        "--containerd",
        "embedded",
        "--state-dir",
        "/var/lib/memobuild",
        "--file",
        "docker/Dockerfile",
        "--target",
        "prod",
        "--build-arg",
        "A=1",
        "--build-arg",
        "B=x y",
        "--tag",
        "reg.example/app:1",
        "--tag",
        "reg.example/app:latest",
        "--push",
        "--output",
        "type=oci,dest=/tmp/out.tar",
        "--no-cache",
        "--project",
        "app",
        "--remote-cache",
        "http://cache.ci.svc:8080",
        "--ssh",
        "default=/var/run/memobuild/ssh/id_ed25519",
        REPO,
    ];
    assert_eq!(build_command_args(&a)?, want);
    let m = job_manifest(&a)?;
    let c = &m["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["memobuild", "build"]));
    assert_eq!(c["args"], json!(want));
    assert_eq!(c["name"], "build");
    assert_eq!(c["securityContext"], json!({"privileged": true}));

    let minimal = parse(&[
        "--image",
        "i",
        "--progress",
        "json",
        "--ssh-known-hosts",
        "ssh-hosts:known_hosts",
        "git@github.com:o/r.git",
    ])?;
    assert_eq!(
        build_command_args(&minimal)?,
        [
            "--progress",
            "json",
            "--containerd",
            "embedded",
            "--state-dir",
            "/var/lib/memobuild",
            "git@github.com:o/r.git"
        ]
    );
    Ok(())
}

// Verifies: the Job's shape: metadata, labels on Job and pod, defaults (ttl 3600, no retry,
// restartPolicy Never, an emptyDir state volume), and the optional pod settings.
#[test]
fn manifest_shape_and_defaults() -> anyhow::Result<()> {
    let m = job_manifest(&parse(&["--image", "img", REPO])?)?;
    assert_eq!(m["apiVersion"], "batch/v1");
    assert_eq!(m["kind"], "Job");
    assert_eq!(
        m["metadata"],
        json!({"name": "memobuild-build", "labels": {
            "app.kubernetes.io/name": "memobuild", "app.kubernetes.io/component": "build"}})
    );
    assert_eq!(m["spec"]["backoffLimit"], 0);
    assert_eq!(m["spec"]["ttlSecondsAfterFinished"], 3600);
    assert!(m["spec"].get("activeDeadlineSeconds").is_none());
    let pod = &m["spec"]["template"]["spec"];
    assert_eq!(
        m["spec"]["template"]["metadata"]["labels"],
        m["metadata"]["labels"]
    );
    assert_eq!(pod["restartPolicy"], "Never");
    // The pause container is PID 1 and reaps what memobuild leaves (shims, ssh-agent).
    assert_eq!(pod["shareProcessNamespace"], true);
    assert_eq!(pod["volumes"], json!([{"name": "state", "emptyDir": {}}]));
    let c = &pod["containers"][0];
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "state", "mountPath": "/var/lib/memobuild"}])
    );
    assert!(c.get("env").is_none());
    assert!(c.get("resources").is_none());
    assert!(pod.get("serviceAccountName").is_none());

    let m = job_manifest(&parse(&[
        "--image",
        "img",
        "--name",
        "nightly",
        "--generate-name",
        "--namespace",
        "ci",
        "--project",
        "shop.api",
        "--state-pvc",
        "memobuild-state",
        "--cpu",
        "2",
        "--memory",
        "4Gi",
        "--ttl",
        "60",
        "--backoff-limit",
        "2",
        "--deadline",
        "1800",
        "--service-account",
        "builder",
        "--node-selector",
        "kubernetes.io/arch=amd64",
        "--node-selector",
        "pool=build",
        REPO,
    ])?)?;
    assert_eq!(m["metadata"]["generateName"], "nightly-");
    assert!(m["metadata"].get("name").is_none());
    assert_eq!(m["metadata"]["namespace"], "ci");
    assert_eq!(m["metadata"]["labels"]["memobuild.io/project"], "shop.api");
    assert_eq!(m["spec"]["ttlSecondsAfterFinished"], 60);
    assert_eq!(m["spec"]["backoffLimit"], 2);
    assert_eq!(m["spec"]["activeDeadlineSeconds"], 1800);
    let pod = &m["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "builder");
    assert_eq!(pod["shareProcessNamespace"], true);
    assert_eq!(
        pod["nodeSelector"],
        json!({"kubernetes.io/arch": "amd64", "pool": "build"})
    );
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "state", "persistentVolumeClaim": {"claimName": "memobuild-state"}})
    );
    assert_eq!(
        pod["containers"][0]["resources"],
        json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})
    );
    Ok(())
}

// Verifies: credentials are referenced (secretKeyRef, secret and configMap volumes), never
// inlined: no token value can reach the manifest, whose only inputs are names.
#[test]
fn secrets_are_referenced_never_inlined() -> anyhow::Result<()> {
    let a = parse(&[
        "--image",
        "img",
        "--remote-cache",
        "https://cache.example",
        "--remote-cache-token-secret",
        "cache-token:token",
        "--registry-auth-secret",
        "regcred",
        "--ssh-secret",
        "git-ssh:id_ed25519",
        "--ssh-known-hosts",
        "ssh-hosts:known_hosts",
        "git@github.com:o/r.git#v1",
    ])?;
    let m = job_manifest(&a)?;
    let pod = &m["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["env"],
        json!([
            {"name": "DOCKER_CONFIG", "value": "/root/.docker"},
            {"name": "MEMOBUILD_REMOTE_CACHE_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": "cache-token", "key": "token"}}},
        ])
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "state", "emptyDir": {}},
            {"name": "docker-config", "secret": {"secretName": "regcred",
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
            {"name": "ssh-key", "secret": {"secretName": "git-ssh", "defaultMode": 256,
                "items": [{"key": "id_ed25519", "path": "id_ed25519", "mode": 256}]}},
            {"name": "ssh-known-hosts", "configMap": {"name": "ssh-hosts",
                "items": [{"key": "known_hosts", "path": "known_hosts"}]}},
        ])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "state", "mountPath": "/var/lib/memobuild"},
            {"name": "docker-config", "mountPath": "/root/.docker", "readOnly": true},
            {"name": "ssh-key", "mountPath": "/var/run/memobuild/ssh", "readOnly": true},
            {"name": "ssh-known-hosts", "mountPath": "/root/.ssh", "readOnly": true},
        ])
    );
    let args = c["args"].to_string();
    assert!(!args.contains("token"), "{args}");
    assert!(args.contains("\"--ssh\",\"default=/var/run/memobuild/ssh/id_ed25519\""));
    // No flag takes a secret's value at all.
    for flag in ["--remote-cache-token", "--token", "--password"] {
        assert!(parse(&["--image", "i", flag, "x", REPO]).is_err(), "{flag}");
    }
    // A token secret without a remote cache means nothing.
    assert!(parse(&["--image", "i", "--remote-cache-token-secret", "a:b", REPO]).is_err());
    Ok(())
}

fn error_of(args: &[&str]) -> String {
    match parse(args).and_then(|a| job_manifest(&a)) {
        Ok(m) => panic!("expected an error for {args:?}, got {m}"),
        Err(e) => format!("{e:#}"),
    }
}

// Verifies: the Job reads the context as `memobuild build` does (`GitContext::parse`): a local
// path, or what the build would take for one (an http(s) URL without `.git`), is refused naming
// it; git URLs of every kind the build fetches pass, `github.com/OWNER/REPO` included, each with
// its transport.
#[test]
fn contexts_are_read_as_the_build_reads_them() {
    let refused = [
        ".",
        "./app",
        "/src/app",
        "app",
        "C:app",
        "file:///src/app",
        "https://",
        "ssh://@/x",
        "@host:repo",
        "git@:repo",
        "git@host/repo",
        "dir/git@host:repo",
        "https://host/repo .git",
        "",
        // What `build` takes for a local path (the pod would fail: "not a directory").
        "https://github.com/o/r#main",
        "http://host:3000/repo",
        "https://:443/repo.git",
        "ssh://git@host:org/repo.git",
        "HTTPS://host/repo.git",
    ];
    for ctx in refused {
        let e = error_of(&["--image", "i", ctx]);
        assert!(e.contains(&format!("context `{ctx}`")), "{ctx}: {e}");
        assert!(e.contains("cannot see this machine's disk"), "{e}");
    }
    let accepted = [
        (REPO, Transport::Http, "https://example.invalid/repo.git"),
        (
            "http://host:3000/repo.git",
            Transport::Http,
            "http://host:3000/repo.git",
        ),
        (
            "github.com/o/r#main:app",
            Transport::Http,
            "https://github.com/o/r",
        ),
        (
            "git://host/repo.git#v1.0",
            Transport::Git,
            "git://host/repo.git",
        ),
        (
            "ssh://git@host:22/repo.git#main:sub/dir",
            Transport::Ssh,
            "ssh://git@host:22/repo.git",
        ),
        (
            "ssh://git@[::1]:2222/repo.git",
            Transport::Ssh,
            "ssh://git@[::1]:2222/repo.git",
        ),
        (
            "git@github.com:org/repo.git#main:app",
            Transport::Ssh,
            "git@github.com:org/repo.git",
        ),
        ("deploy@host:repo", Transport::Ssh, "deploy@host:repo"),
    ];
    for (ctx, transport, remote) in accepted {
        let c = check_git_context(ctx).unwrap_or_else(|e| panic!("{ctx}: {e:#}"));
        assert_eq!(
            (c.transport, c.remote.as_str()),
            (transport, remote),
            "{ctx}"
        );
    }
    // One source of truth: what the Job accepts, the build fetches as a git context.
    for ctx in refused.iter().chain(accepted.iter().map(|(c, _, _)| c)) {
        if check_git_context(ctx).is_ok() {
            assert!(crate::gitctx::GitContext::parse(ctx).is_some(), "{ctx}");
        }
    }
    // The build's own shorthand makes a Job that passes it on as given.
    let a = parse(&["--image", "i", "github.com/o/r"]).and_then(|a| build_command_args(&a));
    assert_eq!(
        a.ok().and_then(|a| a.last().cloned()).as_deref(),
        Some("github.com/o/r")
    );
}

// Verifies: a context URL with a password or token (which would sit in the container's args) is
// refused without showing it, pointing to `--git-auth-secret` (or `--ssh-secret`); a user name
// alone over ssh (`ssh://git@…`, `git@host:…`) is not a secret.
#[test]
fn credentials_in_the_context_are_refused() {
    for (ctx, shown, hint) in [
        (
            "https://bob:s3cr3t@example.com/o/r.git#main",
            "https://***@example.com/o/r.git#main",
            "--git-auth-secret SECRET:KEY",
        ),
        (
            "https://s3cr3t@github.com/o/r.git",
            "https://***@github.com/o/r.git",
            "--git-auth-secret SECRET:KEY",
        ),
        // Not even a git URL for the build: still never shown.
        (
            "https://x-access-token:s3cr3t@github.com/o/r",
            "https://***@github.com/o/r",
            "--git-auth-secret SECRET:KEY",
        ),
        (
            "http://u:s3cr3t@host:8080/r.git",
            "http://***@host:8080/r.git",
            "Authorization: Bearer TOKEN",
        ),
        (
            "ssh://git:s3cr3t@host/r.git",
            "ssh://***@host/r.git",
            "--ssh-secret SECRET:KEY",
        ),
        (
            "git://u:s3cr3t@host/r.git",
            "git://***@host/r.git",
            "no authentication",
        ),
    ] {
        let e = error_of(&["--image", "i", "--ssh-known-hosts", "h:k", ctx]);
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(
            e.contains(&format!("context `{shown}` has credentials")),
            "{e}"
        );
        assert!(e.contains(hint), "{ctx}: {e}");
    }
    // Other URLs are not git contexts, but their passwords are not echoed either.
    let e = error_of(&["--image", "i", "ftp://u:s3cr3t@host/x"]);
    assert!(
        e.contains("context `ftp://***@host/x` is not a git URL"),
        "{e}"
    );
    assert_eq!(
        crate::gitctx::redact("ssh://git@host/r.git"),
        "ssh://git@host/r.git"
    );
    assert_eq!(crate::gitctx::redact("git@host:r.git"), "git@host:r.git");
    assert_eq!(crate::gitctx::redact(REPO), REPO);
    for ctx in ["ssh://git@host/r.git", "git@host:o/r.git"] {
        let a = parse(&["--image", "i", "--ssh-known-hosts", "h:k", ctx]);
        assert!(a.and_then(|a| job_manifest(&a)).is_ok(), "{ctx}");
    }
}

// Verifies: `--git-auth-secret` gives git an `http.extraHeader` through its configuration
// environment, scoped to the context's server, the value from a secretKeyRef (never in the
// manifest); it is refused, naming it, with an ssh or `git://` context.
#[test]
fn git_auth_secret_is_an_extra_header_from_a_secret() -> anyhow::Result<()> {
    for (ctx, origin) in [
        (REPO, "https://example.invalid/"),
        ("github.com/o/r#v1", "https://github.com/"),
        ("http://[::1]:8080/a/b.git", "http://[::1]:8080/"),
    ] {
        let a = parse(&[
            "--image",
            "i",
            "--remote-cache",
            "http://cache",
            "--remote-cache-token-secret",
            "cache:token",
            "--git-auth-secret",
            "git-auth:header",
            ctx,
        ])?;
        let m = job_manifest(&a)?;
        let c = &m["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["env"],
            json!([
                {"name": "MEMOBUILD_REMOTE_CACHE_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": "cache", "key": "token"}}},
                {"name": "GIT_CONFIG_COUNT", "value": "1"},
                {"name": "GIT_CONFIG_KEY_0", "value": format!("http.{origin}.extraHeader")},
                {"name": "GIT_CONFIG_VALUE_0",
                 "valueFrom": {"secretKeyRef": {"name": "git-auth", "key": "header"}}},
            ])
        );
        // Nothing in the args: the build does not know of it, git does.
        assert_eq!(
            c["args"],
            json!([
                "--progress",
                "plain",
                "--containerd",
                "embedded",
                "--state-dir",
                "/var/lib/memobuild",
                "--remote-cache",
                "http://cache",
                ctx
            ])
        );
    }
    for (ctx, hint) in [
        ("git@github.com:o/r.git", "--ssh-secret"),
        ("ssh://git@host/r.git", "--ssh-secret"),
        ("git://host/r.git", "`git://` has no authentication"),
    ] {
        let e = error_of(&[
            "--image",
            "i",
            "--ssh-known-hosts",
            "h:k",
            "--git-auth-secret",
            "git-auth:header",
            ctx,
        ]);
        assert!(e.contains("--git-auth-secret `git-auth:header`"), "{e}");
        assert!(e.contains(hint), "{ctx}: {e}");
    }
    for bad in ["nokey", "Auth:header", "a:../x"] {
        let e = error_of(&["--image", "i", "--git-auth-secret", bad, REPO]);
        assert!(e.contains(&format!("--git-auth-secret `{bad}`")), "{e}");
    }
    Ok(())
}

// Verifies: an ssh context without `--ssh-known-hosts` (ssh would ask about the host key, and
// the pod has no terminal) is refused, asking for it and, when missing, for `--ssh-secret`.
#[test]
fn ssh_contexts_need_known_hosts() {
    for ctx in [
        "git@github.com:o/r.git",
        "ssh://git@host/r.git#main",
        "deploy@host:repo",
    ] {
        let e = error_of(&["--image", "i", ctx]);
        assert!(
            e.contains(&format!("context `{ctx}` is fetched over ssh")),
            "{e}"
        );
        assert!(e.contains("--ssh-known-hosts CONFIGMAP:KEY"), "{e}");
        assert!(e.contains("--ssh-secret SECRET:KEY"), "{e}");
        let e = error_of(&["--image", "i", "--ssh-secret", "k:id", ctx]);
        assert!(e.contains("--ssh-known-hosts CONFIGMAP:KEY"), "{e}");
        assert!(!e.contains("--ssh-secret"), "{e}");
        let a = parse(&["--image", "i", "--ssh-known-hosts", "h:known_hosts", ctx]);
        assert!(a.and_then(|a| job_manifest(&a)).is_ok(), "{ctx}");
    }
    // Not over ssh: nothing asked.
    for ctx in [REPO, "git://host/r.git", "github.com/o/r"] {
        let a = parse(&["--image", "i", ctx]);
        assert!(a.and_then(|a| job_manifest(&a)).is_ok(), "{ctx}");
    }
}

// Verifies: names, quantities, build args and label values Kubernetes (or the pod) would
// refuse are refused here, naming the flag.
#[test]
fn bad_values_are_refused() {
    let long = "a".repeat(64);
    for (args, want) in [
        (vec!["--name", "My_Build"], "--name `My_Build`"),
        (vec!["--name=-x"], "--name `-x`"),
        (vec!["--name", long.as_str()], "--name `aaaa"),
        (vec!["--name", ""], "--name ``"),
        (vec!["--namespace", "CI"], "--namespace `CI`"),
        (vec!["--cpu", "two"], "--cpu `two`"),
        (vec!["--memory", "4GB"], "--memory `4GB`"),
        (vec!["--build-arg", "HOME"], "--build-arg `HOME`"),
        (vec!["--project", "my app"], "--project `my app`"),
        (vec!["--ssh-secret", "nokey"], "--ssh-secret `nokey`"),
        (vec!["--ssh-secret", "s:../x"], "--ssh-secret `s:../x`"),
        (
            vec!["--registry-auth-secret", "Reg"],
            "--registry-auth-secret `Reg`",
        ),
        (vec!["--state-pvc", "a_b"], "--state-pvc `a_b`"),
        (vec!["--node-selector", "pool"], "--node-selector `pool`"),
        (
            vec!["--node-selector", "a=1", "--node-selector", "a=2"],
            "`a` is given twice",
        ),
        (vec!["--image=has space"], "--image `has space`"),
    ] {
        let mut argv = args.clone();
        if !args.iter().any(|a| a.starts_with("--image")) {
            argv.push("--image=img");
        }
        argv.push(REPO);
        let e = error_of(&argv);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(parse(&["--image", "i", "--ttl", "-1", REPO]).is_err());
    assert!(parse(&["--image", "i", "--deadline", "0", REPO]).is_err());
    assert!(parse(&["--image", "i", "--push", REPO]).is_err());
    assert!(parse(&[REPO]).is_err());
    assert!(parse(&["--image", "i", "--format", "toml", REPO]).is_err());
}

#[test]
fn names_and_quantities() {
    assert!(is_dns1123_label("memobuild-build"));
    assert!(is_dns1123_label(&"a".repeat(63)));
    assert!(!is_dns1123_label("a.b"));
    assert!(is_dns1123_subdomain("a.b-c.d"));
    assert!(!is_dns1123_subdomain("a..b"));
    assert!(is_label_key("kubernetes.io/arch"));
    assert!(is_label_key("Pool_1"));
    assert!(!is_label_key("a/b/c"));
    assert!(!is_label_key("/x"));
    for q in ["2", "0.5", "500m", "4Gi", "1e3", "128974848", "1.5E+2"] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "m", "1.2.3", "4GB", "1e", "-1", "1 Gi"] {
        assert!(!is_quantity(q), "{q}");
    }
}

// Verifies: both outputs start `apiVersion`, `kind`, `metadata`, `spec`, and the YAML (read
// back by the same serializer) is the JSON document, strings that look like numbers or
// booleans included.
#[test]
fn yaml_and_json_say_the_same() -> anyhow::Result<()> {
    let mut a = parse(&[
        "--image",
        "img",
        "--namespace",
        "ci",
        "--project",
        "0755",
        "--node-selector",
        "pool=true",
        REPO,
    ])?;
    let y = render(&a)?;
    assert!(
        y.starts_with("apiVersion: batch/v1\nkind: Job\nmetadata:\n"),
        "{y}"
    );
    assert!(y.ends_with('\n') && !y.contains('\t'), "{y}");
    a.format = ManifestFormat::Json;
    let j = render(&a)?;
    let pos = |k: &str| j.find(&format!("\"{k}\":"));
    assert!(pos("apiVersion") < pos("kind"));
    assert!(pos("kind") < pos("metadata"));
    assert!(pos("metadata") < pos("spec"));
    let parsed: serde_json::Value = serde_json::from_str(&j)?;
    assert_eq!(parsed, job_manifest(&a)?);
    let from_yaml: serde_json::Value = serde_norway::from_str(&y)?;
    assert_eq!(from_yaml, parsed);
    assert_eq!(
        parsed["metadata"]["labels"]["memobuild.io/project"],
        json!("0755")
    );
    assert_eq!(
        parsed["spec"]["template"]["spec"]["nodeSelector"]["pool"],
        json!("true")
    );
    Ok(())
}
