//! A third-party agent written from `docs/PROTOCOL.md` alone.
//!
//! Nothing here uses `gateway::agent` or `gateway::transport`: the agent below dials
//! `/ws` with tokio-tungstenite, checks the hello, turns binary WebSocket messages
//! into a byte stream with its own small adapter, runs a yamux *server* over it and
//! answers every stream the gateway opens with a hand-written HTTP/1.1 response.
//! If these tests pass, the document is enough to build an agent.

mod common;
use common::*;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use futures_util::{AsyncRead, AsyncWrite, SinkExt, StreamExt};
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// Constants as PROTOCOL.md states them (deliberately not imported from the crate).
const SUBPROTOCOL: &str = "gateway-tunnel.v1";
const MAX_MESSAGE: usize = 1 << 20;
const BODY: &str = "hello";
const RESPONSE: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the agent observed, for the assertions.
#[derive(Default)]
struct Seen {
    stream_ids: Mutex<Vec<u32>>,
    request_heads: Mutex<Vec<String>>,
    pings: AtomicUsize,
    close: Mutex<Option<(u16, String)>>,
}

/// The handshake request of PROTOCOL.md, "Handshake".
fn handshake(url: &str, tunnel: &str, token: Option<&str>) -> http::Request<()> {
    let mut req = url.into_client_request().expect("ws url");
    let h = req.headers_mut();
    h.insert(
        "x-tunnel-id",
        HeaderValue::from_str(tunnel).expect("tunnel"),
    );
    h.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    h.insert(
        "x-agent-upstream",
        HeaderValue::from_static("fixed response (tests/protocol.rs)"),
    );
    if let Some(t) = token {
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).expect("token"),
        );
    }
    req
}

/// Dials the gateway and reads the hello; returns the hello as JSON.
async fn dial(url: &str, tunnel: &str, token: Option<&str>) -> (serde_json::Value, Ws) {
    let (mut ws, resp) = tokio_tungstenite::connect_async(handshake(url, tunnel, token))
        .await
        .expect("the gateway accepts the agent");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(SUBPROTOCOL),
        "the gateway echoes the subprotocol"
    );
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("hello within 10 s")
        .expect("a message")
        .expect("not an error");
    let Message::Text(text) = first else {
        panic!("the first message must be the text hello, got {first:?}");
    };
    let hello: serde_json::Value = serde_json::from_str(text.as_str()).expect("hello is JSON");
    (hello, ws)
}

/// Expects the handshake to be refused; returns (status, X-Gateway-Reason, body).
async fn refused(req: http::Request<()>) -> (u16, String, String) {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("the handshake should have been refused"),
        Err(tungstenite::Error::Http(resp)) => {
            let reason = resp
                .headers()
                .get("x-gateway-reason")
                .and_then(|v| v.to_str().ok())
                .expect("a refusal carries X-Gateway-Reason")
                .to_owned();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), reason, body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// Binary WebSocket messages as one byte stream (PROTOCOL.md, "Framing").
/// Message boundaries carry no meaning; text messages are control messages.
/// When yamux is done with it, the WebSocket is handed back through `back`, so the
/// agent can read the gateway's close frame (it follows yamux's GoAway).
struct WsBytes {
    ws: Option<Ws>,
    back: Option<oneshot::Sender<Ws>>,
    pending: Bytes,
    close_sent: bool,
    seen: Arc<Seen>,
}

impl WsBytes {
    fn ws(&mut self) -> &mut Ws {
        self.ws.as_mut().expect("present until drop")
    }
}

impl Drop for WsBytes {
    fn drop(&mut self) {
        if let (Some(ws), Some(back)) = (self.ws.take(), self.back.take()) {
            let _ = back.send(ws);
        }
    }
}

/// Records the close frame's code and reason.
fn record_close(seen: &Seen, frame: Option<CloseFrame>) {
    if let Some(f) = frame {
        *seen.close.lock().unwrap() = Some((u16::from(f.code), f.reason.to_string()));
    }
}

fn io_err(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::BrokenPipe, other),
    }
}

impl AsyncRead for WsBytes {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = buf.len().min(this.pending.len());
                buf[..n].copy_from_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(n));
            }
            match ready!(this.ws().poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(b))) => this.pending = b,
                // Control messages: this agent knows none it must act on.
                Some(Ok(Message::Text(_))) => {}
                // tungstenite queues the pong itself and sends it on the next read.
                Some(Ok(Message::Ping(_))) => {
                    this.seen.pings.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    record_close(&this.seen, frame);
                    return Poll::Ready(Ok(0));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
                None => return Poll::Ready(Ok(0)),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.ws().poll_ready_unpin(cx)).map_err(io_err)?;
        let n = buf.len().min(MAX_MESSAGE);
        this.ws()
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(io_err)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws().poll_flush_unpin(cx).map_err(io_err)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.ws().poll_ready_unpin(cx)).map_err(io_err)?;
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "going away".into(),
            };
            // Fails only if the gateway closed first: nothing left to do then.
            let _ = this.ws().start_send_unpin(Message::Close(Some(frame)));
            this.close_sent = true;
        }
        // Errors mean the connection is already gone, which is what we want.
        let _ = ready!(this.ws().poll_close_unpin(cx));
        Poll::Ready(Ok(()))
    }
}

/// One stream: a raw HTTP/1.1 connection from the gateway. Answers every request
/// head on it (keep-alive) with [`RESPONSE`]; closes its side on EOF.
async fn answer(mut stream: yamux::Stream, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            seen.request_heads
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            if stream.write_all(RESPONSE.as_bytes()).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // Half-close: the gateway finished sending; finish ours (yamux FIN).
    let _ = stream.close().await;
}

/// Runs the yamux server until the session ends or `stop` fires (then closes:
/// yamux GoAway, WebSocket close 1001). Returns how it ended.
async fn serve(ws: Ws, seen: Arc<Seen>, stop: oneshot::Receiver<()>) -> &'static str {
    let (back, back_rx) = oneshot::channel();
    let io = WsBytes {
        ws: Some(ws),
        back: Some(back),
        pending: Bytes::new(),
        close_sent: false,
        seen: seen.clone(),
    };
    let mut conn = yamux::Connection::new(io, yamux::Config::default(), yamux::Mode::Server);
    tokio::pin!(stop);
    let end = loop {
        tokio::select! {
            next = poll_fn(|cx| conn.poll_next_inbound(cx)) => match next {
                Some(Ok(stream)) => {
                    seen.stream_ids.lock().unwrap().push(stream.id().val());
                    tokio::spawn(answer(stream, seen.clone()));
                }
                Some(Err(_)) => break "failed",
                None => break "closed by gateway",
            },
            _ = &mut stop => {
                let _ = poll_fn(|cx| conn.poll_close(cx)).await;
                return "closed by agent";
            }
        }
    };
    // The gateway ended the yamux session (GoAway); its WebSocket close frame
    // follows. Read up to it, which also completes the closing handshake.
    drop(conn);
    if let Ok(mut ws) = back_rx.await {
        let until_close = async {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(frame) = msg {
                    record_close(&seen, frame);
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), until_close).await;
    }
    end
}

#[tokio::test]
async fn third_party_agent_serves_public_requests() {
    let gw = TestGateway::start_default().await;
    let (hello, ws) = dial(&gw.ws_url(), "demo", None).await;

    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["version"], 1);
    assert_eq!(hello["tunnel"], "demo");
    let conn_id = hello["connection_id"].as_str().expect("connection_id");
    assert!(!conn_id.is_empty());
    assert!(hello["heartbeat_secs"].as_u64().expect("heartbeat_secs") >= 1);

    let seen = Arc::new(Seen::default());
    let (stop, stop_rx) = oneshot::channel();
    let session = tokio::spawn(serve(ws, seen.clone(), stop_rx));
    gw.wait_agents("demo", 1).await;

    // Two requests on one public keep-alive connection: one stream, reused.
    let client = client();
    for path in ["/first", "/second"] {
        let resp = client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), BODY);
    }

    let ids = seen.stream_ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 1, "one stream carried both requests: {ids:?}");
    assert!(ids.iter().all(|id| id % 2 == 1), "gateway opens odd IDs");
    let heads = seen.request_heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    assert!(
        heads[0].starts_with("GET /first HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /second HTTP/1.1\r\n"),
        "{}",
        heads[1]
    );
    let lower = heads[0].to_ascii_lowercase();
    assert!(lower.contains("\r\nx-request-id: "), "{}", heads[0]);
    assert!(
        lower.contains("\r\nx-forwarded-for: 127.0.0.1"),
        "{}",
        heads[0]
    );

    // A refused handshake: plain HTTP status with the one-line reason.
    let (status, reason, body) = refused(handshake(&gw.ws_url(), "nope", None)).await;
    assert_eq!(status, 403);
    assert!(reason.contains("unknown tunnel 'nope'"), "{reason}");
    assert!(body.is_empty() || body == format!("{reason}\n"), "{body:?}");

    // The agent leaves: the gateway forgets it.
    stop.send(()).unwrap();
    assert_eq!(session.await.unwrap(), "closed by agent");
    gw.wait_agents("demo", 0).await;
}

#[tokio::test]
async fn refusals_carry_status_and_reason() {
    let gw = TestGateway::start(config_from(
        "[[tunnels]]\nid = \"demo\"\n[[tunnels]]\nid = \"locked\"\ntoken = \"s3cret\"\n",
    ))
    .await;
    let url = gw.ws_url();

    let mut no_tunnel = handshake(&url, "demo", None);
    no_tunnel.headers_mut().remove("x-tunnel-id");
    let (status, reason, _) = refused(no_tunnel).await;
    assert_eq!(status, 400, "{reason}");

    let mut v2 = handshake(&url, "demo", None);
    v2.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("gateway-tunnel.v2"),
    );
    let (status, reason, _) = refused(v2).await;
    assert_eq!(status, 400);
    assert!(reason.contains(SUBPROTOCOL), "{reason}");

    let (status, reason, _) = refused(handshake(&url, "locked", None)).await;
    assert_eq!(status, 401);
    assert!(reason.contains("requires a token"), "{reason}");

    let (status, reason, _) = refused(handshake(&url, "locked", Some("wrong"))).await;
    assert_eq!(status, 401);
    assert!(reason.contains("wrong token"), "{reason}");

    let (hello, _ws) = dial(&url, "locked", Some("s3cret")).await;
    assert_eq!(hello["tunnel"], "locked");
}

#[tokio::test]
async fn drain_message_stops_routing_until_the_agent_closes() {
    let gw = TestGateway::start_default().await;
    let (_, mut ws) = dial(&gw.ws_url(), "demo", None).await;
    // Control messages may be sent at any time after the hello.
    ws.send(Message::Text(r#"{"type":"drain"}"#.into()))
        .await
        .unwrap();
    let seen = Arc::new(Seen::default());
    let (stop, stop_rx) = oneshot::channel();
    let session = tokio::spawn(serve(ws, seen.clone(), stop_rx));

    // The gateway keeps the session but routes nothing new to it.
    let registry = &gw.gateway.state().registry;
    eventually!(
        {
            let agents = registry.agents_of("demo");
            agents.len() == 1 && !agents[0].is_available()
        },
        "the gateway to mark the agent as draining"
    );
    let resp = client().get(gw.url("/after")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "no available agent for the tunnel");
    assert!(
        seen.stream_ids.lock().unwrap().is_empty(),
        "no stream opened"
    );

    // Closing is the agent's job once its streams are done.
    stop.send(()).unwrap();
    assert_eq!(session.await.unwrap(), "closed by agent");
    gw.wait_agents("demo", 0).await;
}

#[tokio::test]
async fn gateway_shutdown_closes_with_1001() {
    let gw = TestGateway::start_default().await;
    let (_, ws) = dial(&gw.ws_url(), "demo", None).await;
    let seen = Arc::new(Seen::default());
    let (_stop, stop_rx) = oneshot::channel();
    let session = tokio::spawn(serve(ws, seen.clone(), stop_rx));
    gw.wait_agents("demo", 1).await;

    gw.shutdown.trigger();
    let end = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the gateway closes the session on shutdown")
        .unwrap();
    assert_eq!(end, "closed by gateway");
    let close = seen.close.lock().unwrap().clone();
    assert_eq!(close, Some((1001, "going away".to_owned())));
}

/// The gateway pings, the answering agent stays, the silent one is dropped.
///
/// Real sockets, so real time (about 3 s of it): on paused time tokio moves the
/// clock whenever the runtime waits, also for bytes still in the kernel, and the
/// gateway would miss the answering agent's pongs. The heartbeat's timing is
/// tested on paused time in `websocket.rs` (`heartbeat_*`).
#[tokio::test]
async fn heartbeat_pings_and_silent_agents_are_dropped() {
    let gw = TestGateway::start(config_from(
        "[timeouts]\nheartbeat = \"1s\"\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;

    // A well-behaved agent: its WebSocket library answers the pings.
    let (hello, ws) = dial(&gw.ws_url(), "demo", None).await;
    assert_eq!(hello["heartbeat_secs"], 1);
    let seen = Arc::new(Seen::default());
    let (_stop, stop_rx) = oneshot::channel();
    let _session = tokio::spawn(serve(ws, seen.clone(), stop_rx));

    // A silent one: connected, but never reads, so never answers a ping.
    let (_, silent) = dial(&gw.ws_url(), "demo", None).await;
    gw.wait_agents("demo", 2).await;

    eventually!(
        seen.pings.load(Ordering::Relaxed) >= 2,
        "the gateway to ping twice (pinged {} times)",
        seen.pings.load(Ordering::Relaxed)
    );
    // Three silent intervals (and at most one more tick) end the silent session.
    gw.wait_agents("demo", 1).await;
    let resp = client().get(gw.url("/alive")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the answering agent is still there");
    assert_eq!(resp.text().await.unwrap(), BODY);
    drop(silent);
}
