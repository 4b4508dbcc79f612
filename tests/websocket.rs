//! The WebSocket codec (`gateway::transport::ws`, `WsIo`) on its own, over in-memory
//! pipes:
//!
//! - **interop** with tokio-tungstenite, both ways and in both roles: binary
//!   messages at every length boundary up to the 1 MiB limit, pings and pongs,
//!   fragmented messages with control frames in between, the `drain` control
//!   message, large gathered writes (masked as a client, unmasked as a server),
//!   the close handshake from either side, and the text API (`send_text`,
//!   `recv_text`);
//! - **violations**: a table of hand-built frames that break RFC 6455, each of
//!   which must fail the read with `InvalidData` after a close frame with the
//!   right status code went out; and a table of unusual but valid frames that must
//!   be accepted;
//! - **garbage**: thousands of random or mangled inputs, which must end the
//!   stream cleanly (never a panic, never a hang) and leave well-formed output;
//! - the handshake's key functions against tungstenite's;
//! - **our last frames are not lost**: the close frame for a violation and the
//!   reply to the peer's close go out before the read reports the end, even when
//!   the write cannot complete at once (a full pipe, an exhausted task budget).
//!
//! - the **heartbeat**, on paused time: a ping every interval, and a read that
//!   fails with `TimedOut` after three silent ones (but not while the peer talks).
//!
//! Every wait is bounded by [`LIMIT`]: a hang fails the test instead of stalling it.
//! Frames are built and parsed by `common::wire::ws`, from RFC 6455 itself.

mod common;

use std::future::Future;
use std::io;
use std::time::Duration;

use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use futures_util::{SinkExt, StreamExt};
use gateway::protocol::{MAX_MESSAGE, WRITE_BATCH};
use gateway::transport::ws::handshake::{accept_key, client_key};
use gateway::transport::{Role, WsIo, close_code};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as TungRole};
use tokio_tungstenite::tungstenite::{self, Message};

use common::wait::{until_idle, within};
use common::wire::ws::*;
use common::wire::{XorShift, pattern};

// ---- helpers -------------------------------------------------------------------

/// Upper bound for any single wait in these tests.
const LIMIT: Duration = Duration::from_secs(20);
/// Capacity of each direction of the in-memory pipe.
const PIPE: usize = 64 * 1024;

const DRAIN: &str = r#"{"type":"drain"}"#;

type Ours = WsIo<DuplexStream>;
type Theirs = WebSocketStream<DuplexStream>;

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    within(LIMIT, what, fut).await
}

/// Awaits a spawned task within [`LIMIT`], propagating its panic.
async fn joined<T>(what: &str, task: tokio::task::JoinHandle<T>) -> T {
    match bounded(what, task).await {
        Ok(out) => out,
        Err(e) => panic!("{what}: task failed: {e}"),
    }
}

/// Our end of a fresh pipe, and the raw other end.
fn ours(role: Role, close: u16) -> (Ours, DuplexStream) {
    let (a, b) = tokio::io::duplex(PIPE);
    (WsIo::new(a, role, None, close), b)
}

/// Whether the drain control message is among the text messages our end kept
/// while it read data (it hands them over; acting on them is the session's job).
fn drain_noticed(ws: &mut Ours) -> bool {
    std::iter::from_fn(|| ws.take_text()).any(|t| t == DRAIN)
}

/// Our end and a tungstenite peer in the opposite role.
async fn ours_and_tungstenite(role: Role, close: u16) -> (Ours, Theirs) {
    let (ws, raw) = ours(role, close);
    let their_role = match role {
        Role::Client => TungRole::Server,
        Role::Server => TungRole::Client,
    };
    let theirs = WebSocketStream::from_raw_socket(raw, their_role, None).await;
    (ws, theirs)
}

/// Compares two byte strings without printing megabytes when they differ.
#[track_caller]
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: got {} bytes, want {}; first difference at {:?}",
        got.len(),
        want.len(),
        first.unwrap_or(got.len().min(want.len()))
    );
}

/// Reads our end until it ends, with read buffers of varying sizes (so both the
/// buffered and the direct-to-caller paths are used). Returns the bytes read and
/// how the stream ended (`Ok` is a clean `Ok(0)`).
async fn read_until_end(ws: &mut Ours, rng: &mut XorShift) -> (Vec<u8>, io::Result<()>) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 80 * 1024];
    loop {
        let want = 1 + rng.below(buf.len());
        match ws.read(&mut buf[..want]).await {
            Ok(0) => return (data, Ok(())),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return (data, Err(e)),
        }
    }
}

/// Reads tungstenite's side until it reports a close frame; returns what came
/// before it and the close frame.
async fn tungstenite_until_close(theirs: &mut Theirs) -> (Vec<Message>, Option<CloseFrame>) {
    let mut before = Vec::new();
    loop {
        match bounded("tungstenite reading", theirs.next()).await {
            Some(Ok(Message::Close(frame))) => return (before, frame),
            Some(Ok(m)) => before.push(m),
            other => panic!("tungstenite: expected a message, got {other:?}"),
        }
    }
}

/// What our end did with raw input.
struct RawRun {
    /// Binary payload bytes it read.
    data: Vec<u8>,
    /// How reading ended (`Ok`: a clean `Ok(0)`).
    end: io::Result<()>,
    /// Everything it wrote, as raw bytes.
    sent_bytes: Vec<u8>,
    drain: bool,
}

/// Feeds `input` to a fresh end in `role` (then EOF), reads it until it ends,
/// drops it, and collects what it wrote back.
async fn run_raw(role: Role, input: Vec<u8>, seed: u64) -> RawRun {
    let (mut ws, raw) = ours(role, close_code::NORMAL);
    let (mut their_rd, mut their_wr) = tokio::io::split(raw);
    let write = async move {
        // Our end may stop reading (and drop its side) before all of it is taken.
        let _ = their_wr.write_all(&input).await;
        let _ = their_wr.shutdown().await;
    };
    let read_ours = async move {
        let mut rng = XorShift::new(seed);
        let (data, end) = read_until_end(&mut ws, &mut rng).await;
        let drain = drain_noticed(&mut ws);
        drop(ws); // closes the pipe: the collector below sees EOF
        (data, end, drain)
    };
    let collect = async move {
        let mut sent = Vec::new();
        their_rd.read_to_end(&mut sent).await.map(|_| sent)
    };
    let run = async { tokio::join!(write, read_ours, collect) };
    let (_, (data, end, drain), sent) = bounded("raw run", run).await;
    RawRun {
        data,
        end,
        sent_bytes: sent.expect("reading what our end sent"),
        drain,
    }
}

/// Checks the framing rules every frame we send must follow; returns the frames.
fn check_sent(role: Role, sent_bytes: &[u8]) -> Result<Vec<Parsed>, String> {
    let frames = parse_frames(sent_bytes)?;
    for f in &frames {
        if !f.fin || f.rsv != 0 {
            return Err(format!("fragmented or reserved bits set: {f:?}"));
        }
        if f.masked != (role == Role::Client) {
            return Err(format!("masked wrongly for a {role:?}: {f:?}"));
        }
        if f.opcode >= 0x8 && f.payload.len() > 125 {
            return Err(format!("control frame over 125 bytes: {f:?}"));
        }
    }
    if let Some(i) = frames.iter().position(|f| f.opcode == OP_CLOSE)
        && i + 1 != frames.len()
    {
        return Err(format!("frames after the close frame: {frames:?}"));
    }
    Ok(frames)
}

// ---- interop with tungstenite ----------------------------------------------------

/// A tungstenite client sends binary messages at every length boundary (up to the
/// exact limit) with pings and a drain in between; our server reads every byte in
/// order, answers each ping with its payload, and answers the close.
#[tokio::test]
async fn tungstenite_client_to_our_server_messages_pings_and_drain() {
    let (mut ws, mut theirs) = ours_and_tungstenite(Role::Server, close_code::NORMAL).await;
    assert_eq!(ws.take_text(), None);

    let sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000, MAX_MESSAGE];
    let messages: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(i as u64 + 1, n))
        .collect();
    let expected = messages.concat();

    let reader = tokio::spawn(async move {
        let mut rng = XorShift::new(7);
        let (data, end) = read_until_end(&mut ws, &mut rng).await;
        (data, end, ws)
    });

    let mut pings = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let send = theirs.send(Message::Binary(m.clone().into()));
        bounded("sending a binary message", send).await.unwrap();
        let ping = pattern(100 + i as u64, (i * 31) % 126);
        let send = theirs.send(Message::Ping(ping.clone().into()));
        bounded("sending a ping", send).await.unwrap();
        pings.push(ping);
        if i == sizes.len() / 2 {
            let send = theirs.send(Message::text(DRAIN));
            bounded("sending the drain", send).await.unwrap();
        }
    }
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    bounded("sending close", theirs.close(Some(bye)))
        .await
        .unwrap();

    let (data, end, mut ws) = joined("our reader", reader).await;
    end.expect("our read ends with Ok(0) on the peer's close");
    assert_same_bytes(&data, &expected, "bytes our server read");
    assert!(drain_noticed(&mut ws), "the drain message was not noticed");

    let (before, close) = tungstenite_until_close(&mut theirs).await;
    let pongs: Vec<Message> = pings.into_iter().map(|p| Message::Pong(p.into())).collect();
    assert_eq!(
        before, pongs,
        "each ping answered, in order, with its payload"
    );
    let close = close.expect("our close reply has a status code");
    assert_eq!(u16::from(close.code), close_code::NORMAL);
}

/// Fragmented messages from tungstenite: a binary message in three fragments with
/// a ping between them, and the drain split in two.
#[tokio::test]
async fn tungstenite_fragmented_messages_with_interleaved_ping() {
    let (mut ws, mut theirs) = ours_and_tungstenite(Role::Server, close_code::NORMAL).await;
    let parts = [pattern(1, 5000), pattern(2, 1), pattern(3, 70_000)];
    let tail = pattern(4, 300);

    let reader = tokio::spawn(async move {
        let mut rng = XorShift::new(8);
        let (data, end) = read_until_end(&mut ws, &mut rng).await;
        (data, end, ws)
    });

    let frames = [
        Frame::message(parts[0].clone(), OpCode::Data(Data::Binary), false),
        Frame::ping(b"between".to_vec()),
        Frame::message(parts[1].clone(), OpCode::Data(Data::Continue), false),
        Frame::message(parts[2].clone(), OpCode::Data(Data::Continue), true),
        Frame::message(&br#"{"type":"#[..], OpCode::Data(Data::Text), false),
        Frame::ping(b"in text".to_vec()),
        Frame::message(&br#""drain"}"#[..], OpCode::Data(Data::Continue), true),
        Frame::message(tail.clone(), OpCode::Data(Data::Binary), true),
    ];
    for f in frames {
        bounded("sending a frame", theirs.send(Message::Frame(f)))
            .await
            .unwrap();
    }
    bounded("sending close", theirs.close(None)).await.unwrap();

    let (data, end, mut ws) = joined("our reader", reader).await;
    end.expect("our read ends with Ok(0) on the peer's close");
    let mut expected = parts.concat();
    expected.extend_from_slice(&tail);
    assert_same_bytes(&data, &expected, "bytes of the fragmented messages");
    assert!(
        drain_noticed(&mut ws),
        "the fragmented drain was not noticed"
    );

    let (before, close) = tungstenite_until_close(&mut theirs).await;
    assert_eq!(
        before,
        vec![
            Message::Pong(b"between".to_vec().into()),
            Message::Pong(b"in text".to_vec().into()),
        ]
    );
    // An empty close is answered with 1000.
    let close = close.expect("our close reply has a status code");
    assert_eq!(u16::from(close.code), close_code::NORMAL);
}

/// Our end writes 3 MiB in irregular chunks with irregular flushes, then closes;
/// tungstenite (the other role) receives only binary messages of at most
/// `WRITE_BATCH` bytes that add up to exactly what was written.
async fn our_writes_reach_tungstenite(role: Role, seed: u64) {
    let (mut ws, mut theirs) = ours_and_tungstenite(role, close_code::NORMAL).await;
    let total = 3 << 20;
    let data = pattern(seed, total);

    let reader = tokio::spawn(async move {
        let mut messages = Vec::new();
        let mut close = None;
        // Read past the close frame: tungstenite sends its reply on the next read,
        // and the stream then ends.
        while let Some(m) = theirs.next().await {
            match m {
                Ok(Message::Close(frame)) => close = Some(frame),
                Ok(m) => messages.push(m),
                Err(e) => panic!("tungstenite ({role:?} peer) failed: {e}"),
            }
        }
        (messages, close)
    });

    let mut rng = XorShift::new(seed);
    let mut at = 0;
    let mut flushes = 0;
    while at < total {
        let n = match rng.below(4) {
            0 => 1 + rng.below(16),
            1 => 1 + rng.below(2000),
            2 => 1 + rng.below(WRITE_BATCH),
            _ => 1 + rng.below(3 * WRITE_BATCH),
        }
        .min(total - at);
        bounded("writing", ws.write_all(&data[at..at + n]))
            .await
            .unwrap();
        if rng.below(3) == 0 {
            bounded("flushing", ws.flush()).await.unwrap();
            flushes += 1;
        }
        at += n;
    }
    assert!(flushes > 10);
    // No final flush: closing seals the open frame and sends it before the close.
    bounded("our close", ws.close()).await.unwrap();

    let (messages, close) = joined("tungstenite reader", reader).await;
    let mut received = Vec::with_capacity(total);
    for (i, m) in messages.iter().enumerate() {
        let Message::Binary(b) = m else {
            panic!("message {i} is not binary: {m:?}");
        };
        assert!(
            !b.is_empty() && b.len() <= WRITE_BATCH,
            "message {i} has {} bytes (limit {WRITE_BATCH})",
            b.len()
        );
        received.extend_from_slice(b);
    }
    assert!(messages.len() >= total / WRITE_BATCH);
    assert_same_bytes(&received, &data, "bytes tungstenite received");
    let close = close
        .expect("tungstenite saw our close")
        .expect("with a code");
    assert_eq!(u16::from(close.code), close_code::NORMAL);
}

/// As a client our frames are masked: a tungstenite server refuses unmasked ones.
#[tokio::test]
async fn our_client_writes_to_tungstenite_server() {
    our_writes_reach_tungstenite(Role::Client, 31).await;
}

/// As a server our frames are unmasked: a tungstenite client refuses masked ones.
#[tokio::test]
async fn our_server_writes_to_tungstenite_client() {
    our_writes_reach_tungstenite(Role::Server, 32).await;
}

/// Our `close()` sends the configured code, tungstenite answers, `close()` returns;
/// afterwards writes fail and reads report the end.
#[tokio::test]
async fn our_close_handshake_with_tungstenite() {
    for (role, code, reason) in [
        (Role::Server, close_code::AWAY, "going away"),
        (Role::Client, close_code::NORMAL, ""),
    ] {
        let (mut ws, mut theirs) = ours_and_tungstenite(role, code).await;
        let peer = tokio::spawn(async move {
            let (before, close) = tungstenite_until_close(&mut theirs).await;
            // Keep reading: this sends tungstenite's reply, then the stream ends.
            let rest = bounded("tungstenite after close", theirs.next()).await;
            (before, close, rest.map(|r| r.map_err(|e| e.to_string())))
        });
        bounded("our close", ws.close()).await.unwrap();
        let (before, close, rest) = joined("tungstenite", peer).await;
        assert!(before.is_empty(), "{role:?}: {before:?}");
        let close = close.expect("our close frame has a code");
        assert_eq!(u16::from(close.code), code, "{role:?}");
        assert_eq!(close.reason.as_str(), reason, "{role:?}");
        assert!(rest.is_none(), "{role:?}: after the handshake: {rest:?}");

        let err = ws.write_all(b"late").await.expect_err("write after close");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let mut buf = [0u8; 16];
        let n = bounded("read after close", ws.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}

/// Our `close()` returns only once the peer's close frame arrived; data and pings
/// arriving in between are discarded (no pong once our close is out), and the
/// socket is shut down at the end. On paused time, so that "keeps waiting" can
/// be checked once our side can do nothing more, rather than after some yields.
#[tokio::test(start_paused = true)]
async fn our_close_waits_for_the_reply() {
    let (mut ws, raw) = ours(Role::Server, close_code::AWAY);
    let (mut their_rd, mut their_wr) = tokio::io::split(raw);
    let done = std::cell::Cell::new(false);
    let our_side = async {
        ws.close().await.unwrap();
        done.set(true);
    };
    let peer = async {
        let reason = "going away";
        let mut frame = vec![0u8; 4 + reason.len()];
        their_rd.read_exact(&mut frame).await.unwrap();
        let frames = parse_frames(&frame).unwrap();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].close_code(), Some(close_code::AWAY));
        assert_eq!(&frames[0].payload[2..], reason.as_bytes());
        assert!(!frames[0].masked);
        // Let our side run until it can do nothing more: it must keep waiting.
        until_idle().await;
        assert!(
            !done.get(),
            "close() returned before the peer's close frame"
        );
        let reply = [
            masked(FIN | OP_BINARY, b"late data"),
            masked(FIN | OP_PING, b"late ping"),
            masked(FIN | OP_CLOSE, &close_body(close_code::AWAY, b"")),
        ]
        .concat();
        their_wr.write_all(&reply).await.unwrap();
        // EOF once our side has shut the socket down.
        let mut rest = Vec::new();
        their_rd.read_to_end(&mut rest).await.unwrap();
        rest
    };
    let ((), rest) = bounded("closing", async { tokio::join!(our_side, peer) }).await;
    assert!(done.get());
    assert!(rest.is_empty(), "sent after our close frame: {rest:02x?}");
}

/// tungstenite closes: our read returns `Ok(0)` and tungstenite gets the same
/// code back.
#[tokio::test]
async fn tungstenite_close_handshake_with_us() {
    for role in [Role::Server, Role::Client] {
        let (mut ws, mut theirs) = ours_and_tungstenite(role, close_code::AWAY).await;
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        bounded("tungstenite close", theirs.close(Some(bye)))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = bounded("our read", ws.read(&mut buf)).await.unwrap();
        assert_eq!(n, 0, "{role:?}: the peer's close ends our stream");
        let (before, close) = tungstenite_until_close(&mut theirs).await;
        assert!(before.is_empty(), "{role:?}: {before:?}");
        let close = close.expect("our reply has a code");
        assert_eq!(u16::from(close.code), close_code::NORMAL, "{role:?}");

        let n = bounded("our read again", ws.read(&mut buf)).await.unwrap();
        assert_eq!(n, 0, "{role:?}: the end is sticky");
        let err = ws.write_all(b"late").await.expect_err("write after close");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{role:?}");
    }
}

/// `send_text` / `recv_text` with tungstenite, in both roles: text in both
/// directions, a ping before the text answered in order, binary data where text is
/// expected refused (and still readable), and a close ending `recv_text`.
#[tokio::test]
async fn text_api_with_tungstenite() {
    for role in [Role::Server, Role::Client] {
        let (mut ws, mut theirs) = ours_and_tungstenite(role, close_code::NORMAL).await;

        let hello = "hello ✓ — ünïcödé";
        bounded("ping", theirs.send(Message::Ping(b"p".to_vec().into())))
            .await
            .unwrap();
        bounded("text", theirs.send(Message::text(hello)))
            .await
            .unwrap();
        let got = bounded("recv_text", ws.recv_text()).await.unwrap();
        assert_eq!(got, hello, "{role:?}");

        // recv_text hands the drain back instead of acting on it.
        bounded("drain", theirs.send(Message::text(DRAIN)))
            .await
            .unwrap();
        let got = bounded("recv_text", ws.recv_text()).await.unwrap();
        assert_eq!(got, DRAIN, "{role:?}");
        assert_eq!(ws.take_text(), None, "{role:?}");

        // Binary data written before a text (not even flushed) goes out first.
        bounded("write", ws.write_all(b"before")).await.unwrap();
        bounded("send_text", ws.send_text(r#"{"hello":1}"#))
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(
                bounded("tungstenite", theirs.next())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(
            got,
            vec![
                Message::Pong(b"p".to_vec().into()),
                Message::Binary(b"before".to_vec().into()),
                Message::text(r#"{"hello":1}"#),
            ],
            "{role:?}"
        );

        // A large text (under the 64 KiB limit) both ways.
        let big: String = "abcdefghij".repeat(6000);
        bounded("big text", theirs.send(Message::text(big.clone())))
            .await
            .unwrap();
        let got = bounded("recv_text", ws.recv_text()).await.unwrap();
        assert_eq!(got, big, "{role:?}");
        let send = ws.send_text(&big);
        let (sent, received) =
            bounded("big text back", async { tokio::join!(send, theirs.next()) }).await;
        sent.unwrap();
        assert_eq!(received.unwrap().unwrap(), Message::text(big), "{role:?}");

        // Binary first: recv_text refuses it, and the data is still there to read.
        let send = theirs.send(Message::Binary(b"bin".to_vec().into()));
        bounded("binary", send).await.unwrap();
        let err = bounded("recv_text", ws.recv_text()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{role:?}");
        let mut buf = [0u8; 16];
        let n = bounded("read", ws.read(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"bin", "{role:?}");

        // The peer closes: recv_text reports it.
        bounded("close", theirs.close(None)).await.unwrap();
        let err = bounded("recv_text", ws.recv_text()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{role:?}");
        let (before, close) = tungstenite_until_close(&mut theirs).await;
        assert!(before.is_empty(), "{role:?}: {before:?}");
        assert_eq!(u16::from(close.unwrap().code), close_code::NORMAL);
    }
}

// ---- violations and valid edge cases -------------------------------------------

/// Input that breaks the protocol, and the status code our close must carry.
struct Violation {
    name: &'static str,
    role: Role,
    input: Vec<u8>,
    code: u16,
}

fn violation(name: &'static str, input: Vec<u8>, code: u16) -> Violation {
    Violation {
        name,
        role: Role::Server,
        input,
        code,
    }
}

fn client_violation(name: &'static str, input: Vec<u8>, code: u16) -> Violation {
    Violation {
        name,
        role: Role::Client,
        input,
        code,
    }
}

fn violations() -> Vec<Violation> {
    use close_code::{INVALID_DATA, PROTOCOL, TOO_BIG};
    let close = |code: u16| masked(FIN | OP_CLOSE, &close_body(code, b""));
    let mut v = vec![
        violation("rsv1 set", masked(FIN | RSV1 | OP_BINARY, b"x"), PROTOCOL),
        violation("rsv2 set", masked(FIN | RSV2 | OP_BINARY, b"x"), PROTOCOL),
        violation("rsv3 set", masked(FIN | RSV3 | OP_TEXT, b"{}"), PROTOCOL),
        violation(
            "rsv1 on a ping",
            masked(FIN | RSV1 | OP_PING, b""),
            PROTOCOL,
        ),
        violation(
            "rsv1 on an empty continuation",
            [masked(OP_BINARY, b"a"), masked(FIN | RSV1 | OP_CONT, b"")].concat(),
            PROTOCOL,
        ),
        violation("reserved opcode 0x3", masked(FIN | 0x3, b"x"), PROTOCOL),
        violation("reserved opcode 0x7", masked(FIN | 0x7, b""), PROTOCOL),
        violation("reserved opcode 0xB", masked(FIN | 0xB, b""), PROTOCOL),
        violation("reserved opcode 0xF", masked(FIN | 0xF, b"x"), PROTOCOL),
        violation(
            "reserved opcode inside a fragmented message",
            [masked(OP_BINARY, b"a"), masked(FIN | 0x4, b"b")].concat(),
            PROTOCOL,
        ),
        violation(
            "unmasked binary to a server",
            unmasked(FIN | OP_BINARY, b"abc"),
            PROTOCOL,
        ),
        violation(
            "unmasked empty frame to a server",
            unmasked(FIN | OP_BINARY, b""),
            PROTOCOL,
        ),
        violation(
            "unmasked ping to a server",
            unmasked(FIN | OP_PING, b"p"),
            PROTOCOL,
        ),
        violation(
            "unmasked close to a server",
            unmasked(FIN | OP_CLOSE, &close_body(1000, b"")),
            PROTOCOL,
        ),
        violation(
            "unmasked frame after a masked one",
            [
                masked(FIN | OP_BINARY, b"ok"),
                unmasked(FIN | OP_BINARY, b"no"),
            ]
            .concat(),
            PROTOCOL,
        ),
        client_violation(
            "masked binary to a client",
            masked(FIN | OP_BINARY, b"abc"),
            PROTOCOL,
        ),
        client_violation(
            "masked ping to a client",
            masked(FIN | OP_PING, b""),
            PROTOCOL,
        ),
        client_violation(
            "masked close to a client",
            masked(FIN | OP_CLOSE, &close_body(1000, b"")),
            PROTOCOL,
        ),
        violation("fragmented ping", masked(OP_PING, b"p"), PROTOCOL),
        violation("fragmented pong", masked(OP_PONG, b""), PROTOCOL),
        violation(
            "fragmented close",
            masked(OP_CLOSE, &close_body(1000, b"")),
            PROTOCOL,
        ),
        violation(
            "ping of 126 bytes",
            masked(FIN | OP_PING, &[7; 126]),
            PROTOCOL,
        ),
        violation(
            "pong of 126 bytes",
            masked(FIN | OP_PONG, &[7; 126]),
            PROTOCOL,
        ),
        violation(
            "close of 126 bytes",
            masked(FIN | OP_CLOSE, &close_body(1000, &[b'a'; 124])),
            PROTOCOL,
        ),
        violation(
            "ping claiming 2^40 bytes",
            raw_frame(FIN | OP_PING, Len::Claim(1 << 40), b"", true),
            PROTOCOL,
        ),
        violation(
            "continuation without a message",
            masked(FIN | OP_CONT, b"x"),
            PROTOCOL,
        ),
        violation(
            "non-final continuation without a message",
            masked(OP_CONT, b"x"),
            PROTOCOL,
        ),
        violation(
            "continuation after a finished message",
            [masked(FIN | OP_BINARY, b"a"), masked(FIN | OP_CONT, b"b")].concat(),
            PROTOCOL,
        ),
        violation(
            "continuation after a finished fragmented message",
            [
                masked(OP_BINARY, b"a"),
                masked(FIN | OP_CONT, b"b"),
                masked(FIN | OP_CONT, b"c"),
            ]
            .concat(),
            PROTOCOL,
        ),
        violation(
            "binary while a binary message is unfinished",
            [masked(OP_BINARY, b"a"), masked(FIN | OP_BINARY, b"b")].concat(),
            PROTOCOL,
        ),
        violation(
            "text while a binary message is unfinished",
            [masked(OP_BINARY, b"a"), masked(FIN | OP_TEXT, b"{}")].concat(),
            PROTOCOL,
        ),
        violation(
            "binary while a text message is unfinished",
            [masked(OP_TEXT, b"{"), masked(FIN | OP_BINARY, b"b")].concat(),
            PROTOCOL,
        ),
        violation(
            "text while a text message is unfinished",
            [masked(OP_TEXT, b"{"), masked(FIN | OP_TEXT, b"}")].concat(),
            PROTOCOL,
        ),
        violation(
            "64-bit length with the MSB set",
            raw_frame(FIN | OP_BINARY, Len::Claim(1 << 63), b"", true),
            PROTOCOL,
        ),
        violation(
            "64-bit length of all ones",
            raw_frame(FIN | OP_BINARY, Len::Claim(u64::MAX), b"", true),
            PROTOCOL,
        ),
        violation(
            "text not UTF-8",
            masked(FIN | OP_TEXT, &[0xff, 0xfe]),
            INVALID_DATA,
        ),
        violation(
            "text with an overlong encoding",
            masked(FIN | OP_TEXT, &[b'a', 0xc0, 0x80]),
            INVALID_DATA,
        ),
        violation(
            "text with a surrogate",
            masked(FIN | OP_TEXT, &[0xed, 0xa0, 0x80]),
            INVALID_DATA,
        ),
        violation(
            "text ending in a truncated sequence, fragmented",
            [masked(OP_TEXT, b"ab"), masked(FIN | OP_CONT, &[0xe2, 0x9c])].concat(),
            INVALID_DATA,
        ),
        violation(
            "close with a 1-byte payload",
            masked(FIN | OP_CLOSE, &[0x03]),
            PROTOCOL,
        ),
        violation("close code 0", close(0), PROTOCOL),
        violation("close code 999", close(999), PROTOCOL),
        violation("close code 1004", close(1004), PROTOCOL),
        violation("close code 1005", close(1005), PROTOCOL),
        violation("close code 1006", close(1006), PROTOCOL),
        violation("close code 1015", close(1015), PROTOCOL),
        violation("close code 1016", close(1016), PROTOCOL),
        violation("close code 2999", close(2999), PROTOCOL),
        violation("close code 5000", close(5000), PROTOCOL),
        violation("close code 65535", close(65535), PROTOCOL),
        violation(
            "close reason not UTF-8",
            masked(FIN | OP_CLOSE, &close_body(1000, &[b'o', b'k', 0xff])),
            INVALID_DATA,
        ),
        violation(
            "binary message of 1 MiB + 1 in one frame (header only)",
            raw_frame(
                FIN | OP_BINARY,
                Len::Claim(MAX_MESSAGE as u64 + 1),
                b"",
                true,
            ),
            TOO_BIG,
        ),
        violation(
            "binary frame claiming 2^40 bytes",
            raw_frame(OP_BINARY, Len::Claim(1 << 40), b"", true),
            TOO_BIG,
        ),
        violation(
            "binary message of 1 MiB + 1 in fragments",
            [
                masked(OP_BINARY, &pattern(5, MAX_MESSAGE / 2)),
                masked(OP_CONT, &pattern(6, MAX_MESSAGE / 2)),
                masked(FIN | OP_CONT, b"!"),
            ]
            .concat(),
            TOO_BIG,
        ),
        violation(
            "continuation claiming 4 GiB after 1 MiB",
            [
                masked(OP_BINARY, &pattern(7, MAX_MESSAGE)),
                raw_frame(FIN | OP_CONT, Len::Claim(u32::MAX as u64), b"", true),
            ]
            .concat(),
            TOO_BIG,
        ),
        violation(
            "text of 64 KiB + 1 in one frame",
            masked(FIN | OP_TEXT, &[b'a'; 64 * 1024 + 1]),
            TOO_BIG,
        ),
        violation(
            "text of 64 KiB + 1 in fragments",
            [
                masked(OP_TEXT, &[b'a'; 40 * 1024]),
                masked(OP_CONT, &[b'a'; 24 * 1024]),
                masked(FIN | OP_CONT, b"a"),
            ]
            .concat(),
            TOO_BIG,
        ),
        client_violation(
            "client: rsv1 set",
            unmasked(FIN | RSV1 | OP_BINARY, b"x"),
            PROTOCOL,
        ),
        client_violation(
            "client: close code 1005",
            unmasked(FIN | OP_CLOSE, &close_body(1005, b"")),
            PROTOCOL,
        ),
        client_violation(
            "client: text not UTF-8",
            unmasked(FIN | OP_TEXT, &[0x80]),
            INVALID_DATA,
        ),
        client_violation(
            "client: binary over 1 MiB (header only)",
            raw_frame(
                FIN | OP_BINARY,
                Len::Claim(MAX_MESSAGE as u64 + 1),
                b"",
                false,
            ),
            TOO_BIG,
        ),
    ];
    // Violations after valid traffic (a ping to answer, data to hand over) still
    // fail the stream the same way.
    v.push(violation(
        "violation after a ping and data",
        [
            masked(FIN | OP_PING, b"first"),
            masked(FIN | OP_BINARY, b"data"),
            masked(FIN | RSV2 | OP_BINARY, b"bad"),
        ]
        .concat(),
        PROTOCOL,
    ));
    v
}

/// Every violation fails the read with `InvalidData` after a close frame with the
/// right status code (and nothing after it) was sent.
#[tokio::test]
async fn violations_fail_with_the_right_close_code() {
    let mut failures = Vec::new();
    for (i, case) in violations().into_iter().enumerate() {
        let run = run_raw(case.role, case.input, i as u64).await;
        let name = case.name;
        match &run.end {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            other => {
                failures.push(format!(
                    "{name}: read ended with {other:?}, want InvalidData"
                ));
                continue;
            }
        }
        let frames = match check_sent(case.role, &run.sent_bytes) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("{name}: bad output: {e}"));
                continue;
            }
        };
        let Some(last) = frames.last() else {
            failures.push(format!("{name}: no close frame sent"));
            continue;
        };
        if last.opcode != OP_CLOSE {
            failures.push(format!("{name}: last frame is not a close frame: {last:?}"));
            continue;
        }
        if last.close_code() != Some(case.code) {
            failures.push(format!(
                "{name}: close code {:?}, want {}",
                last.close_code(),
                case.code
            ));
        }
        if std::str::from_utf8(&last.payload[2..]).is_err() {
            failures.push(format!("{name}: close reason is not UTF-8"));
        }
        if let Some(other) = frames[..frames.len() - 1]
            .iter()
            .find(|f| f.opcode != OP_PONG)
        {
            failures.push(format!(
                "{name}: unexpected frame before the close: {other:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Valid input, ending with a close frame from the peer.
struct Valid {
    name: &'static str,
    role: Role,
    input: Vec<u8>,
    /// The binary payload our end must read.
    data: Vec<u8>,
    /// The pongs it must send, in order, before its close reply.
    pongs: Vec<Vec<u8>>,
    /// The code of its close reply.
    reply: u16,
    drain: bool,
}

fn valid(name: &'static str, frames: Vec<Vec<u8>>, data: &[u8]) -> Valid {
    let mut input = frames.concat();
    input.extend(masked(FIN | OP_CLOSE, &close_body(1000, b"")));
    Valid {
        name,
        role: Role::Server,
        input,
        data: data.to_vec(),
        pongs: Vec::new(),
        reply: close_code::NORMAL,
        drain: false,
    }
}

fn valid_cases() -> Vec<Valid> {
    let big_a = pattern(11, MAX_MESSAGE / 2);
    let big_b = pattern(12, MAX_MESSAGE / 2);
    let closing = |name, payload: Vec<u8>, reply| Valid {
        name,
        role: Role::Server,
        input: [
            masked(FIN | OP_BINARY, b"x"),
            masked(FIN | OP_CLOSE, &payload),
        ]
        .concat(),
        data: b"x".to_vec(),
        pongs: Vec::new(),
        reply,
        drain: false,
    };
    vec![
        valid(
            "empty binary frame",
            vec![
                masked(FIN | OP_BINARY, b""),
                masked(FIN | OP_BINARY, b"abc"),
            ],
            b"abc",
        ),
        valid(
            "zero-length continuations",
            vec![
                masked(OP_BINARY, b"ab"),
                masked(OP_CONT, b""),
                masked(FIN | OP_CONT, b"c"),
                masked(OP_BINARY, b""),
                masked(FIN | OP_CONT, b""),
                masked(FIN | OP_BINARY, b"d"),
            ],
            b"abcd",
        ),
        Valid {
            drain: true,
            ..valid(
                "drain in fragments with empty ones",
                vec![
                    masked(OP_TEXT, b""),
                    masked(OP_CONT, br#"{"type":"#),
                    masked(OP_CONT, b""),
                    masked(FIN | OP_CONT, br#""drain"}"#),
                ],
                b"",
            )
        },
        valid(
            "UTF-8 sequence split across text fragments",
            vec![
                masked(OP_TEXT, &[b'a', 0xe2]),
                masked(OP_CONT, &[0x9c]),
                masked(FIN | OP_CONT, &[0x93, b'b']),
            ],
            b"",
        ),
        valid("empty text message", vec![masked(FIN | OP_TEXT, b"")], b""),
        valid(
            "text of exactly 64 KiB",
            vec![masked(FIN | OP_TEXT, &[b' '; 64 * 1024])],
            b"",
        ),
        valid(
            "text of exactly 64 KiB in fragments",
            vec![
                masked(OP_TEXT, &[b' '; 60 * 1024]),
                masked(FIN | OP_CONT, &[b' '; 4 * 1024]),
            ],
            b"",
        ),
        valid(
            "binary of exactly 1 MiB in fragments",
            vec![masked(OP_BINARY, &big_a), masked(FIN | OP_CONT, &big_b)],
            &[big_a.clone(), big_b.clone()].concat(),
        ),
        valid(
            "16-bit length of a small payload",
            vec![raw_frame(FIN | OP_BINARY, Len::U16, b"hello", true)],
            b"hello",
        ),
        valid(
            "64-bit length of a small payload",
            vec![raw_frame(FIN | OP_BINARY, Len::U64, b"hello", true)],
            b"hello",
        ),
        valid(
            "64-bit length of an empty payload, then 16-bit of an empty ping",
            vec![
                raw_frame(FIN | OP_BINARY, Len::U64, b"", true),
                raw_frame(FIN | OP_PONG, Len::U16, b"", true),
                masked(FIN | OP_BINARY, b"!"),
            ],
            b"!",
        ),
        Valid {
            pongs: vec![vec![0x5a; 125], Vec::new()],
            ..valid(
                "ping of 125 bytes and an empty ping",
                vec![
                    masked(FIN | OP_PING, &[0x5a; 125]),
                    masked(FIN | OP_PING, b""),
                ],
                b"",
            )
        },
        Valid {
            pongs: vec![b"p1".to_vec(), b"p2".to_vec()],
            ..valid(
                "pings between fragments",
                vec![
                    masked(OP_BINARY, b"a"),
                    masked(FIN | OP_PING, b"p1"),
                    masked(OP_CONT, b"b"),
                    masked(FIN | OP_PONG, b"unsolicited"),
                    masked(FIN | OP_PING, b"p2"),
                    masked(FIN | OP_CONT, b"c"),
                ],
                b"abc",
            )
        },
        closing(
            "close with an empty payload",
            Vec::new(),
            close_code::NORMAL,
        ),
        closing(
            "close 3000 with a UTF-8 reason",
            close_body(3000, "fermé ✓".as_bytes()),
            3000,
        ),
        closing("close 1001", close_body(1001, b""), 1001),
        closing("close 1011", close_body(1011, b"oops"), 1011),
        closing("close 1014", close_body(1014, b""), 1014),
        closing("close 4999", close_body(4999, b""), 4999),
        closing(
            "close with a 123-byte reason",
            close_body(1000, &[b'r'; 123]),
            close_code::NORMAL,
        ),
        Valid {
            name: "client: unmasked frames accepted, reply masked",
            role: Role::Client,
            input: [
                unmasked(FIN | OP_PING, b"hi"),
                unmasked(OP_BINARY, b"ab"),
                raw_frame(FIN | OP_CONT, Len::U64, b"cd", false),
                unmasked(FIN | OP_CLOSE, &close_body(1000, b"bye")),
            ]
            .concat(),
            data: b"abcd".to_vec(),
            pongs: vec![b"hi".to_vec()],
            reply: close_code::NORMAL,
            drain: false,
        },
    ]
}

/// Unusual but valid frames are accepted; the peer's close is answered with its
/// code (1000 for an empty one) and no reason.
#[tokio::test]
async fn valid_edge_cases_are_accepted() {
    let mut failures = Vec::new();
    for (i, case) in valid_cases().into_iter().enumerate() {
        let run = run_raw(case.role, case.input, 1000 + i as u64).await;
        let name = case.name;
        if let Err(e) = &run.end {
            failures.push(format!("{name}: read failed: {e}"));
            continue;
        }
        if run.data != case.data {
            failures.push(format!(
                "{name}: read {} bytes that differ from the {} expected",
                run.data.len(),
                case.data.len()
            ));
        }
        if run.drain != case.drain {
            failures.push(format!("{name}: drain_received {}", run.drain));
        }
        let frames = match check_sent(case.role, &run.sent_bytes) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("{name}: bad output: {e}"));
                continue;
            }
        };
        let Some((last, before)) = frames.split_last() else {
            failures.push(format!("{name}: nothing sent, want a close reply"));
            continue;
        };
        if last.opcode != OP_CLOSE || last.payload != case.reply.to_be_bytes() {
            failures.push(format!("{name}: reply {last:?}, want close {}", case.reply));
        }
        let pongs: Vec<&[u8]> = before
            .iter()
            .filter(|f| f.opcode == OP_PONG)
            .map(|f| &f.payload[..])
            .collect();
        let want: Vec<&[u8]> = case.pongs.iter().map(|p| &p[..]).collect();
        if pongs != want || before.len() != pongs.len() {
            failures.push(format!(
                "{name}: sent {before:?} before the close, want pongs {want:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- garbage -------------------------------------------------------------------

/// A random input of at most 300 bytes: plain noise, noise behind a plausible
/// header, or a run of plausible frames with one byte changed and a random cut.
fn garbage(rng: &mut XorShift) -> Vec<u8> {
    const FIRST: [u8; 14] = [
        0x82, 0x02, 0x81, 0x01, 0x80, 0x00, 0x88, 0x89, 0x8A, 0x8B, 0xC2, 0x83, 0x09, 0x92,
    ];
    match rng.below(4) {
        0 => {
            let n = rng.below(300);
            rng.bytes(n)
        }
        1 => {
            let n = rng.below(300);
            let mut v = rng.bytes(n);
            if n >= 1 {
                v[0] = FIRST[rng.below(FIRST.len())];
            }
            if n >= 2 {
                // Mostly masked, mostly a length that fits.
                let mask = if rng.below(8) == 0 { 0 } else { 0x80 };
                let len = if rng.below(4) == 0 {
                    126 + rng.below(2)
                } else {
                    rng.below(n.saturating_sub(6).clamp(1, 126))
                };
                v[1] = mask | len as u8;
            }
            v
        }
        _ => {
            // Mostly valid frames (data, fragments, control), then maybe a close.
            const VALID: [u8; 9] = [0x82, 0x81, 0x02, 0x01, 0x00, 0x80, 0x89, 0x8A, 0x88];
            let mut v = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let b0 = if rng.below(10) == 0 {
                    FIRST[rng.below(FIRST.len())]
                } else {
                    VALID[rng.below(VALID.len())]
                };
                let payload = match b0 & 0x0F {
                    OP_TEXT if rng.below(2) == 0 => DRAIN.as_bytes().to_vec(),
                    OP_CLOSE if rng.below(2) == 0 => {
                        let code = [1000, 1001, 1005, 3000, 999][rng.below(5)];
                        close_body(code, b"r")
                    }
                    _ => {
                        let n = rng.below(50);
                        rng.bytes(n)
                    }
                };
                let len = [Len::Minimal, Len::Minimal, Len::U16, Len::U64][rng.below(4)];
                v.extend(raw_frame(b0, len, &payload, rng.below(20) != 0));
            }
            if rng.below(2) == 0 {
                v.extend(masked(FIN | OP_CLOSE, &close_body(1000, b"")));
            }
            if rng.below(3) == 0 {
                let at = rng.below(v.len());
                v[at] = rng.byte();
            }
            if rng.below(3) == 0 {
                v.truncate(rng.below(v.len()));
            }
            v.truncate(299);
            v
        }
    }
}

/// Random input followed by EOF never panics or hangs our server: reading ends
/// with `Ok(0)` (after a close frame, answered), `InvalidData` (after a close frame
/// with 1002, 1007 or 1009), or `UnexpectedEof` (with no close frame), and what it
/// wrote is well-formed.
#[tokio::test]
async fn garbage_input_ends_cleanly() {
    let mut rng = XorShift::new(0x5EED);
    let mut ends = [0usize; 3];
    let mut failures = Vec::new();
    for i in 0..2000u64 {
        let input = garbage(&mut rng);
        let shown = input.clone();
        let run = run_raw(Role::Server, input, i).await;
        let frames = match check_sent(Role::Server, &run.sent_bytes) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("#{i} {shown:02x?}: bad output: {e}"));
                continue;
            }
        };
        let last_close = frames.last().filter(|f| f.opcode == OP_CLOSE);
        let problem = match &run.end {
            Ok(()) => {
                ends[0] += 1;
                last_close
                    .is_none()
                    .then(|| "Ok(0) without a close reply".to_string())
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                ends[1] += 1;
                match last_close.and_then(Parsed::close_code) {
                    Some(1002 | 1007 | 1009) => None,
                    other => Some(format!("InvalidData ({e}) with close code {other:?}")),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                ends[2] += 1;
                last_close.map(|f| format!("UnexpectedEof after sending {f:?}"))
            }
            Err(e) => Some(format!("unexpected error {:?}: {e}", e.kind())),
        };
        if let Some(p) = problem {
            failures.push(format!("#{i} {shown:02x?}: {p}"));
        }
        if let Some(f) = frames
            .iter()
            .find(|f| !matches!(f.opcode, OP_PONG | OP_CLOSE))
        {
            failures.push(format!("#{i} {shown:02x?}: sent {f:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The generator reaches every kind of ending.
    assert!(
        ends.iter().all(|&n| n > 20),
        "ends (Ok, InvalidData, Eof): {ends:?}"
    );
}

// ---- our last frames are not lost ----------------------------------------------

/// The close frame sent for a violation, and the reply to the peer's close, must
/// be written before the read returns (`InvalidData`, `Ok(0)`): the owner drops the
/// codec then (yamux does, on an error or EOF). Here the socket has room: only
/// tokio's cooperative budget runs out, right after the read that brought the
/// frame in.
#[tokio::test]
async fn close_frame_is_sent_when_the_budget_runs_out() {
    let cases = [
        (
            "violation (rsv1)",
            masked(FIN | RSV1 | OP_BINARY, b"x"),
            close_code::PROTOCOL,
        ),
        (
            "the peer's close",
            masked(FIN | OP_CLOSE, &close_body(3000, b"")),
            3000,
        ),
    ];
    let mut lost = Vec::new();
    for (name, input, code) in cases {
        for spent in 0..200 {
            let (mut ws, raw) = ours(Role::Server, close_code::NORMAL);
            let (mut their_rd, mut their_wr) = tokio::io::split(raw);
            their_wr.write_all(&input).await.unwrap();
            their_wr.shutdown().await.unwrap();
            // A fresh budget, `spent` units of it used before the read.
            tokio::task::yield_now().await;
            for _ in 0..spent {
                tokio::task::coop::consume_budget().await;
            }
            let mut buf = [0u8; 16];
            let end = bounded("our read", ws.read(&mut buf)).await;
            drop(ws);
            let mut sent = Vec::new();
            bounded("collecting", their_rd.read_to_end(&mut sent))
                .await
                .unwrap();
            let frames = parse_frames(&sent).unwrap();
            if frames.last().and_then(Parsed::close_code) != Some(code) {
                lost.push(format!(
                    "{name}, {spent} units spent: read gave {end:?}, no close sent"
                ));
            }
        }
    }
    assert!(lost.is_empty(), "close frames lost:\n{}", lost.join("\n"));
}

/// The same with a full socket: frames written and flushed before the peer's close
/// are still queued when it arrives. The read must not return `Ok(0)` before they
/// and the close reply are out, or the peer gets a frame cut in the middle and no
/// close reply.
#[tokio::test]
async fn close_reply_is_sent_after_queued_data() {
    let (mut ws, raw) = ours(Role::Server, close_code::NORMAL);
    let (mut their_rd, mut their_wr) = tokio::io::split(raw);
    let data = pattern(77, 3 * PIPE / 2);
    bounded("write", ws.write_all(&data)).await.unwrap();
    bounded("flush", ws.flush()).await.unwrap();
    let close = masked(FIN | OP_CLOSE, &close_body(1000, b""));
    bounded("peer close", their_wr.write_all(&close))
        .await
        .unwrap();

    let ours_side = async move {
        let mut buf = [0u8; 16];
        let end = ws.read(&mut buf).await;
        drop(ws); // as yamux does once the stream ended
        end
    };
    let collect = async {
        let mut sent = Vec::new();
        their_rd.read_to_end(&mut sent).await.map(|_| sent)
    };
    let (end, sent) = bounded("close", async { tokio::join!(ours_side, collect) }).await;
    assert_eq!(end.unwrap(), 0);
    let sent = sent.unwrap();
    let frames = parse_frames(&sent)
        .unwrap_or_else(|e| panic!("the peer got {} bytes, unparsable: {e}", sent.len()));
    let (last, before) = frames.split_last().expect("something was sent");
    assert_eq!(last.close_code(), Some(close_code::NORMAL), "{last:?}");
    let received: Vec<u8> = before.iter().flat_map(|f| f.payload.clone()).collect();
    assert_same_bytes(&received, &data, "data sent before the close reply");
}

// ---- heartbeat (paused time) ----------------------------------------------------

/// The ping interval of the heartbeat tests: the gateway's default. On paused
/// time the intervals cost no real time, only the work done in them.
const BEAT: Duration = Duration::from_secs(15);

/// The peer of a heartbeat test: reads what our end sends until the pipe
/// closes, noting when each frame arrived (since `start`), and answers the first
/// `answer` pings with pongs. Sends nothing else.
async fn heartbeat_peer(
    mut raw: DuplexStream,
    start: tokio::time::Instant,
    answer: usize,
) -> Vec<(Duration, Parsed)> {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut answered = 0;
    loop {
        match raw.read(&mut chunk).await {
            Ok(0) | Err(_) => return frames,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Ok((frame, used)) = parse_frame(&buf) {
            buf.drain(..used);
            if frame.opcode == OP_PING && answered < answer {
                let pong = masked(FIN | OP_PONG, &frame.payload);
                let _ = raw.write_all(&pong).await;
                answered += 1;
            }
            frames.push((start.elapsed(), frame));
        }
    }
}

/// Our gateway-side end with a heartbeat of [`BEAT`] against [`heartbeat_peer`]:
/// reads until the read fails, then drops our end. Returns how the read ended,
/// when, and what the peer received.
async fn heartbeat_run(answer: usize) -> (io::Result<usize>, Duration, Vec<(Duration, Parsed)>) {
    let (a, raw) = tokio::io::duplex(PIPE);
    let mut ws = WsIo::new(a, Role::Server, Some(BEAT), close_code::AWAY);
    let start = tokio::time::Instant::now();
    let ours = async move {
        let mut buf = [0u8; 64];
        let end = ws.read(&mut buf).await;
        let at = start.elapsed();
        drop(ws); // the peer sees EOF
        (end, at)
    };
    let peer = heartbeat_peer(raw, start, answer);
    let ((end, at), frames) = within(BEAT * 20, "the heartbeat run", async {
        tokio::join!(ours, peer)
    })
    .await;
    (end, at, frames)
}

/// Checks that every frame is an empty ping from a server (unmasked), one per
/// interval: the k-th (from 1) within [k, k + 1) intervals. Returns when they came.
#[track_caller]
fn one_ping_per_interval(frames: &[(Duration, Parsed)]) -> Vec<Duration> {
    for (i, (at, f)) in frames.iter().enumerate() {
        assert!(
            f.fin && f.rsv == 0 && f.opcode == OP_PING && !f.masked && f.payload.is_empty(),
            "frame #{i} at {at:?} is not an empty ping: {f:?}"
        );
        let k = i as u32 + 1;
        assert!(
            *at >= BEAT * k && *at < BEAT * (k + 1),
            "ping #{k} came at {at:?}, not in interval {k} of {BEAT:?}"
        );
    }
    frames.iter().map(|(at, _)| *at).collect()
}

/// A peer that sends nothing: pinged every interval, and given up as dead (the
/// read fails with `TimedOut`) once three intervals have passed in silence, and
/// not before (docs/PROTOCOL.md, "Heartbeats").
#[tokio::test(start_paused = true)]
async fn heartbeat_pings_a_silent_peer_then_gives_up() {
    let (end, at, frames) = heartbeat_run(0).await;
    let err = end.expect_err("the read fails");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(
        at >= BEAT * 3 && at <= BEAT * 4,
        "given up after {at:?}; three to four intervals of {BEAT:?} expected"
    );
    let pings = one_ping_per_interval(&frames);
    assert!(
        pings.len() >= 2,
        "pings at {pings:?} before giving up at {at:?}: one per interval expected"
    );
}

/// Pongs are signs of life: a peer that answers the first four pings is kept
/// that long, and given up three to four intervals after its last answer.
#[tokio::test(start_paused = true)]
async fn heartbeat_counts_from_the_last_sign_of_life() {
    let (end, at, frames) = heartbeat_run(4).await;
    let err = end.expect_err("the read fails");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let pings = one_ping_per_interval(&frames);
    assert!(
        pings.len() >= 4 + 2,
        "pings at {pings:?}, given up at {at:?}"
    );
    let last_answer = pings[3];
    let silence = at - last_answer;
    assert!(
        silence >= BEAT * 3 && silence <= BEAT * 4,
        "given up {silence:?} after the last pong; three to four intervals of {BEAT:?} \
         expected"
    );
}

// ---- handshake keys ------------------------------------------------------------

#[test]
fn accept_key_matches_tungstenite() {
    let mut keys = vec!["dGhlIHNhbXBsZSBub25jZQ==".to_string()];
    keys.extend((0..20).map(|_| client_key()));
    for key in &keys {
        assert_eq!(
            accept_key(key),
            tungstenite::handshake::derive_accept_key(key.as_bytes()),
            "key {key}"
        );
    }
    assert_eq!(accept_key(&keys[0]), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    for key in &keys[1..] {
        // 16 bytes in base64: 22 characters and "==".
        assert_eq!(key.len(), 24, "{key}");
        assert!(key.ends_with("=="), "{key}");
    }
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), keys.len(), "client_key repeats itself");
}
