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

/// A log level with a leading space and a non-ASCII character before a `[`:
/// tracing-subscriber's filter parser (0.3.23) slices the untrimmed string at
/// offsets it counted in the trimmed one, and panics. Found by the `config`
/// fuzz target through `GATEWAY_LOG__LEVEL`.
const PANICKING_FILTER: &str = " é[x";

/// config: the level is refused with a clear problem, from the file, the
/// environment or the flag alike; nothing panics.
#[test]
fn a_log_level_that_crashed_the_filter_parser_is_refused() {
    use gateway::config::{Config, Overrides};
    let env = std::collections::BTreeMap::from([(
        "GATEWAY_LOG__LEVEL".to_owned(),
        PANICKING_FILTER.to_owned(),
    )]);
    let problems = Config::load_str(Some(""), None, &env, &Overrides::default())
        .expect_err("refused")
        .problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("log.level") && p.contains("ASCII")),
        "{problems:?}"
    );
    let flag = Overrides {
        log_level: Some(PANICKING_FILTER.to_owned()),
        ..Overrides::default()
    };
    assert!(Config::load_str(None, None, &Default::default(), &flag).is_err());
}

/// config: the agent's `--log-level` goes through the same check: exit 78 with
/// one line, not a panic.
#[test]
fn the_agent_refuses_such_a_log_level() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
        .args(["--gateway", "ws://127.0.0.1:9/ws", "--tunnel", "t"])
        .args(["--upstream", "8000", "--log-level", PANICKING_FILTER])
        .output()
        .expect("the agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(gateway::EXIT_CONFIG), "{stderr}");
    assert!(stderr.starts_with("error: log level"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// config: and `RUST_LOG`, which is not ours to refuse, is ignored with a
/// warning: the gateway starts on its configured level.
#[test]
fn such_a_rust_log_is_ignored_with_a_warning() {
    let gw = process::Process::gateway(&["--port", "0"], &[("RUST_LOG", PANICKING_FILTER)]);
    let _ = gw.addr();
    let log = gw.log();
    assert!(log.contains("RUST_LOG is ignored"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// config, after 3.2 million runs without the sanitizer: a level with a field
/// value such as `x[{f=a................b}]` took seconds and hundreds of MiB to
/// load (tracing-subscriber compiled the value into a regular-expression DFA
/// whose size doubles with each dot), and a longer one never finished: a
/// `--check` or a SIGHUP that hangs. Field values now match literally.
#[test]
fn a_field_value_in_the_log_level_loads_at_once() {
    use gateway::config::{Config, Overrides};
    let level = format!("x[{{f=a{}b}}]", ".".repeat(200));
    let started = std::time::Instant::now();
    let flag = Overrides {
        log_level: Some(level.clone()),
        ..Overrides::default()
    };
    let config = Config::load_str(None, None, &Default::default(), &flag).expect("a valid filter");
    assert_eq!(config.log.level, level);
    gateway::telemetry::parse_filter(&level).expect("parses");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}
