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
}

impl StreamIo {
    pub fn new(inner: yamux::Stream, count: Arc<StreamCount>) -> Self {
        count.n.fetch_add(1, Ordering::AcqRel);
        StreamIo {
            inner,
            pending: None,
            count,
        }
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
                // End of stream or an error after some data: hand over what we
                // have; the next read reports the end (or fails again).
                Poll::Ready(_) => break,
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
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
