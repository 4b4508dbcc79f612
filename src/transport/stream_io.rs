//! One yamux stream as a tokio `AsyncRead + AsyncWrite`, counted while it lives.
//!
//! Reads are capped at [`MAX_READ`]: the caller's unfilled buffer is initialised
//! before each read, and hyper offers several hundred KiB; zero-filling all of it
//! on every read cost ~10 % on large bodies (PERFORMANCE.md).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use futures_util::{AsyncRead, AsyncWrite};
use tokio::io::ReadBuf;
use tokio::sync::Notify;

/// Largest read handed to yamux at once.
pub const MAX_READ: usize = 64 * 1024;

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
    count: Arc<StreamCount>,
}

impl StreamIo {
    pub fn new(inner: yamux::Stream, count: Arc<StreamCount>) -> Self {
        count.n.fetch_add(1, Ordering::AcqRel);
        StreamIo { inner, count }
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
        let want = buf.remaining().min(MAX_READ);
        let slice = buf.initialize_unfilled_to(want);
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, slice))?;
        buf.advance(n);
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
