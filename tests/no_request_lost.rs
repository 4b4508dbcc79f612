//! Requests that wait for an agent instead of failing, and requests sent again
//! when their agent fails before answering (when that is safe): what a user of
//! a tunnel sees while an agent restarts, reconnects or dies.
//!
//! Everything runs on 127.0.0.1 port 0; timing assertions are generous bounds.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use common::wait::within;
use common::*;

fn waiting(gw: &TestGateway, tunnel: &str) -> usize {
    gw.gateway.state().registry.waiting(tunnel)
}

/// A request for a tunnel whose agent is not there yet waits for it, and is
/// answered once it connects: no 503.
#[tokio::test]
async fn a_request_waits_for_its_agent() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let url = gw.url("/about");
    let request = tokio::spawn(async move { client().get(url).send().await });
    eventually!(
        waiting(&gw, "demo") == 1,
        "the request to wait for an agent"
    );

    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    let resp = within(Duration::from_secs(5), "the answer", request)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "about page from upstream");
    assert_eq!(waiting(&gw, "demo"), 0);
}

/// The wait is bounded by `agent_wait` (then the usual 503), and `"0s"` keeps
/// the immediate 503; a tunnel's own `agent_wait` wins over `[timeouts]`.
#[tokio::test]
async fn the_wait_ends_in_503_after_agent_wait() {
    let gw = TestGateway::start(config_from(
        "[timeouts]\nagent_wait = \"300ms\"\n[[tunnels]]\nid = \"slow\"\n[[tunnels]]\nid = \"now\"\nagent_wait = \"0s\"\n",
    ))
    .await;
    let c = client();
    for (tunnel, at_least, below) in [
        ("slow", Duration::from_millis(250), Duration::from_secs(3)),
        ("now", Duration::ZERO, Duration::from_millis(250)),
    ] {
        let started = Instant::now();
        let resp = c
            .get(gw.url("/about"))
            .header("x-tunnel-id", tunnel)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status(), 503, "{tunnel}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "no_agent", "{tunnel}");
        assert!(
            took >= at_least && took < below,
            "{tunnel}: 503 after {took:?}, expected between {at_least:?} and {below:?}"
        );
    }
}

/// The wait counts against the request's own timeout: a request that has
/// waited out `timeouts.direct` is answered then, not after the whole wait, and
/// told what was missing (no agent), not that the upstream was slow.
#[tokio::test]
async fn the_wait_counts_against_the_request_timeout() {
    let gw = TestGateway::start(config_from(
        "[timeouts]\ndirect = \"300ms\"\nagent_wait = \"10s\"\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let started = Instant::now();
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-gateway-error"], "no_agent");
    assert!(started.elapsed() < Duration::from_secs(3));
    eventually!(
        waiting(&gw, "demo") == 0,
        "the timed-out request to stop waiting"
    );
}

/// At most `max_waiting` requests wait per tunnel; the next one gets 503 at
/// once, and the one waiting is still answered when an agent comes.
#[tokio::test]
async fn max_waiting_bounds_the_queue() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(config_from("[[tunnels]]\nid = \"demo\"\nmax_waiting = 1\n")).await;
    let url = gw.url("/about");
    let first = tokio::spawn(async move { client().get(url).send().await });
    eventually!(waiting(&gw, "demo") == 1, "the first request to wait");

    let started = Instant::now();
    let second = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(waiting(&gw, "demo"), 1, "the first still waits");

    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    let first = within(Duration::from_secs(5), "the first answer", first)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(first.status(), 200);
}

/// A client that leaves stops waiting: its place is free at once, not after
/// `agent_wait`.
#[tokio::test]
async fn a_client_that_leaves_stops_waiting() {
    let gw = TestGateway::start(config_from(
        "[timeouts]\nagent_wait = \"60s\"\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /about HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually!(waiting(&gw, "demo") == 1, "the request to wait");
    drop(tcp);
    eventually!(
        within Duration::from_secs(5) => waiting(&gw, "demo") == 0,
        "the request to stop waiting once its client left (waiting: {})",
        waiting(&gw, "demo")
    );
}

/// An upstream that reads each request and closes the connection without an
/// answer, as an agent dying mid-request looks to the gateway: nothing of the
/// response came back. Counts the requests it swallowed.
async fn swallowing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if read_request_head(&mut tcp).await.is_none() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                // Dropped: the connection closes with no answer.
            });
        }
    });
    (url, seen)
}

/// A GET whose agent fails before answering is sent again to another agent and
/// answered; a POST with a body, which the upstream may have acted on, is not
/// sent again: 502.
#[tokio::test]
async fn only_safe_requests_are_sent_again() {
    let (bad_url, swallowed) = swallowing_upstream().await;
    let good = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    // First in the registry, so chosen first while both are idle.
    let _bad = TestAgent::start(&gw, "demo", &bad_url).await;
    let _good = TestAgent::start(&gw, "demo", &good.url()).await;
    gw.wait_agents("demo", 2).await;

    for path in ["/about", "/echo?x=1"] {
        let before = swallowed.load(Ordering::SeqCst);
        let resp = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path} answered by the other agent");
        assert_eq!(
            swallowed.load(Ordering::SeqCst),
            before + 1,
            "GET {path} went to the failing agent first, once"
        );
    }

    let before = swallowed.load(Ordering::SeqCst);
    let resp = client()
        .post(gw.url("/echo"))
        .body("charge the card")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "a POST is never sent twice");
    assert_eq!(resp.headers()["x-gateway-error"], "agent_lost");
    assert_eq!(swallowed.load(Ordering::SeqCst), before + 1);
}

/// With one agent that fails before answering and no other, the GET is sent
/// again to the same agent (the failure may have been its upstream's, not its
/// own), and fails once more: 502, after two tries and no more.
#[tokio::test]
async fn a_request_is_sent_again_once_only() {
    let (bad_url, swallowed) = swallowing_upstream().await;
    let gw = TestGateway::start_default().await;
    let _bad = TestAgent::start(&gw, "demo", &bad_url).await;
    let resp = client().get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(swallowed.load(Ordering::SeqCst), 2);
}

/// A GET in flight on an agent that dies is sent again to the tunnel's other
/// agent and answered, instead of the 502 it used to get.
#[tokio::test]
async fn a_get_in_flight_on_a_killed_agent_is_answered_by_another() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let first = TestAgent::start(&gw, "demo", &up.url()).await;
    let _second = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 2).await;

    let url = gw.url("/slow?ms=500");
    let request = tokio::spawn(async move { client().get(url).send().await });
    let first_id = first.connection_id.clone();
    eventually!(
        gw.gateway
            .state()
            .registry
            .get(&first_id)
            .is_some_and(|a| a.in_flight() == 1),
        "the GET to be in flight on the first agent"
    );
    first.kill();
    let resp = within(Duration::from_secs(10), "the answer", request)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow done ");
}

/// `--wait-upstream`: an agent that starts before its app does not serve the
/// tunnel until the app accepts connections, so requests meanwhile wait for it
/// instead of getting the agent's 502.
#[tokio::test]
async fn an_agent_waits_for_its_upstream() {
    let gw = TestGateway::start_default().await;
    // An address where the app will listen, with nothing there yet.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = agent_config(&gw, "demo", None, &format!("http://{addr}"));
    cfg.wait_upstream = true;
    let stop = gateway::Shutdown::new();
    let agent = tokio::spawn(gateway::agent::run(cfg, stop.token()));

    let url = gw.url("/about");
    let request = tokio::spawn(async move { client().get(url).send().await });
    eventually!(waiting(&gw, "demo") == 1, "the request to wait");
    assert_eq!(
        gw.agents_of("demo"),
        0,
        "the agent serves nothing before its app is up"
    );

    let _app = TestUpstream::start_on(TcpListener::bind(addr).await.unwrap()).await;
    let resp = within(Duration::from_secs(10), "the answer", request)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "about page from upstream");
    stop.trigger();
    within(Duration::from_secs(10), "the agent to stop", agent)
        .await
        .expect("task")
        .expect("a clean stop");
}

/// An agent leaving with only a WebSocket open (a dev server's live reload):
/// the gateway closes the WebSocket once nothing else is in flight on the
/// agent, so the agent leaves at once instead of after its whole grace period,
/// with no stream left behind; the WebSocket's client sees the close and may
/// reconnect.
#[tokio::test]
async fn an_open_websocket_does_not_hold_a_leaving_agent() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let ws_up = WsEchoUpstream::start().await;
    let gw = TestGateway::start_default().await;
    let mut cfg = agent_config(&gw, "demo", None, &format!("http://{}", ws_up.addr));
    cfg.grace = Duration::from_secs(30);
    let agent = TestAgent::start_with(cfg).await.expect("agent");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/hmr", gw.addr))
        .await
        .expect("handshake");
    ws.send(Message::text("ping")).await.unwrap();
    let echoed = within(Duration::from_secs(5), "the echo", ws.next()).await;
    assert!(matches!(echoed, Some(Ok(Message::Text(_)))), "{echoed:?}");

    let started = Instant::now();
    let end = agent.stop().await;
    assert_eq!(
        end,
        gateway::transport::SessionEnd::Drained {
            unfinished_streams: 0
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the agent took {:?} to leave, with a 30 s grace",
        started.elapsed()
    );
    // The WebSocket's client learns that its connection is gone.
    let next = within(
        Duration::from_secs(5),
        "the end of the WebSocket",
        ws.next(),
    )
    .await;
    assert!(
        !matches!(next, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{next:?}"
    );
}

/// An agent that stops answering (its process frozen: no close, no reset) is
/// not given new requests once a heartbeat interval has passed without a word
/// from it: a keep-alive connection bound to it routes its next request anew,
/// long before the agent is dropped (after three intervals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_leave_an_agent_that_went_silent() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(config_from(
        "[timeouts]\nheartbeat = \"400ms\"\n[[tunnels]]\nid = \"demo\"\n",
    ))
    .await;
    let (ws, upstream) = (gw.ws_url(), up.url());
    let args = [
        "--gateway",
        &ws,
        "--tunnel",
        "demo",
        "--upstream",
        &upstream,
    ];
    let frozen = process::Process::agent(&args);
    gw.wait_agents("demo", 1).await;
    let frozen_id = gw.gateway.state().registry.list()[0].connection_id.clone();

    // One keep-alive connection, its stream bound to the first agent.
    let c = client();
    let resp = c.get(gw.url("/about")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();

    let _other = process::Process::agent(&args);
    gw.wait_agents("demo", 2).await;
    frozen.signal("STOP");
    let registry = &gw.gateway.state().registry;
    eventually!(
        registry.get(&frozen_id).is_some_and(|a| a.info().silent),
        "the frozen agent to be seen as silent"
    );

    let resp = within(
        Duration::from_secs(5),
        "an answer",
        c.get(gw.url("/about")).send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        registry.get(&frozen_id).is_some(),
        "answered by the other agent before the silent one was dropped, not after"
    );
    frozen.signal("CONT");
}
