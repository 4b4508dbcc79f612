//! `[log]`: level, destination and format of the logs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::diagnose::expect_one_of;

/// Default log level when `RUST_LOG` is not set.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default log file name inside `log.directory`.
pub const DEFAULT_LOG_FILE: &str = "gateway.log";
/// Rotated log files kept by default: two weeks of daily files.
pub const DEFAULT_LOG_KEEP: usize = 14;

/// `[log]`: level, destination and format of the logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter ("info", "gateway=debug,info"); `RUST_LOG`, when set, wins.
    pub level: String,
    /// Directory for a log file; absent means stderr only (restart-only).
    pub directory: Option<PathBuf>,
    /// File name inside `directory`; rotated files get a date suffix (restart-only).
    pub file: String,
    /// When to start a new file (restart-only).
    #[serde(deserialize_with = "expect_one_of")]
    pub rotation: Rotation,
    /// Rotated files kept, older ones deleted; 0 keeps all (restart-only).
    pub keep: usize,
    /// Line format, on stderr and in the file (restart-only).
    #[serde(deserialize_with = "expect_one_of")]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            directory: None,
            file: DEFAULT_LOG_FILE.to_owned(),
            rotation: Rotation::Daily,
            keep: DEFAULT_LOG_KEEP,
            format: LogFormat::Text,
        }
    }
}

/// When the log file is rotated.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    /// A new file every minute (for tests).
    Minutely,
    /// A new file every hour.
    Hourly,
    /// A new file every day.
    Daily,
    /// One file, never rotated.
    Never,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
