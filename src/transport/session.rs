//! A yamux session ([`super::mux`]) over a [`WsIo`], driven by one task, and the
//! session's control messages.
//!
//! The gateway is the yamux client: [`SessionHandle::open`] opens a stream at once
//! (its frames wait for the session task if it is not running yet). The agent is
//! the server: every stream the gateway opens is handed to its `on_inbound`
//! callback. Both ends share the same driver, which also runs the drain: on
//! shutdown it stops opening streams (the agent first tells the gateway with a
//! `drain` control message), waits until the streams in use are done or the grace
//! period is over, then sends a go-away and closes the WebSocket.
//!
//! Control messages are the WebSocket's text messages ([`Control`]): the codec
//! hands them over as text, the session acts on them. The gateway learns of an
//! agent's drain through its [`SessionHandle`].

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::AsyncWrite as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::handle::{OpenQueue, Peer, SessionHandle};
use super::mux::{self, Mode, Parser, Shared, StreamCount};
use super::{StreamIo, WsIo};
use crate::protocol::Control;

/// Why a stream could not be opened.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TunnelError {
    /// The session has ended, or takes no new streams.
    #[error("the agent's session has ended")]
    SessionGone,
    /// The session is at one of its limits.
    #[error("cannot open a stream to the agent: {0}")]
    Open(String),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer closed it (or went away cleanly).
    Closed,
    /// This end drained and closed it after a shutdown signal.
    Drained {
        /// Streams still open when the grace period ended.
        unfinished_streams: usize,
    },
    /// A transport error (reset, heartbeat timeout, protocol violation).
    Failed(String),
}

type Inbound = Box<dyn FnMut(StreamIo) + Send>;

/// Bytes read from the WebSocket at a time, at most.
const READ_CHUNK: usize = 64 * 1024;
/// Output at least this large is handed to the WebSocket as it is; smaller
/// output is copied into the frame being gathered.
const OWNED_WRITE_MIN: usize = 16 * 1024;
/// Bounds the closing handshake: a peer that reads nothing cannot hold us.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads handled in one go before the task yields to others.
const READ_BUDGET: usize = 16;

/// The driver of one session; see the module docs.
pub struct Session<T> {
    ws: WsIo<T>,
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    /// Keeps the handle's end alive while the session runs (client).
    _queue: Option<OpenQueue>,
    /// Received bytes not yet parsed, and the parser's state.
    rbuf: BytesMut,
    parser: Parser,
    /// The WebSocket's idle ticks when last looked at.
    idle_ticks_seen: u64,
    /// Output taken from the streams, not yet accepted by the WebSocket.
    wpending: BytesMut,
    on_inbound: Option<Inbound>,
    /// Whether this end tells the peer when it starts draining (the agent does).
    announce_drain: bool,
    /// The peer broke the protocol: the session closes after its go-away.
    protocol_error: bool,
}

impl<T> Drop for Session<T> {
    fn drop(&mut self) {
        self.shared.end("the session task ended");
    }
}

impl<T> Session<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The gateway's end: returns the session and the handle that opens streams.
    pub fn client(io: WsIo<T>) -> (Self, SessionHandle) {
        let (handle, queue) = SessionHandle::channel();
        (Self::client_with(io, queue), handle)
    }

    /// The gateway's end, serving a [`SessionHandle`] made beforehand with
    /// [`SessionHandle::channel`] (streams opened meanwhile start now).
    pub fn client_with(io: WsIo<T>, queue: OpenQueue) -> Self {
        Session {
            ws: io,
            shared: queue.shared().clone(),
            peer: queue.peer().clone(),
            _queue: Some(queue),
            rbuf: BytesMut::new(),
            parser: Parser::default(),
            idle_ticks_seen: 0,
            wpending: BytesMut::new(),
            on_inbound: None,
            announce_drain: false,
            protocol_error: false,
        }
    }

    /// The agent's end: `on_inbound` receives each stream the gateway opens.
    pub fn server(io: WsIo<T>, on_inbound: impl FnMut(StreamIo) + Send + 'static) -> Self {
        Session {
            ws: io,
            shared: Shared::new(Mode::Server),
            peer: Arc::default(),
            _queue: None,
            rbuf: BytesMut::new(),
            parser: Parser::default(),
            idle_ticks_seen: 0,
            wpending: BytesMut::new(),
            on_inbound: Some(Box::new(on_inbound)),
            announce_drain: true,
            protocol_error: false,
        }
    }

    /// Live streams of this session.
    pub fn stream_count(&self) -> Arc<StreamCount> {
        self.shared.count().clone()
    }

    /// Drives the session until the peer closes it, it fails, or `stop` resolves
    /// and the drain (bounded by `grace`) completes.
    pub async fn run(mut self, stop: impl Future<Output = ()>, grace: Duration) -> SessionEnd {
        let end = self.run_inner(stop, grace).await;
        let why = match &end {
            SessionEnd::Closed => "the peer closed it".to_owned(),
            SessionEnd::Drained { .. } => "drained".to_owned(),
            SessionEnd::Failed(why) => why.clone(),
        };
        self.shared.end(&why);
        end
    }

    async fn run_inner(&mut self, stop: impl Future<Output = ()>, grace: Duration) -> SessionEnd {
        tokio::select! {
            end = self.drive_until_end() => return end,
            _ = stop => {}
        }
        // Draining: open nothing new, let streams in use finish.
        self.shared.refuse_new();
        if self.announce_drain {
            self.ws.queue_text(&Control::Drain.to_text());
        }
        let streams = self.shared.count().clone();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        tokio::select! {
            end = self.drive_until_end() => return end,
            _ = streams.wait_zero() => {}
            _ = &mut deadline => {}
        }
        let unfinished_streams = streams.get();
        self.shared.go_away(mux::GO_AWAY_NORMAL);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, poll_fn(|cx| self.poll_close(cx))).await;
        SessionEnd::Drained { unfinished_streams }
    }

    async fn drive_until_end(&mut self) -> SessionEnd {
        let end = poll_fn(|cx| {
            let polled = self.poll_drive(cx);
            // Texts arrive only while the WebSocket is read, which is here; the
            // heartbeat ticks here too.
            self.on_control_messages();
            self.peer
                .silent
                .store(self.ws.peer_silent(), Ordering::Relaxed);
            polled
        })
        .await;
        if self.protocol_error {
            // The go-away says why; the peer gets it before the close.
            let close = poll_fn(|cx| self.poll_close(cx));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
        }
        end
    }

    /// Hands the streams' output to the WebSocket, as much as it takes now.
    /// Returns whether anything was written.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Result<bool, String> {
        let mut wrote = false;
        loop {
            if self.wpending.is_empty() {
                self.wpending = self.shared.take_output(cx.waker());
                if self.wpending.is_empty() {
                    break;
                }
            }
            let written = if self.wpending.len() >= OWNED_WRITE_MIN {
                // Large: the WebSocket sends this buffer itself (no copy).
                match self.ws.poll_send_owned(cx, &mut self.wpending) {
                    Poll::Ready(r) => r.map(|()| 0),
                    Poll::Pending => break,
                }
            } else {
                match Pin::new(&mut self.ws).poll_write(cx, &self.wpending) {
                    Poll::Ready(r) => r,
                    Poll::Pending => break,
                }
            };
            match written {
                Ok(n) => {
                    self.wpending.advance(n);
                    wrote = true;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if wrote {
            // Closes the WebSocket frame; the socket is written before the next
            // read (see `transport::ws`).
            let _ = Pin::new(&mut self.ws).poll_flush(cx);
        }
        Ok(wrote)
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        for _ in 0..READ_BUDGET {
            if let Err(why) = self.poll_output(cx) {
                return Poll::Ready(SessionEnd::Failed(why));
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                // Allocated once data is coming, so that an idle session holds
                // no buffer; kept between reads while data flows.
                match self.ws.poll_data_ready(cx) {
                    Poll::Ready(Ok(true)) => self.rbuf.reserve(READ_CHUNK),
                    Poll::Ready(Ok(false)) => return Poll::Ready(SessionEnd::Closed),
                    Poll::Ready(Err(e)) => return Poll::Ready(SessionEnd::Failed(e.to_string())),
                    Poll::Pending => {
                        self.release_if_idle();
                        return Poll::Pending;
                    }
                }
            }
            let mut reader = Reader(&mut self.ws);
            match tokio_util::io::poll_read_buf(Pin::new(&mut reader), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(SessionEnd::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(SessionEnd::Failed(e.to_string())),
                Poll::Pending => {
                    self.release_if_idle();
                    return Poll::Pending;
                }
            }
            match self.shared.on_input(&mut self.rbuf, &mut self.parser) {
                Ok(inbound) => {
                    for stream in inbound {
                        match self.on_inbound.as_mut() {
                            Some(handle) => handle(stream),
                            None => drop(stream),
                        }
                    }
                }
                Err(why) => {
                    self.shared.go_away(mux::GO_AWAY_PROTOCOL_ERROR);
                    self.protocol_error = true;
                    return Poll::Ready(SessionEnd::Failed(format!("yamux protocol error: {why}")));
                }
            }
        }
        // Let other tasks run; come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Acts on the control messages that arrived.
    fn on_control_messages(&mut self) {
        while let Some(text) = self.ws.take_text() {
            match Control::parse(&text) {
                Some(Control::Drain) => {
                    self.peer.draining.store(true, Ordering::Release);
                    self.peer.drained.notify_waiters();
                }
                None => tracing::debug!(message = %text, "ignoring unknown control message"),
            }
        }
    }

    /// Frees the read buffer once the WebSocket has seen a heartbeat interval
    /// without data (freeing it at every pause would allocate it again for every
    /// message).
    fn release_if_idle(&mut self) {
        let ticks = self.ws.idle_ticks();
        if ticks != self.idle_ticks_seen {
            self.idle_ticks_seen = ticks;
            if self.rbuf.is_empty() {
                self.rbuf = BytesMut::new();
            }
        }
    }

    /// Writes the remaining output, then closes the WebSocket.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.poll_output(cx).is_err() {
            return Poll::Ready(());
        }
        if !self.wpending.is_empty() {
            // The socket is full; the WebSocket wakes us once it can write.
            return Poll::Pending;
        }
        let _ = std::task::ready!(futures_util::AsyncWrite::poll_close(
            Pin::new(&mut self.ws),
            cx
        ));
        Poll::Ready(())
    }
}

/// The WebSocket as a tokio `AsyncRead`, for `poll_read_buf`.
struct Reader<'a, T>(&'a mut WsIo<T>);

impl<T> AsyncRead for Reader<'_, T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().0.poll_read_into(cx, buf)
    }
}
