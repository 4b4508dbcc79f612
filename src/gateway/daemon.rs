//! The daemon's life, as `gateway` runs it: signal handlers, telemetry, bind,
//! `READY=1`, serve; SIGHUP reloads; SIGTERM or SIGINT stops accepting and drains
//! within the grace period; a second signal exits at once.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::Gateway;
use super::listener::{self, BindError};
use crate::config::{Config, Source};
use crate::shutdown::Shutdown;
use crate::telemetry::{self, Telemetry, TelemetryError};
use crate::{EXIT_CONFIG, systemd};

/// Once the grace period is over and what still ran is cut off: how long agent
/// sessions may take to get their close frames out.
const CUT_SLACK: Duration = Duration::from_secs(2);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The log file cannot be opened.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The listener cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

impl DaemonError {
    /// The process exit code: 78 for what the configuration must fix, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Telemetry(_) => EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Runs the gateway with `config` until a signal stops it; `source` is read again
/// on SIGHUP.
pub async fn run(config: Config, source: Source) -> Result<(), DaemonError> {
    // Handlers first: a SIGTERM that arrives right after READY=1 must drain, not kill.
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let telemetry = telemetry::init(&config.log)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    match &source.file {
        Some(path) => tracing::info!(config = %path.display(), "configuration loaded"),
        None => tracing::info!(
            "no config file given (--config or GATEWAY_CONFIG): running on built-in defaults with one open tunnel \"demo\""
        ),
    }

    // Each connection is a descriptor; a few dozen more go to the log files,
    // the listener and the runtime.
    if let Some(files) = crate::rt::raise_fd_limit()
        && files < config.limits.max_connections as u64 + 64
    {
        tracing::warn!(
            open_files = files,
            max_connections = config.limits.max_connections,
            "the open-file limit is below limits.max_connections: raise LimitNOFILE (the packaged unit sets 65536) or lower limits.max_connections"
        );
    }
    let listener = listener::bind(config.server.addr()).await?;
    let bound = listener.local_addr().unwrap_or(config.server.addr());
    let grace = config.timeouts.shutdown_grace;
    let tunnels = config.tunnel_ids().join(", ");
    let shutdown = Shutdown::new();
    let config_admin = config.admin.clone();
    let gateway = Gateway::new(config, &shutdown);
    tracing::info!(%bound, %tunnels, version = crate::VERSION, "listening on {bound}");
    systemd::ready(&format!("listening on {bound}"));
    tokio::spawn(systemd::watchdog(shutdown.token()));

    if config_admin.enabled {
        // The admin pages are a window, not the service: a port already in
        // use is logged, and the gateway serves on without them.
        match listener::bind(config_admin.addr()).await {
            Ok(admin) => {
                let addr = admin.local_addr().unwrap_or(config_admin.addr());
                tracing::info!(%addr, "admin listening on {addr} (/metrics, /health, /connections)");
                gateway.serve_admin(admin, &shutdown);
            }
            Err(e) => {
                tracing::error!("admin listener off: {e}; set [admin] port, or enabled = false")
            }
        }
    }
    let serve = gateway.serve(listener, &shutdown);
    tokio::pin!(serve);
    let mut serve_done = false;
    loop {
        tokio::select! {
            _ = &mut serve, if !serve_done => { serve_done = true; break; }
            _ = term.recv() => { tracing::info!("SIGTERM received: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received: shutting down"); break; }
            _ = hup.recv() => reload(&source, &gateway, &telemetry),
        }
    }
    systemd::stopping();
    shutdown.trigger();
    if !serve_done {
        serve.await;
    }
    tracing::info!(grace = %humantime::format_duration(grace), "draining: letting requests in flight finish");
    let drained = async {
        let left = shutdown.drain(grace).await;
        if left == 0 {
            return tracing::info!("shutdown complete");
        }
        // The grace period is a hard bound: what still runs is cut now.
        tracing::warn!(
            tasks = left,
            "grace period over: cutting off what is still running"
        );
        shutdown.cut();
        let left = shutdown.drain(CUT_SLACK).await;
        tracing::info!(tasks_left = left, "shutdown complete");
    };
    tokio::select! {
        _ = drained => {}
        _ = term.recv() => tracing::warn!("second signal: exiting at once"),
        _ = int.recv() => tracing::warn!("second signal: exiting at once"),
    }
    drop(telemetry);
    Ok(())
}

/// SIGHUP: loads the configuration again and applies what can change live; a bad
/// file keeps the running configuration.
fn reload(source: &Source, gateway: &Gateway, telemetry: &Telemetry) {
    // A reload must never take the daemon down: a bug in a parser (ours or a
    // dependency's) that panics on some file is a refused reload.
    let loaded = std::panic::catch_unwind(|| source.load()).unwrap_or_else(|_| {
        Err(crate::config::ConfigError::Invalid {
            origin: source.file.clone(),
            problems: vec!["the configuration could not be read (the loader failed; this is a bug, please report it)".to_owned()],
        })
    });
    match loaded {
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
        Err(e) => {
            gateway.state().metrics.reloaded(false);
            // One line per problem, each at error level, so that a search for
            // the level finds every one.
            for problem in e.problems() {
                tracing::error!(%problem, "the new configuration is invalid");
            }
            tracing::error!("reload failed; keeping the running configuration");
        }
    }
}
