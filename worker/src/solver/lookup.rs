//! Cache lookups and stores for the solver: local tiers first, then the remote one.

use std::sync::atomic::Ordering;

use crate::cache::ActionRecord;
use crate::cache::remote::{RemoteError, RemoteTier};
use crate::progress::ProgressEvent;
use crate::solver::Solve;

impl Solve {
    /// The record for `key`: memory and disk first, then the remote tier, whose record is used
    /// only once every blob it names is fetched and verified (and then backfills the local tiers).
    pub(crate) async fn lookup(&self, key: &str) -> Option<ActionRecord> {
        if let Some(r) = self.worker.cache.get(key, &self.worker.blobs) {
            return Some(r);
        }
        let remote = self.worker.remote()?;
        match fetch(remote.as_ref(), key, &self.worker).await {
            Ok(Some(r)) => {
                if let Err(e) = self.worker.cache.put(&r) {
                    tracing::warn!("cannot backfill the local cache: {e}");
                }
                Some(r)
            }
            Ok(None) => None,
            Err(e) => {
                self.remote_failed(remote.as_ref(), &e);
                None
            }
        }
    }

    /// Stores a record locally and, in the background, in the remote tier.
    pub(crate) fn store(&self, record: ActionRecord) {
        if let Err(e) = self.worker.cache.put(&record) {
            tracing::warn!("cannot record the result of `{}`: {e}", record.name);
        }
        let Some(remote) = self.worker.remote() else {
            return;
        };
        let worker = self.worker.clone();
        let progress = self.progress.clone();
        self.worker.spawn_upload(async move {
            let result = async {
                for l in &record.layers {
                    remote.push_blob(&l.digest, &worker.blobs).await?;
                }
                remote.put_record(&record).await
            }
            .await;
            if let Err(e) = result
                && !worker.remote_disabled.swap(true, Ordering::SeqCst)
            {
                progress.send(ProgressEvent::Message(format!(
                    "warning: remote cache {} failed, continuing without it: {e}",
                    remote.describe()
                )));
            }
        });
    }

    fn remote_failed(&self, remote: &dyn RemoteTier, e: &RemoteError) {
        if !self.worker.remote_disabled.swap(true, Ordering::SeqCst) {
            self.progress.send(ProgressEvent::Message(format!(
                "warning: remote cache {} failed, continuing without it: {e}",
                remote.describe()
            )));
        }
    }
}

async fn fetch(
    remote: &dyn RemoteTier,
    key: &str,
    worker: &crate::Worker,
) -> Result<Option<ActionRecord>, RemoteError> {
    let Some(record) = remote.get_record(key).await? else {
        return Ok(None);
    };
    for l in &record.layers {
        if worker.blobs.verify(&l.digest, Some(l.size)) {
            continue;
        }
        if !remote.fetch_blob(&l.digest, &worker.blobs).await? {
            return Ok(None);
        }
        if !worker.blobs.verify(&l.digest, Some(l.size)) {
            return Ok(None);
        }
    }
    Ok(Some(record))
}
