//! The gateway as the edge that faces the internet: what a client may turn a
//! connection into, and what an upstream may answer, tried as an attacker would.
//!
//! Everything runs on 127.0.0.1 port 0.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// Sends `request` on `tcp` and reads one answer: its head, and as much of its
/// body as `Content-Length` says.
async fn exchange(tcp: &mut TcpStream, request: &[u8]) -> (String, String) {
    tcp.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed before a whole answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `Upgrade: h2c` would turn the connection into a pipe that every later
/// request goes through unseen. The gateway does not carry it: the upstream
/// sees a plain request without the upgrade or its settings, and the next
/// request on the connection is the gateway's to route again.
#[tokio::test]
async fn an_h2c_upgrade_is_not_carried() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (head, body) = exchange(
        &mut tcp,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    for header in ["upgrade", "http2-settings", "connection"] {
        assert!(
            seen["headers"].get(header).is_none(),
            "{header} reached the upstream: {seen}"
        );
    }
    let (head, _) = exchange(&mut tcp, b"GET /about HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// An upstream that switches protocols on a request that asked for no upgrade
/// gets a 502: the gateway never hands the client a connection it no longer
/// understands.
#[tokio::test]
async fn an_unsolicited_101_is_a_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request_head(&mut tcp).await.is_some() {
                    let switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n";
                    let _ = tcp.write_all(switch).await;
                    let _ = tcp.write_all(b"anything at all").await;
                }
            });
        }
    });
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up).await;
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-gateway-error"], "bad_upstream_response");
}

/// A WebSocket upgrade, the one allowed by default, still goes through; a
/// protocol a tunnel lists is carried too (tests/agent_bin.rs uses one).
#[tokio::test]
async fn a_websocket_upgrade_is_carried() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let ws_up = WsEchoUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &format!("http://{}", ws_up.addr)).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/hmr", gw.addr))
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(
        matches!(echoed, Ok(Some(Ok(Message::Text(_))))),
        "{echoed:?}"
    );
}
