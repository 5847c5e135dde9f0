//! fsutil's file-transfer protocol, the payload of BuildKit's `FileSync.DiffCopy` (a client
//! sends a local directory to the daemon) and of the local exporter's `FileSend.DiffCopy` (the
//! daemon sends a result to the client).
//!
//! The side that has the files is the *sender* ([`send`]), the side that writes them the
//! *receiver* ([`receive`]):
//!
//! ```text
//! sender                                   receiver
//!   STAT a, STAT a/f, STAT b, …, STAT ∅  ─>  validate, compare with dest, remove extras
//!                                      <─  REQ id        (only files that differ)
//!   DATA id chunk…, DATA id ∅          ─>  temp file, renamed into place when complete
//!                                      <─  FIN
//!   FIN                                ─>
//! ```
//!
//! A STAT's id is its index in the STAT sequence (every entry counts); `Stat.mode` holds Go's
//! `os.FileMode` bits ([`mode`]); paths are relative, `/`-separated and ordered by
//! [`compare_path`]; either side aborts with ERR. Both functions are transport-agnostic:
//! packets come in through any `Stream` of `Result<Packet, E>` (a tonic `Streaming<Packet>`
//! fits) and go out through a `tokio::sync::mpsc::Sender<Packet>` that the caller drains into
//! its call. File system work runs on blocking threads, never on the runtime's.
//!
//! # Sender
//!
//! Walks depth-first, each directory's entries in bytewise order, the root itself not sent.
//! Include/exclude patterns and follow paths select entries as fsutil's `filterFS` does
//! (a directory that is not selected itself is still walked, and sent, when something below it
//! may be). A file met again by inode is sent as a hard link (`linkname` = its first path, size
//! 0). Sockets are left out (fsutil sends them as empty files); FIFOs and devices are listed
//! with their mode and device numbers and never opened.
//!
//! # Receiver
//!
//! * **Confinement.** The listing must be a clean pre-order walk (relative paths, no `..`,
//!   strictly increasing [`compare_path`] order, parents sent as directories first, hard links
//!   only to regular files sent earlier), and every file system call is relative to an open
//!   directory of the destination with `O_NOFOLLOW`: neither the sender nor what an earlier
//!   transfer left in `dest` (a symlink to `/`, say) can make it write outside `dest`.
//! * **Incremental.** A regular file whose type, size and mtime (ns) match the disk is not
//!   requested; differing mode, owner or xattrs are fixed in place. Anything the listing does
//!   not name is removed, unless [`ReceiveOptions::merge`] keeps it. New content lands in a temporary file renamed into place once
//!   complete, so a failed transfer leaves old or new files, never partial ones, and the next
//!   transfer repairs the rest (stray temporary files included).
//! * **Ownership.** With [`ReceiveOptions::chown`] entries get the STAT's uid/gid (and
//!   ownership counts as a difference); without it they belong to the receiving process and
//!   ownership is ignored, as BuildKit's client writes local exports.
//! * **Special files.** FIFOs and device nodes are made with `mknod` only when running as root
//!   and [`ReceiveOptions::special_files`] is set; otherwise they are skipped (counted in
//!   [`ReceiveStats::skipped`], an old entry at their path removed), as sockets always are.
//!   Their content is never requested and they are never opened.
//! * **Metadata.** Modes including setuid/setgid/sticky, mtimes (and atimes, set to the mtime,
//!   as fsutil does) and xattrs are applied; directory modes and mtimes last, deepest first.
//!   xattrs the receiving side cannot hold (unsupported, privileged without root) are skipped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), memobuild_worker::filesync::FilesyncError> {
//! use memobuild_worker::filesync::{self, ReceiveOptions, SendOptions};
//! use futures::StreamExt;
//!
//! let (to_receiver, rx1) = tokio::sync::mpsc::channel(64);
//! let (to_sender, rx2) = tokio::sync::mpsc::channel(64);
//! let as_stream = |mut rx: tokio::sync::mpsc::Receiver<_>| {
//!     futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::convert::Infallible>)
//! };
//! let options = SendOptions { reset_owner: true, ..SendOptions::default() };
//! let (sent, received) = tokio::join!(
//!     filesync::send("src".as_ref(), options, as_stream(rx2), to_receiver),
//!     filesync::receive("dest".as_ref(), ReceiveOptions::default(), as_stream(rx1), to_sender),
//! );
//! println!("{:?} {:?}", sent?, received?);
//! # Ok(()) }
//! ```

mod apply;
mod disk;
mod error;
pub mod mode;
mod receive;
mod send;
mod transport;
mod validate;
mod walk;
mod write;

#[cfg(test)]
mod tests;

pub use memobuild_proto::fsutil::{Packet, Stat};

pub use crate::filesync::error::FilesyncError;
pub use crate::filesync::receive::{ProgressFn, ReceiveOptions, ReceiveStats, StatFilter, receive};
pub use crate::filesync::send::{SendOptions, SendStats, StatMap, send};
pub use crate::filesync::transport::CHUNK_SIZE;
pub use crate::filesync::validate::compare_path;
