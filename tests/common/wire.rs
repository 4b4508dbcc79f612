//! The wire formats, written by hand from their specs, for tests that speak them
//! raw: yamux frames ([`yamux`], HashiCorp's spec) and WebSocket frames ([`ws`],
//! RFC 6455); and [`XorShift`], a seeded PRNG for reproducible payloads.
//!
//! Deliberately independent of the crate: nothing here comes from
//! `gateway::protocol` or `gateway::transport`. The tests encode the specs
//! themselves, so that a wrong constant or a codec bug in the crate is caught
//! rather than shared by the test that should catch it.

/// Yamux (HashiCorp's spec): a 12-byte header (version 0, type, flags, stream
/// ID, length, big endian), then for data frames `length` bytes of body.
pub mod yamux {
    /// The only version.
    pub const VERSION: u8 = 0;
    pub const HEADER_LEN: usize = 12;

    pub const TYPE_DATA: u8 = 0;
    pub const TYPE_WINDOW_UPDATE: u8 = 1;
    pub const TYPE_PING: u8 = 2;
    pub const TYPE_GO_AWAY: u8 = 3;

    pub const SYN: u16 = 1;
    pub const ACK: u16 = 2;
    pub const FIN: u16 = 4;
    pub const RST: u16 = 8;

    /// Go-away codes (the frame's length field).
    pub const GO_AWAY_NORMAL: u32 = 0;
    pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;
    pub const GO_AWAY_INTERNAL_ERROR: u32 = 2;

    /// Every stream's window when it opens: 256 KiB.
    pub const INITIAL_WINDOW: usize = 256 * 1024;

    /// A frame header, as the spec lays it out.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Header {
        pub version: u8,
        pub ty: u8,
        pub flags: u16,
        pub stream: u32,
        /// Body length (data), window increment (window update), opaque value
        /// (ping) or code (go-away).
        pub length: u32,
    }

    impl Header {
        pub fn new(ty: u8, flags: u16, stream: u32, length: u32) -> Header {
            Header {
                version: VERSION,
                ty,
                flags,
                stream,
                length,
            }
        }

        /// A data frame carrying `len` bytes.
        pub fn data(stream: u32, flags: u16, len: usize) -> Header {
            let len = u32::try_from(len).expect("frame length");
            Header::new(TYPE_DATA, flags, stream, len)
        }

        pub fn window_update(stream: u32, flags: u16, increment: u32) -> Header {
            Header::new(TYPE_WINDOW_UPDATE, flags, stream, increment)
        }

        pub fn ping(flags: u16, opaque: u32) -> Header {
            Header::new(TYPE_PING, flags, 0, opaque)
        }

        pub fn go_away(code: u32) -> Header {
            Header::new(TYPE_GO_AWAY, 0, 0, code)
        }

        /// The header in the first [`HEADER_LEN`] bytes of `b`.
        pub fn parse(b: &[u8]) -> Header {
            Header {
                version: b[0],
                ty: b[1],
                flags: u16::from_be_bytes([b[2], b[3]]),
                stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            }
        }

        /// How many body bytes follow the header: only data frames have a body.
        pub fn body_len(&self) -> usize {
            if self.ty == TYPE_DATA {
                self.length as usize
            } else {
                0
            }
        }
    }

    /// Encodes one frame: the header, then `body`.
    pub fn encode_frame(h: Header, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(h.version);
        out.push(h.ty);
        out.extend_from_slice(&h.flags.to_be_bytes());
        out.extend_from_slice(&h.stream.to_be_bytes());
        out.extend_from_slice(&h.length.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// A data frame with `body`.
    pub fn data_frame(stream: u32, flags: u16, body: &[u8]) -> Vec<u8> {
        encode_frame(Header::data(stream, flags, body.len()), body)
    }

    /// Takes the first complete frame (header and body) out of `buf`; None while
    /// `buf` holds less than that.
    pub fn take_frame(buf: &mut Vec<u8>) -> Option<(Header, Vec<u8>)> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let h = Header::parse(&buf[..HEADER_LEN]);
        let end = HEADER_LEN + h.body_len();
        if buf.len() < end {
            return None;
        }
        let body = buf[HEADER_LEN..end].to_vec();
        buf.drain(..end);
        Some((h, body))
    }
}

/// WebSocket frames (RFC 6455, section 5): built byte by byte, any of them
/// invalid on purpose if the test wants, and parsed back.
pub mod ws {
    pub const FIN: u8 = 0x80;
    pub const RSV1: u8 = 0x40;
    pub const RSV2: u8 = 0x20;
    pub const RSV3: u8 = 0x10;
    pub const OP_CONT: u8 = 0x0;
    pub const OP_TEXT: u8 = 0x1;
    pub const OP_BINARY: u8 = 0x2;
    pub const OP_CLOSE: u8 = 0x8;
    pub const OP_PING: u8 = 0x9;
    pub const OP_PONG: u8 = 0xA;
    /// Mask key of [`raw_frame`]'s masked frames (the one in RFC 6455 section 5.7).
    pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// How the payload length of a built frame is encoded.
    #[derive(Clone, Copy)]
    pub enum Len {
        /// The shortest form.
        Minimal,
        /// The 16-bit form, whatever the length.
        U16,
        /// The 64-bit form, whatever the length.
        U64,
        /// The 64-bit form holding this value, whatever the payload.
        Claim(u64),
    }

    /// A frame: first byte `b0` (FIN, RSV, opcode), the length as `len` says,
    /// and the payload, masked with `key` if there is one.
    pub fn encode(b0: u8, len: Len, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let m = if key.is_some() { 0x80 } else { 0 };
        let n = payload.len() as u64;
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(b0);
        match len {
            Len::Minimal if n < 126 => out.push(m | n as u8),
            Len::Minimal if n <= 0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            Len::U16 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            Len::Minimal | Len::U64 => {
                out.push(m | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Len::Claim(claimed) => {
                out.push(m | 127);
                out.extend_from_slice(&claimed.to_be_bytes());
            }
        }
        match key {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// [`encode`] with the key [`MASK`] if `masked`.
    pub fn raw_frame(b0: u8, len: Len, payload: &[u8], masked: bool) -> Vec<u8> {
        encode(b0, len, payload, masked.then_some(MASK))
    }

    /// A frame as a client sends it (masked): what a server end expects.
    pub fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(b0, Len::Minimal, payload, true)
    }

    /// A frame as a server sends it (unmasked): what a client end expects.
    pub fn unmasked(b0: u8, payload: &[u8]) -> Vec<u8> {
        raw_frame(b0, Len::Minimal, payload, false)
    }

    /// A close frame's payload: the status code, then the reason.
    pub fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    /// A parsed frame (its payload unmasked).
    #[derive(Debug)]
    pub struct Parsed {
        pub fin: bool,
        /// The three reserved bits, in place (`b0 & 0x70`).
        pub rsv: u8,
        pub opcode: u8,
        pub masked: bool,
        pub payload: Vec<u8>,
    }

    impl Parsed {
        /// The status code of a close frame that has one.
        pub fn close_code(&self) -> Option<u16> {
            (self.opcode == OP_CLOSE && self.payload.len() >= 2)
                .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
        }
    }

    /// Parses the first frame of `bytes`: the frame and how many bytes it took,
    /// or which part of it is incomplete ("header", "length", "mask",
    /// "payload: N announced").
    pub fn parse_frame(bytes: &[u8]) -> Result<(Parsed, usize), String> {
        if bytes.len() < 2 {
            return Err("header".into());
        }
        let (b0, b1) = (bytes[0], bytes[1]);
        let is_masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 if bytes.len() >= 4 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return Err("length".into()),
            n => (u64::from(n), 2),
        };
        let mut key = [0u8; 4];
        if is_masked {
            if bytes.len() < at + 4 {
                return Err("mask".into());
            }
            key.copy_from_slice(&bytes[at..at + 4]);
            at += 4;
        }
        let len = usize::try_from(len).map_err(|_| "length: absurd".to_string())?;
        if bytes.len() - at < len {
            return Err(format!("payload: {len} announced"));
        }
        let mut payload = bytes[at..at + len].to_vec();
        if is_masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        let frame = Parsed {
            fin: b0 & 0x80 != 0,
            rsv: b0 & 0x70,
            opcode: b0 & 0x0F,
            masked: is_masked,
            payload,
        };
        Ok((frame, at + len))
    }

    /// Parses a complete byte stream of frames. Errors on a truncated frame.
    pub fn parse_frames(mut bytes: &[u8]) -> Result<Vec<Parsed>, String> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (frame, used) = parse_frame(bytes).map_err(|part| match part.as_str() {
                "header" => format!("truncated header: {bytes:?}"),
                _ => format!("truncated {part}"),
            })?;
            frames.push(frame);
            bytes = &bytes[used..];
        }
        Ok(frames)
    }
}

/// A tiny seeded PRNG (xorshift64*): reproducible test data, no dependency.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 32) as u8
    }

    /// `n` bytes, eight from each step.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    XorShift::new(seed).bytes(len)
}
