//! The tunnel when something goes wrong: agents killed or leaving, slow upstreams,
//! a restarted gateway, refused agents, no agent, an upstream that is down.
//!
//! Everything runs on 127.0.0.1 port 0; timing assertions are generous bounds.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gateway::agent::{self, AgentError};
use gateway::transport::SessionEnd;
use gateway::{Config, Shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use common::*;

/// Polls until the agents of `tunnel` have `n` requests in flight in total.
async fn wait_in_flight(gw: &TestGateway, tunnel: &str, n: usize) {
    let in_flight = || -> usize {
        gw.gateway
            .state()
            .registry
            .agents_of(tunnel)
            .iter()
            .map(|a| a.in_flight())
            .sum()
    };
    eventually!(
        in_flight() == n,
        "tunnel {tunnel} to have {n} requests in flight (has {})",
        in_flight()
    );
}

/// An address on which nothing listens (bound, then closed).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// --- agent lost, timeouts ----------------------------------------------------------

/// An agent that dies while a request waits on a 20 s upstream: the client gets a
/// 502 at once, not when some timeout expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_request_gives_502_quickly() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;

    let c = client();
    let url = gw.url("/slow?ms=20000");
    // A POST with a body: the upstream may have acted on it, so it is never
    // sent again (an idempotent request would be: tests/no_request_lost.rs).
    let request = tokio::spawn(async move { c.post(url).body("order #1").send().await });
    wait_in_flight(&gw, "demo", 1).await;

    agent.kill();
    let killed = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("an answer within 10 s of the kill")
        .unwrap()
        .expect("a response, not a reset");
    let waited = killed.elapsed();
    assert_eq!(resp.status(), 502);
    assert!(
        waited < Duration::from_secs(2),
        "502 came {waited:?} after the kill"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["x-gateway-error"], "agent_lost");
    assert!(resp.text().await.unwrap().contains("connection was lost"));
    gw.wait_agents("demo", 0).await;

    // Then: no agent at all.
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
}

/// An upstream slower than `timeouts.direct` = 500ms: 504 near that timeout.
#[tokio::test]
async fn slow_upstream_gives_504_after_direct_timeout() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(config_from(
        "[timeouts]\ndirect = \"500ms\"\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    let c = client();

    let started = Instant::now();
    let resp = c
        .get(gw.url("/slow?ms=10000"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "504 after {took:?}, expected about 500 ms"
    );
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    assert_eq!(body["request_id"], id.as_str());
    assert!(
        body["message"].as_str().unwrap().contains("500ms"),
        "{body}"
    );

    // An upstream quicker than the timeout is not affected.
    let resp = c.get(gw.url("/slow?ms=50")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow done ");
}

/// `POST /forward` has its own timeout, `timeouts.forward`.
#[tokio::test]
async fn slow_upstream_gives_504_after_forward_timeout() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(config_from(
        "[timeouts]\nforward = \"500ms\"\ndirect = \"30s\"\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;

    let started = Instant::now();
    let resp = client()
        .post(gw.url("/forward"))
        .header("x-forward-path", "/slow?ms=10000")
        .body("payload")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "504 after {took:?}, expected about 500 ms"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("did not answer within 500ms")
    );
}

// --- gateway restart -----------------------------------------------------------

/// The gateway goes away and a new one starts on the same address: an agent run
/// with `agent::run` reconnects by itself and requests succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_to_a_restarted_gateway() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let addr = gw.addr;
    let agent_shutdown = Shutdown::new();
    let run = tokio::spawn(agent::run(
        agent_config(&gw, "demo", None, &up.url()),
        agent_shutdown.token(),
    ));
    gw.wait_agents("demo", 1).await;
    let first_id = gw.gateway.state().registry.agents_of("demo")[0]
        .connection_id
        .clone();
    let c = client();
    let resp = c.get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    drop(gw); // shutdown signal + accept loop aborted

    // Bind the same address again as soon as the old listener is gone.
    let mut refused = None;
    let listener = eventually!(
        match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                refused = Some(e);
                None
            }
        },
        "re-binding {addr} (last error: {refused:?})"
    );
    let mut config = Config::defaults();
    config.server.port = addr.port();
    let gw = TestGateway::start_on(config, listener).await;
    gw.wait_agents("demo", 1).await;
    let second_id = gw.gateway.state().registry.agents_of("demo")[0]
        .connection_id
        .clone();
    assert_ne!(first_id, second_id, "a new session on the new gateway");

    // The client's old keep-alive connection died with the old gateway; reqwest
    // may need one fresh connection, so use a new client.
    let c = client();
    for _ in 0..3 {
        let resp = c.get(gw.url("/about")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "about page from upstream");
    }

    agent_shutdown.trigger();
    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("agent::run returns within 10 s of its shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    gw.wait_agents("demo", 0).await;
}

// --- several agents ------------------------------------------------------------

/// An upstream that answers `name` after 100 ms on every path (so that concurrent
/// requests overlap and spread over the agents).
async fn named_slow_upstream(name: &'static str) -> TestUpstream {
    TestUpstream::serve(axum::Router::new().fallback(move || async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        name
    }))
    .await
}

/// Sends `n` concurrent requests through `c`; returns how many each upstream answered.
async fn spread(c: &reqwest::Client, url: &str, n: usize) -> (usize, usize) {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let c = c.clone();
        let url = url.to_owned();
        set.spawn(async move {
            let resp = c.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        });
    }
    let (mut a, mut b) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap().as_str() {
            "a" => a += 1,
            "b" => b += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (a, b)
}

fn totals(gw: &TestGateway, a: &str, b: &str) -> (u64, u64) {
    let list = gw.gateway.state().registry.list();
    let total = |id: &str| {
        list.iter()
            .find(|i| i.connection_id == id)
            .map_or(0, |i| i.requests_total)
    };
    (total(a), total(b))
}

/// Two agents of tunnel `demo`, each in front of its own upstream, both shown to
/// receive traffic (and counted right) before the test goes on.
struct Shared {
    _upstreams: (TestUpstream, TestUpstream),
    gw: TestGateway,
    agent_a: TestAgent,
    agent_b: TestAgent,
    c: reqwest::Client,
    url: String,
}

async fn two_agents_sharing() -> Shared {
    let up_a = named_slow_upstream("a").await;
    let up_b = named_slow_upstream("b").await;
    let gw = TestGateway::start_default().await;
    let agent_a = TestAgent::start(&gw, "demo", &up_a.url()).await;
    let agent_b = TestAgent::start(&gw, "demo", &up_b.url()).await;
    gw.wait_agents("demo", 2).await;
    let (id_a, id_b) = (agent_a.connection_id.clone(), agent_b.connection_id.clone());
    let c = client();
    let url = gw.url("/who");

    let (a, b) = spread(&c, &url, 40).await;
    assert!(a > 0 && b > 0, "both agents get traffic: a={a} b={b}");
    assert_eq!(totals(&gw, &id_a, &id_b), (a as u64, b as u64));
    Shared {
        _upstreams: (up_a, up_b),
        gw,
        agent_a,
        agent_b,
        c,
        url,
    }
}

/// Two agents of one tunnel both get traffic; one leaves gracefully and the other
/// takes everything, including on the client's kept-alive connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_and_one_leaves_gracefully() {
    let Shared {
        _upstreams,
        gw,
        agent_a,
        agent_b,
        c,
        url,
    } = two_agents_sharing().await;

    // Agent A leaves as on SIGTERM: it drains, and nothing was cut off.
    let stopping = Instant::now();
    let end = agent_a.stop().await;
    assert_eq!(
        end,
        SessionEnd::Drained {
            unfinished_streams: 0
        }
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "an idle agent should leave at once, not after its grace period (took {:?})",
        stopping.elapsed()
    );
    gw.wait_agents("demo", 1).await;

    // The same client (its pooled connections were bound to both agents).
    let (a, b) = spread(&c, &url, 40).await;
    assert_eq!((a, b), (0, 40), "all traffic to the remaining agent");
    // And fresh connections.
    let (a, b) = spread(&client(), &url, 10).await;
    assert_eq!((a, b), (0, 10));
    drop(agent_b);
}

/// An agent leaving gracefully while a request is in flight: no new request goes to
/// it, the one in flight completes, then the agent is gone with nothing cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_leaving_gracefully_finishes_the_request_in_flight() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    let c = client();

    // A kept-alive connection with an idle stream, and a request in flight.
    let resp = c.get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let slow = {
        let c = c.clone();
        let url = gw.url("/slow?ms=1500");
        tokio::spawn(async move { c.post(url).body("in flight").send().await })
    };
    wait_in_flight(&gw, "demo", 1).await;

    let stop = tokio::spawn(agent.stop());
    eventually!(
        gw.gateway.state().registry.list()[0].draining,
        "the agent to start draining"
    );
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "nothing new goes to a draining agent");

    let resp = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the request in flight finishes")
        .unwrap()
        .expect("a response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow done in flight");
    let end = stop.await.unwrap();
    assert_eq!(
        end,
        SessionEnd::Drained {
            unfinished_streams: 0
        }
    );
    gw.wait_agents("demo", 0).await;
}

/// Two agents of one tunnel; one is killed: once the gateway has noticed, the other
/// takes all the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_and_one_is_killed() {
    let Shared {
        _upstreams,
        gw,
        agent_a,
        agent_b,
        c,
        url,
    } = two_agents_sharing().await;

    agent_b.kill();
    gw.wait_agents("demo", 1).await;
    let (a, b) = spread(&c, &url, 40).await;
    assert_eq!((a, b), (40, 0), "all traffic to the remaining agent");
    drop(agent_a);
}

// --- refusals ------------------------------------------------------------------

fn secured_gateway_config() -> Config {
    config_from(
        r#"
        [[tunnels]]
        id = "secure"
        token = "s3cret-token"
        "#,
    )
}

/// A raw upgrade request: the refusal is a plain HTTP status, not a 101.
async fn raw_upgrade(gw: &TestGateway, tunnel: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .get(gw.url("/ws"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", gateway::protocol::SUBPROTOCOL)
        .header("x-tunnel-id", tunnel);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send().await.unwrap()
}

/// Wrong token, missing token, unknown tunnel: refused before the upgrade with a
/// status and a reason that `agent::connect` and `agent::run` pass on.
#[tokio::test]
async fn refused_agents_get_the_reason() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(secured_gateway_config()).await;

    let cases = [
        (
            "secure",
            Some("wrong"),
            401,
            "wrong token for tunnel 'secure'",
        ),
        (
            "secure",
            None,
            401,
            "tunnel 'secure' requires a token: pass --token or set GATEWAY_AGENT_TOKEN",
        ),
        (
            "nope",
            Some("s3cret-token"),
            403,
            "unknown tunnel 'nope': it is not configured on this gateway",
        ),
    ];
    for (tunnel, token, status, reason) in cases {
        let resp = raw_upgrade(&gw, tunnel, token).await;
        assert_eq!(resp.status(), status, "{tunnel} {token:?}");
        assert_eq!(resp.headers()["x-gateway-reason"].to_str().unwrap(), reason);
        assert!(resp.text().await.unwrap().contains(reason));

        let cfg = agent_config(&gw, tunnel, token, &up.url());
        let err = agent::connect(&cfg).await.err().expect("refused");
        match &err {
            AgentError::Refused {
                status: s,
                reason: r,
            } => {
                assert_eq!((*s, r.as_str()), (status, reason));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(err.is_fatal());
        assert!(err.to_string().contains(reason), "{err}");

        // agent::run gives up at once rather than retrying forever.
        let never = Shutdown::new();
        let err = tokio::time::timeout(Duration::from_secs(10), agent::run(cfg, never.token()))
            .await
            .expect("agent::run gives up within 10 s")
            .expect_err("refused");
        assert!(err.to_string().contains(reason), "{err}");
    }
    assert_eq!(gw.agents_of("secure"), 0);
    assert_eq!(gw.gateway.state().registry.len(), 0);

    // The right token is accepted.
    let ok = TestAgent::start_with(agent_config(&gw, "secure", Some("s3cret-token"), &up.url()))
        .await
        .expect("accepted");
    assert!(!ok.connection_id.is_empty());
    gw.wait_agents("secure", 1).await;
}

/// The real `gateway-agent` binary exits non-zero with the gateway's reason on stderr.
#[tokio::test]
async fn agent_binary_exits_with_the_reason() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(secured_gateway_config()).await;
    for (tunnel, token, reason) in [
        ("secure", "wrong", "wrong token for tunnel 'secure'"),
        ("nope", "s3cret-token", "unknown tunnel 'nope'"),
    ] {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
            .args(["--gateway", &gw.ws_url(), "--tunnel", tunnel])
            .args(["--token", token, "--upstream", &up.url()])
            .env_remove("GATEWAY_AGENT_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gateway-agent");
        let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
            .await
            .expect("gateway-agent exits within 15 s")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "exit status {:?}", out.status);
        assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
        assert!(
            stderr.lines().any(
                |l| l.starts_with("error: the gateway refused the agent") && l.contains(reason)
            ),
            "stderr lacks the reason {reason:?}:\n{stderr}"
        );
    }
    assert_eq!(gw.gateway.state().registry.len(), 0);
}

// --- no agent, upstream down -----------------------------------------------------

/// A tunnel with no agent: 503 with the documented message, in text or JSON.
#[tokio::test]
async fn no_agent_gives_503() {
    let gw = TestGateway::start_default().await;
    let c = client();
    let resp = c.get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["x-gateway-error"], "no_agent");
    assert_eq!(
        resp.text().await.unwrap().trim_end(),
        "No agents available for tunnel 'demo'"
    );

    let resp = c
        .post(gw.url("/forward"))
        .header("accept", "application/json")
        .header("x-request-id", "my-id")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-request-id"], "my-id");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_agent");
    assert_eq!(body["message"], "No agents available for tunnel 'demo'");
    assert_eq!(body["request_id"], "my-id");
}

/// A /forward target with characters a request line cannot carry (space,
/// non-ASCII, quotes) is escaped, not refused and never sent raw: the upstream
/// gets a valid request line for the path the client meant, from the header as
/// from `?path=` (decoded first, then escaped again).
#[tokio::test]
async fn forward_paths_are_escaped_for_the_upstream() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;
    let c = client();
    let by_header = c
        .post(gw.url("/forward"))
        .header("x-forward-path", "/echo/a b/\"x\"?q=<1>")
        .body("{}")
        .send()
        .await
        .unwrap();
    let by_query = c
        .post(gw.url("/forward?path=%2Fecho%2Fa%20b%2F%C3%BC%3Fq%3D%7B1%7D"))
        .body("{}")
        .send()
        .await
        .unwrap();
    for (resp, expected) in [
        (by_header, "/echo/a%20b/%22x%22?q=%3C1%3E"),
        (by_query, "/echo/a%20b/%C3%BC?q=%7B1%7D"),
    ] {
        assert_eq!(resp.status(), 200);
        let seen: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(seen["uri"], expected);
    }
}

/// An agent whose upstream is down answers 502 itself, saying so; the next request
/// gets the same answer (the stream is not left in a broken state).
#[tokio::test]
async fn upstream_down_gives_502_from_the_agent() {
    let dead = closed_port().await;
    let gw = TestGateway::start_default().await;
    let _agent = TestAgent::start(&gw, "demo", &format!("http://{dead}")).await;
    gw.wait_agents("demo", 1).await;
    let c = client();
    for _ in 0..2 {
        let resp = c.get(gw.url("/about")).send().await.unwrap();
        assert_eq!(resp.status(), 502);
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(resp.headers()["x-gateway-error"], "upstream_unreachable");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("could not reach the upstream") && body.contains(&dead.to_string()),
            "{body}"
        );
    }
    // The agent itself stays connected.
    assert_eq!(gw.agents_of("demo"), 1);
}
