//! Logging: tracing to stderr and, when `log.directory` is set, to a rolling file.
//!
//! The file writer is non-blocking (tracing-appender); the returned [`Telemetry`]
//! holds its guard, and dropping it at exit flushes what is still queued. The level
//! filter sits behind a reload handle so that SIGHUP can change it.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogConfig, LogFormat, Rotation};

/// Keeps the log writers alive; drop it last (it flushes the file).
pub struct Telemetry {
    _file_guard: Option<WorkerGuard>,
    filter: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log file cannot be opened.
    #[error(
        "cannot open log file in {dir}: {reason}; create the directory and make it writable, or remove log.directory to log to stderr only"
    )]
    File {
        /// `log.directory`.
        dir: String,
        /// Why.
        reason: String,
    },
    /// Another logger was installed first.
    #[error("a global logger is already installed")]
    AlreadyInstalled,
    /// The level or filter is not one.
    #[error(
        "log level {level:?} is invalid ({reason}): expected error, warn, info, debug, trace or a filter like \"gateway=debug,info\""
    )]
    Filter {
        /// What was given.
        level: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Parses a level or filter ("info", "gateway=debug,info"). Only ASCII is
/// accepted: tracing-subscriber's parser panics on some other input (found by
/// fuzzing the configuration), and no target, level or field name needs more.
/// Field values (`[{tunnel=demo}]`) match literally, never as regular
/// expressions: tracing-subscriber compiles those into a DFA whose size grows
/// exponentially with some patterns (`a................b` took seconds and
/// hundreds of MiB, also found by fuzzing), and a log filter is no place for a
/// regex anyway.
pub fn parse_filter(spec: &str) -> Result<EnvFilter, String> {
    if !spec.is_ascii() {
        return Err("only ASCII characters are allowed".to_owned());
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(spec)
        .map_err(|e| e.to_string())
}

/// The filter: `RUST_LOG` when it is set and valid, else the configured level.
fn filter_for(level: &str) -> Result<(EnvFilter, bool), TelemetryError> {
    if let Ok(v) = std::env::var("RUST_LOG")
        && !v.is_empty()
    {
        match parse_filter(&v) {
            Ok(f) => return Ok((f, true)),
            Err(reason) => eprintln!("warning: RUST_LOG is ignored, it is invalid ({reason})"),
        }
    }
    let filter = parse_filter(level).map_err(|reason| TelemetryError::Filter {
        level: level.to_owned(),
        reason,
    })?;
    Ok((filter, false))
}

/// Installs the global subscriber. `name` is the program, used in the file name
/// default and nothing else.
pub fn init(config: &LogConfig) -> Result<Telemetry, TelemetryError> {
    let (filter, from_env) = filter_for(&config.level)?;
    let (filter, handle) = reload::Layer::new(filter);

    let ansi = std::io::stderr().is_terminal();
    let stderr_layer = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };

    let mut guard = None;
    let file_layer = match &config.directory {
        None => None,
        Some(dir) => {
            let rotation = match config.rotation {
                Rotation::Minutely => AppenderRotation::MINUTELY,
                Rotation::Hourly => AppenderRotation::HOURLY,
                Rotation::Daily => AppenderRotation::DAILY,
                Rotation::Never => AppenderRotation::NEVER,
            };
            let mut builder = RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix(&config.file);
            if config.keep > 0 {
                builder = builder.max_log_files(config.keep);
            }
            let appender = builder.build(dir).map_err(|e| TelemetryError::File {
                dir: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            let (writer, g) = tracing_appender::non_blocking(appender);
            guard = Some(g);
            Some(match config.format {
                LogFormat::Text => tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .boxed(),
                LogFormat::Json => tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer)
                    .boxed(),
            })
        }
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer)
        .with(file_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;

    Ok(Telemetry {
        _file_guard: guard,
        filter: handle,
        from_env,
    })
}

impl Telemetry {
    /// Applies a new configured level (SIGHUP). `RUST_LOG`, when it was set, still wins.
    pub fn set_level(&self, level: &str) {
        if self.from_env {
            return;
        }
        if let Ok(filter) = parse_filter(level) {
            let _ = self.filter.reload(filter);
        }
    }
}
