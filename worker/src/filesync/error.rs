//! The errors of a transfer, on either side.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;

use crate::patterns::PatternError;

/// Errors of a file transfer, on either side.
#[derive(Debug, thiserror::Error)]
pub enum FilesyncError {
    /// A file system operation failed.
    #[error("{op} `{path}`: {source}")]
    Io {
        /// What was being done (`reading`, `creating`, …).
        op: &'static str,
        /// The path, relative to the transferred directory where it is one.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An include or exclude pattern does not compile.
    #[error("invalid {which} pattern")]
    Pattern {
        /// `include` or `exclude`.
        which: &'static str,
        /// The cause.
        source: PatternError,
    },
    /// A sender found a name it cannot put in a protobuf string.
    #[error("`{path}`: file name is not UTF-8")]
    NonUtf8Path {
        /// The host path.
        path: PathBuf,
    },
    /// A STAT's path is not relative, clean and free of `..`.
    #[error("stat {id}: invalid path `{path}`: {reason}")]
    InvalidPath {
        /// The STAT's id.
        id: u32,
        /// The path as received.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A STAT does not come after the previous one in [`compare_path`](crate::filesync::compare_path) order, or its parent
    /// directory was not sent (or was not a directory).
    #[error("stat {id}: `{path}` is out of order or has no parent directory before it")]
    OutOfOrder {
        /// The STAT's id.
        id: u32,
        /// The path as received.
        path: String,
    },
    /// A STAT's mode names no file type, or its size is negative.
    #[error("stat {id}: `{path}` has an invalid {field}")]
    InvalidStat {
        /// The STAT's id.
        id: u32,
        /// The path as received.
        path: String,
        /// `mode` or `size`.
        field: &'static str,
    },
    /// A hard link names a path that is not a regular file sent earlier.
    #[error(
        "stat {id}: hard link `{path}` to `{target}`, which is not a regular file sent before it"
    )]
    HardLinkTarget {
        /// The STAT's id.
        id: u32,
        /// The link's path.
        path: String,
        /// Its `linkname`.
        target: String,
    },
    /// DATA arrived for an id the receiver has not requested (or has finished).
    #[error("data for id {id}, which was not requested")]
    UnrequestedData {
        /// The DATA's id.
        id: u32,
    },
    /// More DATA arrived for a file than its STAT declared.
    #[error("data for `{path}` (id {id}) exceeds its declared size of {size} bytes")]
    DataPastSize {
        /// The file's id.
        id: u32,
        /// Its path.
        path: String,
        /// The size its STAT declared.
        size: u64,
    },
    /// The receiver requested an id that is not a regular file of the listing, or twice.
    #[error("request for id {id}, which is not a file to send")]
    InvalidRequest {
        /// The REQ's id.
        id: u32,
    },
    /// A packet arrived where the protocol does not allow it.
    #[error("unexpected {packet} packet {context}")]
    UnexpectedPacket {
        /// The packet's type.
        packet: &'static str,
        /// Where it arrived.
        context: &'static str,
    },
    /// The peer aborted with an ERR packet.
    #[error("error from the peer: {0}")]
    Peer(String),
    /// Reading from the incoming stream failed.
    #[error("receiving a packet")]
    Transport(#[source] Box<dyn StdError + Send + Sync>),
    /// The incoming stream ended before the transfer was complete.
    #[error("the peer closed the stream {0}")]
    UnexpectedEof(&'static str),
    /// The outgoing channel was closed by its reader.
    #[error("the outgoing packet channel is closed")]
    ChannelClosed,
    /// A blocking task of the transfer panicked or was cancelled.
    #[error("the {0} task did not finish")]
    TaskFailed(&'static str),
}

impl FilesyncError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FilesyncError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
