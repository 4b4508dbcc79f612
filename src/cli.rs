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
    /// A tool instead of the daemon.
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
}

/// The gateway's tools.
#[derive(clap::Subcommand, Debug)]
pub enum GatewayCommand {
    /// Read a password on standard input (one line; not echoed on a terminal) and
    /// print its argon2id hash for a tunnel's basic_auth, as "USER:hash" when a
    /// user is given.
    HashPassword {
        /// The user name to print before the hash.
        user: Option<String>,
    },
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
    /// Serve the agent's own metrics (streams, upstream failures, bytes,
    /// reconnects) at http://ADDR/metrics, e.g. 127.0.0.1:9101.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
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

/// Reads one line of standard input as a password, without its line ending.
/// On a terminal it asks for it on standard error and turns echo off meanwhile.
pub fn read_password() -> std::io::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let echo = stdin.is_terminal().then(|| {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
        EchoOff::new()
    });
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo.is_some() {
        eprintln!();
    }
    drop(echo);
    read?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned())
}

/// Terminal echo off on standard input until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    #[allow(unsafe_code)]
    fn new() -> Self {
        // SAFETY: tcgetattr and tcsetattr only read and write the termios
        // struct given, for file descriptor 0, which this process owns.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: as above; `saved` is what tcgetattr filled in.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
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
