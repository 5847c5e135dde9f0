//! Cache lookups and stores for the solver: local tiers first, then the remote one.

use std::sync::Arc;

use crate::cache::ActionRecord;
use crate::cache::tier::TierCtx;
use crate::progress::ProgressEvent;
use crate::solver::Solve;

impl Solve {
    /// What the tiers get with each call: the blob store, and this build's progress for warnings.
    fn tier_ctx(&self) -> TierCtx {
        let progress = self.progress.clone();
        TierCtx {
            blobs: self.build.blobs().clone(),
            warn: Arc::new(move |m| progress.send(ProgressEvent::Message(m))),
        }
    }

    /// The record for `key` from the first tier that has it whole (every blob of every output
    /// local and verified), backfilling the tiers in front of it.
    pub(crate) async fn lookup(&self, key: &str) -> Option<ActionRecord> {
        match self.build.tiers.get(key, &self.tier_ctx()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cache lookup failed: {e}");
                None
            }
        }
    }

    /// Stores a record in every tier (the remote one in the background).
    pub(crate) async fn store(&self, record: ActionRecord) {
        if let Err(e) = self.build.tiers.put(&record, &self.tier_ctx()).await {
            tracing::warn!("cannot record the result of `{}`: {e}", record.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::blobs::BlobStore;
    use crate::cache::remote::RemoteTier;
    use crate::cache::tier::memory_remote::FakeRemote;
    use crate::cache::tier::{Remote, Tier};
    use crate::layer::LayerBlob;

    fn layer(digest: &str, size: usize) -> LayerBlob {
        LayerBlob {
            digest: digest.into(),
            diff_id: digest.into(),
            size: size as u64,
            media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
        }
    }

    // Verifies: a remote record with two outputs is used only once the blobs of *both* are
    // local and verified: output 1's blob, which only the remote has, is downloaded; without
    // it on the remote the record is a miss.
    #[tokio::test]
    async fn remote_records_bring_every_outputs_blobs() {
        let d = tempfile::tempdir().unwrap();
        let local = BlobStore::open(d.path().join("local")).unwrap();
        let scratch = BlobStore::open(d.path().join("scratch")).unwrap();
        let (b0, b1) = (b"output zero".to_vec(), b"output one".to_vec());
        let d0 = local.put_bytes(&b0).unwrap();
        let d1 = scratch.put_bytes(&b1).unwrap();
        let key = "ab".repeat(32);
        let record = ActionRecord {
            key: key.clone(),
            layers: vec![layer(&d0, b0.len())],
            extra_outputs: vec![vec![layer(&d1, b1.len())]],
            name: "two outputs".into(),
            duration_ms: 1,
            components: BTreeMap::new(),
        };
        let remote = Arc::new(FakeRemote::default());
        remote.put_record(&record).await.unwrap();
        let tier = Remote::new(remote.clone());
        let ctx = TierCtx {
            blobs: local.clone(),
            warn: Arc::new(|m| panic!("unexpected warning: {m}")),
        };
        assert!(tier.get(&key, &ctx).await.unwrap().is_none());
        assert!(!local.verify(&d1, Some(b1.len() as u64)));

        remote.blobs.lock().unwrap().insert(d1.clone(), b1.clone());
        let got = tier.get(&key, &ctx).await.unwrap();
        assert_eq!(got.as_ref(), Some(&record));
        assert!(local.verify(&d1, Some(b1.len() as u64)));
    }

    // Verifies (issue 12, item 1): a record on the remote whose layer names another diff ID than
    // the blob's (an edited `/ac` object) is a miss with one warning naming the remote and the
    // step, not a failure of the tier (so `Detached` keeps using it, and the step's new record
    // replaces the bad one); the downloaded blob, which is fine, stays. A right record is served.
    #[tokio::test]
    async fn a_remote_record_whose_diff_id_is_not_its_blobs_is_a_miss_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let local = BlobStore::open(d.path().join("local")).unwrap();
        let scratch = BlobStore::open(d.path().join("scratch")).unwrap();
        let upper = tempfile::tempdir().unwrap();
        std::fs::write(upper.path().join("f"), "remote layer").unwrap();
        let good = crate::layer::write_layer(
            upper.path(),
            &scratch,
            crate::layer::LayerOptions::default(),
        )
        .unwrap();
        let bytes = std::fs::read(scratch.path(&good.digest).unwrap()).unwrap();
        let key = "cd".repeat(32);
        let (head, last) = good.diff_id.split_at(good.diff_id.len() - 1);
        let wrong = format!("{head}{}", if last == "0" { "1" } else { "0" });
        let record = |diff_id: &str| ActionRecord {
            key: key.clone(),
            layers: vec![LayerBlob {
                diff_id: diff_id.to_string(),
                ..good.clone()
            }],
            extra_outputs: Vec::new(),
            name: "[2/2] RUN make".into(),
            duration_ms: 1,
            components: BTreeMap::new(),
        };
        let remote = Arc::new(FakeRemote::default());
        remote.put_record(&record(&wrong)).await.unwrap();
        remote
            .blobs
            .lock()
            .unwrap()
            .insert(good.digest.clone(), bytes);
        let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
        let w = warnings.clone();
        let ctx = TierCtx {
            blobs: local.clone(),
            warn: Arc::new(move |m| w.lock().unwrap().push(m)),
        };
        let tier = crate::cache::tier::Detached::new(Arc::new(Remote::new(remote.clone())));

        assert_eq!(tier.get(&key, &ctx).await.unwrap(), None);
        let seen = warnings.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].contains("remote cache http://fake")
                && seen[0].contains("`[2/2] RUN make`")
                && seen[0].contains(&wrong),
            "{seen:?}"
        );
        assert!(
            local.verify(&good.digest, Some(good.size)),
            "the blob stays"
        );

        // The step ran again and stored its record: served from then on.
        remote.put_record(&record(&good.diff_id)).await.unwrap();
        assert_eq!(
            tier.get(&key, &ctx).await.unwrap(),
            Some(record(&good.diff_id)),
            "the tier is still in use"
        );
        assert_eq!(warnings.lock().unwrap().len(), 1);
    }
}
