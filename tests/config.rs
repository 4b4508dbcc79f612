//! Configuration layering and validation, through the library's loader.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway::config::{Config, ConfigError, LogFormat, Overrides, Rotation};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(
    toml: &str,
    env_pairs: &[(&str, &str)],
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    Config::load_str(Some(toml), None, &env(env_pairs), overrides)
}

fn problems(toml: &str) -> Vec<String> {
    load(toml, &[], &Overrides::default())
        .expect_err("config should be refused")
        .problems()
}

const BASE: &str = r#"
[server]
port = 4100
[timeouts]
forward = "7s"
[[tunnels]]
id = "laravel"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#;

#[test]
fn file_then_env_then_flag() {
    let c = load(BASE, &[], &Overrides::default()).unwrap();
    assert_eq!(c.server.port, 4100);
    assert_eq!(c.timeouts.forward, Duration::from_secs(7));
    assert_eq!(c.timeouts.direct, Duration::from_secs(30), "default kept");

    let c = load(
        BASE,
        &[
            ("GATEWAY_SERVER__PORT", "4200"),
            ("GATEWAY_TIMEOUTS__FORWARD", "1m 30s"),
        ],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.server.port, 4200, "env overrides the file");
    assert_eq!(c.timeouts.forward, Duration::from_secs(90));

    let flags = Overrides {
        port: Some(4300),
        host: Some("0.0.0.0".parse().unwrap()),
        log_level: Some("debug".into()),
    };
    let c = load(BASE, &[("GATEWAY_SERVER__PORT", "4200")], &flags).unwrap();
    assert_eq!(c.server.port, 4300, "the flag overrides env and file");
    assert_eq!(c.server.host.to_string(), "0.0.0.0");
    assert_eq!(c.log.level, "debug");
}

#[test]
fn unrelated_gateway_variables_are_not_keys() {
    // GATEWAY_CONFIG names the file and GATEWAY_AGENT_TOKEN belongs to the agent.
    let c = load(
        BASE,
        &[
            ("GATEWAY_CONFIG", "/etc/x.toml"),
            ("GATEWAY_AGENT_TOKEN", "t"),
        ],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.server.port, 4100);
}

#[test]
fn defaults_without_a_file_serve_demo() {
    let c = Config::load(None, &BTreeMap::new(), &Overrides::default()).unwrap();
    assert_eq!(c.server.addr().to_string(), "127.0.0.1:3000");
    assert_eq!(c.tunnel_ids(), vec!["demo"]);
    assert_eq!(c.default_tunnel(), Some("demo"));
    assert!(!c.tunnels[0].requires_token());
    assert_eq!(c.log.rotation, Rotation::Daily);
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn bad_value_names_key_value_and_expectation() {
    let p = problems("[server]\nport = \"eighty\"\n[[tunnels]]\nid = \"a\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("server.port"), "{p:?}");
    assert!(p[0].contains("eighty"), "{p:?}");
    assert!(p[0].contains("port number"), "{p:?}");

    let p = problems("[timeouts]\ndirect = \"soon\"\n[[tunnels]]\nid = \"a\"\n");
    assert!(
        p[0].contains("timeouts.direct") && p[0].contains("soon") && p[0].contains("duration"),
        "{p:?}"
    );

    let p = problems("[log]\nrotation = \"weekly\"\n[[tunnels]]\nid = \"a\"\n");
    assert!(
        p[0].contains("log.rotation") && p[0].contains("weekly") && p[0].contains("daily"),
        "{p:?}"
    );
}

#[test]
fn unknown_key_suggests_the_nearest() {
    let p = problems("[server]\nprot = 3000\n[[tunnels]]\nid = \"a\"\n");
    assert!(
        p[0].contains("server.prot") && p[0].contains("did you mean \"port\""),
        "{p:?}"
    );

    let p = problems("[timeout]\nforward = \"1s\"\n[[tunnels]]\nid = \"a\"\n");
    assert!(
        p[0].contains("\"timeout\"") && p[0].contains("timeouts"),
        "{p:?}"
    );

    let p = problems("[[tunnels]]\nid = \"a\"\ntokne = \"x\"\n");
    assert!(
        p[0].contains("tunnels[0].tokne") && p[0].contains("token"),
        "{p:?}"
    );
}

#[test]
fn duplicate_and_malformed_tunnels() {
    let p = problems("[[tunnels]]\nid = \"app\"\n[[tunnels]]\nid = \"app\"\n");
    assert!(
        p.iter()
            .any(|m| m.contains("duplicate") && m.contains("app")),
        "{p:?}"
    );

    let p = problems("[[tunnels]]\nid = \"My_App\"\n");
    assert!(
        p.iter()
            .any(|m| m.contains("tunnels[0].id") && m.contains("My_App")),
        "{p:?}"
    );

    let p = problems("[[tunnels]]\nid = \"a\"\ntoken = \"x\"\ntoken_sha256 = \"00\"\n");
    assert!(
        p.iter().any(|m| m.contains("both token and token_sha256")),
        "{p:?}"
    );
    assert!(p.iter().any(|m| m.contains("64 hex digits")), "{p:?}");

    let p = problems("[server]\nport = 1\n");
    assert!(
        p.iter().any(|m| m.contains("no tunnels are configured")),
        "{p:?}"
    );

    let p = problems("[server]\ndefault_tunnel = \"nope\"\n[[tunnels]]\nid = \"a\"\n");
    assert!(
        p.iter()
            .any(|m| m.contains("default_tunnel") && m.contains("nope")),
        "{p:?}"
    );
}

#[test]
fn every_problem_is_reported() {
    let p = problems(
        "[server]\nport = \"x\"\n[timeouts]\nforward = \"never\"\n[log]\nformat = \"xml\"\n[[tunnels]]\nid = \"A\"\n[[tunnels]]\nid = \"b\"\ncolour = 1\n",
    );
    for needle in [
        "server.port",
        "timeouts.forward",
        "log.format",
        "tunnels[0].id",
        "tunnels[1].colour",
    ] {
        assert!(
            p.iter().any(|m| m.contains(needle)),
            "missing {needle} in {p:?}"
        );
    }
}

#[test]
fn invalid_toml_is_reported() {
    let p = problems("[server\nport = 1\n");
    assert_eq!(p.len(), 1);
}

#[test]
fn missing_file_is_a_clear_error() {
    let e = Config::load(
        Some(std::path::Path::new("/nonexistent/gateway.toml")),
        &BTreeMap::new(),
        &Overrides::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cannot read config file /nonexistent/gateway.toml"),
        "{msg}"
    );
}

#[test]
fn masked_output_hides_tokens() {
    let c = load(
        "[[tunnels]]\nid = \"a\"\ntoken = \"hunter2hunter2\"\n",
        &[],
        &Overrides::default(),
    )
    .unwrap();
    let shown = c.to_masked_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    assert!(format!("{c:?}").contains("***") && !format!("{c:?}").contains("hunter2"));
}

#[test]
fn a_refused_tunnel_entry_is_not_also_no_tunnels() {
    let p = problems("[[tunnels]]\nid = \"a\"\ncolour = \"red\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("tunnels[0].colour"), "{p:?}");
}

/// The example's placeholder tokens: a warning while only this machine can reach
/// the gateway, a refusal (naming the key, not the secret) once it listens on
/// other addresses.
#[test]
fn placeholder_secrets_warn_on_loopback_and_are_refused_elsewhere() {
    let toml = "[server]\nadmin_token = \"CHANGE-ME-admin\"\n[[tunnels]]\nid = \"a\"\ntoken = \"CHANGE-ME-secret\"\n[[tunnels]]\nid = \"b\"\ntoken = \"a-real-secret\"\n";
    let c = load(toml, &[], &Overrides::default()).expect("allowed on loopback");
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("server.admin_token"), "{warnings:?}");
    assert!(warnings[1].contains("tunnels[0].token"), "{warnings:?}");

    let public = Overrides {
        host: Some("0.0.0.0".parse().unwrap()),
        ..Overrides::default()
    };
    let p = load(toml, &[], &public)
        .expect_err("refused on 0.0.0.0")
        .problems();
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p.iter()
            .all(|m| m.contains("0.0.0.0") && !m.contains("CHANGE-ME-secret")),
        "{p:?}"
    );
    let env_public = load(
        toml,
        &[("GATEWAY_SERVER__HOST", "192.0.2.1")],
        &Overrides::default(),
    );
    assert!(
        env_public.is_err(),
        "an address from the environment counts too"
    );

    let real = load(
        "[[tunnels]]\nid = \"a\"\ntoken = \"s3cret\"\n",
        &[],
        &public,
    )
    .unwrap();
    assert!(real.warnings().is_empty());
}

/// A key set by a `GATEWAY_*` variable is blamed on the variable, so that a
/// person does not search the file for a value it does not hold.
#[test]
fn a_bad_environment_variable_is_named() {
    let p = load(
        BASE,
        &[
            ("GATEWAY_SERVER__PORT", "eighty"),
            ("GATEWAY_TIMEOUTS__DIRCT", "5s"),
        ],
        &Overrides::default(),
    )
    .expect_err("refused")
    .problems();
    assert!(
        p.iter()
            .any(|m| m.contains("server.port") && m.contains("(set by GATEWAY_SERVER__PORT)")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("timeouts.dirct") && m.contains("(set by GATEWAY_TIMEOUTS__DIRCT)")),
        "{p:?}"
    );
    // A bad value in the file is the file's.
    let p = problems("[server]\nport = \"eighty\"\n[[tunnels]]\nid = \"a\"\n");
    assert!(!p[0].contains("set by"), "{p:?}");
}

/// A secret is never quoted back: not in a syntax error (the parser's own
/// message quotes the line), not in a value of the wrong type.
#[test]
fn problems_never_show_a_secret() {
    for toml in [
        "[[tunnels]]\nid = \"a\"\ntoken = \"supersecret123\n",
        "[[tunnels]]\nid = \"a\"\ntoken = [\"supersecret123\"]\n",
        "[server]\nadmin_token = { a = \"supersecret123\" }\n[[tunnels]]\nid = \"a\"\n",
    ] {
        let p = problems(toml);
        assert!(!p.is_empty());
        for m in &p {
            assert!(!m.contains("supersecret123"), "{m}");
        }
    }
    let p = problems("[[tunnels]]\nid = \"a\"\ntoken = \"supersecret123\n");
    assert!(p[0].contains("line 3"), "{p:?}");
}

/// The placeholder is recognised whatever its case, and a heartbeat interval too
/// long to be of use is refused (it would also overflow the clock).
#[test]
fn placeholders_in_any_case_and_huge_heartbeats() {
    let public = Overrides {
        host: Some("0.0.0.0".parse().unwrap()),
        ..Overrides::default()
    };
    let p = load(
        "[[tunnels]]\nid = \"a\"\ntoken = \"change-me\"\n",
        &[],
        &public,
    )
    .expect_err("refused")
    .problems();
    assert!(p[0].contains("tunnels[0].token"), "{p:?}");
    let p = problems("[timeouts]\nheartbeat = \"300000000000y\"\n[[tunnels]]\nid = \"a\"\n");
    assert!(p.iter().any(|m| m.contains("timeouts.heartbeat")), "{p:?}");
}

/// `[limits]` takes sizes as people write them, shows them back exactly in
/// `--check`, and refuses values no client could live with or that would make
/// a connection expensive, naming the key and the range.
#[test]
fn limits_take_sizes_and_refuse_extremes() {
    let c = load(
        "[limits]\nmax_header_bytes = \"64KiB\"\nmax_uri_length = 4096\nheader_read_timeout = \"5s\"\n[[tunnels]]\nid = \"a\"\n",
        &[("GATEWAY_LIMITS__MAX_HEADERS", "50")],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.limits.max_header_bytes, 64 * 1024);
    assert_eq!(c.limits.max_uri_length, 4096);
    assert_eq!(c.limits.max_headers, 50);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(5));
    let shown = c.to_masked_toml();
    assert!(
        shown.contains("max_header_bytes = \"64KiB\"")
            && shown.contains("max_uri_length = \"4KiB\""),
        "{shown}"
    );

    let p = problems(
        "[limits]\nmax_header_bytes = \"100\"\nmax_uri_length = \"2GiB\"\nmax_headers = 0\nheader_read_timeout = \"0s\"\n[[tunnels]]\nid = \"a\"\n",
    );
    for key in [
        "limits.max_header_bytes = \"100\" is invalid: expected from \"1KiB\" to \"1MiB\"",
        "limits.max_uri_length = \"2GiB\" is invalid",
        "limits.max_headers = 0 is invalid",
        "limits.header_read_timeout = \"0s\" is invalid",
    ] {
        assert!(p.iter().any(|m| m.contains(key)), "{key} not in {p:?}");
    }
    let p = problems("[limits]\nmax_header_bytes = \"lots\"\n[[tunnels]]\nid = \"a\"\n");
    assert!(
        p.iter()
            .any(|m| m.contains("limits.max_header_bytes") && m.contains("expected a size such as")),
        "{p:?}"
    );
}

/// Any tunnel without a token, not only the built-in one, keeps the gateway on
/// loopback.
#[test]
fn open_tunnels_need_loopback() {
    let public = Overrides {
        host: Some("::".parse().unwrap()),
        ..Overrides::default()
    };
    let p = load(
        "[[tunnels]]\nid = \"a\"\ntoken = \"a-real-secret-1\"\n[[tunnels]]\nid = \"b\"\n",
        &[],
        &public,
    )
    .expect_err("refused")
    .problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("tunnels[1] (id \"b\") has no token"),
        "{p:?}"
    );
}
