//! `gateway`: the daemon. Flags, config, telemetry, bind, serve, drain.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gateway::config::{Config, Overrides};
use gateway::{EXIT_CONFIG, EXIT_USAGE, Gateway, Shutdown, systemd, telemetry};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

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

fn env_map() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("GATEWAY_"))
        .collect()
}

fn load(cli: &Cli) -> Result<Config, gateway::config::ConfigError> {
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
        log_level: cli.log_level.clone(),
    };
    Config::load(cli.config.as_deref(), &env_map(), &overrides)
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
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if cli.check {
        let origin = cli
            .config
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
    runtime.block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> ExitCode {
    // Handlers first: a SIGTERM that arrives right after READY=1 must drain, not kill.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("error: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match telemetry::init(&config.log) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match &cli.config {
        Some(path) => tracing::info!(config = %path.display(), "configuration loaded"),
        None => tracing::info!(
            "no config file given (--config or GATEWAY_CONFIG): running on built-in defaults with one open tunnel \"demo\""
        ),
    }

    let addr = config.server.addr();
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => "address already in use; stop the other process or choose another port with --port or server.port".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, or choose another port with --port".to_string(),
                std::io::ErrorKind::AddrNotAvailable => format!(
                    "{e}; server.host must be an address of this machine (127.0.0.1, 0.0.0.0, ...)"
                ),
                _ => e.to_string(),
            };
            eprintln!("error: cannot listen on {addr}: {hint}");
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let grace = config.timeouts.shutdown_grace;
    let tunnels = config.tunnel_ids().join(", ");

    let shutdown = Shutdown::new();
    let gateway = Gateway::new(config, &shutdown);
    tracing::info!(%bound, %tunnels, version = env!("CARGO_PKG_VERSION"), "listening on {bound}");
    systemd::ready(&format!("listening on {bound}"));
    tokio::spawn(systemd::watchdog(shutdown.subscribe()));

    let serve = gateway.serve(listener, &shutdown);
    tokio::pin!(serve);
    let mut serve_done = false;
    loop {
        tokio::select! {
            _ = &mut serve, if !serve_done => { serve_done = true; break; }
            _ = term.recv() => { tracing::info!("SIGTERM received: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received: shutting down"); break; }
            _ = hup.recv() => reload(&cli, &gateway, &telemetry),
        }
    }
    systemd::stopping();
    shutdown.trigger();
    if !serve_done {
        serve.await;
    }
    tracing::info!(grace = %humantime::format_duration(grace), "draining: letting requests in flight finish");
    let drain = shutdown.drain(grace + std::time::Duration::from_secs(5));
    tokio::select! {
        left = drain => {
            if left == 0 {
                tracing::info!("shutdown complete");
            } else {
                tracing::warn!(tasks = left, "grace period over: tasks still running were cut off");
            }
        }
        _ = term.recv() => tracing::warn!("second signal: exiting at once"),
        _ = int.recv() => tracing::warn!("second signal: exiting at once"),
    }
    drop(telemetry);
    ExitCode::SUCCESS
}

fn reload(cli: &Cli, gateway: &Gateway, telemetry: &telemetry::Telemetry) {
    match load(cli) {
        Ok(config) => {
            telemetry.set_level(&config.log.level);
            let report = gateway.reload(config);
            for what in &report.needs_restart {
                tracing::warn!(setting = %what, "changed in the config file; restart the gateway to apply it");
            }
            tracing::info!(
                agents_disconnected = report.disconnected,
                "configuration reloaded"
            );
            systemd::status("configuration reloaded");
        }
        Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
    }
}
