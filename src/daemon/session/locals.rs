//! Local directories of a session's client, synced into the daemon with FileSync.
//!
//! The daemon is the fsutil *receiver* of `FileSync.DiffCopy`: the client lists its directory
//! (filtered by the source's patterns) and sends the files the daemon asks for. The copy is
//! kept in the state directory under the directory's shared key (BuildKit's
//! `name:sharedkeyhint:session-sharedkey`), so the next build of the same directory asks only
//! for files whose size or mtime changed; fingerprints and their stat cache then work on that
//! copy as they do on a host directory. A copy another build is using at the moment is not
//! shared: that build gets a fresh one of its own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use memobuild_proto::filesync::file_sync_client::FileSyncClient;
use memobuild_worker::caller::{LocalDir, LocalRequest, LocalSource, SourceError, SourceFuture};
use memobuild_worker::filesync::{self, Packet, ReceiveOptions, ReceiveStats};
use memobuild_worker::progress::ProgressEvent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use super::Scope;
use crate::session::transport::MAX_DECODING_MESSAGE_SIZE;

/// The gRPC method the client must serve.
const DIFF_COPY: &str = "/moby.filesync.v1.FileSync/DiffCopy";

/// Copies in use by running builds of this process.
static IN_USE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Holds a synced copy for a build: the shared copy is released for the next build, a private
/// one is removed.
struct Held {
    dir: PathBuf,
    private: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.private {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else if let Ok(mut m) = IN_USE.lock()
            && let Some(set) = m.as_mut()
        {
            set.remove(&self.dir);
        }
    }
}

/// Takes `dir` for this build if no other build uses it.
fn take(dir: &Path) -> bool {
    let Ok(mut m) = IN_USE.lock() else {
        return false;
    };
    m.get_or_insert_with(HashSet::new).insert(dir.to_path_buf())
}

/// The [`LocalSource`] of a session's build.
pub struct SessionLocals {
    scope: Arc<Scope>,
    /// Copies this build holds, released when the build's caller is dropped.
    held: Mutex<Vec<Held>>,
}

impl SessionLocals {
    /// Local directories read through `scope`'s sessions.
    pub fn new(scope: Arc<Scope>) -> Self {
        SessionLocals {
            scope,
            held: Mutex::default(),
        }
    }

    async fn sync(&self, req: LocalRequest<'_>) -> Result<LocalDir, String> {
        // A context the daemon fetched (a URL) is read where it was put.
        if req.session.is_none_or(|s| s == self.scope.session_id)
            && let Some(dir) = self.scope.provided.get(req.name)
        {
            return Ok(dir);
        }
        // `local.session` may be `prefix:id`: the id after the colon, and the client knows the
        // directory as `prefix-name`.
        let (session_id, dir_name) = match req.session.and_then(|s| s.split_once(':')) {
            Some((prefix, id)) => (Some(id), format!("{prefix}-{}", req.name)),
            None => (req.session, req.name.to_owned()),
        };
        let session = self.scope.session(session_id).await?;
        if !session.supports(DIFF_COPY) {
            return Err(session.unsupported(DIFF_COPY));
        }
        let shared_key = format!(
            "{}:{}:{}",
            dir_name,
            req.shared_key_hint.unwrap_or_default(),
            session.headers.shared_key
        );
        let shared = self.scope.state.local(&shared_key);
        let (dir, private) = if take(&shared) {
            (shared, false)
        } else {
            let tmp = self.scope.state.tmp();
            std::fs::create_dir_all(&tmp).map_err(|e| format!("`{}`: {e}", tmp.display()))?;
            let dir = tempfile::Builder::new()
                .prefix("local-")
                .tempdir_in(&tmp)
                .map_err(|e| format!("`{}`: {e}", tmp.display()))?
                .keep();
            (dir, true)
        };
        let held = Held {
            dir: dir.clone(),
            private,
        };
        if let Ok(mut h) = self.held.lock() {
            h.push(held);
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("`{}`: {e}", dir.display()))?;

        let mut metadata = MetadataMap::new();
        put(&mut metadata, "dir-name", std::slice::from_ref(&dir_name))?;
        put(&mut metadata, "include-patterns", req.include_patterns)?;
        put(&mut metadata, "exclude-patterns", req.exclude_patterns)?;
        put(&mut metadata, "followpaths", req.follow_paths)?;

        let (tx, rx) = mpsc::channel::<Packet>(64);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        *request.metadata_mut() = metadata;
        let mut client = FileSyncClient::new(session.channel.clone())
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
        let started = Instant::now();
        let status = format!("transferring {}:", req.name);
        let progress = req.progress.clone();
        let vertex = req.vertex.to_owned();
        let last = Arc::new(Mutex::new(Instant::now()));
        let report: filesync::ProgressFn = {
            let (status, vertex) = (status.clone(), vertex.clone());
            Arc::new(move |s: &ReceiveStats| {
                let Ok(mut l) = last.lock() else { return };
                if l.elapsed() < Duration::from_millis(100) {
                    return;
                }
                *l = Instant::now();
                progress.send(ProgressEvent::Status {
                    digest: vertex.clone(),
                    id: status.clone(),
                    current: s.wire_bytes,
                    total: None,
                    completed: false,
                });
            })
        };
        let response = client
            .diff_copy(request)
            .await
            .map_err(|e| format!("FileSync of `{dir_name}`: {}", e.message()))?
            .into_inner();
        let stats = filesync::receive(
            &dir,
            ReceiveOptions {
                // The client sends owners 0:0 (as buildctl and buildx do); the copy has them.
                chown: true,
                special_files: false,
                // The copy mirrors the client's directory: what it no longer has goes.
                merge: false,
                filter: None,
                progress: Some(report),
            },
            response,
            tx,
        )
        .await
        .map_err(|e| format!("receiving `{dir_name}` from the client: {e}"))?;
        req.progress.send(ProgressEvent::Status {
            digest: vertex,
            id: status,
            current: stats.wire_bytes,
            total: None,
            completed: true,
        });
        tracing::debug!(
            "synced `{dir_name}` in {:.3}s: {} entries, {} files ({} bytes) sent, {} removed",
            started.elapsed().as_secs_f64(),
            stats.entries,
            stats.files_requested,
            stats.bytes_received,
            stats.removed
        );
        Ok(LocalDir::root_owned(dir))
    }
}

impl LocalSource for SessionLocals {
    fn local<'a>(&'a self, req: LocalRequest<'a>) -> SourceFuture<'a, LocalDir> {
        async move { self.sync(req).await.map_err(SourceError) }.boxed()
    }
}

/// Adds `values` under `key`, one value each; if any is not plain ASCII, all are URL-query
/// escaped and `<key>-encoded: 1` says so (fsutil's rule).
fn put(metadata: &mut MetadataMap, key: &'static str, values: &[String]) -> Result<(), String> {
    let encode = values
        .iter()
        .any(|v| !v.bytes().all(|b| (0x20..0x7f).contains(&b)));
    for v in values {
        let text = if encode { query_escape(v) } else { v.clone() };
        let value = AsciiMetadataValue::try_from(text.as_str())
            .map_err(|_| format!("`{key}` value `{v}` cannot be sent as gRPC metadata"))?;
        metadata.append(key, value);
    }
    if encode {
        let encoded_key = match key {
            "include-patterns" => "include-patterns-encoded",
            "exclude-patterns" => "exclude-patterns-encoded",
            "followpaths" => "followpaths-encoded",
            _ => "dir-name-encoded",
        };
        metadata.insert(encoded_key, AsciiMetadataValue::from_static("1"));
    }
    Ok(())
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_values_are_query_escaped_with_a_marker() {
        let mut md = MetadataMap::new();
        put(
            &mut md,
            "exclude-patterns",
            &["a b".to_string(), "é/*".to_string()],
        )
        .unwrap();
        let values: Vec<_> = md
            .get_all("exclude-patterns")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(values, ["a+b", "%C3%A9%2F%2A"]);
        assert_eq!(md.get("exclude-patterns-encoded").unwrap(), "1");
        let mut plain = MetadataMap::new();
        put(&mut plain, "followpaths", &["Dockerfile".to_string()]).unwrap();
        assert!(plain.get("followpaths-encoded").is_none());
    }
}
