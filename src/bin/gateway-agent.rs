//! `gateway-agent`: serves one tunnel of a gateway from next to a private web app.
//! Flags, settings, telemetry, run until a signal, exit code.

use std::process::ExitCode;

use gateway::agent::{self, AgentError};
use gateway::cli::{AgentCli, parse_or_exit};
use gateway::config::LogConfig;
use gateway::{EXIT_CONFIG, telemetry};

fn main() -> ExitCode {
    let cli: AgentCli = parse_or_exit();
    let configs = match cli.flags().settings() {
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
        if let Some(addr) = cli.metrics {
            tokio::spawn(agent::metrics::serve(addr));
        }
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
