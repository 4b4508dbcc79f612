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

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::ReadBuf;
use tokio::sync::Notify;

use super::TunnelError;
use crate::protocol;

const HEADER_LEN: usize = 12;
const VERSION: u8 = 0;

const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const TYPE_PING: u8 = 2;
const TYPE_GO_AWAY: u8 = 3;

const SYN: u16 = 1;
const ACK: u16 = 2;
const FIN: u16 = 4;
const RST: u16 = 8;

/// Go-away codes.
pub const GO_AWAY_NORMAL: u32 = 0;
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;

/// Initial window of each direction of a stream.
pub const WINDOW: u32 = protocol::MUX_WINDOW;
/// A window update is sent once this much has been read since the last one.
const UPDATE_AFTER: u32 = WINDOW / 2;
/// Largest data frame payload sent.
pub const MAX_DATA_FRAME: usize = protocol::WRITE_BATCH / 4;
/// Largest frame body accepted.
const MAX_FRAME_BODY: u32 = protocol::MAX_MESSAGE as u32;
/// Received payloads smaller than this are copied out of the read buffer rather
/// than kept as slices of it, so that a few bytes left unread on a stream cannot
/// keep a whole read buffer alive (at most 4x the window is ever held this way).
const COPY_BELOW: usize = MAX_DATA_FRAME;
/// Answers the peer asked for (pongs, resets of refused streams) that may wait
/// while the WebSocket takes nothing: a peer that sends more such requests
/// without reading is flooding us, and the session ends.
const MAX_ANSWERS_QUEUED: usize = 64 * 1024;
/// Writers wait while this much output is waiting for the session task. Kept
/// well under glibc's mmap threshold, so that the output buffer is recycled
/// heap memory: larger buffers cost page faults on every fill (13 % of the
/// agent's CPU on 1 MiB responses).
const OUTPUT_HIGH: usize = 4 * protocol::WRITE_BATCH;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Opens streams, with odd IDs (the gateway).
    Client,
    /// Accepts streams (the agent).
    Server,
}

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

#[derive(Default)]
struct StreamState {
    /// Received payloads not yet read.
    recv: VecDeque<Bytes>,
    /// What the peer may still send before our next window update.
    recv_window: u32,
    /// Read by the application since our last window update.
    consumed: u32,
    /// What we may still send.
    send_window: u32,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Flags owed on the next frame we send on this stream (SYN or ACK).
    owed: u16,
    /// We sent FIN.
    local_fin: bool,
    /// The peer sent FIN.
    remote_fin: bool,
    /// RST was sent or received.
    reset: bool,
    /// The writer waits for the output to drain (listed in `Inner::out_blocked`).
    out_blocked: bool,
}

impl StreamState {
    fn new(owed: u16) -> Self {
        StreamState {
            recv_window: WINDOW,
            send_window: WINDOW,
            owed,
            ..Default::default()
        }
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// A data frame whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
pub struct Partial {
    /// None: the payload is discarded (unknown or refused stream).
    id: Option<u32>,
    remaining: u32,
    flags: u16,
}

/// The driver's parsing state between reads.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Option<Partial>,
}

/// Hashes stream IDs (small, distinct integers) with a multiplication; the
/// default SipHash showed in the profile.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Folded so that the low bits (the bucket) vary too: all client IDs are odd.
        let x = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }
}

type StreamMap = HashMap<u32, StreamState, std::hash::BuildHasherDefault<IdHasher>>;

struct Inner {
    mode: Mode,
    next_id: u32,
    streams: StreamMap,
    /// Frames waiting for the session task.
    out: BytesMut,
    /// The session task, to wake when there is output.
    driver: Option<Waker>,
    /// Streams whose writer waits for `out` to drain.
    out_blocked: Vec<u32>,
    /// Open nothing new, accept nothing new (drain, or the peer's go-away).
    refuse_new: bool,
    /// Why the session ended, once it has.
    ended: Option<String>,
    /// Streams the peer opened, not yet handed to the application.
    inbound: Vec<u32>,
    /// Bytes of answers queued since the session task last took the output.
    answers_queued: usize,
}

/// The state of one session, shared by its task and its streams.
pub struct Shared {
    inner: Mutex<Inner>,
    ended: AtomicBool,
    /// No new streams: our drain, or the peer's go-away.
    refusing: AtomicBool,
    count: Arc<StreamCount>,
}

fn put_header(out: &mut BytesMut, ty: u8, flags: u16, id: u32, len: u32) {
    if out.capacity() - out.len() < HEADER_LEN {
        // Room for a round's small frames at once, rather than growing by steps.
        out.reserve(4096);
    }
    out.put_u8(VERSION);
    out.put_u8(ty);
    out.put_u16(flags);
    out.put_u32(id);
    out.put_u32(len);
}

impl Inner {
    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    fn queue(&mut self, ty: u8, flags: u16, id: u32, len: u32) {
        put_header(&mut self.out, ty, flags, id, len);
        self.wake_driver();
    }

    /// Queues a frame the peer asked for; fails once too many wait.
    fn answer(&mut self, ty: u8, flags: u16, id: u32, len: u32) -> Result<(), String> {
        self.answers_queued += HEADER_LEN;
        if self.answers_queued > MAX_ANSWERS_QUEUED {
            return Err(format!(
                "the peer asked for more than {MAX_ANSWERS_QUEUED} bytes of answers (pings, \
                 refused streams) without reading them"
            ));
        }
        self.queue(ty, flags, id, len);
        Ok(())
    }

    fn end(&mut self, why: &str) {
        if self.ended.is_none() {
            self.ended = Some(why.to_owned());
        }
        self.refuse_new = true;
        // Nothing will be sent any more: free the output now rather than when
        // the last handle goes. (What was received stays readable.)
        self.out = BytesMut::new();
        for st in self.streams.values_mut() {
            st.wake_all();
        }
        self.out_blocked.clear();
        self.inbound.clear();
    }

    fn gone(&self) -> io::Error {
        let why = self.ended.as_deref().unwrap_or("closed");
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the tunnel session ended: {why}"),
        )
    }

    /// Parses the frames in `buf`, leaving an incomplete header there.
    fn on_input(&mut self, buf: &mut BytesMut, parser: &mut Parser) -> Result<(), String> {
        loop {
            if let Some(p) = &mut parser.partial {
                if buf.is_empty() {
                    return Ok(());
                }
                let n = (p.remaining as usize).min(buf.len());
                let chunk = if n < COPY_BELOW {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    buf.advance(n);
                    chunk
                } else {
                    buf.split_to(n).freeze()
                };
                p.remaining -= n as u32;
                let p = *p;
                if let Some(st) = p.id.and_then(|id| self.streams.get_mut(&id))
                    && !st.reset
                {
                    st.recv.push_back(chunk);
                    if let Some(w) = st.read_waker.take() {
                        w.wake();
                    }
                }
                if p.remaining == 0 {
                    parser.partial = None;
                    if let Some(id) = p.id {
                        self.on_end_flags(id, p.flags);
                    }
                }
                continue;
            }
            if buf.len() < HEADER_LEN {
                return Ok(());
            }
            let version = buf[0];
            let ty = buf[1];
            let flags = u16::from_be_bytes([buf[2], buf[3]]);
            let id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
            if version != VERSION {
                return Err(format!("unsupported yamux version {version}"));
            }
            buf.advance(HEADER_LEN);
            match ty {
                TYPE_DATA | TYPE_WINDOW_UPDATE => {
                    if id == 0 {
                        return Err("stream frame for stream 0".into());
                    }
                    let known = self.on_open_flags(id, flags)?;
                    if ty == TYPE_DATA {
                        if len > MAX_FRAME_BODY {
                            return Err(format!("data frame of {len} bytes (at most 1 MiB)"));
                        }
                        let mut target = None;
                        if known && let Some(st) = self.streams.get_mut(&id) {
                            if len > st.recv_window {
                                return Err(format!(
                                    "stream {id} sent {len} bytes with {} left in its window",
                                    st.recv_window
                                ));
                            }
                            st.recv_window -= len;
                            target = Some(id);
                        }
                        if len > 0 {
                            parser.partial = Some(Partial {
                                id: target,
                                remaining: len,
                                flags,
                            });
                            continue;
                        }
                    } else if known && let Some(st) = self.streams.get_mut(&id) {
                        st.send_window = st.send_window.saturating_add(len);
                        if let Some(w) = st.write_waker.take() {
                            w.wake();
                        }
                    }
                    if known {
                        self.on_end_flags(id, flags);
                    }
                }
                TYPE_PING => {
                    if flags & SYN != 0 {
                        self.answer(TYPE_PING, ACK, 0, len)?;
                    }
                }
                TYPE_GO_AWAY => {
                    // No new streams; those open may finish.
                    self.refuse_new = true;
                    if len != GO_AWAY_NORMAL {
                        tracing::debug!(code = len, "the peer sent a go-away with an error");
                    }
                }
                _ => return Err(format!("unknown yamux frame type {ty}")),
            }
        }
    }

    /// Handles SYN: a new stream from the peer. Returns whether frames for `id`
    /// concern a stream we keep (false: ignore them).
    fn on_open_flags(&mut self, id: u32, flags: u16) -> Result<bool, String> {
        if flags & SYN == 0 {
            return Ok(self.streams.contains_key(&id));
        }
        if self.streams.contains_key(&id) {
            return Err(format!("stream {id} opened twice"));
        }
        let theirs = match self.mode {
            Mode::Server => id % 2 == 1,
            Mode::Client => false, // the agent must not open streams
        };
        if !theirs || self.refuse_new || self.streams.len() >= protocol::MAX_STREAMS {
            self.answer(TYPE_DATA, RST, id, 0)?;
            return Ok(false);
        }
        self.streams.insert(id, StreamState::new(ACK));
        self.inbound.push(id);
        Ok(true)
    }

    /// Handles FIN and RST, which take effect after the frame's payload.
    fn on_end_flags(&mut self, id: u32, flags: u16) {
        if flags & (FIN | RST) == 0 {
            return;
        }
        if let Some(st) = self.streams.get_mut(&id) {
            if flags & RST != 0 {
                st.reset = true;
            } else {
                st.remote_fin = true;
            }
            st.wake_all();
        }
    }

    fn open(&mut self) -> Result<u32, TunnelError> {
        if self.ended.is_some() || self.refuse_new {
            return Err(TunnelError::SessionGone);
        }
        if self.streams.len() >= protocol::MAX_STREAMS {
            return Err(TunnelError::Open(format!(
                "{} streams are open, the most a session allows",
                protocol::MAX_STREAMS
            )));
        }
        let id = self.next_id;
        let Some(next) = id.checked_add(2) else {
            // After 2^31 streams: the agent must reconnect to get more.
            self.refuse_new = true;
            return Err(TunnelError::Open(
                "the session has used up its stream IDs".into(),
            ));
        };
        self.next_id = next;
        self.streams.insert(id, StreamState::new(SYN));
        Ok(id)
    }

    fn poll_read(
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

    fn poll_write(
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

    fn shutdown(&mut self, id: u32) -> io::Result<()> {
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

    fn drop_stream(&mut self, id: u32) {
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

impl Shared {
    pub fn new(mode: Mode) -> Arc<Self> {
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
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent state (no invariant
        // spans an unwinding point), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self) -> &Arc<StreamCount> {
        &self.count
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Opens a stream (client). Its SYN goes out with its first frame.
    pub fn open(self: &Arc<Self>) -> Result<StreamIo, TunnelError> {
        let mut inner = self.lock();
        let opened = inner.open();
        if inner.refuse_new {
            self.refusing.store(true, Ordering::Release);
        }
        drop(inner);
        Ok(StreamIo::new(self.clone(), opened?))
    }

    /// Opens nothing new and accepts nothing new.
    pub fn refuse_new(&self) {
        self.refusing.store(true, Ordering::Release);
        self.lock().refuse_new = true;
    }

    /// Whether new streams are refused (a drain, the peer's go-away, the end).
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire) || self.is_ended()
    }

    /// Ends the session: every stream's I/O fails from now on.
    pub fn end(&self, why: &str) {
        self.ended.store(true, Ordering::Release);
        self.lock().end(why);
    }

    /// Queues a go-away frame.
    pub fn go_away(&self, code: u32) {
        self.lock().queue(TYPE_GO_AWAY, 0, 0, code);
    }

    /// Registers the session task's waker and takes the output waiting for it.
    pub fn take_output(&self, waker: &Waker) -> BytesMut {
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
    pub fn on_input(
        self: &Arc<Self>,
        buf: &mut BytesMut,
        parser: &mut Parser,
    ) -> Result<Vec<StreamIo>, String> {
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
    fn new(shared: Arc<Shared>, id: u32) -> Self {
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
