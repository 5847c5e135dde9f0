//! The daemon's build history: BuildKit's `ListenBuildHistory` / `UpdateBuildHistory`, which
//! `docker buildx history ls|inspect|rm` read.
//!
//! A record is made when a client's Solve starts (its ref, frontend and attributes, exporters,
//! start time) and completed when it ends (end time, error, exporter response, step counts).
//! Records are kept on disk under [`StateDir::build_records`], one protobuf file per build
//! named by a hash of its ref (a client chooses the ref), written whole and renamed into
//! place; the newest [`MAX_RECORDS`] unpinned ones are kept, as buildkitd's default
//! `history.maxEntries`. Beside each record, its build's progress (every `StatusResponse`, in
//! order) is kept, so `Status` of a finished build replays it (`docker buildx history logs`). Builds a client marks `Internal` (buildx's probes) are not recorded.
//! A record a stopped daemon never completed is completed on the next start, with an error
//! saying so. Filters are not applied here: buildx applies them itself when a daemon does not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use memobuild_proto::control::{
    BuildHistoryEvent, BuildHistoryEventType, BuildHistoryRecord, BuildHistoryRequest,
    BuildResultInfo, Descriptor, StatusResponse,
};
use memobuild_worker::export::attestation::{
    MEDIA_TYPE_IN_TOTO, PREDICATE_SLSA_V1, PREDICATE_TYPE_ANNOTATION,
};
use memobuild_worker::state::StateDir;
use prost::Message as _;
use tokio::sync::broadcast;

use crate::daemon::status::timestamp;

/// Completed, unpinned records kept; older ones are removed.
pub const MAX_RECORDS: usize = 50;

/// Extension of the file holding a record's provenance predicate.
const PROVENANCE: &str = "provenance";

/// Events buffered for a slow listener before it misses some.
const EVENTS_BUFFERED: usize = 256;

/// A build's progress is kept only up to this size (a build that printed more keeps none).
const MAX_STATUS_BYTES: usize = 64 << 20;

/// What the history knows about one build's steps, when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCounts {
    /// Steps the build showed.
    pub total: i32,
    /// Steps that finished (ran or came from the cache).
    pub completed: i32,
    /// Steps that came from the cache.
    pub cached: i32,
    /// Warnings shown.
    pub warnings: i32,
}

/// The records of one daemon.
pub struct BuildHistory {
    dir: Option<PathBuf>,
    records: Mutex<HashMap<String, BuildHistoryRecord>>,
    events: broadcast::Sender<BuildHistoryEvent>,
}

impl BuildHistory {
    /// The history kept in `state`, with the records an earlier run left.
    pub fn open(state: &StateDir) -> Self {
        let dir = state.build_records();
        let mut records = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut logs = Vec::new();
            for entry in entries.flatten() {
                let path = entry.path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("pb") => {}
                    Some("status") | Some(PROVENANCE) => {
                        logs.push(path);
                        continue;
                    }
                    _ => {
                        // A temporary file of a write that did not finish.
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                }
                match std::fs::read(&path)
                    .ok()
                    .and_then(|b| BuildHistoryRecord::decode(b.as_slice()).ok())
                {
                    Some(mut r) if record_file(&dir, &r.r#ref) == path => {
                        if r.completed_at.is_none() {
                            r.completed_at = r.created_at;
                            r.error = Some(memobuild_proto::rpc::Status {
                                code: tonic::Code::Unavailable as i32,
                                message: "the daemon stopped during the build".into(),
                                details: Vec::new(),
                            });
                            r.generation += 1;
                            write_record(&dir, &r);
                        }
                        records.insert(r.r#ref.clone(), r);
                    }
                    _ => {
                        tracing::warn!(
                            "removing `{}`: not a build record of this daemon",
                            path.display()
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            // Progress and provenance whose record is gone.
            for log in logs {
                if !log.with_extension("pb").exists() {
                    let _ = std::fs::remove_file(&log);
                }
            }
        }
        let (events, _) = broadcast::channel(EVENTS_BUFFERED);
        BuildHistory {
            dir: Some(dir),
            records: Mutex::new(records),
            events,
        }
    }

    /// A history kept in memory only.
    #[cfg(test)]
    pub fn in_memory() -> Self {
        BuildHistory {
            dir: None,
            records: Mutex::default(),
            events: broadcast::channel(EVENTS_BUFFERED).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BuildHistoryRecord>> {
        match self.records.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records that the build `record.ref` started now.
    pub fn started(&self, mut record: BuildHistoryRecord) {
        record.created_at = Some(timestamp(SystemTime::now()));
        record.completed_at = None;
        record.generation = 0;
        self.save(&record);
        self.lock().insert(record.r#ref.clone(), record.clone());
        self.publish(BuildHistoryEventType::Started, record);
    }

    /// Records that the build `r#ref` ended now, with `error` if it failed, and with the
    /// SLSA provenance predicate (JSON) of its result when it has one.
    pub fn completed(
        &self,
        r#ref: &str,
        error: Option<&tonic::Status>,
        exporter_response: &std::collections::BTreeMap<String, String>,
        counts: StepCounts,
        provenance: Option<&[u8]>,
    ) {
        let attestation = provenance.and_then(|p| self.keep_provenance(r#ref, p));
        let record = {
            let mut records = self.lock();
            let Some(r) = records.get_mut(r#ref) else {
                return;
            };
            r.completed_at = Some(timestamp(SystemTime::now()));
            r.error = error.map(|s| memobuild_proto::rpc::Status {
                code: s.code() as i32,
                message: s.message().to_owned(),
                details: Vec::new(),
            });
            r.exporter_response = exporter_response.clone();
            r.num_total_steps = counts.total;
            r.num_completed_steps = counts.completed;
            r.num_cached_steps = counts.cached;
            r.num_warnings = counts.warnings;
            if let Some(a) = attestation {
                r.result = Some(BuildResultInfo {
                    attestations: vec![a],
                    ..Default::default()
                });
            }
            r.generation += 1;
            r.clone()
        };
        self.save(&record);
        self.publish(BuildHistoryEventType::Complete, record);
        self.trim();
    }

    /// Keeps `predicate` beside the record of `r#ref`; its descriptor, as the record lists it.
    fn keep_provenance(&self, r#ref: &str, predicate: &[u8]) -> Option<Descriptor> {
        let dir = self.dir.as_ref()?;
        if !self.contains(r#ref) {
            return None;
        }
        let path = record_file(dir, r#ref).with_extension(PROVENANCE);
        let tmp = path.with_extension("provenance.tmp");
        let written = std::fs::write(&tmp, predicate).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("cannot keep the provenance of build `{}`: {e}", r#ref);
            return None;
        }
        Some(Descriptor {
            media_type: MEDIA_TYPE_IN_TOTO.to_owned(),
            digest: memobuild_worker::blobs::sha256_digest(predicate),
            size: i64::try_from(predicate.len()).ok()?,
            annotations: [(
                PREDICATE_TYPE_ANNOTATION.to_owned(),
                PREDICATE_SLSA_V1.to_owned(),
            )]
            .into(),
        })
    }

    /// The file holding the blob `digest` one of the records lists, with its size.
    pub fn blob(&self, digest: &str) -> Option<(PathBuf, i64)> {
        let dir = self.dir.as_ref()?;
        let records = self.lock();
        records.values().find_map(|r| {
            let a = r
                .result
                .as_ref()?
                .attestations
                .iter()
                .find(|a| a.digest == digest)?;
            Some((
                record_file(dir, &r.r#ref).with_extension(PROVENANCE),
                a.size,
            ))
        })
    }

    /// Pins or unpins `r#ref` (a pinned record is never removed to make room); false if there
    /// is no such record.
    pub fn pin(&self, r#ref: &str, pinned: bool) -> bool {
        let record = {
            let mut records = self.lock();
            let Some(r) = records.get_mut(r#ref) else {
                return false;
            };
            r.pinned = pinned;
            r.generation += 1;
            r.clone()
        };
        self.save(&record);
        true
    }

    /// Whether there is a record of `r#ref`.
    pub fn contains(&self, r#ref: &str) -> bool {
        self.lock().contains_key(r#ref)
    }

    /// Keeps the progress of the build `r#ref` (its record must exist), for [`Self::status`].
    pub fn save_status(&self, r#ref: &str, responses: &[StatusResponse]) {
        let Some(dir) = &self.dir else { return };
        if !self.contains(r#ref) {
            return;
        }
        let mut bytes = Vec::new();
        for r in responses {
            if r.encode_length_delimited(&mut bytes).is_err() || bytes.len() > MAX_STATUS_BYTES {
                tracing::debug!("the progress of build `{}` is too large to keep", r#ref);
                return;
            }
        }
        let path = record_file(dir, r#ref).with_extension("status");
        let tmp = path.with_extension("status.tmp");
        let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("cannot keep the progress of build `{}`: {e}", r#ref);
        }
    }

    /// The kept progress of the finished build `r#ref`; `None` when there is none.
    pub fn status(&self, r#ref: &str) -> Option<Vec<StatusResponse>> {
        let dir = self.dir.as_ref()?;
        if !self.contains(r#ref) {
            return None;
        }
        let bytes = std::fs::read(record_file(dir, r#ref).with_extension("status")).ok()?;
        let mut buf = bytes.as_slice();
        let mut out = Vec::new();
        while !buf.is_empty() {
            out.push(StatusResponse::decode_length_delimited(&mut buf).ok()?);
        }
        Some(out)
    }

    /// Removes `r#ref`; false if there is no such record.
    pub fn delete(&self, r#ref: &str) -> bool {
        let Some(record) = self.lock().remove(r#ref) else {
            return false;
        };
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(record_file(dir, r#ref));
            let _ = std::fs::remove_file(record_file(dir, r#ref).with_extension("status"));
            let _ = std::fs::remove_file(record_file(dir, r#ref).with_extension(PROVENANCE));
        }
        self.publish(BuildHistoryEventType::Deleted, record);
        true
    }

    /// The events a listener with `req` gets first: one per record it asks for, newest first
    /// (at most `req.limit` when set).
    pub fn existing(&self, req: &BuildHistoryRequest) -> Vec<BuildHistoryEvent> {
        let mut found: Vec<BuildHistoryRecord> = self
            .lock()
            .values()
            .filter(|r| wanted(req, r))
            .cloned()
            .collect();
        found.sort_by_key(|r| std::cmp::Reverse(created(r)));
        if let Ok(limit) = usize::try_from(req.limit)
            && limit > 0
        {
            found.truncate(limit);
        }
        found
            .into_iter()
            .map(|r| BuildHistoryEvent {
                r#type: if r.completed_at.is_some() {
                    BuildHistoryEventType::Complete
                } else {
                    BuildHistoryEventType::Started
                } as i32,
                record: Some(r),
            })
            .collect()
    }

    /// Later events.
    pub fn subscribe(&self) -> broadcast::Receiver<BuildHistoryEvent> {
        self.events.subscribe()
    }

    fn publish(&self, kind: BuildHistoryEventType, record: BuildHistoryRecord) {
        let _ = self.events.send(BuildHistoryEvent {
            r#type: kind as i32,
            record: Some(record),
        });
    }

    fn save(&self, record: &BuildHistoryRecord) {
        if let Some(dir) = &self.dir {
            write_record(dir, record);
        }
    }

    /// Removes the oldest completed, unpinned records beyond [`MAX_RECORDS`].
    fn trim(&self) {
        let removed: Vec<String> = {
            let records = self.lock();
            let mut done: Vec<&BuildHistoryRecord> = records
                .values()
                .filter(|r| r.completed_at.is_some() && !r.pinned)
                .collect();
            if done.len() <= MAX_RECORDS {
                return;
            }
            done.sort_by_key(|r| created(r));
            let excess = done.len() - MAX_RECORDS;
            done.into_iter()
                .take(excess)
                .map(|r| r.r#ref.clone())
                .collect()
        };
        for r in removed {
            self.delete(&r);
        }
    }
}

/// Whether `record` is one `req` asks for.
pub fn wanted(req: &BuildHistoryRequest, record: &BuildHistoryRecord) -> bool {
    (req.r#ref.is_empty() || req.r#ref == record.r#ref)
        && (!req.active_only || record.completed_at.is_none())
}

fn created(r: &BuildHistoryRecord) -> (i64, i32) {
    r.created_at
        .as_ref()
        .map(|t| (t.seconds, t.nanos))
        .unwrap_or_default()
}

fn record_file(dir: &Path, r#ref: &str) -> PathBuf {
    dir.join(format!("{}.pb", blake3::hash(r#ref.as_bytes()).to_hex()))
}

/// Writes `record` whole, then renames it into place: a reader never sees half of one.
fn write_record(dir: &Path, record: &BuildHistoryRecord) {
    let path = record_file(dir, &record.r#ref);
    let tmp = path.with_extension("pb.tmp");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, record.encode_to_vec()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!("cannot keep the record of build `{}`: {e}", record.r#ref);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(r#ref: &str) -> BuildHistoryRecord {
        BuildHistoryRecord {
            r#ref: r#ref.into(),
            frontend: "dockerfile.v0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn records_survive_a_restart_and_an_unfinished_one_is_completed_with_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().to_path_buf());
        let history = BuildHistory::open(&state);
        history.started(record("done"));
        history.completed(
            "done",
            None,
            &std::collections::BTreeMap::from([(
                "containerimage.digest".into(),
                "sha256:ab".into(),
            )]),
            StepCounts {
                total: 4,
                completed: 4,
                cached: 3,
                warnings: 1,
            },
            None,
        );
        history.started(record("killed"));
        drop(history);
        // A torn write and a stranger are removed.
        std::fs::write(state.build_records().join("x.pb.tmp"), b"half").expect("write");
        std::fs::write(state.build_records().join("bogus.pb"), b"\xff\xff").expect("write");

        let again = BuildHistory::open(&state);
        let all = again.existing(&BuildHistoryRequest::default());
        assert_eq!(all.len(), 2);
        let done = all
            .iter()
            .filter_map(|e| e.record.as_ref())
            .find(|r| r.r#ref == "done")
            .expect("done");
        assert_eq!(
            (
                done.num_total_steps,
                done.num_cached_steps,
                done.num_warnings
            ),
            (4, 3, 1)
        );
        assert_eq!(done.exporter_response["containerimage.digest"], "sha256:ab");
        assert!(done.error.is_none());
        let killed = all
            .iter()
            .filter_map(|e| e.record.as_ref())
            .find(|r| r.r#ref == "killed")
            .expect("killed");
        assert!(killed.completed_at.is_some());
        assert!(killed.error.is_some());
        assert_eq!(
            std::fs::read_dir(state.build_records())
                .expect("dir")
                .count(),
            2
        );
    }

    #[test]
    fn a_finished_build_s_progress_is_kept_with_its_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().to_path_buf());
        let history = BuildHistory::open(&state);
        let progress = vec![
            StatusResponse {
                vertexes: vec![memobuild_proto::control::Vertex {
                    name: "[1/2] RUN make".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            StatusResponse::default(),
        ];
        history.save_status("nobody", &progress);
        assert!(
            history.status("nobody").is_none(),
            "no record, nothing kept"
        );
        history.started(record("b1"));
        history.completed("b1", None, &Default::default(), StepCounts::default(), None);
        history.save_status("b1", &progress);
        assert_eq!(history.status("b1"), Some(progress.clone()));
        drop(history);
        let again = BuildHistory::open(&state);
        assert_eq!(again.status("b1"), Some(progress));
        assert!(again.delete("b1"));
        assert_eq!(
            std::fs::read_dir(state.build_records())
                .expect("dir")
                .count(),
            0,
            "the progress goes with its record"
        );
    }

    #[test]
    fn listeners_get_what_they_ask_for_and_old_records_make_room() {
        let history = BuildHistory::in_memory();
        let mut events = history.subscribe();
        for i in 0..MAX_RECORDS + 3 {
            let r = format!("b{i}");
            history.started(record(&r));
            history.completed(&r, None, &Default::default(), StepCounts::default(), None);
        }
        history.started(record("running"));
        let active = history.existing(&BuildHistoryRequest {
            active_only: true,
            ..Default::default()
        });
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].r#type, BuildHistoryEventType::Started as i32);
        let all = history.existing(&BuildHistoryRequest::default());
        assert_eq!(all.len(), MAX_RECORDS + 1, "the oldest completed ones went");
        assert!(
            all.iter()
                .all(|e| e.record.as_ref().expect("rec").r#ref != "b0")
        );
        let two = history.existing(&BuildHistoryRequest {
            limit: 2,
            ..Default::default()
        });
        assert_eq!(two.len(), 2);
        let one = history.existing(&BuildHistoryRequest {
            r#ref: "b7".into(),
            ..Default::default()
        });
        assert_eq!(one.len(), 1);
        assert!(history.delete("b7"));
        assert!(!history.delete("b7"));
        let first = events.try_recv().expect("event");
        assert_eq!(first.r#type, BuildHistoryEventType::Started as i32);
    }

    // Verifies: a build's provenance is listed in its record as buildx looks for it (in-toto
    // media type, SLSA v1 predicate-type annotation, the bytes' sha256), is found by that
    // digest after a restart, and goes with its record; a digest no record lists is not found.
    #[test]
    fn a_records_provenance_is_found_by_digest_and_goes_with_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().to_path_buf());
        let history = BuildHistory::open(&state);
        history.started(record("b1"));
        let predicate = br#"{"buildDefinition":{}}"#;
        history.completed(
            "b1",
            None,
            &Default::default(),
            StepCounts::default(),
            Some(predicate),
        );
        drop(history);

        let again = BuildHistory::open(&state);
        let all = again.existing(&BuildHistoryRequest::default());
        let rec = all[0].record.as_ref().expect("record");
        let a = &rec.result.as_ref().expect("result").attestations[0];
        assert_eq!(a.media_type, "application/vnd.in-toto+json");
        assert_eq!(
            a.annotations["in-toto.io/predicate-type"],
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(a.digest, memobuild_worker::blobs::sha256_digest(predicate));
        let (path, size) = again.blob(&a.digest).expect("blob");
        assert_eq!(std::fs::read(&path).expect("read"), predicate);
        assert_eq!(size, predicate.len() as i64);
        assert!(
            again
                .blob(&memobuild_worker::blobs::sha256_digest(b"other"))
                .is_none()
        );

        assert!(again.delete("b1"));
        assert!(!path.exists());
        assert!(again.blob(&a.digest).is_none());
    }
}
