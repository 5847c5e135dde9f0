//! Registry client (OCI Distribution) over `oci-client`: resolve a reference to a platform's
//! manifest and config, stream blobs with digest verification.
//!
//! `oci-client` does the HTTP, the bearer-token dance and the manifest/blob URLs. We keep the
//! manifest bytes ourselves (`pull_manifest_raw`) because the manifest digest must be of the exact
//! bytes, and do platform selection ourselves because its resolver ignores `variant`.
//!
//! Plain HTTP is used for loopback registries (`localhost`, `127.0.0.0/8`, `[::1]`, any port) and
//! for those listed in [`RegistryConfig::insecure`]; HTTPS otherwise.

pub mod auth;
pub mod push;
pub mod reference;
pub mod resolved;
pub mod retry;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

pub use self::resolved::ResolveMode;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Manifest media types we ask for.
const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];
/// TCP (and TLS) connect: a registry that takes longer is down or filtered.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// From sending a request to its response headers, and then between two reads of its body.
/// Registries answer API calls in well under a second; a download that delivers nothing for 30 s
/// has stalled, whereas a slow one delivers something every few milliseconds. It bounds silence,
/// never a transfer's total time, so a multi-gigabyte layer over a slow link never trips it, and
/// a registry that accepts connections but never answers fails the pull in 30 s, naming the host
/// ([`Error::NoAnswer`]), instead of hanging the build.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Re-authenticate a repository after this long (oci-client drops tokens after 60 s by default).
const REAUTH_AFTER: Duration = Duration::from_secs(45);
/// Nested indexes deeper than this are rejected.
const MAX_INDEX_DEPTH: usize = 3;

/// Errors from the registry client; each names the reference and/or registry host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference does not parse.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A platform string that is not `os/arch[/variant]`.
    #[error("invalid platform `{0}`: expected os/arch[/variant]")]
    InvalidPlatform(String),
    /// Connecting to the registry failed (refused, timed out, DNS, TLS handshake).
    #[error("cannot reach registry {host}: {reason}")]
    Unreachable {
        /// Registry host (`host:port`).
        host: String,
        /// Innermost cause, e.g. `connection refused`.
        reason: String,
    },
    /// The registry accepted the connection but sent no response, or stopped sending one,
    /// for [`READ_TIMEOUT`].
    #[error("registry {host} did not answer within {}s ({what})", .after.as_secs())]
    NoAnswer {
        /// Registry host (`host:port`).
        host: String,
        /// What was asked for (`registry API`, `manifest`, a blob).
        what: String,
        /// How long it was waited for.
        after: Duration,
    },
    /// Unknown tag, digest or repository (HTTP 404).
    #[error("`{reference}`: {what} not found on registry {host}")]
    NotFound {
        /// Normalised reference.
        reference: String,
        /// Registry host.
        host: String,
        /// `manifest` or ``blob `sha256:…` ``.
        what: String,
    },
    /// Authentication failed or access was denied (HTTP 401/403).
    #[error("`{reference}`: registry {host} refused access{}: {message}", http_status(*.status))]
    Unauthorized {
        /// Normalised reference.
        reference: String,
        /// Registry host.
        host: String,
        /// HTTP status, when known.
        status: Option<u16>,
        /// The registry's message.
        message: String,
    },
    /// Any other unsuccessful HTTP status.
    #[error("`{reference}`: registry {host} answered HTTP {status}: {message}")]
    Status {
        /// Normalised reference.
        reference: String,
        /// Registry host.
        host: String,
        /// HTTP status (400 when only an OCI error envelope was available).
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The image index has no manifest for the requested platform.
    #[error("`{reference}`: no manifest for platform {platform} (the index has: {available})")]
    NoMatchingPlatform {
        /// Normalised reference.
        reference: String,
        /// Requested platform.
        platform: String,
        /// Platforms the index offers.
        available: String,
    },
    /// A manifest type we cannot use (e.g. Docker schema 1).
    #[error("`{reference}`: unsupported manifest media type `{media_type}`")]
    UnsupportedMediaType {
        /// Normalised reference.
        reference: String,
        /// The media type.
        media_type: String,
    },
    /// A manifest or index that does not parse.
    #[error("`{reference}`: invalid manifest `{digest}`: {reason}")]
    InvalidManifest {
        /// Normalised reference.
        reference: String,
        /// Digest of the bad manifest.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// A blob whose content does not match its digest.
    #[error("`{reference}`: blob `{expected}` arrived with digest `{actual}`")]
    DigestMismatch {
        /// Normalised reference.
        reference: String,
        /// The descriptor's digest.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// A blob whose length does not match its descriptor.
    #[error("`{reference}`: blob `{digest}` is {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        /// Normalised reference.
        reference: String,
        /// Blob digest.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The caller's writer failed.
    #[error("`{reference}`: writing blob `{digest}`: {source}")]
    Write {
        /// Normalised reference.
        reference: String,
        /// Blob digest.
        digest: String,
        /// The writer's error.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure reported by oci-client.
    #[error("`{reference}` on registry {host}: {source}")]
    Distribution {
        /// Normalised reference.
        reference: String,
        /// Registry host.
        host: String,
        /// oci-client's error.
        #[source]
        source: Box<OciDistributionError>,
    },
}

fn http_status(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Username and password for a registry (basic auth, or exchanged for a bearer token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

/// Looks up credentials for a registry host when the static map has none: `memobuild build`
/// reads `~/.docker/config.json` and credential helpers behind it, the daemon asks the client
/// through its session (the worker reads no files).
pub trait CredentialProvider: Send + Sync {
    /// Credentials for `host` (`host` or `host:port`), or `None` for anonymous access.
    fn credentials<'a>(
        &'a self,
        host: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<Credentials>>;
}

impl std::fmt::Debug for dyn CredentialProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialProvider")
    }
}

/// Registry client settings.
#[derive(Clone, Default)]
pub struct RegistryConfig {
    /// Hosts (`host` or `host:port`) reached over plain HTTP in addition to loopback ones.
    pub insecure: Vec<String>,
    /// Credentials by registry host (`docker.io` also matches `index.docker.io`); anonymous otherwise.
    pub credentials: HashMap<String, Credentials>,
    /// Asked for hosts missing from `credentials` (once per host; the answer is kept).
    pub provider: Option<Arc<dyn CredentialProvider>>,
    /// Connect timeout ([`CONNECT_TIMEOUT`] when `None`).
    pub connect_timeout: Option<Duration>,
    /// How long a request may wait for the response's first byte, and a body stay silent
    /// while it streams ([`READ_TIMEOUT`] when `None`).
    pub read_timeout: Option<Duration>,
    /// Mirrors to try first, by registry host as in a reference (`docker.io`), each a
    /// `host[:port]` serving the same repositories (BuildKit's `[registry."docker.io"] mirrors`).
    pub mirrors: HashMap<String, Vec<String>>,
    /// Recent resolutions, shared by the clients of one engine; none kept when `None`.
    pub resolved: Option<Arc<resolved::ResolvedCache>>,
}

/// Target platform of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// GOARCH names: `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `v7`, `v8`, …; `None` matches any variant when requesting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine, in OCI/Go names (`linux/amd64`, `linux/arm64/v8`, …).
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).to_owned(),
                    architecture: (*arch).to_owned(),
                    variant: Some((*variant).to_owned()),
                })
            }
            _ => Err(Error::InvalidPlatform(s.to_owned())),
        }
    }

    /// Whether an index entry's platform satisfies this (requested) platform. A request without a
    /// variant takes any variant; `arm64` without a variant means `v8`.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        let Some(want) = &self.variant else {
            return true;
        };
        let default_variant = (self.architecture == "arm64").then_some("v8");
        let have = candidate.variant.as_deref().or(default_variant);
        have == Some(want.as_str())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// `sha256:…` of the content.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations, if any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A reference resolved to one platform's image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The normalised reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of the image manifest (not of the index, see `index_digest`).
    pub manifest_digest: String,
    /// `application/vnd.oci.image.manifest.v1+json` or Docker schema 2.
    pub manifest_media_type: String,
    /// The manifest's exact bytes.
    pub manifest: Vec<u8>,
    /// The manifest's config descriptor.
    pub config_descriptor: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// The config blob's exact bytes (verified against `config_descriptor`).
    pub config: Vec<u8>,
    /// Digest of the index / manifest list the manifest was picked from, if any.
    pub index_digest: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestProbe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IndexJson {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ManifestJson {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Parses and normalises a reference like Docker: `busybox` → `docker.io/library/busybox:latest`.
/// The common shapes are read by hand ([`reference::parse_plain`]); the rest by oci-spec.
pub fn normalize_reference(reference: &str) -> Result<Reference> {
    if let Some(r) = reference::parse_plain(reference) {
        return Ok(r);
    }
    reference
        .parse::<Reference>()
        .map_err(|e| Error::InvalidReference {
            reference: reference.to_owned(),
            reason: e.to_string(),
        })
}

/// Whether `host` (`name[:port]`) is a loopback registry, reached over plain HTTP by default.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost"
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || name.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

struct HostClient {
    client: Client,
    /// When each repository last authenticated.
    authed: tokio::sync::Mutex<HashMap<String, Instant>>,
}

/// Registry client; one HTTP client per registry host, created on first use.
pub struct Registry {
    config: RegistryConfig,
    hosts: Mutex<HashMap<String, Arc<HostClient>>>,
    provided: Mutex<HashMap<String, Option<Credentials>>>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of debug output.
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field(
                "credential_hosts",
                &self.credentials.keys().collect::<Vec<_>>(),
            )
            .field("provider", &self.provider.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("insecure", &self.config.insecure)
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(RegistryConfig::default())
    }
}

impl Registry {
    /// A client with these settings; connections are made lazily.
    pub fn new(config: RegistryConfig) -> Self {
        Registry {
            config,
            hosts: Mutex::new(HashMap::new()),
            provided: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `host` is reached over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        is_loopback_host(host)
            || self
                .config
                .insecure
                .iter()
                .any(|h| h == host || host.rsplit_once(':').is_some_and(|(name, _)| name == h))
    }

    fn read_timeout(&self) -> Duration {
        self.config.read_timeout.unwrap_or(READ_TIMEOUT)
    }

    fn host_client(&self, host: &str) -> Arc<HostClient> {
        let mut hosts = match self.hosts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| {
                let protocol = if self.is_insecure(host) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                let client = Client::new(ClientConfig {
                    protocol,
                    platform_resolver: None,
                    connect_timeout: Some(self.config.connect_timeout.unwrap_or(CONNECT_TIMEOUT)),
                    // reqwest's read timeout runs from sending the request to the response
                    // headers, then restarts at every read of the body: first byte and idle in
                    // one (pulls send no bodies, so nothing else counts against it).
                    read_timeout: Some(self.read_timeout()),
                    // The system's roots, read once per process rather than per client.
                    tls_certs_only: crate::tls::oci_roots(),
                    ..ClientConfig::default()
                });
                Arc::new(HostClient {
                    client,
                    authed: tokio::sync::Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    async fn auth_for(&self, reference: &Reference) -> RegistryAuth {
        let configured = self
            .config
            .credentials
            .get(reference.registry())
            .or_else(|| self.config.credentials.get(reference.resolve_registry()))
            .cloned();
        let creds = match configured {
            Some(c) => Some(c),
            None => self.provided(reference.registry()).await,
        };
        match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        }
    }

    /// What the credential provider says for `host`, asked once per host and client.
    async fn provided(&self, host: &str) -> Option<Credentials> {
        let provider = self.config.provider.as_ref()?;
        if let Some(known) = self.provided.lock().ok()?.get(host) {
            return known.clone();
        }
        let answer = provider.credentials(host).await;
        self.provided
            .lock()
            .ok()?
            .insert(host.to_string(), answer.clone());
        answer
    }

    /// Client for the reference's registry, authenticated for its repository (anonymous or with
    /// the configured credentials; oci-client fetches a bearer token when the registry asks).
    async fn client_for(&self, reference: &Reference) -> Result<(Arc<HostClient>, RegistryAuth)> {
        let host = reference.resolve_registry();
        let hc = self.host_client(host);
        let auth = self.auth_for(reference).await;
        let mut authed = hc.authed.lock().await;
        let fresh = authed
            .get(reference.repository())
            .is_some_and(|t| t.elapsed() < REAUTH_AFTER);
        if !fresh {
            hc.client
                .auth(reference, &auth, RegistryOperation::Pull)
                .await
                .map_err(|e| map_err(e, reference, "registry API", self.read_timeout()))?;
            authed.insert(reference.repository().to_owned(), Instant::now());
        }
        drop(authed);
        Ok((hc, auth))
    }

    /// Where to look for `reference`: the same repository on each mirror of its registry
    /// (`RegistryConfig::mirrors`), then the registry itself.
    fn candidates(&self, reference: &Reference) -> Vec<Reference> {
        let mirrors = self
            .config
            .mirrors
            .get(reference.registry())
            .or_else(|| self.config.mirrors.get(reference.resolve_registry()));
        let mut out: Vec<Reference> = mirrors
            .into_iter()
            .flatten()
            .map(|m| match (reference.digest(), reference.tag()) {
                (Some(d), _) => {
                    Reference::with_digest(m.clone(), reference.repository().into(), d.into())
                }
                (None, tag) => Reference::with_tag(
                    m.clone(),
                    reference.repository().into(),
                    tag.unwrap_or("latest").into(),
                ),
            })
            .collect();
        out.push(reference.clone());
        out
    }

    /// Resolves `reference` to the image manifest for `platform` (selecting from an image index or
    /// Docker manifest list when needed), and fetches its config. The registry's mirrors are
    /// tried first; the result names `reference` whichever answered. A recent answer is reused
    /// ([`ResolveMode::Default`]).
    pub async fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage> {
        self.resolve_with(reference, platform, ResolveMode::Default)
            .await
    }

    /// [`Registry::resolve`], reusing an earlier answer as `mode` allows.
    pub async fn resolve_with(
        &self,
        reference: &str,
        platform: &Platform,
        mode: ResolveMode,
    ) -> Result<ResolvedImage> {
        let Some(cache) = &self.config.resolved else {
            return self
                .resolve_remote(&normalize_reference(reference)?, platform)
                .await;
        };
        // Keyed by the reference as written: a hit never parses it (the reference grammar's
        // regex costs more to compile than the rest of a small no-op rebuild).
        let key = resolved::ResolvedCache::key(reference, platform);
        if let Some(hit) = cache.get(&key, reference.contains('@'), mode) {
            return Ok(hit);
        }
        let top = normalize_reference(reference)?;
        let image = self.resolve_remote(&top, platform).await?;
        cache.put(&key, &image);
        Ok(image)
    }

    async fn resolve_remote(&self, top: &Reference, platform: &Platform) -> Result<ResolvedImage> {
        let reference = top.whole();
        let top = top.clone();
        let candidates = self.candidates(&top);
        let last = candidates.len().saturating_sub(1);
        for (i, c) in candidates.into_iter().enumerate() {
            match self.resolve_at(&c, platform).await {
                Ok(mut r) => {
                    r.reference = top.whole();
                    return Ok(r);
                }
                Err(e) if i < last => {
                    tracing::debug!("mirror `{}` for `{}`: {e}", c.registry(), top.whole());
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::InvalidReference {
            reference: reference.to_owned(),
            reason: "no registry to ask".into(),
        })
    }

    async fn resolve_at(&self, top: &Reference, platform: &Platform) -> Result<ResolvedImage> {
        let top = top.clone();
        let (hc, auth) = self.client_for(&top).await?;
        let mut current = top.clone();
        let mut index_digest = None;
        for _ in 0..MAX_INDEX_DEPTH {
            let (bytes, digest) = hc
                .client
                .pull_manifest_raw(&current, &auth, ACCEPTED_MANIFESTS)
                .await
                .map_err(|e| map_err(e, &current, "manifest", self.read_timeout()))?;
            let invalid = |reason: String| Error::InvalidManifest {
                reference: top.whole(),
                digest: digest.clone(),
                reason,
            };
            let probe: ManifestProbe =
                serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
            let media_type = match (probe.media_type, probe.manifests, probe.config) {
                (Some(mt), _, _) => mt,
                (None, Some(_), _) => OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned(),
                (None, None, Some(_)) => OCI_IMAGE_MEDIA_TYPE.to_owned(),
                (None, None, None) => {
                    return Err(invalid("neither `manifests` nor `config`".into()));
                }
            };
            match media_type.as_str() {
                OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE => {
                    let index: IndexJson =
                        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
                    let chosen = select_platform(&index.manifests, platform).ok_or_else(|| {
                        Error::NoMatchingPlatform {
                            reference: top.whole(),
                            platform: platform.to_string(),
                            available: available_platforms(&index.manifests),
                        }
                    })?;
                    index_digest.get_or_insert(digest);
                    current = top.clone_with_digest(chosen.digest.clone());
                }
                OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE => {
                    let manifest: ManifestJson =
                        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
                    let mut config = Vec::with_capacity(manifest.config.size.min(1 << 20) as usize);
                    self.fetch_blob_with(&hc, &current, &manifest.config, &mut config)
                        .await?;
                    return Ok(ResolvedImage {
                        reference: top.whole(),
                        manifest_digest: digest,
                        manifest_media_type: media_type,
                        manifest: bytes.to_vec(),
                        config_descriptor: manifest.config,
                        layers: manifest.layers,
                        config,
                        index_digest,
                    });
                }
                other => {
                    return Err(Error::UnsupportedMediaType {
                        reference: top.whole(),
                        media_type: other.to_owned(),
                    });
                }
            }
        }
        Err(Error::InvalidManifest {
            reference: top.whole(),
            digest: current.digest().unwrap_or_default().to_owned(),
            reason: format!("image indexes nested deeper than {MAX_INDEX_DEPTH}"),
        })
    }

    /// Streams blob `descriptor` of `reference`'s repository into `writer`, verifying its size and
    /// (sha256) digest. The writer is flushed, not shut down. On error the writer may hold a prefix.
    pub async fn fetch_blob<W>(
        &self,
        reference: &str,
        descriptor: &Descriptor,
        writer: W,
    ) -> Result<()>
    where
        W: AsyncWrite + Unpin,
    {
        let reference = normalize_reference(reference)?;
        let mut writer = writer;
        let candidates = self.candidates(&reference);
        let last = candidates.len().saturating_sub(1);
        for (i, c) in candidates.into_iter().enumerate() {
            let attempt = async {
                let (hc, _) = self.client_for(&c).await?;
                self.fetch_blob_with(&hc, &c, descriptor, &mut writer).await
            }
            .await;
            match attempt {
                // A mirror that fails before writing anything leaves the writer untouched; one
                // that fails half way cannot be retried into the same writer.
                Err(
                    e @ (Error::Write { .. }
                    | Error::SizeMismatch { .. }
                    | Error::DigestMismatch { .. }),
                ) if i < last => {
                    return Err(e);
                }
                Err(e) if i < last => {
                    tracing::debug!(
                        "mirror `{}` for blob `{}`: {e}",
                        c.registry(),
                        descriptor.digest
                    );
                }
                r => return r,
            }
        }
        Ok(())
    }

    async fn fetch_blob_with<W>(
        &self,
        hc: &HostClient,
        reference: &Reference,
        descriptor: &Descriptor,
        writer: W,
    ) -> Result<()>
    where
        W: AsyncWrite + Unpin,
    {
        let mut verifying = Verifying::new(writer);
        hc.client
            .pull_blob(reference, descriptor.digest.as_str(), &mut verifying)
            .await
            .map_err(|e| match e {
                OciDistributionError::IoError(source) => Error::Write {
                    reference: reference.whole(),
                    digest: descriptor.digest.clone(),
                    source,
                },
                e => map_err(
                    e,
                    reference,
                    &format!("blob `{}`", descriptor.digest),
                    self.read_timeout(),
                ),
            })?;
        verifying
            .inner
            .flush()
            .await
            .map_err(|source| Error::Write {
                reference: reference.whole(),
                digest: descriptor.digest.clone(),
                source,
            })?;
        if verifying.count != descriptor.size {
            return Err(Error::SizeMismatch {
                reference: reference.whole(),
                digest: descriptor.digest.clone(),
                expected: descriptor.size,
                actual: verifying.count,
            });
        }
        if descriptor.digest.starts_with("sha256:") {
            let actual = format!("sha256:{}", hex::encode(verifying.hasher.finalize()));
            if actual != descriptor.digest {
                return Err(Error::DigestMismatch {
                    reference: reference.whole(),
                    expected: descriptor.digest.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Picks the first index entry whose platform matches; entries without a platform never match.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    platform: &Platform,
) -> Option<&'a Descriptor> {
    entries
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(|p| platform.matches(p)))
}

fn available_platforms(entries: &[Descriptor]) -> String {
    let list: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref().map(Platform::to_string))
        .collect();
    if list.is_empty() {
        "no platforms".to_owned()
    } else {
        list.join(", ")
    }
}

/// Maps an oci-client error about `what` of `reference` to ours (`read_timeout`: the client's,
/// for the message of a request that timed out after connecting).
fn map_err(
    err: OciDistributionError,
    reference: &Reference,
    what: &str,
    read_timeout: Duration,
) -> Error {
    let host = reference.resolve_registry().to_owned();
    let reference_s = reference.whole();
    match err {
        OciDistributionError::RequestError(e) if e.is_timeout() && !e.is_connect() => {
            Error::NoAnswer {
                host,
                what: what.to_owned(),
                after: read_timeout,
            }
        }
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            Error::Unreachable {
                host,
                reason: root_cause(&e),
            }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            });
            let denied = envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
            let message = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            if not_found {
                Error::NotFound {
                    reference: reference_s,
                    host,
                    what: what.to_owned(),
                }
            } else if denied {
                Error::Unauthorized {
                    reference: reference_s,
                    host,
                    status: None,
                    message,
                }
            } else {
                Error::Status {
                    reference: reference_s,
                    host,
                    status: 400,
                    message,
                }
            }
        }
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound {
            reference: reference_s,
            host,
            what: what.to_owned(),
        },
        OciDistributionError::ServerError {
            code: code @ (401 | 403),
            message,
            ..
        } => Error::Unauthorized {
            reference: reference_s,
            host,
            status: Some(code),
            message,
        },
        OciDistributionError::ServerError { code, message, .. } => Error::Status {
            reference: reference_s,
            host,
            status: code,
            message,
        },
        OciDistributionError::UnauthorizedError { url } => Error::Unauthorized {
            reference: reference_s,
            host,
            status: Some(401),
            message: url,
        },
        OciDistributionError::AuthenticationFailure(message) => Error::Unauthorized {
            reference: reference_s,
            host,
            status: None,
            message,
        },
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            Error::DigestMismatch {
                reference: reference_s,
                expected,
                actual,
            }
        }
        other => Error::Distribution {
            reference: reference_s,
            host,
            source: Box::new(other),
        },
    }
}

/// The innermost cause, worded like Go's net errors (`connection refused`).
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind as K;
        let text = match io.kind() {
            K::ConnectionRefused => Some("connection refused"),
            K::ConnectionReset => Some("connection reset by peer"),
            K::TimedOut => Some("i/o timeout"),
            K::HostUnreachable => Some("no route to host"),
            K::NetworkUnreachable => Some("network is unreachable"),
            _ => None,
        };
        if let Some(t) = text {
            return t.to_owned();
        }
    }
    let text = cur.to_string();
    if text.is_empty() {
        err.to_string()
    } else {
        text
    }
}

/// Counts and hashes what passes through to the inner writer.
struct Verifying<W> {
    inner: W,
    hasher: sha2::Sha256,
    count: u64,
}

impl<W> Verifying<W> {
    fn new(inner: W) -> Self {
        Verifying {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Verifying<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            this.hasher.update(&buf[..*n]);
            this.count += *n as u64;
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, platform: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_IMAGE_MEDIA_TYPE.into(),
            digest: digest.into(),
            size: 1,
            annotations: BTreeMap::new(),
            platform: Platform::parse(platform).ok(),
        }
    }

    #[test]
    fn normalizes_like_docker() -> Result<()> {
        assert_eq!(
            normalize_reference("busybox")?.whole(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_reference("user/app:1")?.whole(),
            "docker.io/user/app:1"
        );
        let local = normalize_reference("127.0.0.1:5000/library/busybox")?;
        assert_eq!(local.registry(), "127.0.0.1:5000");
        assert_eq!(local.repository(), "library/busybox");
        assert_eq!(local.tag(), Some("latest"));
        assert!(normalize_reference("busybox:bad tag!").is_err());
        assert!(
            normalize_reference("Busybox").is_err(),
            "repository names are lowercase"
        );
        Ok(())
    }

    #[test]
    fn loopback_hosts_use_http() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5999",
            "127.3.4.5",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        let reg = Registry::new(RegistryConfig {
            insecure: vec!["registry.local".into(), "10.0.0.1:5000".into()],
            ..RegistryConfig::default()
        });
        assert!(reg.is_insecure("registry.local:5000"));
        assert!(reg.is_insecure("10.0.0.1:5000"));
        assert!(!reg.is_insecure("10.0.0.1:6000"));
        assert!(!reg.is_insecure("docker.io"));
    }

    // Verifies: a registry's mirrors are asked first, for the same repository and tag or digest,
    // and the registry itself last; other registries have no mirrors.
    #[test]
    fn mirrors_come_first() -> Result<()> {
        let r = Registry::new(RegistryConfig {
            mirrors: HashMap::from([("docker.io".to_string(), vec!["127.0.0.1:5000".to_string()])]),
            ..RegistryConfig::default()
        });
        let names = |s: &str| -> Result<Vec<String>> {
            Ok(r.candidates(&normalize_reference(s)?)
                .iter()
                .map(Reference::whole)
                .collect())
        };
        assert_eq!(
            names("busybox")?,
            [
                "127.0.0.1:5000/library/busybox:latest",
                "docker.io/library/busybox:latest"
            ]
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            names(&format!("alpine@{d}"))?[0],
            format!("127.0.0.1:5000/library/alpine@{d}")
        );
        assert_eq!(names("quay.io/x/y:1")?, ["quay.io/x/y:1"]);
        Ok(())
    }

    #[test]
    fn platform_selection_respects_variant() -> Result<()> {
        let entries = [
            entry("sha256:amd64", "linux/amd64"),
            entry("sha256:armv6", "linux/arm/v6"),
            entry("sha256:armv7", "linux/arm/v7"),
            entry("sha256:arm64", "linux/arm64"),
            Descriptor {
                platform: None,
                ..entry("sha256:attestation", "unknown/unknown")
            },
        ];
        let pick = |p: &str| -> Result<Option<String>> {
            Ok(select_platform(&entries, &Platform::parse(p)?).map(|d| d.digest.clone()))
        };
        assert_eq!(pick("linux/amd64")?.as_deref(), Some("sha256:amd64"));
        assert_eq!(pick("linux/arm/v7")?.as_deref(), Some("sha256:armv7"));
        assert_eq!(pick("linux/arm")?.as_deref(), Some("sha256:armv6"));
        assert_eq!(pick("linux/arm64/v8")?.as_deref(), Some("sha256:arm64"));
        assert_eq!(pick("linux/arm/v5")?, None);
        assert_eq!(pick("windows/amd64")?, None);
        assert!(Platform::parse("linux").is_err());
        assert_eq!(Platform::parse("linux/arm/v7")?.to_string(), "linux/arm/v7");
        Ok(())
    }

    // Verifies (issue 12, item 3): a registry that accepts connections and never answers fails
    // a resolve once the read timeout passes, with an error naming the host, instead of hanging.
    #[tokio::test]
    async fn a_silent_registry_fails_naming_the_host() {
        let peer = crate::testhttp::silent().await;
        let reg = Registry::new(RegistryConfig {
            read_timeout: Some(Duration::from_secs(1)),
            ..RegistryConfig::default()
        });
        let (reference, platform) = (format!("{}/x/y:1", peer.addr), Platform::host());
        let resolving = reg.resolve(&reference, &platform);
        let err = tokio::time::timeout(Duration::from_secs(60), resolving)
            .await
            .expect("still waiting after 60 s")
            .unwrap_err();
        assert!(matches!(err, Error::NoAnswer { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("registry {} did not answer within 1s", peer.addr)),
            "{err}"
        );
    }

    // Verifies: the read timeout bounds silence, not a transfer: a blob sent in 10 pieces 300 ms
    // apart (3 s in all, three times the limit) is fetched whole; one that stops half way fails
    // once the limit passes, naming the registry and the blob.
    #[tokio::test]
    async fn slow_blobs_arrive_and_stalled_ones_fail() {
        let blob: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let digest = crate::blobs::sha256_digest(&blob);
        for stall in [None, Some(500)] {
            let body = blob.clone();
            let peer = crate::testhttp::serve(move |_, path| {
                if path == "/v2/" {
                    crate::testhttp::Reply::now(200, b"")
                } else {
                    crate::testhttp::Reply::Body {
                        status: 200,
                        body: body.clone(),
                        piece: 100,
                        gap: Duration::from_millis(300),
                        stall_after: stall,
                    }
                }
            })
            .await;
            let reg = Registry::new(RegistryConfig {
                read_timeout: Some(Duration::from_secs(1)),
                ..RegistryConfig::default()
            });
            let desc = Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: digest.clone(),
                size: blob.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            };
            let mut out = Vec::new();
            let reference = format!("{}/x/y:1", peer.addr);
            let fetching = reg.fetch_blob(&reference, &desc, &mut out);
            let got = tokio::time::timeout(Duration::from_secs(60), fetching)
                .await
                .expect("still waiting after 60 s");
            match stall {
                None => {
                    got.unwrap();
                    assert_eq!(out, blob);
                }
                Some(_) => {
                    let err = got.unwrap_err();
                    let text = err.to_string();
                    assert!(
                        text.contains(&format!("registry {} did not answer", peer.addr))
                            && text.contains(&digest),
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn connection_refused_reads_like_go() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(root_cause(&io), "connection refused");
    }
}
