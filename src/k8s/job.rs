//! The Job itself, built from `k8s-openapi`'s types: what they cannot express (a field's name,
//! its type, which are required) cannot be wrong here. Flags are checked first, each error
//! naming its flag.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::checks::{
    check_git_context, http_origin, is_dns1123_label, is_dns1123_subdomain, is_label_key,
    is_label_value, is_quantity, parse_key_ref,
};
use super::{
    DOCKER_CONFIG_DIR, JobArgs, KEY_MODE, SSH_CONFIG_DIR, SSH_DIR, STATE_DIR, build_command_args,
};

/// The Job `args` describe, or the first flag that is wrong.
pub fn job(args: &JobArgs) -> anyhow::Result<Job> {
    if !is_dns1123_label(&args.name) {
        bail!(
            "--name `{}`: not a valid Job name (a DNS-1123 label: at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit)",
            args.name
        );
    }
    if let Some(ns) = &args.namespace
        && !is_dns1123_label(ns)
    {
        bail!("--namespace `{ns}`: not a valid namespace (a DNS-1123 label)");
    }
    if args.image.is_empty() || args.image.chars().any(|c| c.is_whitespace()) {
        bail!("--image `{}`: not an image reference", args.image);
    }
    if let Some(p) = &args.project
        && (p.is_empty() || !is_label_value(p))
    {
        bail!(
            "--project `{p}`: the Job carries it as the `memobuild.io/project` label, whose values are at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit"
        );
    }
    let command_args = build_command_args(args)?;

    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "memobuild".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "build".to_string(),
        ),
    ]);
    if let Some(p) = &args.project {
        labels.insert("memobuild.io/project".to_string(), p.clone());
    }
    let metadata = ObjectMeta {
        name: (!args.generate_name).then(|| args.name.clone()),
        generate_name: args.generate_name.then(|| format!("{}-", args.name)),
        namespace: args.namespace.clone(),
        labels: Some(labels.clone()),
        ..ObjectMeta::default()
    };

    // Volumes and where the container sees them.
    let state = match &args.state_pvc {
        Some(claim) => {
            if !is_dns1123_subdomain(claim) {
                bail!("--state-pvc `{claim}`: not a valid claim name");
            }
            Volume {
                name: "state".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
        None => Volume {
            name: "state".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    };
    let mut volumes = vec![state];
    let mut mounts = vec![mount("state", STATE_DIR, false)];
    let mut env = Vec::new();
    if let Some(secret) = &args.registry_auth_secret {
        if !is_dns1123_subdomain(secret) {
            bail!("--registry-auth-secret `{secret}`: not a valid Secret name");
        }
        volumes.push(Volume {
            name: "docker-config".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![key_to_path(".dockerconfigjson", "config.json", None)]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("docker-config", DOCKER_CONFIG_DIR, true));
        // Where credentials are read from, whatever `$HOME` the image sets.
        env.push(env_value("DOCKER_CONFIG", DOCKER_CONFIG_DIR));
    }
    if let Some(spec) = &args.remote_cache_token_secret {
        let r = parse_key_ref("remote-cache-token-secret", spec)?;
        env.push(env_secret("MEMOBUILD_REMOTE_CACHE_TOKEN", r.name, r.key));
    }
    if let Some(spec) = &args.git_auth_secret {
        let r = parse_key_ref("git-auth-secret", spec)?;
        // git's configuration through the environment (git 2.31): one `-c` setting, whose value
        // comes from the Secret. Scoped to the context's server (`http.<URL>.*`), so that the
        // header goes to no other host: not to a submodule's elsewhere, nor to a repository a
        // Dockerfile's `ADD` names (the worker's git has the same environment).
        let origin = http_origin(&check_git_context(&args.context)?.remote);
        env.push(env_value("GIT_CONFIG_COUNT", "1"));
        env.push(env_value(
            "GIT_CONFIG_KEY_0",
            &format!("http.{origin}.extraHeader"),
        ));
        env.push(env_secret("GIT_CONFIG_VALUE_0", r.name, r.key));
    }
    if let Some(spec) = &args.ssh_secret {
        let r = parse_key_ref("ssh-secret", spec)?;
        volumes.push(Volume {
            name: "ssh-key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(r.name),
                default_mode: Some(KEY_MODE),
                items: Some(vec![key_to_path(&r.key, &r.key, Some(KEY_MODE))]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("ssh-key", SSH_DIR, true));
    }
    if let Some(spec) = &args.ssh_known_hosts {
        let r = parse_key_ref("ssh-known-hosts", spec)?;
        volumes.push(Volume {
            name: "ssh-known-hosts".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: r.name,
                items: Some(vec![key_to_path(&r.key, "known_hosts", None)]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("ssh-known-hosts", SSH_CONFIG_DIR, true));
    }

    let mut resources = BTreeMap::new();
    for (flag, value) in [("cpu", &args.cpu), ("memory", &args.memory)] {
        if let Some(v) = value {
            if !is_quantity(v) {
                bail!("--{flag} `{v}`: not a Kubernetes quantity (`2`, `500m`, `4Gi`)");
            }
            resources.insert(flag.to_string(), Quantity(v.clone()));
        }
    }

    let container = Container {
        name: "build".into(),
        image: Some(args.image.clone()),
        command: Some(vec!["memobuild".into(), "build".into()]),
        args: Some(command_args),
        env: (!env.is_empty()).then_some(env),
        // embedded containerd mounts overlayfs and runs runc.
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        resources: (!resources.is_empty()).then(|| ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    if let Some(sa) = &args.service_account
        && !is_dns1123_subdomain(sa)
    {
        bail!("--service-account `{sa}`: not a valid ServiceAccount name");
    }
    let mut node_selector = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for s in &args.node_selectors {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--node-selector `{s}`: expected `KEY=VALUE`");
        };
        if !is_label_key(k) || !is_label_value(v) {
            bail!("--node-selector `{s}`: not a valid label `KEY=VALUE`");
        }
        if !seen.insert(k) {
            bail!("--node-selector `{s}`: `{k}` is given twice");
        }
        node_selector.insert(k.to_string(), v.to_string());
    }
    let pod = PodSpec {
        service_account_name: args.service_account.clone(),
        restart_policy: Some("Never".into()),
        // memobuild would be the container's PID 1, and the processes it starts and leaves to
        // be reparented (containerd shims, ssh-agent, git's helpers) would stay zombies under
        // it, as it reaps only its own children. In one process namespace for the pod, the
        // pause container is PID 1, and it reaps them.
        share_process_namespace: Some(true),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        containers: vec![container],
        volumes: Some(volumes),
        ..Default::default()
    };

    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(args.backoff_limit),
            active_deadline_seconds: args.deadline,
            ttl_seconds_after_finished: Some(args.ttl),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// A volume mount.
fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// One key of a Secret or ConfigMap, as the file `path`.
fn key_to_path(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        mode,
    }
}

/// `name=value`.
fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// `name` from key `key` of Secret `secret`.
fn env_secret(name: &str, secret: String, key: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key,
                optional: None,
            }),
            ..Default::default()
        }),
    }
}
