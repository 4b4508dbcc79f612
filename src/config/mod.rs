//! The gateway's configuration: one typed tree, loaded in layers, validated once.
//!
//! ```text
//! built-in defaults  <  gateway.toml  <  GATEWAY_* environment  <  command-line flags
//! ```
//!
//! Each layer overrides the one to its left, key by key. The file and the environment
//! are merged by the `config` crate into one map; every section of that map is then
//! deserialized on its own ([`diagnose`]), so that a broken file reports a problem per
//! key rather than stopping at the first, and finally [`Config::validate`]
//! ([`validate`]) checks what types cannot express. Nothing outside this module reads
//! the file or the environment.
//!
//! One file per section: [`server`], [`timeouts`], [`limits`], [`log`], [`tunnel`]. Each key is
//! declared once, as a field of its section's type; the known keys, the example
//! config's test and the masked `--check` output all come from those types. The
//! settings that only take effect at start are listed once, in
//! [`restart_only!`] below; everything else applies on reload.
//!
//! Every default is a named constant; `gateway.example.toml` documents the same
//! values, and a test parses that file so it cannot rot.

mod access;
mod admin;
mod diagnose;
pub mod example;
mod limits;
mod log;
mod server;
mod timeouts;
mod tunnel;
mod validate;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::access::{HashScheme, RateKey, RateLimit, parse_credential, parse_net};
pub use self::admin::{AdminConfig, DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT};
pub(crate) use self::diagnose::size::show as show_size;
pub use self::limits::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_MAX_URI_LENGTH,
    DEFAULT_REQUEST_BODY_IDLE_TIMEOUT, DEFAULT_RESPONSE_BODY_IDLE_TIMEOUT, Limits,
};
pub use self::log::{
    DEFAULT_LOG_FILE, DEFAULT_LOG_KEEP, DEFAULT_LOG_LEVEL, LogConfig, LogFormat, Rotation,
};
pub use self::server::{DEFAULT_HOST, DEFAULT_PORT, ServerConfig};
pub use self::timeouts::{
    DEFAULT_AGENT_WAIT, DEFAULT_DIRECT_TIMEOUT, DEFAULT_FORWARD_TIMEOUT, DEFAULT_HEARTBEAT,
    DEFAULT_SHUTDOWN_GRACE, Timeouts,
};
pub use self::tunnel::{
    DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_WAITING, DEFAULT_UPGRADES, TunnelConfig,
};
pub use self::validate::{PLACEHOLDER, is_tunnel_id};
pub use crate::auth::Secret;

/// The tunnel served when the gateway runs without a config file.
pub const DEMO_TUNNEL: &str = "demo";
/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "GATEWAY_";
/// Separator of nested keys in environment variables (`GATEWAY_SERVER__PORT`).
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration of the gateway daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[limits]`.
    pub limits: Limits,
    /// `[log]`.
    pub log: LogConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[[tunnels]]`.
    pub tunnels: Vec<TunnelConfig>,
}

/// Settings read only at start (the listener, the log's destination): a reload
/// that changes them is reported and not applied. Every other setting is live.
macro_rules! restart_only {
    ($($section:ident . $key:ident),* $(,)?) => {
        impl Config {
            /// Compares the restart-only settings of `new` with this (running)
            /// configuration: each one that differs is named, as
            /// `section.key (old -> new)`, and set back to the running value in
            /// `new`, so that `new` still describes what runs.
            pub fn keep_restart_only(&self, new: &mut Config) -> Vec<String> {
                let mut changed = Vec::new();
                $(
                    if self.$section.$key != new.$section.$key {
                        changed.push(format!(
                            "{}.{} ({:?} -> {:?})",
                            stringify!($section),
                            stringify!($key),
                            self.$section.$key,
                            new.$section.$key,
                        ));
                        new.$section.$key = self.$section.$key.clone();
                    }
                )*
                changed
            }
        }
    };
}

restart_only!(
    server.host,
    server.port,
    limits.max_connections,
    admin.enabled,
    admin.host,
    admin.port,
    log.directory,
    log.file,
    log.rotation,
    log.keep,
    log.format,
);

/// Values from the command line; each overrides any value in the file or environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`.
    pub host: Option<IpAddr>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--log-level`.
    pub log_level: Option<String>,
}

/// Where the configuration comes from: the file (if any), the `GATEWAY_*`
/// environment and the command line. Read again on every reload.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// `--config` or `GATEWAY_CONFIG`.
    pub file: Option<PathBuf>,
    /// The command-line flags.
    pub overrides: Overrides,
}

impl Source {
    /// Loads every layer, with the process's environment as it is now.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Config::load(self.file.as_deref(), &env, &self.overrides)
    }
}

/// Everything wrong with a configuration; shown one problem per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration is read but wrong.
    #[error("invalid configuration{}:\n{}", origin_suffix(.origin), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file, if there is one.
        origin: Option<PathBuf>,
        /// One line per problem.
        problems: Vec<String>,
    },
}

fn origin_suffix(origin: &Option<PathBuf>) -> String {
    match origin {
        Some(p) => format!(" in {}", p.display()),
        None => String::new(),
    }
}

impl ConfigError {
    /// The individual problems (for tests and for callers that format them).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid { problems, .. } => problems.clone(),
        }
    }
}

impl Config {
    /// The configuration used when no file is given: a local try-out with one open
    /// tunnel, `demo`.
    pub fn defaults() -> Self {
        Config {
            server: ServerConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            tunnels: vec![TunnelConfig::open(DEMO_TUNNEL)],
        }
    }

    /// Loads the layers: defaults, then `file` (if any), then `env` (only the
    /// `GATEWAY_<SECTION>__<KEY>` variables are read), then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        Self::load_str(text.as_deref(), file, env, overrides)
    }

    /// Like [`Config::load`], with the file's text given directly.
    pub fn load_str(
        toml_text: Option<&str>,
        origin: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            origin: origin.map(Path::to_owned),
            problems,
        };

        // Syntax first, with our own words: the config crate's message quotes
        // the offending line, which may hold a token.
        if let Some(text) = toml_text
            && let Err(e) = text.parse::<toml::Table>()
        {
            return Err(invalid(vec![diagnose::toml_syntax(text, &e)]));
        }
        let mut builder = config::Config::builder();
        if let Some(text) = toml_text {
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(Some(env_layer(env).into_iter().collect())),
        );
        let merged = builder
            .build()
            .map_err(|e| invalid(vec![diagnose::describe(&e)]))?;
        let map: BTreeMap<String, config::Value> = merged
            .try_deserialize()
            .map_err(|e| invalid(vec![diagnose::describe(&e)]))?;

        let mut problems = Vec::new();
        let from_env = diagnose::EnvKeys::new(env_layer(env).keys(), ENV_PREFIX, ENV_SEPARATOR);
        let known = diagnose::fields_of::<Config>();
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            problems.push(diagnose::unknown_key("", key, known) + &from_env.blame_section(key));
        }
        let server = diagnose::section(&map, "server", &from_env, &mut problems);
        let timeouts = diagnose::section(&map, "timeouts", &from_env, &mut problems);
        let limits = diagnose::section(&map, "limits", &from_env, &mut problems);
        let log = diagnose::section(&map, "log", &from_env, &mut problems);
        let admin = diagnose::section(&map, "admin", &from_env, &mut problems);
        let (tunnels, refused) = match map.get("tunnels") {
            None if toml_text.is_none() => (vec![TunnelConfig::open(DEMO_TUNNEL)], 0),
            None => (Vec::new(), 0),
            Some(value) => diagnose::tunnels(value, &mut problems),
        };

        let mut config = Config {
            server,
            timeouts,
            limits,
            log,
            admin,
            tunnels,
        };
        if let Some(host) = overrides.host {
            config.server.host = host;
        }
        if let Some(port) = overrides.port {
            config.server.port = port;
        }
        if let Some(level) = &overrides.log_level {
            config.log.level = level.clone();
        }
        let mut checked = config.validate();
        if refused > 0 {
            // An entry refused above is not "no tunnels": say it once.
            checked.retain(|p| !p.starts_with(validate::NO_TUNNELS));
        }
        problems.extend(checked);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(invalid(problems))
        }
    }

    /// The configured tunnel IDs, in file order.
    pub fn tunnel_ids(&self) -> Vec<String> {
        self.tunnels.iter().map(|t| t.id.clone()).collect()
    }

    /// The tunnel with this ID.
    pub fn tunnel(&self, id: &str) -> Option<&TunnelConfig> {
        self.tunnels.iter().find(|t| t.id == id)
    }

    /// How long a request of `tunnel` waits for an agent.
    pub fn agent_wait(&self, tunnel: &TunnelConfig) -> std::time::Duration {
        tunnel.agent_wait.unwrap_or(self.timeouts.agent_wait)
    }

    /// The tunnel for requests that name none: `server.default_tunnel`, or the only one.
    pub fn default_tunnel(&self) -> Option<&str> {
        match (&self.server.default_tunnel, self.tunnels.as_slice()) {
            (Some(id), _) => Some(id),
            (None, [only]) => Some(&only.id),
            (None, _) => None,
        }
    }

    /// The configuration as TOML, secrets masked (for `--check`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Keeps only the variables that are nested keys (`GATEWAY_SECTION__KEY`), so that
/// `GATEWAY_CONFIG` and the agent's `GATEWAY_AGENT_TOKEN` are not mistaken for keys.
fn env_layer(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter(|(k, _)| {
            k.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let mut c = Config::defaults();
        c.tunnels[0].token = Some(Secret::new("hunter2"));
        assert!(!c.to_masked_toml().contains("hunter2"));
    }

    #[test]
    fn restart_only_settings_are_named_and_kept() {
        let running = Config::defaults();
        let mut new = Config::defaults();
        new.server.port = 4000;
        new.log.level = "debug".into();
        new.timeouts.direct = std::time::Duration::from_secs(1);
        let changed = running.keep_restart_only(&mut new);
        assert_eq!(changed, vec!["server.port (3000 -> 4000)".to_owned()]);
        assert_eq!(new.server.port, 3000, "the running port is kept");
        assert_eq!(new.log.level, "debug", "live settings apply");
        assert_eq!(new.timeouts.direct, std::time::Duration::from_secs(1));
    }
}
