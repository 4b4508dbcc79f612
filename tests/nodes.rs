//! Several gateway nodes behind HAProxy, proven under failure: three real
//! gateways, two real agents connected to every node, HAProxy (Debian's
//! `haproxy`) health-checking `/health` in front, and a client sending a
//! steady mix of small and 1 MiB GETs through it while nodes and agents are
//! restarted and killed.
//!
//! HAProxy is not part of the Rust toolchain: without it the test says so and
//! passes, unless `GATEWAY_TEST_REQUIRE_HAPROXY` is set, as `.ci/run` (which
//! installs it) does. Everything runs on 127.0.0.1 and is stopped at the end.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{Process, TempDir};
use common::*;

/// A free port on 127.0.0.1 (bound, read, released: nodes restart on theirs).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn haproxy_present() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// HAProxy in the foreground, stopped when dropped.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one request through the balancer did.
#[derive(Debug, Clone)]
struct Sent {
    started: Instant,
    took: Duration,
    /// `None`: the request succeeded (200 and the whole body).
    failure: Option<String>,
}

/// The cluster: nodes (restartable on their ports), agents, the balancer.
struct Cluster {
    dir: TempDir,
    ports: Vec<u16>,
    nodes: Vec<Option<Process>>,
    agents: Vec<Option<Process>>,
    upstream: TestUpstream,
    front: SocketAddr,
    _haproxy: Haproxy,
}

const NODES: usize = 3;
const AGENTS: usize = 2;

impl Cluster {
    async fn start() -> Cluster {
        let dir = TempDir::new();
        let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let upstream = TestUpstream::start().await;
        let mut cluster = Cluster {
            ports: ports.clone(),
            nodes: (0..NODES).map(|_| None).collect(),
            agents: (0..AGENTS).map(|_| None).collect(),
            front: SocketAddr::from(([127, 0, 0, 1], free_port())),
            _haproxy: Haproxy(Command::new("true").spawn().expect("true")),
            upstream,
            dir,
        };
        for i in 0..NODES {
            cluster.start_node(i).await;
        }
        for i in 0..AGENTS {
            cluster.start_agent(i);
        }
        for i in 0..NODES {
            cluster.wait_ready(i).await;
        }
        cluster._haproxy = cluster.start_haproxy();
        // Every node up in the balancer: a request through it succeeds.
        let url = format!("http://{}/about", cluster.front);
        eventually!(
            within Duration::from_secs(15) =>
                client().get(&url).send().await.is_ok_and(|r| r.status() == 200),
            "a first request through HAProxy"
        );
        cluster
    }

    async fn start_node(&mut self, i: usize) {
        let port = self.ports[i];
        let cfg = self.dir.write(
            &format!("node{i}.toml"),
            "[timeouts]\nshutdown_grace = \"5s\"\nheartbeat = \"1s\"\nagent_wait = \"5s\"\n\
             [limits]\nmax_connections_per_ip = 0\n[admin]\nenabled = false\n\
             [[tunnels]]\nid = \"app\"\n",
        );
        let node = Process::gateway(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--port",
                &port.to_string(),
            ],
            &[],
        );
        node.wait_line_async("listening on ").await;
        self.nodes[i] = Some(node);
    }

    fn start_agent(&mut self, i: usize) {
        let mut args: Vec<String> = Vec::new();
        for port in &self.ports {
            args.push("--gateway".into());
            args.push(format!("ws://127.0.0.1:{port}/ws"));
        }
        args.extend([
            "--tunnel".into(),
            "app".into(),
            "--upstream".into(),
            self.upstream.url(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agents[i] = Some(Process::agent(&args));
    }

    /// Until node `i`'s `/health` says ready (its agents are back).
    async fn wait_ready(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.ports[i]);
        eventually!(
            within Duration::from_secs(15) =>
                client().get(&url).send().await.is_ok_and(|r| r.status() == 200),
            "node {i} ready"
        );
    }

    fn start_haproxy(&self) -> Haproxy {
        let servers: String = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server n{i} 127.0.0.1:{p} check\n"))
            .collect();
        let cfg = self.dir.write(
            "haproxy.cfg",
            &format!(
                "global\n    maxconn 4096\n\
                 defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n\
                 \x20   timeout server 30s\n    retries 3\n    option redispatch 1\n\
                 \x20   retry-on conn-failure empty-response response-timeout\n\
                 frontend front\n    bind {}\n    default_backend nodes\n\
                 backend nodes\n    balance roundrobin\n    option httpchk GET /health\n\
                 \x20   http-check expect status 200\n\
                 \x20   default-server inter 200ms fall 1 rise 1\n{servers}",
                self.front
            ),
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Haproxy(child)
    }

    /// SIGTERM to node `i`, its exit, and the same node again on its port.
    async fn restart_node(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("node running");
        node.signal("TERM");
        let code = node.wait_exit_async(Duration::from_secs(15)).await;
        assert_eq!(code, 0, "node {i} exit; log:\n{}", node.log());
        self.start_node(i).await;
        self.wait_ready(i).await;
    }
}

/// Sends GETs through the balancer from `workers` tasks until `stop`, a 1 MiB
/// body every eighth request, about 100 a second in all.
fn load(
    front: SocketAddr,
    workers: usize,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<Mutex<Vec<Sent>>>, tokio::task::JoinSet<()>) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (sent, stop) = (sent.clone(), stop.clone());
        tasks.spawn(async move {
            let c = client();
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let big = (n + w as u64).is_multiple_of(8);
                let path = if big { "/bytes?n=1048576" } else { "/about" };
                let started = Instant::now();
                let result = async {
                    let resp = c
                        .get(format!("http://{front}{path}"))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await
                        .map_err(|e| format!("{path}: {e}"))?;
                    let status = resp.status();
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| format!("{path}: body: {e}"))?;
                    let want = if big {
                        1_048_576
                    } else {
                        "about page from upstream".len()
                    };
                    if status != 200 || body.len() != want {
                        return Err(format!("{path}: {status}, {} bytes", body.len()));
                    }
                    Ok(())
                }
                .await;
                sent.lock().unwrap().push(Sent {
                    started,
                    took: started.elapsed(),
                    failure: result.err(),
                });
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
    }
    (sent, tasks)
}

async fn finish(
    stop: tokio_util::sync::CancellationToken,
    mut tasks: tokio::task::JoinSet<()>,
    sent: &Arc<Mutex<Vec<Sent>>>,
) -> Vec<Sent> {
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    sent.lock().unwrap().clone()
}

/// The agents connected to the node on `port` and not leaving.
async fn agents_on(port: u16) -> usize {
    let url = format!("http://127.0.0.1:{port}/connections");
    let Ok(resp) = client().get(&url).send().await else {
        return 0;
    };
    let list: serde_json::Value = resp.json().await.unwrap_or_default();
    list.as_array().map_or(0, |a| {
        a.iter()
            .filter(|agent| agent["draining"] != serde_json::Value::Bool(true))
            .count()
    })
}

fn failures(sent: &[Sent]) -> Vec<&Sent> {
    sent.iter().filter(|s| s.failure.is_some()).collect()
}

fn haproxy_or_skip() -> bool {
    if haproxy_present() {
        return true;
    }
    assert!(
        std::env::var_os("GATEWAY_TEST_REQUIRE_HAPROXY").is_none(),
        "haproxy is required here (GATEWAY_TEST_REQUIRE_HAPROXY) but not installed"
    );
    eprintln!("skipped: haproxy is not installed (.ci/run installs it)");
    false
}

/// A rolling restart of every node (SIGTERM, start again on the same port),
/// then of every agent, under load: no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_of_nodes_and_agents_lose_no_request() {
    if !haproxy_or_skip() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (sent, tasks) = load(cluster.front, 4, stop.clone());
    // The load runs a second before, between and after the restarts (the
    // point of these waits: every restart happens under traffic, and
    // HAProxy's health checks, every 200 ms, see each node leave and return).
    let under_load = || tokio::time::sleep(Duration::from_secs(1));
    under_load().await;
    for i in 0..NODES {
        cluster.restart_node(i).await;
        under_load().await;
    }
    for i in 0..AGENTS {
        let mut agent = cluster.agents[i].take().expect("agent running");
        agent.signal("TERM");
        let code = agent.wait_exit_async(Duration::from_secs(15)).await;
        assert_eq!(code, 0, "agent {i} exit; log:\n{}", agent.log());
        cluster.start_agent(i);
        for n in 0..NODES {
            cluster.wait_ready(n).await;
        }
        // Its replacement serves on every node before the next one leaves.
        for port in cluster.ports.clone() {
            eventually!(
                within Duration::from_secs(15) => agents_on(port).await == AGENTS,
                "{AGENTS} agents on the node at port {port}"
            );
        }
        under_load().await;
    }
    let sent = finish(stop, tasks, &sent).await;
    let failed = failures(&sent);
    eprintln!(
        "{} requests through HAProxy during 3 node and 2 agent restarts, {} failed",
        sent.len(),
        failed.len()
    );
    assert!(sent.len() > 100, "too little load: {}", sent.len());
    assert!(failed.is_empty(), "failed: {failed:#?}");
}

/// A node killed with SIGKILL: only requests that were in flight on it at that
/// moment may fail; everything sent afterwards succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_costs_only_its_requests_in_flight() {
    if !haproxy_or_skip() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (sent, tasks) = load(cluster.front, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await; // load before the kill
    let node = cluster.nodes[1].take().expect("node running");
    let killed_at = Instant::now();
    node.signal("KILL");
    drop(node);
    tokio::time::sleep(Duration::from_secs(3)).await; // load after the kill
    let sent = finish(stop, tasks, &sent).await;
    let failed = failures(&sent);
    eprintln!(
        "{} requests, {} failed after SIGKILL of one node of three",
        sent.len(),
        failed.len()
    );
    for f in &failed {
        assert!(
            f.started < killed_at,
            "a request sent {:?} after the kill failed: {f:?}",
            f.started - killed_at
        );
    }
    // In flight at the kill: at most one per worker.
    assert!(failed.len() <= 4, "{failed:#?}");
    let after = sent.iter().filter(|s| s.started > killed_at).count();
    assert!(after > 20, "too little load after the kill: {after}");
}

/// An agent whose network goes silent without a close (SIGSTOP): requests
/// that were not on it keep succeeding; those on it end within the heartbeat
/// bound (three 1 s intervals, sent again elsewhere when safe), and new ones
/// go to the other agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_routed_around_within_the_heartbeat_bound() {
    if !haproxy_or_skip() {
        return;
    }
    let cluster = Cluster::start().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (sent, tasks) = load(cluster.front, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await; // load before the cut
    let agent = cluster.agents[0].as_ref().expect("agent running");
    let cut_at = Instant::now();
    agent.signal("STOP");
    // Past three heartbeat intervals, so that every node has evicted it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent = finish(stop, tasks, &sent).await;
    agent.signal("CONT");
    let failed = failures(&sent);
    let slowest = sent.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "{} requests, {} failed, slowest {slowest:?}, with one of two agents stopped",
        sent.len(),
        failed.len()
    );
    // Only what was on it when it went silent, or sent to it before the first
    // missed heartbeat, may fail.
    for f in &failed {
        assert!(
            f.started < cut_at + Duration::from_millis(1500),
            "a request sent {:?} after the cut failed: {f:?}",
            f.started - cut_at
        );
    }
    assert!(
        slowest < Duration::from_secs(6),
        "a request took {slowest:?}: longer than the heartbeat bound"
    );
    // A second after the cut, requests go to the other agent at once.
    let late: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.started > cut_at + Duration::from_secs(2))
        .collect();
    assert!(
        late.len() > 50,
        "too little load after the cut: {}",
        late.len()
    );
    assert!(
        late.iter()
            .all(|s| s.failure.is_none() && s.took < Duration::from_secs(1)),
        "{late:#?}"
    );
}

/// Open descriptors of a process.
fn open_fds(p: &Process) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", p.pid())).map_or(0, |d| d.count())
}

/// The soak: `GATEWAY_SOAK_SECONDS` (none: skipped; `.ci/run` gives 60,
/// `bench/soak` 600 or more) of load while nodes and agents are killed and
/// restarted at random intervals. Every failed request was in flight at a
/// kill, and the node and the agent that are never killed do not grow in
/// memory or descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_kills() {
    let Some(seconds) = std::env::var("GATEWAY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        eprintln!("skipped: set GATEWAY_SOAK_SECONDS (bench/soak does)");
        return;
    };
    if !haproxy_or_skip() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (sent, tasks) = load(cluster.front, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await; // warm up before the baseline
    // Node 0 and agent 0 are never killed: they are watched for growth.
    let (node0, agent0) = (
        cluster.nodes[0].as_ref().expect("node 0"),
        cluster.agents[0].as_ref().expect("agent 0"),
    );
    let before = [
        (node0.status_kib("VmRSS"), open_fds(node0)),
        (agent0.status_kib("VmRSS"), open_fds(agent0)),
    ];
    let mut kills: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        // Between 1 and 4 s of load, then one of: kill a node (1 or 2) and
        // start it again, kill agent 1 and start it again, or restart it
        // with SIGTERM.
        let pause = 1000 + rand_below(3000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        match rand_below(3) {
            0 => {
                let i = 1 + rand_below(2) as usize;
                let node = cluster.nodes[i].take().expect("node running");
                kills.push(Instant::now());
                node.signal("KILL");
                drop(node);
                cluster.start_node(i).await;
            }
            1 => {
                let agent = cluster.agents[1].take().expect("agent running");
                kills.push(Instant::now());
                agent.signal("KILL");
                drop(agent);
                cluster.start_agent(1);
            }
            _ => {
                let mut agent = cluster.agents[1].take().expect("agent running");
                agent.signal("TERM");
                agent.wait_exit_async(Duration::from_secs(15)).await;
                cluster.start_agent(1);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // load after the last event
    let sent = finish(stop, tasks, &sent).await;
    let (node0, agent0) = (
        cluster.nodes[0].as_ref().expect("node 0"),
        cluster.agents[0].as_ref().expect("agent 0"),
    );
    let after = [
        (node0.status_kib("VmRSS"), open_fds(node0)),
        (agent0.status_kib("VmRSS"), open_fds(agent0)),
    ];
    let failed = failures(&sent);
    eprintln!(
        "soak {seconds} s: {round} events ({} kills), {} requests, {} failed; \
         node 0 RSS {} -> {} KiB, fds {} -> {}; agent 0 RSS {} -> {} KiB, fds {} -> {}",
        kills.len(),
        sent.len(),
        failed.len(),
        before[0].0,
        after[0].0,
        before[0].1,
        after[0].1,
        before[1].0,
        after[1].0,
        before[1].1,
        after[1].1
    );
    for f in &failed {
        let in_flight_at_a_kill = kills
            .iter()
            .any(|k| f.started <= *k && f.started + f.took >= *k);
        assert!(
            in_flight_at_a_kill,
            "failed, and not in flight at a kill: {f:?}"
        );
    }
    for (who, (b, a)) in ["node 0", "agent 0"]
        .iter()
        .zip(before.iter().zip(after.iter()))
    {
        assert!(
            a.0 < 2 * b.0 + 16 * 1024,
            "{who} grew: RSS {} -> {} KiB",
            b.0,
            a.0
        );
        assert!(
            a.1 <= b.1 + 16,
            "{who} grew: descriptors {} -> {}",
            b.1,
            a.1
        );
    }
}

/// A random number below `n` (the soak's timing and choices; not security).
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % n
}
