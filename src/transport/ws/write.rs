//! Writing: binary data gathered into frames built in place, control frames
//! queued in order, and the queue handed to the socket in vectored writes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::ReadBuf;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{MAX_CONTROL, MAX_HEADER, OP_BINARY, OP_CLOSE, apply_mask, encode_header};
use super::read::{Ending, Step};
use super::{Role, WsIo, close_code};
use crate::protocol;

/// Written frame buffers kept for reuse.
const MAX_SPARES: usize = 2;
/// Sealed frames handed to one vectored write.
const MAX_IOVECS: usize = 16;

impl<T> WsIo<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Appends payload to the open binary frame (opening one if needed).
    pub(super) fn append(&mut self, data: &[u8]) {
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
    pub(super) fn seal(&mut self) {
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
    pub(super) fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
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

    pub(super) fn queue_close(&mut self, code: u16, reason: &str) {
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
    pub(super) fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
}

impl<T> futures_util::AsyncWrite for WsIo<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
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
