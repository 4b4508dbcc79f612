//! `gateway`: the daemon. Flags, configuration, `--check`, then the library's
//! daemon (telemetry, bind, serve, reload, drain) and an exit code.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gateway::config::{Overrides, Source};
use gateway::gateway::daemon;
use gateway::{EXIT_CONFIG, EXIT_USAGE};

/// A self-hosted HTTP tunnel: agents dial in over WebSocket, public HTTP requests
/// are forwarded to them.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Path of the TOML config file (without it: built-in defaults, one open tunnel "demo").
    #[arg(long, short, env = "GATEWAY_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Port to listen on; overrides any value in the config file (0: any free port).
    #[arg(long, short)]
    port: Option<u16>,
    /// Address to listen on; overrides any value in the config file.
    #[arg(long, value_name = "ADDR")]
    host: Option<IpAddr>,
    /// Log level or filter (error, warn, info, debug, trace); overrides the config file.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Validate the configuration, print it (secrets masked) and exit.
    #[arg(long)]
    check: bool,
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
    let source = Source {
        file: cli.config,
        overrides: Overrides {
            host: cli.host,
            port: cli.port,
            log_level: cli.log_level,
        },
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if cli.check {
        let origin = source
            .file
            .as_ref()
            .map_or("built-in defaults".to_owned(), |p| p.display().to_string());
        // Written by hand, not println!: `gateway --check | head` must not panic.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "# configuration OK ({origin})\n{}",
            config.to_masked_toml()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match gateway::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
