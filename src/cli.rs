//! The command lines of both programs, in the library so that their man pages
//! and shell completions can be generated from the same definitions. Each flag
//! overrides the configuration file and the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::agent::Flags;
use crate::auth::Secret;
use crate::config::{Overrides, Source};

/// A self-hosted HTTP tunnel: agents dial in over WebSocket, public HTTP requests
/// are forwarded to them.
#[derive(Parser, Debug)]
#[command(name = "gateway", version = crate::VERSION, long_about = None)]
pub struct GatewayCli {
    /// Path of the TOML config file (without it: built-in defaults, one open tunnel "demo").
    #[arg(long, short, env = "GATEWAY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Port to listen on; overrides any value in the config file (0: any free port).
    #[arg(long, short)]
    pub port: Option<u16>,
    /// Address to listen on; overrides any value in the config file.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<IpAddr>,
    /// Log level or filter (error, warn, info, debug, trace); overrides the config file.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Validate the configuration, print it (secrets masked) and exit.
    #[arg(long)]
    pub check: bool,
}

impl GatewayCli {
    /// Where the configuration comes from: the file and these flags.
    pub fn source(&self) -> Source {
        Source {
            file: self.config.clone(),
            overrides: Overrides {
                host: self.host,
                port: self.port,
                log_level: self.log_level.clone(),
            },
        }
    }
}

/// Connects to a gateway over WebSocket and forwards the requests it receives to a
/// local HTTP server; reconnects by itself.
#[derive(Parser, Debug)]
#[command(name = "gateway-agent", version = crate::VERSION, long_about = None)]
pub struct AgentCli {
    /// Gateway WebSocket URL, e.g. ws://127.0.0.1:3000/ws or wss://gw.example.com/ws.
    /// Repeat it for several gateway nodes: the agent keeps one connection to each.
    #[arg(long, short, value_name = "URL")]
    pub gateway: Vec<String>,
    /// Tunnel ID to serve (as configured on the gateway).
    #[arg(long, short, value_name = "ID")]
    pub tunnel: Option<String>,
    /// The tunnel's token; prefer the GATEWAY_AGENT_TOKEN variable, which `ps` does not show.
    #[arg(long, env = "GATEWAY_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Local server to forward to: http://127.0.0.1:8000, 127.0.0.1:8000 or 8000.
    #[arg(long, short, value_name = "URL")]
    pub upstream: Option<String>,
    /// TOML file with the same keys (gateway, tunnel, token, upstream, grace); flags win.
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// On SIGTERM, how long open requests may take to finish (e.g. "30s").
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
    /// Log level or filter; RUST_LOG wins when set.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// At start, wait until the upstream accepts connections before serving the
    /// tunnel, so that an app that starts slower than its agent gets no 502s.
    #[arg(long)]
    pub wait_upstream: bool,
}

impl AgentCli {
    /// The settings these flags give, to merge over the `--config` file.
    pub fn flags(&self) -> Flags {
        Flags {
            gateway: self.gateway.clone(),
            tunnel: self.tunnel.clone(),
            token: self.token.clone().map(Secret::new),
            upstream: self.upstream.clone(),
            config: self.config.clone(),
            grace: self.grace,
            wait_upstream: self.wait_upstream,
        }
    }
}

/// Parses the command line, or exits: 0 for `--help` and `--version`, 64 (bad
/// usage) with clap's message otherwise.
pub fn parse_or_exit<T: Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { crate::EXIT_USAGE } else { 0 };
        let _ = e.print();
        std::process::exit(code)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn both_command_lines_are_consistent() {
        GatewayCli::command().debug_assert();
        AgentCli::command().debug_assert();
    }
}
