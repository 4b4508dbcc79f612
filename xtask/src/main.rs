//! `cargo xtask assets [DIR]`: writes what the Debian package installs beside the
//! binaries, generated from the sources that cannot disagree with them:
//!
//! - `man/gateway.8`, `man/gateway-agent.8`: from the clap definitions
//!   (`gateway::cli`), plus the files, signals, exit codes and environment;
//! - `man/gateway.toml.5`: from `gateway.example.toml`, the file that
//!   `tests/example_config.rs` holds to the code, read through
//!   `gateway::config::example`;
//! - `completions/`: bash, zsh and fish completions for both programs;
//! - `THIRD-PARTY-NOTICES`: the license of every crate linked into the
//!   binaries, with the license texts each ships (their licenses ask for the
//!   notices in binary copies).
//!
//! DIR defaults to `target/assets`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use gateway::cli::{AgentCli, GatewayCli};
use gateway::config::example;
use roff::{Roff, bold, italic, roman};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("assets"), dir) = (args.first().map(String::as_str), args.get(1)) else {
        eprintln!("usage: cargo xtask assets [DIR]   (DIR defaults to target/assets)");
        return ExitCode::from(64);
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = dir.map_or_else(|| root.join("target/assets"), PathBuf::from);
    match assets(&root, &out) {
        Ok(()) => {
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn assets(root: &Path, out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    program_page(
        GatewayCli::command(),
        GATEWAY_SECTIONS,
        &man.join("gateway.8"),
    )?;
    program_page(
        AgentCli::command(),
        AGENT_SECTIONS,
        &man.join("gateway-agent.8"),
    )?;
    let example = std::fs::read_to_string(root.join("gateway.example.toml"))?;
    std::fs::write(man.join("gateway.toml.5"), config_page(&example))?;

    std::fs::write(out.join("THIRD-PARTY-NOTICES"), notices(root)?)?;

    for mut cmd in [GatewayCli::command(), AgentCli::command()] {
        let name = cmd.get_name().to_owned();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
        }
    }
    Ok(())
}

/// The crates the gateway package links (its normal dependencies, for this
/// machine's target), each with its license and the license files it ships.
fn notices(root: &Path) -> std::io::Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let host = host_target(&cargo)?;
    let output = std::process::Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &host,
        ])
        .current_dir(root)
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other("cargo metadata failed"));
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let packages: std::collections::HashMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    // From the gateway package, along normal (linked) dependencies only.
    let start = packages
        .iter()
        .find(|(_, p)| p["name"] == "gateway")
        .map(|(id, _)| *id)
        .ok_or_else(|| std::io::Error::other("no gateway package"))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![start];
    while let Some(id) = todo.pop() {
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let linked = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if let Some(dep_id) = dep["pkg"].as_str()
                && linked
                && seen.insert(dep_id)
            {
                todo.push(dep_id);
            }
        }
    }
    let mut text = String::from(
        "Third-party software in the gateway package\n\n\
         The programs gateway and gateway-agent are built from these crates\n\
         (crates.io), under the licenses named; the texts each crate ships follow.\n",
    );
    let mut crates: Vec<&serde_json::Value> = seen
        .iter()
        .filter_map(|id| packages.get(id).copied())
        .collect();
    crates.sort_by_key(|p| (p["name"].as_str(), p["version"].as_str()));
    for p in crates {
        let name = p["name"].as_str().unwrap_or("?");
        let version = p["version"].as_str().unwrap_or("?");
        let license = p["license"].as_str().unwrap_or("(see the crate)");
        text.push_str(&format!(
            "\n{}\n{name} {version}: {license}\n",
            "=".repeat(78)
        ));
        let dir = p["manifest_path"]
            .as_str()
            .map(Path::new)
            .and_then(Path::parent);
        let mut files: Vec<PathBuf> = dir
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                let n = f.file_name().map(|n| n.to_string_lossy().to_uppercase());
                n.is_some_and(|n| {
                    ["LICENSE", "LICENCE", "COPYING", "NOTICE", "COPYRIGHT"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
            })
            .collect();
        files.sort();
        for f in files {
            if let Ok(body) = std::fs::read_to_string(&f) {
                let shown = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                text.push_str(&format!("\n--- {shown}\n\n{}\n", body.trim_end()));
            }
        }
    }
    Ok(text)
}

/// This machine's target triple (`rustc -vV`).
fn host_target(cargo: &str) -> std::io::Result<String> {
    let rustc = Path::new(cargo).with_file_name("rustc");
    let rustc = if rustc.exists() {
        rustc
    } else {
        PathBuf::from("rustc")
    };
    let out = std::process::Command::new(rustc).arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| std::io::Error::other("rustc -vV names no host"))
}

/// A section of a program's page: a title and paragraphs; a paragraph that
/// starts with `TP ` is a tagged one (`TP tag\ntext`).
type Sections = &'static [(&'static str, &'static [&'static str])];

const GATEWAY_SECTIONS: Sections = &[
    (
        "SIGNALS",
        &[
            "TP SIGHUP\nReload the configuration: tunnels, tokens, timeouts and the log level apply at once; settings that need a restart are named in the log. A file that does not validate is refused and the running configuration kept.",
            "TP SIGTERM, SIGINT\nStop accepting, let requests in flight finish within timeouts.shutdown_grace, close agent sessions with WebSocket code 1001, exit 0. A second signal exits at once.",
        ],
    ),
    (
        "EXIT STATUS",
        &[
            "TP 0\nStopped by a signal, or --check found the configuration valid.",
            "TP 1\nCould not start: the port is taken, signal handlers or the runtime could not be set up.",
            "TP 64\nBad command-line usage.",
            "TP 78\nThe configuration is invalid (every problem is printed), or the log file cannot be opened. systemd does not restart the unit for it (RestartPreventExitStatus=78).",
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            "TP GATEWAY_CONFIG\nThe configuration file, as --config.",
            "TP GATEWAY_<SECTION>__<KEY>\nOverrides one key of the file, e.g. GATEWAY_SERVER__PORT=4000; flags override these.",
            "TP RUST_LOG\nA tracing filter that wins over log.level and --log-level.",
            "TP NOTIFY_SOCKET, WATCHDOG_USEC\nSet by systemd: readiness (READY=1 once the port is bound), status and watchdog pings.",
        ],
    ),
    (
        "FILES",
        &[
            "TP /etc/gateway/gateway.toml\nThe configuration (see gateway.toml(5)); it holds tunnel tokens, so it is readable by root and the gateway group only.",
            "TP /var/log/gateway/\nLog files, when log.directory says so; rotated and pruned by the daemon.",
            "TP /var/lib/gateway/\nState kept across restarts.",
            "TP /usr/share/doc/gateway/OPERATIONS.md\nInstalling, configuring and operating the gateway.",
        ],
    ),
    (
        "SEE ALSO",
        &["gateway.toml(5), gateway-agent(8), systemctl(1), journalctl(1)"],
    ),
];

const AGENT_SECTIONS: Sections = &[
    (
        "SIGNALS",
        &[
            "TP SIGTERM, SIGINT\nTell each gateway that the agent is leaving, let open requests finish within --grace, then exit 0. A second signal exits at once.",
        ],
    ),
    (
        "EXIT STATUS",
        &[
            "TP 0\nStopped by a signal.",
            "TP 1\nA gateway refused the agent for a reason that retrying cannot fix (unknown tunnel, wrong token), or signal handlers could not be set up.",
            "TP 64\nBad command-line usage.",
            "TP 78\nThe settings are invalid or incomplete.",
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            "TP GATEWAY_AGENT_TOKEN\nThe tunnel's token, as --token, but not shown by ps(1).",
            "TP RUST_LOG\nA tracing filter that wins over --log-level.",
            "TP SSL_CERT_FILE, SSL_CERT_DIR\nTrusted roots for wss:// gateways, instead of the system's.",
        ],
    ),
    (
        "FILES",
        &[
            "TP /etc/gateway/agent.toml\nThe settings of the packaged unit: gateway, tunnel, upstream, grace.",
            "TP /etc/gateway/agent.env\nGATEWAY_AGENT_TOKEN for the packaged unit, readable by root only.",
        ],
    ),
    ("SEE ALSO", &["gateway(8), gateway.toml(5)"]),
];

/// A program's page: clap's name, synopsis, description and options, then the
/// sections above.
fn program_page(cmd: Command, sections: Sections, path: &Path) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("gateway {}", version()));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    let mut roff = Roff::new();
    for (title, paragraphs) in sections {
        roff.control("SH", [*title]);
        for p in *paragraphs {
            match p.strip_prefix("TP ").and_then(|tp| tp.split_once('\n')) {
                Some((tag, text)) => {
                    roff.control("TP", [] as [&str; 0])
                        .text([bold(tag)])
                        .text([roman(text)]);
                }
                None => {
                    roff.control("PP", [] as [&str; 0]).text([roman(*p)]);
                }
            }
        }
    }
    page.write_all(roff.render().as_bytes())?;
    std::fs::write(path, page)
}

/// The gateway's version, without the commit (`gateway::VERSION` has both).
fn version() -> &'static str {
    gateway::VERSION
        .split(' ')
        .next()
        .unwrap_or(gateway::VERSION)
}

/// `gateway.toml(5)`: the example's introduction, then each key with its value
/// as the example shows it and the comment above it.
fn config_page(example: &str) -> String {
    let mut roff = Roff::new();
    roff.control(
        "TH",
        [
            "GATEWAY.TOML",
            "5",
            "",
            &format!("gateway {}", version()),
            "File Formats Manual",
        ],
    );
    // Left-aligned: long values (a 64-digit digest) would stretch justified lines.
    roff.control("ad", ["l"]);
    roff.control("SH", ["NAME"])
        .text([roman("gateway.toml - configuration of the gateway daemon")]);
    roff.control("SH", ["SYNOPSIS"])
        .text([italic("/etc/gateway/gateway.toml")]);
    roff.control("SH", ["DESCRIPTION"]);
    let mut code = false;
    // The first paragraph is the example file's title line.
    let intro = example::intro(example);
    let body = intro.iter().skip_while(|l| !l.is_empty()).skip(1);
    for line in body {
        let indented = line.starts_with("    ");
        if indented != code {
            roff.control(if indented { "nf" } else { "fi" }, [] as [&str; 0]);
            code = indented;
        }
        match (line.trim(), code) {
            ("", false) => {
                roff.control("PP", [] as [&str; 0]);
            }
            ("", true) => {}
            (text, _) => {
                roff.text([roman(text)]);
            }
        }
    }
    if code {
        roff.control("fi", [] as [&str; 0]);
    }
    let mut seen = Vec::new();
    let mut section = String::new();
    for key in example::scan(example) {
        let name = format!("{}.{}", key.section, key.key);
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        if key.section != section {
            section = key.section.clone();
            let title = match section.as_str() {
                "tunnels" => "[[tunnels]]".to_owned(),
                other => format!("[{other}]"),
            };
            roff.control("SH", [title.as_str()]);
        }
        let shown = if key.commented {
            format!("{} = {} (an example; unset by default)", key.key, key.value)
        } else {
            format!("{} = {}", key.key, key.value)
        };
        roff.control("TP", [] as [&str; 0])
            .text([bold(shown)])
            .text([roman(key.doc.trim())]);
    }
    roff.control("SH", ["SEE ALSO"]).text([roman(
        "gateway(8), gateway-agent(8); /usr/share/doc/gateway/OPERATIONS.md",
    )]);
    roff.render()
}
