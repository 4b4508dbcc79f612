//! A WebSocket (RFC 6455) seen as one ordered byte stream, which is what the
//! yamux session ([`super::session`]) runs on: `poll_read_into`, futures
//! `AsyncWrite`, and `poll_send_owned` for large output (futures `AsyncRead`
//! too, for other yamux implementations). The codec is our own, because the
//! tunnel's byte stream needs much less than a message API and the difference is
//! measured (`bench/README.md`):
//!
//! - **Reads** parse frame headers from a small buffer and hand payload bytes to
//!   the reader directly: a large read goes from the socket straight into the
//!   reader's buffer and is unmasked there, so a byte is copied once. A message
//!   API would copy it into a message first, and then again into the session's.
//! - **Writes** are gathered into one binary frame of up to
//!   [`protocol::WRITE_BATCH`] bytes, built in place behind a reserved header slot
//!   (and masked as it is copied in, on the client side); large output is framed
//!   as it is (`poll_send_owned`). Flushes are deferred: `poll_flush` only closes
//!   the frame; the socket is written before the next socket read, and when a
//!   read finds nothing, i.e. once per round of work. The session reads at the end
//!   of every round, so data never waits longer than that.
//! - **Control frames**: pings are answered with pongs; a close frame is answered
//!   with a close frame and ends the stream (`Ok(0)`); text messages are control
//!   messages ([`protocol::Control`]) and surface through the shared [`Signals`].
//! - **Heartbeat**: a ping every interval; if nothing at all arrives for
//!   [`protocol::HEARTBEAT_MISSES`] intervals the stream fails with `TimedOut` (a dead peer, a half-open TCP).
//! - **Violations** (reserved bits, unknown opcodes, a wrongly masked frame, a
//!   fragmented or oversized control frame, broken fragmentation, invalid UTF-8,
//!   an oversized message, a bad close code) fail the stream with `InvalidData`
//!   after a close frame with the matching status code (1002, 1007, 1009) is sent.
//!
//! Extensions (compression) are never negotiated, so the reserved bits must be 0.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::protocol::{self, Control};

/// Which end of the WebSocket this is: clients mask what they send, servers
/// must not, and each refuses frames masked the wrong way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Close status codes used here (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// Bytes asked of the socket when the read buffer is refilled.
const READ_CHUNK: usize = 8 * 1024;
/// Payload reads at least this large go from the socket straight into the
/// reader's buffer.
const DIRECT_READ_MIN: usize = 1024;
/// Pings are answered only while less than this waits for the socket.
const MAX_QUEUED_FOR_PONG: usize = 4 * protocol::WRITE_BATCH;
/// Largest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;
/// How long our last frames (a close) may take to reach a peer that reads slowly.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Written frame buffers kept for reuse.
const MAX_SPARES: usize = 2;
/// Sealed frames handed to one vectored write.
const MAX_IOVECS: usize = 16;

/// State shared between a session's byte stream and the code that owns the session.
#[derive(Debug, Default)]
pub struct Signals {
    /// The peer sent `{"type":"drain"}`.
    drain_received: AtomicBool,
    /// Wakes whoever waits for `drain_received`.
    pub drained: Notify,
    /// A control message to send at the next opportunity.
    outgoing: Mutex<Option<String>>,
    /// Wakes the session so the outgoing message is written.
    kick: Notify,
}

impl Signals {
    pub fn drain_received(&self) -> bool {
        self.drain_received.load(Ordering::Acquire)
    }

    /// Queues a control message; the session task is woken to send it.
    pub fn send_control(&self, c: &Control) {
        if let Ok(mut slot) = self.outgoing.lock() {
            *slot = Some(c.to_text());
        }
        self.kick.notify_one();
    }

    /// Resolves when a control message was queued (used by the session driver).
    pub async fn kicked(&self) {
        self.kick.notified().await
    }
}

struct Heartbeat {
    ticker: Interval,
    /// Something arrived since the last tick (a flag, not a timestamp: reading
    /// the clock on every read showed in the profile).
    heard: bool,
    /// Ticks in a row with nothing heard.
    silent_ticks: u32,
    period: Duration,
}

/// What the payload of the frame being read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Binary,
    Text,
    Control(u8),
}

/// The frame being read.
#[derive(Debug)]
struct InFrame {
    kind: Kind,
    fin: bool,
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes unmasked so far (the mask key rotates with it).
    mask_pos: usize,
}

/// How reading ended.
enum Ending {
    /// The peer's close frame arrived.
    Closed,
    /// A protocol violation, described.
    Failed(String),
}

/// What one step of reading produced.
enum Step {
    /// Payload bytes of a binary message, copied into the caller's buffer (0 when
    /// the caller's buffer was empty and a binary frame is next).
    Data(usize),
    /// A complete text message.
    Text(String),
    /// The peer closed the WebSocket (its close frame has been answered).
    Closed,
}

fn violation(code: u16, what: impl Into<String>) -> (u16, String) {
    (code, what.into())
}

pub struct WsIo<T> {
    io: T,
    role: Role,

    // Reading.
    rbuf: BytesMut,
    frame: Option<InFrame>,
    /// The data message in progress (its first frame had FIN clear), and its
    /// length so far.
    message: Option<(Kind, u64)>,
    text: Vec<u8>,
    control: Vec<u8>,
    /// How reading ends, once our last frames (our close) are written.
    ending: Option<Ending>,
    /// Bounds the wait for those frames: a peer that reads nothing cannot hold
    /// the session open.
    ending_deadline: Option<Pin<Box<tokio::time::Sleep>>>,

    // Writing.
    /// The open binary frame: a reserved header slot, then the payload.
    wbuf: BytesMut,
    /// Mask key of the open frame (client only).
    wmask: [u8; 4],
    /// Size of the last frame sealed: a large one means more are coming, so the
    /// next frame's buffer is reserved whole instead of grown.
    last_sealed: usize,
    /// Buffers of written frames, kept for the next ones.
    spares: Vec<BytesMut>,
    /// Frames ready for the socket, in order.
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// Whether the socket needs a flush (TLS) after the queue was written.
    needs_flush: bool,
    /// Binary data moved either way since the last heartbeat tick (pings and
    /// pongs do not count): an idle session frees its write buffer.
    active: bool,
    /// Heartbeat ticks that found the session idle (see [`WsIo::idle_ticks`]).
    idle_ticks: u64,
    close_sent: bool,
    close_code: u16,

    heartbeat: Option<Heartbeat>,
    signals: Arc<Signals>,
}

impl<T> WsIo<T>
where
    T: TokioRead + TokioWrite + Unpin,
{
    /// `io` is the connection after the HTTP upgrade. `heartbeat`: ping interval
    /// (None: never ping, never time out). `close_code` is sent when this end
    /// closes the session.
    pub fn new(
        io: T,
        role: Role,
        heartbeat: Option<Duration>,
        close_code: u16,
        signals: Arc<Signals>,
    ) -> Self {
        WsIo {
            io,
            role,
            rbuf: BytesMut::new(),
            frame: None,
            message: None,
            text: Vec::new(),
            control: Vec::new(),
            ending: None,
            ending_deadline: None,
            wbuf: BytesMut::new(),
            wmask: [0; 4],
            last_sealed: 0,
            spares: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            needs_flush: false,
            active: false,
            idle_ticks: 0,
            close_sent: false,
            close_code,
            heartbeat: None,
            signals,
        }
        .with_heartbeat(heartbeat)
    }

    /// Starts (or stops, with None) the heartbeat: a ping every `period`.
    pub fn with_heartbeat(mut self, period: Option<Duration>) -> Self {
        self.heartbeat = period.map(|period| {
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Heartbeat {
                ticker,
                heard: false,
                silent_ticks: 0,
                period,
            }
        });
        self
    }

    /// Sends one text message and flushes it (the hello).
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.queue_control(OP_TEXT, text.as_bytes());
        std::future::poll_fn(|cx| self.poll_write_queue(cx)).await
    }

    /// Reads the next text message (the hello). Binary data first is an error.
    pub async fn recv_text(&mut self) -> io::Result<String> {
        std::future::poll_fn(
            |cx| match ready!(self.poll_step(cx, &mut ReadBuf::new(&mut [])))? {
                Step::Text(t) => Poll::Ready(Ok(t)),
                Step::Data(_) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "expected a text message, got binary data",
                ))),
                Step::Closed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the peer closed the WebSocket",
                ))),
            },
        )
        .await
    }

    /// Heartbeat intervals so far in which no data moved: when this changes, the
    /// session is idle and may free its own buffers too.
    pub fn idle_ticks(&self) -> u64 {
        self.idle_ticks
    }

    /// Ready with `true` once binary payload is next, `false` once the WebSocket
    /// is closed; reads nothing of the payload. Lets the reader allocate its
    /// buffer only when data is coming.
    pub fn poll_data_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            match ready!(self.poll_step(cx, &mut ReadBuf::new(&mut [])))? {
                Step::Data(_) => return Poll::Ready(Ok(true)),
                Step::Closed => return Poll::Ready(Ok(false)),
                Step::Text(text) => self.on_text(&text),
            }
        }
    }

    /// The futures `AsyncRead`, into a possibly uninitialised buffer (the
    /// session reads into the spare capacity of a `BytesMut`). Reading nothing
    /// means the WebSocket was closed.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match ready!(self.poll_step(cx, buf))? {
                Step::Data(_) | Step::Closed => return Poll::Ready(Ok(())),
                Step::Text(text) => self.on_text(&text),
            }
        }
    }

    // ---- writing -------------------------------------------------------------

    /// Payload bytes in the open frame.
    fn open_len(&self) -> usize {
        self.wbuf.len().saturating_sub(MAX_HEADER)
    }

    /// Appends payload to the open binary frame (opening one if needed).
    fn append(&mut self, data: &[u8]) {
        if self.wbuf.is_empty() {
            if self.wbuf.capacity() == 0
                && let Some(spare) = self.spares.pop()
            {
                self.wbuf = spare;
            }
            let want = if self.last_sealed >= protocol::WRITE_BATCH / 4 {
                protocol::WRITE_BATCH
            } else {
                data.len().max(4096)
            };
            self.wbuf.reserve(MAX_HEADER + want);
            self.wbuf.put_bytes(0, MAX_HEADER);
            if self.role == Role::Client {
                self.wmask = rand::random();
            }
        }
        self.active = true;
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(data);
        if self.role == Role::Client {
            let pos = start - MAX_HEADER;
            apply_mask(&mut self.wbuf[start..], self.wmask, pos);
        }
    }

    /// Closes the open binary frame: writes its header in front of the payload
    /// and queues it.
    fn seal(&mut self) {
        let len = self.open_len();
        if len == 0 {
            self.wbuf.clear();
            return;
        }
        let mask = (self.role == Role::Client).then_some(self.wmask);
        let mut header = [0u8; MAX_HEADER];
        let h = encode_header(&mut header, OP_BINARY, len, mask);
        let start = MAX_HEADER - h;
        self.wbuf[start..MAX_HEADER].copy_from_slice(&header[..h]);
        // The frame takes the whole buffer; once written, the buffer comes back
        // through `spares` (no allocation per frame, no large frees).
        let mut frame = std::mem::take(&mut self.wbuf);
        frame.advance(start);
        self.last_sealed = len;
        self.queued_bytes += frame.len();
        self.queue.push_back(frame.freeze());
    }

    /// Queues a complete frame that is not binary data (text, ping, pong, close);
    /// the open binary frame is sealed first so the order holds.
    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        self.seal();
        let mask = (self.role == Role::Client).then(rand::random::<[u8; 4]>);
        let mut header = [0u8; MAX_HEADER];
        let h = encode_header(&mut header, opcode, payload.len(), mask);
        let mut frame = BytesMut::with_capacity(h + payload.len());
        frame.extend_from_slice(&header[..h]);
        frame.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut frame[h..], mask, 0);
        }
        self.queued_bytes += frame.len();
        self.queue.push_back(frame.freeze());
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        if self.close_sent {
            return;
        }
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        payload.truncate(MAX_CONTROL);
        self.queue_control(OP_CLOSE, &payload);
        self.close_sent = true;
    }

    /// Queues all of `payload` as binary data without copying it: frames of at
    /// most [`protocol::WRITE_BATCH`] bytes whose payloads are slices of it
    /// (masked in place on the client). For large writes, where the copy into a
    /// frame buffer showed in the profile. Pending, taking nothing, while a full
    /// batch is still waiting for the socket.
    pub fn poll_send_owned(
        &mut self,
        cx: &mut Context<'_>,
        payload: &mut BytesMut,
    ) -> Poll<io::Result<()>> {
        if self.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the WebSocket is closing",
            )));
        }
        if self.queued_bytes >= protocol::WRITE_BATCH {
            ready!(self.poll_write_queue(cx))?;
        }
        self.seal();
        self.active = true;
        while !payload.is_empty() {
            let mut piece = payload.split_to(payload.len().min(protocol::WRITE_BATCH));
            let mask = (self.role == Role::Client).then(rand::random::<[u8; 4]>);
            if let Some(mask) = mask {
                apply_mask(&mut piece, mask, 0);
            }
            let mut header = [0u8; MAX_HEADER];
            let h = encode_header(&mut header, OP_BINARY, piece.len(), mask);
            self.queued_bytes += h + piece.len();
            self.queue.push_back(Bytes::copy_from_slice(&header[..h]));
            self.queue.push_back(piece.freeze());
        }
        Poll::Ready(Ok(()))
    }

    /// Keeps a written frame's buffer for the next frame, if nothing else holds it.
    fn keep_spare(&mut self, frame: Bytes) {
        if self.spares.len() < MAX_SPARES
            && let Ok(mut buf) = frame.try_into_mut()
            && buf.capacity() >= 4096
        {
            buf.clear();
            self.spares.push(buf);
        }
    }

    /// Writes every queued frame to the socket, then flushes it.
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.needs_flush = true;
            self.queued_bytes -= n;
            let mut left = n;
            while left > 0 {
                let Some(front) = self.queue.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    if let Some(frame) = self.queue.pop_front() {
                        self.keep_spare(frame);
                    }
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        if self.needs_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    // ---- housekeeping --------------------------------------------------------

    /// Pings when due; fails when the peer has been silent for three intervals;
    /// frees the buffers of a session that has been idle for a whole interval.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(hb) = &mut self.heartbeat else {
            return Ok(());
        };
        let mut due = false;
        while hb.ticker.poll_tick(cx).is_ready() {
            due = true;
        }
        if !due {
            return Ok(());
        }
        if std::mem::take(&mut hb.heard) {
            hb.silent_ticks = 0;
        } else {
            hb.silent_ticks += 1;
        }
        if hb.silent_ticks >= protocol::HEARTBEAT_MISSES {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer silent for more than {:?} ({} heartbeat intervals)",
                    hb.period * protocol::HEARTBEAT_MISSES,
                    protocol::HEARTBEAT_MISSES
                ),
            ));
        }
        if !std::mem::take(&mut self.active) && self.wbuf.is_empty() && self.queue.is_empty() {
            self.idle_ticks += 1;
            self.wbuf = BytesMut::new();
            self.spares = Vec::new();
            self.last_sealed = 0;
        }
        if !self.close_sent {
            self.queue_control(OP_PING, &[]);
        }
        Ok(())
    }

    fn poll_control_out(&mut self) {
        let pending = self
            .signals
            .outgoing
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(text) = pending
            && !self.close_sent
        {
            self.queue_control(OP_TEXT, text.as_bytes());
        }
    }

    /// Everything due before the socket is read: pings, control messages, and the
    /// frames written since the last read.
    fn before_socket_read(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.poll_heartbeat(cx)?;
        self.poll_control_out();
        if !self.queue.is_empty() || self.needs_flush {
            // Pending only means the socket is full: the writes resume when the
            // reader (or a writer) polls again.
            if let Poll::Ready(Err(e)) = self.poll_write_queue(cx) {
                return Err(e);
            }
        }
        Ok(())
    }

    // ---- reading -------------------------------------------------------------

    /// Reads more bytes into the read buffer. `Ok(())` means some arrived.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.before_socket_read(cx)?;
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Pending => {
                self.on_idle();
                return Poll::Pending;
            }
            Poll::Ready(r) => r?,
        };
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed without a WebSocket close frame",
            )));
        }
        self.on_received();
        Poll::Ready(Ok(()))
    }

    /// The socket has nothing to read: an empty read buffer is freed, so that an
    /// idle session holds no buffer.
    fn on_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    fn on_received(&mut self) {
        if let Some(hb) = &mut self.heartbeat {
            hb.heard = true;
        }
    }

    /// Fails the stream: queues a close frame with `code`; the reader gets the
    /// error once it is written.
    fn fail(&mut self, code: u16, why: String) {
        self.queue_close(code, &why);
        self.end(Ending::Failed(format!("WebSocket: {why}")));
    }

    fn end(&mut self, ending: Ending) {
        if self.ending.is_none() {
            self.ending = Some(ending);
            self.ending_deadline = Some(Box::pin(tokio::time::sleep(CLOSE_WRITE_TIMEOUT)));
        }
    }

    /// Once reading has ended: writes what is queued (our close frame), then
    /// reports the end.
    fn poll_ending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Step>> {
        let written = match self.poll_write_queue(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => match self.ending_deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Pending) => return Poll::Pending,
                _ => Err(io::ErrorKind::TimedOut.into()),
            },
        };
        if let Err(e) = written {
            // The peer is gone or reads nothing: the end stands all the same.
            tracing::debug!(error = %e, "could not send the WebSocket close frame");
            self.queue.clear();
            self.queued_bytes = 0;
        }
        Poll::Ready(match &self.ending {
            Some(Ending::Failed(why)) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()))
            }
            _ => Ok(Step::Closed),
        })
    }

    /// Parses the next frame header from the read buffer, if it is all there.
    fn parse_header(&mut self) -> Result<Option<InFrame>, (u16, String)> {
        let buf = &self.rbuf[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let mut need = 2 + if masked { 4 } else { 0 };
        let len7 = b1 & 0x7F;
        need += match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if buf.len() < need {
            return Ok(None);
        }
        if b0 & 0x70 != 0 {
            return Err(violation(
                close_code::PROTOCOL,
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let (len, mut at) = match len7 {
            126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            return Err(violation(
                close_code::PROTOCOL,
                "frame length has its most significant bit set",
            ));
        }
        let mask = if masked {
            let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(violation(
                    close_code::PROTOCOL,
                    "unmasked frame from a client",
                ));
            }
            (Role::Client, true) => {
                return Err(violation(
                    close_code::PROTOCOL,
                    "masked frame from a server",
                ));
            }
            _ => {}
        }
        let kind = match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(violation(close_code::PROTOCOL, "fragmented control frame"));
                }
                if len > MAX_CONTROL as u64 {
                    return Err(violation(
                        close_code::PROTOCOL,
                        format!("control frame of {len} bytes (at most {MAX_CONTROL})"),
                    ));
                }
                Kind::Control(opcode)
            }
            OP_CONTINUATION => match self.message {
                Some((kind, _)) => kind,
                None => {
                    return Err(violation(
                        close_code::PROTOCOL,
                        "continuation frame outside a fragmented message",
                    ));
                }
            },
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(violation(
                        close_code::PROTOCOL,
                        "new message before the fragmented one ended",
                    ));
                }
                if opcode == OP_TEXT {
                    Kind::Text
                } else {
                    Kind::Binary
                }
            }
            other => {
                return Err(violation(
                    close_code::PROTOCOL,
                    format!("unknown opcode {other:#x}"),
                ));
            }
        };
        if matches!(kind, Kind::Binary | Kind::Text) {
            let so_far = match self.message {
                Some((_, n)) if opcode == OP_CONTINUATION => n,
                _ => 0,
            };
            let total = so_far.saturating_add(len);
            let limit = if kind == Kind::Text {
                protocol::MAX_TEXT
            } else {
                protocol::MAX_MESSAGE
            };
            if total > limit as u64 {
                return Err(violation(
                    close_code::TOO_BIG,
                    format!("message of more than {limit} bytes"),
                ));
            }
            self.message = (!fin).then_some((kind, total));
        }
        self.rbuf.advance(at);
        Ok(Some(InFrame {
            kind,
            fin,
            remaining: len,
            mask,
            mask_pos: 0,
        }))
    }

    /// Reads until something for the caller is ready: payload bytes appended to
    /// `out` (which may be uninitialised), a text message, or the peer's close.
    fn poll_step(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<Step>> {
        loop {
            if self.ending.is_some() {
                return self.poll_ending(cx);
            }
            let Some(frame) = &mut self.frame else {
                match self.parse_header() {
                    Ok(Some(frame)) => self.frame = Some(frame),
                    Ok(None) => ready!(self.poll_fill(cx))?,
                    Err((code, why)) => self.fail(code, why),
                }
                continue;
            };
            if frame.kind == Kind::Binary {
                if frame.remaining == 0 {
                    self.frame = None;
                    continue;
                }
                if out.remaining() == 0 {
                    return Poll::Ready(Ok(Step::Data(0)));
                }
                self.active = true;
                let want = (out.remaining() as u64).min(frame.remaining) as usize;
                let start = out.filled().len();
                if !self.rbuf.is_empty() {
                    let n = want.min(self.rbuf.len());
                    out.put_slice(&self.rbuf[..n]);
                    self.rbuf.advance(n);
                    unmask_frame(frame, &mut out.filled_mut()[start..]);
                    return Poll::Ready(Ok(Step::Data(n)));
                }
                if want < DIRECT_READ_MIN {
                    ready!(self.poll_fill(cx))?;
                    continue;
                }
                // Straight from the socket into the reader's buffer.
                self.before_socket_read(cx)?;
                let mut rb = out.take(want);
                match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        self.on_idle();
                        return Poll::Pending;
                    }
                    Poll::Ready(r) => r?,
                }
                let n = rb.filled().len();
                // SAFETY: `rb` views the unfilled part of `out`, and the read just
                // initialised its first `n` bytes.
                unsafe { out.assume_init(n) };
                out.advance(n);
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of a WebSocket frame",
                    )));
                }
                self.on_received();
                // `frame` was borrowed from `self.frame` before the calls above.
                if let Some(frame) = &mut self.frame {
                    unmask_frame(frame, &mut out.filled_mut()[start..]);
                }
                return Poll::Ready(Ok(Step::Data(n)));
            }
            // Text or control: gather the whole payload first.
            if frame.remaining > 0 {
                if self.rbuf.is_empty() {
                    ready!(self.poll_fill(cx))?;
                    continue;
                }
                let n = (frame.remaining.min(self.rbuf.len() as u64)) as usize;
                let dest = match frame.kind {
                    Kind::Text => &mut self.text,
                    _ => &mut self.control,
                };
                let start = dest.len();
                dest.extend_from_slice(&self.rbuf[..n]);
                self.rbuf.advance(n);
                unmask_frame(frame, &mut dest[start..]);
                continue;
            }
            let frame = self.frame.take();
            let Some(frame) = frame else { continue };
            match frame.kind {
                Kind::Text => {
                    if !frame.fin {
                        continue;
                    }
                    let bytes = std::mem::take(&mut self.text);
                    match String::from_utf8(bytes) {
                        Ok(text) => return Poll::Ready(Ok(Step::Text(text))),
                        Err(_) => {
                            let why = "text message is not valid UTF-8".to_owned();
                            self.fail(close_code::INVALID_DATA, why);
                            continue;
                        }
                    }
                }
                Kind::Control(OP_PING) => {
                    let payload = std::mem::take(&mut self.control);
                    // A peer that pings without reading gets no more pongs once
                    // a few batches wait for the socket (RFC 6455 allows
                    // answering only some pings): its pings cannot make us
                    // buffer without bound.
                    if !self.close_sent && self.queued_bytes < MAX_QUEUED_FOR_PONG {
                        self.queue_control(OP_PONG, &payload);
                    }
                }
                Kind::Control(OP_CLOSE) => {
                    let payload = std::mem::take(&mut self.control);
                    match close_payload(&payload) {
                        Ok(code) => {
                            // Answer with the same code; reading ends once it is out.
                            self.queue_close(code.unwrap_or(close_code::NORMAL), "");
                            self.end(Ending::Closed);
                        }
                        Err((code, why)) => self.fail(code, why),
                    }
                }
                // Pongs (and nothing else reaches here) only prove the peer is alive.
                _ => self.control.clear(),
            }
        }
    }

    fn on_text(&self, text: &str) {
        match Control::parse(text) {
            Some(Control::Drain) => {
                self.signals.drain_received.store(true, Ordering::Release);
                self.signals.drained.notify_waiters();
            }
            None => tracing::debug!(message = %text, "ignoring unknown control message"),
        }
    }
}

/// Unmasks bytes of `frame`'s payload that were just read, in place.
fn unmask_frame(frame: &mut InFrame, bytes: &mut [u8]) {
    if let Some(mask) = frame.mask {
        apply_mask(bytes, mask, frame.mask_pos);
    }
    frame.mask_pos = frame.mask_pos.wrapping_add(bytes.len());
    frame.remaining -= bytes.len() as u64;
}

/// Checks a close frame's payload: empty, or a valid status code and a UTF-8
/// reason. Returns the code, if any.
fn close_payload(payload: &[u8]) -> Result<Option<u16>, (u16, String)> {
    match payload.len() {
        0 => return Ok(None),
        1 => {
            return Err(violation(
                close_code::PROTOCOL,
                "close frame with a one-byte payload",
            ));
        }
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !valid {
        return Err(violation(
            close_code::PROTOCOL,
            format!("invalid close code {code}"),
        ));
    }
    if std::str::from_utf8(&payload[2..]).is_err() {
        return Err(violation(
            close_code::INVALID_DATA,
            "close reason is not valid UTF-8",
        ));
    }
    Ok(Some(code))
}

/// Writes a frame header (FIN set) for a payload of `len` bytes into `out`;
/// returns its length.
fn encode_header(
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

impl<T> futures_util::AsyncRead for WsIo<T>
where
    T: TokioRead + TokioWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut out = ReadBuf::new(buf);
        loop {
            match ready!(this.poll_step(cx, &mut out))? {
                Step::Data(n) => return Poll::Ready(Ok(n)),
                Step::Text(text) => this.on_text(&text),
                Step::Closed => return Poll::Ready(Ok(0)),
            }
        }
    }
}

impl<T> futures_util::AsyncWrite for WsIo<T>
where
    T: TokioRead + TokioWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the WebSocket is closing",
            )));
        }
        if this.open_len() >= protocol::WRITE_BATCH {
            this.seal();
        }
        // A full frame is waiting: the socket must take it before more is queued.
        if this.queued_bytes >= protocol::WRITE_BATCH {
            match this.poll_write_queue(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending if this.queued_bytes >= protocol::WRITE_BATCH => {
                    return Poll::Pending;
                }
                Poll::Pending => {}
            }
        }
        let n = buf.len().min(protocol::WRITE_BATCH - this.open_len());
        this.append(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Deferred: see the module docs.
        self.get_mut().seal();
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let code = this.close_code;
        let reason = if code == close_code::AWAY {
            "going away"
        } else {
            ""
        };
        this.queue_close(code, reason);
        if let Err(e) = ready!(this.poll_write_queue(cx)) {
            // The peer is already gone: nothing left to close.
            tracing::debug!(error = %e, "closing websocket");
            return Poll::Ready(Ok(()));
        }
        // Wait for the peer's close frame (the caller bounds this in time),
        // discarding whatever arrives before it.
        let mut scratch = [0u8; 2048];
        while !matches!(this.ending, Some(Ending::Closed)) {
            match ready!(this.poll_step(cx, &mut ReadBuf::new(&mut scratch))) {
                Ok(Step::Closed) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "waiting for the peer's close frame");
                    break;
                }
            }
        }
        let _ = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
        Poll::Ready(Ok(()))
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn client_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

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
}
