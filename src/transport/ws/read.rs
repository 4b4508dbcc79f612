//! Reading: frame headers from a small buffer, binary payload straight into the
//! reader's buffer (unmasked there), text and control payloads gathered whole;
//! pings answered, a close answered and reported, violations answered with the
//! matching close code.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{
    FrameHeader, MAX_CONTROL, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
    WsError, apply_mask, close_payload, decode_header,
};
use super::{Role, WsIo, close_code};
use crate::protocol;

/// Bytes asked of the socket when the read buffer is refilled.
const READ_CHUNK: usize = 8 * 1024;
/// Payload reads at least this large go from the socket straight into the
/// reader's buffer.
const DIRECT_READ_MIN: usize = 1024;
/// Pings are answered only while less than this waits for the socket.
const MAX_QUEUED_FOR_PONG: usize = 4 * protocol::WRITE_BATCH;
/// How long our last frames (a close) may take to reach a peer that reads slowly.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the payload of the frame being read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Binary,
    Text,
    Control(u8),
}

/// The frame being read.
#[derive(Debug)]
pub(super) struct InFrame {
    kind: Kind,
    fin: bool,
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes unmasked so far (the mask key rotates with it).
    mask_pos: usize,
}

/// How reading ended.
pub(super) enum Ending {
    /// The peer's close frame arrived.
    Closed,
    /// A protocol violation.
    Failed(WsError),
}

/// What one step of reading produced.
pub(super) enum Step {
    /// Payload bytes of a binary message, copied into the caller's buffer (0 when
    /// the caller's buffer was empty and a binary frame is next).
    Data(usize),
    /// A complete text message.
    Text(String),
    /// The peer closed the WebSocket (its close frame has been answered).
    Closed,
}

impl<T> WsIo<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads more bytes into the read buffer. `Ok(())` means some arrived.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
    pub(super) fn on_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// Fails the stream: queues a close frame with the violation's code; the
    /// reader gets the error once it is written.
    pub(super) fn fail(&mut self, why: WsError) {
        self.queue_close(why.close_code(), &why.reason());
        self.end(Ending::Failed(why));
    }

    pub(super) fn end(&mut self, ending: Ending) {
        if self.ending.is_none() {
            self.ending = Some(ending);
            self.ending_deadline = Some(Box::pin(tokio::time::sleep(CLOSE_WRITE_TIMEOUT)));
        }
    }

    /// Once reading has ended: writes what is queued (our close frame), then
    /// reports the end.
    pub(super) fn poll_ending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Step>> {
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

    /// Parses the next frame header from the read buffer, if it is all there, and
    /// checks it against the role and the message in progress.
    pub(super) fn parse_header(&mut self) -> Result<Option<InFrame>, WsError> {
        let Some((header, at)) = decode_header(&self.rbuf)? else {
            return Ok(None);
        };
        let FrameHeader {
            fin,
            opcode,
            mask,
            len,
        } = header;
        match (self.role, mask.is_some()) {
            (Role::Server, false) => return Err(WsError::Unmasked),
            (Role::Client, true) => return Err(WsError::Masked),
            _ => {}
        }
        let kind = match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(WsError::FragmentedControl);
                }
                if len > MAX_CONTROL as u64 {
                    return Err(WsError::ControlTooLong(len));
                }
                Kind::Control(opcode)
            }
            OP_CONTINUATION => match self.message {
                Some((kind, _)) => kind,
                None => return Err(WsError::UnexpectedContinuation),
            },
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(WsError::Interleaved);
                }
                if opcode == OP_TEXT {
                    Kind::Text
                } else {
                    Kind::Binary
                }
            }
            other => return Err(WsError::UnknownOpcode(other)),
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
                return Err(WsError::TooBig(limit));
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
    pub(super) fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<Step>> {
        loop {
            if self.ending.is_some() {
                return self.poll_ending(cx);
            }
            let Some(frame) = &mut self.frame else {
                match self.parse_header() {
                    Ok(Some(frame)) => self.frame = Some(frame),
                    Ok(None) => ready!(self.poll_fill(cx))?,
                    Err(why) => self.fail(why),
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
                #[allow(unsafe_code)]
                unsafe {
                    out.assume_init(n)
                };
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
                            self.fail(WsError::TextNotUtf8);
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
                        Err(why) => self.fail(why),
                    }
                }
                // Pongs (and nothing else reaches here) only prove the peer is alive.
                _ => self.control.clear(),
            }
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

impl<T> futures_util::AsyncRead for WsIo<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
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
                Step::Text(text) => this.keep_text(text),
                Step::Closed => return Poll::Ready(Ok(0)),
            }
        }
    }
}
