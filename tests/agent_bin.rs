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
    eventually!(
        gw.gateway.state().registry.agents_of("demo")[0].in_flight() == 1,
        "the request to be in flight"
    );
    let started = Instant::now();
    agent.signal("TERM");

    // The gateway learns the agent is leaving and routes nothing new to it.
    eventually!(
        within Duration::from_secs(5) => gw.gateway.state().registry.select("demo").is_none(),
        "the agent to be marked draining"
    );
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
    let agent = connected_agent(&gw, &up.url()).await;

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

    eventually!(
        within Duration::from_secs(5) =>
            up.bodies_in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "the upstream to stop sending"
    );
    exits_at_once_with_no_stream_left(agent).await;
}

/// An upstream that answers any request with `101 Switching Protocols`, then sends
/// 64 KiB chunks until a write fails. Returns its address, how many upgraded
/// connections it accepted and how many are still open (still being written to).
async fn endless_upgrade_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    struct Open(Arc<AtomicUsize>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (accepted2, open2) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (accepted, open) = (accepted2.clone(), open2.clone());
            tokio::spawn(async move {
                if read_request_head(&mut tcp).await.is_none() {
                    return;
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let _open = Open(open);
                let answer = "HTTP/1.1 101 Switching Protocols\r\n\
                              connection: upgrade\r\nupgrade: test\r\n\r\n";
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                // Reads are ignored: a FIN from the agent does not stop the sending.
                let chunk = vec![b'x'; 64 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    (addr, accepted, open)
}

/// Reads at least `want` bytes from `tcp` (each read within 10 s, none at the end).
async fn read_at_least(tcp: &mut tokio::net::TcpStream, mut want: usize) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    while want > 0 {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("upgraded data within 10 s")
            .unwrap();
        assert!(n > 0, "the upgraded connection ended early");
        want = want.saturating_sub(n);
    }
}

/// An upgraded connection whose public client half-closes, then vanishes (a reset)
/// while the upstream keeps sending, leaves no stream behind in the agent: the
/// gateway half-closed the stream when the client did, and dropping it afterwards
/// must still reset it, or the agent keeps the stream, its task and the upstream
/// connection forever (and SIGTERM waits out the whole grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_then_vanished_upgrade_leaves_no_stream_in_the_agent() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (up_addr, accepted, open) = endless_upgrade_upstream().await;
    // A protocol of the test's own, allowed for the tunnel.
    let gw = TestGateway::start(config_from(
        "[[tunnels]]\nid = \"demo\"\nupgrades = [\"websocket\", \"test\"]\n",
    ))
    .await;
    let agent = connected_agent(&gw, &format!("http://{up_addr}")).await;

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /x HTTP/1.1\r\nhost: {}\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n",
        gw.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    read_at_least(&mut tcp, 256 * 1024).await;
    assert_eq!(open.load(Ordering::SeqCst), 1, "the upstream is sending");

    // Half-close: the gateway passes the FIN on; the upstream keeps sending.
    tcp.shutdown().await.unwrap();
    read_at_least(&mut tcp, 128 * 1024).await;
    // Vanish: closing with unread data pending makes the kernel send a reset.
    let mut one = [0u8; 1];
    let pending = tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut one))
        .await
        .expect("more data within 10 s")
        .unwrap();
    assert_eq!(pending, 1, "unread data is pending");
    drop(tcp);

    // The agent lets go of the stream, so of the upstream connection.
    eventually!(
        within Duration::from_secs(5) => open.load(Ordering::SeqCst) == 0,
        "the upstream connection to close (else the agent kept the stream)\n{}",
        agent.log()
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upgraded connection"
    );

    exits_at_once_with_no_stream_left(agent).await;
}

/// The agent binary with a 30 s grace period, connected to `gw` as tunnel demo.
async fn connected_agent(gw: &TestGateway, upstream: &str) -> Process {
    let ws = gw.ws_url();
    let agent = Process::agent(&[
        "--gateway",
        &ws,
        "--tunnel",
        "demo",
        "--upstream",
        upstream,
        "--grace",
        "30s",
    ]);
    agent.wait_line_async("as tunnel demo, connection ").await;
    gw.wait_agents("demo", 1).await;
    agent
}

/// SIGTERM makes the agent exit 0 at once, with no stream left to wait for (a
/// leaked stream holds it for the whole 30 s grace period).
async fn exits_at_once_with_no_stream_left(mut agent: Process) {
    let asked = Instant::now();
    agent.signal("TERM");
    assert_eq!(agent.wait_exit_async(Duration::from_secs(40)).await, 0);
    let log = agent.log();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}: the agent waited for streams nobody uses\n{log}",
        asked.elapsed()
    );
    assert!(log.contains("unfinished_streams=0"), "{log}");
}

/// `--metrics`: the agent's own scrape counts its streams, the bytes it copied,
/// the streams its upstream refused, and says it is connected.
#[tokio::test]
async fn the_agent_serves_its_metrics() {
    let gw = TestGateway::start_default().await;
    // An upstream that is up, and a port where nothing listens.
    let up = TestUpstream::start().await;
    let (ws, upstream) = (gw.ws_url(), up.url());
    let agent = Process::agent(&[
        "--gateway",
        &ws,
        "--tunnel",
        "demo",
        "--upstream",
        &upstream,
        "--metrics",
        "127.0.0.1:0",
    ]);
    gw.wait_agents("demo", 1).await;
    for _ in 0..3 {
        let resp = client().get(gw.url("/about")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    drop(up);
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let line = agent.wait_line_async("metrics on http://").await;
    let url = line
        .split("metrics on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the metrics URL")
        .to_owned();
    let scrape = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        scrape
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{scrape}"))
    };
    assert!(value("agent_streams_total ") >= 4.0, "{scrape}");
    assert_eq!(
        value("agent_upstream_connect_failures_total "),
        1.0,
        "{scrape}"
    );
    assert!(
        value("agent_upstream_bytes_total{direction=\"down\"}") > 0.0,
        "{scrape}"
    );
    assert!(
        value("agent_upstream_bytes_total{direction=\"up\"}") > 0.0,
        "{scrape}"
    );
    assert_eq!(
        value(&format!("agent_gateway_connected{{gateway=\"{ws}\"}}")),
        1.0,
        "{scrape}"
    );
}
