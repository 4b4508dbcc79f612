//! The agent's settings: command-line flags over an optional TOML file (the same
//! keys), merged into one [`AgentConfig`] per gateway URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::AgentError;
use super::upstream::Upstream;
use crate::auth::Secret;

/// Default grace period for open streams on SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The settings of one connection to one gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// WebSocket URL of the gateway, e.g. `ws://127.0.0.1:3000/ws` or `wss://...`.
    pub gateway: String,
    /// Tunnel ID to serve.
    pub tunnel: String,
    /// The tunnel's token, if it has one.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Where requests go: `http://127.0.0.1:8000`, `127.0.0.1:8000` or `8000`.
    pub upstream: String,
    /// On SIGTERM, how long open streams may take to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// At start, wait until the upstream accepts connections before connecting
    /// to the gateway.
    #[serde(default)]
    pub wait_upstream: bool,
}

fn default_grace() -> Duration {
    DEFAULT_GRACE
}

/// Agent file settings, each optional so flags can fill or override them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// One URL, or a list: the agent keeps one connection to each gateway.
    pub gateway: Option<OneOrMany>,
    /// Tunnel ID to serve.
    pub tunnel: Option<String>,
    /// The tunnel's token.
    pub token: Option<Secret>,
    /// Where requests go.
    pub upstream: Option<String>,
    /// On SIGTERM, how long open streams may take to finish.
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
    /// At start, wait until the upstream accepts connections.
    pub wait_upstream: Option<bool>,
}

impl AgentFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<AgentFile, AgentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| AgentError::Config(format!("{}: {}", path.display(), e.message())))
    }
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// What the command line says; each flag given wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--gateway`, repeated.
    pub gateway: Vec<String>,
    /// `--tunnel`.
    pub tunnel: Option<String>,
    /// `--token` or `GATEWAY_AGENT_TOKEN`.
    pub token: Option<Secret>,
    /// `--upstream`.
    pub upstream: Option<String>,
    /// `--config`: the TOML file.
    pub config: Option<PathBuf>,
    /// `--grace`.
    pub grace: Option<Duration>,
    /// `--wait-upstream`.
    pub wait_upstream: bool,
}

impl Flags {
    /// One config per gateway URL: the flags over the file (if one is given).
    pub fn settings(&self) -> Result<Vec<AgentConfig>, AgentError> {
        let file = match &self.config {
            Some(p) => AgentFile::load(p)?,
            None => AgentFile::default(),
        };
        let missing = |what: &str| {
            AgentError::Config(format!(
                "missing --{what} (or `{what} = ...` in the --config file)"
            ))
        };
        let gateways = if self.gateway.is_empty() {
            file.gateway.map(OneOrMany::into_vec).unwrap_or_default()
        } else {
            self.gateway.clone()
        };
        if gateways.is_empty() {
            return Err(missing("gateway"));
        }
        let base = AgentConfig {
            gateway: String::new(),
            tunnel: self
                .tunnel
                .clone()
                .or(file.tunnel)
                .ok_or_else(|| missing("tunnel"))?,
            token: self.token.clone().or(file.token),
            upstream: self
                .upstream
                .clone()
                .or(file.upstream)
                .ok_or_else(|| missing("upstream"))?,
            grace: self.grace.or(file.grace).unwrap_or(DEFAULT_GRACE),
            wait_upstream: self.wait_upstream || file.wait_upstream.unwrap_or(false),
        };
        Upstream::parse(&base.upstream)?;
        Ok(gateways
            .into_iter()
            .map(|gateway| AgentConfig {
                gateway,
                ..base.clone()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_each_gateway_gets_a_config() {
        let dir = std::env::temp_dir().join(format!("agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            "gateway = [\"ws://a/ws\", \"ws://b/ws\"]\ntunnel = \"t\"\nupstream = \"8000\"\ngrace = \"5s\"\n",
        )
        .unwrap();
        let flags = Flags {
            tunnel: Some("mine".into()),
            config: Some(path),
            ..Flags::default()
        };
        let configs = flags.settings().unwrap();
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[1].gateway, "ws://b/ws");
        assert_eq!(configs[0].tunnel, "mine");
        assert_eq!(configs[0].grace, Duration::from_secs(5));
        let err = Flags::default().settings().unwrap_err().to_string();
        assert!(err.contains("missing --gateway"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
