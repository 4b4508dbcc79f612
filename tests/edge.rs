//! The gateway as the edge that faces the internet: what a client may turn a
//! connection into, and what an upstream may answer, tried as an attacker would.
//!
//! Everything runs on 127.0.0.1 port 0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::wait::within;
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

/// A gateway with `toml` (tunnel `demo` open, unless `toml` says otherwise), an
/// agent, and the echo upstream; the caller keeps all three alive.
async fn gateway_with(toml: &str) -> (TestUpstream, TestGateway, TestAgent) {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(config_from(toml)).await;
    let agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    (up, gw, agent)
}

const DEMO: &str = "[[tunnels]]\nid = \"demo\"\n";

/// Reads until the peer closes the connection; what it sent before, if anything.
async fn until_closed(tcp: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    within(bound, "the gateway closes the connection", async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    seen
}

/// A client that trickles its request head (slowloris) is cut off once
/// `limits.header_read_timeout` has passed, however steadily it trickles; one
/// that sends its head in time on the next connection is served.
#[tokio::test]
async fn a_slowloris_client_is_cut_off() {
    let (_up, gw, _agent) =
        gateway_with(&format!("[limits]\nheader_read_timeout = \"1s\"\n{DEMO}")).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    let trickle = async {
        tcp.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tcp.write_all(b"X-Slow: 1\r\n").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    let cut = within(
        Duration::from_secs(5),
        "the trickling client is cut off",
        trickle,
    )
    .await;
    assert!(cut.is_err(), "the connection stayed open");
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(900),
        "cut off before the timeout, after {lasted:?}"
    );
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (head, _) = exchange(&mut tcp, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// An idle keep-alive connection is closed after the same timeout.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_up, gw, _agent) =
        gateway_with(&format!("[limits]\nheader_read_timeout = \"1s\"\n{DEMO}")).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (head, _) = exchange(&mut tcp, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let rest = until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// Heads over the limits get 431 (size, count) or 414 (target) from the
/// gateway; a head below them is forwarded. Nothing over them reaches the app:
/// the next request on a fresh connection is still served.
#[tokio::test]
async fn oversized_heads_are_refused() {
    let (_up, gw, _agent) = gateway_with(DEMO).await;
    let big_header = format!("X-Big: {}\r\n", "a".repeat(40 * 1024));
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_target = format!("/echo?{}", "q".repeat(9 * 1024));
    let fine = format!("X-Fine: {}\r\n", "b".repeat(20 * 1024));
    let cases = [
        ("one 40 KiB header", "/echo".to_owned(), big_header, "431"),
        ("101 headers", "/echo".to_owned(), many, "431"),
        ("a 9 KiB target", long_target, String::new(), "414"),
        ("a 20 KiB head", "/echo".to_owned(), fine, "200"),
    ];
    for (name, target, headers, status) in cases {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let answer = until_closed_or_answer(&mut tcp).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{name}: {}",
            answer.lines().next().unwrap_or("(nothing)")
        );
    }
}

/// The status line of the answer, or whatever came before the connection
/// closed.
async fn until_closed_or_answer(tcp: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 8192];
    within(Duration::from_secs(10), "an answer", async {
        while !seen.windows(2).any(|w| w == b"\r\n") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// What the gateway does not carry it answers itself, with its error code:
/// `CONNECT` (501), a transfer coding other than chunked (501), a request
/// without Host or with two (400), `TRACE` (405 with `Allow`), a malformed
/// chunked body (400, the client's fault, not a 502 blamed on the app).
#[tokio::test]
async fn requests_the_gateway_cannot_carry_are_answered_by_it() {
    let (_up, gw, _agent) = gateway_with(DEMO).await;
    let cases: [(&str, &[u8], &str, &str); 7] = [
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "501",
            "not_implemented",
        ),
        (
            "gzip transfer coding",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "501",
            "not_implemented",
        ),
        (
            "no Host",
            b"GET /echo HTTP/1.1\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "two Hosts",
            b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "a Host with a slash",
            b"GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "TRACE",
            b"TRACE /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            "405",
            "method_not_allowed",
        ),
        (
            "a malformed chunk",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            "400",
            "bad_request",
        ),
    ];
    for (name, request, status, code) in cases {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let (answer, _) = exchange(&mut tcp, request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{name}: {answer}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("x-gateway-error: {code}")),
            "{name}: {answer}"
        );
        if name == "TRACE" {
            assert!(
                answer.to_ascii_lowercase().contains("allow: get, head"),
                "{answer}"
            );
        }
    }
}

/// HTTP/1.0 may leave Host out: the gateway's own endpoints answer, and a
/// proxied request gets one from an absolute-form target or a 400, never goes
/// upstream without one.
#[tokio::test]
async fn http10_without_host() {
    let (_up, gw, _agent) = gateway_with(DEMO).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&until_closed(&mut tcp, Duration::from_secs(10)).await)
        .into_owned();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");

    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /echo HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = String::from_utf8_lossy(&until_closed(&mut tcp, Duration::from_secs(10)).await)
        .into_owned();
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");

    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET http://app.example:8080/echo HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&until_closed(&mut tcp, Duration::from_secs(10)).await)
        .into_owned();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["headers"]["host"], "app.example:8080");
    assert_eq!(seen["uri"], "/echo");
}

/// Per tunnel: `allow_trace` lets TRACE through, `forward_underscore_headers`
/// keeps names with `_`; by default neither. A client's request ID that could
/// forge a log field is replaced, a sane one kept.
#[tokio::test]
async fn tunnel_header_and_method_policy() {
    let (up, gw, _agent) = gateway_with(
        "[server]\ndefault_tunnel = \"demo\"\n[[tunnels]]\nid = \"demo\"\n[[tunnels]]\nid = \"lax\"\nallow_trace = true\nforward_underscore_headers = true\n",
    )
    .await;
    let _lax = TestAgent::start(&gw, "lax", &up.url()).await;
    gw.wait_agents("lax", 1).await;
    let c = client();
    let send = |tunnel: &'static str, method: &'static str| {
        c.request(method.parse().unwrap(), gw.url("/echo"))
            .header("x-tunnel-id", tunnel)
            .header("x_real_ip", "6.6.6.6")
            .header("x-real-ip", "10.0.0.1")
            .header("x-request-id", "evil id=1 level=error")
            .send()
    };
    let strict = send("demo", "GET").await.unwrap();
    let id = strict.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "evil id=1 level=error");
    let seen: serde_json::Value = strict.json().await.unwrap();
    assert!(seen["headers"].get("x_real_ip").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-real-ip"], "10.0.0.1");
    assert_eq!(seen["headers"]["x-request-id"], id.as_str());
    assert_eq!(send("demo", "TRACE").await.unwrap().status(), 405);

    let lax = send("lax", "GET").await.unwrap();
    let seen: serde_json::Value = lax.json().await.unwrap();
    assert_eq!(seen["headers"]["x_real_ip"], "6.6.6.6");
    let traced = send("lax", "TRACE").await.unwrap();
    assert_eq!(traced.status(), 200);

    let kept = c
        .get(gw.url("/echo"))
        .header("x-request-id", "req-42:a/b+c=")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "req-42:a/b+c=");
}

/// With a public domain, a Host's letter case and trailing dot do not change
/// its tunnel, and a tunnel's Host never reaches the gateway's own endpoints.
#[tokio::test]
async fn host_routing_is_case_and_dot_blind() {
    let (_up, gw, _agent) = gateway_with(
        "[server]\npublic_domain = \"tunnels.example.com\"\n[[tunnels]]\nid = \"demo\"\n",
    )
    .await;
    for host in [
        "demo.tunnels.example.com",
        "DEMO.Tunnels.Example.COM.",
        "demo.tunnels.example.com.:80",
    ] {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let request = format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (head, body) = exchange(&mut tcp, request.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{host}: {head}");
        assert_eq!(body, "upstream root GET /health\n", "{host}");
    }
}

/// A raw upstream that counts the request heads it receives and answers each
/// `200 ok` once the client's body has come (or the stream ended).
async fn counting_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(AtomicUsize::new(0));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                while read_request_head(&mut tcp).await.is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                    // Drain whatever body follows, until the agent stops sending.
                    let mut buf = [0u8; 65536];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await
                    {
                        if n == 0 {
                            return;
                        }
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (url, heads)
}

/// `max_request_body`: a Content-Length over it is refused with 413 before
/// anything goes upstream; a chunked body is cut off once it passes it, also
/// 413; a body within it goes through.
#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let (up, heads) = counting_upstream().await;
    let gw = TestGateway::start(config_from(
        "[[tunnels]]\nid = \"demo\"\nmax_request_body = \"1KiB\"\n",
    ))
    .await;
    let _agent = TestAgent::start(&gw, "demo", &up).await;
    gw.wait_agents("demo", 1).await;
    let c = client();

    let resp = c
        .post(gw.url("/upload"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-gateway-error"], "body_too_large");
    assert_eq!(
        heads.load(Ordering::SeqCst),
        0,
        "a refused body reached the upstream"
    );

    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 512]))),
    );
    let resp = c
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-gateway-error"], "body_too_large");

    let resp = c
        .post(gw.url("/upload"))
        .body(vec![b'z'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
