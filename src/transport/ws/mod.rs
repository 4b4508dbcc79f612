//! A WebSocket (RFC 6455) seen as one ordered byte stream, which is what the
//! multiplexer ([`super::session`]) runs on: `poll_read_into`, futures
//! `AsyncWrite`, and `poll_send_owned` for large output (futures `AsyncRead`
//! too, for other yamux implementations). The codec is our own, because the
//! tunnel's byte stream needs much less than a message API and the difference is
//! measured (`bench/README.md`):
//!
//! - [`read`]: frame headers are parsed from a small buffer and payload bytes go
//!   to the reader directly: a large read goes from the socket straight into the
//!   reader's buffer and is unmasked there, so a byte is copied once.
//! - [`write`]: writes are gathered into one binary frame of up to
//!   [`crate::protocol::WRITE_BATCH`] bytes, built in place behind a reserved header slot
//!   (and masked as it is copied in, on the client side); large output is framed
//!   as it is (`poll_send_owned`). Flushes are deferred: `poll_flush` only closes
//!   the frame; the socket is written before the next socket read, and when a
//!   read finds nothing, i.e. once per round of work. The session reads at the end
//!   of every round, so data never waits longer than that.
//! - **Control frames**: pings are answered with pongs; a close frame is answered
//!   with a close frame and ends the stream (`Ok(0)`). Text messages are kept for
//!   the owner ([`WsIo::take_text`]): what they mean is the session's business.
//! - [`heartbeat`]: a ping every interval; if nothing at all arrives for
//!   [`crate::protocol::HEARTBEAT_MISSES`] intervals the stream fails with `TimedOut` (a
//!   dead peer, a half-open TCP).
//! - **Violations** ([`WsError`]: reserved bits, unknown opcodes, a wrongly masked
//!   frame, a fragmented or oversized control frame, broken fragmentation,
//!   invalid UTF-8, an oversized message, a bad close code) fail the stream with
//!   `InvalidData` after a close frame with the matching status code (1002, 1007,
//!   1009) is sent.
//! - [`handshake`]: both halves of the HTTP upgrade, tested against each other.
//!
//! Extensions (compression) are never negotiated, so the reserved bits must be 0.

mod frame;
pub mod handshake;
mod heartbeat;
mod read;
mod write;

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite, ReadBuf};

use self::frame::{MAX_HEADER, OP_TEXT};
pub use self::frame::{WsError, close_code};
use self::heartbeat::Heartbeat;
use self::read::{Ending, InFrame, Kind, Step};

/// Which end of the WebSocket this is: clients mask what they send, servers
/// must not, and each refuses frames masked the wrong way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that dialled (the agent): masks its frames.
    Client,
    /// The end that accepted (the gateway).
    Server,
}

/// Text messages received and not yet taken, at most; more are dropped (the
/// protocol's text messages are rare control messages).
const MAX_QUEUED_TEXTS: usize = 16;

/// A WebSocket as a byte stream of binary messages; see the module docs.
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
    /// Complete text messages received while reading data.
    texts: VecDeque<String>,
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
}

impl<T> WsIo<T>
where
    T: TokioRead + TokioWrite + Unpin,
{
    /// `io` is the connection after the HTTP upgrade. `heartbeat`: ping interval
    /// (None: never ping, never time out). `close_code` is sent when this end
    /// closes the session.
    pub fn new(io: T, role: Role, heartbeat: Option<Duration>, close_code: u16) -> Self {
        WsIo {
            io,
            role,
            rbuf: BytesMut::new(),
            frame: None,
            message: None,
            text: Vec::new(),
            control: Vec::new(),
            texts: VecDeque::new(),
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
        }
        .with_heartbeat(heartbeat)
    }

    /// Starts (or stops, with None) the heartbeat: a ping every `period`.
    pub fn with_heartbeat(mut self, period: Option<Duration>) -> Self {
        self.heartbeat = period.map(Heartbeat::new);
        self
    }

    /// Sends one text message and flushes it (the hello).
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.queue_text(text);
        std::future::poll_fn(|cx| self.poll_write_queue(cx)).await
    }

    /// Queues one text message; it goes out with the next write to the socket.
    pub fn queue_text(&mut self, text: &str) {
        if !self.close_sent {
            self.queue_control(OP_TEXT, text.as_bytes());
        }
    }

    /// Reads the next text message (the hello). Binary data first is an error.
    pub async fn recv_text(&mut self) -> io::Result<String> {
        if let Some(text) = self.texts.pop_front() {
            return Ok(text);
        }
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

    /// The oldest text message that arrived while binary data was being read.
    pub fn take_text(&mut self) -> Option<String> {
        self.texts.pop_front()
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
                Step::Text(text) => self.keep_text(text),
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
                Step::Text(text) => self.keep_text(text),
            }
        }
    }

    fn keep_text(&mut self, text: String) {
        if self.texts.len() < MAX_QUEUED_TEXTS {
            self.texts.push_back(text);
        } else {
            tracing::debug!("dropping a text message: too many are waiting");
        }
    }

    /// Everything due before the socket is read: pings, and the frames written
    /// since the last read.
    fn before_socket_read(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.poll_heartbeat(cx)?;
        if !self.queue.is_empty() || self.needs_flush {
            // Pending only means the socket is full: the writes resume when the
            // reader (or a writer) polls again.
            if let Poll::Ready(Err(e)) = self.poll_write_queue(cx) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Payload bytes in the open frame.
    fn open_len(&self) -> usize {
        self.wbuf.len().saturating_sub(MAX_HEADER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_beyond_the_limit_are_dropped() {
        let (a, _b) = tokio::io::duplex(64);
        let mut ws = WsIo::new(a, Role::Server, None, close_code::NORMAL);
        for i in 0..MAX_QUEUED_TEXTS + 5 {
            ws.keep_text(i.to_string());
        }
        let kept: Vec<String> = std::iter::from_fn(|| ws.take_text()).collect();
        assert_eq!(kept.len(), MAX_QUEUED_TEXTS);
        assert_eq!(kept[0], "0");
    }
}
