//! A yamux session over a [`WsIo`], driven by one task.
//!
//! The gateway is the yamux client: [`Opener::open`] asks the session task for a
//! new outbound stream. The agent is the server: every stream the gateway opens is
//! handed to its `on_inbound` callback. Both ends share the same driver, which
//! also runs the drain: on shutdown it stops opening streams (the agent first tells
//! the gateway with a `drain` control message), waits until the streams in use are
//! done or the grace period is over, and closes the WebSocket.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::stream_io::StreamCount;
use super::{Signals, StreamIo, WsIo};
use crate::protocol::{self, Control};

type OpenReply = oneshot::Sender<Result<StreamIo, TunnelError>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TunnelError {
    #[error("the agent's session has ended")]
    SessionGone,
    #[error("cannot open a stream to the agent: {0}")]
    Open(String),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer closed it (or went away cleanly).
    Closed,
    /// This end drained and closed it after a shutdown signal.
    Drained { unfinished_streams: usize },
    /// A transport error (reset, heartbeat timeout, protocol violation).
    Failed(String),
}

/// Handle that opens streams on a gateway-side session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Opener {
    tx: mpsc::Sender<OpenReply>,
}

/// The receiving end of an [`Opener`], handed to [`Session::client_with`].
pub struct OpenQueue(mpsc::Receiver<OpenReply>);

impl Opener {
    /// An opener whose session does not exist yet.
    pub fn channel() -> (Opener, OpenQueue) {
        let (tx, rx) = mpsc::channel(64);
        (Opener { tx }, OpenQueue(rx))
    }

    pub async fn open(&self) -> Result<StreamIo, TunnelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(reply)
            .await
            .map_err(|_| TunnelError::SessionGone)?;
        rx.await.map_err(|_| TunnelError::SessionGone)?
    }

    /// Whether the session task has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

type Inbound = Box<dyn FnMut(StreamIo) + Send>;

pub struct Session<T> {
    conn: yamux::Connection<WsIo<T>>,
    open_rx: Option<mpsc::Receiver<OpenReply>>,
    pending_open: Option<OpenReply>,
    on_inbound: Option<Inbound>,
    streams: Arc<StreamCount>,
    signals: Arc<Signals>,
    /// Whether this end tells the peer when it starts draining (the agent does).
    announce_drain: bool,
}

impl<T> Session<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The gateway's end: returns the session and the handle that opens streams.
    pub fn client(io: WsIo<T>, signals: Arc<Signals>) -> (Self, Opener) {
        let (opener, queue) = Opener::channel();
        (Self::client_with(io, signals, queue), opener)
    }

    /// The gateway's end, serving an [`Opener`] made beforehand with
    /// [`Opener::channel`] (streams asked for meanwhile wait in the queue).
    pub fn client_with(io: WsIo<T>, signals: Arc<Signals>, queue: OpenQueue) -> Self {
        Session {
            conn: yamux::Connection::new(io, protocol::yamux_config(), yamux::Mode::Client),
            open_rx: Some(queue.0),
            pending_open: None,
            on_inbound: None,
            streams: Arc::default(),
            signals,
            announce_drain: false,
        }
    }

    /// The agent's end: `on_inbound` receives each stream the gateway opens.
    pub fn server(
        io: WsIo<T>,
        signals: Arc<Signals>,
        on_inbound: impl FnMut(StreamIo) + Send + 'static,
    ) -> Self {
        Session {
            conn: yamux::Connection::new(io, protocol::yamux_config(), yamux::Mode::Server),
            open_rx: None,
            pending_open: None,
            on_inbound: Some(Box::new(on_inbound)),
            streams: Arc::default(),
            signals,
            announce_drain: true,
        }
    }

    /// Live streams of this session.
    pub fn stream_count(&self) -> Arc<StreamCount> {
        self.streams.clone()
    }

    /// Drives the session until the peer closes it, it fails, or `stop` resolves
    /// and the drain (bounded by `grace`) completes.
    pub async fn run(mut self, stop: impl Future<Output = ()>, grace: Duration) -> SessionEnd {
        let signals = self.signals.clone();
        tokio::select! {
            end = self.drive_until_end() => return end,
            _ = stop => {}
        }
        // Draining: open nothing new, let streams in use finish.
        self.open_rx = None;
        if let Some(reply) = self.pending_open.take() {
            let _ = reply.send(Err(TunnelError::SessionGone));
        }
        if self.announce_drain {
            signals.send_control(&Control::Drain);
        }
        let streams = self.streams.clone();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                end = self.drive_until_end() => return end,
                _ = streams.wait_zero() => break,
                _ = &mut deadline => break,
                _ = signals.kicked() => {}
            }
        }
        let unfinished_streams = streams.get();
        let conn = &mut self.conn;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| conn.poll_close(cx))).await;
        SessionEnd::Drained { unfinished_streams }
    }

    async fn drive_until_end(&mut self) -> SessionEnd {
        let signals = self.signals.clone();
        loop {
            tokio::select! {
                end = poll_fn(|cx| self.poll_drive(cx)) => return end,
                // A control message was queued: poll again so it is written.
                _ = signals.kicked() => {}
            }
        }
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        // Requests to open streams (gateway side).
        loop {
            if self.pending_open.is_none() {
                let Some(rx) = self.open_rx.as_mut() else {
                    break;
                };
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => self.pending_open = Some(reply),
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            let Some(reply) = self.pending_open.take() else {
                break;
            };
            if reply.is_closed() {
                continue; // the requester gave up (client went away)
            }
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    let _ = reply.send(Ok(StreamIo::new(stream, self.streams.clone())));
                }
                Poll::Ready(Err(e)) => {
                    let _ = reply.send(Err(TunnelError::Open(e.to_string())));
                    return Poll::Ready(SessionEnd::Failed(e.to_string()));
                }
                Poll::Pending => {
                    self.pending_open = Some(reply);
                    break;
                }
            }
        }
        // Drive the connection: frames in and out, inbound streams.
        loop {
            match self.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => match self.on_inbound.as_mut() {
                    Some(handle) => handle(StreamIo::new(stream, self.streams.clone())),
                    None => drop(stream), // the agent may not open streams
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(SessionEnd::Failed(e.to_string())),
                Poll::Ready(None) => return Poll::Ready(SessionEnd::Closed),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
