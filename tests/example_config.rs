//! `gateway.example.toml` is documentation that the compiler cannot check, so this
//! test does: the file must load as shipped, every key of the config must be in
//! it (commented out when it has no default value), no key it mentions may be
//! unknown, each "Default: ..." its comments claim must be the code's default,
//! and every commented-out example must be valid once uncommented.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gateway::config::example::{ExampleKey, scan as scan_example};
use gateway::config::{
    self, Config, Limits, LogConfig, LogFormat, Overrides, Rotation, Secret, ServerConfig,
    Timeouts, TunnelConfig,
};
use serde_json::Value;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).expect("gateway.example.toml is readable")
}

fn load_example() -> Config {
    let path = example_path();
    Config::load(Some(&path), &BTreeMap::new(), &Overrides::default())
        .unwrap_or_else(|e| panic!("gateway.example.toml must be valid as shipped:\n{e}"))
}

/// Keys the example sets on purpose to something other than the default, because
/// it is written for a production install.
const NOT_DEFAULT_ON_PURPOSE: &[&str] = &["log.directory", "tunnels.token"];

#[test]
fn example_is_valid_as_shipped() {
    let config = load_example();
    assert!(config.validate().is_empty());
}

#[test]
fn example_values_are_the_documented_defaults() {
    let c = load_example();

    assert_eq!(c.server.host, config::DEFAULT_HOST);
    assert_eq!(c.server.port, config::DEFAULT_PORT);
    assert_eq!(c.server.public_domain, None);
    assert_eq!(c.server.default_tunnel, None);

    assert_eq!(c.timeouts.forward, config::DEFAULT_FORWARD_TIMEOUT);
    assert_eq!(c.timeouts.direct, config::DEFAULT_DIRECT_TIMEOUT);
    assert_eq!(c.timeouts.shutdown_grace, config::DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(c.timeouts.heartbeat, config::DEFAULT_HEARTBEAT);
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.limits, Limits::default());

    assert_eq!(c.log.level, config::DEFAULT_LOG_LEVEL);
    assert_eq!(c.log.file, config::DEFAULT_LOG_FILE);
    assert_eq!(c.log.rotation, Rotation::Daily);
    assert_eq!(c.log.rotation, LogConfig::default().rotation);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.format, LogConfig::default().format);
    // Set on purpose: the unit's LogsDirectory=gateway creates it.
    assert_eq!(
        c.log.directory.as_deref(),
        Some(Path::new("/var/log/gateway"))
    );

    assert_eq!(c.tunnel_ids(), vec!["laravel".to_owned()]);
    let laravel = c
        .tunnel("laravel")
        .expect("the example has a tunnel laravel");
    assert!(
        laravel.requires_token(),
        "the shipped tunnel must not be open"
    );
    assert!(laravel.token.is_some() && laravel.token_sha256.is_none());
    assert!(!laravel.rewrite_host);
    // One tunnel: it is the default, as the comment on default_tunnel says.
    assert_eq!(c.default_tunnel(), Some("laravel"));
}

/// The keys of the config, read from the code itself: a fully populated config
/// serialized to JSON. A field added to `src/config/` shows up here, and the
/// test below then fails until the example documents it.
fn keys_from_code() -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut c = Config::defaults();
    c.server.public_domain = Some("tunnels.example.com".into());
    c.server.default_tunnel = Some("demo".into());
    c.log.directory = Some("/tmp".into());
    c.tunnels[0].token = Some(Secret::new("x"));
    c.tunnels[0].token_sha256 = Some("0".repeat(64));
    c.tunnels[0].agent_wait = Some(std::time::Duration::from_secs(1));
    c.tunnels[0].rate_limit = Some(config::RateLimit {
        requests: 1,
        per: std::time::Duration::from_secs(1),
        burst: None,
        key: config::RateKey::ClientIp,
    });
    let json = serde_json::to_value(&c).expect("config serializes");
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .expect("a section is a table")
            .keys()
            .cloned()
            .collect()
    };
    BTreeMap::from([
        ("server", keys(&json["server"])),
        ("timeouts", keys(&json["timeouts"])),
        ("limits", keys(&json["limits"])),
        ("log", keys(&json["log"])),
        ("admin", keys(&json["admin"])),
        ("tunnels", keys(&json["tunnels"][0])),
    ])
}

/// The keys of a `[[tunnels]]` entry, `id` first.
const TUNNEL_KEYS: [&str; 18] = [
    "id",
    "token",
    "token_sha256",
    "rewrite_host",
    "agent_wait",
    "max_waiting",
    "upgrades",
    "allow_trace",
    "forward_underscore_headers",
    "max_request_body",
    "basic_auth",
    "auth_exempt",
    "forward_authorization",
    "allow_ips",
    "deny_ips",
    "rate_limit",
    "max_concurrent_requests",
    "max_agents",
];

#[test]
fn example_shows_every_key_and_only_known_keys() {
    let from_code = keys_from_code();
    // The keys this example is expected to document, as listed in the brief of the
    // config; they must also be exactly what the code has.
    let listed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        (
            "server",
            &[
                "host",
                "port",
                "public_domain",
                "default_tunnel",
                "trust_forwarded",
                "trusted_proxies",
                "proxy_protocol",
                "admin_token",
            ][..],
        ),
        (
            "timeouts",
            &[
                "forward",
                "direct",
                "shutdown_grace",
                "heartbeat",
                "agent_wait",
            ][..],
        ),
        (
            "limits",
            &[
                "header_read_timeout",
                "max_header_bytes",
                "max_headers",
                "max_uri_length",
                "max_connections",
                "max_connections_per_ip",
                "request_body_idle_timeout",
                "response_body_idle_timeout",
            ][..],
        ),
        (
            "log",
            &["level", "directory", "file", "rotation", "keep", "format"][..],
        ),
        ("admin", &["enabled", "host", "port"][..]),
        ("tunnels", &TUNNEL_KEYS[..]),
    ]);
    for (section, keys) in &listed {
        let listed: BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            &listed, &from_code[section],
            "the keys of [{section}] in src/config/ changed: update gateway.example.toml and this list"
        );
    }

    let text = example_text();
    let found = scan_example(&text);
    for k in &found {
        let known = from_code.get(k.section.as_str()).unwrap_or_else(|| {
            panic!(
                "line {}: section [{}] is not a config section",
                k.line + 1,
                k.section
            )
        });
        assert!(
            known.contains(&k.key),
            "line {}: {}.{} is not a config key (known: {:?})",
            k.line + 1,
            k.section,
            k.key,
            known
        );
    }
    for (section, keys) in &from_code {
        for key in keys {
            assert!(
                found.iter().any(|k| &k.section == section && &k.key == key),
                "gateway.example.toml does not show {section}.{key}"
            );
        }
    }
}

/// The value after "Default:" in a comment, as JSON: `unset` is null.
fn claimed_default(doc: &str) -> Option<Value> {
    let rest = doc.split_once("Default:")?.1.trim_start();
    if rest.starts_with("unset") {
        return Some(Value::Null);
    }
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        return Some(Value::String(quoted[..end].to_owned()));
    }
    if rest.starts_with('[') {
        let end = rest.find(']')?;
        return serde_json::from_str(&rest[..=end]).ok();
    }
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    serde_json::from_str(&token).ok()
}

/// What the code uses when a key is left out, as JSON (durations as humantime
/// strings, enums in lowercase, `None` as null).
fn code_defaults() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let sections = [
        ("server", serde_json::to_value(ServerConfig::default())),
        ("timeouts", serde_json::to_value(Timeouts::default())),
        ("limits", serde_json::to_value(Limits::default())),
        ("log", serde_json::to_value(LogConfig::default())),
        (
            "admin",
            serde_json::to_value(config::AdminConfig::default()),
        ),
    ];
    for (name, value) in sections {
        for (k, v) in value.expect("serializes").as_object().expect("a table") {
            out.insert(format!("{name}.{k}"), v.clone());
        }
    }
    let open = serde_json::to_value(TunnelConfig::open("x")).expect("serializes");
    // Every key but the id, which has no default.
    for key in &TUNNEL_KEYS[1..] {
        out.insert(
            format!("tunnels.{key}"),
            open.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    out
}

#[test]
fn documented_defaults_match_the_code() {
    let defaults = code_defaults();
    // The humantime rendering the comments use must be the constants' own.
    assert_eq!(
        defaults["timeouts.forward"],
        humantime::format_duration(config::DEFAULT_FORWARD_TIMEOUT).to_string()
    );
    assert_eq!(defaults["server.port"], config::DEFAULT_PORT);

    let text = example_text();
    let keys = scan_example(&text);
    let mut checked = 0;
    for k in keys.iter().filter(|k| !k.doc.is_empty()) {
        let name = format!("{}.{}", k.section, k.key);
        if name == "tunnels.id" {
            assert!(
                k.doc.contains("Required"),
                "tunnels.id has no default: its comment must say it is required"
            );
            continue;
        }
        let claimed = claimed_default(&k.doc)
            .unwrap_or_else(|| panic!("the comment of {name} must say \"Default: ...\""));
        assert_eq!(
            claimed, defaults[&name],
            "the comment of {name} claims a default that is not the code's"
        );
        if !k.commented && !NOT_DEFAULT_ON_PURPOSE.contains(&name.as_str()) {
            let shown: toml::Value = toml::from_str(&format!("v = {}", k.value))
                .map(|t: toml::Table| t["v"].clone())
                .expect("a TOML value");
            let shown = serde_json::to_value(shown).expect("converts");
            assert_eq!(
                shown, claimed,
                "{name} is set to something other than its documented default"
            );
        }
        checked += 1;
    }
    // Every key but tunnels.id has a documented default.
    let total: usize = keys_from_code().values().map(BTreeSet::len).sum();
    assert_eq!(checked, total - 1, "every key's comment is checked");
}

#[test]
fn commented_out_examples_are_valid_when_uncommented() {
    let text = example_text();
    let lines: Vec<&str> = text.lines().collect();
    let documented = scan_example(&text);
    let commented: Vec<&ExampleKey> = documented
        .iter()
        .filter(|k| k.commented && !k.doc.is_empty())
        .collect();
    assert!(!commented.is_empty());
    for k in commented {
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        edited[k.line] = format!("{} = {}", k.key, k.value);
        if k.key == "token_sha256" {
            // token and token_sha256 exclude each other: the digest replaces the token.
            for l in edited.iter_mut() {
                if l.starts_with("token = ") {
                    *l = format!("# {l}");
                }
            }
        }
        let edited = edited.join("\n");
        let result = Config::load_str(
            Some(&edited),
            Some(Path::new("gateway.example.toml")),
            &BTreeMap::new(),
            &Overrides::default(),
        );
        if let Err(e) = result {
            panic!(
                "uncommenting {}.{} (line {}) makes the example invalid:\n{e}",
                k.section,
                k.key,
                k.line + 1
            );
        }
    }
}

#[test]
fn environment_example_in_the_header_works() {
    // The header promises GATEWAY_SERVER__PORT=4000 overrides server.port, and that
    // flags win over the environment.
    let path = example_path();
    let env = BTreeMap::from([("GATEWAY_SERVER__PORT".to_owned(), "4000".to_owned())]);
    let c = Config::load(Some(&path), &env, &Overrides::default()).expect("valid");
    assert_eq!(c.server.port, 4000);
    let flags = Overrides {
        port: Some(5000),
        ..Overrides::default()
    };
    let c = Config::load(Some(&path), &env, &flags).expect("valid");
    assert_eq!(c.server.port, 5000);
    let env = BTreeMap::from([("GATEWAY_TIMEOUTS__DIRECT".to_owned(), "1m".to_owned())]);
    let c = Config::load(Some(&path), &env, &Overrides::default()).expect("valid");
    assert_eq!(c.timeouts.direct, std::time::Duration::from_secs(60));
}
