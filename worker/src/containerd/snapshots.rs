//! Snapshots (overlayfs by default): prepare, view, mounts, commit, stat, remove.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use containerd_client::types::Mount;

use super::{Containerd, Error, Result};

impl Containerd {
    fn snapshots(&self) -> SnapshotsClient<tonic::transport::Channel> {
        SnapshotsClient::new(self.channel())
    }

    /// Maps the NotFound / AlreadyExists codes of a snapshot call on `key` to typed errors.
    fn snapshot_err(op: &'static str, key: &str, status: tonic::Status) -> Error {
        match status.code() {
            tonic::Code::NotFound => Error::SnapshotNotFound {
                key: key.to_owned(),
            },
            tonic::Code::AlreadyExists => Error::SnapshotExists {
                key: key.to_owned(),
            },
            _ => Error::rpc(op, key, status),
        }
    }

    /// Creates an active (writable) snapshot `key` on top of committed snapshot `parent` (`""` for
    /// none) and returns the mounts for it. An overlay mount's `upperdir=` is where writes land.
    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let resp = self
            .snapshots()
            .prepare(self.request(PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
                parent: parent.to_owned(),
                labels,
            }))
            .await
            .map_err(|s| match s.code() {
                // Prepare on a missing parent reports NotFound about the parent, not the key.
                tonic::Code::NotFound if !parent.is_empty() => Error::SnapshotNotFound {
                    key: parent.to_owned(),
                },
                _ => Self::snapshot_err("snapshot prepare", key, s),
            })?;
        Ok(resp.into_inner().mounts)
    }

    /// Creates a read-only view `key` of committed snapshot `parent` and returns its mounts.
    pub async fn view(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let resp = self
            .snapshots()
            .view(self.request(ViewSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
                parent: parent.to_owned(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound if !parent.is_empty() => Error::SnapshotNotFound {
                    key: parent.to_owned(),
                },
                _ => Self::snapshot_err("snapshot view", key, s),
            })?;
        Ok(resp.into_inner().mounts)
    }

    /// The mounts of an existing active snapshot or view.
    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let resp = self
            .snapshots()
            .mounts(self.request(MountsRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
            }))
            .await
            .map_err(|s| Self::snapshot_err("snapshot mounts", key, s))?;
        Ok(resp.into_inner().mounts)
    }

    /// Commits active snapshot `key` as committed snapshot `name`; `key` ceases to exist.
    /// Pass [`super::gc_root_labels`] in `labels` for snapshots that must outlive the lease.
    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.snapshots()
            .commit(self.request(CommitSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                name: name.to_owned(),
                key: key.to_owned(),
                labels,
            }))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::AlreadyExists => Error::SnapshotExists {
                    key: name.to_owned(),
                },
                _ => Self::snapshot_err("snapshot commit", key, s),
            })?;
        Ok(())
    }

    /// Information about snapshot `key`, or `None` when it does not exist.
    pub async fn stat(&self, key: &str) -> Result<Option<Info>> {
        let res = self
            .snapshots()
            .stat(self.request(StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
            }))
            .await;
        match res {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::rpc("snapshot stat", key, s)),
        }
    }

    /// [`Containerd::stat`], after adding `key` to the client's lease (when it has one). A
    /// committed snapshot found by `stat` alone is protected only by its own labels, which a
    /// concurrent `memobuild cache prune --snapshots` may take away before the snapshot is used
    /// as a parent; the lease holds it (and, through it, its parents) until the build is over.
    pub async fn stat_leased(&self, key: &str) -> Result<Option<Info>> {
        self.lease_resource(key, format!("snapshots/{}", self.snapshotter))
            .await?;
        self.stat(key).await
    }

    /// Every snapshot of this snapshotter in the namespace.
    pub async fn list_snapshots(&self) -> Result<Vec<Info>> {
        let mut stream = self
            .snapshots()
            .list(self.request(ListSnapshotsRequest {
                snapshotter: self.snapshotter.clone(),
                filters: Vec::new(),
            }))
            .await
            .map_err(|s| Error::rpc("snapshot list", &self.snapshotter, s))?
            .into_inner();
        let mut all = Vec::new();
        while let Some(resp) = stream
            .message()
            .await
            .map_err(|s| Error::rpc("snapshot list", &self.snapshotter, s))?
        {
            all.extend(resp.info);
        }
        Ok(all)
    }

    /// Bytes snapshot `key` takes on its own (not counting its parents).
    pub async fn usage(&self, key: &str) -> Result<u64> {
        let resp = self
            .snapshots()
            .usage(self.request(UsageRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
            }))
            .await
            .map_err(|s| Self::snapshot_err("snapshot usage", key, s))?;
        Ok(u64::try_from(resp.into_inner().size).unwrap_or(0))
    }

    /// Sets the labels in `set` and removes those in `remove` on snapshot `key`, leaving its
    /// other labels alone.
    pub async fn update_snapshot_labels(
        &self,
        key: &str,
        set: HashMap<String, String>,
        remove: &[&str],
    ) -> Result<()> {
        let paths = set
            .keys()
            .map(String::as_str)
            .chain(remove.iter().copied())
            .map(|k| format!("labels.{k}"))
            .collect();
        self.snapshots()
            .update(self.request(UpdateSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                info: Some(Info {
                    name: key.to_owned(),
                    labels: set,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| Self::snapshot_err("snapshot update", key, s))?;
        Ok(())
    }

    /// Removes snapshot `key` (fails with `FailedPrecondition` while it has children).
    pub async fn remove(&self, key: &str) -> Result<()> {
        self.snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
            }))
            .await
            .map_err(|s| Self::snapshot_err("snapshot remove", key, s))?;
        Ok(())
    }
}
