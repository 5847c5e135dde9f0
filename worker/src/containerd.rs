//! Typed client for the parts of containerd's gRPC API that MemoBuild uses.
//!
//! Everything goes through one [`Containerd`] value, which carries the gRPC channel, the containerd
//! namespace and (optionally) a lease. Cloning is cheap (the channel is reference counted).
//!
//! # Garbage collection
//!
//! containerd deletes content and snapshots that nothing references. Two mechanisms keep our data alive:
//!
//! - **Leases**, for the duration of a build: [`Containerd::create_lease`] makes a lease with a
//!   `containerd.io/gc.expire` label (so a crashed build does not leak forever) and
//!   [`Containerd::with_lease`] returns a client that sends the `containerd-lease` header on every call,
//!   which makes containerd attach every blob, ingest and snapshot created through it to the lease. Delete
//!   the lease with [`Containerd::delete_lease`] when the build ends.
//! - **`containerd.io/gc.root` labels**, for what must outlive the build (see [`gc_root_labels`]):
//!   the committed snapshots of pulled base-image layers (named by chain ID, see [`crate::image`]).
//!   Snapshots committed by the solver as cache entries should get the same label through the
//!   `labels` argument of [`Containerd::commit`]. Active (writable) snapshots, containers and the
//!   layer blobs copied into the content store for `Diff.Apply` never get it: they live only under a
//!   lease (the local blob store keeps the layer blobs).

mod content;
mod diff;
mod images;
mod mount;
mod run;
mod runc;
mod snapshots;
mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

pub use containerd_client::services::v1::snapshots::Info as SnapshotInfo;
pub use containerd_client::types::{Descriptor, Mount};
pub use diff::descriptor;
pub use mount::{MountGuard, overlay_lowerdirs, overlay_upperdir};
pub use run::{ExtraMount, NetworkMode, OutputStream, RunRequest, StdioPipe, User};
pub(crate) use runc::sweep as sweep_runc;

/// The snapshotter MemoBuild uses unless told otherwise.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// Label that makes containerd's garbage collector treat a resource as a root.
pub const GC_ROOT_LABEL: &str = "containerd.io/gc.root";
/// Label that gives a lease an expiry time (RFC 3339).
pub const GC_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";

/// Errors from the containerd client. Each names the object the failed call was about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket is missing or the daemon does not answer.
    #[error("cannot connect to containerd at `{path}`: {reason}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why (innermost cause).
        reason: String,
    },
    /// A namespace or lease id that cannot be sent as a gRPC header.
    #[error("invalid containerd {what} `{value}`: not a valid gRPC header value")]
    InvalidHeader {
        /// `namespace` or `lease`.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// containerd answered a call with an error not mapped to a more specific variant.
    #[error("containerd {op} `{subject}` failed: {code:?}: {message}")]
    Rpc {
        /// The call, e.g. `task create`.
        op: &'static str,
        /// What it was about: container id, digest, snapshot key, …
        subject: String,
        /// gRPC status code.
        code: tonic::Code,
        /// containerd's message.
        message: String,
    },
    /// A snapshot with this key or name already exists.
    #[error("snapshot `{key}` already exists")]
    SnapshotExists {
        /// Snapshot key or name.
        key: String,
    },
    /// No snapshot with this key or name.
    #[error("snapshot `{key}` not found")]
    SnapshotNotFound {
        /// Snapshot key or name.
        key: String,
    },
    /// The content store has no committed blob with this digest.
    #[error("blob `{digest}` not found in the content store")]
    BlobNotFound {
        /// Blob digest.
        digest: String,
    },
    /// The reader of `write_blob` gave more or fewer bytes than announced.
    #[error("writing blob `{digest}`: expected {expected} bytes, the reader gave {actual}")]
    BlobSize {
        /// Blob digest.
        digest: String,
        /// Announced size.
        expected: u64,
        /// Bytes read (so far).
        actual: u64,
    },
    /// The reader of `write_blob` failed.
    #[error("writing blob `{digest}`: reading the data failed: {source}")]
    BlobRead {
        /// Blob digest.
        digest: String,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// `Content.Read` sent chunks out of order.
    #[error("reading blob `{digest}`: containerd sent data for offset {got}, expected {expected}")]
    BlobStream {
        /// Blob digest.
        digest: String,
        /// Offset we expected next.
        expected: i64,
        /// Offset containerd sent.
        got: i64,
    },
    /// `Diff.Apply` succeeded without saying what it applied.
    #[error("applying layer `{digest}`: containerd returned no descriptor")]
    ApplyNoDescriptor {
        /// Layer digest.
        digest: String,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `mount(2)` or `umount(2)` failed.
    #[error("mounting `{kind}` at `{target}`: {source}")]
    Mount {
        /// Mount type (`overlay`, `bind`, …) or `umount`.
        kind: String,
        /// Mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A mount we cannot perform (e.g. options longer than a page).
    #[error("cannot mount `{kind}` at `{target}`: {reason}")]
    MountUnsupported {
        /// Mount type.
        kind: String,
        /// Mount point.
        target: PathBuf,
        /// Why.
        reason: String,
    },
    /// The runtime spec could not be serialised.
    #[error("serialising the runtime spec for container `{id}`: {source}")]
    Spec {
        /// Container id.
        id: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// No executor can run a step as configured (`MEMOBUILD_EXECUTOR`).
    #[error("cannot run steps: {reason}")]
    Executor {
        /// What is wrong.
        reason: String,
    },
    /// runc could not start or run the container (a missing executable, a bad mount, …).
    #[error("container `{id}`: {message}")]
    Runtime {
        /// Container id.
        id: String,
        /// runc's error.
        message: String,
    },
    /// The run's cancellation token fired; the process was killed and cleaned up.
    #[error("container `{id}`: run cancelled")]
    Cancelled {
        /// Container id.
        id: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a gRPC status from operation `op` on `subject`.
    pub(crate) fn rpc(op: &'static str, subject: impl Into<String>, status: tonic::Status) -> Self {
        Error::Rpc {
            op,
            subject: subject.into(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// The gRPC code when this error came from containerd.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A lease created with [`Containerd::create_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease id (`memobuild-<uuid>`).
    pub id: String,
}

/// Client for one containerd namespace, optionally working under a lease.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    namespace_header: AsciiMetadataValue,
    lease: Option<(String, AsciiMetadataValue)>,
    snapshotter: String,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("socket", &self.socket)
            .field("namespace", &self.namespace)
            .field("lease", &self.lease.as_ref().map(|(id, _)| id))
            .field("snapshotter", &self.snapshotter)
            .finish()
    }
}

impl Containerd {
    /// Connects to the containerd socket at `socket_path` and works in `namespace`.
    ///
    /// Checks that the socket exists first, then connects and calls `Version` so that a dead socket
    /// fails here rather than on first use.
    pub async fn connect(socket_path: impl AsRef<Path>, namespace: &str) -> Result<Self> {
        let path = socket_path.as_ref().to_path_buf();
        let connect_err = |reason: String| Error::Connect {
            path: path.clone(),
            reason,
        };
        match std::fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(connect_err("socket does not exist".into()));
            }
            Err(e) => return Err(connect_err(e.to_string())),
        }
        let namespace_header = header_value("namespace", namespace)?;

        let socket = path.clone();
        // The URI is required by tonic but unused: the connector below always dials the socket.
        let channel = Endpoint::from_static("http://[::1]:50051")
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;

        let client = Containerd {
            channel,
            socket: path.clone(),
            namespace: namespace.to_owned(),
            namespace_header,
            lease: None,
            snapshotter: DEFAULT_SNAPSHOTTER.to_owned(),
        };
        client
            .version()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(client)
    }

    /// A client that is not connected: every call fails with `Unavailable`. For code paths that
    /// need a value but never reach containerd (e.g. resolving image configs only). Must be called
    /// inside a tokio runtime.
    pub fn unconnected(namespace: &str) -> Self {
        let namespace_header = header_value("namespace", namespace)
            .unwrap_or_else(|_| AsciiMetadataValue::from_static("default"));
        let channel = Endpoint::from_static("http://[::1]:50051").connect_with_connector_lazy(
            tower::service_fn(|_| async {
                Err::<hyper_util::rt::TokioIo<tokio::net::UnixStream>, _>(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no containerd socket configured",
                ))
            }),
        );
        Containerd {
            channel,
            socket: PathBuf::new(),
            namespace: namespace.to_owned(),
            namespace_header,
            lease: None,
            snapshotter: DEFAULT_SNAPSHOTTER.to_owned(),
        }
    }

    /// The daemon's version string (e.g. `1.6.20~ds1`).
    pub async fn version(&self) -> Result<String> {
        let resp = VersionClient::new(self.channel.clone())
            .version(self.request(()))
            .await
            .map_err(|s| Error::rpc("version", self.socket.display().to_string(), s))?;
        Ok(resp.into_inner().version)
    }

    /// The containerd namespace this client works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The snapshotter used by the snapshot and run calls (default [`DEFAULT_SNAPSHOTTER`]).
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// A copy of this client that uses another snapshotter.
    pub fn with_snapshotter(&self, snapshotter: &str) -> Self {
        Containerd {
            snapshotter: snapshotter.to_owned(),
            ..self.clone()
        }
    }

    /// A copy of this client working in another namespace on the same connection.
    pub fn with_namespace(&self, namespace: &str) -> Result<Self> {
        Ok(Containerd {
            namespace: namespace.to_owned(),
            namespace_header: header_value("namespace", namespace)?,
            ..self.clone()
        })
    }

    /// The lease this client attaches to its calls, if any.
    pub fn lease(&self) -> Option<Lease> {
        self.lease.as_ref().map(|(id, _)| Lease { id: id.clone() })
    }

    /// A copy of this client that sends the `containerd-lease` header on every call, so that all
    /// content, ingests and snapshots it creates belong to `lease`.
    pub fn with_lease(&self, lease: &Lease) -> Result<Self> {
        Ok(Containerd {
            lease: Some((lease.id.clone(), header_value("lease", &lease.id)?)),
            ..self.clone()
        })
    }

    /// A copy of this client without a lease.
    pub fn without_lease(&self) -> Self {
        Containerd {
            lease: None,
            ..self.clone()
        }
    }

    /// Creates a lease that expires after `expire_after` (the `containerd.io/gc.expire` label), so a
    /// build that dies without calling [`Containerd::delete_lease`] does not pin resources forever.
    pub async fn create_lease(&self, expire_after: Duration) -> Result<Lease> {
        let id = format!("memobuild-{}", uuid::Uuid::new_v4().simple());
        let expire = prost_types::Timestamp::from(SystemTime::now() + expire_after);
        let labels = HashMap::from([(GC_EXPIRE_LABEL.to_owned(), expire.to_string())]);
        let resp = LeasesClient::new(self.channel.clone())
            .create(self.request(LeaseCreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|s| Error::rpc("lease create", &id, s))?;
        let id = resp.into_inner().lease.map(|l| l.id).unwrap_or(id);
        Ok(Lease { id })
    }

    /// Adds a resource (`content` by digest, `snapshots/<snapshotter>` by key) to the client's
    /// lease, when it has one. containerd does not check that it exists.
    pub(crate) async fn lease_resource(&self, id: &str, kind: String) -> Result<()> {
        let Some((lease, _)) = &self.lease else {
            return Ok(());
        };
        LeasesClient::new(self.channel.clone())
            .add_resource(
                self.request(containerd_client::services::v1::AddResourceRequest {
                    id: lease.clone(),
                    resource: Some(containerd_client::services::v1::Resource {
                        id: id.to_owned(),
                        r#type: kind,
                    }),
                }),
            )
            .await
            .map_err(|s| Error::rpc("lease add resource", id, s))?;
        Ok(())
    }

    /// Deletes a lease; its resources become collectable unless something else references them.
    /// A lease that no longer exists is not an error.
    pub async fn delete_lease(&self, lease: &Lease) -> Result<()> {
        self.delete_lease_with(lease, false).await
    }

    /// [`Containerd::delete_lease`], then a garbage collection that is over when this returns.
    pub async fn delete_lease_and_collect(&self, lease: &Lease) -> Result<()> {
        self.delete_lease_with(lease, true).await
    }

    async fn delete_lease_with(&self, lease: &Lease, sync: bool) -> Result<()> {
        let res = LeasesClient::new(self.channel.clone())
            .delete(self.request(LeaseDeleteRequest {
                id: lease.id.clone(),
                sync,
            }))
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::rpc("lease delete", &lease.id, s)),
        }
    }

    /// Builds a request carrying the namespace header and, when set, the lease header.
    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        let md = req.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace_header.clone());
        if let Some((_, lease)) = &self.lease {
            md.insert(LEASE_HEADER, lease.clone());
        }
        req
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// Labels that make containerd's garbage collector keep a snapshot or blob: `containerd.io/gc.root`
/// set to the current time (RFC 3339), as containerd's own tools do.
pub fn gc_root_labels() -> HashMap<String, String> {
    let now = prost_types::Timestamp::from(SystemTime::now());
    HashMap::from([(GC_ROOT_LABEL.to_owned(), now.to_string())])
}

/// Label of MemoBuild's committed snapshots: when a build last used one (Unix seconds), for
/// `memobuild cache prune --snapshots`. Refreshed at most once per [`LAST_USED_REFRESH`].
pub const LAST_USED_LABEL: &str = "memobuild.io/last-used";

/// How stale [`LAST_USED_LABEL`] may get before a use rewrites it.
pub const LAST_USED_REFRESH: Duration = Duration::from_secs(3600);

/// Labels for a snapshot MemoBuild commits: [`gc_root_labels`] and [`LAST_USED_LABEL`].
pub fn snapshot_labels() -> HashMap<String, String> {
    let mut l = gc_root_labels();
    l.insert(LAST_USED_LABEL.to_owned(), unix_now().to_string());
    l
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header_value(what: &'static str, value: &str) -> Result<AsciiMetadataValue> {
    if value.is_empty() {
        return Err(Error::InvalidHeader {
            what,
            value: value.to_owned(),
        });
    }
    value.parse().map_err(|_| Error::InvalidHeader {
        what,
        value: value.to_owned(),
    })
}

/// Joins an error and its sources with `: `, skipping repeats (tonic nests the same text).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}
