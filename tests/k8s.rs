//! `memobuild k8s job`, end to end: the real binary prints a Kubernetes Job manifest, as JSON
//! and as YAML that says the same, and refuses a context the pod could not fetch (or that would
//! put credentials into the Job). A git HTTP credential from a Secret reaches a real `git` as
//! the header the manifest configures. No cluster, containerd or registry needed.

// A failed unwrap is a failed test, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_memobuild");
const CONTEXT: &str = "https://example.invalid/repo.git#main:app";

/// A representative set of flags: forwarded build flags, every Secret and volume kind.
const FLAGS: &[&str] = &[
    "--image",
    "registry.example/memobuild:1.0",
    "--name",
    "shop-api",
    "--namespace",
    "ci",
    "-f",
    "docker/Dockerfile",
    "--target",
    "prod",
    "--build-arg",
    "VERSION=1.2.3",
    "-t",
    "registry.example/shop/api:1.2.3",
    "--push",
    "--project",
    "shop-api",
    "--remote-cache",
    "http://memobuild.ci.svc:8080",
    "--remote-cache-token-secret",
    "memobuild-cache:token",
    "--registry-auth-secret",
    "regcred",
    "--ssh-secret",
    "git-ssh:id_ed25519",
    "--state-pvc",
    "memobuild-state",
    "--cpu",
    "4",
    "--memory",
    "8Gi",
    "--deadline",
    "3600",
    "--node-selector",
    "kubernetes.io/arch=amd64",
];

/// Runs `memobuild k8s job ARGS…`.
fn k8s_job(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["k8s", "job"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run memobuild")
}

/// Runs it and returns stdout, failing the test (with stderr) if it failed.
fn k8s_job_ok(args: &[&str]) -> String {
    let out = k8s_job(args);
    assert!(
        out.status.success(),
        "memobuild k8s job {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// [`FLAGS`], then `extra`, then the context.
fn with_context<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = FLAGS.to_vec();
    v.extend_from_slice(extra);
    v.push(CONTEXT);
    v
}

// Verifies: `--format json` prints a Job whose container runs `memobuild build` with the flags
// forwarded and the git context last, the token comes from a secretKeyRef, and the state, registry
// credentials and ssh key are volumes mounted where the build looks for them.
#[test]
fn json_manifest_runs_the_build() {
    let text = k8s_job_ok(&with_context(&["--format", "json"]));
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["apiVersion"], "batch/v1");
    assert_eq!(m["kind"], "Job");
    assert_eq!(m["metadata"]["name"], "shop-api");
    assert_eq!(m["metadata"]["namespace"], "ci");
    assert_eq!(
        m["metadata"]["labels"],
        json!({"app.kubernetes.io/name": "memobuild", "app.kubernetes.io/component": "build",
               "memobuild.io/project": "shop-api"})
    );
    assert_eq!(m["spec"]["backoffLimit"], 0);
    assert_eq!(m["spec"]["ttlSecondsAfterFinished"], 3600);
    assert_eq!(m["spec"]["activeDeadlineSeconds"], 3600);
    let pod = &m["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    // The pause container is PID 1 and reaps what memobuild leaves behind.
    assert_eq!(pod["shareProcessNamespace"], true);
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/arch": "amd64"}));
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "build");
    assert_eq!(c["image"], "registry.example/memobuild:1.0");
    assert_eq!(c["securityContext"], json!({"privileged": true}));
    assert_eq!(c["command"], json!(["memobuild", "build"]));
    assert_eq!(
        c["args"],
        json!([
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
            "VERSION=1.2.3",
            "--tag",
            "registry.example/shop/api:1.2.3",
            "--push",
            "--project",
            "shop-api",
            "--remote-cache",
            "http://memobuild.ci.svc:8080",
            "--ssh",
            "default=/var/run/memobuild/ssh/id_ed25519",
            CONTEXT,
        ])
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "DOCKER_CONFIG", "value": "/root/.docker"},
            {"name": "MEMOBUILD_REMOTE_CACHE_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": "memobuild-cache", "key": "token"}}},
        ])
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}})
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "state", "persistentVolumeClaim": {"claimName": "memobuild-state"}},
            {"name": "docker-config", "secret": {"secretName": "regcred",
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
            {"name": "ssh-key", "secret": {"secretName": "git-ssh", "defaultMode": 0o400,
                "items": [{"key": "id_ed25519", "path": "id_ed25519", "mode": 0o400}]}},
        ])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "state", "mountPath": "/var/lib/memobuild"},
            {"name": "docker-config", "mountPath": "/root/.docker", "readOnly": true},
            {"name": "ssh-key", "mountPath": "/var/run/memobuild/ssh", "readOnly": true},
        ])
    );
    // Conventional key order, not serde_json's sorted one.
    let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
    assert!(at("apiVersion") < at("kind") && at("kind") < at("metadata"));
    assert!(at("metadata") < at("spec"));
}

// Verifies: the YAML output (the default) says what the JSON output says: read back by a YAML
// parser it is exactly the JSON document; no tabs; it ends with a newline.
#[test]
fn yaml_manifest_matches_json() {
    let json_text = k8s_job_ok(&with_context(&["--format", "json"]));
    let yaml = k8s_job_ok(&with_context(&[]));
    let m: Value = serde_json::from_str(&json_text).unwrap();
    assert!(!yaml.contains('\t'), "{yaml}");
    assert!(
        yaml.starts_with("apiVersion: batch/v1\nkind: Job\n"),
        "{yaml}"
    );
    assert!(yaml.ends_with('\n'));
    let parsed: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(parsed, m);
}

/// The Kubernetes versions the Job is checked against: from the oldest still served by the
/// main managed offerings to the newest `kubernetes-validate` knows.
const KUBERNETES_VERSIONS: &[&str] = &[
    "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0",
];

/// Runs `kubernetes-validate --strict` on `manifest` for each version; the failures' output.
fn schema_failures(tool: &std::path::Path, manifest: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, manifest).unwrap();
    KUBERNETES_VERSIONS
        .iter()
        .filter_map(|v| {
            let out = Command::new(tool)
                .args(["--strict", "--quiet", "-k", v])
                .arg(&file)
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
            (!out.status.success()).then(|| {
                format!(
                    "{v}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        })
        .collect()
}

// Verifies (issue 16): the manifests `memobuild k8s job` prints (the minimal one, every flag,
// `--generate-name`, an ssh context with its Secrets, JSON as well as YAML) pass the strict
// Kubernetes schemas of every supported version; and the check can fail: a misspelt field is
// refused.
#[test]
fn manifests_pass_the_kubernetes_schemas() {
    let Some(tool) = common::pytool("kubernetes-validate") else {
        return;
    };
    let cases: Vec<Vec<&str>> = vec![
        vec!["--image", "img", CONTEXT],
        with_context(&[]),
        with_context(&["--format", "json"]),
        vec!["--image", "img", "--generate-name", "--ttl", "0", CONTEXT],
        vec![
            "--image",
            "img",
            "--ssh-secret",
            "git-ssh:id_ed25519",
            "--ssh-known-hosts",
            "git-hosts:known_hosts",
            "--service-account",
            "builder",
            "git@git.example:org/repo.git",
        ],
        vec![
            "--image",
            "img",
            "--git-auth-secret",
            "git-http:header",
            CONTEXT,
        ],
    ];
    for args in &cases {
        let manifest = k8s_job_ok(args);
        let failures = schema_failures(&tool, &manifest);
        assert!(failures.is_empty(), "{args:?}:\n{failures:#?}\n{manifest}");
    }
    let bad = k8s_job_ok(&["--image", "img", CONTEXT]).replace("backoffLimit:", "backofLimit:");
    assert_eq!(
        schema_failures(&tool, &bad).len(),
        KUBERNETES_VERSIONS.len(),
        "a misspelt field passed"
    );
}

// Verifies: a local path as context (which a pod cannot see), or what `memobuild build` would
// take for one (an https URL without `.git`), fails with exit code 1, nothing on stdout, and an
// error naming the context; so does a Job name Kubernetes would refuse. The build's
// `github.com/OWNER/REPO` shorthand is accepted and passed on as given.
#[test]
fn local_context_is_refused() {
    for ctx in ["./app", "/src/app", "app", "https://github.com/o/r#main"] {
        let out = k8s_job(&["--image", "img", ctx]);
        assert_eq!(out.status.code(), Some(1), "{ctx}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("context `{ctx}`")), "{err}");
        assert!(err.contains("git URL"), "{err}");
    }
    let out = k8s_job(&["--image", "img", "--name", "Shop_API", CONTEXT]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name `Shop_API`"));
}

/// Runs it and returns (exit code, stdout, stderr).
fn k8s_job_err(args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let out = k8s_job(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), out.stdout, err)
}

// Verifies: the build's `github.com/OWNER/REPO` shorthand makes a Job that passes it on.
#[test]
fn github_shorthand_is_a_context() {
    let m: Value = serde_json::from_str(&k8s_job_ok(&[
        "--image",
        "img",
        "--format",
        "json",
        "github.com/o/r",
    ]))
    .unwrap();
    let args = &m["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args.as_array().unwrap().last().unwrap(), "github.com/o/r");
}

// Verifies: a context URL with a password or token fails (exit code 1, nothing on stdout), never
// shows the secret, and points to `--git-auth-secret`; an ssh context without
// `--ssh-known-hosts` (the pod cannot answer ssh's host-key question) fails asking for it and
// for `--ssh-secret`; `--git-auth-secret` with an ssh context fails naming the flag.
#[test]
fn credentials_and_unverifiable_ssh_are_refused() {
    for ctx in [
        "https://bob:s3cr3t@example.com/o/r.git#main",
        "https://s3cr3t@github.com/o/r.git",
    ] {
        let (code, stdout, err) = k8s_job_err(&["--image", "img", ctx]);
        assert_eq!(code, Some(1), "{ctx}: {err}");
        assert!(stdout.is_empty());
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.contains("has credentials in its URL"), "{err}");
        assert!(err.contains("--git-auth-secret SECRET:KEY"), "{err}");
    }
    for ctx in ["git@github.com:o/r.git#main", "ssh://git@host/r.git"] {
        let (code, stdout, err) = k8s_job_err(&["--image", "img", ctx]);
        assert_eq!(code, Some(1), "{ctx}: {err}");
        assert!(stdout.is_empty());
        assert!(err.contains("--ssh-known-hosts CONFIGMAP:KEY"), "{err}");
        assert!(err.contains("--ssh-secret"), "{err}");
        k8s_job_ok(&[
            "--image",
            "img",
            "--ssh-secret",
            "git-ssh:id_ed25519",
            "--ssh-known-hosts",
            "ssh-hosts:known_hosts",
            ctx,
        ]);
    }
    let (code, _, err) = k8s_job_err(&[
        "--image",
        "img",
        "--ssh-known-hosts",
        "ssh-hosts:known_hosts",
        "--git-auth-secret",
        "git-auth:header",
        "git@github.com:o/r.git",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--git-auth-secret `git-auth:header`"), "{err}");
}

/// An HTTP server that answers every request 404 and keeps each request's head.
fn recording_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, seen)
}

/// Runs `git ls-remote URL` with `env` (and no other git configuration); whether it ran.
fn git_ls_remote(url: &str, env: &[(String, String)]) -> bool {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("git");
    cmd.args(["ls-remote", url])
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for proxy in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.status().is_ok()
}

// Verifies: `--git-auth-secret` puts no value in the manifest, and the environment it sets up
// (with the Secret's value where the secretKeyRef points) makes a real git send the header
// when it fetches the context or another repository of its server (a submodule), and not when
// it fetches from another host (one a Dockerfile's `ADD` names).
#[test]
fn git_auth_secret_reaches_git_for_the_context_server_only() {
    let (port, seen) = recording_server();
    let ctx = format!("http://127.0.0.1:{port}/team/app.git");
    let text = k8s_job_ok(&[
        "--image",
        "img",
        "--format",
        "json",
        "--git-auth-secret",
        "git-auth:header",
        &format!("{ctx}#main:svc"),
    ]);
    const HEADER: &str = "Authorization: Bearer s3cr3t-token";
    assert!(!text.contains("s3cr3t"));
    let m: Value = serde_json::from_str(&text).unwrap();
    let container = &m["spec"]["template"]["spec"]["containers"][0];
    // The pod's environment, as the kubelet would make it from this Secret.
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match e.get("valueFrom") {
                Some(from) => {
                    assert_eq!(
                        from["secretKeyRef"],
                        json!({"name": "git-auth", "key": "header"})
                    );
                    HEADER.to_string()
                }
                None => e["value"].as_str().unwrap().to_string(),
            };
            (name, value)
        })
        .collect();
    assert_eq!(
        env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0"]
    );

    if Command::new("git")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIPPED the fetch: git is not installed");
        return;
    }
    assert!(git_ls_remote(&ctx, &env));
    assert!(git_ls_remote(
        &format!("http://127.0.0.1:{port}/team/lib.git"),
        &env
    ));
    // The same server under another name: another host, for git.
    assert!(git_ls_remote(
        &format!("http://localhost:{port}/other/lib.git"),
        &env
    ));
    let seen = seen.lock().unwrap();
    let to = |path: &str| {
        seen.iter()
            .filter(|r| r.contains(&format!("GET {path}/info/refs")))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (ctx_reqs, other_reqs) = (
        [to("/team/app.git"), to("/team/lib.git")],
        to("/other/lib.git"),
    );
    assert!(ctx_reqs.iter().all(|r| !r.is_empty()), "{seen:?}");
    assert!(!other_reqs.is_empty(), "{seen:?}");
    for r in ctx_reqs.iter().flatten() {
        assert!(r.contains(&format!("{HEADER}\r\n")), "{r}");
    }
    for r in &other_reqs {
        assert!(!r.contains("s3cr3t"), "{r}");
    }
}
