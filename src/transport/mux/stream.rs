//! One stream: a tokio `AsyncRead + AsyncWrite` ([`StreamIo`]) over the session's
//! shared state, with flow control both ways, and the count of live streams.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use tokio::io::ReadBuf;
use tokio::sync::Notify;

use super::frame::{FIN, HEADER_LEN, RST, SYN, TYPE_DATA, TYPE_WINDOW_UPDATE, put_header};
use super::inner::Inner;
use super::{MAX_DATA_FRAME, OUTPUT_HIGH, Shared, UPDATE_AFTER};
use crate::protocol;

/// Number of live streams of one session, with a wake-up when it reaches zero.
#[derive(Debug, Default)]
pub struct StreamCount {
    n: AtomicUsize,
    zero: Notify,
}

impl StreamCount {
    /// Streams open now.
    pub fn get(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    /// Resolves once no stream is open.
    pub async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Inner {
    pub(super) fn poll_read(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        let ended = self.ended.is_some();
        let Some(st) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut n = 0;
        while buf.remaining() > 0 {
            let Some(chunk) = st.recv.front_mut() else {
                break;
            };
            let take = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..take]);
            chunk.advance(take);
            if chunk.is_empty() {
                st.recv.pop_front();
            }
            n += take;
        }
        if n > 0 {
            st.consumed += n as u32;
            if st.consumed >= UPDATE_AFTER && !st.remote_fin && !st.reset && !ended {
                let delta = st.consumed;
                st.consumed = 0;
                st.recv_window += delta;
                let flags = std::mem::take(&mut st.owed);
                self.queue(TYPE_WINDOW_UPDATE, flags, id, delta);
            }
            return Poll::Ready(Ok(n));
        }
        if st.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the stream was reset",
            )));
        }
        if st.remote_fin {
            return Poll::Ready(Ok(0));
        }
        if ended {
            return Poll::Ready(Err(self.gone()));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(super) fn poll_write(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.ended.is_some() {
            return Poll::Ready(Err(self.gone()));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let out_full = self.out.len() >= OUTPUT_HIGH;
        let Some(st) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if st.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the stream was reset",
            )));
        }
        if st.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was closed for writing",
            )));
        }
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if st.send_window == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if out_full {
            st.write_waker = Some(cx.waker().clone());
            if !st.out_blocked {
                st.out_blocked = true;
                self.out_blocked.push(id);
            }
            return Poll::Pending;
        }
        let n = total.min(st.send_window as usize).min(OUTPUT_HIGH);
        st.send_window -= n as u32;
        let mut flags = std::mem::take(&mut st.owed);
        // Frames of at most MAX_DATA_FRAME, filled from the slices in order.
        let out = &mut self.out;
        let need = n + n.div_ceil(MAX_DATA_FRAME) * HEADER_LEN;
        if out.capacity() - out.len() < need {
            // A fresh buffer (the last one went to the WebSocket) is sized for a
            // whole batch at once rather than grown, and copied, step by step.
            out.reserve(need.max(protocol::WRITE_BATCH));
        }
        let mut left = n;
        let mut slices = bufs.iter().map(|b| &b[..]).filter(|b| !b.is_empty());
        let mut cur: &[u8] = &[];
        while left > 0 {
            let len = left.min(MAX_DATA_FRAME);
            put_header(out, TYPE_DATA, std::mem::take(&mut flags), id, len as u32);
            let mut need = len;
            while need > 0 {
                if cur.is_empty() {
                    match slices.next() {
                        Some(s) => cur = s,
                        None => break,
                    }
                }
                let k = need.min(cur.len());
                out.put_slice(&cur[..k]);
                cur = &cur[k..];
                need -= k;
            }
            left -= len;
        }
        self.wake_driver();
        Poll::Ready(Ok(n))
    }

    pub(super) fn shutdown(&mut self, id: u32) -> io::Result<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        let Some(st) = self.streams.get_mut(&id) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if st.local_fin || st.reset {
            return Ok(());
        }
        st.local_fin = true;
        let flags = FIN | std::mem::take(&mut st.owed);
        self.queue(TYPE_DATA, flags, id, 0);
        Ok(())
    }

    pub(super) fn drop_stream(&mut self, id: u32) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        let finished = st.reset || (st.local_fin && st.remote_fin);
        let never_sent = st.owed & SYN != 0;
        if self.ended.is_none() && !finished && !never_sent {
            self.queue(TYPE_DATA, RST | st.owed, id, 0);
        }
    }
}

/// One stream as a tokio `AsyncRead + AsyncWrite`, counted while it lives.
pub struct StreamIo {
    shared: Arc<Shared>,
    id: u32,
    /// See [`StreamIo::abort_unfinished`].
    abortive: bool,
    /// The peer has finished its side (a read returned the end).
    peer_done: bool,
}

impl StreamIo {
    pub(super) fn new(shared: Arc<Shared>, id: u32) -> Self {
        shared.count.n.fetch_add(1, Ordering::AcqRel);
        StreamIo {
            shared,
            id,
            abortive: false,
            peer_done: false,
        }
    }

    /// Makes a shutdown before the peer has finished do nothing, so that the
    /// stream is reset when dropped instead of half-closed.
    ///
    /// For HTTP connections, which have no use for a half-close: hyper shuts a
    /// connection down when it gives up on it (a client that left in the middle of
    /// a response). With a half-close the agent would go on sending the rest of
    /// the response to nobody until the window is used up.
    pub fn abort_unfinished(&mut self) {
        self.abortive = true;
    }

    /// The stream ID, for logs.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        self.shared.lock().drop_stream(self.id);
        let count = &self.shared.count;
        if count.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            count.zero.notify_waiters();
        }
    }
}

impl tokio::io::AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let id = self.id;
        let r = self.shared.lock().poll_read(id, cx, buf);
        match r {
            Poll::Ready(Ok(0)) => {
                self.peer_done = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for StreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared
            .lock()
            .poll_write(self.id, cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.shared.lock().poll_write(self.id, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are handed to the session task as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.abortive && !self.peer_done {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(self.shared.lock().shutdown(self.id))
    }
}
