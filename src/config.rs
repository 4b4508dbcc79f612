//! The gateway's configuration: one typed tree, loaded in layers, validated once.
//!
//! ```text
//! built-in defaults  <  gateway.toml  <  GATEWAY_* environment  <  command-line flags
//! ```
//!
//! Each layer overrides the one to its left, key by key. The file and the environment
//! are merged by the `config` crate into one map; every section of that map is then
//! deserialized on its own, so that a broken file reports a problem per section rather
//! than stopping at the first, and finally [`Config::validate`] checks what types
//! cannot express (tunnel ID syntax, duplicates, references between keys). Nothing
//! outside this module reads the file or the environment.
//!
//! Every default is a named constant below; `gateway.example.toml` documents the same
//! values, and a test parses that file so it cannot rot.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::Secret;
use crate::auth::{digest_matches, secret_matches};

/// Default listen address: loopback, so a try-out is never exposed by accident.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Default listen port, as in the original description.
pub const DEFAULT_PORT: u16 = 3000;
/// `POST /forward`: how long to wait for the upstream's response head.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Every other proxied request: how long to wait for the upstream's response head.
pub const DEFAULT_DIRECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in flight may run on after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often the gateway pings an agent; three missed intervals end the session.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default log level when `RUST_LOG` is not set.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default log file name inside `log.directory`.
pub const DEFAULT_LOG_FILE: &str = "gateway.log";
/// The tunnel served when the gateway runs without a config file.
pub const DEMO_TUNNEL: &str = "demo";
/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "GATEWAY_";
/// Separator of nested keys in environment variables (`GATEWAY_SERVER__PORT`).
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration of the gateway daemon.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub timeouts: Timeouts,
    pub log: LogConfig,
    pub tunnels: Vec<TunnelConfig>,
}

/// `[server]`: where to listen and how to route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (logged at start).
    pub port: u16,
    /// When set, `<tunnel>.<public_domain>` in the Host header selects the tunnel.
    pub public_domain: Option<String>,
    /// Tunnel for requests that name none; defaults to the only tunnel, if one.
    pub default_tunnel: Option<String>,
    /// Keep the client's `X-Forwarded-For/-Proto/-Host` (extend, not replace). Only
    /// for a gateway reached solely through a proxy you run (nginx, a TLS load
    /// balancer): otherwise any client could claim any address or scheme.
    pub trust_forwarded: bool,
    /// When set, `GET /connections` requires `Authorization: Bearer <admin_token>`.
    pub admin_token: Option<Secret>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: DEFAULT_HOST,
            port: DEFAULT_PORT,
            public_domain: None,
            default_tunnel: None,
            trust_forwarded: false,
            admin_token: None,
        }
    }
}

impl ServerConfig {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// `[timeouts]`, all written as humantime strings ("5s", "1m 30s").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// `POST /forward`: wait for the upstream's response head.
    #[serde(with = "humantime_serde")]
    pub forward: Duration,
    /// Every other proxied request: wait for the upstream's response head.
    #[serde(with = "humantime_serde")]
    pub direct: Duration,
    /// After SIGTERM, how long requests in flight may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Interval of WebSocket pings to agents; silence for three intervals ends a session.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            forward: DEFAULT_FORWARD_TIMEOUT,
            direct: DEFAULT_DIRECT_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

/// `[log]`: level, destination and format of the logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter ("info", "gateway=debug,info"); `RUST_LOG`, when set, wins.
    pub level: String,
    /// Directory for a log file; absent means stderr only.
    pub directory: Option<PathBuf>,
    /// File name inside `directory` (rotated files get a date suffix).
    pub file: String,
    /// When to start a new file.
    pub rotation: Rotation,
    /// Line format, on stderr and in the file.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            directory: None,
            file: DEFAULT_LOG_FILE.to_owned(),
            rotation: Rotation::Daily,
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    Minutely,
    Hourly,
    Daily,
    Never,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[[tunnels]]`: one tunnel that agents may serve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Tunnel ID: `^[a-z0-9][a-z0-9-]{0,62}$` (it may be used as a DNS label).
    pub id: String,
    /// Shared secret the agent presents as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Hex SHA-256 of the token, so the file need not hold the secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// Send the agent's upstream address as Host instead of the public one.
    #[serde(default)]
    pub rewrite_host: bool,
}

impl TunnelConfig {
    /// A tunnel with no token: any agent that names it is accepted.
    pub fn open(id: &str) -> Self {
        TunnelConfig {
            id: id.to_owned(),
            token: None,
            token_sha256: None,
            rewrite_host: false,
        }
    }

    /// Whether agents must present a token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some() || self.token_sha256.is_some()
    }

    /// Checks a presented token, in time independent of where it differs.
    pub fn token_matches(&self, presented: Option<&str>) -> bool {
        match (&self.token, &self.token_sha256) {
            (None, None) => true,
            (Some(expected), _) => secret_matches(expected, presented),
            (None, Some(hex_digest)) => digest_matches(hex_digest, presented),
        }
    }
}

/// Values from the command line; each overrides any value in the file or environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub log_level: Option<String>,
}

/// Where the configuration came from, for the startup log and `--check`.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// No file: built-in defaults (plus environment and flags).
    Defaults,
    File(PathBuf),
}

/// Everything wrong with a configuration; shown one problem per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("invalid configuration{}:\n{}", origin_suffix(.origin), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: Option<PathBuf>,
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

const TOP_LEVEL_KEYS: &[&str] = &["server", "timeouts", "log", "tunnels"];
const SERVER_KEYS: &[&str] = &[
    "host",
    "port",
    "public_domain",
    "default_tunnel",
    "trust_forwarded",
    "admin_token",
];
const TIMEOUT_KEYS: &[&str] = &["forward", "direct", "shutdown_grace", "heartbeat"];
const LOG_KEYS: &[&str] = &["level", "directory", "file", "rotation", "format"];
const TUNNEL_KEYS: &[&str] = &["id", "token", "token_sha256", "rewrite_host"];

impl Config {
    /// The configuration used when no file is given: a local try-out with one open
    /// tunnel, `demo`.
    pub fn defaults() -> Self {
        Config {
            server: ServerConfig::default(),
            timeouts: Timeouts::default(),
            log: LogConfig::default(),
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
            .map_err(|e| invalid(vec![clean_message(&e.to_string())]))?;
        let map: BTreeMap<String, config::Value> = merged
            .try_deserialize()
            .map_err(|e| invalid(vec![clean_message(&e.to_string())]))?;

        let mut problems = Vec::new();
        for key in map.keys() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                problems.push(unknown_key("", key, TOP_LEVEL_KEYS));
            }
        }
        let server: ServerConfig = section(&map, "server", SERVER_KEYS, &mut problems);
        let timeouts: Timeouts = section(&map, "timeouts", TIMEOUT_KEYS, &mut problems);
        let log: LogConfig = section(&map, "log", LOG_KEYS, &mut problems);
        let tunnels = match map.get("tunnels") {
            None => match toml_text {
                None => vec![TunnelConfig::open(DEMO_TUNNEL)],
                Some(_) => Vec::new(),
            },
            Some(value) => tunnels(value, &mut problems),
        };

        let mut config = Config {
            server,
            timeouts,
            log,
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
        let tunnel_entries_refused = problems.iter().any(|p| p.contains("tunnels["));
        problems.extend(
            config
                .validate()
                .into_iter()
                // An entry refused above is not "no tunnels": say it once.
                .filter(|p| !(tunnel_entries_refused && p.starts_with("no tunnels"))),
        );
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(invalid(problems))
        }
    }

    /// Checks what the types cannot: returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, d) in [
            ("timeouts.forward", self.timeouts.forward),
            ("timeouts.direct", self.timeouts.direct),
            ("timeouts.heartbeat", self.timeouts.heartbeat),
        ] {
            if d.is_zero() {
                problems.push(format!(
                    "{key} = \"0s\" is invalid: expected a positive duration such as \"5s\""
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            problems.push(format!(
                "log.level = {:?} is invalid ({e}): expected error, warn, info, debug, trace or a filter like \"gateway=debug,info\"",
                self.log.level
            ));
        }
        if self.log.file.is_empty() || self.log.file.contains('/') {
            problems.push(format!(
                "log.file = {:?} is invalid: expected a file name without '/', such as \"gateway.log\"",
                self.log.file
            ));
        }
        if let Some(domain) = &self.server.public_domain
            && !is_domain(domain)
        {
            problems.push(format!(
                "server.public_domain = {domain:?} is invalid: expected a domain name such as \"tunnels.example.com\""
            ));
        }
        if let Some(t) = &self.server.admin_token
            && t.expose().is_empty()
        {
            problems.push(
                "server.admin_token is empty: remove the key to leave /connections open, or set a secret"
                    .to_owned(),
            );
        }
        if self.tunnels.is_empty() {
            problems.push(
                "no tunnels are configured: add at least one [[tunnels]] entry with an id"
                    .to_owned(),
            );
        }
        let mut seen = HashSet::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            if !is_tunnel_id(&t.id) {
                problems.push(format!(
                    "tunnels[{i}].id = {:?} is invalid: expected lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters",
                    t.id
                ));
            }
            if !seen.insert(t.id.as_str()) {
                problems.push(format!(
                    "tunnels[{i}].id = {:?} is a duplicate: each tunnel id may appear once",
                    t.id
                ));
            }
            if t.token.is_some() && t.token_sha256.is_some() {
                problems.push(format!(
                    "tunnels[{i}] (id {:?}) sets both token and token_sha256: keep one",
                    t.id
                ));
            }
            if let Some(token) = &t.token
                && token.expose().is_empty()
            {
                problems.push(format!(
                    "tunnels[{i}].token is empty: remove the key for an open tunnel, or set a secret"
                ));
            }
            if let Some(digest) = &t.token_sha256
                && (digest.len() != 64 || hex::decode(digest).is_err())
            {
                problems.push(format!(
                    "tunnels[{i}].token_sha256 = {digest:?} is invalid: expected 64 hex digits (sha256sum of the token)"
                ));
            }
        }
        if let Some(default) = &self.server.default_tunnel
            && !self.tunnels.iter().any(|t| &t.id == default)
        {
            problems.push(format!(
                "server.default_tunnel = {default:?} names no configured tunnel: expected one of {}",
                self.tunnel_ids().join(", ")
            ));
        }
        problems
    }

    /// The configured tunnel IDs, in file order.
    pub fn tunnel_ids(&self) -> Vec<String> {
        self.tunnels.iter().map(|t| t.id.clone()).collect()
    }

    /// The tunnel with this ID.
    pub fn tunnel(&self, id: &str) -> Option<&TunnelConfig> {
        self.tunnels.iter().find(|t| t.id == id)
    }

    /// The tunnel for requests that name none: `server.default_tunnel`, or the only one.
    pub fn default_tunnel(&self) -> Option<&str> {
        match &self.server.default_tunnel {
            Some(id) => Some(id),
            None if self.tunnels.len() == 1 => Some(&self.tunnels[0].id),
            None => None,
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

fn section<T>(
    map: &BTreeMap<String, config::Value>,
    name: &str,
    known: &[&str],
    problems: &mut Vec<String>,
) -> T
where
    T: Default + for<'de> Deserialize<'de>,
{
    let Some(value) = map.get(name) else {
        return T::default();
    };
    let table = match value.clone().into_table() {
        Ok(t) => t,
        Err(_) => {
            problems.push(format!("{name} must be a table ([{name}])"));
            return T::default();
        }
    };
    let before = problems.len();
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(unknown_key(name, key, known));
        }
    }
    if problems.len() > before {
        return T::default();
    }
    match value.clone().try_deserialize::<T>() {
        Ok(v) => v,
        Err(e) => {
            problems.extend(bad_keys::<T>(
                name,
                &table,
                &config::Map::new(),
                &e.to_string(),
            ));
            T::default()
        }
    }
}

fn tunnels(value: &config::Value, problems: &mut Vec<String>) -> Vec<TunnelConfig> {
    let Ok(list) = value.clone().into_array() else {
        problems.push("tunnels must be a list of tables ([[tunnels]])".to_owned());
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in list.into_iter().enumerate() {
        let name = format!("tunnels[{i}]");
        let Ok(table) = item.clone().into_table() else {
            problems.push(format!("{name} must be a table with an id"));
            continue;
        };
        let before = problems.len();
        for key in table.keys() {
            if !TUNNEL_KEYS.contains(&key.as_str()) {
                problems.push(unknown_key(&name, key, TUNNEL_KEYS));
            }
        }
        if problems.len() > before {
            continue;
        }
        match item.try_deserialize::<TunnelConfig>() {
            Ok(t) => out.push(t),
            Err(e) => {
                // `id` is required: test every other key next to a valid one.
                let mut base = config::Map::new();
                base.insert("id".to_owned(), config::Value::from("x"));
                problems.extend(bad_keys::<TunnelConfig>(
                    &name,
                    &table,
                    &base,
                    &e.to_string(),
                ));
            }
        }
    }
    out
}

/// Finds which keys of a table that failed to deserialize are at fault, by trying
/// each key alone on top of `base` (every other field has a default), and words one
/// problem per bad key: "<section>.<key> = <value> is invalid: <expected>".
fn bad_keys<T: for<'de> Deserialize<'de>>(
    section: &str,
    table: &config::Map<String, config::Value>,
    base: &config::Map<String, config::Value>,
    whole_error: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    for (key, value) in table {
        let mut alone = base.clone();
        alone.insert(key.clone(), value.clone());
        if let Err(e) = config::Value::from(alone).try_deserialize::<T>() {
            found.push(format!(
                "{section}.{key} = {} is invalid: {}",
                show_value(value),
                expected_for(section, key, &clean_message(&e.to_string()))
            ));
        }
    }
    if found.is_empty() {
        let message = clean_message(whole_error);
        found.push(match message.strip_prefix("missing field `") {
            Some(key) => format!(
                "{section}.{} is missing: it is required",
                key.trim_end_matches('`')
            ),
            None => format!("{section}: {message}"),
        });
    }
    found
}

fn show_value(v: &config::Value) -> String {
    match &v.kind {
        config::ValueKind::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn expected_for(section: &str, key: &str, message: &str) -> String {
    let what = match (section.split('[').next().unwrap_or(section), key) {
        ("server", "host") => "expected an IP address such as \"127.0.0.1\" or \"0.0.0.0\"",
        ("server", "port") => "expected a port number from 0 to 65535",
        ("timeouts", _) => "expected a duration such as \"5s\", \"500ms\" or \"1m 30s\"",
        ("log", "rotation") => "expected one of minutely, hourly, daily, never",
        ("log", "format") => "expected one of text, json",
        ("tunnels", "rewrite_host") | ("server", "trust_forwarded") => "expected true or false",
        _ => return message.to_owned(),
    };
    what.to_owned()
}

/// Drops the config crate's own location suffixes, which name no file for in-memory
/// sources.
fn clean_message(message: &str) -> String {
    message
        .split(" for key `")
        .next()
        .unwrap_or(message)
        .trim()
        .to_owned()
}

fn unknown_key(section: &str, key: &str, known: &[&str]) -> String {
    let full = if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    };
    match nearest(key, known) {
        Some(near) => format!("unknown key {full:?}: did you mean {near:?}?"),
        None => format!("unknown key {full:?}: expected one of {}", known.join(", ")),
    }
}

/// The known key closest to `key`, if it is close enough to be a likely typo.
fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `^[a-z0-9][a-z0-9-]{0,62}$`
pub fn is_tunnel_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    #[test]
    fn nearest_key_suggests_typos_only() {
        assert_eq!(nearest("prot", SERVER_KEYS), Some("port"));
        assert_eq!(
            nearest("shutdown_grace_", TIMEOUT_KEYS),
            Some("shutdown_grace")
        );
        assert_eq!(nearest("zzzzzzzz", SERVER_KEYS), None);
    }

    #[test]
    fn tunnel_ids() {
        assert!(is_tunnel_id("laravel"));
        assert!(is_tunnel_id("a-1"));
        assert!(!is_tunnel_id("-a"));
        assert!(!is_tunnel_id("Laravel"));
        assert!(!is_tunnel_id(""));
        assert!(!is_tunnel_id(&"a".repeat(64)));
    }

    #[test]
    fn tokens_compare_plain_and_hashed() {
        let mut t = TunnelConfig::open("x");
        assert!(t.token_matches(None));
        t.token = Some(Secret::new("s3cret"));
        assert!(t.token_matches(Some("s3cret")));
        assert!(!t.token_matches(Some("s3cre")));
        assert!(!t.token_matches(None));
        t.token = None;
        t.token_sha256 = Some(hex::encode(sha2::Sha256::digest(b"s3cret")));
        assert!(t.token_matches(Some("s3cret")));
        assert!(!t.token_matches(Some("other")));
    }

    #[test]
    fn secrets_are_masked() {
        let mut c = Config::defaults();
        c.tunnels[0].token = Some(Secret::new("hunter2"));
        assert!(!c.to_masked_toml().contains("hunter2"));
    }
}
