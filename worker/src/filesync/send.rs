//! The sender: lists a directory as STATs and serves the receiver's requests for file content.
//!
//! The walk runs on a blocking thread and pushes STATs straight into the outgoing channel,
//! while this task keeps reading REQs, so a receiver that requests files before the listing
//! ends is served without waiting for it (and cannot deadlock the two sides). Files are read
//! on blocking threads, a few at a time, and cut into [`CHUNK_SIZE`] DATA packets.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, TryStreamExt};
use memobuild_proto::fsutil::Packet;
use tokio::sync::mpsc;

use crate::filesync::transport::{self, CHUNK_SIZE, Message};
use crate::filesync::walk::{Filter, Walker};
use crate::filesync::{FilesyncError, Stat};

/// How many files are read and sent at once (fsutil's sender runs four).
const FILES_IN_FLIGHT: usize = 4;

/// A hook that sees (and may change) every STAT before it is sent; `false` leaves the entry
/// out, and with a directory everything below it.
pub type StatMap = Arc<dyn Fn(&mut Stat) -> bool + Send + Sync>;

/// What to send of a directory, as the metadata of BuildKit's `FileSync.DiffCopy` call says.
#[derive(Clone, Default)]
pub struct SendOptions {
    /// Only paths matching one of these (Docker pattern syntax), and the directories leading to
    /// them, are sent; empty means everything.
    pub include_patterns: Vec<String>,
    /// Paths matching these (`.dockerignore` syntax, `!` re-includes) are not sent.
    pub exclude_patterns: Vec<String>,
    /// Paths to send with the symbolic links on their way resolved; they are added to the
    /// include patterns (see `crate::followpaths`).
    pub follow_paths: Vec<String>,
    /// Send uid and gid 0 for every entry, as buildctl and buildx do for local sources.
    pub reset_owner: bool,
    /// Applied to each STAT after `reset_owner`.
    pub map_stat: Option<StatMap>,
}

impl fmt::Debug for SendOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendOptions")
            .field("include_patterns", &self.include_patterns)
            .field("exclude_patterns", &self.exclude_patterns)
            .field("follow_paths", &self.follow_paths)
            .field("reset_owner", &self.reset_owner)
            .field("map_stat", &self.map_stat.is_some())
            .finish()
    }
}

/// What a send did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendStats {
    /// STATs sent (the listing's entries).
    pub entries: u64,
    /// Files whose content was requested and sent.
    pub files_sent: u64,
    /// Content bytes sent.
    pub bytes_sent: u64,
}

/// Regular files of the listing not requested yet: id → (host path, declared size).
type Requestable = Arc<Mutex<HashMap<u32, (PathBuf, u64)>>>;

/// Stops the walk and the file readers when `send` returns or is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sends the tree at `dir` to a receiver: the STAT listing, then the content of each file the
/// receiver requests, until the receiver's FIN (answered with FIN). An ERR from the receiver
/// aborts; a failure here is reported to it as ERR before returning.
pub async fn send<S, E>(
    dir: &Path,
    options: SendOptions,
    mut incoming: S,
    outgoing: mpsc::Sender<Packet>,
) -> Result<SendStats, FilesyncError>
where
    S: Stream<Item = Result<Packet, E>> + Unpin,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancelled.clone());
    let requestable: Requestable = Arc::default();
    let bytes_sent = AtomicU64::new(0);
    let entries = Arc::new(AtomicU64::new(0));
    let mut files_sent = 0;

    let mut walk = tokio::task::spawn_blocking({
        let (dir, requestable, outgoing, cancelled, entries) = (
            dir.to_path_buf(),
            requestable.clone(),
            outgoing.clone(),
            cancelled.clone(),
            entries.clone(),
        );
        move || {
            list(
                &dir,
                &options,
                &requestable,
                &outgoing,
                &cancelled,
                &entries,
            )
        }
    });
    let mut walked = false;

    let (queue, queued) = mpsc::unbounded_channel::<(u32, PathBuf, u64)>();
    let serve = serve_files(queued, &outgoing, &cancelled, &bytes_sent);
    tokio::pin!(serve);

    let result = loop {
        tokio::select! {
            joined = &mut walk, if !walked => {
                walked = true;
                if let Err(e) = joined.unwrap_or(Err(FilesyncError::TaskFailed("sender walk"))) {
                    break Err(e);
                }
            }
            served = &mut serve => {
                // It only returns early on failure: `queue` is still alive.
                break served.and(Err(FilesyncError::TaskFailed("file sender")));
            }
            message = transport::recv(&mut incoming) => match message {
                Ok(Some(Message::Req(id))) => {
                    let file = requestable.lock().ok().and_then(|mut m| m.remove(&id));
                    let Some((path, size)) = file else {
                        break Err(FilesyncError::InvalidRequest { id });
                    };
                    files_sent += 1;
                    // Cannot fail: `queued` lives in `serve`, which has not returned.
                    let _ = queue.send((id, path, size));
                }
                Ok(Some(Message::Fin)) => break transport::send(&outgoing, Message::Fin).await,
                Ok(Some(Message::Err(msg))) => break Err(FilesyncError::Peer(msg)),
                Ok(Some(other)) => {
                    break Err(FilesyncError::UnexpectedPacket {
                        packet: other.name(),
                        context: "from a receiver",
                    });
                }
                Ok(None) => break Err(FilesyncError::UnexpectedEof("before its FIN")),
                Err(e) => break Err(e),
            },
        }
    };
    if let Err(e) = &result {
        transport::report_error(&outgoing, e).await;
    }
    result.map(|()| SendStats {
        entries: entries.load(Ordering::Relaxed),
        files_sent,
        bytes_sent: bytes_sent.load(Ordering::Relaxed),
    })
}

/// Walks `dir` and sends its listing, counting the entries in `entries`. Blocking.
fn list(
    dir: &Path,
    options: &SendOptions,
    requestable: &Requestable,
    outgoing: &mpsc::Sender<Packet>,
    cancelled: &AtomicBool,
    entries: &AtomicU64,
) -> Result<(), FilesyncError> {
    let filter = Filter::new(dir, options)?;
    let mut next_id: u32 = 0;
    let mut emit = |stat: Stat, content: Option<PathBuf>| {
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        entries.fetch_add(1, Ordering::Relaxed);
        // Registered before the STAT leaves, so a REQ for it always finds it.
        if let Some(path) = content
            && let Ok(mut files) = requestable.lock()
        {
            files.insert(id, (path, stat.size.max(0) as u64));
        }
        transport::blocking_send(outgoing, Message::Stat(Some(stat)))
    };
    Walker::new(dir, &filter, options, cancelled, &mut emit).run()?;
    transport::blocking_send(outgoing, Message::Stat(None))
}

/// Sends the queued files, a few at a time, until the queue closes or one fails.
async fn serve_files(
    mut queued: mpsc::UnboundedReceiver<(u32, PathBuf, u64)>,
    outgoing: &mpsc::Sender<Packet>,
    cancelled: &Arc<AtomicBool>,
    bytes_sent: &AtomicU64,
) -> Result<(), FilesyncError> {
    futures::stream::poll_fn(|cx| queued.poll_recv(cx))
        .map(Ok)
        .try_for_each_concurrent(FILES_IN_FLIGHT, |(id, path, size)| {
            let (outgoing, cancelled) = (outgoing.clone(), cancelled.clone());
            async move {
                let sent = tokio::task::spawn_blocking(move || {
                    send_file(id, &path, size, &outgoing, &cancelled)
                })
                .await
                .unwrap_or(Err(FilesyncError::TaskFailed("file sender")))?;
                bytes_sent.fetch_add(sent, Ordering::Relaxed);
                Ok(())
            }
        })
        .await
}

/// Sends one file's content as DATA chunks and the empty DATA that ends it; returns the bytes
/// sent. Blocking.
///
/// At most the size the STAT declared is sent, since the receiver rejects more. As in fsutil,
/// a file that can no longer be opened (removed since the walk) is sent empty; one that is no
/// longer a regular file is not read (no following a symlink, no blocking on a FIFO swapped in).
fn send_file(
    id: u32,
    path: &Path,
    size: u64,
    outgoing: &mpsc::Sender<Packet>,
    cancelled: &AtomicBool,
) -> Result<u64, FilesyncError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()
        .filter(|f| f.metadata().is_ok_and(|md| md.is_file()));
    let mut sent = 0u64;
    if let Some(file) = file {
        let mut reader = file.take(size);
        loop {
            if cancelled.load(Ordering::Relaxed) {
                return Err(FilesyncError::ChannelClosed);
            }
            let mut chunk = vec![0; CHUNK_SIZE];
            let n = match reader.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FilesyncError::io("reading", path, e)),
            };
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            sent += n as u64;
            transport::blocking_send(outgoing, Message::Data(id, chunk))?;
        }
    } else {
        tracing::debug!(path = %path.display(), "file vanished before it was sent; sending it empty");
    }
    transport::blocking_send(outgoing, Message::Data(id, Vec::new()))?;
    Ok(sent)
}
