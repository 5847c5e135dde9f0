//! `memobuild daemon --config FILE`: TOML shaped like `buildkitd.toml` where the meaning is the
//! same, so an existing buildkitd configuration mostly carries over.
//!
//! ```toml
//! root = "/var/lib/memobuild"                 # the state directory (--state-dir wins)
//!
//! [grpc]
//! address = ["unix:///run/memobuild/buildkitd.sock", "tcp://127.0.0.1:1234"]
//! [grpc.tls]                                  # for tcp:// addresses
//! cert = "/etc/memobuild/server.pem"
//! key = "/etc/memobuild/server-key.pem"
//! ca = "/etc/memobuild/ca.pem"                # clients must present a certificate it signed
//!
//! [worker.oci]                                # [worker.containerd] is read the same way
//! max-parallelism = 4                         # RUN steps at once
//! gc = true
//! gckeepstorage = "10GB"                      # the local cache is pruned to this after builds
//! [[worker.oci.gcpolicy]]                     # or rules, applied in order
//! keepDuration = "48h"                        # entries unused for longer go
//! keepBytes = "20GB"                          # (also reservedSpace / maxUsedSpace)
//!
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5000"]                # tried first for docker.io images
//! [registry."127.0.0.1:5000"]
//! http = true                                 # plain HTTP (also insecure = true)
//!
//! [memobuild]                                 # MemoBuild's own keys
//! containerd = "embedded"                     # or a socket path (--containerd wins)
//! namespace = "memobuild"
//! remote-cache = "http://cache.internal:8080" # the team's L3 cache
//! remote-cache-token = "…"
//! ```
//!
//! Keys of buildkitd.toml that mean nothing here (`debug`, `trace`, `[worker.oci] snapshotter`,
//! `[history]`, …) are accepted and ignored, so a buildkitd config loads unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The state directory.
    pub root: Option<PathBuf>,
    /// Listening addresses and TLS.
    pub grpc: Grpc,
    /// Worker settings (`oci` and `containerd` tables are read alike).
    pub worker: Workers,
    /// Per-registry settings, by host.
    pub registry: BTreeMap<String, Registry>,
    /// MemoBuild's own keys.
    pub memobuild: Own,
}

/// `[grpc]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Grpc {
    /// `unix://PATH` or `tcp://HOST:PORT`.
    pub address: Vec<String>,
    /// TLS for TCP listeners.
    pub tls: Tls,
}

/// `[grpc.tls]`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
pub struct Tls {
    /// Server certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
    /// CA that client certificates must chain to (PEM).
    pub ca: Option<PathBuf>,
}

/// `[worker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Workers {
    /// `[worker.oci]`.
    pub oci: Worker,
    /// `[worker.containerd]`.
    pub containerd: Worker,
}

/// `[worker.oci]` / `[worker.containerd]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Worker {
    /// RUN steps at once.
    pub max_parallelism: Option<usize>,
    /// Whether GC runs at all (default on).
    pub gc: Option<bool>,
    /// Size to prune the local cache to after builds.
    pub gckeepstorage: Option<Size>,
    /// GC rules.
    pub gcpolicy: Vec<GcPolicy>,
}

/// One `[[worker.oci.gcpolicy]]` entry.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default, rename_all = "camelCase")]
pub struct GcPolicy {
    /// Remove everything the rule matches.
    pub all: bool,
    /// Keep what was used within this long (`48h`, or seconds).
    pub keep_duration: Option<DurationValue>,
    /// Keep at most this many bytes (old name).
    pub keep_bytes: Option<Size>,
    /// Keep at most this many bytes.
    pub reserved_space: Option<Size>,
    /// Keep at most this many bytes.
    pub max_used_space: Option<Size>,
    /// BuildKit's record filters; not applied here (every entry is a regular cache entry).
    pub filters: Vec<String>,
}

/// `[registry."HOST"]`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
pub struct Registry {
    /// Hosts tried first for this registry's images.
    pub mirrors: Vec<String>,
    /// Plain HTTP.
    pub http: bool,
    /// Plain HTTP, or HTTPS without verification (both mean plain HTTP here).
    pub insecure: bool,
}

/// `[memobuild]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Own {
    /// containerd socket, or `embedded`.
    pub containerd: Option<String>,
    /// containerd namespace.
    pub namespace: Option<String>,
    /// Remote (L3) cache base URL.
    pub remote_cache: Option<String>,
    /// Its bearer token.
    pub remote_cache_token: Option<String>,
}

/// A size: bytes as a number, or a string with a unit (`10GB`, `512MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => crate::cache_cmd::parse_size(&s)
                .map(Size)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A duration: seconds as a number, or a string (`48h`, `7d`, `90m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(DurationValue(Duration::from_secs(n))),
            Raw::S(s) => crate::cache_cmd::parse_duration(&s)
                .map(DurationValue)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A GC rule as the daemon applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcRule {
    /// Remove everything.
    pub all: bool,
    /// Keep what was used this recently.
    pub keep_duration: Option<Duration>,
    /// Keep at most this many bytes.
    pub keep_bytes: Option<u64>,
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config `{}`", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config `{}`", path.display()))
    }

    /// The worker table that is set (`oci` first).
    fn worker(&self) -> &Worker {
        if self.worker.oci.max_parallelism.is_some()
            || self.worker.oci.gc.is_some()
            || self.worker.oci.gckeepstorage.is_some()
            || !self.worker.oci.gcpolicy.is_empty()
        {
            &self.worker.oci
        } else {
            &self.worker.containerd
        }
    }

    /// RUN steps at once.
    pub fn max_parallelism(&self) -> Option<usize> {
        self.worker().max_parallelism
    }

    /// The GC rules, in order (none when `gc = false`).
    pub fn gc_rules(&self) -> Vec<GcRule> {
        let w = self.worker();
        if w.gc == Some(false) {
            return Vec::new();
        }
        let mut rules: Vec<GcRule> = w
            .gcpolicy
            .iter()
            .map(|p| GcRule {
                all: p.all,
                keep_duration: p.keep_duration.map(|d| d.0),
                keep_bytes: p
                    .max_used_space
                    .or(p.reserved_space)
                    .or(p.keep_bytes)
                    .map(|s| s.0),
            })
            .collect();
        if rules.is_empty()
            && let Some(k) = w.gckeepstorage
        {
            rules.push(GcRule {
                keep_bytes: Some(k.0),
                ..GcRule::default()
            });
        }
        rules
    }

    /// Hosts reached over plain HTTP.
    pub fn insecure_registries(&self) -> Vec<String> {
        self.registry
            .iter()
            .filter(|(_, r)| r.http || r.insecure)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Mirrors by registry host.
    pub fn mirrors(&self) -> std::collections::HashMap<String, Vec<String>> {
        self.registry
            .iter()
            .filter(|(_, r)| !r.mirrors.is_empty())
            .map(|(h, r)| (h.clone(), r.mirrors.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verifies: the example the README points at (hack/daemon/memobuild.toml) loads.
    #[test]
    fn the_shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/daemon/memobuild.toml");
        let c = Config::load(&path).expect("hack/daemon/memobuild.toml loads");
        assert_eq!(
            c.grpc.address,
            vec!["unix:///run/memobuild/buildkitd.sock".to_string()]
        );
        assert_eq!(c.max_parallelism(), Some(4));
        assert_eq!(c.gc_rules().len(), 1);
        assert_eq!(c.memobuild.containerd.as_deref(), Some("embedded"));
    }

    // Verifies: a buildkitd.toml (with keys that mean nothing here) loads, and the parts that
    // mean the same are read with their units.
    #[test]
    fn a_buildkitd_config_loads() {
        let c: Config = toml::from_str(
            r#"
debug = true
root = "/srv/mb"
[grpc]
address = ["unix:///run/x.sock", "tcp://127.0.0.1:1234"]
[grpc.tls]
cert = "/c.pem"
key = "/k.pem"
[worker.oci]
enabled = true
snapshotter = "overlayfs"
max-parallelism = 3
gc = true
[[worker.oci.gcpolicy]]
keepDuration = "48h"
keepBytes = "1GB"
[[worker.oci.gcpolicy]]
all = true
maxUsedSpace = 2048
[registry."docker.io"]
mirrors = ["127.0.0.1:5000"]
[registry."127.0.0.1:5000"]
http = true
[memobuild]
remote-cache = "http://c"
"#,
        )
        .unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/srv/mb")));
        assert_eq!(c.grpc.address.len(), 2);
        assert_eq!(c.max_parallelism(), Some(3));
        assert_eq!(
            c.gc_rules(),
            vec![
                GcRule {
                    all: false,
                    keep_duration: Some(Duration::from_secs(48 * 3600)),
                    keep_bytes: Some(1_000_000_000),
                },
                GcRule {
                    all: true,
                    keep_duration: None,
                    keep_bytes: Some(2048),
                }
            ]
        );
        assert_eq!(c.insecure_registries(), ["127.0.0.1:5000"]);
        assert_eq!(c.mirrors()["docker.io"], ["127.0.0.1:5000"]);
        assert_eq!(c.memobuild.remote_cache.as_deref(), Some("http://c"));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(toml::from_str::<Config>("[worker.oci]\ngckeepstorage = \"lots\"\n").is_err());
        let off: Config = toml::from_str("[worker.oci]\ngc = false\ngckeepstorage = 10\n").unwrap();
        assert!(off.gc_rules().is_empty());
    }
}
