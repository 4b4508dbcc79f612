//! A WebSocket seen as one ordered byte stream (futures `AsyncRead + AsyncWrite`),
//! which is what yamux runs on.
//!
//! - Writes are gathered into binary messages of up to [`protocol::WRITE_BATCH`].
//! - Flushes are deferred: yamux flushes after every frame, which would mean one
//!   `send` per frame. Here `poll_flush` only queues the message; the real flush
//!   happens when the reader finds nothing more to read, i.e. once per round of
//!   work. yamux polls the socket for reading at the end of every round, so data
//!   never waits longer than that.
//! - Pings go out every heartbeat interval; if nothing at all arrives for three
//!   intervals the stream fails with `TimedOut` (a dead peer or a half-open TCP).
//! - Text messages are control messages ([`protocol::Control`]); they surface
//!   through the shared [`Signals`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite};
use tokio::sync::Notify;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::protocol::{self, Control};

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
        if let Ok(text) = serde_json::to_string(c)
            && let Ok(mut slot) = self.outgoing.lock()
        {
            *slot = Some(text);
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
    last_seen: Instant,
    period: Duration,
}

pub struct WsIo<T> {
    ws: WebSocketStream<T>,
    read_buf: Bytes,
    write_buf: BytesMut,
    flush_pending: bool,
    close_sent: bool,
    close_code: CloseCode,
    heartbeat: Option<Heartbeat>,
    signals: Arc<Signals>,
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(e) => e,
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::other(other),
    }
}

impl<T> WsIo<T>
where
    T: TokioRead + TokioWrite + Unpin,
{
    /// `heartbeat`: ping interval (None: never ping, never time out). `close_code`
    /// is sent when this end closes the session.
    pub fn new(
        ws: WebSocketStream<T>,
        heartbeat: Option<Duration>,
        close_code: CloseCode,
        signals: Arc<Signals>,
    ) -> Self {
        let heartbeat = heartbeat.map(|period| {
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Heartbeat {
                ticker,
                last_seen: Instant::now(),
                period,
            }
        });
        WsIo {
            ws,
            read_buf: Bytes::new(),
            // Allocated on first write: an idle session should cost little.
            write_buf: BytesMut::new(),
            flush_pending: false,
            close_sent: false,
            close_code,
            heartbeat,
            signals,
        }
    }

    /// Moves gathered bytes into one binary message.
    fn poll_send_buffer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        let msg = Message::Binary(self.write_buf.split().freeze());
        Pin::new(&mut self.ws).start_send(msg).map_err(ws_err)?;
        self.flush_pending = true;
        Poll::Ready(Ok(()))
    }

    /// Pings when due; fails when the peer has been silent for three intervals.
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
        if hb.last_seen.elapsed() > hb.period * 3 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer silent for {:?} (three heartbeat intervals)",
                    hb.last_seen.elapsed()
                ),
            ));
        }
        if Pin::new(&mut self.ws).poll_ready(cx).is_ready() {
            Pin::new(&mut self.ws)
                .start_send(Message::Ping(Bytes::new()))
                .map_err(ws_err)?;
            self.flush_pending = true;
        }
        Ok(())
    }

    fn poll_control_out(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let pending = self
            .signals
            .outgoing
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(text) = pending {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(r) => {
                    r.map_err(ws_err)?;
                    Pin::new(&mut self.ws)
                        .start_send(Message::Text(text.into()))
                        .map_err(ws_err)?;
                    self.flush_pending = true;
                }
                Poll::Pending => {
                    if let Ok(mut slot) = self.signals.outgoing.lock() {
                        slot.get_or_insert(text);
                    }
                }
            }
        }
        Ok(())
    }

    fn on_text(&self, text: &str) {
        match serde_json::from_str::<Control>(text) {
            Ok(Control::Drain) => {
                self.signals.drain_received.store(true, Ordering::Release);
                self.signals.drained.notify_waiters();
            }
            Err(_) => tracing::debug!(message = %text, "ignoring unknown control message"),
        }
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
        loop {
            if !this.read_buf.is_empty() {
                let n = buf.len().min(this.read_buf.len());
                buf[..n].copy_from_slice(&this.read_buf[..n]);
                this.read_buf.advance(n);
                return Poll::Ready(Ok(n));
            }
            this.poll_heartbeat(cx)?;
            this.poll_control_out(cx)?;
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(msg))) => {
                    if let Some(hb) = &mut this.heartbeat {
                        hb.last_seen = Instant::now();
                    }
                    match msg {
                        Message::Binary(b) => this.read_buf = b,
                        Message::Text(t) => this.on_text(t.as_str()),
                        // tungstenite queues the pong; make sure it is flushed.
                        Message::Ping(_) => this.flush_pending = true,
                        Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(_) => return Poll::Ready(Ok(0)),
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ws_err(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Pending => {
                    // Nothing more to read in this round: now is the time to flush
                    // everything written during it.
                    if this.flush_pending {
                        match Pin::new(&mut this.ws).poll_flush(cx) {
                            Poll::Ready(Ok(())) => this.flush_pending = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(ws_err(e))),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
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
        if this.write_buf.len() >= protocol::WRITE_BATCH {
            ready!(this.poll_send_buffer(cx))?;
        }
        let n = buf.len().min(protocol::WRITE_BATCH - this.write_buf.len());
        this.write_buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Deferred: see the module docs.
        self.get_mut().poll_send_buffer(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffer(cx))?;
        if !this.close_sent {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_err)?;
            let frame = CloseFrame {
                code: this.close_code,
                reason: match this.close_code {
                    CloseCode::Away => "going away".into(),
                    _ => "".into(),
                },
            };
            // An error here means the peer is already gone: nothing left to close.
            let _ = Pin::new(&mut this.ws).start_send(Message::Close(Some(frame)));
            this.close_sent = true;
        }
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                tracing::debug!(error = %e, "closing websocket");
                Poll::Ready(Ok(()))
            }
        }
    }
}
