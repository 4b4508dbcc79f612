//! The yamux wire protocol (HashiCorp's `spec.md`), implemented here rather than
//! through the `yamux` crate, whose per-frame allocations, channels and
//! round-trip pings were the largest share of the tunnel's CPU that was ours to
//! change (`bench/README.md` has the profiles).
//!
//! One [`Shared`] per session holds every stream's state behind one mutex:
//!
//! - **Writing** appends frames (12-byte header, then the payload) to one output
//!   buffer and wakes the session task, which hands that buffer to the WebSocket
//!   (a large one as it is, a small one copied into the frame being gathered): no
//!   allocation or channel per frame, and a round's frames leave together.
//! - **Reading**: the session task reads the WebSocket into one buffer and parses
//!   frames in place; a payload of 16 KiB or more becomes a `Bytes` slice of that
//!   buffer queued on its stream (no copy, no zero-fill), a smaller one is copied
//!   (so that it cannot pin the buffer), and the stream's reader is woken.
//! - **Limits**: writers wait while 256 KiB of output waits; a peer that asks for
//!   more than 64 KiB of answers (pongs, resets) without reading them is ending
//!   the session.
//! - **Flow control**: each direction of a stream starts with the standard 256 KiB
//!   window. A writer stops when the peer's window is used up; a window update is
//!   sent once half of ours has been read by the application. A peer that sends
//!   beyond its window is a protocol error.
//! - **Opening**: IDs are odd for the client (the gateway), even for the server.
//!   The first frame sent on a stream carries its `SYN` (or `ACK`, answering the
//!   peer's `SYN`), so opening costs nothing on the wire by itself.
//! - **Closing**: shutting a stream down sends `FIN`. Dropping a stream that is not
//!   finished both ways sends `RST`, so the peer stops at once instead of waiting
//!   for window credit that will never come.
//! - Pings are answered; a go-away stops new streams; anything malformed (or a
//!   flood) ends the session with a go-away carrying the protocol-error code.
//!
//! Files: [`frame`] (the header and the errors), `inner` (the session state and the
//! parser), `stream` (one stream's I/O).

mod frame;
mod inner;
mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::BytesMut;
use tokio::sync::Notify;

use self::frame::TYPE_GO_AWAY;
pub use self::frame::{GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, MuxError};
pub(crate) use self::inner::Parser;
use self::inner::{Inner, StreamMap};
pub use self::stream::{StreamCount, StreamIo};
use super::TunnelError;
use crate::protocol;

/// Initial window of each direction of a stream.
pub const WINDOW: u32 = protocol::MUX_WINDOW;
/// A window update is sent once this much has been read since the last one.
pub(crate) const UPDATE_AFTER: u32 = WINDOW / 2;
/// Largest data frame payload sent.
pub const MAX_DATA_FRAME: usize = protocol::WRITE_BATCH / 4;
/// Received payloads smaller than this are copied out of the read buffer rather
/// than kept as slices of it, so that a few bytes left unread on a stream cannot
/// keep a whole read buffer alive (at most 4x the window is ever held this way).
pub(crate) const COPY_BELOW: usize = MAX_DATA_FRAME;
/// Writers wait while this much output is waiting for the session task. Kept
/// well under glibc's mmap threshold, so that the output buffer is recycled
/// heap memory: larger buffers cost page faults on every fill (13 % of the
/// agent's CPU on 1 MiB responses).
pub(crate) const OUTPUT_HIGH: usize = 4 * protocol::WRITE_BATCH;

/// Once the next stream ID passes this, a client session is running out of IDs
/// (2^31 in all): the gateway drains it so that the agent reconnects with a new
/// session well before the last ID, with about half a million streams to spare.
pub(crate) const IDS_LOW_WATER: u32 = u32::MAX - (1 << 20);

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Opens streams, with odd IDs (the gateway).
    Client,
    /// Accepts streams (the agent).
    Server,
}

/// The state of one session, shared by its task and its streams.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    ended: AtomicBool,
    /// No new streams: our drain, or the peer's go-away.
    refusing: AtomicBool,
    count: Arc<StreamCount>,
    /// The stream IDs are running out (see [`IDS_LOW_WATER`]).
    ids_low: AtomicBool,
    ids_low_notify: Notify,
}

impl Shared {
    pub(crate) fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Shared {
            inner: Mutex::new(Inner {
                mode,
                next_id: match mode {
                    Mode::Client => 1,
                    Mode::Server => 2,
                },
                streams: StreamMap::default(),
                out: BytesMut::new(),
                driver: None,
                out_blocked: Vec::new(),
                refuse_new: false,
                ended: None,
                inbound: Vec::new(),
                answers_queued: 0,
            }),
            ended: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            count: Arc::default(),
            ids_low: AtomicBool::new(false),
            ids_low_notify: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent state (no invariant
        // spans an unwinding point), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count(&self) -> &Arc<StreamCount> {
        &self.count
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Opens a stream (client). Its SYN goes out with its first frame.
    pub(crate) fn open(self: &Arc<Self>) -> Result<StreamIo, TunnelError> {
        let mut inner = self.lock();
        let opened = inner.open();
        if inner.refuse_new {
            self.refusing.store(true, Ordering::Release);
        }
        let ids_low = inner.next_id >= IDS_LOW_WATER;
        drop(inner);
        if ids_low && !self.ids_low.swap(true, Ordering::AcqRel) {
            self.ids_low_notify.notify_waiters();
        }
        Ok(StreamIo::new(self.clone(), opened?))
    }

    /// Resolves once the stream IDs are running out: the session should be
    /// drained and closed, so that the peer reconnects with a new one.
    pub(crate) async fn ids_running_out(&self) {
        loop {
            let notified = self.ids_low_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ids_low.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Skips stream IDs, as if that many streams had been opened (tests only).
    #[cfg(test)]
    pub(crate) fn skip_ids_to(&self, next_id: u32) {
        self.lock().next_id = next_id;
    }

    /// Opens nothing new and accepts nothing new.
    pub(crate) fn refuse_new(&self) {
        self.refusing.store(true, Ordering::Release);
        self.lock().refuse_new = true;
    }

    /// Whether new streams are refused (a drain, the peer's go-away, the end).
    pub(crate) fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire) || self.is_ended()
    }

    /// Ends the session: every stream's I/O fails from now on.
    pub(crate) fn end(&self, why: &str) {
        self.ended.store(true, Ordering::Release);
        self.lock().end(why);
    }

    /// Queues a go-away frame.
    pub(crate) fn go_away(&self, code: u32) {
        self.lock().queue(TYPE_GO_AWAY, 0, 0, code);
    }

    /// Registers the session task's waker and takes the output waiting for it.
    pub(crate) fn take_output(&self, waker: &Waker) -> BytesMut {
        let mut inner = self.lock();
        match &inner.driver {
            Some(w) if w.will_wake(waker) => {}
            _ => inner.driver = Some(waker.clone()),
        }
        if inner.out.is_empty() {
            return BytesMut::new();
        }
        inner.answers_queued = 0;
        let Inner {
            out_blocked,
            streams,
            ..
        } = &mut *inner;
        for id in out_blocked.drain(..) {
            if let Some(st) = streams.get_mut(&id) {
                st.out_blocked = false;
                if let Some(w) = st.write_waker.take() {
                    w.wake();
                }
            }
        }
        let out = inner.out.split();
        // Give back memory after a burst rather than keep the largest buffer.
        if inner.out.capacity() > 2 * OUTPUT_HIGH {
            inner.out = BytesMut::new();
        }
        out
    }

    /// Parses received bytes; returns the streams the peer opened.
    pub(crate) fn on_input(
        self: &Arc<Self>,
        buf: &mut BytesMut,
        parser: &mut Parser,
    ) -> Result<Vec<StreamIo>, MuxError> {
        let mut inner = self.lock();
        let result = inner.on_input(buf, parser);
        if inner.refuse_new {
            self.refusing.store(true, Ordering::Release);
        }
        let ids = std::mem::take(&mut inner.inbound);
        drop(inner);
        result?;
        Ok(ids
            .into_iter()
            .map(|id| StreamIo::new(self.clone(), id))
            .collect())
    }
}
