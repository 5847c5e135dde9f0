//! Packets in and out, independent of the RPC carrying them: incoming packets are any
//! `Stream` of `Result<Packet, E>`, outgoing ones go into an mpsc channel the caller drains.

use std::error::Error as StdError;

use futures::{Stream, StreamExt};
use memobuild_proto::fsutil::packet::PacketType;
use memobuild_proto::fsutil::{Packet, Stat};
use tokio::sync::mpsc;

use crate::filesync::FilesyncError;

/// Size of the DATA chunks a sender cuts files into: fsutil's buffer size, well under the
/// 4 MiB a default gRPC server accepts per message.
pub const CHUNK_SIZE: usize = 32 * 1024;

/// A packet, decoded by type.
#[derive(Debug, Clone)]
pub(crate) enum Message {
    /// A STAT; `None` ends the listing.
    Stat(Option<Stat>),
    /// A REQ for an id.
    Req(u32),
    /// A DATA chunk; empty ends the file.
    Data(u32, Vec<u8>),
    /// FIN.
    Fin,
    /// ERR with its message.
    Err(String),
}

impl Message {
    /// The packet type's name, for errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::Stat(_) => "STAT",
            Message::Req(_) => "REQ",
            Message::Data(..) => "DATA",
            Message::Fin => "FIN",
            Message::Err(_) => "ERR",
        }
    }

    pub(crate) fn into_packet(self) -> Packet {
        let (kind, id, stat, data) = match self {
            Message::Stat(stat) => (PacketType::PacketStat, 0, stat, Vec::new()),
            Message::Req(id) => (PacketType::PacketReq, id, None, Vec::new()),
            Message::Data(id, data) => (PacketType::PacketData, id, None, data),
            Message::Fin => (PacketType::PacketFin, 0, None, Vec::new()),
            Message::Err(msg) => (PacketType::PacketErr, 0, None, msg.into_bytes()),
        };
        Packet {
            r#type: kind as i32,
            stat,
            id,
            data,
        }
    }

    fn from_packet(p: Packet) -> Result<Self, FilesyncError> {
        Ok(match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketStat) => Message::Stat(p.stat),
            Ok(PacketType::PacketReq) => Message::Req(p.id),
            Ok(PacketType::PacketData) => Message::Data(p.id, p.data),
            Ok(PacketType::PacketFin) => Message::Fin,
            Ok(PacketType::PacketErr) => {
                Message::Err(String::from_utf8_lossy(&p.data).into_owned())
            }
            Err(_) => {
                return Err(FilesyncError::UnexpectedPacket {
                    packet: "unknown",
                    context: "(type not in the protocol)",
                });
            }
        })
    }
}

/// The next message, `None` at the end of the stream.
pub(crate) async fn recv<S, E>(incoming: &mut S) -> Result<Option<Message>, FilesyncError>
where
    S: Stream<Item = Result<Packet, E>> + Unpin,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    match incoming.next().await {
        None => Ok(None),
        Some(Ok(p)) => Message::from_packet(p).map(Some),
        Some(Err(e)) => Err(FilesyncError::Transport(e.into())),
    }
}

pub(crate) async fn send(out: &mpsc::Sender<Packet>, m: Message) -> Result<(), FilesyncError> {
    out.send(m.into_packet())
        .await
        .map_err(|_| FilesyncError::ChannelClosed)
}

/// [`send`] from a blocking thread.
pub(crate) fn blocking_send(out: &mpsc::Sender<Packet>, m: Message) -> Result<(), FilesyncError> {
    out.blocking_send(m.into_packet())
        .map_err(|_| FilesyncError::ChannelClosed)
}

/// Tells the peer why we stop, unless the peer stopped first; best effort, since the channel
/// may be what failed.
pub(crate) async fn report_error(out: &mpsc::Sender<Packet>, err: &FilesyncError) {
    if matches!(err, FilesyncError::Peer(_) | FilesyncError::ChannelClosed) {
        return;
    }
    let _ = send(out, Message::Err(error_chain(err))).await;
}

/// An error and its causes on one line, as an ERR packet carries it.
fn error_chain(err: &dyn StdError) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_packets() {
        let cases = [
            Message::Stat(None),
            Message::Req(7),
            Message::Data(3, b"abc".to_vec()),
            Message::Fin,
            Message::Err("boom".into()),
        ];
        for m in cases {
            let before = format!("{m:?}");
            let back = Message::from_packet(m.into_packet()).unwrap();
            assert_eq!(format!("{back:?}"), before);
        }
        let bogus = Packet {
            r#type: 9,
            ..Packet::default()
        };
        assert!(Message::from_packet(bogus).is_err());
    }

    #[test]
    fn wire_values_match_fsutil() {
        // PACKET_STAT=0, REQ=1, DATA=2, FIN=3, ERR=4 (fsutil/types/wire.proto).
        assert_eq!(Message::Stat(None).into_packet().r#type, 0);
        assert_eq!(Message::Req(1).into_packet().r#type, 1);
        assert_eq!(Message::Data(1, vec![]).into_packet().r#type, 2);
        assert_eq!(Message::Fin.into_packet().r#type, 3);
        assert_eq!(Message::Err(String::new()).into_packet().r#type, 4);
    }
}
