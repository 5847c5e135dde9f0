//! The OCI runtime spec for a build step, with Docker/BuildKit-like defaults.
//!
//! Hand-written serde structs rather than `oci-spec`'s builders: we only emit a spec (never read
//! one), the subset is small, and every default is visible here.

use std::collections::BTreeMap;

use serde::Serialize;

use super::run::{ExtraMount, NetworkMode, RunRequest, User};

/// `type_url` of a runtime spec inside a protobuf `Any`, as containerd's typeurl registry expects.
pub(crate) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// PATH used when the request's environment has none (Docker's default).
pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set (moby `oci/caps/defaults.go`).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, for privileged steps (`RUN --security=insecure`, an entitlement).
const ALL_CAPS: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// Docker's masked and read-only /proc and /sys paths (moby `oci/defaults.go`).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's effective default for open files (dockerd runs with `LimitNOFILE=infinity`).
const NOFILE_LIMIT: u64 = 1_048_576;

/// [`NOFILE_LIMIT`], lowered to this process's hard limit: runc cannot raise the limit above what
/// the shim inherited from containerd (EPERM at container start), and a containerd we can talk to
/// is usually started by us or beside us with the same limits.
fn nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which outlives the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0;
    if ok {
        NOFILE_LIMIT.min(rl.rlim_max)
    } else {
        1024
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spec {
    pub oci_version: &'static str,
    pub process: Process,
    pub root: Root,
    pub hostname: String,
    pub mounts: Vec<SpecMount>,
    pub linux: Linux,
    /// Read back by whoever lists the container (the runc executor's creator pid).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Process {
    pub terminal: bool,
    pub user: SpecUser,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Capabilities,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpecUser {
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Rlimit {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Root {
    /// Relative to the bundle (containerd's shim mounts the rootfs at `rootfs`) or absolute.
    pub path: String,
    pub readonly: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct SpecMount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Linux {
    pub namespaces: Vec<Namespace>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub resources: Resources,
    pub cgroups_path: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Namespace {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Join this namespace instead of making a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Resources {
    pub devices: Vec<DeviceRule>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DeviceRule {
    pub allow: bool,
    pub access: &'static str,
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> SpecMount {
    SpecMount {
        destination: destination.to_owned(),
        kind: kind.to_owned(),
        source: source.to_owned(),
        options: options.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The mounts every container gets (containerd/Docker defaults).
fn default_mounts() -> Vec<SpecMount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

fn extra_mount(m: &ExtraMount) -> SpecMount {
    match m {
        ExtraMount::Bind {
            source,
            destination,
            readonly,
        } => SpecMount {
            destination: destination.clone(),
            kind: "bind".into(),
            source: source.display().to_string(),
            options: vec!["rbind".into(), if *readonly { "ro" } else { "rw" }.into()],
        },
        ExtraMount::Tmpfs {
            destination,
            size_bytes,
        } => {
            let mut options: Vec<String> =
                vec!["nosuid".into(), "strictatime".into(), "mode=1777".into()];
            if let Some(size) = size_bytes {
                options.push(format!("size={size}"));
            }
            SpecMount {
                destination: destination.clone(),
                kind: "tmpfs".into(),
                source: "tmpfs".into(),
                options,
            }
        }
    }
}

/// All mounts of the spec, defaults first, then the request's (which may shadow defaults).
pub(crate) fn spec_mounts(req: &RunRequest) -> Vec<SpecMount> {
    let mut mounts = default_mounts();
    mounts.extend(req.mounts.iter().map(extra_mount));
    mounts
}

/// Type URL of a process spec in containerd's `Tasks.Exec`.
pub(crate) const PROCESS_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// The process of `req`'s spec with `extra_env` added, as JSON for `Tasks.Exec`.
pub(crate) fn process_json(
    req: &RunRequest,
    id: &str,
    namespace: &str,
    extra_env: &[String],
) -> serde_json::Result<Vec<u8>> {
    let mut process = build(req, id, namespace).process;
    add_env(&mut process, extra_env);
    serde_json::to_vec(&process)
}

/// Adds `extra_env` (`NAME=VALUE`) to `process`'s environment, replacing variables of the
/// same name.
pub(crate) fn add_env(process: &mut Process, extra_env: &[String]) {
    for kv in extra_env {
        let name = kv.split('=').next().unwrap_or_default();
        process
            .env
            .retain(|e| e.split('=').next().unwrap_or_default() != name);
        process.env.push(kv.clone());
    }
}

/// The user's supplementary groups with its primary group first unless already there, as
/// BuildKit gives them (`id` then says `groups=GID,…` in both).
fn with_primary_gid(user: &User) -> Vec<u32> {
    let mut gids = user.additional_gids.clone();
    if !gids.contains(&user.gid) {
        gids.insert(0, user.gid);
    }
    gids
}

/// Builds the runtime spec for container `id` in containerd namespace `namespace`.
pub(crate) fn build(req: &RunRequest, id: &str, namespace: &str) -> Spec {
    let nofile = nofile_limit();
    let caps: Vec<String> = if req.privileged {
        ALL_CAPS
    } else {
        DEFAULT_CAPS
    }
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut env = req.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_owned());
    }
    let ns = |kind| Namespace { kind, path: None };
    let mut namespaces = vec![ns("pid"), ns("ipc"), ns("uts"), ns("mount")];
    match &req.network {
        // A fresh network namespace: runc brings up only the loopback interface.
        NetworkMode::None => namespaces.push(ns("network")),
        NetworkMode::Path(p) => namespaces.push(Namespace {
            kind: "network",
            path: Some(p.display().to_string()),
        }),
        NetworkMode::Host => {}
    }
    Spec {
        oci_version: "1.0.2",
        process: Process {
            terminal: false,
            user: SpecUser {
                uid: req.user.uid,
                gid: req.user.gid,
                additional_gids: with_primary_gid(&req.user),
            },
            args: req.args.clone(),
            env,
            cwd: if req.cwd.is_empty() {
                "/".to_owned()
            } else {
                req.cwd.clone()
            },
            capabilities: Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
            },
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE",
                hard: nofile,
                soft: nofile,
            }],
            no_new_privileges: false,
        },
        root: Root {
            path: "rootfs".to_owned(),
            readonly: false,
        },
        hostname: if req.hostname.is_empty() {
            "memobuild".to_owned()
        } else {
            req.hostname.clone()
        },
        mounts: spec_mounts(req),
        linux: Linux {
            namespaces,
            // A privileged step sees /proc and /sys whole and may use any device, as
            // BuildKit's insecure mode gives it.
            masked_paths: if req.privileged {
                Vec::new()
            } else {
                MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect()
            },
            readonly_paths: if req.privileged {
                Vec::new()
            } else {
                READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect()
            },
            resources: Resources {
                // Deny all device access; runc adds its default devices (null, zero, …) back.
                devices: vec![DeviceRule {
                    allow: req.privileged,
                    access: "rwm",
                }],
            },
            cgroups_path: format!("/{namespace}/{id}"),
        },
        annotations: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::containerd::run::User;

    fn request() -> RunRequest {
        RunRequest {
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: "/work".into(),
            user: User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 20],
            },
            hostname: "box".into(),
            mounts: vec![
                ExtraMount::Bind {
                    source: PathBuf::from("/host/cache"),
                    destination: "/cache".into(),
                    readonly: true,
                },
                ExtraMount::Tmpfs {
                    destination: "/tmp".into(),
                    size_bytes: Some(1 << 20),
                },
            ],
            ..RunRequest::default()
        }
    }

    #[test]
    fn a_primary_group_among_the_supplementary_ones_is_not_repeated() {
        let user = User {
            uid: 5,
            gid: 20,
            additional_gids: vec![10, 20],
        };
        assert_eq!(with_primary_gid(&user), [10, 20]);
        assert_eq!(with_primary_gid(&User::default()), [0]);
    }

    #[test]
    fn spec_json_has_defaults_and_request_fields() {
        let spec = build(&request(), "c1", "ns");
        let json = serde_json::to_value(&spec).expect("spec serialises");
        assert_eq!(json["process"]["args"][2], "true");
        assert_eq!(json["process"]["cwd"], "/work");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(
            json["process"]["user"]["additionalGids"],
            serde_json::json!([1000, 10, 20]),
            "the primary group first, as BuildKit"
        );
        assert_eq!(json["process"]["env"][0], "A=1");
        assert_eq!(json["process"]["env"][1], DEFAULT_PATH);
        assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(14)
        );
        assert_eq!(json["hostname"], "box");
        assert_eq!(json["root"]["path"], "rootfs");
        assert_eq!(json["linux"]["cgroupsPath"], "/ns/c1");
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            ns,
            ["pid", "ipc", "uts", "mount"],
            "host network by default"
        );
        let dests: Vec<&str> = json["mounts"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["destination"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/cache",
                "/tmp"
            ]
        );
        assert_eq!(json["mounts"][7]["options"][1], "ro");
        assert_eq!(json["mounts"][8]["options"][3], "size=1048576");
    }

    #[test]
    fn network_none_adds_a_network_namespace() {
        let req = RunRequest {
            network: NetworkMode::None,
            privileged: false,
            env: vec!["PATH=/bin".into()],
            ..request()
        };
        let json = serde_json::to_value(build(&req, "c", "n")).expect("spec serialises");
        assert_eq!(json["linux"]["namespaces"][4]["type"], "network");
        assert_eq!(json["process"]["env"].as_array().map(Vec::len), Some(1));
    }
}
