//! Limits on every connection, as an operator sets them and an attacker tries
//! them: connections per client address, the proxies whose forwarding headers
//! are believed, and bodies that stall in either direction.
//!
//! Everything runs on 127.0.0.1 port 0.

mod common;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::get;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::wait::within;
use common::*;

/// A gateway with `toml`, an agent of tunnel `demo` and `upstream`.
async fn gateway_with(toml: &str, upstream: &TestUpstream) -> (TestGateway, TestAgent) {
    let gw = TestGateway::start(config_from(toml)).await;
    let agent = TestAgent::start(&gw, "demo", &upstream.url()).await;
    gw.wait_agents("demo", 1).await;
    (gw, agent)
}

/// Sends `request` and reads until the gateway closes the connection or 10 s
/// pass; what came back.
async fn send_and_read(tcp: &mut TcpStream, request: &[u8]) -> String {
    tcp.write_all(request).await.unwrap();
    read_to_close(tcp).await
}

async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 8192];
    within(Duration::from_secs(10), "the connection ends", async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// A connection that was served once (so surely counted) and is kept open.
async fn served_and_kept(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    tcp
}

const CLOSE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// One address may hold `max_connections_per_ip` connections (the agent's
/// included); the next gets 429 and is closed, without its request reaching the
/// app. Once one of them closes, the address is served again.
#[tokio::test]
async fn connections_per_address_are_capped() {
    let up = TestUpstream::start().await;
    let (gw, _agent) = gateway_with(
        "[limits]\nmax_connections_per_ip = 4\n[[tunnels]]\nid = \"demo\"\n",
        &up,
    )
    .await;
    // The agent holds one; these three make four.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(served_and_kept(gw.addr).await);
    }
    let mut fifth = TcpStream::connect(gw.addr).await.unwrap();
    let answer = send_and_read(&mut fifth, CLOSE).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("x-gateway-error: too_many_connections"),
        "{answer}"
    );
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(!answer.contains("echo"), "the app answered: {answer}");

    drop(held.pop());
    within(
        Duration::from_secs(5),
        "the address is served again",
        async {
            loop {
                let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
                if send_and_read(&mut tcp, CLOSE)
                    .await
                    .starts_with("HTTP/1.1 200")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
}

/// An upstream that shows the X-Forwarded-For it received.
async fn forwarded_for_upstream() -> TestUpstream {
    let app = Router::new().fallback(|headers: HeaderMap| async move {
        headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    });
    TestUpstream::serve(app).await
}

/// Behind a chain of trusted proxies, the client is the right-most
/// X-Forwarded-For address that is not one of them: what a client wrote into
/// the header itself (left of it) is never believed, by policy or otherwise.
#[tokio::test]
async fn trusted_proxies_are_walked_back_to_the_client() {
    let up = forwarded_for_upstream().await;
    let (gw, _agent) = gateway_with(
        "[server]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\
         [[tunnels]]\nid = \"demo\"\ndeny_ips = [\"203.0.113.0/24\"]\n",
        &up,
    )
    .await;
    let client = client();
    let get = |xff: Option<&'static str>| {
        let mut req = client.get(gw.url("/who"));
        if let Some(v) = xff {
            req = req.header("x-forwarded-for", v);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // The client as the inner proxy (10.1.2.3) saw it: refused.
    assert_eq!(get(Some("203.0.113.5, 10.1.2.3")).await.0, 403);
    // Another client: allowed, and the chain reaches the app extended.
    assert_eq!(
        get(Some("198.51.100.7, 10.1.2.3")).await,
        (200, "198.51.100.7, 10.1.2.3, 127.0.0.1".to_owned())
    );
    // A denied address the client claimed for itself, left of the real one:
    // not believed, so not refused either.
    assert_eq!(get(Some("203.0.113.5, 198.51.100.7")).await.0, 200);
    // No header: the client is the peer.
    assert_eq!(get(None).await, (200, "127.0.0.1".to_owned()));
}

/// A peer that is not a trusted proxy has its forwarding claims replaced, and
/// they count for nothing in policy.
#[tokio::test]
async fn an_untrusted_peer_cannot_claim_an_address() {
    let up = forwarded_for_upstream().await;
    let (gw, _agent) = gateway_with(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [[tunnels]]\nid = \"demo\"\nallow_ips = [\"198.51.100.0/24\"]\n",
        &up,
    )
    .await;
    let resp = client()
        .get(gw.url("/who"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-gateway-error"], "forbidden");
}

/// A trusted proxy carries many clients: it is exempt from the per-address cap.
#[tokio::test]
async fn a_trusted_proxy_is_not_capped_per_address() {
    let up = TestUpstream::start().await;
    let (gw, _agent) = gateway_with(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [limits]\nmax_connections_per_ip = 2\n[[tunnels]]\nid = \"demo\"\n",
        &up,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(served_and_kept(gw.addr).await);
    }
}

/// A request body that stops arriving is given up on after
/// `limits.request_body_idle_timeout`: 408, and the connection closed. One that
/// keeps trickling for longer than the timeout is carried whole.
#[tokio::test]
async fn a_stalled_request_body_gets_408_and_a_slow_one_passes() {
    let up = TestUpstream::start().await;
    let (gw, _agent) = gateway_with(
        "[limits]\nrequest_body_idle_timeout = \"1s\"\n[[tunnels]]\nid = \"demo\"\n",
        &up,
    )
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut tcp).await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("x-gateway-error: body_timeout"), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(
        b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // 16 bytes, one every 150 ms: 2.4 s in all, never 1 s without one.
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tcp.write_all(b"x").await.unwrap();
    }
    let answer = read_to_close(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\n\r\n16 "), "{answer}");
}

/// An upstream whose `/stall` sends a head and a first piece, then nothing, and
/// whose `/trickle` sends 10 pieces, one every 150 ms.
async fn stalling_upstream() -> TestUpstream {
    let app = Router::new()
        .route(
            "/stall",
            get(|| async {
                let first = futures_util::stream::once(async {
                    Ok::<_, Infallible>(Bytes::from_static(b"first piece;"))
                });
                let never = futures_util::stream::pending::<Result<Bytes, Infallible>>();
                Body::from_stream(futures_util::StreamExt::chain(first, never))
            }),
        )
        .route(
            "/trickle",
            get(|| async {
                let pieces = futures_util::stream::unfold(0, |i| async move {
                    if i == 10 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Some((Ok::<_, Infallible>(Bytes::from(format!("{i};"))), i + 1))
                });
                Body::from_stream(pieces)
            }),
        );
    TestUpstream::serve(app).await
}

/// A response body that stops arriving is ended after
/// `limits.response_body_idle_timeout` (the client sees it end early); one that
/// keeps trickling is carried whole.
#[tokio::test]
async fn a_stalled_response_body_is_ended_and_a_slow_one_passes() {
    let up = stalling_upstream().await;
    let (gw, _agent) = gateway_with(
        "[limits]\nresponse_body_idle_timeout = \"1s\"\n[[tunnels]]\nid = \"demo\"\n",
        &up,
    )
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let answer = send_and_read(
        &mut tcp,
        b"GET /stall HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("first piece;"), "{answer}");
    // Chunked: a whole body would end with the last chunk, "0\r\n\r\n".
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "the body ended cleanly: {answer}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    let body = client()
        .get(gw.url("/trickle"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "0;1;2;3;4;5;6;7;8;9;");
}

/// A load balancer in front of `gateway`: each connection to it is relayed
/// after a version 1 PROXY header naming 192.0.2.50 as the client.
async fn proxy_protocol_balancer(gateway: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut upstream = TcpStream::connect(gateway).await?;
                upstream
                    .write_all(b"PROXY TCP4 192.0.2.50 10.0.0.1 50000 80\r\n")
                    .await?;
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
            });
        }
    });
    addr
}

/// Behind a load balancer speaking the PROXY protocol, the client its header
/// names is the one policy and the app see; a connection without a valid
/// header, or from a peer that is not a trusted proxy, is closed unanswered.
#[tokio::test]
async fn the_proxy_protocol_names_the_client() {
    let up = forwarded_for_upstream().await;
    let gw = TestGateway::start(config_from(
        "[server]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [[tunnels]]\nid = \"demo\"\ndeny_ips = [\"203.0.113.0/24\"]\n",
    ))
    .await;
    // The agent comes through the balancer too.
    let balancer = proxy_protocol_balancer(gw.addr).await;
    let mut cfg = agent_config(&gw, "demo", None, &up.url());
    cfg.gateway = format!("ws://{balancer}/ws");
    let _agent = TestAgent::start_with(cfg)
        .await
        .expect("the agent connects");
    gw.wait_agents("demo", 1).await;
    let ask = |header: &'static [u8]| async move {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(header).await.unwrap();
        send_and_read(&mut tcp, CLOSE).await
    };
    let v1 = ask(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n").await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert!(v1.ends_with("198.51.100.7"), "{v1}");
    let denied = ask(b"PROXY TCP4 203.0.113.9 10.0.0.1 40000 80\r\n").await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    v2.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v2.extend([0x9c, 0x40, 0x00, 0x50]);
    let v2: &'static [u8] = v2.leak();
    let answer = ask(v2).await;
    assert!(answer.ends_with("2001:db8::7"), "{answer}");
    // No header: closed without an answer, and nothing reached the app.
    assert_eq!(ask(b"").await, "");
    assert_eq!(ask(b"PROXY TCP4 not-an-address\r\n").await, "");
}

/// The PROXY protocol is believed only from trusted proxies: another peer's
/// connection is closed even with a well-formed header.
#[tokio::test]
async fn the_proxy_protocol_is_refused_from_an_untrusted_peer() {
    let gw = TestGateway::start(config_from(
        "[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 80\r\n")
        .await
        .unwrap();
    assert_eq!(send_and_read(&mut tcp, CLOSE).await, "");
}
