//! yamux frames: the 12-byte header (version, type, flags, stream ID, length),
//! its constants, and [`MuxError`], every way a peer can break the protocol.

use bytes::{BufMut, BytesMut};

use crate::protocol;

/// Length of a frame header.
pub(crate) const HEADER_LEN: usize = 12;
/// The only protocol version.
pub(super) const VERSION: u8 = 0;

/// Frame types.
pub(crate) const TYPE_DATA: u8 = 0;
pub(crate) const TYPE_WINDOW_UPDATE: u8 = 1;
pub(crate) const TYPE_PING: u8 = 2;
pub(crate) const TYPE_GO_AWAY: u8 = 3;

/// Flags.
pub(crate) const SYN: u16 = 1;
pub(crate) const ACK: u16 = 2;
pub(crate) const FIN: u16 = 4;
pub(crate) const RST: u16 = 8;

/// Go-away codes.
pub const GO_AWAY_NORMAL: u32 = 0;
/// Go-away code: the peer broke the protocol.
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;

/// Largest frame body accepted.
pub(super) const MAX_FRAME_BODY: u32 = protocol::MAX_MESSAGE as u32;
/// Answers the peer asked for (pongs, resets of refused streams) that may wait
/// while the WebSocket takes nothing: a peer that sends more such requests
/// without reading is flooding us, and the session ends.
pub(super) const MAX_ANSWERS_QUEUED: usize = 64 * 1024;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u8,
    pub(crate) ty: u8,
    pub(crate) flags: u16,
    pub(crate) id: u32,
    /// Payload length (data), window increment, ping value or go-away code.
    pub(crate) len: u32,
}

impl Header {
    /// The header at the start of `buf`, once all of it is there.
    pub(crate) fn decode(buf: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            version: b[0],
            ty: b[1],
            flags: u16::from_be_bytes([b[2], b[3]]),
            id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

pub(crate) fn put_header(out: &mut BytesMut, ty: u8, flags: u16, id: u32, len: u32) {
    if out.capacity() - out.len() < HEADER_LEN {
        // Room for a round's small frames at once, rather than growing by steps.
        out.reserve(4096);
    }
    out.put_u8(VERSION);
    out.put_u8(ty);
    out.put_u16(flags);
    out.put_u32(id);
    out.put_u32(len);
}

/// How a peer broke the yamux protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// A version other than 0.
    #[error("unsupported yamux version {0}")]
    Version(u8),
    /// A data or window-update frame for stream 0.
    #[error("stream frame for stream 0")]
    StreamZero,
    /// SYN for a stream that is open.
    #[error("stream {0} opened twice")]
    OpenedTwice(u32),
    /// A data frame beyond the message limit.
    #[error("data frame of {0} bytes (at most 1 MiB)")]
    FrameTooLarge(u32),
    /// Data beyond the stream's window.
    #[error("stream {id} sent {len} bytes with {window} left in its window")]
    WindowExceeded {
        /// The stream.
        id: u32,
        /// The frame's length.
        len: u32,
        /// What was left of the window.
        window: u32,
    },
    /// A frame type the spec does not define.
    #[error("unknown yamux frame type {0}")]
    UnknownType(u8),
    /// Requests for answers (pings, streams to refuse) while reading none.
    #[error(
        "the peer asked for more than {MAX_ANSWERS_QUEUED} bytes of answers (pings, refused streams) without reading them"
    )]
    AnswerFlood,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A header written is read back the same, from exactly its 12 bytes.
        #[test]
        fn header_round_trip(ty in 0u8..4, flags in any::<u16>(), id in any::<u32>(), len in any::<u32>()) {
            let mut out = BytesMut::new();
            put_header(&mut out, ty, flags, id, len);
            prop_assert_eq!(out.len(), HEADER_LEN);
            prop_assert_eq!(Header::decode(&out[..HEADER_LEN - 1]), None);
            let expected = Header { version: VERSION, ty, flags, id, len };
            prop_assert_eq!(Header::decode(&out), Some(expected));
        }
    }
}
