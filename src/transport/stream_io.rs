//! One yamux stream as a tokio `AsyncRead + AsyncWrite`, counted while it lives.
//!
//! Reads take yamux's received frames whole (its `Stream` impl hands out each
//! frame's buffer without copying) and copy them into the caller's buffer with
//! `put_slice`, which needs no initialised memory. yamux's own `AsyncRead` wants an
//! initialised `&mut [u8]`, and hyper offers fresh uninitialised capacity on every
//! read, so going through it zero-filled up to 64 KiB per read: 12 % of the
//! gateway's CPU on 1 MiB bodies.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::{AsyncWrite, StreamExt};
use tokio::io::ReadBuf;
use tokio::sync::Notify;

/// Number of live streams of one session, with a wake-up when it reaches zero.
#[derive(Debug, Default)]
pub struct StreamCount {
    n: AtomicUsize,
    zero: Notify,
}

impl StreamCount {
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

pub struct StreamIo {
    inner: yamux::Stream,
    /// A received frame not yet fully read, and how much of it was.
    pending: Option<(yamux::Packet, usize)>,
    count: Arc<StreamCount>,
    /// See [`StreamIo::abort_unfinished`].
    abortive: bool,
    /// The peer has closed its side (a read returned the end).
    peer_done: bool,
}

impl StreamIo {
    pub fn new(inner: yamux::Stream, count: Arc<StreamCount>) -> Self {
        count.n.fetch_add(1, Ordering::AcqRel);
        StreamIo {
            inner,
            pending: None,
            count,
            abortive: false,
            peer_done: false,
        }
    }

    /// Makes a shutdown before the peer has finished abort the stream instead of
    /// half-closing it: the stream is then reset when dropped.
    ///
    /// For HTTP connections, which have no use for a half-close: hyper shuts a
    /// connection down when it gives up on it (a client that left in the middle of
    /// a response). A half-close would leave the agent still sending the rest of
    /// the response, which nobody reads any more; once the flow-control window is
    /// used up it would wait forever for credit (yamux does not reset a stream that
    /// was closed and dropped), holding the stream and the upstream connection.
    pub fn abort_unfinished(&mut self) {
        self.abortive = true;
    }

    /// The yamux stream ID, for logs.
    pub fn id(&self) -> u32 {
        self.inner.id().val()
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        if self.count.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.count.zero.notify_waiters();
        }
    }
}

impl tokio::io::AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let start = buf.filled().len();
        // Fill the caller's buffer from as many received frames as are ready: one
        // frame per read would multiply hyper's read iterations on large bodies.
        while buf.remaining() > 0 {
            if let Some((packet, pos)) = &mut this.pending {
                let data = &packet.as_ref()[*pos..];
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                *pos += n;
                if *pos == packet.as_ref().len() {
                    this.pending = None;
                }
                continue;
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(packet))) => {
                    if !packet.as_ref().is_empty() {
                        this.pending = Some((packet, 0));
                    }
                }
                Poll::Ready(Some(Err(e))) if buf.filled().len() == start => {
                    return Poll::Ready(Err(e));
                }
                // The end (after some data or not: the next read reports it
                // again), or an error after some data: hand over what we have.
                Poll::Ready(None) => {
                    this.peer_done = true;
                    break;
                }
                Poll::Ready(Some(Err(_))) => break,
                Poll::Pending if buf.filled().len() == start => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for StreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.abortive && !self.peer_done {
            // No FIN: dropping the stream resets it (see `abort_unfinished`).
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
