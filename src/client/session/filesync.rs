//! `moby.filesync.v1.FileSync/DiffCopy`: the daemon pulls one of the directories the build
//! offers (`context`, `dockerfile`), and we are the fsutil sender.
//!
//! The call's metadata says what to send (`session/filesync/filesync.go`): `dir-name`,
//! `include-patterns`, `exclude-patterns` and `followpaths`, one pattern per value; when any
//! value of a key is not ASCII, all of its values are URL-query-escaped and `<key>-encoded: 1`
//! is added. Owners are sent as 0:0, as buildctl does (`client/solve.go`
//! `prepareSyncedFiles`): a context's uid and gid are this machine's business.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use memobuild_proto::filesync::file_sync_server::FileSync;
use memobuild_proto::fsutil::Packet;
use memobuild_worker::filesync::{self, SendOptions};
use tokio::sync::mpsc;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::client::session::outcome_stream;

/// Packets queued towards the daemon at most; h2 flow control limits the rest.
const QUEUED: usize = 64;

/// The directories the daemon may pull, by `dir-name`.
#[derive(Debug, Clone)]
pub struct FileSyncService {
    dirs: Arc<BTreeMap<String, PathBuf>>,
}

impl FileSyncService {
    /// Offers `dirs`.
    pub fn new(dirs: BTreeMap<String, PathBuf>) -> Self {
        Self {
            dirs: Arc::new(dirs),
        }
    }
}

/// What one DiffCopy call asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncRequest {
    /// `dir-name`.
    pub dir_name: String,
    /// `include-patterns`.
    pub include_patterns: Vec<String>,
    /// `exclude-patterns`.
    pub exclude_patterns: Vec<String>,
    /// `followpaths`.
    pub follow_paths: Vec<String>,
}

impl SyncRequest {
    /// Reads the call's metadata as BuildKit's `decodeOpts` does.
    pub fn from_metadata(md: &MetadataMap) -> Self {
        Self {
            dir_name: values(md, "dir-name")
                .into_iter()
                .next()
                .unwrap_or_default(),
            include_patterns: values(md, "include-patterns"),
            exclude_patterns: values(md, "exclude-patterns"),
            follow_paths: values(md, "followpaths"),
        }
    }
}

/// Every value of `key`, unescaped when `<key>-encoded` says so.
fn values(md: &MetadataMap, key: &str) -> Vec<String> {
    let encoded = md
        .get(format!("{key}-encoded").as_str())
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"));
    md.get_all(key)
        .iter()
        .map(|v| {
            let raw = String::from_utf8_lossy(v.as_bytes());
            if encoded {
                // Go drops a value it cannot unescape (`url.QueryUnescape` error ignored).
                query_unescape(&raw).unwrap_or_default()
            } else {
                raw.into_owned()
            }
        })
        .collect()
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; the result must be UTF-8.
pub fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[tonic::async_trait]
impl FileSync for FileSyncService {
    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<BoxStream<Packet>>, Status> {
        let sync = SyncRequest::from_metadata(request.metadata());
        let Some(dir) = self.dirs.get(&sync.dir_name).cloned() else {
            return Err(Status::not_found(format!(
                "no access allowed to dir {:?}",
                sync.dir_name
            )));
        };
        tracing::debug!(
            dir = %sync.dir_name,
            includes = sync.include_patterns.len(),
            excludes = sync.exclude_patterns.len(),
            follow = sync.follow_paths.len(),
            "sending a local directory"
        );
        let options = SendOptions {
            include_patterns: sync.include_patterns,
            exclude_patterns: sync.exclude_patterns,
            follow_paths: sync.follow_paths,
            reset_owner: true,
            map_stat: None,
        };
        let (tx, rx) = mpsc::channel(QUEUED);
        let incoming = request.into_inner();
        let task = tokio::spawn(async move { filesync::send(&dir, options, incoming, tx).await });
        Ok(Response::new(outcome_stream(rx, task)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn metadata_is_read_as_buildkit_writes_it() {
        let mut md = MetadataMap::new();
        md.insert("dir-name", MetadataValue::from_static("context"));
        md.append("exclude-patterns", MetadataValue::from_static("*.log"));
        md.append("exclude-patterns", MetadataValue::from_static("!keep.log"));
        md.append("followpaths", MetadataValue::from_static("Dockerfile"));
        assert_eq!(
            SyncRequest::from_metadata(&md),
            SyncRequest {
                dir_name: "context".into(),
                include_patterns: vec![],
                exclude_patterns: vec!["*.log".into(), "!keep.log".into()],
                follow_paths: vec!["Dockerfile".into()],
            }
        );
    }

    #[test]
    fn encoded_values_are_unescaped() {
        let mut md = MetadataMap::new();
        md.insert("dir-name", MetadataValue::from_static("context"));
        md.append(
            "include-patterns",
            MetadataValue::from_static("caf%C3%A9%2A"),
        );
        md.append("include-patterns", MetadataValue::from_static("a+b"));
        md.insert("include-patterns-encoded", MetadataValue::from_static("1"));
        // Not marked as encoded: taken as is.
        md.append("followpaths", MetadataValue::from_static("a+b"));
        let r = SyncRequest::from_metadata(&md);
        assert_eq!(r.include_patterns, vec!["café*", "a b"]);
        assert_eq!(r.follow_paths, vec!["a+b"]);
    }

    #[test]
    fn query_unescape_as_go() {
        assert_eq!(query_unescape("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(query_unescape("%zz"), None);
        assert_eq!(query_unescape("%4"), None);
        assert_eq!(query_unescape("%FF"), None, "not UTF-8");
    }
}
