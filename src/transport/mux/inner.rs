//! The state of one session: its streams, the output waiting for the session
//! task, and the parser of what the peer sends.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::Waker;

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{
    ACK, FIN, GO_AWAY_NORMAL, HEADER_LEN, Header, MAX_ANSWERS_QUEUED, MAX_FRAME_BODY, MuxError,
    RST, SYN, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING, TYPE_WINDOW_UPDATE, VERSION, put_header,
};
use super::{COPY_BELOW, Mode, WINDOW};
use crate::protocol;
use crate::transport::TunnelError;

#[derive(Default)]
pub(super) struct StreamState {
    /// Received payloads not yet read.
    pub(super) recv: VecDeque<Bytes>,
    /// What the peer may still send before our next window update.
    pub(super) recv_window: u32,
    /// Read by the application since our last window update.
    pub(super) consumed: u32,
    /// What we may still send.
    pub(super) send_window: u32,
    pub(super) read_waker: Option<Waker>,
    pub(super) write_waker: Option<Waker>,
    /// Flags owed on the next frame we send on this stream (SYN or ACK).
    pub(super) owed: u16,
    /// We sent FIN.
    pub(super) local_fin: bool,
    /// The peer sent FIN.
    pub(super) remote_fin: bool,
    /// RST was sent or received.
    pub(super) reset: bool,
    /// The writer waits for the output to drain (listed in `Inner::out_blocked`).
    pub(super) out_blocked: bool,
}

impl StreamState {
    pub(super) fn new(owed: u16) -> Self {
        StreamState {
            recv_window: WINDOW,
            send_window: WINDOW,
            owed,
            ..Default::default()
        }
    }

    pub(super) fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// A data frame whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
pub(super) struct Partial {
    /// None: the payload is discarded (unknown or refused stream).
    id: Option<u32>,
    remaining: u32,
    flags: u16,
}

/// The driver's parsing state between reads.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    partial: Option<Partial>,
}

/// Hashes stream IDs (small, distinct integers) with a multiplication; the
/// default SipHash showed in the profile.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Folded so that the low bits (the bucket) vary too: all client IDs are odd.
        let x = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }
}

pub(super) type StreamMap = HashMap<u32, StreamState, std::hash::BuildHasherDefault<IdHasher>>;

pub(super) struct Inner {
    pub(super) mode: Mode,
    pub(super) next_id: u32,
    pub(super) streams: StreamMap,
    /// Frames waiting for the session task.
    pub(super) out: BytesMut,
    /// The session task, to wake when there is output.
    pub(super) driver: Option<Waker>,
    /// Streams whose writer waits for `out` to drain.
    pub(super) out_blocked: Vec<u32>,
    /// Open nothing new, accept nothing new (drain, or the peer's go-away).
    pub(super) refuse_new: bool,
    /// Why the session ended, once it has.
    pub(super) ended: Option<String>,
    /// Streams the peer opened, not yet handed to the application.
    pub(super) inbound: Vec<u32>,
    /// Bytes of answers queued since the session task last took the output.
    pub(super) answers_queued: usize,
}

impl Inner {
    pub(super) fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    pub(super) fn queue(&mut self, ty: u8, flags: u16, id: u32, len: u32) {
        put_header(&mut self.out, ty, flags, id, len);
        self.wake_driver();
    }

    /// Queues a frame the peer asked for; fails once too many wait.
    pub(super) fn answer(&mut self, ty: u8, flags: u16, id: u32, len: u32) -> Result<(), MuxError> {
        self.answers_queued += HEADER_LEN;
        if self.answers_queued > MAX_ANSWERS_QUEUED {
            return Err(MuxError::AnswerFlood);
        }
        self.queue(ty, flags, id, len);
        Ok(())
    }

    pub(super) fn end(&mut self, why: &str) {
        if self.ended.is_none() {
            self.ended = Some(why.to_owned());
        }
        self.refuse_new = true;
        // Nothing will be sent any more: free the output now rather than when
        // the last handle goes. (What was received stays readable.)
        self.out = BytesMut::new();
        for st in self.streams.values_mut() {
            st.wake_all();
        }
        self.out_blocked.clear();
        self.inbound.clear();
    }

    pub(super) fn gone(&self) -> io::Error {
        let why = self.ended.as_deref().unwrap_or("closed");
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the tunnel session ended: {why}"),
        )
    }

    /// Parses the frames in `buf`, leaving an incomplete header there.
    pub(super) fn on_input(
        &mut self,
        buf: &mut BytesMut,
        parser: &mut Parser,
    ) -> Result<(), MuxError> {
        loop {
            if let Some(p) = &mut parser.partial {
                if buf.is_empty() {
                    return Ok(());
                }
                let n = (p.remaining as usize).min(buf.len());
                let chunk = if n < COPY_BELOW {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    buf.advance(n);
                    chunk
                } else {
                    buf.split_to(n).freeze()
                };
                p.remaining -= n as u32;
                let p = *p;
                if let Some(st) = p.id.and_then(|id| self.streams.get_mut(&id))
                    && !st.reset
                {
                    st.recv.push_back(chunk);
                    if let Some(w) = st.read_waker.take() {
                        w.wake();
                    }
                }
                if p.remaining == 0 {
                    parser.partial = None;
                    if let Some(id) = p.id {
                        self.on_end_flags(id, p.flags);
                    }
                }
                continue;
            }
            let Some(Header {
                version,
                ty,
                flags,
                id,
                len,
            }) = Header::decode(buf)
            else {
                return Ok(());
            };
            if version != VERSION {
                return Err(MuxError::Version(version));
            }
            buf.advance(HEADER_LEN);
            match ty {
                TYPE_DATA | TYPE_WINDOW_UPDATE => {
                    if id == 0 {
                        return Err(MuxError::StreamZero);
                    }
                    let known = self.on_open_flags(id, flags)?;
                    if ty == TYPE_DATA {
                        if len > MAX_FRAME_BODY {
                            return Err(MuxError::FrameTooLarge(len));
                        }
                        let mut target = None;
                        if known && let Some(st) = self.streams.get_mut(&id) {
                            if len > st.recv_window {
                                return Err(MuxError::WindowExceeded {
                                    id,
                                    len,
                                    window: st.recv_window,
                                });
                            }
                            st.recv_window -= len;
                            target = Some(id);
                        }
                        if len > 0 {
                            parser.partial = Some(Partial {
                                id: target,
                                remaining: len,
                                flags,
                            });
                            continue;
                        }
                    } else if known && let Some(st) = self.streams.get_mut(&id) {
                        st.send_window = st.send_window.saturating_add(len);
                        if let Some(w) = st.write_waker.take() {
                            w.wake();
                        }
                    }
                    if known {
                        self.on_end_flags(id, flags);
                    }
                }
                TYPE_PING => {
                    if flags & SYN != 0 {
                        self.answer(TYPE_PING, ACK, 0, len)?;
                    }
                }
                TYPE_GO_AWAY => {
                    // No new streams; those open may finish.
                    self.refuse_new = true;
                    if len != GO_AWAY_NORMAL {
                        tracing::debug!(code = len, "the peer sent a go-away with an error");
                    }
                }
                _ => return Err(MuxError::UnknownType(ty)),
            }
        }
    }

    /// Handles SYN: a new stream from the peer. Returns whether frames for `id`
    /// concern a stream we keep (false: ignore them).
    pub(super) fn on_open_flags(&mut self, id: u32, flags: u16) -> Result<bool, MuxError> {
        if flags & SYN == 0 {
            return Ok(self.streams.contains_key(&id));
        }
        if self.streams.contains_key(&id) {
            return Err(MuxError::OpenedTwice(id));
        }
        let theirs = match self.mode {
            Mode::Server => id % 2 == 1,
            Mode::Client => false, // the agent must not open streams
        };
        if !theirs || self.refuse_new || self.streams.len() >= protocol::MAX_STREAMS {
            self.answer(TYPE_DATA, RST, id, 0)?;
            return Ok(false);
        }
        self.streams.insert(id, StreamState::new(ACK));
        self.inbound.push(id);
        Ok(true)
    }

    /// Handles FIN and RST, which take effect after the frame's payload.
    pub(super) fn on_end_flags(&mut self, id: u32, flags: u16) {
        if flags & (FIN | RST) == 0 {
            return;
        }
        if let Some(st) = self.streams.get_mut(&id) {
            if flags & RST != 0 {
                st.reset = true;
            } else {
                st.remote_fin = true;
            }
            st.wake_all();
        }
    }

    pub(super) fn open(&mut self) -> Result<u32, TunnelError> {
        if self.ended.is_some() || self.refuse_new {
            return Err(TunnelError::SessionGone);
        }
        if self.streams.len() >= protocol::MAX_STREAMS {
            return Err(TunnelError::Open(format!(
                "{} streams are open, the most a session allows",
                protocol::MAX_STREAMS
            )));
        }
        let id = self.next_id;
        let Some(next) = id.checked_add(2) else {
            // After 2^31 streams: the agent must reconnect to get more.
            self.refuse_new = true;
            return Err(TunnelError::Open(
                "the session has used up its stream IDs".into(),
            ));
        };
        self.next_id = next;
        self.streams.insert(id, StreamState::new(SYN));
        Ok(id)
    }
}
