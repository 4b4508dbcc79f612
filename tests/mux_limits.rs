//! What a broken or hostile peer can and cannot make our yamux session
//! (`src/transport/mux/`, `session.rs`) do: memory stays bounded under floods and
//! slow readers, protocol errors are reported to the peer, a go-away is honoured.
//! Each test began as a finding of a review of the first version, which failed it.
//!
//! The peers here speak raw WebSocket frames (masked with a zero key on the
//! client side, which RFC 6455 allows) and raw yamux frames straight onto a
//! `tokio::io::duplex`, so that the test controls exactly what is read and
//! written and when (both from `common::wire`). A counting global allocator
//! measures the live heap; the tests that measure take a global lock so that they
//! do not disturb each other. The tests that wait for the session's own timeouts
//! run on paused time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use gateway::transport::{Role, Session, SessionEnd, SessionHandle, StreamIo, WsIo, close_code};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use common::wait::{until_idle, within};
use common::wire::ws::{
    FIN, Len, OP_BINARY, OP_CLOSE, OP_CONT, encode as encode_ws, parse_frame as parse_ws,
};
use common::wire::yamux::{
    ACK, GO_AWAY_PROTOCOL_ERROR, Header, SYN, TYPE_GO_AWAY, TYPE_PING, data_frame, encode_frame,
    take_frame,
};

// ---- a counting allocator ------------------------------------------------------

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

/// One test at a time (the heap measurements are global). Each test has its own
/// runtime, so the lock is an async one only to be held across awaits.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

// ---- helpers -------------------------------------------------------------------

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One binary WebSocket frame (FIN set). `masked`: the client's side; the key is
/// zero, so the payload goes out as it is.
fn ws_binary(payload: &[u8], masked: bool) -> Vec<u8> {
    encode_ws(
        FIN | OP_BINARY,
        Len::Minimal,
        payload,
        masked.then_some([0; 4]),
    )
}

/// A raw peer: writes WebSocket frames itself and reads the session's yamux
/// frames out of the WebSocket frames it receives.
struct Raw {
    io: DuplexStream,
    /// Whether we are the WebSocket client (we mask; the session does not).
    client: bool,
    /// Yamux bytes received, not yet parsed.
    ybuf: Vec<u8>,
    /// WebSocket bytes received, not yet parsed.
    wbuf: Vec<u8>,
}

impl Raw {
    async fn send(&mut self, yamux: &[u8]) -> std::io::Result<()> {
        self.io.write_all(&ws_binary(yamux, self.client)).await
    }

    /// The next yamux frame; None at EOF, on a WebSocket close, or an error.
    async fn next_frame(&mut self) -> Option<(Header, Vec<u8>)> {
        loop {
            if let Some(frame) = take_frame(&mut self.ybuf) {
                return Some(frame);
            }
            // Parse one WebSocket frame (unmasked when it comes from the server).
            loop {
                if let Ok((frame, used)) = parse_ws(&self.wbuf) {
                    self.wbuf.drain(..used);
                    match frame.opcode {
                        OP_CONT | OP_BINARY => {
                            self.ybuf.extend_from_slice(&frame.payload);
                            break;
                        }
                        OP_CLOSE => return None,
                        _ => continue,
                    }
                }
                let mut chunk = vec![0u8; 64 * 1024];
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.wbuf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }
}

fn ws(io: DuplexStream, role: Role) -> WsIo<DuplexStream> {
    WsIo::new(io, role, None, close_code::NORMAL)
}

/// Our agent-side session (yamux server) against a raw gateway-side peer.
fn raw_vs_server(
    duplex: usize,
) -> (
    Raw,
    JoinHandle<SessionEnd>,
    mpsc::UnboundedReceiver<StreamIo>,
) {
    let (peer, ours) = tokio::io::duplex(duplex);
    let (tx, rx) = mpsc::unbounded_channel();
    let session = Session::server(ws(ours, Role::Server), move |s| {
        let _ = tx.send(s);
    });
    let task = tokio::spawn(session.run(std::future::pending(), Duration::from_secs(1)));
    let raw = Raw {
        io: peer,
        client: true,
        ybuf: Vec::new(),
        wbuf: Vec::new(),
    };
    (raw, task, rx)
}

/// Our gateway-side session (yamux client) against a raw agent-side peer.
fn raw_vs_client(duplex: usize) -> (Raw, JoinHandle<SessionEnd>, SessionHandle) {
    let (peer, ours) = tokio::io::duplex(duplex);
    let (session, opener) = Session::client(ws(ours, Role::Client));
    let task = tokio::spawn(session.run(std::future::pending(), Duration::from_secs(1)));
    let raw = Raw {
        io: peer,
        client: false,
        ybuf: Vec::new(),
        wbuf: Vec::new(),
    };
    (raw, task, opener)
}

/// Sends a yamux ping and waits for its answer: everything sent before it has
/// been parsed by the session.
async fn sync(raw: &mut Raw, opaque: u32) {
    raw.send(&encode_frame(Header::ping(SYN, opaque), &[]))
        .await
        .expect("send ping");
    within(Duration::from_secs(20), "the ping answer", async {
        loop {
            let (h, _) = raw.next_frame().await.expect("connection open");
            if h.ty == TYPE_PING && h.flags & ACK != 0 && h.length == opaque {
                break;
            }
        }
    })
    .await;
}

// ---- a protocol error is reported ----------------------------------------------

/// docs/PROTOCOL.md: "A peer that sends more than its window ... ends the session:
/// the gateway sends a go-away with code 1 (protocol error) and drops the
/// connection." The go-away must reach the socket before the connection goes
/// (`WsIo` defers writes until its next read, so returning at once loses it).
/// On paused time: the session's 5 s closing handshake passes in no real time.
#[tokio::test(start_paused = true)]
async fn protocol_error_go_away_reaches_the_peer() {
    let _serial = serial().await;
    within(TEST_TIMEOUT, "go-away on protocol error", async {
        let (mut raw, server, _rx) = raw_vs_server(1 << 20);
        let body = vec![7u8; 300 * 1024]; // beyond the 256 KiB window
        raw.send(&data_frame(1, SYN, &body)).await.expect("send");
        let mut seen = Vec::new();
        // This peer never answers the WebSocket close frame, so the session
        // waits out its 5 s closing handshake before it lets go.
        let end = within(Duration::from_secs(10), "the connection ends", async {
            while let Some((h, _)) = raw.next_frame().await {
                seen.push(h);
            }
            server.await.expect("session task")
        })
        .await;
        assert!(matches!(end, SessionEnd::Failed(_)), "{end:?}");
        assert!(
            seen.iter()
                .any(|h| h.ty == TYPE_GO_AWAY && h.length == GO_AWAY_PROTOCOL_ERROR),
            "no go-away (protocol error) reached the peer before the connection \
             ended; frames seen: {seen:?}"
        );
    })
    .await
}

// ---- output while the peer does not read --------------------------------------

/// A peer that sends yamux pings and never reads: every ping queues a 12-byte
/// answer, and the answers cannot leave. The session must not hold them without
/// bound: either the peer's writes stall (backpressure) or the session ends it
/// as a flood (what ours does); either way the heap stays small.
///
/// On paused time: the flood's bound and the session's closing handshake pass
/// in no real time, and "stalled" means that no task can move.
#[tokio::test(start_paused = true)]
async fn ping_flood_without_reading_is_bounded() {
    let _serial = serial().await;
    within(TEST_TIMEOUT, "ping flood", async {
        let (mut raw, _server, _rx) = raw_vs_server(64 * 1024);
        // The session has started and waits for input.
        until_idle().await;
        let before = live_mib();
        let pings: Vec<u8> = (0..5000u32)
            .flat_map(|i| encode_frame(Header::ping(SYN, i), &[]))
            .collect();
        let message = ws_binary(&pings, true);
        let total = 16usize << 20;
        let mut sent = 0usize;
        let mut ended = false;
        let flood = async {
            while sent < total {
                if raw.io.write_all(&message).await.is_err() {
                    ended = true; // the session dropped the connection
                    break;
                }
                sent += pings.len();
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(10), flood).await;
        // The session has parsed what is in the connection buffer.
        until_idle().await;
        let grown = live_mib() - before;
        assert!(
            done.is_err() || ended,
            "the session read {} MiB of pings from a peer that reads nothing",
            sent >> 20
        );
        assert!(
            grown < 4.0,
            "the heap grew by {grown:.1} MiB of queued answers"
        );
    })
    .await
}

/// The same on the gateway: every SYN from the agent (which must not open
/// streams) is answered with an RST. A malicious agent that never reads must
/// not make the gateway buffer as much as it likes. On paused time, as above.
#[tokio::test(start_paused = true)]
async fn syn_flood_from_agent_is_bounded() {
    let _serial = serial().await;
    within(TEST_TIMEOUT, "syn flood", async {
        let (mut raw, _client, _opener) = raw_vs_client(64 * 1024);
        until_idle().await;
        let before = live_mib();
        let total = 16usize << 20;
        let mut sent = 0usize;
        let mut ended = false;
        let mut id = 2u32;
        let flood = async {
            while sent < total {
                let syns: Vec<u8> = (0..5000)
                    .flat_map(|_| {
                        id += 2;
                        encode_frame(Header::window_update(id, SYN, 0), &[])
                    })
                    .collect();
                if raw.send(&syns).await.is_err() {
                    ended = true; // the gateway dropped the connection
                    break;
                }
                sent += syns.len();
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(10), flood).await;
        until_idle().await;
        let grown = live_mib() - before;
        assert!(
            done.is_err() || ended,
            "the gateway read {} MiB of SYNs from an agent that reads nothing",
            sent >> 20
        );
        assert!(
            grown < 4.0,
            "the heap grew by {grown:.1} MiB of queued RSTs"
        );
    })
    .await
}

// ---- received payloads must not pin whole read buffers --------------------------

/// Large received payloads are kept as `Bytes` slices of the session's 64 KiB
/// read buffer. If small ones were too, one byte queued on a stream whose reader
/// is slow would keep a whole buffer alive, whatever else it held (other streams'
/// data, discarded frames): 400 one-byte frames pinned ~25 MiB in the first
/// version, up to window/frame × 64 KiB per stream.
#[tokio::test]
async fn small_frames_do_not_pin_read_buffers() {
    let _serial = serial().await;
    within(TEST_TIMEOUT, "pinned buffers", async {
        let (mut raw, _server, mut rx) = raw_vs_server(256 * 1024);
        raw.send(&data_frame(1, SYN, b"x")).await.expect("send");
        sync(&mut raw, 1).await;
        let held = rx.recv().await.expect("inbound stream"); // never read
        let before = live_mib();
        let filler = vec![0u8; 64 * 1024];
        for _ in 0..400 {
            let mut m = data_frame(1, 0, b"y");
            // Stream 3 was never opened: its payload is discarded.
            m.extend(data_frame(3, 0, &filler));
            raw.send(&m).await.expect("send");
        }
        sync(&mut raw, 2).await;
        let grown = live_mib() - before;
        drop(held);
        assert!(
            grown < 4.0,
            "401 bytes queued on one stream hold {grown:.1} MiB of heap"
        );
    })
    .await
}

// ---- a blocked writer registers one waker -------------------------------------

/// A writer blocked because the session's output is full is polled again and
/// again by a busy task (copy_bidirectional whose other direction is busy, a
/// select! loop): each poll must replace its waker, not add one (the first
/// version grew a list by one waker per poll until the output drained).
#[tokio::test]
async fn blocked_writer_registers_one_waker() {
    let _serial = serial().await;
    within(TEST_TIMEOUT, "out waiters", async {
        // No session runs yet (as on the gateway between registration and the
        // session's start): nothing takes the output.
        let (opener, _queue) = SessionHandle::channel();
        let chunk = vec![1u8; 256 * 1024];
        let mut cx = Context::from_waker(Waker::noop());
        let mut streams = Vec::new();
        let blocked = loop {
            assert!(streams.len() < 64, "output never filled up");
            let mut s = opener.open().await.expect("open");
            // A fresh stream has a whole window: Pending can only mean full output.
            match Pin::new(&mut s).poll_write(&mut cx, &chunk) {
                Poll::Ready(r) => {
                    r.expect("write");
                    streams.push(s);
                }
                Poll::Pending => break s,
            }
        };
        let mut blocked = blocked;
        let before = live_mib();
        for _ in 0..1_000_000 {
            assert!(
                Pin::new(&mut blocked)
                    .poll_write(&mut cx, &chunk)
                    .is_pending(),
                "the output drained by itself"
            );
        }
        let grown = live_mib() - before;
        assert!(
            grown < 1.0,
            "1e6 polls of one blocked writer grew the heap by {grown:.1} MiB"
        );
    })
    .await
}

// ---- a go-away from the agent closes the opener --------------------------------

/// After the agent's go-away `SessionHandle::open` fails (SessionGone), so
/// `SessionHandle::is_closed` must say so too: the registry (`is_available`) would
/// otherwise keep routing requests to the agent, each failing with 502 until the
/// WebSocket ends.
#[tokio::test]
async fn go_away_from_the_agent_closes_the_opener() {
    let _serial = serial().await;
    within(TEST_TIMEOUT, "go-away", async {
        let (mut raw, _client, opener) = raw_vs_client(256 * 1024);
        raw.send(&encode_frame(Header::go_away(0), &[]))
            .await
            .expect("send");
        sync(&mut raw, 9).await;
        let opened = opener.open().await;
        assert!(opened.is_err(), "opened a stream after the peer's go-away");
        assert!(
            opener.is_closed(),
            "open() fails after the go-away, but is_closed() says the agent is usable"
        );
    })
    .await
}
