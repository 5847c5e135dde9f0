//! A build context given as a URL (the `context` frontend attribute) instead of the client's
//! `context` directory, as BuildKit's Dockerfile frontend takes it (`dockerui` `DetectContext`):
//!
//! - a git repository (`https://host/repo.git#ref:dir`, `git@…`, `git://…`): fetched by the
//!   daemon into a work tree kept per URL (`crate::gitctx`), `.git` left out of the context;
//! - `http://buildkit-session/…`: what buildx reads from stdin (`docker buildx build -`),
//!   pulled from the client's session through its `Upload` service;
//! - any other `http(s)://` URL: downloaded.
//!
//! A download that is a tar archive (plain, gzip, bzip2, xz or zstd) is unpacked (members
//! kept inside, owners as archived, which a COPY keeps as BuildKit's does) and is the context; anything else is the Dockerfile
//! itself, with an empty context. The result is served under the local names `context` and
//! `dockerfile` by [`ProvidedLocals`], so the rest of the frontend and the solver read it as
//! they read a client's directory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use memobuild_proto::upload::BytesMessage;
use memobuild_proto::upload::upload_client::UploadClient;
use memobuild_worker::StateDir;
use memobuild_worker::caller::LocalDir;
use tokio::io::AsyncWriteExt;
use tonic::Status;

use crate::daemon::session::Sessions;

/// The Upload service's method, as the client lists it.
const UPLOAD_PULL: &str = "/moby.upload.v1.Upload/Pull";

/// The host buildx's uploads are named under.
const SESSION_HOST: &str = "buildkit-session";

/// How long to wait for the client's session to connect.
const SESSION_WAIT: Duration = Duration::from_secs(10);

/// Directories the daemon provides for a build's local names in place of the client's.
#[derive(Default)]
pub struct ProvidedLocals {
    dirs: Mutex<HashMap<String, LocalDir>>,
    /// What keeps those directories valid (a git work tree's lock, a temporary directory).
    held: Mutex<Vec<Box<dyn Send>>>,
}

impl std::fmt::Debug for ProvidedLocals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dirs = self.dirs.lock().map(|d| d.clone()).unwrap_or_default();
        f.debug_struct("ProvidedLocals")
            .field("dirs", &dirs)
            .finish()
    }
}

impl ProvidedLocals {
    /// The directory provided for `name`, if any.
    pub fn get(&self, name: &str) -> Option<LocalDir> {
        self.dirs.lock().ok()?.get(name).cloned()
    }

    fn provide(&self, names: &[&str], dir: LocalDir, hold: Box<dyn Send>) {
        if let Ok(mut dirs) = self.dirs.lock() {
            for n in names {
                dirs.insert((*n).to_owned(), dir.clone());
            }
        }
        if let Ok(mut held) = self.held.lock() {
            held.push(hold);
        }
    }

    /// Lets go of every directory (the build is over): locks are released, temporary copies
    /// removed.
    pub fn release(&self) {
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.clear();
        }
        if let Ok(mut held) = self.held.lock() {
            held.clear();
        }
    }
}

/// What a fetched context is.
pub struct Fetched {
    /// The download was no archive: it is the Dockerfile, under this name in the context.
    pub dockerfile_name: Option<String>,
    /// The context is a git work tree's root, whose `.git` is no part of it.
    pub git_root: bool,
}

/// Fetches the context `url` for the build of session `session_id` and provides it as the
/// locals `context` and `dockerfile` in `provided`.
pub async fn fetch(
    url: &str,
    sessions: &Arc<Sessions>,
    session_id: &str,
    state: &StateDir,
    provided: &ProvidedLocals,
) -> Result<Fetched, Status> {
    const NAMES: [&str; 2] = ["context", "dockerfile"];
    if let Some(git) = crate::gitctx::GitContext::parse(url) {
        let state = state.clone();
        let checkout =
            tokio::task::spawn_blocking(move || crate::gitctx::checkout(&git, &state, None))
                .await
                .map_err(|e| Status::internal(format!("the git checkout task failed: {e}")))?
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let git_root = checkout.at_root;
        // A checkout's files are root's, as a git source's are.
        let dir = LocalDir::root_owned(checkout.dir.clone());
        provided.provide(&NAMES, dir, Box::new(checkout));
        return Ok(Fetched {
            dockerfile_name: None,
            git_root,
        });
    }

    let tmp = state.tmp();
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Status::internal(format!("`{}`: {e}", tmp.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix("remote-context-")
        .tempdir_in(&tmp)
        .map_err(|e| Status::internal(format!("`{}`: {e}", tmp.display())))?;
    let download = scratch.path().join("download");
    let shown = crate::gitctx::redact(url);
    if let Some(path) = url.strip_prefix(&format!("http://{SESSION_HOST}")) {
        pull_upload(path, sessions, session_id, &download).await?;
    } else {
        get(url, &download)
            .await
            .map_err(|e| Status::unavailable(format!("downloading context `{shown}`: {e}")))?;
    }

    let dir = scratch.path().join("context");
    let unpacked = {
        let (download, dir) = (download.clone(), dir.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            std::fs::create_dir_all(&dir)?;
            if !memobuild_worker::fsops::is_archive(&download)? {
                return Ok(false);
            }
            memobuild_worker::fsops::unpack_archive(&download, &dir, &dir, None)?;
            Ok(true)
        })
        .await
        .map_err(|e| Status::internal(format!("the unpacking task failed: {e}")))?
        .map_err(|e| Status::invalid_argument(format!("unpacking context `{shown}`: {e}")))?
    };
    let dockerfile_name = if unpacked {
        None
    } else {
        // As BuildKit: the download is the Dockerfile, named `context`.
        std::fs::rename(&download, dir.join("context"))
            .map_err(|e| Status::internal(format!("`{}`: {e}", dir.display())))?;
        Some("context".to_owned())
    };
    // An archive's members keep their owners, as BuildKit unpacks them.
    let dir = LocalDir {
        path: dir,
        keeps_owners: unpacked,
    };
    provided.provide(&NAMES, dir, Box::new(scratch));
    Ok(Fetched {
        dockerfile_name,
        git_root: false,
    })
}

/// Pulls the upload at `path` (of `http://buildkit-session/…`) from the client's session into
/// `dest`.
async fn pull_upload(
    path: &str,
    sessions: &Arc<Sessions>,
    session_id: &str,
    dest: &Path,
) -> Result<(), Status> {
    let session = sessions
        .get(session_id, SESSION_WAIT)
        .await
        .ok_or_else(|| Status::unavailable(format!("session `{session_id}` is not connected")))?;
    if !session.supports(UPLOAD_PULL) {
        return Err(Status::failed_precondition(
            session.unsupported(UPLOAD_PULL),
        ));
    }
    let mut request = tonic::Request::new(futures::stream::empty::<BytesMessage>());
    let md = request.metadata_mut();
    for (k, v) in [("urlpath", path), ("urlhost", SESSION_HOST)] {
        let v = v
            .parse()
            .map_err(|_| Status::invalid_argument(format!("upload path `{path}`")))?;
        md.insert(k, v);
    }
    let failed = |e: String| Status::unavailable(format!("receiving the uploaded context: {e}"));
    let mut stream = UploadClient::new(session.channel.clone())
        .pull(request)
        .await
        .map_err(|e| failed(e.message().to_owned()))?
        .into_inner();
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| failed(e.to_string()))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| failed(e.message().to_owned()))?;
        file.write_all(&chunk.data)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    file.flush().await.map_err(|e| failed(e.to_string()))
}

/// Downloads `url` into `dest`.
async fn get(url: &str, dest: &Path) -> anyhow::Result<()> {
    let client = memobuild_worker::tls::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()?;
    let response = client.get(url).send().await?.error_for_status()?;
    let mut file = tokio::fs::File::create(dest).await?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    Ok(())
}
