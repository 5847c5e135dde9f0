//! `memobuild k8s job`, end to end: the real binary prints a Kubernetes Job manifest, as JSON
//! and as YAML that says the same, and refuses a context the pod could not fetch. No cluster,
//! containerd or registry needed.

// A failed unwrap is a failed test, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

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

/// Every scalar of `v` (strings JSON-quoted, numbers and booleans as written) and every key.
fn scalars(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                out.push(format!("key {k}"));
                scalars(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| scalars(v, out)),
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {
            out.push(v.to_string());
        }
    }
}

// Verifies: the YAML output (the default) says what the JSON output says: no tabs, every key
// and every scalar of the JSON is there (strings double-quoted with the same escapes), and,
// where PyYAML is installed, it parses to exactly the JSON document.
#[test]
fn yaml_manifest_matches_json() {
    let json_text = k8s_job_ok(&with_context(&["--format", "json"]));
    let yaml = k8s_job_ok(&with_context(&[]));
    let m: Value = serde_json::from_str(&json_text).unwrap();
    assert!(!yaml.contains('\t'), "{yaml}");
    assert!(
        yaml.starts_with("apiVersion: \"batch/v1\"\nkind: \"Job\"\n"),
        "{yaml}"
    );
    assert!(yaml.ends_with('\n'));
    let mut all = Vec::new();
    scalars(&m, &mut all);
    for s in &all {
        let found = match s.strip_prefix("key ") {
            Some(k) => {
                yaml.contains(&format!("{k}: "))
                    || yaml.contains(&format!("{k}:\n"))
                    || yaml.contains(&format!("{}:", serde_json::to_string(k).unwrap()))
            }
            None => yaml.contains(&format!(": {s}\n")) || yaml.contains(&format!("- {s}\n")),
        };
        assert!(found, "`{s}` is not in the YAML:\n{yaml}");
    }

    // A real YAML parser, where there is one.
    let probe = Command::new("python3")
        .args(["-c", "import yaml"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED full YAML parse: python3 with PyYAML not available");
        return;
    }
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML could not parse:\n{yaml}");
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed, m);
}

// Verifies: a local path as context (which a pod cannot see) fails with exit code 1, nothing on
// stdout, and an error naming the context; so does a Job name Kubernetes would refuse.
#[test]
fn local_context_is_refused() {
    for ctx in ["./app", "/src/app", "app"] {
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
