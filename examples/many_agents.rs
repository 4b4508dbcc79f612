//! Load tool for the benchmark: opens many agent connections to one gateway from a
//! single process, using the library's own agent (`agent::connect` + `serve`).
//!
//! ```text
//! cargo run --release --example many_agents -- \
//!     --gateway ws://127.0.0.1:3000/ws --tunnel bench --upstream http://127.0.0.1:8080 \
//!     --count 10000 [--parallel 64] [--token SECRET]
//! ```
//!
//! It dials `--count` agents, at most `--parallel` handshakes at a time, each retried
//! a few times on a transient failure. When every one has received the gateway's
//! hello it prints `connected N` on stdout; then the sessions stay open, idle, until
//! stdin closes or SIGTERM/SIGINT arrives. It exits 1 (after saying why on stderr) if
//! some agents could not connect.
//!
//! Each connection holds a file descriptor here and one in the gateway: raise
//! `ulimit -n` on both sides first. One source address gives ~28,000 ephemeral ports
//! towards one gateway port, plenty for 10,000.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gateway::agent::{self, AgentConfig, AgentError, Upstream};
use gateway::config::Secret;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Attempts per agent before giving up on it.
const ATTEMPTS: u32 = 5;
/// How long open sessions may take to close at the end.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

struct Args {
    gateway: String,
    tunnel: String,
    upstream: String,
    token: Option<String>,
    count: usize,
    parallel: usize,
}

fn usage() -> String {
    "usage: many_agents --gateway URL --tunnel ID --upstream URL --count N \
     [--parallel P] [--token SECRET]"
        .to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut gateway = None;
    let mut tunnel = None;
    let mut upstream = None;
    let mut token = None;
    let mut count = None;
    let mut parallel = 64usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--gateway" => gateway = Some(value()?),
            "--tunnel" => tunnel = Some(value()?),
            "--upstream" => upstream = Some(value()?),
            "--token" => token = Some(value()?),
            "--count" => {
                let v = value()?;
                count = Some(
                    v.parse()
                        .map_err(|_| format!("--count {v:?}: not a number"))?,
                );
            }
            "--parallel" => {
                let v = value()?;
                parallel = v
                    .parse()
                    .map_err(|_| format!("--parallel {v:?}: not a number"))?;
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    let missing = |what: &str| format!("missing --{what}\n{}", usage());
    Ok(Args {
        gateway: gateway.ok_or_else(|| missing("gateway"))?,
        tunnel: tunnel.ok_or_else(|| missing("tunnel"))?,
        upstream: upstream.ok_or_else(|| missing("upstream"))?,
        token,
        count: count.ok_or_else(|| missing("count"))?,
        parallel: parallel.max(1),
    })
}

/// Dials one agent, retrying transient failures with a short, growing pause.
async fn dial(cfg: &AgentConfig) -> Result<agent::Connected, AgentError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match agent::connect(cfg).await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_fatal() || attempt >= ATTEMPTS => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50 << attempt)).await,
        }
    }
}

/// Resolves when stdin reaches end of file (or cannot be read).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let cfg = Arc::new(AgentConfig {
        gateway: args.gateway.clone(),
        tunnel: args.tunnel.clone(),
        token: args.token.clone().map(Secret::new),
        upstream: args.upstream.clone(),
        grace: CLOSE_GRACE,
        wait_upstream: false,
    });
    let upstream = match Upstream::parse(&cfg.upstream) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return ExitCode::FAILURE;
    };

    let started = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let ended_early = Arc::new(AtomicUsize::new(0));
    let mut sessions = tokio::task::JoinSet::new();
    let mut failures = 0usize;
    let mut first_error: Option<String> = None;

    let mut dials = futures_util::stream::iter(0..args.count)
        .map(|_| {
            let cfg = cfg.clone();
            async move { dial(&cfg).await }
        })
        .buffer_unordered(args.parallel);
    let dialing = async {
        while let Some(result) = dials.next().await {
            match result {
                Ok(conn) => {
                    let n = connected.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(1000) {
                        eprintln!("{n} agents connected ({:.1?})", started.elapsed());
                    }
                    let (upstream, stop, ended) =
                        (upstream.clone(), stop.clone(), ended_early.clone());
                    sessions.spawn(async move {
                        let end = conn.serve(upstream, stop.clone(), CLOSE_GRACE).await;
                        if !stop.is_cancelled() {
                            ended.fetch_add(1, Ordering::Relaxed);
                            eprintln!("a session ended before the stop: {end:?}");
                        }
                    });
                }
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    };
    let interrupted = tokio::select! {
        _ = dialing => false,
        _ = term.recv() => true,
        _ = int.recv() => true,
        _ = stdin_closed() => true,
    };
    drop(dials);

    let mut code = ExitCode::SUCCESS;
    if interrupted {
        eprintln!(
            "stopped while dialing: {} of {} connected",
            connected.load(Ordering::Relaxed),
            args.count
        );
        code = ExitCode::FAILURE;
    } else if failures > 0 {
        eprintln!(
            "error: {failures} of {} agents could not connect; first error: {}",
            args.count,
            first_error.unwrap_or_default()
        );
        code = ExitCode::FAILURE;
    } else {
        println!("connected {}", connected.load(Ordering::Relaxed));
        eprintln!(
            "all {} agents connected in {:.1?}; waiting for stdin to close or SIGTERM",
            args.count,
            started.elapsed()
        );
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stdin_closed() => {}
        }
    }

    // Close every session, bounded in time.
    stop.cancel();
    let closing = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(2), closing)
        .await
        .is_err()
    {
        sessions.abort_all();
    }
    let lost = ended_early.load(Ordering::Relaxed);
    if lost > 0 {
        eprintln!("error: {lost} sessions ended before the stop");
        code = ExitCode::FAILURE;
    }
    code
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}
