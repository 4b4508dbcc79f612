//! The tunnel end to end: a real gateway, real agents, real upstreams and a real
//! HTTP/WebSocket client, all on 127.0.0.1 port 0.
//!
//! What works when everything is up: the seed's curl examples, routing (default
//! tunnel, X-Tunnel-Id, Host), the headers the upstream receives, 500 concurrent
//! requests, 200 MiB each way through the real `gateway` binary with bounded memory,
//! WebSocket pass-through, a client leaving mid-response. Failures (agents lost,
//! timeouts, refusals, restarts) are in `tunnel_faults.rs`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway::agent::AgentConfig;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use common::process::{Process, TempDir};
use common::*;

/// The gateway's agent list, as JSON.
async fn connections(c: &reqwest::Client, gw_base: &str) -> Vec<serde_json::Value> {
    let resp = c
        .get(format!("{gw_base}/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Vec<serde_json::Value>>().await.unwrap()
}

/// Polls `/connections` until the sum of `requests_in_flight` is 0 (panics after 10 s).
async fn wait_idle(c: &reqwest::Client, gw_base: &str) {
    let mut list: Vec<serde_json::Value>;
    eventually!(
        {
            list = connections(c, gw_base).await;
            list.iter()
                .map(|a| a["requests_in_flight"].as_u64().unwrap())
                .sum::<u64>()
                == 0
        },
        "no request in flight; still: {list:?}"
    );
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, checked by shape and ranges.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
            .then(|| s[r].parse::<u32>().unwrap())
    };
    let (Some(_y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

#[test]
fn rfc3339_checker_rejects_what_it_should() {
    assert!(is_rfc3339("2025-01-31T23:59:59Z"));
    assert!(is_rfc3339("2025-01-31T23:59:59.123456789Z"));
    assert!(is_rfc3339("2025-01-31T23:59:59+02:00"));
    assert!(!is_rfc3339("2025-01-31 23:59:59"));
    assert!(!is_rfc3339("2025-13-31T23:59:59Z"));
    assert!(!is_rfc3339("1738367999"));
    assert!(!is_rfc3339("2025-01-31T23:59:59."));
}

/// The four curl examples of the original description, against one agent in front of
/// a real upstream.
#[tokio::test]
async fn seed_curl_examples() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    let c = client();
    let base = gw.url("");

    // curl http://127.0.0.1:3000/health
    let resp = c.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["agents"], 1, "{health}");

    // curl http://127.0.0.1:3000/connections
    let list = connections(&c, &base).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let a = &list[0];
    assert_eq!(a["connection_id"], agent.connection_id.as_str());
    assert_eq!(a["tunnel"], "demo");
    let connected_at = a["connected_at"].as_str().unwrap();
    assert!(is_rfc3339(connected_at), "connected_at {connected_at:?}");
    let peer: SocketAddr = a["peer"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.1");
    assert_eq!(a["upstream"], up.url().as_str());
    assert_eq!(a["requests_in_flight"], 0);

    // curl -X POST http://127.0.0.1:3000/forward -H 'Content-Type: application/json' \
    //      -d '{"message": "Hello from client!"}'
    let json = r#"{"message": "Hello from client!"}"#;
    let resp = c
        .post(gw.url("/forward"))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    // The upstream's root route answers with its method, path and the body it got.
    assert_eq!(
        resp.text().await.unwrap(),
        format!("upstream root POST /\n{json}")
    );
    // The same, sent to /echo, shows the content type and the body arrived intact.
    let resp = c
        .post(gw.url("/forward"))
        .header("content-type", "application/json")
        .header("x-forward-path", "/echo")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/echo");
    assert_eq!(echo["headers"]["content-type"], "application/json");
    assert_eq!(echo["body"], json);
    assert!(
        echo["headers"].get("x-forward-path").is_none(),
        "X-Forward-Path is for the gateway only: {echo}"
    );
    // ?path= works as well.
    let resp = c
        .post(gw.url("/forward?path=%2Fecho%2Fvia-query"))
        .body("q")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["uri"], "/echo/via-query");
    assert_eq!(echo["body"], "q");

    // curl http://127.0.0.1:3000/about
    let resp = c.get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.unwrap(), "about page from upstream");

    // Four proxied requests were counted on the agent, none is left in flight.
    wait_idle(&c, &base).await;
    let list = connections(&c, &base).await;
    assert_eq!(list[0]["requests_total"], 4, "{list:?}");
}

/// X-Forwarded-* and X-Request-Id reach the upstream; a client's X-Request-Id is kept
/// and echoed; hop-by-hop and gateway-only headers do not reach the upstream.
#[tokio::test]
async fn forwarding_headers_and_request_id() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    let c = client();

    let resp = c
        .get(gw.url("/echo/some/path?x=1"))
        .header("x-tunnel-id", "demo")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let response_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!response_id.is_empty());
    let echo: serde_json::Value = resp.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(echo["uri"], "/echo/some/path?x=1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string().as_str());
    assert_eq!(h["host"], gw.addr.to_string().as_str(), "Host is kept");
    assert_eq!(h["x-request-id"], response_id.as_str());
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("x-tunnel-id").is_none(), "{h}");

    // Hop-by-hop headers stay on the public hop, those named by Connection too.
    let resp = c
        .get(gw.url("/echo"))
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("forwarded", "for=203.0.113.9")
        .header("x-after", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    let h = &echo["headers"];
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "forwarded",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-after"], "kept");

    // A client-chosen ID goes to the upstream and comes back. Forwarding headers
    // a client sends are not trusted by default: they are replaced.
    let resp = c
        .get(gw.url("/echo"))
        .header("x-request-id", "client-chosen-id-42")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bank.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-id-42");
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-request-id"], "client-chosen-id-42");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        gw.addr.to_string().as_str()
    );

    // Behind a proxy of one's own (server.trust_forwarded), they are extended/kept.
    let up2 = TestUpstream::start().await;
    let trusting = TestGateway::start(config_from(
        "[server]\ntrust_forwarded = true\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let _agent2 = TestAgent::start(&trusting, "demo", &up2.url()).await;
    let echo: serde_json::Value = c
        .get(trusting.url("/echo"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["x-forwarded-host"], "app.example");
}

/// /connections is open to this machine by default (not to a request a proxy
/// passes on) and needs the admin token once one is set; every response, the
/// gateway's own included, carries an X-Request-Id.
#[tokio::test]
async fn admin_token_guards_connections() {
    let open = TestGateway::start_default().await;
    let c = client();
    let resp = c.get(open.url("/connections")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    for (header, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
    ] {
        let resp = c
            .get(open.url("/connections"))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "passed on with {header}");
        assert!(resp.text().await.unwrap().contains("server.admin_token"));
    }

    let gw = TestGateway::start(config_from(
        "[server]\nadmin_token = \"adm1n\"\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let c = client();
    let resp = c.get(gw.url("/connections")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("x-request-id"));
    let resp = c
        .get(gw.url("/connections"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(gw.url("/connections"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "[]");
    // /health stays open for load balancers (no token), and is traceable
    // too; with no agent yet, it says the gateway is starting.
    let resp = c
        .get(gw.url("/health"))
        .header("x-request-id", "lb-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-request-id"], "lb-probe-1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "starting");
}

/// An upstream that answers `name` on every path.
async fn named_upstream(name: &'static str) -> TestUpstream {
    TestUpstream::serve(axum::Router::new().fallback(move || async move { name })).await
}

/// Host `<tunnel>.<public_domain>` selects the tunnel, then X-Tunnel-Id; with several
/// tunnels and no default, a request naming none is refused.
#[tokio::test]
async fn routing_by_host_and_header() {
    let up_alpha = named_upstream("alpha").await;
    let up_beta = named_upstream("beta").await;
    let gw = TestGateway::start(config_from(
        r#"
        [server]
        public_domain = "tunnels.test"
        [[tunnels]]
        id = "alpha"
        [[tunnels]]
        id = "beta"
        "#,
    ))
    .await;
    let _a = TestAgent::start(&gw, "alpha", &up_alpha.url()).await;
    let _b = TestAgent::start(&gw, "beta", &up_beta.url()).await;
    gw.wait_agents("alpha", 1).await;
    gw.wait_agents("beta", 1).await;
    let port = gw.addr.port();
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .resolve("alpha.tunnels.test", gw.addr)
        .resolve("beta.tunnels.test", gw.addr)
        .resolve("nope.tunnels.test", gw.addr)
        .build()
        .unwrap();

    for (host, want) in [("alpha", "alpha"), ("beta", "beta")] {
        let resp = c
            .get(format!("http://{host}.tunnels.test:{port}/any/path"))
            // The Host wins over the header.
            .header(
                "x-tunnel-id",
                if host == "alpha" { "beta" } else { "alpha" },
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), want);
    }

    // The Host names a tunnel that is not configured: 404, with a request ID.
    let resp = c
        .get(format!("http://nope.tunnels.test:{port}/about"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["x-gateway-error"], "unknown_tunnel");
    assert!(resp.text().await.unwrap().contains("Unknown tunnel 'nope'"));

    // Not a tunnel host: X-Tunnel-Id routes.
    let resp = c
        .get(gw.url("/x"))
        .header("x-tunnel-id", "beta")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "beta");

    // Two tunnels, no default, nothing named: 404.
    let resp = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["x-gateway-error"], "no_tunnel");

    // The gateway's own endpoints stay reachable on the bare address.
    let resp = c.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// 500 requests at once through one agent, each with its own body and a random
/// delay at the upstream: every response belongs to its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_through_one_agent() {
    const N: usize = 500;
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    let c = client();
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..N {
        let c = c.clone();
        let ms: u64 = rand::random_range(0..300);
        let url = gw.url(&format!("/slow?ms={ms}"));
        set.spawn(async move {
            let body = format!("request {i} {}", uuid::Uuid::new_v4());
            let id = format!("req-{i}");
            let resp = c
                .post(url)
                .header("x-request-id", &id)
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(resp.status(), 200, "request {i}");
            assert_eq!(resp.headers()["x-request-id"], id.as_str());
            assert_eq!(resp.text().await.unwrap(), format!("slow done {body}"));
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    // 500 requests of up to 300 ms each: only concurrency makes this quick.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");

    let base = gw.url("");
    wait_idle(&c, &base).await;
    let list = connections(&c, &base).await;
    assert_eq!(list[0]["requests_total"], N as u64, "{list:?}");
}

/// A WebSocket upstream reached through the tunnel: text and binary both ways, then
/// a clean close, and nothing left in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_passes_through() {
    let ws_up = WsEchoUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &format!("http://{}", ws_up.addr)).await;
    gw.wait_agents("demo", 1).await;

    let url = format!("ws://{}/hmr", gw.addr);
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("handshake within 10 s")
    .expect("handshake");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));

    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    let messages = [
        Message::text("hello through the tunnel"),
        Message::binary(Bytes::from_static(&[0u8, 1, 2, 254, 255])),
        Message::binary(Bytes::from(big)),
        Message::text("é ✓ unicode"),
    ];
    for msg in messages {
        ws.send(msg.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo within 10 s")
            .expect("stream open")
            .expect("message");
        assert_eq!(got, msg);
    }

    ws.close(None).await.unwrap();
    // After our close, the stream ends. The harness's echo server drops the socket
    // without answering the close frame (connecting to it directly gives the same
    // error); a close handshake through the tunnel is checked in the next test.
    let after_close = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the WebSocket closes within 10 s");
    match after_close {
        None | Some(Ok(Message::Close(_))) => {}
        Some(Err(tokio_tungstenite::tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake,
        ))) => {}
        other => panic!("unexpected end of the WebSocket: {other:?}"),
    }
    drop(ws);

    // The upgraded connection, closed at both ends, no longer counts as in flight.
    let c = client();
    wait_idle(&c, &gw.url("")).await;
    assert_eq!(
        connections(&c, &gw.url("")).await[0]["requests_total"],
        1,
        "one upgraded request"
    );
}

/// A WebSocket upstream that completes the close handshake and records the close
/// frame it received.
async fn ws_upstream_with_close_handshake() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>)
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut tx = Some(tx);
        // Keep reading after the close frame: that sends tungstenite's reply.
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = &msg {
                let reason = frame.as_ref().map(|f| f.reason.to_string());
                if let Some(tx) = tx.take() {
                    let _ = tx.send(reason.unwrap_or_default());
                }
            } else if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// The WebSocket close handshake crosses the tunnel both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_close_handshake_passes_through() {
    let (up_addr, closed_with) = ws_upstream_with_close_handshake().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &format!("http://{up_addr}")).await;
    gw.wait_agents("demo", 1).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/socket", gw.addr))
        .await
        .expect("handshake");
    ws.send(Message::text("ping")).await.unwrap();
    let echoed = ws.next().await.expect("open").expect("message");
    assert_eq!(echoed, Message::text("ping"));

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye from client".into(),
    }))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a reply within 10 s");
    match reply {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the upstream's close frame, got {other:?}"),
    }
    let reason = tokio::time::timeout(Duration::from_secs(10), closed_with)
        .await
        .expect("the upstream saw the close within 10 s")
        .expect("close reason");
    assert_eq!(reason, "bye from client");
}

/// A client that goes away in the middle of a large response leaves nothing behind:
/// the request stops counting as in flight, the agent lets go of the upstream's
/// connection (the upstream stops sending), and the next requests work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_response_does_not_break_the_next_request() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    let c = client();

    let resp = c.get(gw.url("/bytes?n=1073741824")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = 0usize;
    while got < 256 * 1024 {
        got += body.next().await.expect("body").expect("chunk").len();
    }
    drop(body); // closes this client connection mid-body

    let base = gw.url("");
    let observer = client();
    wait_idle(&observer, &base).await;
    eventually!(
        within Duration::from_secs(5) =>
            up.bodies_in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "the upstream to stop sending the abandoned body once the client left"
    );

    for _ in 0..3 {
        let resp = c.get(gw.url("/about")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "about page from upstream");
    }
    let resp = c.get(gw.url("/bytes?n=100000")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 100_000);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64))
    );
}

// ---------------------------------------------------------------------------------
// Streaming through the real `gateway` binary, with its memory measured.
// ---------------------------------------------------------------------------------

/// The real `gateway` binary with `config_toml`, on port 0.
struct GatewayProcess {
    proc: Process,
    addr: SocketAddr,
    _dir: TempDir,
}

impl GatewayProcess {
    async fn start(config_toml: &str) -> Self {
        let dir = TempDir::new();
        let config = dir.write("gateway.toml", config_toml);
        let config = config.to_str().expect("utf-8 path");
        let proc = Process::gateway(
            &["--config", config, "--port", "0", "--log-level", "info"],
            &[],
        );
        let addr = proc.addr_async().await;
        GatewayProcess {
            proc,
            addr,
            _dir: dir,
        }
    }
}

const STREAM_BYTES: u64 = 200 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// `CHUNK + 251` bytes of the `/bytes` pattern: any run of it at any offset is a
/// zero-copy slice.
fn pattern_buffer() -> Bytes {
    (0..(CHUNK as u64 + 251))
        .map(pattern_byte)
        .collect::<Vec<u8>>()
        .into()
}

/// `len` (<= CHUNK) bytes of the pattern starting at `offset`.
fn pattern_at(buf: &Bytes, offset: u64, len: usize) -> Bytes {
    let start = (offset % 251) as usize;
    buf.slice(start..start + len)
}

/// 200 MiB up and 200 MiB down at the same time through the real gateway binary:
/// the bytes arrive intact and the gateway's resident memory grows by < 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_200_mib_each_way_with_bounded_gateway_memory() {
    let up = TestUpstream::start().await;
    // Bodies past the default max_request_body (100 MiB): no limit here.
    let gw = GatewayProcess::start("[[tunnels]]\nid = \"demo\"\nmax_request_body = \"0\"\n").await;
    let cfg = AgentConfig {
        gateway: format!("ws://{}/ws", gw.addr),
        tunnel: "demo".into(),
        token: None,
        upstream: up.url(),
        grace: Duration::from_secs(5),
        wait_upstream: false,
    };
    let _agent = TestAgent::start_with(cfg).await.expect("agent connects");
    let c = client();
    let base = format!("http://{}", gw.addr);

    // Ready and warmed up: one agent, one proxied request.
    wait_json(&format!("{base}/health"), "the agent registering", |h| {
        h["agents"] == 1
    })
    .await;
    let resp = c.get(format!("{base}/about")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "about page from upstream");

    let rss_before = gw.proc.status_kib("VmRSS");
    let pattern = pattern_buffer();

    // Upload: the upstream's /sink answers "<length> <fnv hash>".
    let upload = {
        let c = c.clone();
        let url = format!("{base}/sink");
        let pattern = pattern.clone();
        async move {
            let mut expected = Fnv::default();
            let mut off = 0u64;
            while off < STREAM_BYTES {
                let n = (STREAM_BYTES - off).min(CHUNK as u64) as usize;
                expected.update(&pattern_at(&pattern, off, n));
                off += n as u64;
            }
            let chunks = futures_util::stream::unfold(0u64, move |off| {
                let pattern = pattern.clone();
                async move {
                    if off >= STREAM_BYTES {
                        return None;
                    }
                    let n = (STREAM_BYTES - off).min(CHUNK as u64) as usize;
                    Some((
                        Ok::<_, std::io::Error>(pattern_at(&pattern, off, n)),
                        off + n as u64,
                    ))
                }
            });
            let resp = c
                .post(url)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await
                .expect("upload");
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.text().await.unwrap(),
                format!("{STREAM_BYTES} {:016x}", expected.0),
                "the upstream received other bytes than were sent"
            );
        }
    };

    // Download: every byte compared with the pattern.
    let download = {
        let c = c.clone();
        let url = format!("{base}/bytes?n={STREAM_BYTES}");
        let pattern = pattern.clone();
        async move {
            let resp = c.get(url).send().await.expect("download");
            assert_eq!(resp.status(), 200);
            let mut body = resp.bytes_stream();
            let mut off = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.expect("download chunk");
                for part in chunk.chunks(CHUNK) {
                    assert!(
                        part == &pattern_at(&pattern, off, part.len())[..],
                        "download differs from the pattern near byte {off}"
                    );
                    off += part.len() as u64;
                }
            }
            assert_eq!(off, STREAM_BYTES, "download length");
        }
    };

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(90), async {
        tokio::join!(upload, download)
    })
    .await
    .expect("transfers finish within 90 s");
    let elapsed = started.elapsed();

    let peak = gw.proc.status_kib("VmHWM");
    let rss_after = gw.proc.status_kib("VmRSS");
    let growth_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;
    println!(
        "400 MiB in {elapsed:?}; gateway VmRSS before {rss_before} KiB, VmHWM {peak} KiB, \
         VmRSS after {rss_after} KiB, growth {growth_mib:.1} MiB"
    );
    assert!(
        growth_mib < 64.0,
        "gateway memory grew by {growth_mib:.1} MiB while streaming (VmRSS before \
         {rss_before} KiB, VmHWM {peak} KiB)"
    );
    // The gateway's access log has both transfers, with their tunnel and status.
    let logged = |path: &str| {
        gw.proc.log().lines().any(|l| {
            l.contains("gateway::access")
                && l.contains(&format!("path={path} "))
                && l.contains("tunnel=demo")
                && l.contains("status=200")
        })
    };
    eventually!(
        logged("/bytes") && logged("/sink"),
        "access log lines for /bytes and /sink (status=200, tunnel=demo); log:\n{}",
        gw.proc.log()
    );
}
