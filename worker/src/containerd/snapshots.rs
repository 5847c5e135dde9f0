//! Snapshots (overlayfs by default): prepare, view, mounts, commit, stat, remove.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, ViewSnapshotRequest,
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
