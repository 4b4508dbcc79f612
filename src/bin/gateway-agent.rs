//! `gateway-agent`: serves one tunnel of a gateway from next to a private web app.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::agent::{self, AgentConfig, AgentError, AgentFile};
use gateway::config::{LogConfig, Secret};
use gateway::{EXIT_CONFIG, EXIT_USAGE, Shutdown, telemetry};
use tokio::signal::unix::{SignalKind, signal};

/// Connects to a gateway over WebSocket and forwards the requests it receives to a
/// local HTTP server; reconnects by itself.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Gateway WebSocket URL, e.g. ws://127.0.0.1:3000/ws or wss://gw.example.com/ws.
    /// Repeat it for several gateway nodes: the agent keeps one connection to each.
    #[arg(long, short, value_name = "URL")]
    gateway: Vec<String>,
    /// Tunnel ID to serve (as configured on the gateway).
    #[arg(long, short, value_name = "ID")]
    tunnel: Option<String>,
    /// The tunnel's token; prefer the GATEWAY_AGENT_TOKEN variable, which `ps` does not show.
    #[arg(long, env = "GATEWAY_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Local server to forward to: http://127.0.0.1:8000, 127.0.0.1:8000 or 8000.
    #[arg(long, short, value_name = "URL")]
    upstream: Option<String>,
    /// TOML file with the same keys (gateway, tunnel, token, upstream, grace); flags win.
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// On SIGTERM, how long open requests may take to finish (e.g. "30s").
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    grace: Option<Duration>,
    /// Log level or filter; RUST_LOG wins when set.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    log_level: String,
}

/// One config per gateway URL.
fn settings(cli: &Cli) -> Result<Vec<AgentConfig>, AgentError> {
    let file = match &cli.config {
        Some(p) => AgentFile::load(p)?,
        None => AgentFile::default(),
    };
    let missing = |what: &str| {
        AgentError::Config(format!(
            "missing --{what} (or `{what} = ...` in the --config file)"
        ))
    };
    let gateways = if cli.gateway.is_empty() {
        file.gateway.map(|g| g.into_vec()).unwrap_or_default()
    } else {
        cli.gateway.clone()
    };
    if gateways.is_empty() {
        return Err(missing("gateway"));
    }
    let base = AgentConfig {
        gateway: String::new(),
        tunnel: cli
            .tunnel
            .clone()
            .or(file.tunnel)
            .ok_or_else(|| missing("tunnel"))?,
        token: cli.token.clone().map(Secret::new).or(file.token),
        upstream: cli
            .upstream
            .clone()
            .or(file.upstream)
            .ok_or_else(|| missing("upstream"))?,
        grace: cli.grace.or(file.grace).unwrap_or(agent::DEFAULT_GRACE),
    };
    agent::Upstream::parse(&base.upstream)?;
    Ok(gateways
        .into_iter()
        .map(|gateway| AgentConfig {
            gateway,
            ..base.clone()
        })
        .collect())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let configs = match settings(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let runtime = match gateway::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let log = LogConfig {
            level: cli.log_level.clone(),
            ..LogConfig::default()
        };
        let _telemetry = match telemetry::init(&log) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let shutdown = Shutdown::new();
        let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            eprintln!("error: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        // One reconnecting session per gateway; the first fatal error ends them all.
        let mut sessions = tokio::task::JoinSet::new();
        for cfg in configs {
            sessions.spawn(agent::run(cfg, shutdown.subscribe()));
        }
        let run = async move {
            while let Some(done) = sessions.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(AgentError::Transient(format!("agent task failed: {e}"))),
                }
            }
            Ok(())
        };
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                tracing::info!("signal received: draining open requests, then leaving");
                shutdown.trigger();
                tokio::select! {
                    r = &mut run => r,
                    _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                        tracing::warn!("second signal: exiting at once");
                        Ok(())
                    }
                }
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(if matches!(e, AgentError::Config(_)) { EXIT_CONFIG as u8 } else { 1 })
            }
        }
    })
}
