//! `[limits] max_connections` against the real `gateway` binary: twice as many
//! idle sockets as the cap must not keep a new client out (the gateway closes
//! the oldest idle ones to make room) nor make its memory grow without bound;
//! and a gateway that runs out of file descriptors says so at start, logs its
//! failed accepts at most once a second, and serves again once descriptors are
//! free.
//!
//! Both tests open thousands of sockets and one of them measures a logging
//! rate over time, so they take turns (see [`ONE_AT_A_TIME`]).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{GATEWAY_BIN, Process, TempDir};
use common::wait::within;
use common::*;
use gateway::agent::{AgentConfig, Upstream};
use gateway::transport::SessionEnd;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The two tests do not overlap: one holds up to 20,000 sockets and keeps both
/// cores busy, the other counts log lines per second.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long one idle connection may take to be connected before it is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The cap the issue speaks of, and the open-file limit that allows twice as
/// many idle sockets in this process.
const FULL_LIMIT: usize = 10_000;
const WANTED_FILES: u64 = 65_536;
/// Connects in progress at once. All 20,000 at the same instant would
/// overflow the listener's SYN queue (its backlog is 1,024): the kernel then
/// answers with SYN cookies, and when the accept queue is full it drops the
/// final ACK without a trace, so the client counts as connected a socket the
/// gateway never sees. Thousands of such ghosts left the gateway below its
/// cap in a trial run. Under the backlog, a connect succeeds only once the
/// connection is really queued for the gateway (or it times out).
const DIALS_AT_ONCE: usize = 256;
/// Descriptors kept aside in this process for everything but the idle sockets.
const SPARE_FILES: u64 = 1_000;

// ---- helpers -----------------------------------------------------------------

/// Raises this process's open-file limit (soft and hard) to [`WANTED_FILES`],
/// or, without the right to, its soft limit to its hard one. Returns the soft
/// limit now in force. Child processes inherit it.
fn raise_own_fd_limit() -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the `rlimit` structs
    // passed by reference, which live on this stack frame for the whole call.
    unsafe {
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut now),
            0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        let target = now.rlim_max.max(WANTED_FILES as libc::rlim_t);
        let wanted = libc::rlimit {
            rlim_cur: target,
            rlim_max: target,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return target;
        }
        let soft_to_hard = libc::rlimit {
            rlim_cur: now.rlim_max,
            rlim_max: now.rlim_max,
        };
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft_to_hard),
            0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
        now.rlim_max
    }
}

/// An agent of this process serving `upstream` through the gateway at `addr`;
/// cut off on drop.
struct Agent {
    task: JoinHandle<SessionEnd>,
    _stop: gateway::Shutdown,
}

impl Agent {
    async fn start(addr: SocketAddr, upstream: &str) -> Agent {
        let cfg = AgentConfig {
            gateway: format!("ws://{addr}/ws"),
            tunnel: "demo".into(),
            token: None,
            upstream: upstream.into(),
            grace: Duration::from_secs(5),
            wait_upstream: false,
        };
        let connected = within(
            Duration::from_secs(15),
            "the agent connects",
            gateway::agent::connect(&cfg),
        )
        .await
        .expect("agent connects");
        let stop = gateway::Shutdown::new();
        let upstream = Upstream::parse(upstream).expect("upstream URL");
        let task = tokio::spawn(connected.serve(upstream, stop.token(), cfg.grace));
        Agent { task, _stop: stop }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Idle connections: the ones that connected, and how the others fared.
struct Flood {
    held: Vec<TcpStream>,
    timed_out: usize,
    failed: Vec<ErrorKind>,
    took: Duration,
}

/// Opens `n` connections to `addr`, [`DIALS_AT_ONCE`] at a time, each given
/// [`CONNECT_TIMEOUT`]; they send nothing. Those neither accepted nor queued
/// by the kernel time out, and are dropped.
async fn open_idle(addr: SocketAddr, n: usize) -> Flood {
    let start = Instant::now();
    let window = Arc::new(tokio::sync::Semaphore::new(DIALS_AT_ONCE));
    let dials: Vec<JoinHandle<Result<std::io::Result<TcpStream>, _>>> = (0..n)
        .map(|_| {
            let window = window.clone();
            tokio::spawn(async move {
                let _turn = window.acquire_owned().await.expect("never closed");
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
            })
        })
        .collect();
    let mut flood = Flood {
        held: Vec::with_capacity(n),
        timed_out: 0,
        failed: Vec::new(),
        took: Duration::ZERO,
    };
    for dial in dials {
        match dial.await.expect("dial task") {
            Ok(Ok(tcp)) => flood.held.push(tcp),
            Ok(Err(e)) => flood.failed.push(e.kind()),
            Err(_) => flood.timed_out += 1,
        }
    }
    flood.took = start.elapsed();
    flood
}

/// How many of `held` the other end has closed: a read returns end of file or
/// an error other than "nothing yet". Nothing is ever sent on them, so a read
/// that returns data counts too (the gateway answered something and closed).
fn closed_by_peer(held: Vec<TcpStream>) -> (usize, Vec<std::net::TcpStream>) {
    let mut closed = 0;
    let mut kept = Vec::with_capacity(held.len());
    for tcp in held {
        // Still non-blocking: the read is a plain syscall, never a wait.
        let mut tcp = tcp.into_std().expect("std socket");
        let mut buf = [0u8; 64];
        match tcp.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(_) | Err(_) => closed += 1,
        }
        kept.push(tcp);
    }
    (closed, kept)
}

/// How many descriptors process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count()
}

/// The status of GET `url`, or None when no answer came within a second.
async fn status_of(url: &str) -> Option<u16> {
    client()
        .get(url)
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

// ---- 20,000 idle connections against a cap of 10,000 ---------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_idle_connections_do_not_lock_out_a_new_client() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let files = raise_own_fd_limit();
    let limit = FULL_LIMIT.min((files.saturating_sub(SPARE_FILES) / 2) as usize);
    let idle = 2 * limit;
    assert!(
        limit >= 16,
        "an open-file limit of {files} is too low for this test"
    );
    eprintln!("open-file limit {files}: max_connections = {limit}, {idle} idle connections");

    let up = TestUpstream::start().await;
    let dir = TempDir::new();
    // No idle connection may be closed by its header timeout during the test,
    // only to make room. Opening them took up to 26 s on a busy machine (and
    // at most 2 s per window of DIALS_AT_ONCE, 150 s, by construction): the
    // timeout is far above both.
    let cfg = dir.write(
        "gateway.toml",
        &format!(
            "[limits]\nmax_connections = {limit}\nmax_connections_per_ip = 0\n\
             header_read_timeout = \"300s\"\n[[tunnels]]\nid = \"demo\"\n"
        ),
    );
    let mut gw = Process::gateway(&["--port", "0", "--config", cfg.to_str().unwrap()], &[]);
    let addr = gw.addr_async().await;
    let _agent = Agent::start(addr, &up.url()).await;
    let about = format!("http://{addr}/about");
    let resp = within(
        Duration::from_secs(10),
        "a first GET",
        client().get(&about).send(),
    )
    .await
    .expect("first GET");
    assert_eq!(resp.status(), 200);
    let rss_idle_kib = gw.status_kib("VmRSS");

    let flood = open_idle(addr, idle).await;
    eprintln!(
        "{} of {idle} connected in {:?}, {} timed out, failed: {:?}",
        flood.held.len(),
        flood.took,
        flood.timed_out,
        flood.failed
    );
    // Otherwise the cap was never reached and the test shows nothing.
    assert!(
        flood.held.len() > limit,
        "only {} of {idle} idle connections connected; the cap is {limit}",
        flood.held.len()
    );
    // The gateway really is at its cap: a socket per connection (the agent's
    // included), and a few more descriptors of its own.
    let fds = eventually!(
        within Duration::from_secs(10) => {
            let fds = open_descriptors(gw.pid());
            (fds >= limit).then_some(fds)
        },
        "the gateway to hold {limit} connections (it has {} descriptors)",
        open_descriptors(gw.pid())
    );
    eprintln!("the gateway holds {fds} descriptors");
    let rss_flooded_kib = gw.status_kib("VmRSS");

    // With every idle socket still open, a new client gets through the tunnel.
    let start = Instant::now();
    let resp = within(
        Duration::from_secs(20),
        "a GET while the gateway is full of idle connections",
        client().get(&about).send(),
    )
    .await
    .expect("GET while full");
    let status = resp.status();
    let body = resp.text().await.expect("body");
    let to_200 = start.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "about page from upstream");

    let rss_kib = gw.status_kib("VmRSS");
    let peak_kib = gw.status_kib("VmHWM");
    let (closed, kept) = closed_by_peer(flood.held);
    eprintln!(
        "200 after {to_200:?}; {closed} of {} idle connections closed by the gateway; \
         RSS {rss_idle_kib} KiB before, {rss_flooded_kib} KiB flooded, {rss_kib} KiB after the GET, \
         peak {peak_kib} KiB",
        kept.len()
    );
    // Room is made by closing idle connections, not by growing without end.
    assert!(closed >= 1, "no idle connection was closed by the gateway");
    // Measured: a peak of 160 to 165 MiB with 9,500 connections held and
    // 9,400 more closed to make room (some 17 KiB a connection, the gateway
    // crate unoptimised). The bound is about 2.5 times that: memory that grew
    // with every connection ever accepted, or a second copy of each one's
    // buffers, would cross it; a slower machine or another allocator would not.
    const RSS_BOUND_KIB: u64 = 400 * 1024;
    assert!(
        peak_kib < RSS_BOUND_KIB && rss_kib < RSS_BOUND_KIB,
        "RSS {rss_kib} KiB, peak {peak_kib} KiB, bound {RSS_BOUND_KIB} KiB"
    );
    // The child inherited this process's open-file limit, above the cap: it
    // neither warns about it nor runs out of descriptors.
    let log = gw.log();
    assert!(
        !log.contains("open-file limit is below") && !log.contains("accept failed"),
        "{log}"
    );

    drop(kept);
    let health = format!("http://{addr}/health");
    eventually!(
        within Duration::from_secs(20) => status_of(&health).await == Some(200),
        "/health to answer 200 once the idle connections are gone; log:\n{}",
        gw.log()
    );
    assert!(
        gw.child.try_wait().expect("try_wait").is_none(),
        "the gateway exited; log:\n{}",
        gw.log()
    );
}

// ---- out of descriptors ----------------------------------------------------------

/// The gateway binary started with an open-file limit of `files` (soft and
/// hard) set for it alone; its stderr collected line by line; killed on drop.
struct LowFdGateway {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LowFdGateway {
    fn spawn(config: &Path, files: u64) -> LowFdGateway {
        let mut cmd = Command::new(GATEWAY_BIN);
        cmd.args(["--port", "0", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("GATEWAY_CONFIG")
            .env_remove("GATEWAY_AGENT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let limit = libc::rlimit {
            rlim_cur: files as libc::rlim_t,
            rlim_max: files as libc::rlim_t,
        };
        // SAFETY: the closure runs in the forked child before exec. It calls
        // only setrlimit (async-signal-safe) on a copy of a plain struct, and
        // allocates nothing: last_os_error just reads errno.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn gateway");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        LowFdGateway { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    fn find(&self, needle: &str) -> Option<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().find(|l| l.contains(needle)).cloned()
    }

    async fn wait_line(&self, needle: &str) -> String {
        eventually!(
            within Duration::from_secs(15) => self.find(needle),
            "a log line containing {needle:?}; got:\n{}",
            self.log()
        )
    }

    /// The address of its "listening on ADDR" line.
    async fn addr(&self) -> SocketAddr {
        let line = self.wait_line("listening on ").await;
        let rest = line.split("listening on ").nth(1).expect("address");
        rest.split(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for LowFdGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_logged_once_a_second_and_survived() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const FILES: u64 = 64;
    const IDLE: usize = 150;
    let dir = TempDir::new();
    let cfg = dir.write(
        "gateway.toml",
        "[limits]\nmax_connections = 1000\nmax_connections_per_ip = 0\n\
         [[tunnels]]\nid = \"demo\"\n",
    );
    let mut gw = LowFdGateway::spawn(&cfg, FILES);
    let addr = gw.addr().await;
    gw.wait_line("open-file limit is below limits.max_connections")
        .await;
    // Liveness: this gateway has no agent, so it is not "ready" for a balancer.
    let health = format!("http://{addr}/health/live");
    assert_eq!(status_of(&health).await, Some(200), "{}", gw.log());
    assert_eq!(gw.count("accept failed"), 0, "{}", gw.log());

    let start = Instant::now();
    let flood = open_idle(addr, IDLE).await;
    eprintln!(
        "{} of {IDLE} connected in {:?}, {} timed out, failed: {:?}",
        flood.held.len(),
        flood.took,
        flood.timed_out,
        flood.failed
    );
    assert!(
        flood.held.len() as u64 > FILES,
        "only {} idle connections connected: the gateway's descriptors were not exhausted",
        flood.held.len()
    );
    // A deliberate wait: what is measured is how often the failing accepts
    // are logged over a few seconds, so the connections must stay open that
    // long.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed = gw.count("accept failed");
    let elapsed = start.elapsed();
    eprintln!("{failed} \"accept failed\" lines in {elapsed:?}");
    assert!(failed >= 1, "no failed accept logged; log:\n{}", gw.log());
    let line = gw.find("accept failed").expect("counted above");
    eprintln!("{line}");
    assert!(
        line.contains("WARN") && line.contains("Too many open files"),
        "{line}"
    );
    assert!(
        failed as f64 <= elapsed.as_secs_f64() + 2.0,
        "{failed} \"accept failed\" lines in {elapsed:?}; log:\n{}",
        gw.log()
    );
    assert!(gw.running(), "the gateway exited; log:\n{}", gw.log());

    drop(flood);
    let start = Instant::now();
    eventually!(
        within Duration::from_secs(10) => status_of(&health).await == Some(200),
        "/health to answer 200 once the idle connections are gone; log:\n{}",
        gw.log()
    );
    eprintln!("/health answered 200 {:?} after the drop", start.elapsed());
    assert!(gw.running(), "the gateway exited; log:\n{}", gw.log());
}
