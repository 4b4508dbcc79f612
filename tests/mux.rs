//! The yamux session (`gateway::transport::Session`) tested through its public API
//! and on the wire.
//!
//! Every test runs over an in-memory `tokio::io::duplex` with our WebSocket codec
//! (`WsIo`) on both ends: `Role::Client` on the gateway's end (the yamux client),
//! `Role::Server` on the agent's end (the yamux server). Nothing here looks at the
//! session's internals, so the same tests check any implementation of it: the
//! `yamux` crate is only used as an independent peer (interop), and the raw wire
//! tests speak yamux frames encoded by hand (HashiCorp's spec: 12-byte header,
//! version 0, type 0 data / 1 window update / 2 ping / 3 go-away, flags SYN 1 /
//! ACK 2 / FIN 4 / RST 8, stream ID, length; initial window 256 KiB), by
//! `common::wire::yamux`.
//!
//! The tests whose point is timing (a writer that stalls, a drain's grace) run on
//! paused time: "stalled" then means that no task can move, and the grace passes
//! in no real time.

mod common;

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::io::{AsyncReadExt as _, AsyncWriteExt as _};
use gateway::transport::{Role, Session, SessionEnd, SessionHandle, StreamIo, WsIo, close_code};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use common::wait::{eventually, until_idle, within};
use common::wire::XorShift;
use common::wire::yamux::{
    ACK, GO_AWAY_PROTOCOL_ERROR, Header, INITIAL_WINDOW, SYN, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING,
    encode_frame, take_frame,
};

/// Capacity of each direction of the in-memory connection.
const DUPLEX: usize = 256 * 1024;
/// Bound on every test, so that nothing can hang.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What "promptly" means for reactions to a peer (reset, end, failure).
const PROMPTLY: Duration = Duration::from_secs(2);

// ---- helpers -------------------------------------------------------------------

/// `count` payloads of random length in `1..=max` (the first is 1 byte, the
/// second `max`, so both edges are always covered). Empty streams have their own
/// test: [`stream_closed_before_any_write_reaches_the_peer`].
fn payloads(seed: u64, count: usize, max: usize) -> Vec<Vec<u8>> {
    let mut rng = XorShift::new(seed);
    (0..count)
        .map(|i| {
            let len = match i {
                0 => 1,
                1 => max,
                _ => 1 + rng.below(max),
            };
            rng.bytes(len)
        })
        .collect()
}

/// Our WebSocket codec on one end of the duplex, without heartbeat.
fn ws(io: DuplexStream, role: Role) -> WsIo<DuplexStream> {
    WsIo::new(io, role, None, close_code::NORMAL)
}

/// One end of the in-memory WebSocket.
type End = WsIo<DuplexStream>;

/// Two connected WebSocket ends: (gateway side `Role::Client`, agent side
/// `Role::Server`).
fn ws_pair() -> (End, End) {
    let (c, s) = tokio::io::duplex(DUPLEX);
    (ws(c, Role::Client), ws(s, Role::Server))
}

/// Our client session and our server session, each driven by its own task.
struct Pair {
    opener: SessionHandle,
    client: JoinHandle<SessionEnd>,
    server: JoinHandle<SessionEnd>,
    /// Fires the server's `stop` (its drain); dropping it does not.
    stop_server: Option<oneshot::Sender<()>>,
}

/// Client session ↔ server session; `on_inbound` handles the server's streams and
/// `grace` bounds the server's drain.
fn make_pair(grace: Duration, on_inbound: impl FnMut(StreamIo) + Send + 'static) -> Pair {
    let (cio, sio) = ws_pair();
    let (session, opener) = Session::client(cio);
    let client = tokio::spawn(session.run(std::future::pending(), Duration::from_secs(1)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = async move {
        if stop_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let server = tokio::spawn(Session::server(sio, on_inbound).run(stop, grace));
    Pair {
        opener,
        client,
        server,
        stop_server: Some(stop_tx),
    }
}

/// Echo: copies a stream back until EOF, then shuts its write side down.
async fn echo(mut s: StreamIo) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = s.shutdown().await;
}

/// An `on_inbound` that echoes every stream in its own task.
fn echo_inbound() -> impl FnMut(StreamIo) + Send + 'static {
    |s| {
        tokio::spawn(echo(s));
    }
}

/// An `on_inbound` that hands every stream to the test.
fn queue_inbound() -> (
    impl FnMut(StreamIo) + Send + 'static,
    mpsc::UnboundedReceiver<StreamIo>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |s| {
            let _ = tx.send(s);
        },
        rx,
    )
}

/// Writes `payload` and half-closes while reading everything the peer sends back.
async fn roundtrip(stream: StreamIo, payload: &[u8]) -> io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(payload).await?;
        w.shutdown().await
    };
    let read = async {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok::<_, io::Error>(out)
    };
    let (written, out) = tokio::join!(write, read);
    written?;
    out
}

/// Opens one stream per payload, all at once, and checks every echo byte for byte.
async fn echo_all(opener: &SessionHandle, payloads: Vec<Vec<u8>>) {
    let mut tasks = JoinSet::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        let opener = opener.clone();
        tasks.spawn(async move {
            let stream = opener.open().await.expect("open a stream");
            let echoed = roundtrip(stream, &payload).await.expect("roundtrip");
            (i, payload, echoed)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, sent, echoed) = done.expect("stream task");
        assert!(
            sent == echoed,
            "stream #{i}: sent {} bytes, got {} back (or different bytes)",
            sent.len(),
            echoed.len()
        );
    }
}

// -- the `yamux` crate as an independent peer --

/// yamux settings for the crate's end, as the gateway uses them (streams raised).
fn crate_config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(2048);
    cfg
}

type OpenRequest = oneshot::Sender<yamux::Stream>;

/// Drives a crate connection in a task: answers open requests sent on the returned
/// channel, and echoes every inbound stream.
fn drive_crate(
    mut conn: yamux::Connection<WsIo<DuplexStream>>,
) -> (mpsc::UnboundedSender<OpenRequest>, JoinHandle<()>) {
    let (tx, mut opens) = mpsc::unbounded_channel::<OpenRequest>();
    let task = tokio::spawn(async move {
        let mut waiting: Option<OpenRequest> = None;
        poll_fn(|cx| {
            loop {
                if waiting.is_none()
                    && let Poll::Ready(Some(reply)) = opens.poll_recv(cx)
                {
                    waiting = Some(reply);
                }
                if waiting.is_some() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(Ok(stream)) => {
                            if let Some(reply) = waiting.take() {
                                let _ = reply.send(stream);
                            }
                            continue;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        tokio::spawn(crate_echo(stream));
                    }
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    });
    (tx, task)
}

/// Echo on a crate stream (futures I/O traits).
async fn crate_echo(mut s: yamux::Stream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = s.close().await;
}

/// [`roundtrip`] on a crate stream.
async fn crate_roundtrip(stream: yamux::Stream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let (mut r, mut w) = stream.split();
    let write = async {
        w.write_all(payload).await?;
        w.close().await
    };
    let read = async {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok::<_, io::Error>(out)
    };
    let (written, out) = futures_util::join!(write, read);
    written?;
    out
}

// -- raw yamux frames --

/// A hand-written yamux peer on a raw WebSocket (gateway side, `Role::Client`).
struct RawPeer {
    ws: WsIo<DuplexStream>,
    buf: Vec<u8>,
}

impl RawPeer {
    /// Queues bytes. Our codec defers the socket write to the next read, so a
    /// read (`next_frame`, `read_to_end`) must follow.
    async fn send(&mut self, bytes: &[u8]) {
        futures_util::AsyncWriteExt::write_all(&mut self.ws, bytes)
            .await
            .expect("raw write");
        futures_util::AsyncWriteExt::flush(&mut self.ws)
            .await
            .expect("raw flush");
    }

    /// The next complete frame; None once the connection ends (EOF or error).
    async fn next_frame(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = take_frame(&mut self.buf) {
                return Some(frame);
            }
            match futures_util::AsyncReadExt::read(&mut self.ws, &mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until the connection ends; returns them.
    async fn frames_until_end(&mut self) -> Vec<Header> {
        let mut seen = Vec::new();
        while let Some((h, _)) = self.next_frame().await {
            seen.push(h);
        }
        seen
    }
}

/// Our server session (queueing its inbound streams) facing a raw peer.
fn raw_pair() -> (
    RawPeer,
    JoinHandle<SessionEnd>,
    mpsc::UnboundedReceiver<StreamIo>,
) {
    let (cio, sio) = ws_pair();
    let (inbound, rx) = queue_inbound();
    let server = tokio::spawn(
        Session::server(sio, inbound).run(std::future::pending(), Duration::from_secs(1)),
    );
    let peer = RawPeer {
        ws: cio,
        buf: Vec::new(),
    };
    (peer, server, rx)
}

// ---- 1. our client ↔ our server ---------------------------------------------------

/// 64 concurrent streams with payloads from 1 B to 300 KiB, echoed by the server:
/// every stream gets exactly its own bytes back (no mix-up, no loss, half-close
/// delivered as EOF after the data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streams_echo() {
    within(TEST_TIMEOUT, "64 echoes", async {
        let pair = make_pair(Duration::from_secs(1), echo_inbound());
        echo_all(&pair.opener, payloads(0x5eed_0001, 64, 300 * 1024)).await;
        assert!(!pair.client.is_finished() && !pair.server.is_finished());
    })
    .await
}

/// A stream half-closed before anything was written on it (an empty request)
/// still opens on the peer: the server sees it, reads EOF at once and can answer.
#[tokio::test]
async fn stream_closed_before_any_write_reaches_the_peer() {
    within(TEST_TIMEOUT, "empty stream", async {
        let pair = make_pair(Duration::from_secs(1), echo_inbound());
        let c = pair.opener.open().await.expect("open");
        let echoed = within(PROMPTLY, "the empty echo", roundtrip(c, &[]))
            .await
            .expect("roundtrip");
        assert!(echoed.is_empty());
        // The session still works afterwards.
        echo_all(&pair.opener, payloads(0x5eed_000a, 2, 1000)).await;
    })
    .await
}

// ---- 2. interop with the yamux crate ----------------------------------------------

/// Our client session against the `yamux` crate as the server (an agent built on
/// it): 32 concurrent echoed streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_interoperates_with_yamux_crate_server() {
    within(TEST_TIMEOUT, "interop, crate server", async {
        let (cio, sio) = ws_pair();
        let (session, opener) = Session::client(cio);
        let _client = tokio::spawn(session.run(std::future::pending(), Duration::from_secs(1)));
        let conn = yamux::Connection::new(sio, crate_config(), yamux::Mode::Server);
        let (_opens, _server) = drive_crate(conn);
        echo_all(&opener, payloads(0x5eed_0002, 32, 300 * 1024)).await;
    })
    .await
}

/// The `yamux` crate as the client (a gateway built on it) against our server
/// session, which echoes: 32 concurrent streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yamux_crate_client_interoperates_with_our_server() {
    within(TEST_TIMEOUT, "interop, crate client", async {
        let (cio, sio) = ws_pair();
        let _server = tokio::spawn(
            Session::server(sio, echo_inbound())
                .run(std::future::pending(), Duration::from_secs(1)),
        );
        let conn = yamux::Connection::new(cio, crate_config(), yamux::Mode::Client);
        let (opens, _client) = drive_crate(conn);
        let mut tasks = JoinSet::new();
        for (i, payload) in payloads(0x5eed_0003, 32, 300 * 1024)
            .into_iter()
            .enumerate()
        {
            let opens = opens.clone();
            tasks.spawn(async move {
                let (reply, stream) = oneshot::channel();
                opens.send(reply).expect("crate connection alive");
                let stream = stream.await.expect("crate opens a stream");
                let echoed = crate_roundtrip(stream, &payload).await.expect("roundtrip");
                (i, payload, echoed)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, sent, echoed) = done.expect("stream task");
            assert!(
                sent == echoed,
                "stream #{i}: sent {} bytes, got {} back (or different bytes)",
                sent.len(),
                echoed.len()
            );
        }
    })
    .await
}

// ---- 3. flow control --------------------------------------------------------------

/// A writer cannot run ahead of a reader that reads nothing: 8 MiB on one stream
/// stalls after about one window, and completes, intact, once the reader reads.
/// On paused time, so that "stalls" means no task can move, not "slow so far".
#[tokio::test(start_paused = true)]
async fn writer_blocks_until_the_reader_reads() {
    within(TEST_TIMEOUT, "flow control", async {
        let (inbound, mut rx) = queue_inbound();
        let pair = make_pair(Duration::from_secs(1), inbound);
        let data = XorShift::new(0x5eed_0004).bytes(8 << 20);

        let mut stream = pair.opener.open().await.expect("open");
        let written = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn({
            let data = data.clone();
            let written = written.clone();
            async move {
                for chunk in data.chunks(64 * 1024) {
                    stream.write_all(chunk).await?;
                    written.fetch_add(chunk.len(), Ordering::Relaxed);
                }
                stream.shutdown().await?;
                Ok::<_, io::Error>(stream)
            }
        });

        let mut server_stream = within(PROMPTLY, "the server gets the stream", rx.recv())
            .await
            .expect("inbound stream");
        // Nothing reads on the server side: everything stops.
        until_idle().await;
        assert!(!writer.is_finished(), "8 MiB were written without a reader");
        let so_far = written.load(Ordering::Relaxed);
        assert!(
            so_far <= 2 << 20,
            "{so_far} bytes accepted without a reader (window is {INITIAL_WINDOW})"
        );

        let mut received = Vec::with_capacity(data.len());
        within(
            Duration::from_secs(20),
            "the reader drains 8 MiB",
            server_stream.read_to_end(&mut received),
        )
        .await
        .expect("server read");
        let _client_stream = within(PROMPTLY, "the writer finishes", writer)
            .await
            .expect("writer task")
            .expect("writer");
        assert_eq!(received.len(), data.len());
        assert!(received == data, "8 MiB arrived altered");
    })
    .await
}

// ---- 4. half-close ----------------------------------------------------------------

/// Half-close works both ways: the server reads the request to EOF first, only
/// then answers on the same stream; the client reads the whole answer and EOF
/// after its own write side was closed.
#[tokio::test]
async fn half_close_then_response() {
    within(TEST_TIMEOUT, "half-close", async {
        let (inbound, mut rx) = queue_inbound();
        let pair = make_pair(Duration::from_secs(1), inbound);
        let request = XorShift::new(0x5eed_0005).bytes(100 * 1024);

        let server = tokio::spawn(async move {
            let mut s = rx.recv().await.expect("inbound stream");
            let mut req = Vec::new();
            s.read_to_end(&mut req)
                .await
                .expect("read the request to EOF");
            // The answer depends on the whole request, so it cannot precede EOF.
            let mut resp = format!("got {} bytes\n", req.len()).into_bytes();
            req.reverse();
            resp.extend_from_slice(&req);
            s.write_all(&resp).await.expect("write the response");
            s.shutdown().await.expect("shutdown");
        });

        let mut c = pair.opener.open().await.expect("open");
        c.write_all(&request).await.expect("write the request");
        c.shutdown().await.expect("half-close");
        let mut resp = Vec::new();
        within(PROMPTLY * 5, "the response", c.read_to_end(&mut resp))
            .await
            .expect("read the response to EOF");
        let mut expected = format!("got {} bytes\n", request.len()).into_bytes();
        expected.extend(request.iter().rev());
        assert!(resp == expected, "response of {} bytes differs", resp.len());
        // EOF again, not an error or a hang.
        let mut more = [0u8; 16];
        assert_eq!(c.read(&mut more).await.expect("read after EOF"), 0);
        server.await.expect("server task");
    })
    .await
}

// ---- 5. reset on drop -------------------------------------------------------------

/// Dropping a stream without shutdown resets it: the peer's reads end (error or
/// EOF) promptly, and its writes fail instead of waiting forever for window.
#[tokio::test]
async fn dropped_stream_is_reset() {
    within(TEST_TIMEOUT, "reset on drop", async {
        let (inbound, mut rx) = queue_inbound();
        let pair = make_pair(Duration::from_secs(1), inbound);

        let mut c = pair.opener.open().await.expect("open");
        c.write_all(&[7u8; 1000]).await.expect("write");
        c.flush().await.expect("flush");
        let mut s = within(PROMPTLY, "the server gets the stream", rx.recv())
            .await
            .expect("inbound stream");
        drop(c);

        within(PROMPTLY, "the server's read ends", async {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            assert!(got <= 1000, "read {got} bytes, only 1000 were sent");
        })
        .await;

        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0usize;
        let err = within(PROMPTLY, "a write on the reset stream fails", async {
            loop {
                if let Err(e) = s.write_all(&chunk).await {
                    return e;
                }
                sent += chunk.len();
            }
        })
        .await;
        assert!(
            sent <= 1 << 20,
            "{sent} bytes written after the reset ({err})"
        );
    })
    .await
}

// ---- 6. the session ends ----------------------------------------------------------

/// When the agent's end goes away (its session task is gone, the connection with
/// it), the gateway's streams end, opening fails, and the session reports an end
/// that is not a drain.
#[tokio::test]
async fn session_ends_when_the_connection_goes_away() {
    within(TEST_TIMEOUT, "session end", async {
        let (inbound, mut rx) = queue_inbound();
        let pair = make_pair(Duration::from_secs(1), inbound);

        let mut streams = Vec::new();
        for _ in 0..2 {
            let mut c = pair.opener.open().await.expect("open");
            c.write_all(b"x").await.expect("write");
            c.flush().await.expect("flush");
            streams.push(c);
        }
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(
                within(PROMPTLY, "inbound", rx.recv())
                    .await
                    .expect("stream"),
            );
        }

        pair.server.abort();
        let _ = pair.server.await;

        for c in &mut streams {
            let mut buf = [0u8; 64];
            within(PROMPTLY, "a client stream's read ends", async {
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        let opened = within(PROMPTLY, "open fails", pair.opener.open()).await;
        assert!(opened.is_err(), "opened a stream on a dead session");
        let end = within(PROMPTLY, "the client session ends", pair.client)
            .await
            .expect("client task");
        assert!(
            !matches!(end, SessionEnd::Drained { .. }),
            "ended by the peer, not drained: {end:?}"
        );
        drop(held);
    })
    .await
}

// ---- 7. drain ---------------------------------------------------------------------

/// `stop` during an exchange: the session drains, the stream in use still
/// completes both ways, then the session ends as `Drained` with nothing left.
#[tokio::test]
async fn drain_lets_a_stream_in_use_finish() {
    within(TEST_TIMEOUT, "drain, finished", async {
        let (inbound, mut rx) = queue_inbound();
        let mut pair = make_pair(Duration::from_secs(5), inbound);

        let mut c = pair.opener.open().await.expect("open");
        c.write_all(b"request").await.expect("write");
        c.flush().await.expect("flush");
        let mut s = within(PROMPTLY, "inbound", rx.recv())
            .await
            .expect("stream");
        let mut head = [0u8; 7];
        s.read_exact(&mut head).await.expect("read the request");
        assert_eq!(&head, b"request");

        pair.stop_server
            .take()
            .expect("stop")
            .send(())
            .expect("stop");
        // The drain has begun once the agent's announcement arrives.
        eventually!(
            within PROMPTLY => pair.opener.peer_draining(),
            "the drain announcement"
        );

        c.write_all(b" and the rest")
            .await
            .expect("write after stop");
        c.shutdown().await.expect("half-close");
        let mut rest = Vec::new();
        within(
            PROMPTLY,
            "the rest of the request",
            s.read_to_end(&mut rest),
        )
        .await
        .expect("read");
        assert_eq!(rest, b" and the rest");
        s.write_all(b"response")
            .await
            .expect("respond while draining");
        s.shutdown().await.expect("shutdown");
        drop(s);

        let mut resp = Vec::new();
        within(PROMPTLY, "the response", c.read_to_end(&mut resp))
            .await
            .expect("read the response");
        assert_eq!(resp, b"response");
        let end = within(PROMPTLY, "the drain ends", pair.server)
            .await
            .expect("server task");
        assert_eq!(
            end,
            SessionEnd::Drained {
                unfinished_streams: 0
            }
        );
    })
    .await
}

/// A stream that never finishes cannot hold a drain beyond its grace period: the
/// session ends as `Drained` with one unfinished stream. On paused time: the
/// grace is waited out in virtual time, and exactly.
#[tokio::test(start_paused = true)]
async fn drain_gives_up_after_grace() {
    within(TEST_TIMEOUT, "drain, unfinished", async {
        let (inbound, mut rx) = queue_inbound();
        let mut pair = make_pair(Duration::from_millis(200), inbound);

        let mut c = pair.opener.open().await.expect("open");
        c.write_all(b"never finished").await.expect("write");
        c.flush().await.expect("flush");
        let _s = within(PROMPTLY, "inbound", rx.recv())
            .await
            .expect("stream");

        let stopped = tokio::time::Instant::now();
        pair.stop_server
            .take()
            .expect("stop")
            .send(())
            .expect("stop");
        let end = within(PROMPTLY, "the drain ends after its grace", pair.server)
            .await
            .expect("server task");
        assert_eq!(
            end,
            SessionEnd::Drained {
                unfinished_streams: 1
            }
        );
        let waited = stopped.elapsed();
        assert!(
            waited >= Duration::from_millis(200),
            "the drain gave up after {waited:?}, before its grace of 200 ms"
        );
        drop(c);
    })
    .await
}

// ---- 8. raw wire ------------------------------------------------------------------

/// A stream opened with a SYN data frame arrives with its data; a ping (SYN) is
/// answered with a ping ACK carrying the same opaque value; the answer on the
/// stream comes back as data frames for stream 1, the first one with ACK.
#[tokio::test]
async fn raw_syn_data_and_ping() {
    within(TEST_TIMEOUT, "raw syn and ping", async {
        let (mut peer, server, mut rx) = raw_pair();

        let mut out = encode_frame(Header::data(1, SYN, 5), b"hello");
        out.extend(encode_frame(Header::ping(SYN, 0x1234), &[]));
        peer.send(&out).await;

        // Frames the session sends on stream 1, in order.
        let mut on_stream_1: Vec<(Header, Vec<u8>)> = Vec::new();
        within(PROMPTLY, "the ping answer", async {
            loop {
                let (h, body) = peer.next_frame().await.expect("connection open");
                if h.stream == 1 {
                    on_stream_1.push((h, body));
                } else if h.ty == TYPE_PING && h.flags & ACK != 0 {
                    assert_eq!(h, Header::ping(ACK, 0x1234), "the ping answer");
                    break;
                }
            }
        })
        .await;

        let mut s = within(PROMPTLY, "inbound stream", rx.recv())
            .await
            .expect("stream");
        let mut hello = [0u8; 5];
        within(PROMPTLY, "the stream's data", s.read_exact(&mut hello))
            .await
            .expect("read");
        assert_eq!(&hello, b"hello");

        s.write_all(b"world").await.expect("write");
        s.flush().await.expect("flush");
        let reply_len = |frames: &[(Header, Vec<u8>)]| -> usize {
            frames
                .iter()
                .filter(|(h, _)| h.ty == TYPE_DATA)
                .map(|(_, b)| b.len())
                .sum()
        };
        within(PROMPTLY, "the reply on stream 1", async {
            while reply_len(&on_stream_1) < 5 {
                let (h, body) = peer.next_frame().await.expect("connection open");
                if h.stream == 1 {
                    on_stream_1.push((h, body));
                }
            }
        })
        .await;
        let reply: Vec<u8> = on_stream_1
            .iter()
            .filter(|(h, _)| h.ty == TYPE_DATA)
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        assert_eq!(reply, b"world");
        let first = on_stream_1[0].0;
        assert!(
            first.flags & ACK != 0,
            "the first frame on stream 1 lacks ACK: {first:?}"
        );
        assert!(!server.is_finished(), "the session goes on");
    })
    .await
}

/// A data frame larger than the initial 256 KiB window, on a fresh stream, is a
/// protocol violation: the session answers with a go-away (protocol error, code
/// 1) or ends the connection, and does not hand out the stream with its data.
#[tokio::test]
async fn raw_frame_beyond_the_window_is_refused() {
    within(TEST_TIMEOUT, "raw oversized frame", async {
        let (mut peer, _server, mut rx) = raw_pair();
        let body = XorShift::new(0x5eed_0008).bytes(300 * 1024);
        peer.send(&encode_frame(Header::data(1, SYN, body.len()), &body))
            .await;

        let go_away = within(PROMPTLY, "a go-away or the end", async {
            loop {
                match peer.next_frame().await {
                    None => break None,
                    Some((h, _)) if h.ty == TYPE_GO_AWAY => break Some(h),
                    Some(_) => {}
                }
            }
        })
        .await;
        if let Some(h) = go_away {
            assert_eq!(
                h.length, GO_AWAY_PROTOCOL_ERROR,
                "go-away code should be protocol error: {h:?}"
            );
        }
        if let Ok(mut s) = rx.try_recv() {
            let mut got = Vec::new();
            let _ = tokio::time::timeout(PROMPTLY, s.read_to_end(&mut got)).await;
            assert!(
                got.len() <= INITIAL_WINDOW,
                "{} bytes beyond the window",
                got.len()
            );
        }
    })
    .await
}

/// The same violation must end the session as `Failed`, not leave it running
/// (HashiCorp's implementation closes the session after its go-away).
#[tokio::test]
async fn raw_frame_beyond_the_window_fails_the_session() {
    within(TEST_TIMEOUT, "raw oversized frame, failure", async {
        let (mut peer, mut server, _rx) = raw_pair();
        let body = XorShift::new(0x5eed_0009).bytes(300 * 1024);
        peer.send(&encode_frame(Header::data(1, SYN, body.len()), &body))
            .await;
        // Keep reading (it also writes what we queued) while waiting for the end.
        let (end, _) = tokio::join!(
            tokio::time::timeout(PROMPTLY, &mut server),
            tokio::time::timeout(PROMPTLY, peer.frames_until_end()),
        );
        let end = end
            .expect("the session ends promptly")
            .expect("server task");
        assert!(matches!(end, SessionEnd::Failed(_)), "{end:?}");
    })
    .await
}

/// A frame with an unknown version (1) fails the session.
#[tokio::test]
async fn raw_unknown_version_fails_the_session() {
    within(TEST_TIMEOUT, "raw version 1", async {
        let (mut peer, mut server, _rx) = raw_pair();
        let mut h = Header::ping(SYN, 7);
        h.version = 1;
        peer.send(&encode_frame(h, &[])).await;
        let (end, _) = tokio::join!(
            tokio::time::timeout(PROMPTLY, &mut server),
            tokio::time::timeout(PROMPTLY, peer.frames_until_end()),
        );
        let end = end
            .expect("the session ends promptly")
            .expect("server task");
        assert!(matches!(end, SessionEnd::Failed(_)), "{end:?}");
    })
    .await
}
