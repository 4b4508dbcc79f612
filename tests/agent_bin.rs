//! The real `gateway-agent` binary: connect log line, SIGTERM drain, exit codes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{AGENT_BIN, Process};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_requests_then_exits_zero() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let ws = gw.ws_url();
    let upstream = up.url();
    let mut agent = Process::agent(&[
        "--gateway",
        &ws,
        "--tunnel",
        "demo",
        "--upstream",
        &upstream,
    ]);
    agent.wait_line_async("connected to ").await;
    agent.wait_line_async("as tunnel demo, connection ").await;
    gw.wait_agents("demo", 1).await;

    let url = gw.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { client().get(url).send().await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.gateway.state().registry.agents_of("demo")[0].in_flight() != 1 {
        assert!(Instant::now() < deadline, "request never in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    agent.signal("TERM");

    // The gateway learns the agent is leaving and routes nothing new to it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.gateway.state().registry.select("demo").is_some() {
        assert!(Instant::now() < deadline, "agent never marked draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "no new requests go to a draining agent");

    let resp = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow done ");
    let code = agent.wait_exit_async(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "log:\n{}", agent.log());
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "it waited for the request"
    );
    gw.wait_agents("demo", 0).await;
}

#[tokio::test]
async fn refused_agent_exits_non_zero_with_the_reason() {
    let gw = TestGateway::start(config_from(
        "[[tunnels]]\nid = \"app\"\ntoken = \"right\"\n",
    ))
    .await;
    let ws = gw.ws_url();
    let mut agent = Process::agent(&[
        "--gateway",
        &ws,
        "--tunnel",
        "app",
        "--token",
        "wrong",
        "--upstream",
        "8000",
    ]);
    let code = agent.wait_exit_async(Duration::from_secs(10)).await;
    assert_eq!(code, 1);
    assert!(
        agent.log().contains("wrong token for tunnel 'app'"),
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains("panicked"));
}

#[tokio::test]
async fn unreachable_gateway_is_retried_not_fatal() {
    // Nothing listens on this port: the agent keeps retrying until told to stop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = format!("ws://127.0.0.1:{port}/ws");
    let mut agent = Process::agent(&["--gateway", &ws, "--tunnel", "demo", "--upstream", "8000"]);
    agent.wait_line_async("cannot connect to the gateway").await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "still running, retrying"
    );
    agent.signal("TERM");
    assert_eq!(agent.wait_exit_async(Duration::from_secs(5)).await, 0);
}

#[test]
fn usage_and_config_errors() {
    let out = Command::new(AGENT_BIN)
        .args(["--tunnel", "x"])
        .env_remove("GATEWAY_AGENT_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing --gateway"), "{err}");

    let out = Command::new(AGENT_BIN)
        .args([
            "--gateway",
            "ws://127.0.0.1:1/ws",
            "--tunnel",
            "x",
            "--upstream",
            "https://app:443",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not speak TLS"), "{err}");

    let out = Command::new(AGENT_BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn wss_gateway_fails_cleanly_when_nothing_speaks_tls() {
    // A plain-HTTP gateway behind a wss:// URL: the TLS handshake fails, which is
    // retried (the gateway may be restarting), never a panic.
    let gw = TestGateway::start_default().await;
    let wss = format!("wss://{}/ws", gw.addr);
    let mut agent = Process::agent(&["--gateway", &wss, "--tunnel", "demo", "--upstream", "8000"]);
    agent.wait_line_async("cannot connect to the gateway").await;
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "still running, retrying"
    );
    agent.signal("TERM");
    assert_eq!(agent.wait_exit_async(Duration::from_secs(5)).await, 0);
}

/// A TLS terminator in front of the gateway, as a load balancer would be: it
/// presents `tests/fixtures/tls/localhost.pem` (issued by the test CA) and copies
/// bytes to the gateway. Returns its address.
async fn tls_terminator(gateway: std::net::SocketAddr) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let cert = CertificateDer::from_pem_file(format!("{dir}/localhost.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/localhost.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(gateway).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// wss:// end to end: the agent verifies the terminator's certificate against the
/// trusted roots (here the test CA, through `SSL_CERT_FILE`) and serves requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_a_tls_terminator_serves_requests() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let tls = tls_terminator(gw.addr).await;
    let wss = format!("wss://localhost:{}/ws", tls.port());
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    let upstream = up.url();
    let args = [
        "--gateway",
        &wss,
        "--tunnel",
        "demo",
        "--upstream",
        &upstream,
    ];
    let mut agent = Process::spawn(AGENT_BIN, &args, &[("SSL_CERT_FILE", ca)]);
    agent.wait_line_async("as tunnel demo, connection ").await;
    gw.wait_agents("demo", 1).await;
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "about page from upstream");
    agent.signal("TERM");
    assert_eq!(agent.wait_exit_async(Duration::from_secs(10)).await, 0);

    // Without the test CA among its roots, the agent refuses the certificate and
    // keeps retrying (the certificate may be fixed), saying why.
    let mut untrusting = Process::agent(&args);
    let line = untrusting
        .wait_line_async("cannot connect to the gateway")
        .await;
    assert!(line.contains("TLS handshake with localhost"), "{line}");
    assert!(line.contains("certificate"), "{line}");
    untrusting.signal("TERM");
    assert_eq!(untrusting.wait_exit_async(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_serves_several_gateway_nodes() {
    let up = TestUpstream::start().await;
    let node1 = TestGateway::start_default().await;
    let node2 = TestGateway::start_default().await;
    let (ws1, ws2, upstream) = (node1.ws_url(), node2.ws_url(), up.url());
    let _agent = Process::agent(&[
        "--gateway",
        &ws1,
        "--gateway",
        &ws2,
        "--tunnel",
        "demo",
        "--upstream",
        &upstream,
    ]);
    node1.wait_agents("demo", 1).await;
    node2.wait_agents("demo", 1).await;
    for node in [&node1, &node2] {
        let resp = client().get(node.url("/about")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "about page from upstream");
    }
}

/// A client that leaves in the middle of a large download leaves no stream behind
/// in the agent: a stream the gateway no longer reads must be reset, not left
/// waiting for flow-control credit forever (holding the upstream connection, and
/// SIGTERM for the whole grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_download_leaves_no_stream_in_the_agent() {
    use futures_util::StreamExt;
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let (ws, upstream) = (gw.ws_url(), up.url());
    let mut agent = Process::agent(&[
        "--gateway",
        &ws,
        "--tunnel",
        "demo",
        "--upstream",
        &upstream,
        "--grace",
        "30s",
    ]);
    agent.wait_line_async("as tunnel demo, connection ").await;
    gw.wait_agents("demo", 1).await;

    for _ in 0..3 {
        let resp = client()
            .get(gw.url("/bytes?n=1073741824"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut got = 0usize;
        while got < 512 * 1024 {
            got += body.next().await.expect("body").expect("chunk").len();
        }
    } // each client goes away mid-body

    let deadline = Instant::now() + Duration::from_secs(5);
    while up
        .bodies_in_flight
        .load(std::sync::atomic::Ordering::SeqCst)
        > 0
    {
        assert!(Instant::now() < deadline, "the upstream is still sending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    agent.signal("TERM");
    assert_eq!(agent.wait_exit_async(Duration::from_secs(40)).await, 0);
    let log = agent.log();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}: the agent waited for streams nobody reads\n{log}",
        asked.elapsed()
    );
    assert!(log.contains("unfinished_streams=0"), "{log}");
}
