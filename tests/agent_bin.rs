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
