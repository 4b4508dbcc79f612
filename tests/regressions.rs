//! What the fuzzers found (docs/FUZZING.md), each kept as a test of the behaviour
//! a user sees, through a real gateway, agent and upstream.

mod common;
use common::*;

use std::time::Duration;

use gateway::agent::{self, AgentError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` as it is and returns the whole answer (the gateway closes the
/// connection: every request here says `Connection: close`).
async fn raw(gw: &TestGateway, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// request_head: `GET *` was forwarded upstream as `GET * HTTP/1.1`, a target
/// that is not a path. It is refused; `OPTIONS *`, where `*` is allowed, still
/// goes through.
#[tokio::test]
async fn asterisk_target_only_for_options() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;

    let answer = raw(
        &gw,
        b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-gateway-error: bad_request"),
        "{answer}"
    );

    let answer = raw(
        &gw,
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !answer.to_ascii_lowercase().contains("x-gateway-error"),
        "OPTIONS * is the upstream's to answer: {answer}"
    );
}

/// handshake: an agent given a tunnel ID that is not ASCII sent it, and the
/// gateway, unable to read it as text, said the header was missing. The agent
/// now refuses to send it, and says why.
#[tokio::test]
async fn agent_refuses_a_tunnel_id_it_cannot_send() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let cfg = agent_config(&gw, "dëmo", None, &up.url());
    match agent::connect(&cfg).await {
        Err(AgentError::Config(why)) => {
            assert!(why.contains("cannot be sent as a header"), "{why}")
        }
        Err(e) => panic!("expected a configuration error, got {e}"),
        Ok(_) => panic!("expected a configuration error, got a connection"),
    }
}

/// handshake: a third-party agent that sends such a tunnel ID anyway is told its
/// tunnel is unknown, not that it named none.
#[tokio::test]
async fn gateway_names_a_non_ascii_tunnel_unknown() {
    let gw = TestGateway::start_default().await;
    let mut request =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Tunnel-Id: d"
            .to_vec();
    request.extend_from_slice(&[0xc3, 0xab]);
    request.extend_from_slice(b"mo\r\nConnection: close\r\n\r\n");
    let answer = raw(&gw, &request).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("unknown tunnel 'dëmo'"), "{answer}");
}
