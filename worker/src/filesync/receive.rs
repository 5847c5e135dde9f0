//! The receiver: writes a sender's tree into a destination directory, incrementally.
//!
//! This task only moves packets: STATs and DATA go to a blocking thread that owns the disk
//! side ([`crate::filesync::write`]), which sends its REQs itself. Once that side has every
//! file, this one sends FIN and waits for the sender's FIN (or the end of the stream).

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use memobuild_proto::fsutil::Packet;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::filesync::transport::{self, Message};
use crate::filesync::write::{DiskWriter, Event};
use crate::filesync::{FilesyncError, Stat};

/// Events queued for the disk side at most; the sender is throttled beyond that.
const EVENTS_QUEUED: usize = 64;

/// A hook that sees (and may change) every received STAT before it is compared and written;
/// `false` leaves the entry (and, for a directory, everything below it) as it is on disk,
/// neither written nor removed. It may change ownership, permissions, times and xattrs; the
/// path, size, link target and file type are kept as received.
pub type StatFilter = Arc<dyn Fn(&mut Stat) -> bool + Send + Sync>;

/// A progress callback, called with the running totals after every STAT and DATA packet, on
/// the receiver's blocking disk thread (so it should be cheap and must not block on async work).
pub type ProgressFn = Arc<dyn Fn(&ReceiveStats) + Send + Sync>;

/// How a receiver writes.
#[derive(Clone, Default)]
pub struct ReceiveOptions {
    /// Give entries the uid/gid of their STAT (needs root unless they are ours). When false,
    /// entries belong to the receiving process and ownership is not compared, as BuildKit's
    /// client writes local exports as the invoking user.
    pub chown: bool,
    /// Create FIFOs and device nodes (only when running as root). Otherwise, and always for
    /// sockets, such entries are skipped: not created, counted in
    /// [`ReceiveStats::skipped`], and an old entry at their path is removed.
    pub special_files: bool,
    /// Keep what the destination holds beyond the listing instead of removing it, as
    /// fsutil's `ReceiveOpt.Merge` (BuildKit's client writes `type=local` exports this way
    /// unless the output says `mode=delete`).
    pub merge: bool,
    /// See [`StatFilter`].
    pub filter: Option<StatFilter>,
    /// See [`ProgressFn`].
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for ReceiveOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveOptions")
            .field("chown", &self.chown)
            .field("special_files", &self.special_files)
            .field("merge", &self.merge)
            .field("filter", &self.filter.is_some())
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a receive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Entries in the listing.
    pub entries: u64,
    /// Files whose content was requested (those new or changed, and not empty).
    pub files_requested: u64,
    /// Content bytes received.
    pub bytes_received: u64,
    /// Bytes of every packet received, encoded (what BuildKit shows as `transferring NAME:`).
    pub wire_bytes: u64,
    /// Entries removed from the destination because the listing no longer has them.
    pub removed: u64,
    /// Special files not created (see [`ReceiveOptions::special_files`]).
    pub skipped: u64,
}

/// Receives a tree from a sender into `dest` (created if missing), which may hold an earlier
/// transfer of the same tree: only what changed is requested and written, and what the listing
/// no longer has is removed. Nothing is ever written outside `dest`, whatever the sender sends.
/// A failure is reported to the sender as ERR before returning.
pub async fn receive<S, E>(
    dest: &Path,
    options: ReceiveOptions,
    incoming: S,
    outgoing: mpsc::Sender<Packet>,
) -> Result<ReceiveStats, FilesyncError>
where
    S: Stream<Item = Result<Packet, E>> + Unpin,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let wire = Arc::new(AtomicU64::new(0));
    let mut incoming = incoming.inspect({
        let wire = wire.clone();
        move |p| {
            if let Ok(p) = p {
                wire.fetch_add(p.encoded_len() as u64, Ordering::Relaxed);
            }
        }
    });
    let (events, queued) = mpsc::channel(EVENTS_QUEUED);
    let mut writer = tokio::task::spawn_blocking({
        let (dest, outgoing, wire) = (dest.to_path_buf(), outgoing.clone(), wire.clone());
        move || write(&dest, options, queued, outgoing, wire)
    });
    let mut events = Some(events);

    // `Ok` once the disk side is done (with its result); `Err` if this side stops first.
    let outcome = loop {
        tokio::select! {
            joined = &mut writer => {
                break Ok(joined.unwrap_or(Err(FilesyncError::TaskFailed("receiver disk"))));
            }
            message = transport::recv(&mut incoming), if events.is_some() => {
                let event = match message {
                    Ok(Some(Message::Stat(Some(stat)))) => Event::Stat(stat),
                    Ok(Some(Message::Stat(None))) => Event::EndOfListing,
                    Ok(Some(Message::Data(id, data))) => Event::Data(id, data),
                    Ok(Some(Message::Err(msg))) => break Err(FilesyncError::Peer(msg)),
                    Ok(Some(other)) => {
                        break Err(FilesyncError::UnexpectedPacket {
                            packet: other.name(),
                            context: "before the receiver finished",
                        });
                    }
                    Ok(None) => {
                        // The disk side finishes what it has and then ends: complete if the
                        // sender did not wait for our FIN, with an error otherwise (its own
                        // if the listing was bad, so that is the one reported).
                        events = None;
                        continue;
                    }
                    Err(e) => break Err(e),
                };
                let sent = match &events {
                    Some(tx) => tx.send(event).await.is_ok(),
                    None => false,
                };
                if !sent {
                    // The disk side stopped, with the error `writer` yields next.
                    events = None;
                }
            }
        }
    };
    let result = match outcome {
        Ok(Ok(mut stats)) => finish(&mut incoming, &outgoing).await.map(|()| {
            stats.wire_bytes = wire.load(Ordering::Relaxed);
            stats
        }),
        Ok(Err(e)) => Err(e),
        Err(e) => {
            // Let the disk side remove its temporary files before we return.
            drop(events);
            let _ = writer.await;
            Err(e)
        }
    };
    if let Err(e) = &result {
        transport::report_error(&outgoing, e).await;
    }
    result
}

/// The disk side: applies events until every file is in place. Blocking.
fn write(
    dest: &Path,
    options: ReceiveOptions,
    mut queued: mpsc::Receiver<Event>,
    outgoing: mpsc::Sender<Packet>,
    wire: Arc<AtomicU64>,
) -> Result<ReceiveStats, FilesyncError> {
    let mut writer = DiskWriter::open(dest, options, outgoing)?.counting_wire(wire);
    while !writer.is_complete() {
        let step = match queued.blocking_recv() {
            Some(event) => writer.handle(event),
            // The stream ended (or the protocol side gave up, and reports its own error).
            None => Err(FilesyncError::UnexpectedEof(
                "before the transfer was complete",
            )),
        };
        if let Err(e) = step {
            writer.abort();
            return Err(e);
        }
    }
    writer.finish()
}

/// Sends FIN and waits for the sender's FIN or the end of its stream.
async fn finish<S, E>(
    incoming: &mut S,
    outgoing: &mpsc::Sender<Packet>,
) -> Result<(), FilesyncError>
where
    S: Stream<Item = Result<Packet, E>> + Unpin,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    transport::send(outgoing, Message::Fin).await?;
    loop {
        match transport::recv(incoming).await? {
            None | Some(Message::Fin) => return Ok(()),
            Some(Message::Err(msg)) => return Err(FilesyncError::Peer(msg)),
            // Anything else after our FIN is moot (fsutil ignores it too).
            Some(_) => {}
        }
    }
}
