//! `gateway-agent`: serves one tunnel of a gateway from next to a private web app.
//! Flags, settings, telemetry, run until a signal, exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::agent::{self, AgentError, Flags};
use gateway::auth::Secret;
use gateway::config::LogConfig;
use gateway::{EXIT_CONFIG, EXIT_USAGE, telemetry};

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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let flags = Flags {
        gateway: cli.gateway,
        tunnel: cli.tunnel,
        token: cli.token.map(Secret::new),
        upstream: cli.upstream,
        config: cli.config,
        grace: cli.grace,
    };
    let configs = match flags.settings() {
        Ok(c) => c,
        Err(e) => return fail(&e),
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
            level: cli.log_level,
            ..LogConfig::default()
        };
        let _telemetry = match telemetry::init(&log) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        match agent::run_until_signalled(configs).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    })
}

/// One `error:` line; 78 for bad settings, 1 otherwise.
fn fail(e: &AgentError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(if matches!(e, AgentError::Config(_)) {
        EXIT_CONFIG as u8
    } else {
        1
    })
}
