//! `gateway`: the daemon. Flags, configuration, `--check`, then the library's
//! daemon (telemetry, bind, serve, reload, drain) and an exit code.

use std::io::Write;
use std::process::ExitCode;

use gateway::cli::{GatewayCli, GatewayCommand, parse_or_exit};
use gateway::gateway::daemon;

fn main() -> ExitCode {
    let cli: GatewayCli = parse_or_exit();
    if let Some(GatewayCommand::HashPassword { user }) = &cli.command {
        return hash_password(user.as_deref());
    }
    let source = cli.source();
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(gateway::EXIT_CONFIG as u8);
        }
    };
    if cli.check {
        // The daemon logs them itself when it starts.
        for warning in config.warnings() {
            eprintln!("warning: {warning}");
        }
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

/// `gateway hash-password [USER]`: one line of standard input, hashed.
fn hash_password(user: Option<&str>) -> ExitCode {
    let password = match gateway::cli::read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot read the password from standard input: {e}");
            return ExitCode::from(gateway::EXIT_USAGE as u8);
        }
    };
    if password.is_empty() {
        eprintln!(
            "error: the password is empty: type one, or pipe it in (printf '%s' \"$PASSWORD\" | gateway hash-password)"
        );
        return ExitCode::from(gateway::EXIT_USAGE as u8);
    }
    if user.is_some_and(|u| u.is_empty() || u.contains(':')) {
        eprintln!("error: the user name must not be empty or hold ':'");
        return ExitCode::from(gateway::EXIT_USAGE as u8);
    }
    match gateway::gateway::hash_password(&password) {
        Ok(hash) => {
            let line = match user {
                Some(u) => format!("{u}:{hash}"),
                None => hash,
            };
            let _ = writeln!(std::io::stdout().lock(), "{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}
