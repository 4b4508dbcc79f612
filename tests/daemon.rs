//! The real `gateway` binary: start on port 0, read the bound address from its log,
//! systemd notifications on a real datagram socket, signals, exit codes, log files.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{GATEWAY_BIN, Process, TempDir};
use common::*;
use gateway::agent::AgentConfig;

/// A datagram socket standing in for systemd's NOTIFY_SOCKET, and its path.
fn notify_socket(dir: &TempDir, timeout: Duration) -> (UnixDatagram, String) {
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(timeout)).unwrap();
    (sock, path.to_str().expect("utf-8 path").to_owned())
}

fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(GATEWAY_BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("GATEWAY_CONFIG")
        .output()
        .expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn agent_for(addr: SocketAddr, tunnel: &str, upstream: &str) -> AgentConfig {
    AgentConfig {
        gateway: format!("ws://{addr}/ws"),
        tunnel: tunnel.into(),
        token: None,
        upstream: upstream.into(),
        grace: Duration::from_secs(5),
        wait_upstream: false,
    }
}

#[tokio::test]
async fn defaults_health_and_sigterm_exit_zero() {
    let mut d = Process::gateway(&["--port", "0"], &[]);
    let addr = d.addr();
    d.wait_line("running on built-in defaults");
    // Just started, its tunnel without an agent: not ready for a load
    // balancer yet, but alive.
    let health = format!("http://{addr}/health");
    let resp = client().get(&health).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "starting");
    assert_eq!(body["agents"], 0);
    assert!(body["version"].is_string() && body["uptime_secs"].is_number());
    let resp = client()
        .get(format!("http://{addr}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Ready once timeouts.agent_wait (5 s) has passed, agent or not: a tunnel
    // whose agent is not coming must not keep the node out for ever.
    let started = std::time::Instant::now();
    eventually!(
        within Duration::from_secs(10) =>
            client().get(&health).send().await.is_ok_and(|r| r.status() == 200),
        "ready after the start-up window"
    );
    assert!(started.elapsed() < Duration::from_secs(7));

    // Without an agent, proxied routes say so.
    let resp = client()
        .get(format!("http://{addr}/about"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("No agents available"));

    d.signal("TERM");
    let (code, took) = d.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0, "log:\n{}", d.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    d.wait_line("shutdown complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_at_sigterm_completes() {
    let up = TestUpstream::start().await;
    let mut d = Process::gateway(&["--port", "0"], &[]);
    let addr = d.addr();
    let agent = gateway::agent::connect(&agent_for(addr, "demo", &up.url()))
        .await
        .unwrap();
    let stop = gateway::Shutdown::new();
    let upstream = gateway::agent::Upstream::parse(&up.url()).unwrap();
    let agent_task = tokio::spawn(agent.serve(upstream, stop.token(), Duration::from_secs(5)));

    let slow = tokio::spawn(async move {
        client()
            .post(format!("http://{addr}/slow?ms=1500"))
            .body("payload")
            .send()
            .await
    });
    // Wait until the request is really in flight at the agent.
    let connections = format!("http://{addr}/connections");
    wait_json(&connections, "a request in flight", |l| {
        l[0]["requests_in_flight"].as_u64() == Some(1)
    })
    .await;
    d.signal("TERM");
    let resp = slow.await.unwrap().expect("slow request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow done payload");
    let (code, _) = tokio::task::spawn_blocking(move || {
        let r = d.wait_exit(Duration::from_secs(15));
        (r, d)
    })
    .await
    .map(|(r, d)| {
        assert!(d.log().contains("SIGTERM received"), "{}", d.log());
        r
    })
    .unwrap();
    assert_eq!(code, 0);
    // The gateway closed the agent's session (close frame 1001) once its request was done.
    let end = tokio::time::timeout(Duration::from_secs(10), agent_task)
        .await
        .expect("agent session ends with the gateway")
        .unwrap();
    assert_eq!(end, gateway::transport::SessionEnd::Closed);
}

/// A gateway process with `shutdown_grace`, an agent, and a GET that its
/// upstream answers only after 30 s, in flight.
struct SlowRequestInFlight {
    gateway: Process,
    request: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    _dir: TempDir,
    _upstream: TestUpstream,
    _agent: (
        tokio::task::JoinHandle<gateway::transport::SessionEnd>,
        gateway::Shutdown,
    ),
}

async fn slow_request_in_flight(grace: &str) -> SlowRequestInFlight {
    let up = TestUpstream::start().await;
    let dir = TempDir::new();
    let cfg = dir.write(
        "g.toml",
        &format!("[timeouts]\nshutdown_grace = \"{grace}\"\n[[tunnels]]\nid = \"demo\"\n"),
    );
    let gateway = Process::gateway(&["--port", "0", "--config", cfg.to_str().unwrap()], &[]);
    let addr = gateway.addr();
    let agent = gateway::agent::connect(&agent_for(addr, "demo", &up.url()))
        .await
        .unwrap();
    let stop = gateway::Shutdown::new();
    let upstream = gateway::agent::Upstream::parse(&up.url()).unwrap();
    let session = tokio::spawn(agent.serve(upstream, stop.token(), Duration::from_secs(30)));
    let request = tokio::spawn(async move {
        client()
            .get(format!("http://{addr}/slow?ms=30000"))
            .send()
            .await
    });
    let connections = format!("http://{addr}/connections");
    wait_json(&connections, "a request in flight", |l| {
        l[0]["requests_in_flight"].as_u64() == Some(1)
    })
    .await;
    SlowRequestInFlight {
        gateway,
        request,
        _dir: dir,
        _upstream: up,
        _agent: (session, stop),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    // Every part bound: the upstream, the agent and the config must live on.
    let SlowRequestInFlight {
        gateway: mut d,
        request: slow,
        _dir,
        _upstream,
        _agent,
    } = slow_request_in_flight("60s").await;
    d.signal("TERM");
    d.wait_line("draining");
    d.signal("TERM");
    let (code, took) = tokio::task::spawn_blocking(move || d.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    slow.abort();
}

/// The grace period is a hard bound, as nginx's worker_shutdown_timeout is: a
/// request still running when it is over is cut off then, and the daemon exits
/// at once (within the couple of seconds agent sessions have for their close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_is_a_hard_bound() {
    // Every part bound: the upstream, the agent and the config must live on.
    let SlowRequestInFlight {
        gateway: mut d,
        request: slow,
        _dir,
        _upstream,
        _agent,
    } = slow_request_in_flight("1s").await;
    d.signal("TERM");
    let (code, took) = tokio::task::spawn_blocking(move || {
        let exit = d.wait_exit(Duration::from_secs(15));
        assert!(
            d.log().contains("grace period over: cutting off"),
            "{}",
            d.log()
        );
        exit
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(
        took < Duration::from_secs(4),
        "exit took {took:?} with a grace of 1 s"
    );
    let cut = slow.await.unwrap();
    assert!(cut.is_err(), "the slow request was cut off: {cut:?}");
}

#[test]
fn ready_and_stopping_reach_notify_socket() {
    let dir = TempDir::new();
    let (sock, sock_path) = notify_socket(&dir, Duration::from_secs(15));
    let mut d = Process::gateway(&["--port", "0"], &[("NOTIFY_SOCKET", sock_path.as_str())]);
    let mut buf = [0u8; 1024];
    let n = sock.recv(&mut buf).expect("a notification within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains("STATUS=listening on 127.0.0.1:"), "{msg}");
    // READY=1 came after the bind: the port accepts connections now.
    let addr = d.addr();
    std::net::TcpStream::connect(addr).expect("port accepts once READY=1 is sent");

    d.signal("TERM");
    let n = sock.recv(&mut buf).expect("STOPPING=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
    let (code, _) = d.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0);
}

#[test]
fn busy_port_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, stderr) = run_to_end(&["--port", &port]);
    assert_ne!(code, 0);
    let expected = format!(
        "error: cannot listen on 127.0.0.1:{port}: address already in use; stop the other process or choose another port with --port or server.port"
    );
    assert!(stderr.lines().any(|l| l == expected), "stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml");
    let (code, stdout, stderr) = run_to_end(&["--check", "--config", example]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("[server]") && stdout.contains("[[tunnels]]"),
        "{stdout}"
    );
}

#[test]
fn check_lists_every_problem_and_exits_78() {
    let dir = TempDir::new();
    let cfg = dir.write(
        "broken.toml",
        "[server]\nprot = 3000\n[timeouts]\ndirect = \"forever\"\n[[tunnels]]\nid = \"Bad Id\"\n[[tunnels]]\nid = \"ok\"\n[[tunnels]]\nid = \"ok\"\n",
    );
    let (code, stdout, stderr) = run_to_end(&["--check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in [
        "invalid configuration in",
        "unknown key \"server.prot\": did you mean \"port\"?",
        "timeouts.direct = \"forever\" is invalid",
        "tunnels[0].id = \"Bad Id\" is invalid",
        "tunnels[2].id = \"ok\" is a duplicate",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn check_masks_secrets_and_bad_usage_is_64() {
    let dir = TempDir::new();
    let cfg = dir.write(
        "g.toml",
        "[[tunnels]]\nid = \"app\"\ntoken = \"very-secret-token\"\n",
    );
    let (code, stdout, _) = run_to_end(&["--check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        !stdout.contains("very-secret-token") && stdout.contains("***"),
        "{stdout}"
    );

    let (code, _, stderr) = run_to_end(&["--no-such-flag"]);
    assert_eq!(code, 64, "{stderr}");
    let (code, _, stderr) = run_to_end(&["--port", "notaport"]);
    assert_eq!(code, 64, "{stderr}");
    let (code, stdout, _) = run_to_end(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn log_file_is_written_and_flushed() {
    let dir = TempDir::new();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = dir.write(
        "g.toml",
        &format!(
            "[log]\ndirectory = {:?}\nrotation = \"never\"\nformat = \"json\"\n[[tunnels]]\nid = \"demo\"\n",
            logs.to_str().unwrap()
        ),
    );
    let mut d = Process::gateway(&["--port", "0", "--config", cfg.to_str().unwrap()], &[]);
    let addr = d.addr();
    let resp = client()
        .get(format!("http://{addr}/anything"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    d.signal("TERM");
    let (code, _) = tokio::task::spawn_blocking(move || d.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(logs.join("gateway.log")).expect("log file exists");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.contains("listening on")), "{text}");
    assert!(
        lines.iter().any(|l| l.contains("trace-me-42")),
        "request id in the log: {text}"
    );
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_tunnels() {
    let up = TestUpstream::start().await;
    let dir = TempDir::new();
    let cfg = dir.write("g.toml", "[[tunnels]]\nid = \"one\"\n");
    let d = Process::gateway(&["--port", "0", "--config", cfg.to_str().unwrap()], &[]);
    let addr = d.addr();
    let refused = gateway::agent::connect(&agent_for(addr, "two", &up.url())).await;
    assert!(refused.is_err(), "tunnel two is not configured yet");

    dir.write(
        "g.toml",
        "[[tunnels]]\nid = \"one\"\n[[tunnels]]\nid = \"two\"\n",
    );
    d.signal("HUP");
    d.wait_line("configuration reloaded");
    let ok = gateway::agent::connect(&agent_for(addr, "two", &up.url())).await;
    assert!(ok.is_ok(), "tunnel two accepted after reload");

    // A broken file is refused and the running configuration kept; each
    // problem is an error line of its own.
    dir.write(
        "g.toml",
        "[timeouts]\ndirect = \"soon\"\n[[tunnels]]\nid = \"BAD\"\n",
    );
    d.signal("HUP");
    d.wait_line("reload failed; keeping the running configuration");
    let log = d.log();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("the new configuration is invalid"))
        .collect();
    assert_eq!(problems.len(), 2, "{log}");
    assert!(
        problems.iter().any(|l| l.contains("timeouts.direct")),
        "{log}"
    );
    assert!(
        problems.iter().any(|l| l.contains("tunnels[0].id")),
        "{log}"
    );
    let resp = client()
        .get(format!("http://{addr}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let dir = TempDir::new();
    let (sock, sock_path) = notify_socket(&dir, Duration::from_secs(10));
    // systemd's WatchdogSec=400ms: pings are due every 200 ms.
    let mut d = Process::gateway(
        &["--port", "0"],
        &[
            ("NOTIFY_SOCKET", sock_path.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut buf = [0u8; 1024];
    let mut pings = Vec::new();
    let started = Instant::now();
    while pings.len() < 4 {
        let n = sock.recv(&mut buf).expect("notifications keep coming");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(Instant::now());
        }
        assert!(started.elapsed() < Duration::from_secs(10), "too few pings");
    }
    // Four pings at ~200 ms intervals: well under the 400 ms deadline each, and not
    // a busy loop either.
    let span = pings[3] - pings[0];
    assert!(
        span >= Duration::from_millis(300),
        "pings too fast: {span:?}"
    );
    assert!(span < Duration::from_secs(3), "pings too slow: {span:?}");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).0, 0);
}

/// The built-in defaults serve one tunnel without a token: fine on loopback,
/// refused (exit 78, saying why and what to do) as soon as the gateway would
/// listen where other machines reach it, since anyone could then connect an
/// agent for that tunnel and receive its traffic.
#[test]
fn an_open_tunnel_is_refused_beyond_loopback() {
    let (code, stdout, stderr) = run_to_end(&["--check", "--host", "0.0.0.0"]);
    assert_eq!(code, 78, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("tunnels[0] (id \"demo\") has no token")
            && stderr.contains("server.host = 0.0.0.0 is reachable from other machines"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run_to_end(&["--check"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Every refusal the gateway answers itself is in the access log, with its
/// status and its error code, whether it happened before routing (CONNECT) or
/// after (an unknown tunnel); a forged request ID does not become a log field.
#[tokio::test]
async fn refusals_are_logged_with_their_reason() {
    let d = Process::gateway(&["--port", "0"], &[]);
    let addr = d.addr();
    d.wait_line("running on built-in defaults");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let line = d.wait_line_async("status=501").await;
    assert!(
        line.contains("not_implemented") && line.contains("CONNECT"),
        "{line}"
    );

    let resp = client()
        .get(format!("http://{addr}/about"))
        .header("x-tunnel-id", "nope")
        .header("x-request-id", "x status=200")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let line = d.wait_line_async("unknown_tunnel").await;
    assert!(line.contains("status=404"), "{line}");
    assert!(!d.log().contains("x status=200"), "{}", d.log());
}

/// The access log names the client that policy judges: behind a trusted
/// proxy, the address it reported, not the proxy's; from anyone else, the
/// peer, whatever it claims.
#[tokio::test]
async fn the_access_log_names_the_client_a_trusted_proxy_reported() {
    let dir = TempDir::new();
    let cfg = dir.write(
        "g.toml",
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n[timeouts]\nagent_wait = \"0s\"\n\
         [[tunnels]]\nid = \"one\"\n",
    );
    let d = Process::gateway(&["--port", "0", "--config", cfg.to_str().unwrap()], &[]);
    let addr = d.addr_async().await;
    let resp = client()
        .get(format!("http://{addr}/x"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let line = d.wait_line_async("gateway::access").await;
    assert!(line.contains("client=203.0.113.7"), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}
