//! RFC 6455 frames: opcodes, close codes, the header's wire form, masking, close
//! payloads, and [`WsError`], every way a peer can break the framing rules.

use std::fmt;

/// Close status codes used here (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (shutdown, restart).
    pub const AWAY: u16 = 1001;
    /// A protocol violation.
    pub const PROTOCOL: u16 = 1002;
    /// Data inconsistent with its message type (text that is not UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
}

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub(super) const MAX_HEADER: usize = 14;
/// Largest control frame payload (RFC 6455 section 5.5).
pub(super) const MAX_CONTROL: usize = 125;

/// A frame header, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// The final fragment of its message.
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    /// The masking key (frames from clients).
    pub(crate) mask: Option<[u8; 4]>,
    /// Payload length.
    pub(crate) len: u64,
}

/// How a peer broke RFC 6455, with the close code that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// A reserved bit is set, and no extension was negotiated.
    ReservedBits,
    /// The 64-bit payload length has its most significant bit set.
    LengthTooLong,
    /// A client sent an unmasked frame.
    Unmasked,
    /// A server sent a masked frame.
    Masked,
    /// A control frame without FIN.
    FragmentedControl,
    /// A control frame longer than 125 bytes.
    ControlTooLong(u64),
    /// A continuation frame with no fragmented message to continue.
    UnexpectedContinuation,
    /// A new message before the fragmented one ended.
    Interleaved,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A message longer than the limit given.
    TooBig(usize),
    /// A text message that is not UTF-8.
    TextNotUtf8,
    /// A close frame with a one-byte payload.
    CloseTooShort,
    /// A close frame with a code that may not be sent.
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8.
    CloseReasonNotUtf8,
}

impl WsError {
    /// The status code of the close frame this violation is answered with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig(_) => close_code::TOO_BIG,
            WsError::TextNotUtf8 | WsError::CloseReasonNotUtf8 => close_code::INVALID_DATA,
            _ => close_code::PROTOCOL,
        }
    }

    /// What is wrong, as sent in the close frame.
    pub fn reason(&self) -> String {
        match self {
            WsError::ReservedBits => "reserved bits set (no extension was negotiated)".into(),
            WsError::LengthTooLong => "frame length has its most significant bit set".into(),
            WsError::Unmasked => "unmasked frame from a client".into(),
            WsError::Masked => "masked frame from a server".into(),
            WsError::FragmentedControl => "fragmented control frame".into(),
            WsError::ControlTooLong(len) => {
                format!("control frame of {len} bytes (at most {MAX_CONTROL})")
            }
            WsError::UnexpectedContinuation => {
                "continuation frame outside a fragmented message".into()
            }
            WsError::Interleaved => "new message before the fragmented one ended".into(),
            WsError::UnknownOpcode(op) => format!("unknown opcode {op:#x}"),
            WsError::TooBig(limit) => format!("message of more than {limit} bytes"),
            WsError::TextNotUtf8 => "text message is not valid UTF-8".into(),
            WsError::CloseTooShort => "close frame with a one-byte payload".into(),
            WsError::InvalidCloseCode(code) => format!("invalid close code {code}"),
            WsError::CloseReasonNotUtf8 => "close reason is not valid UTF-8".into(),
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebSocket: {}", self.reason())
    }
}

impl std::error::Error for WsError {}

/// Parses the frame header at the start of `buf`: None until all of it is there,
/// else the header and its length in bytes. Only what is wrong with any frame is
/// refused here; what depends on the role and the message in progress is checked
/// by the reader.
pub(crate) fn decode_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    let extended = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + extended + if masked { 4 } else { 0 };
    if buf.len() < need {
        return Ok(None);
    }
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let len = match len7 {
        126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len >> 63 != 0 {
        return Err(WsError::LengthTooLong);
    }
    let at = 2 + extended;
    let mask = masked.then(|| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let header = FrameHeader {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        mask,
        len,
    };
    Ok(Some((header, need)))
}

/// Writes a frame header (FIN set) for a payload of `len` bytes into `out`;
/// returns its length. The shortest length form is used, as RFC 6455 requires.
pub(crate) fn encode_header(
    out: &mut [u8; MAX_HEADER],
    opcode: u8,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = 0x80 | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut h = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[h..h + 4].copy_from_slice(&m);
        h += 4;
    }
    h
}

/// XORs `buf` with the mask key, `pos` being the offset of `buf[0]` in the
/// payload. Written as byte loops over 64-byte blocks, which the compiler turns
/// into 16-byte vector XORs (word-sized XORs cost twice as much in the profile).
pub(crate) fn apply_mask(buf: &mut [u8], mask: [u8; 4], pos: usize) {
    let mut block = [0u8; 64];
    for (i, b) in block.iter_mut().enumerate() {
        *b = mask[(pos + i) % 4];
    }
    let (chunks, rest) = buf.as_chunks_mut::<64>();
    for chunk in chunks {
        for (b, m) in chunk.iter_mut().zip(block.iter()) {
            *b ^= *m;
        }
    }
    for (b, m) in rest.iter_mut().zip(block.iter()) {
        *b ^= *m;
    }
}

/// Checks a close frame's payload: empty, or a valid status code and a UTF-8
/// reason. Returns the code, if any.
pub(crate) fn close_payload(payload: &[u8]) -> Result<Option<u16>, WsError> {
    let [hi, lo, reason @ ..] = payload else {
        return match payload.len() {
            0 => Ok(None),
            _ => Err(WsError::CloseTooShort),
        };
    };
    let code = u16::from_be_bytes([*hi, *lo]);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(WsError::InvalidCloseCode(code));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(WsError::CloseReasonNotUtf8);
    }
    Ok(Some(code))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn mask_is_an_involution_at_any_offset() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mask = [0x12, 0x34, 0x56, 0x78];
        for split in [0, 1, 2, 3, 5, 8, 13, 999] {
            let mut buf = data.clone();
            apply_mask(&mut buf[..split], mask, 0);
            apply_mask(&mut buf[split..], mask, split);
            for (i, b) in buf.iter().enumerate() {
                assert_eq!(*b, data[i] ^ mask[i % 4], "byte {i}, split {split}");
            }
        }
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(encode_header(&mut h, OP_BINARY, 125, None), 2);
        assert_eq!(&h[..2], &[0x82, 125]);
        assert_eq!(encode_header(&mut h, OP_BINARY, 126, None), 4);
        assert_eq!(&h[..4], &[0x82, 126, 0, 126]);
        assert_eq!(
            encode_header(&mut h, OP_BINARY, 65536, Some([1, 2, 3, 4])),
            14
        );
        assert_eq!(&h[..14], &[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_payload(&[]), Ok(None));
        assert_eq!(close_payload(&[3]), Err(WsError::CloseTooShort));
        assert_eq!(close_payload(&[3, 232, b'o', b'k']), Ok(Some(1000)));
        assert_eq!(
            close_payload(&[3, 236]),
            Err(WsError::InvalidCloseCode(1004))
        );
        assert_eq!(
            close_payload(&[3, 232, 0xff]),
            Err(WsError::CloseReasonNotUtf8)
        );
    }

    proptest! {
        /// Whatever is encoded decodes to the same header, from exactly the bytes
        /// written, and not from one byte fewer.
        #[test]
        fn header_round_trip(
            opcode in prop_oneof![Just(OP_CONTINUATION), Just(OP_TEXT), Just(OP_BINARY), Just(OP_CLOSE), Just(OP_PING), Just(OP_PONG)],
            len in prop_oneof![0usize..130, 65_530usize..65_540, any::<u32>().prop_map(|n| n as usize)],
            mask in any::<Option<[u8; 4]>>(),
            trailing in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut out = [0u8; MAX_HEADER];
            let n = encode_header(&mut out, opcode, len, mask);
            let mut wire = out[..n].to_vec();
            prop_assert_eq!(decode_header(&wire[..n - 1]), Ok(None));
            wire.extend_from_slice(&trailing);
            let expected = FrameHeader { fin: true, opcode, mask, len: len as u64 };
            prop_assert_eq!(decode_header(&wire), Ok(Some((expected, n))));
        }

        /// Any bytes decode to a header, a request for more, or an error; never a
        /// panic, and never a header longer than the bytes given.
        #[test]
        fn any_bytes_decode_safely(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(Some((header, n))) = decode_header(&bytes) {
                prop_assert!(n <= bytes.len());
                prop_assert!(header.len >> 63 == 0);
            }
        }
    }
}
