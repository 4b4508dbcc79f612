//! Model-based test of the multiplexer (`gateway::transport::mux`, driven by
//! `Session`): random interleavings of open, write, read, shutdown (FIN) and drop
//! (RST) on both ends of a connected client/server pair never lose, duplicate or
//! reorder bytes within a stream, never let a writer exceed the peer's window, and
//! always end with every stream closed and both sessions ending cleanly.
//!
//! How:
//!
//! - proptest generates a [`Case`]: a list of [`Op`]s over at most [`MAX_STREAMS`]
//!   streams, opened by the client end (the gateway); the server end (the agent)
//!   gets them through its `on_inbound` callback and they are matched by ID.
//! - Every operation polls the stream once and never waits: a write refused for
//!   lack of window (or of room in the session's output) is `Pending`, and counts
//!   as "blocked". Window updates are the consequence of reads. `Op::Yield` lets
//!   the session tasks move the frames.
//! - The model ([`Flow`]) records, per stream and direction, how many bytes the
//!   writer had accepted and how many the reader has read; the content written at
//!   each offset is a pure function of (stream, direction, offset)
//!   ([`pattern`]), so every byte read is checked against the one expected at
//!   that offset: a lost, duplicated or reordered byte is a mismatch.
//! - After every accepted write, the bytes written but not yet read on that
//!   direction must be at most the window: the reader only grants credit for
//!   what it has read (the `mux` module: a writer stops when the peer's window is
//!   used up, an update is sent once half of it has been read). A peer sending
//!   beyond the window would also end the session with a protocol error, which
//!   fails the case.
//! - At the end every direction still open is finished, all of them at once and
//!   each reader and writer in a task of its own (so that a wake-up the
//!   multiplexer misses is a hang, not covered up by another wake-up): the
//!   writer writes a tail and shuts down while the reader reads everything and
//!   then EOF; readers whose peer reset the stream must see EOF or an error,
//!   writers whose peer reset the stream must see their writes fail (nothing may
//!   hang: each has a deadline). Every stream is then dropped,
//!   both sessions' stream counts must reach zero, and the client drains and
//!   closes the session: it ends `Drained` with no unfinished stream, the server
//!   `Closed`.
//!
//! Each case runs on a fresh runtime, current-thread (reproducible, so that a
//! failure shrinks well) or multi-thread (the sessions run in parallel with the
//! operations), and is bounded by [`CASE_TIMEOUT`]. `PROPTEST_CASES` sets the
//! number of cases ([`DEFAULT_CASES`] otherwise). A failure prints the minimal
//! case; `run_case` replays it from a plain `#[test]` (it builds its own runtime).

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use gateway::transport::{
    Role, Session, SessionEnd, SessionHandle, StreamCount, StreamIo, WsIo, close_code,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

// ---- the connected pair (the one place that knows the constructors) ----------

/// Capacity of each direction of the in-memory connection.
const DUPLEX: usize = 256 * 1024;
/// Bounds the client's drain at the end (it has nothing left to wait for).
const GRACE: Duration = Duration::from_secs(2);

/// A client session (the gateway) and a server session (the agent), connected in
/// memory, each driven by its own task.
struct Pair {
    opener: SessionHandle,
    /// The streams the server accepted, in arrival order.
    inbound: mpsc::UnboundedReceiver<StreamIo>,
    /// Live streams of each session, indexed by [`Side`].
    counts: [Arc<StreamCount>; 2],
    /// Starts the client's drain, which ends both sessions.
    stop_client: oneshot::Sender<()>,
    client: JoinHandle<SessionEnd>,
    server: JoinHandle<SessionEnd>,
}

/// Builds a [`Pair`] (within a runtime: it spawns the session tasks).
fn connected_pair() -> Pair {
    let (c, s) = tokio::io::duplex(DUPLEX);
    // No heartbeat: nothing in a case depends on the clock.
    let cio = WsIo::new(c, Role::Client, None, close_code::NORMAL);
    let sio = WsIo::new(s, Role::Server, None, close_code::NORMAL);
    let (client, opener) = Session::client(cio);
    let (tx, inbound) = mpsc::unbounded_channel();
    let server = Session::server(sio, move |stream| {
        let _ = tx.send(stream);
    });
    let counts = [client.stream_count(), server.stream_count()];
    let (stop_client, stop) = oneshot::channel::<()>();
    let stop = async move {
        if stop.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    Pair {
        opener,
        inbound,
        counts,
        stop_client,
        client: tokio::spawn(client.run(stop, GRACE)),
        server: tokio::spawn(server.run(std::future::pending(), GRACE)),
    }
}

// ---- parameters -------------------------------------------------------------

/// The window of each direction of a stream.
const WINDOW: u64 = gateway::protocol::MUX_WINDOW as u64;
/// Streams opened per case, at most.
const MAX_STREAMS: usize = 8;
/// Cases run unless `PROPTEST_CASES` asks for more.
const DEFAULT_CASES: u32 = 256;
/// Bound on one case, the end included.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on each wait of the end phase (a read to EOF, a count reaching zero).
const STEP_LIMIT: Duration = Duration::from_secs(3);
/// Chunk written at a time while filling a window.
const FILL_CHUNK: usize = 64 * 1024;

// ---- operations -------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn idx(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }

    fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// One step of a case. `stream` picks among the streams opened so far, counting
/// back from the latest (modulo their number); an operation on an end that is
/// gone, or not there yet, does nothing.
#[derive(Debug, Clone)]
enum Op {
    /// The client opens a stream (nothing is sent until it writes or shuts down).
    Open,
    /// One write of `len` bytes, polled once.
    Write {
        side: Side,
        stream: usize,
        len: usize,
    },
    /// Writes until a write is refused: uses up the peer's window.
    Fill { side: Side, stream: usize },
    /// One read of at most `max` bytes, polled once.
    Read {
        side: Side,
        stream: usize,
        max: usize,
    },
    /// Half-close: FIN.
    Shutdown { side: Side, stream: usize },
    /// Drops the handle: RST unless the stream is finished both ways.
    Drop { side: Side, stream: usize },
    /// Lets the session tasks run: yields this many times.
    Yield(u8),
}

#[derive(Debug, Clone)]
struct Case {
    multi_thread: bool,
    ops: Vec<Op>,
    /// Bytes written at the end on every direction still open for writing.
    tail: usize,
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Client), Just(Side::Server)]
}

/// One operation, or a few that belong together.
fn step() -> impl Strategy<Value = Vec<Op>> {
    // Mostly the two latest streams, so that what one end writes is often what
    // the other end reads next (and older streams, reset or closed, fade out);
    // sometimes any of them.
    let stream = prop_oneof![3 => 0..2usize, 1 => 0..MAX_STREAMS];
    // Mostly small writes; some larger than the window, so that writers block.
    let write_len = prop_oneof![
        4 => 1..=2048usize,
        2 => 2048..=65_536usize,
        1 => 65_536..=300 * 1024usize,
    ];
    let read_max = prop_oneof![
        3 => 1..=4096usize,
        2 => 4096..=512 * 1024usize,
    ];
    let yields = 1..=16u8;
    prop_oneof![
        1 => Just(vec![Op::Open]),
        // A stream exists on the server once the client has sent something on it:
        // most streams are used at once, so that both ends have work.
        2 => (write_len.clone(), yields.clone()).prop_map(|(len, n)| vec![
            Op::Open,
            Op::Write { side: Side::Client, stream: 0, len },
            Op::Yield(n),
        ]),
        4 => (side(), stream.clone(), write_len.clone())
            .prop_map(|(side, stream, len)| vec![Op::Write { side, stream, len }]),
        // Bytes going across: written, moved by the sessions, read on the other end.
        3 => (side(), stream.clone(), write_len.clone(), yields.clone(), read_max.clone()).prop_map(
            |(side, stream, len, n, max)| vec![
                Op::Write { side, stream, len },
                Op::Yield(n),
                Op::Read { side: side.peer(), stream, max },
            ]
        ),
        1 => (side(), stream.clone()).prop_map(|(side, stream)| vec![Op::Fill { side, stream }]),
        // Flow control at work: a window used up, read (at least half of it, so
        // that the reader sends an update, if it has arrived), written again.
        1 => (
            side(),
            stream.clone(),
            yields.clone(),
            WINDOW as usize / 2..=2 * WINDOW as usize,
            yields.clone(),
            write_len,
        )
            .prop_map(|(side, stream, n, max, m, len)| vec![
                Op::Fill { side, stream },
                Op::Yield(n),
                Op::Read { side: side.peer(), stream, max },
                Op::Yield(m),
                Op::Write { side, stream, len },
            ]),
        5 => (side(), stream.clone(), read_max)
            .prop_map(|(side, stream, max)| vec![Op::Read { side, stream, max }]),
        1 => (side(), stream.clone())
            .prop_map(|(side, stream)| vec![Op::Shutdown { side, stream }]),
        1 => (side(), stream).prop_map(|(side, stream)| vec![Op::Drop { side, stream }]),
        4 => yields.prop_map(|n| vec![Op::Yield(n)]),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        proptest::collection::vec(step(), 1..=48),
        prop_oneof![1..=4096usize, 4096..=600 * 1024usize],
    )
        .prop_map(|(multi_thread, steps, tail)| {
            // Every case has a stream to work on.
            let ops = std::iter::once(Op::Open)
                .chain(steps.into_iter().flatten())
                .collect();
            Case {
                multi_thread,
                ops,
                tail,
            }
        })
}

// ---- the model ----------------------------------------------------------------

/// The byte at each offset of what `writer` writes on stream `id`: random-looking
/// and distinct per stream and direction, so that a byte delivered at the wrong
/// offset, or on the wrong stream, is a mismatch.
fn pattern(id: u32, writer: Side, start: u64, len: usize) -> Vec<u8> {
    let key = splitmix(u64::from(id) << 1 | writer.idx() as u64);
    // Eight bytes per word: word `w` holds offsets 8w..8w+8.
    let skip = (start & 7) as usize;
    let mut out = Vec::with_capacity(skip + len + 8);
    let mut word = start >> 3;
    while out.len() < skip + len {
        out.extend_from_slice(&splitmix(key ^ word).to_le_bytes());
        word += 1;
    }
    out.truncate(skip + len);
    out.drain(..skip);
    out
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One end of a stream.
enum End {
    /// Not accepted by the server (yet).
    Absent,
    Live(StreamIo),
    /// Dropped by the test.
    Dropped,
}

impl End {
    fn is_dropped(&self) -> bool {
        matches!(self, End::Dropped)
    }
}

/// One direction of a stream.
#[derive(Debug, Default)]
struct Flow {
    /// Bytes the writer accepted.
    written: u64,
    /// Bytes the reader has read and checked: the first `read` of `written`.
    read: u64,
    /// The writer shut down.
    fin: bool,
    /// The writer's last write was refused with a whole window unread.
    blocked: bool,
}

struct Stream {
    /// The stream ID, the same on both ends.
    id: u32,
    /// Indexed by [`Side`].
    ends: [End; 2],
    /// Indexed by the writer's [`Side`].
    flows: [Flow; 2],
    /// The client sent something (data or FIN), so the server will see the stream.
    announced: bool,
}

/// What happened to every stream; checked at the end of the run, so that the
/// test is known to exercise what it claims (flow control, EOF, resets).
#[derive(Default)]
struct Coverage {
    /// Writes refused with exactly a window written and not read.
    blocked_at_window: AtomicU64,
    /// Writes accepted after a refusal, the window having been read: window
    /// updates at work.
    unblocked: AtomicU64,
    /// Bytes read and checked.
    bytes_checked: AtomicU64,
    /// Reads that returned data while the operations ran (rather than at the end).
    reads_during_ops: AtomicU64,
    /// EOFs seen while the operations ran.
    eofs: AtomicU64,
    /// Reads or writes that failed while the operations ran, the peer having
    /// reset the stream.
    resets_seen: AtomicU64,
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "writes blocked at a full window: {}, then unblocked: {}, bytes checked: {}, reads \
             of data during the operations: {}, EOFs: {}, resets seen: {}",
            get(&self.blocked_at_window),
            get(&self.unblocked),
            get(&self.bytes_checked),
            get(&self.reads_during_ops),
            get(&self.eofs),
            get(&self.resets_seen),
        )
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Checks bytes read on `writer`'s direction of stream `id` against what was
/// written, and records them as read.
fn check_data(
    id: u32,
    writer: Side,
    flow: &mut Flow,
    got: &[u8],
    cov: &Coverage,
) -> Result<(), String> {
    let start = flow.read;
    let end = start + got.len() as u64;
    ensure!(
        end <= flow.written,
        "stream {id}, {writer:?} -> peer: read bytes {start}..{end}, only {} were written \
         (bytes duplicated or invented)",
        flow.written
    );
    let expected = pattern(id, writer, start, got.len());
    if got != expected {
        let i = got
            .iter()
            .zip(&expected)
            .position(|(g, e)| g != e)
            .unwrap_or(0);
        return Err(format!(
            "stream {id}, {writer:?} -> peer: byte {} read as {:#04x}, {:#04x} was written there \
             (bytes lost, duplicated or reordered)",
            start + i as u64,
            got[i],
            expected[i]
        ));
    }
    flow.read = end;
    bump(&cov.bytes_checked, got.len() as u64);
    Ok(())
}

/// Checks an EOF read on `writer`'s direction: only after the writer's FIN and all
/// of its bytes, or once the writer reset the stream (a reset may lose data).
fn check_eof(id: u32, writer: Side, flow: &Flow, writer_dropped: bool) -> Result<(), String> {
    if flow.fin {
        ensure!(
            flow.read == flow.written,
            "stream {id}, {writer:?} -> peer: EOF after {} of the {} bytes written before FIN \
             (bytes lost)",
            flow.read,
            flow.written
        );
    } else {
        ensure!(
            writer_dropped,
            "stream {id}, {writer:?} -> peer: EOF although the writer neither shut down nor reset"
        );
    }
    Ok(())
}

// ---- polling once ---------------------------------------------------------------

/// Polls a write once: `Pending` is a write refused for now, nothing accepted.
async fn write_once(io: &mut StreamIo, buf: &[u8]) -> Poll<io::Result<usize>> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_write(cx, buf))).await
}

/// One read of at most `max` bytes: `Ok(bytes)` (empty: EOF).
async fn read_once(io: &mut StreamIo, max: usize) -> Poll<io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    let mut rb = ReadBuf::new(&mut buf);
    let r = poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut rb))).await;
    let n = rb.filled().len();
    r.map(|r| r.map(|()| buf[..n].to_vec()))
}

async fn shutdown_once(io: &mut StreamIo) -> Poll<io::Result<()>> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_shutdown(cx))).await
}

// ---- running a case -------------------------------------------------------------

/// The pair under test and what the model knows of each of its streams.
struct Model {
    pair: Pair,
    streams: Vec<Stream>,
    cov: Arc<Coverage>,
}

/// The stream an operation is about (see [`Op`]).
fn pick(streams: &mut [Stream], stream: usize) -> Option<&mut Stream> {
    let n = streams.len();
    (n > 0).then(|| &mut streams[n - 1 - stream % n])
}

impl Model {
    /// Takes the streams the server accepted so far.
    fn accept(&mut self) -> Result<(), String> {
        while let Ok(io) = self.pair.inbound.try_recv() {
            self.accept_one(io)?;
        }
        Ok(())
    }

    fn accept_one(&mut self, io: StreamIo) -> Result<(), String> {
        let id = io.id();
        let Some(st) = self.streams.iter_mut().find(|s| s.id == id) else {
            return Err(format!("the server accepted stream {id}, never opened"));
        };
        ensure!(
            matches!(st.ends[Side::Server.idx()], End::Absent),
            "the server accepted stream {id} twice"
        );
        ensure!(
            st.announced,
            "the server accepted stream {id} before the client sent anything on it"
        );
        st.ends[Side::Server.idx()] = End::Live(io);
        Ok(())
    }

    async fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Open => {
                if self.streams.len() < MAX_STREAMS {
                    let io = self
                        .pair
                        .opener
                        .open()
                        .await
                        .map_err(|e| format!("open: {e}"))?;
                    self.streams.push(Stream {
                        id: io.id(),
                        ends: [End::Live(io), End::Absent],
                        flows: Default::default(),
                        announced: false,
                    });
                }
            }
            Op::Write { side, stream, len } => {
                if let Some(st) = pick(&mut self.streams, stream) {
                    write(st, side, len, &self.cov).await?;
                }
            }
            Op::Fill { side, stream } => {
                if let Some(st) = pick(&mut self.streams, stream) {
                    // Bounded: the window and the session's output stop it far sooner.
                    for _ in 0..64 {
                        if !write(st, side, FILL_CHUNK, &self.cov).await? {
                            break;
                        }
                    }
                }
            }
            Op::Read { side, stream, max } => {
                if let Some(st) = pick(&mut self.streams, stream) {
                    read(st, side, max, &self.cov).await?;
                }
            }
            Op::Shutdown { side, stream } => {
                if let Some(st) = pick(&mut self.streams, stream) {
                    shutdown(st, side).await?;
                }
            }
            Op::Drop { side, stream } => {
                if let Some(st) = pick(&mut self.streams, stream)
                    && let End::Live(_) = st.ends[side.idx()]
                {
                    st.ends[side.idx()] = End::Dropped;
                }
            }
            Op::Yield(n) => {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            }
        }
        self.accept()?;
        ensure!(
            !self.pair.client.is_finished() && !self.pair.server.is_finished(),
            "a session ended during the operations"
        );
        Ok(())
    }

    /// Finishes every direction, drops every stream, then ends both sessions.
    async fn finish(mut self, tail: usize) -> Result<(), String> {
        // A stream the client opened but has sent nothing on does not exist on
        // the server yet: one byte announces it (the window is whole, this cannot
        // block on it).
        for st in &mut self.streams {
            let flow = &mut st.flows[Side::Client.idx()];
            if let End::Live(io) = &mut st.ends[Side::Client.idx()]
                && !st.announced
            {
                let data = pattern(st.id, Side::Client, flow.written, 1);
                within("announcing a stream", io.write_all(&data))
                    .await?
                    .map_err(|e| format!("stream {}: announcing write: {e}", st.id))?;
                flow.written += 1;
                st.announced = true;
            }
        }
        // Every announced stream reaches the server.
        while self
            .streams
            .iter()
            .any(|s| s.announced && matches!(s.ends[Side::Server.idx()], End::Absent))
        {
            let io = within("the server accepting a stream", self.pair.inbound.recv())
                .await?
                .ok_or("the server's inbound channel closed")?;
            self.accept_one(io)?;
        }
        // All streams, both directions, at once.
        let mut checks = Vec::new();
        for st in std::mem::take(&mut self.streams) {
            checks.extend(finish_stream(st, tail, &self.cov));
        }
        for check in checks {
            check
                .await
                .map_err(|e| format!("a task finishing a stream: {e}"))??;
        }
        // Every stream is closed (dropped) by now: nothing is left on either end.
        self.accept()?;
        for (side, count) in [Side::Client, Side::Server].iter().zip(&self.pair.counts) {
            within("the stream count reaching zero", count.wait_zero())
                .await
                .map_err(|e| format!("{side:?}: {e} ({} left)", count.get()))?;
        }
        let Pair {
            stop_client,
            client,
            server,
            ..
        } = self.pair;
        let _ = stop_client.send(());
        let client_end = within("the client's drain", client)
            .await?
            .map_err(|e| format!("client task: {e}"))?;
        ensure!(
            client_end
                == SessionEnd::Drained {
                    unfinished_streams: 0
                },
            "the client session ended with {client_end:?}"
        );
        let server_end = within("the server session ending", server)
            .await?
            .map_err(|e| format!("server task: {e}"))?;
        ensure!(
            server_end == SessionEnd::Closed,
            "the server session ended with {server_end:?}"
        );
        Ok(())
    }
}

/// One write of `len` bytes by `side`, polled once, checked against the model.
/// Returns whether it was accepted.
async fn write(st: &mut Stream, side: Side, len: usize, cov: &Coverage) -> Result<bool, String> {
    let Stream {
        id,
        ends,
        flows,
        announced,
    } = st;
    let peer_dropped = ends[side.peer().idx()].is_dropped();
    let End::Live(io) = &mut ends[side.idx()] else {
        return Ok(false);
    };
    let flow = &mut flows[side.idx()];
    let data = pattern(*id, side, flow.written, len);
    match write_once(io, &data).await {
        Poll::Ready(Ok(0)) => {
            ensure!(
                flow.fin || peer_dropped,
                "stream {id}: {side:?} wrote 0 of {len} bytes on a stream open both ways"
            );
            Ok(false)
        }
        Poll::Ready(Ok(n)) => {
            ensure!(n <= len, "stream {id}: {side:?} wrote {n} of {len} bytes");
            ensure!(
                !flow.fin,
                "stream {id}: {side:?} accepted {n} bytes after its own shutdown"
            );
            if std::mem::take(&mut flow.blocked) && flow.written - flow.read < WINDOW {
                bump(&cov.unblocked, 1);
            }
            flow.written += n as u64;
            if side == Side::Client {
                *announced = true;
            }
            let unread = flow.written - flow.read;
            ensure!(
                unread <= WINDOW,
                "stream {id}: {side:?} has {unread} bytes written and not read, more than the \
                 {WINDOW}-byte window"
            );
            Ok(true)
        }
        Poll::Ready(Err(e)) => {
            ensure!(
                flow.fin || peer_dropped,
                "stream {id}: {side:?}'s write failed on a stream open both ways: {e}"
            );
            if !flow.fin {
                bump(&cov.resets_seen, 1);
            }
            Ok(false)
        }
        Poll::Pending => {
            if flow.written - flow.read == WINDOW {
                bump(&cov.blocked_at_window, 1);
                flow.blocked = true;
            }
            Ok(false)
        }
    }
}

/// One read of at most `max` bytes by `side`, polled once, checked against the
/// model.
async fn read(st: &mut Stream, side: Side, max: usize, cov: &Coverage) -> Result<(), String> {
    let writer = side.peer();
    let writer_dropped = st.ends[writer.idx()].is_dropped();
    let End::Live(io) = &mut st.ends[side.idx()] else {
        return Ok(());
    };
    let flow = &mut st.flows[writer.idx()];
    match read_once(io, max).await {
        Poll::Ready(Ok(got)) if got.is_empty() => {
            check_eof(st.id, writer, flow, writer_dropped)?;
            bump(&cov.eofs, 1);
        }
        Poll::Ready(Ok(got)) => {
            check_data(st.id, writer, flow, &got, cov)?;
            bump(&cov.reads_during_ops, 1);
        }
        Poll::Ready(Err(e)) => {
            ensure!(
                writer_dropped,
                "stream {}: {side:?}'s read failed although the peer did not reset: {e}",
                st.id
            );
            bump(&cov.resets_seen, 1);
        }
        Poll::Pending => {}
    }
    Ok(())
}

async fn shutdown(st: &mut Stream, side: Side) -> Result<(), String> {
    let peer_dropped = st.ends[side.peer().idx()].is_dropped();
    let End::Live(io) = &mut st.ends[side.idx()] else {
        return Ok(());
    };
    match shutdown_once(io).await {
        Poll::Ready(Ok(())) => {
            st.flows[side.idx()].fin = true;
            if side == Side::Client {
                // The FIN carries the SYN of a stream not announced yet.
                st.announced = true;
            }
        }
        Poll::Ready(Err(e)) => ensure!(
            peer_dropped,
            "stream {}: {side:?}'s shutdown failed: {e}",
            st.id
        ),
        Poll::Pending => return Err(format!("stream {}: {side:?}'s shutdown waits", st.id)),
    }
    Ok(())
}

/// A task finishing one direction of a stream (reading or writing it).
type Check = JoinHandle<Result<(), String>>;

/// Finishes both directions of a stream at once; the stream is dropped (closed)
/// once both are done.
fn finish_stream(st: Stream, tail: usize, cov: &Arc<Coverage>) -> Vec<Check> {
    let Stream {
        id,
        ends: [client, server],
        flows: [up, down],
        ..
    } = st;
    // Split, so that each direction has its own reader and writer.
    let (client_r, client_w) = halves(client);
    let (server_r, server_w) = halves(server);
    let up = Direction {
        id,
        writer: Side::Client,
        flow: up,
        w: client_w,
        r: server_r,
    };
    let down = Direction {
        id,
        writer: Side::Server,
        flow: down,
        w: server_w,
        r: client_r,
    };
    let mut checks = up.finish(tail, cov);
    checks.extend(down.finish(tail, cov));
    checks
}

fn halves(end: End) -> (Option<ReadHalf<StreamIo>>, Option<WriteHalf<StreamIo>>) {
    match end {
        End::Live(io) => {
            let (r, w) = tokio::io::split(io);
            (Some(r), Some(w))
        }
        End::Absent | End::Dropped => (None, None),
    }
}

/// One direction of a stream at the end. Every end is live or dropped by now (a
/// server end still absent belongs to a stream the client dropped before
/// announcing it), so a missing half is a dropped end.
struct Direction {
    id: u32,
    writer: Side,
    flow: Flow,
    w: Option<WriteHalf<StreamIo>>,
    r: Option<ReadHalf<StreamIo>>,
}

impl Direction {
    /// Spawns what finishes this direction:
    /// - both ends live, the writer not shut down: it writes `tail` bytes and
    ///   shuts down while the reader reads everything, then EOF;
    /// - the writer shut down or dropped, the reader live: the reader reads to
    ///   EOF (or to an error, after a reset);
    /// - the writer live and not shut down, the reader dropped: its writes must
    ///   fail.
    ///
    /// Each reader and each writer is a task of its own: a task has one waker
    /// for all it awaits, so a wake-up the multiplexer misses for one of them
    /// would be covered up by another's.
    fn finish(self, tail: usize, cov: &Arc<Coverage>) -> Vec<Check> {
        let Direction {
            id,
            writer,
            mut flow,
            w,
            r,
        } = self;
        let cov = cov.clone();
        match (w, r) {
            (Some(mut w), Some(mut r)) if !flow.fin => {
                let data = pattern(id, writer, flow.written, tail);
                // Counted as written up front, so that the reader checks the tail
                // as it arrives.
                flow.written += tail as u64;
                flow.fin = true;
                let write = async move {
                    let what = format!("stream {id}: {writer:?} writing {tail} bytes, then FIN");
                    let wrote = within(&what, async {
                        w.write_all(&data).await?;
                        w.shutdown().await
                    })
                    .await?;
                    wrote.map_err(|e| format!("stream {id}: {writer:?}'s last write failed: {e}"))
                };
                let read = async move {
                    let what = format!("stream {id}: reading {writer:?}'s last bytes, then EOF");
                    let ended =
                        within(&what, read_to_end(id, writer, &mut flow, &mut r, &cov)).await??;
                    check_end(id, writer, &flow, ended, false)
                };
                vec![tokio::spawn(write), tokio::spawn(read)]
            }
            (w, Some(mut r)) => {
                let read = async move {
                    let writer_dropped = w.is_none();
                    let what = format!("stream {id}: reading {writer:?}'s direction to its end");
                    let ended =
                        within(&what, read_to_end(id, writer, &mut flow, &mut r, &cov)).await??;
                    // The writer (shut down) is kept until now: dropped sooner,
                    // it could reset the stream while this reads.
                    drop(w);
                    check_end(id, writer, &flow, ended, writer_dropped)
                };
                vec![tokio::spawn(read)]
            }
            (Some(mut w), None) if !flow.fin => {
                let write = async move {
                    let mut written = 0u64;
                    let what =
                        format!("stream {id}: {writer:?}'s writes failing after the peer's reset");
                    let failed = within(&what, async {
                        loop {
                            let data = pattern(id, writer, flow.written, FILL_CHUNK);
                            match w.write(&data).await {
                                Ok(n) => {
                                    flow.written += n as u64;
                                    written += n as u64;
                                    ensure!(
                                        flow.written - flow.read <= WINDOW,
                                        "stream {id}: {writer:?} has {} bytes written and not \
                                         read after the peer's reset, more than the window",
                                        flow.written - flow.read
                                    );
                                }
                                Err(_) => return Ok(()),
                            }
                        }
                    })
                    .await;
                    failed.map_err(|e| format!("{e} ({written} bytes accepted meanwhile)"))?
                };
                vec![tokio::spawn(write)]
            }
            _ => Vec::new(),
        }
    }
}

/// Checks how reading `writer`'s direction ended (EOF, or an error).
fn check_end(
    id: u32,
    writer: Side,
    flow: &Flow,
    ended: io::Result<()>,
    writer_dropped: bool,
) -> Result<(), String> {
    match ended {
        Ok(()) => check_eof(id, writer, flow, writer_dropped),
        Err(_) if writer_dropped => Ok(()),
        Err(e) => Err(format!(
            "stream {id}: reading {writer:?}'s direction failed without a reset: {e}"
        )),
    }
}

/// Reads `writer`'s direction to its end, checking every byte: `Ok(Ok(()))` at
/// EOF, `Ok(Err(e))` when a read fails, `Err` on a wrong byte.
async fn read_to_end(
    id: u32,
    writer: Side,
    flow: &mut Flow,
    r: &mut (impl AsyncRead + Unpin),
    cov: &Coverage,
) -> Result<io::Result<()>, String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return Ok(Ok(())),
            Ok(n) => check_data(id, writer, flow, &buf[..n], cov)?,
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// Awaits `f` for at most [`STEP_LIMIT`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP_LIMIT, f)
        .await
        .map_err(|_| format!("timed out after {STEP_LIMIT:?}: {what}"))
}

async fn run_ops(case: &Case, cov: &Arc<Coverage>) -> Result<(), String> {
    let mut model = Model {
        pair: connected_pair(),
        streams: Vec::new(),
        cov: cov.clone(),
    };
    for (i, op) in case.ops.iter().enumerate() {
        model
            .apply(op)
            .await
            .map_err(|e| format!("op #{i} {op:?}: {e}"))?;
    }
    model
        .finish(case.tail)
        .await
        .map_err(|e| format!("the end: {e}"))
}

/// Runs one case on a fresh runtime, bounded by [`CASE_TIMEOUT`].
fn run_case(case: &Case, cov: &Arc<Coverage>) -> Result<(), String> {
    let rt = if case.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    let (case, cov) = (case.clone(), cov.clone());
    rt.block_on(async move {
        // A task rather than `block_on`'s own future: on a multi-thread runtime the
        // operations then run on a worker, like the sessions, and a yield lets the
        // sessions move the frames (from `block_on`'s thread it hardly ever does).
        let ops = tokio::spawn(async move { run_ops(&case, &cov).await });
        match tokio::time::timeout(CASE_TIMEOUT, ops).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("the operations' task failed: {e}")),
            Err(_) => Err(format!("the case took more than {CASE_TIMEOUT:?}")),
        }
    })
}

#[test]
fn random_interleavings_keep_every_stream_intact() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let config = ProptestConfig {
        cases,
        // No regression file written into the tree: a failure prints the whole
        // minimal case, to be kept as a plain test.
        failure_persistence: None,
        // Shrinking a case that times out is slow: bound it.
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    };
    let cov = Arc::new(Coverage::default());
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| {
        run_case(&case, &cov).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("{cases} cases: {cov}");
    // The run exercised what the properties are about (likely enough with 32
    // cases that a shortfall means the generator is broken).
    if cases >= 32 {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert!(
            get(&cov.blocked_at_window) > 0,
            "no writer was ever blocked by the window: {cov}"
        );
        assert!(
            get(&cov.reads_during_ops) > 0,
            "no data read during the operations: {cov}"
        );
        assert!(get(&cov.eofs) > 0, "no EOF seen: {cov}");
        assert!(get(&cov.resets_seen) > 0, "no reset seen: {cov}");
    }
}
