//! The files in `packaging/` against the code they ship: the systemd units must be
//! valid for `systemd-analyze verify` and agree with the daemon's behaviour (notify,
//! SIGHUP reload, `--check`, a stop timeout above the drain), the agent example
//! must load, and the Debian recipe must name files that exist.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gateway::agent::{self, AgentFile, Upstream};
use gateway::config;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every value of `key=` in a unit, in order (keys may repeat).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

/// The single value of `key=`.
fn value<'a>(unit: &'a str, key: &str) -> &'a str {
    match values(unit, key).as_slice() {
        [v] => v,
        other => panic!("expected one {key}= in the unit, found {other:?}"),
    }
}

/// A systemd time span: "45s", "1min 30s", or a bare number of seconds.
fn timespan(v: &str) -> Duration {
    if let Ok(secs) = v.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    humantime::parse_duration(v).unwrap_or_else(|e| panic!("{v:?} is not a time span: {e}"))
}

/// Hardening both units must keep.
const HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("CapabilityBoundingSet", ""),
];

fn assert_hardened(name: &str, unit: &str) {
    for (key, want) in HARDENING {
        assert_eq!(value(unit, key), *want, "{name}: {key}");
    }
    assert!(
        values(unit, "SystemCallFilter").contains(&"@system-service"),
        "{name}: SystemCallFilter=@system-service"
    );
    let nofile: u64 = value(unit, "LimitNOFILE").parse().expect("a number");
    assert!(nofile >= 65536, "{name}: LimitNOFILE too low for a proxy");
}

#[test]
fn gateway_unit_matches_the_daemon() {
    let unit = read("packaging/gateway.service");
    assert_eq!(value(&unit, "Type"), "notify", "the daemon sends READY=1");
    let start = value(&unit, "ExecStart");
    assert_eq!(start, "/usr/bin/gateway --config /etc/gateway/gateway.toml");
    assert_eq!(
        value(&unit, "ExecStartPre"),
        "/usr/bin/gateway --check --config /etc/gateway/gateway.toml",
        "the config is checked before start, with the same file"
    );
    assert_eq!(value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value(&unit, "Restart"), "on-failure");
    assert_eq!(
        value(&unit, "RestartPreventExitStatus"),
        gateway::EXIT_CONFIG.to_string(),
        "a bad config is not retried"
    );

    // The daemon drains for shutdown_grace, then gives agent sessions up to 5 s more
    // to close (the bound in src/bin/gateway.rs): systemd must not SIGKILL earlier.
    let stop = timespan(value(&unit, "TimeoutStopSec"));
    let drain = config::DEFAULT_SHUTDOWN_GRACE + Duration::from_secs(5);
    assert!(
        stop > drain,
        "TimeoutStopSec={stop:?} must exceed the default drain of {drain:?}"
    );
    // The daemon pings at half WATCHDOG_USEC: anything above a second is safe.
    if let Some(w) = values(&unit, "WatchdogSec").first() {
        assert!(timespan(w) >= Duration::from_secs(2));
    }

    // Identity and directories agree with the shipped config and the postinst.
    assert_eq!(value(&unit, "User"), "gateway");
    assert!(read("packaging/debian/postinst").contains("adduser --system --group"));
    assert_eq!(value(&unit, "LogsDirectory"), "gateway");
    assert_eq!(value(&unit, "ConfigurationDirectory"), "gateway");
    assert!(read("gateway.example.toml").contains("\ndirectory = \"/var/log/gateway\"\n"));
    assert_hardened("gateway.service", &unit);
}

#[test]
fn agent_unit_matches_the_agent() {
    let unit = read("packaging/gateway-agent.service");
    assert_eq!(value(&unit, "Type"), "simple");
    assert_eq!(
        value(&unit, "ExecStart"),
        "/usr/bin/gateway-agent --config /etc/gateway/agent.toml"
    );
    assert_eq!(value(&unit, "EnvironmentFile"), "/etc/gateway/agent.env");
    assert!(read("packaging/agent.env.example").contains("\nGATEWAY_AGENT_TOKEN="));
    assert_eq!(value(&unit, "Restart"), "always");
    let stop = timespan(value(&unit, "TimeoutStopSec"));
    assert!(
        stop > agent::DEFAULT_GRACE,
        "TimeoutStopSec above the agent's grace"
    );
    assert_hardened("gateway-agent.service", &unit);
}

#[test]
fn agent_example_loads() {
    let file = AgentFile::load(&repo("packaging/agent.example.toml"))
        .unwrap_or_else(|e| panic!("packaging/agent.example.toml: {e}"));
    let gateways = file.gateway.map(|g| g.into_vec()).unwrap_or_default();
    assert!(!gateways.is_empty() && gateways.iter().all(|g| g.ends_with("/ws")));
    assert_eq!(file.tunnel.as_deref(), Some("laravel"));
    assert!(file.token.is_none(), "the token belongs in agent.env");
    Upstream::parse(file.upstream.as_deref().expect("upstream is set")).expect("valid upstream");
    assert_eq!(
        file.grace,
        Some(agent::DEFAULT_GRACE),
        "grace shows its default"
    );
    // Every key the agent knows is shown (the token commented out).
    let text = read("packaging/agent.example.toml");
    for key in ["gateway", "tunnel", "token", "upstream", "grace"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
            "agent.example.toml does not show {key}"
        );
    }
}

#[test]
fn deb_recipe_names_existing_files() {
    let text = read("Cargo.toml");
    let doc: toml::Table = toml::from_str(&text).expect("valid TOML");
    let deb = doc["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]");
    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    assert!(repo(scripts).join("postinst").is_file());
    // cargo deb adds debhelper's unit handling where the marker is; units are
    // enabled, started and restarted through deb-systemd-helper/-invoke only.
    for script in ["postinst", "postrm"] {
        let text = read(&format!("{scripts}{script}"));
        assert_eq!(text.matches("#DEBHELPER#").count(), 1, "{script}");
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("systemctl")),
            "{script} calls systemctl itself"
        );
    }
    let mut dests = Vec::new();
    for unit in deb["systemd-units"].as_array().expect("systemd-units") {
        let name = unit["unit-name"].as_str().expect("unit-name");
        let dir = unit["unit-scripts"].as_str().expect("unit-scripts");
        assert!(repo(&format!("{dir}{name}.service")).is_file(), "{name}");
        assert_eq!(unit["enable"].as_bool(), Some(false), "{name} enabled");
        assert_eq!(unit["start"].as_bool(), Some(false), "{name} started");
        dests.push(format!("/usr/lib/systemd/system/{name}.service"));
    }
    for asset in deb["assets"].as_array().expect("assets") {
        let [src, dest, mode] = asset.as_array().expect("[src, dest, mode]").as_slice() else {
            panic!("an asset is [source, destination, mode]: {asset}");
        };
        let (src, dest) = (src.as_str().unwrap(), dest.as_str().unwrap());
        u32::from_str_radix(mode.as_str().unwrap(), 8).expect("an octal mode");
        // Binaries are built by `cargo deb` itself, man pages and completions by
        // `cargo xtask assets`; everything else must exist now.
        if !src.starts_with("target/") {
            assert!(repo(src).is_file(), "deb asset {src} does not exist");
        }
        let name = Path::new(src).file_name().unwrap().to_str().unwrap();
        dests.push(if dest.ends_with('/') {
            format!("/{dest}{name}")
        } else {
            format!("/{dest}")
        });
    }
    for path in [
        "/usr/bin/gateway",
        "/usr/bin/gateway-agent",
        "/etc/gateway/gateway.toml",
        "/etc/gateway/agent.toml",
        "/etc/gateway/agent.env",
        "/usr/lib/systemd/system/gateway.service",
        "/usr/lib/systemd/system/gateway-agent.service",
        "/usr/share/man/man8/gateway.8",
        "/usr/share/man/man8/gateway-agent.8",
        "/usr/share/man/man5/gateway.toml.5",
        "/usr/share/bash-completion/completions/gateway",
        "/usr/share/zsh/vendor-completions/_gateway",
        "/usr/share/fish/vendor_completions.d/gateway.fish",
        "/usr/share/lintian/overrides/gateway",
    ] {
        assert!(
            dests.iter().any(|d| d == path),
            "the package installs {path}"
        );
    }
    for conf in deb["conf-files"].as_array().expect("conf-files") {
        let conf = conf.as_str().unwrap();
        assert!(
            dests.iter().any(|d| d == conf),
            "conf-file {conf} is an asset"
        );
    }
}

/// `systemd-analyze verify` on both units, when the tool is installed.
///
/// `verify` refuses a unit whose ExecStart binary does not exist, and the units
/// name /usr/bin/gateway, which exists only once the package is installed. So each
/// unit is copied to a temporary directory with its ExecStart/ExecStartPre
/// programs rewritten to the binaries cargo just built, and that copy is verified.
#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed (CI installs systemd and runs it)");
        return;
    }
    let binaries = [
        (
            "/usr/bin/gateway-agent",
            env!("CARGO_BIN_EXE_gateway-agent"),
        ),
        ("/usr/bin/gateway", env!("CARGO_BIN_EXE_gateway")),
    ];
    for name in ["gateway.service", "gateway-agent.service"] {
        let original = read(&format!("packaging/{name}"));
        let rewritten: String = original
            .lines()
            .map(|line| {
                let exec = ["ExecStart=", "ExecStartPre="]
                    .iter()
                    .find(|k| line.starts_with(*k));
                let Some(key) = exec else {
                    return format!("{line}\n");
                };
                let command = &line[key.len()..];
                let (program, args) = command.split_once(' ').unwrap_or((command, ""));
                let built = binaries
                    .iter()
                    .find(|(installed, _)| *installed == program)
                    .map(|(_, built)| *built)
                    .unwrap_or_else(|| panic!("{name}: unexpected program {program}"));
                format!("{key}{built} {args}\n")
            })
            .collect();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("packaging-verify-{}", std::process::id()))
            .join(name.trim_end_matches(".service"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, rewritten).unwrap();

        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "systemd-analyze verify {name} failed ({}):\n{stdout}{stderr}",
            out.status
        );
        // Unknown or misspelt keys are only warnings ("<path>:12: Unknown key ...,
        // ignoring") and leave the exit code at 0, so look for any line about our
        // unit. Complaints about other units of this machine are not ours.
        let ours: Vec<&str> = stdout
            .lines()
            .chain(stderr.lines())
            .filter(|l| l.contains(name))
            .collect();
        assert!(
            ours.is_empty(),
            "systemd-analyze verify {name} warns:\n{}",
            ours.join("\n")
        );
    }
}
