//! Tests of the Job manifest and its YAML.

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

/// `v` as YAML (see [`Doc::to_yaml`]).
fn to_yaml(v: &serde_json::Value) -> String {
    Doc::from(v).to_yaml()
}

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

// Verifies: a context the pod cannot fetch (a local path) is refused naming it; git URLs of
// every kind pass.
#[test]
fn local_contexts_are_refused() -> anyhow::Result<()> {
    for ctx in [
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
        "dir/git@host:repo",
        "https://host/repo .git",
        "",
    ] {
        let e = error_of(&["--image", "i", ctx]);
        assert!(e.contains(&format!("context `{ctx}`")), "{ctx}: {e}");
        assert!(e.contains("cannot see this machine's disk"), "{e}");
    }
    for ctx in [
        REPO,
        "http://host:3000/repo",
        "git://host/repo.git#v1.0",
        "ssh://git@host:22/repo.git#main:sub/dir",
        "git@github.com:org/repo.git#main:app",
        "deploy@host:repo",
    ] {
        assert!(check_git_context(ctx).is_ok(), "{ctx}");
    }
    Ok(())
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

// Verifies: the YAML emitter: nested maps and lists in block style, lists of maps and of
// lists, empty collections, plain numbers and booleans, and strings always double-quoted
// with the escapes YAML shares with JSON (so `"0755"` and `"true"` stay strings).
#[test]
fn yaml_emitter() {
    let v = json!({
        "a": {"b": [1, 2.5, true, null], "c": {}, "d": []},
        "list": [{"x": "1", "y": {"z": [{}]}}, [["deep"], "q"], []],
        "strings": ["say \"hi\"", "two\nlines", "k: v", "# no comment", "- dash",
                    "true", "0755", "tab\there", "back\\slash", "é ✓", "\u{1}\u{85}\u{2028}"],
        "true": "key quoted",
        "0": "key quoted",
        "plain.key/x-y_z": 0,
        "with space": -3,
    });
    let y = to_yaml(&v);
    let want = r##""0": "key quoted"
a:
  b:
    - 1
    - 2.5
    - true
    - null
  c: {}
  d: []
list:
  - x: "1"
    "y":
      z:
        - {}
  - - - "deep"
    - "q"
  - []
plain.key/x-y_z: 0
strings:
  - "say \"hi\""
  - "two\nlines"
  - "k: v"
  - "# no comment"
  - "- dash"
  - "true"
  - "0755"
  - "tab\there"
  - "back\\slash"
  - "é ✓"
  - "\u0001\u0085\u2028"
"true": "key quoted"
"with space": -3
"##;
    assert_eq!(y, want);
    assert!(!y.contains('\t'));
    assert_eq!(to_yaml(&json!({})), "{}\n");
    assert_eq!(to_yaml(&json!("x")), "\"x\"\n");
    assert_eq!(
        to_yaml(&json!([{"a": 1, "b": [2]}])),
        "- a: 1\n  b:\n    - 2\n"
    );
    assert_eq!(
        to_yaml(&json!([[{"a": 1, "b": 2}]])),
        "- - a: 1\n    b: 2\n"
    );
}

// Verifies: both outputs keep the conventional key order, and the YAML's strings are the
// JSON's.
#[test]
fn outputs_keep_conventional_order() -> anyhow::Result<()> {
    let mut a = parse(&["--image", "img", "--namespace", "ci", REPO])?;
    let y = render(&a)?;
    assert!(
        y.starts_with(
            "apiVersion: \"batch/v1\"\nkind: \"Job\"\nmetadata:\n  name: \"memobuild-build\"\n  namespace: \"ci\"\n  labels:\n"
        ),
        "{y}"
    );
    assert!(y.contains("\n      containers:\n        - name: \"build\"\n          image: \"img\"\n          command:\n            - \"memobuild\"\n"), "{y}");
    a.format = ManifestFormat::Json;
    let j = render(&a)?;
    let pos = |k: &str| j.find(&format!("\"{k}\":"));
    assert!(pos("apiVersion") < pos("kind"));
    assert!(pos("kind") < pos("metadata"));
    assert!(pos("metadata") < pos("spec"));
    assert!(pos("backoffLimit") < pos("template"));
    let parsed: serde_json::Value = serde_json::from_str(&j)?;
    assert_eq!(parsed, job_manifest(&a)?);
    assert_eq!(to_yaml(&parsed).len(), y.len());
    Ok(())
}
