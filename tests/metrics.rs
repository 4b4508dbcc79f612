//! Metrics, as an operator scrapes them: the real `gateway` binary with its
//! admin listener on a free loopback port, real agents, a real upstream, real
//! clients, and every scrape read by a Prometheus text-format parser.
//!
//! What is checked is what an operator relies on: requests counted by tunnel,
//! method and status class; refusals by their `x-gateway-error` code; agents,
//! reloads and the process itself; label values that come only from the
//! configuration (never from what a client sends); and an admin listener that
//! is open to this machine and asks anyone else for the admin token.
//!
//! Every wait polls for an event with a bound; nothing sleeps for a fixed time.

mod common;

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway::agent::AgentConfig;
use prometheus_parse::{LineInfo, Sample, Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::process::{Process, TempDir};
use common::*;

/// How long the daemon may take to log a line.
const LOG_WAIT: Duration = Duration::from_secs(15);

/// The admin listener on a free loopback port.
const ADMIN: &str = "[admin]\nenabled = true\nhost = \"127.0.0.1\"\nport = 0\n";

/// The method labels the gateway may use: a fixed set, whatever clients send.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// The status class labels.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

// -----------------------------------------------------------------------------
// The daemon, its log, and its scrapes.
// -----------------------------------------------------------------------------

/// A `gateway` process started with a config file, and where it listens.
struct Daemon {
    process: Process,
    dir: TempDir,
    /// The public listener.
    public: SocketAddr,
    /// The admin listener.
    admin: SocketAddr,
}

impl Daemon {
    /// Starts the binary with `toml` (which must begin with a table header) and
    /// the admin listener on port 0; returns once both addresses are logged.
    async fn start(toml: &str) -> Daemon {
        let dir = TempDir::new();
        let process = spawn_gateway(&dir, &format!("{ADMIN}{toml}"));
        let public = public_addr(&process).await;
        let admin = addr_after(
            &wait_log(&process, "admin listening on ", |l| {
                l.contains("admin listening on ")
            })
            .await,
            "admin listening on ",
        );
        Daemon {
            process,
            dir,
            public,
            admin,
        }
    }

    /// Replaces the config file (the admin listener kept) for a later SIGHUP.
    fn rewrite(&self, toml: &str) {
        self.dir.write("gateway.toml", &format!("{ADMIN}{toml}"));
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Scrapes `/metrics` from this machine (no token, no forwarding headers).
    async fn scrape(&self) -> Metrics {
        let resp = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("scrape /metrics");
        assert_eq!(
            resp.status(),
            200,
            "a loopback scrape of the admin listener; log:\n{}",
            self.process.log()
        );
        Metrics::parse(resp.text().await.expect("scrape body"))
    }

    /// An agent of `tunnel` (with `token`) forwarding to `upstream`, connected
    /// to the public listener's `/ws`.
    async fn agent(
        &self,
        tunnel: &str,
        token: Option<&str>,
        upstream: &TestUpstream,
    ) -> Result<TestAgent, gateway::agent::AgentError> {
        TestAgent::start_with(AgentConfig {
            gateway: format!("ws://{}/ws", self.public),
            tunnel: tunnel.to_owned(),
            token: token.map(gateway::config::Secret::new),
            upstream: upstream.url(),
            grace: Duration::from_secs(5),
            wait_upstream: false,
        })
        .await
    }

    /// Polls the scrape until `gateway_agents_connected{tunnel}` is `n`.
    async fn wait_agents_connected(&self, tunnel: &str, n: f64) -> Metrics {
        let mut last: Option<f64>;
        eventually!(
            {
                let m = self.scrape().await;
                last = m.get("gateway_agents_connected", &[("tunnel", tunnel)]);
                (last == Some(n)).then_some(m)
            },
            "gateway_agents_connected{{tunnel={tunnel:?}}} to be {n} (last seen {last:?})"
        )
    }
}

/// Writes `toml` as `gateway.toml` in `dir` and starts the binary on it, the
/// public listener on port 0.
fn spawn_gateway(dir: &TempDir, toml: &str) -> Process {
    let cfg = dir.write("gateway.toml", toml);
    Process::gateway(
        &["--port", "0", "--config", cfg.to_str().expect("utf-8 path")],
        &[],
    )
}

/// Waits for a log line that `pred` accepts (without blocking the runtime).
async fn wait_log(process: &Process, what: &str, pred: impl Fn(&str) -> bool) -> String {
    eventually!(
        within LOG_WAIT => process.log().lines().find(|l| pred(l)).map(str::to_owned),
        "a log line about {what:?}; got:\n{}",
        process.log()
    )
}

/// The public listener's address: the "listening on" line that is not the
/// admin listener's.
async fn public_addr(process: &Process) -> SocketAddr {
    let line = wait_log(process, "listening on (public)", |l| {
        l.contains("listening on ") && !l.contains("admin listening on ")
    })
    .await;
    addr_after(&line, "listening on ")
}

/// The socket address right after `needle` in a log line.
fn addr_after(line: &str, needle: &str) -> SocketAddr {
    let rest = line
        .split(needle)
        .nth(1)
        .unwrap_or_else(|| panic!("{needle:?} in {line:?}"));
    rest.split(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
        .next()
        .unwrap_or("")
        .parse()
        .unwrap_or_else(|e| panic!("no address after {needle:?} in {line:?}: {e}"))
}

/// One scrape: its text and its samples as the parser read them.
struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses a scrape; panics on a sample line the parser cannot read (it
    /// would skip it silently, and the series would look absent).
    fn parse(text: String) -> Metrics {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // `name{} 1` is valid, but beyond this parser's grammar.
            let line = line.replacen("{}", "", 1);
            match LineInfo::parse(&line) {
                LineInfo::Sample { value, .. } => assert!(
                    matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok(),
                    "sample value {value:?} is not a number: {line:?}"
                ),
                other => panic!("not a sample line ({other:?}): {line:?}"),
            }
        }
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.replacen("{}", "", 1))))
            .expect("the scrape parses");
        Metrics {
            text,
            samples: scrape.samples,
        }
    }

    /// The series of `name` whose labels include every pair of `labels`.
    fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of the one series of `name` with `labels` (None if there is
    /// none; panics if several match).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.series(name, labels).collect();
        assert!(
            found.len() <= 1,
            "several series of {name} match {labels:?}: {found:?}"
        );
        found.first().map(|s| number(&s.value))
    }

    /// The sum over the series of `name` with `labels` (0 when none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).map(|s| number(&s.value)).sum()
    }

    /// Every value of label `label`, over all series.
    fn label_values(&self, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter_map(|s| s.labels.get(label).map(str::to_owned))
            .collect()
    }

    /// Panics with the scrape if `text` occurs in it anywhere (a name, a label
    /// value, a help text).
    #[track_caller]
    fn assert_absent(&self, text: &str, what: &str) {
        assert!(
            !self.text.contains(text),
            "{what}: {text:?} is in the scrape:\n{}",
            self.text
        );
    }
}

/// A sample's number: a counter's, gauge's or untyped value, or a histogram's
/// `+Inf` bucket.
fn number(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than == f64::INFINITY)
            .map_or(f64::NAN, |b| b.count),
        Value::Summary(_) => panic!("no summary is expected"),
    }
}

/// A name no configuration has, different on every call and every run.
fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", RandomState::new().hash_one(prefix))
}

/// The soft `Max open files` of process `pid`.
fn max_open_files(pid: u32) -> f64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line["Max open files".len()..]
        .split_whitespace()
        .next()
        .expect("soft limit")
        .parse()
        .expect("a number")
}

// -----------------------------------------------------------------------------
// Requests.
// -----------------------------------------------------------------------------

/// N GETs and M POSTs through tunnel `app`: each counted by method and status
/// class, their bodies in the byte counters, each timed in the histogram, none
/// left in flight; `other`, configured without an agent, shows 0 agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_tunnel_method_and_status() {
    const GETS: usize = 5;
    const POSTS: usize = 3;
    const GET_BYTES: usize = 10_000;
    const POST_BYTES: usize = 7_000;

    let up = TestUpstream::start().await;
    let d = Daemon::start("[[tunnels]]\nid = \"app\"\n[[tunnels]]\nid = \"other\"\n").await;
    let _agent = d.agent("app", None, &up).await.expect("agent connects");
    d.wait_agents_connected("app", 1.0).await;

    let client = client();
    for _ in 0..GETS {
        let resp = client
            .get(d.url(&format!("/bytes?n={GET_BYTES}")))
            .header("x-tunnel-id", "app")
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.expect("body").len(), GET_BYTES);
    }
    let mut answered = GETS * GET_BYTES;
    for _ in 0..POSTS {
        let resp = client
            .post(d.url("/sink"))
            .header("x-tunnel-id", "app")
            .body(vec![b'p'; POST_BYTES])
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.expect("body");
        assert!(text.starts_with(&format!("{POST_BYTES} ")), "{text}");
        answered += text.len();
    }
    let sent = POSTS * POST_BYTES;
    let total = (GETS + POSTS) as f64;

    // Counted once the last body has gone out: poll until everything is in.
    let app = [("tunnel", "app")];
    let get_2xx = [("tunnel", "app"), ("method", "GET"), ("status", "2xx")];
    let post_2xx = [("tunnel", "app"), ("method", "POST"), ("status", "2xx")];
    let mut last: String;
    let m = eventually!(
        {
            let m = d.scrape().await;
            let done = m.sum("gateway_requests_total", &get_2xx) >= GETS as f64
                && m.sum("gateway_requests_total", &post_2xx) >= POSTS as f64
                && m.sum("gateway_request_duration_seconds_count", &app) >= total
                && m.sum("gateway_request_bytes_total", &app) >= sent as f64
                && m.sum("gateway_response_bytes_total", &app) >= answered as f64
                && m.get("gateway_requests_in_flight", &app) == Some(0.0);
            last = m.text.clone();
            done.then_some(m)
        },
        "every request of tunnel app to be counted, and none in flight; last scrape:\n{last}"
    );

    assert_eq!(
        m.get("gateway_requests_total", &get_2xx),
        Some(GETS as f64),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("gateway_requests_total", &post_2xx),
        Some(POSTS as f64),
        "{}",
        m.text
    );
    let request_bytes = m
        .get("gateway_request_bytes_total", &app)
        .expect("request bytes");
    assert!(request_bytes >= sent as f64, "{request_bytes} < {sent}");
    let response_bytes = m
        .get("gateway_response_bytes_total", &app)
        .expect("response bytes");
    assert!(
        response_bytes >= answered as f64,
        "{response_bytes} < {answered}"
    );

    // The histogram: one observation per request, buckets cumulative.
    assert_eq!(
        m.get("gateway_request_duration_seconds_count", &app),
        Some(total),
        "{}",
        m.text
    );
    let sum = m
        .get("gateway_request_duration_seconds_sum", &app)
        .expect("histogram sum");
    assert!(sum > 0.0 && sum.is_finite(), "duration sum {sum}");
    let histogram = m
        .series("gateway_request_duration_seconds", &app)
        .find_map(|s| match &s.value {
            Value::Histogram(buckets) => Some(buckets.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram buckets for tunnel app:\n{}", m.text));
    let mut buckets = histogram;
    buckets.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "buckets are cumulative: {buckets:?}"
    );
    assert_eq!(
        buckets.last().map(|b| (b.less_than, b.count)),
        Some((f64::INFINITY, total)),
        "the +Inf bucket holds every request"
    );

    assert_eq!(m.get("gateway_requests_in_flight", &app), Some(0.0));
    assert_eq!(
        m.get("gateway_agents_connected", &[("tunnel", "app")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("gateway_agents_connected", &[("tunnel", "other")]),
        Some(0.0),
        "a configured tunnel without agents shows 0:\n{}",
        m.text
    );
    assert_eq!(
        m.sum("gateway_requests_total", &[("tunnel", "other")]),
        0.0,
        "nothing was sent to tunnel other"
    );
}

/// Refusals are counted by their code; a Host or X-Tunnel-Id naming a tunnel
/// that does not exist is counted under tunnel "" and its name appears nowhere,
/// nor does a made-up method: every label value comes from the configuration
/// or a fixed set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_and_labels_stay_bounded() {
    const PER_WAY: usize = 4;

    let up = TestUpstream::start().await;
    let d = Daemon::start(
        "[server]\npublic_domain = \"tunnels.test\"\n\
         [[tunnels]]\nid = \"app\"\n\
         [[tunnels]]\nid = \"blocked\"\ndeny_ips = [\"127.0.0.1\"]\n\
         [[tunnels]]\nid = \"idle\"\nagent_wait = \"0s\"\n",
    )
    .await;
    let _app = d.agent("app", None, &up).await.expect("agent connects");
    let _blocked = d.agent("blocked", None, &up).await.expect("agent connects");
    d.wait_agents_connected("app", 1.0).await;
    d.wait_agents_connected("blocked", 1.0).await;

    let client = client();
    let code = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-gateway-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    // Unknown tunnels, named by Host and by X-Tunnel-Id.
    let mut invented = Vec::new();
    for _ in 0..PER_WAY {
        let name = random_name("ghost");
        let resp = client
            .get(d.url("/x"))
            .header("host", format!("{name}.tunnels.test"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 404, "Host {name}.tunnels.test");
        assert_eq!(code(&resp).as_deref(), Some("unknown_tunnel"));
        invented.push(name);

        let name = random_name("phantom");
        let resp = client
            .get(d.url("/x"))
            .header("x-tunnel-id", &name)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 404, "X-Tunnel-Id {name}");
        assert_eq!(code(&resp).as_deref(), Some("unknown_tunnel"));
        invented.push(name);
    }
    // No tunnel named, and no default among three.
    let resp = client.get(d.url("/x")).send().await.expect("request");
    assert_eq!(resp.status(), 404);
    assert_eq!(code(&resp).as_deref(), Some("no_tunnel"));
    // A denied address.
    let resp = client
        .get(d.url("/x"))
        .header("x-tunnel-id", "blocked")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);
    assert_eq!(code(&resp).as_deref(), Some("forbidden"));
    // A tunnel without an agent, which does not wait for one.
    let resp = client
        .get(d.url("/x"))
        .header("x-tunnel-id", "idle")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 503);
    assert_eq!(code(&resp).as_deref(), Some("no_agent"));
    // A method no one has heard of, through a working tunnel.
    let brew = reqwest::Method::from_bytes(b"BREW").expect("method");
    let resp = client
        .request(brew, d.url("/pot"))
        .header("x-tunnel-id", "app")
        .send()
        .await
        .expect("request");
    let _ = resp.bytes().await;

    let unknown = [("tunnel", ""), ("reason", "unknown_tunnel")];
    let mut last: String;
    let m = eventually!(
        {
            let m = d.scrape().await;
            let done = m.sum("gateway_refusals_total", &unknown) >= (2 * PER_WAY) as f64
                && m.sum("gateway_refusals_total", &[("reason", "no_tunnel")]) >= 1.0
                && m.sum("gateway_refusals_total", &[("reason", "forbidden")]) >= 1.0
                && m.sum("gateway_refusals_total", &[("reason", "no_agent")]) >= 1.0
                && m.sum(
                    "gateway_requests_total",
                    &[("tunnel", "app"), ("method", "OTHER")],
                ) >= 1.0;
            last = m.text.clone();
            done.then_some(m)
        },
        "every refusal and the BREW request to be counted; last scrape:\n{last}"
    );

    // Each refusal under its code, and in the request counter by status class.
    assert_eq!(
        m.get("gateway_refusals_total", &unknown),
        Some((2 * PER_WAY) as f64),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "gateway_refusals_total",
            &[("tunnel", ""), ("reason", "no_tunnel")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "gateway_requests_total",
            &[("tunnel", ""), ("method", "GET"), ("status", "4xx")]
        ),
        Some((2 * PER_WAY + 1) as f64),
        "refused requests count as requests too:\n{}",
        m.text
    );
    assert_eq!(
        m.get(
            "gateway_refusals_total",
            &[("tunnel", "blocked"), ("reason", "forbidden")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "gateway_requests_total",
            &[("tunnel", "blocked"), ("method", "GET"), ("status", "4xx")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "gateway_refusals_total",
            &[("tunnel", "idle"), ("reason", "no_agent")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "gateway_requests_total",
            &[("tunnel", "idle"), ("method", "GET"), ("status", "5xx")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "gateway_requests_total",
            &[("tunnel", "app"), ("method", "OTHER")]
        ),
        1.0,
        "BREW counts as OTHER:\n{}",
        m.text
    );

    // Cardinality: only configured tunnels (or ""), fixed methods and classes.
    for name in &invented {
        m.assert_absent(name, "an unknown tunnel's name");
    }
    m.assert_absent("BREW", "a made-up method");
    let tunnels = m.label_values("tunnel");
    let allowed: BTreeSet<String> = ["", "app", "blocked", "idle"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert!(
        tunnels.is_subset(&allowed),
        "tunnel labels {tunnels:?} beyond the configured {allowed:?}"
    );
    for method in m.label_values("method") {
        assert!(
            METHODS.contains(&method.as_str()),
            "method label {method:?}"
        );
    }
    for status in m
        .series("gateway_requests_total", &[])
        .filter_map(|s| s.labels.get("status"))
    {
        assert!(
            STATUS_CLASSES.contains(&status),
            "status label {status:?} is not a class"
        );
    }
}

// -----------------------------------------------------------------------------
// Agents.
// -----------------------------------------------------------------------------

/// A wrong token and an unknown tunnel are counted as agent refusals (the
/// unknown name under tunnel ""); an agent that connects and leaves is counted
/// in and out, and the gauge comes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_counted_in_and_out() {
    let up = TestUpstream::start().await;
    let d = Daemon::start(
        "[[tunnels]]\nid = \"secure\"\ntoken = \"the-right-agent-token\"\n\
         [[tunnels]]\nid = \"app\"\n",
    )
    .await;

    let refused = d.agent("secure", Some("not-the-agent-token"), &up).await;
    assert!(refused.is_err(), "an agent with a wrong token was accepted");
    let nowhere = random_name("nowhere");
    let refused = d.agent(&nowhere, None, &up).await;
    assert!(
        refused.is_err(),
        "an agent of an unknown tunnel was accepted"
    );

    let bad_token = [("tunnel", "secure"), ("reason", "bad_token")];
    let unknown = [("tunnel", ""), ("reason", "unknown_tunnel")];
    let mut last: String;
    let m = eventually!(
        {
            let m = d.scrape().await;
            let done = m.sum("gateway_agent_refusals_total", &bad_token) >= 1.0
                && m.sum("gateway_agent_refusals_total", &unknown) >= 1.0;
            last = m.text.clone();
            done.then_some(m)
        },
        "both agent refusals to be counted; last scrape:\n{last}"
    );
    assert!(m.get("gateway_agent_refusals_total", &bad_token) >= Some(1.0));
    assert!(m.get("gateway_agent_refusals_total", &unknown) >= Some(1.0));
    m.assert_absent(&nowhere, "the unknown tunnel an agent named");
    assert_eq!(
        m.sum("gateway_agent_connects_total", &[("tunnel", "secure")]),
        0.0,
        "a refused agent is not a connect"
    );
    assert_eq!(
        m.get("gateway_agents_connected", &[("tunnel", "secure")]),
        Some(0.0)
    );

    let agent = d.agent("app", None, &up).await.expect("agent connects");
    let m = d.wait_agents_connected("app", 1.0).await;
    assert_eq!(
        m.get("gateway_agent_connects_total", &[("tunnel", "app")]),
        Some(1.0),
        "{}",
        m.text
    );

    agent.stop().await;
    let m = d.wait_agents_connected("app", 0.0).await;
    assert_eq!(
        m.get("gateway_agent_connects_total", &[("tunnel", "app")]),
        Some(1.0),
        "{}",
        m.text
    );
    let disconnects = m.sum("gateway_agent_disconnects_total", &[("tunnel", "app")]);
    assert!(
        disconnects >= 1.0,
        "the agent's leave is a disconnect (got {disconnects}):\n{}",
        m.text
    );
    assert!(
        m.series("gateway_agent_disconnects_total", &[("tunnel", "app")])
            .all(|s| s.labels.get("reason").is_some_and(|r| !r.is_empty())),
        "each disconnect has a reason:\n{}",
        m.text
    );
}

// -----------------------------------------------------------------------------
// Reloads.
// -----------------------------------------------------------------------------

/// SIGHUP with a good file counts `result="ok"` (and the new tunnel gets its
/// agents gauge); with a broken one, `result="failed"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_counted_by_result() {
    let d = Daemon::start("[[tunnels]]\nid = \"app\"\n").await;
    let ok = [("result", "ok")];
    let failed = [("result", "failed")];
    let m = d.scrape().await;
    assert_eq!(m.sum("gateway_reloads_total", &ok), 0.0, "{}", m.text);
    assert_eq!(m.sum("gateway_reloads_total", &failed), 0.0, "{}", m.text);

    d.rewrite("[[tunnels]]\nid = \"app\"\n[[tunnels]]\nid = \"two\"\n");
    d.process.signal("HUP");
    wait_log(&d.process, "configuration reloaded", |l| {
        l.contains("configuration reloaded")
    })
    .await;
    let mut last: String;
    let m = eventually!(
        {
            let m = d.scrape().await;
            last = m.text.clone();
            (m.sum("gateway_reloads_total", &ok) >= 1.0).then_some(m)
        },
        "the reload to be counted; last scrape:\n{last}"
    );
    assert_eq!(m.get("gateway_reloads_total", &ok), Some(1.0), "{}", m.text);
    assert_eq!(m.sum("gateway_reloads_total", &failed), 0.0, "{}", m.text);
    assert_eq!(
        m.get("gateway_agents_connected", &[("tunnel", "two")]),
        Some(0.0),
        "a tunnel added by the reload shows 0 agents:\n{}",
        m.text
    );

    d.rewrite("[timeouts]\ndirect = \"soon\"\n[[tunnels]]\nid = \"BAD\"\n");
    d.process.signal("HUP");
    wait_log(&d.process, "reload failed", |l| l.contains("reload failed")).await;
    let m = eventually!(
        {
            let m = d.scrape().await;
            last = m.text.clone();
            (m.sum("gateway_reloads_total", &failed) >= 1.0).then_some(m)
        },
        "the failed reload to be counted; last scrape:\n{last}"
    );
    assert_eq!(
        m.get("gateway_reloads_total", &failed),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(m.get("gateway_reloads_total", &ok), Some(1.0), "{}", m.text);
}

// -----------------------------------------------------------------------------
// The process and its connections.
// -----------------------------------------------------------------------------

/// The process metrics describe the daemon's process, and the build info its
/// version and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_and_build_info_are_plausible() {
    let d = Daemon::start("[[tunnels]]\nid = \"app\"\n").await;
    let m = d.scrape().await;
    let value = |name: &str| {
        m.get(name, &[])
            .unwrap_or_else(|| panic!("{name} is missing:\n{}", m.text))
    };

    let rss = value("process_resident_memory_bytes");
    let vm_rss = (d.process.status_kib("VmRSS") * 1024) as f64;
    assert!(rss > 1024.0 * 1024.0, "resident memory {rss} bytes");
    assert!(
        rss > vm_rss / 4.0 && rss < vm_rss * 4.0,
        "resident memory {rss} bytes, /proc says {vm_rss}"
    );
    let open = value("process_open_fds");
    let max = value("process_max_fds");
    assert!(open > 3.0, "open fds {open}");
    assert!(open <= max, "open fds {open} above the maximum {max}");
    assert_eq!(
        max,
        max_open_files(d.process.pid()),
        "process_max_fds is the soft open-file limit"
    );
    let cpu = value("process_cpu_seconds_total");
    assert!(cpu >= 0.0 && cpu.is_finite(), "cpu seconds {cpu}");
    let start = value("process_start_time_seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        start <= now + 5.0 && start >= now - 600.0,
        "start time {start} is not a moment ago (now {now})"
    );

    let builds: Vec<&Sample> = m.series("gateway_build_info", &[]).collect();
    assert_eq!(builds.len(), 1, "one build: {builds:?}");
    let build = builds[0];
    assert_eq!(number(&build.value), 1.0);
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    let commit = build.labels.get("commit").expect("a commit label");
    assert!(
        !commit.is_empty() && gateway::VERSION.contains(commit),
        "commit {commit:?}, as `gateway --version` says: {}",
        gateway::VERSION
    );
}

/// `gateway_connections_open` follows the public connections: two held open,
/// then none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_gauged() {
    let d = Daemon::start("[[tunnels]]\nid = \"app\"\n").await;
    let open = |m: &Metrics| m.get("gateway_connections_open", &[]);
    let mut last: Option<f64>;
    eventually!(
        {
            last = open(&d.scrape().await);
            last == Some(0.0)
        },
        "no public connection at first (last seen {last:?})"
    );

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(d.public).await.expect("connect");
        // Answered, so surely accepted, and kept alive.
        tcp.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut status = [0u8; 12];
        tcp.read_exact(&mut status).await.expect("read");
        assert_eq!(&status, b"HTTP/1.1 200");
        held.push(tcp);
    }
    eventually!(
        {
            last = open(&d.scrape().await);
            last == Some(2.0)
        },
        "two public connections (last seen {last:?})"
    );

    drop(held);
    eventually!(
        {
            last = open(&d.scrape().await);
            last == Some(0.0)
        },
        "no public connection once both closed (last seen {last:?})"
    );
}

// -----------------------------------------------------------------------------
// The admin listener.
// -----------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "admin-token-for-the-metrics-tests";

/// The admin listener serves the scrape in a Prometheus content type, and
/// `/health` and `/connections`, to this machine; a request that looks
/// forwarded needs the admin token. The public listener's `/metrics` is an
/// ordinary proxied path, never the scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_this_machine_and_the_token() {
    let up = TestUpstream::start().await;
    let d = Daemon::start(&format!(
        "[server]\nadmin_token = \"{ADMIN_TOKEN}\"\n[[tunnels]]\nid = \"app\"\n"
    ))
    .await;
    let _agent = d.agent("app", None, &up).await.expect("agent connects");
    d.wait_agents_connected("app", 1.0).await;
    let client = client();

    let resp = client
        .get(d.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "content-type {content_type:?}"
    );
    let m = Metrics::parse(resp.text().await.expect("body"));
    assert_eq!(m.get("gateway_build_info", &[]), Some(1.0), "{}", m.text);

    let resp = client
        .get(d.admin_url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(resp.status(), 200, "admin /health");
    let resp = client
        .get(d.admin_url("/connections"))
        .send()
        .await
        .expect("connections");
    assert_eq!(resp.status(), 200, "admin /connections from this machine");

    // The public listener does not serve the scrape.
    let resp = client
        .get(d.url("/metrics"))
        .send()
        .await
        .expect("public /metrics");
    let public_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.text().await.expect("body");
    for scrape_text in ["gateway_build_info", "gateway_requests_total", "# TYPE "] {
        assert!(
            !body.contains(scrape_text),
            "the public /metrics shows the scrape ({scrape_text:?}): {body}"
        );
    }
    assert!(
        !public_type.starts_with("application/openmetrics-text"),
        "the public /metrics is {public_type}"
    );

    // Looks forwarded: the token is needed, and only the right one works.
    let forwarded = |token: Option<&str>| {
        let mut req = client
            .get(d.admin_url("/metrics"))
            .header("x-forwarded-for", "198.51.100.7");
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    // 401 with a Bearer challenge, as /connections answers: a token is set,
    // and this one is missing or wrong.
    let resp = forwarded(None).await.expect("request");
    assert_eq!(resp.status(), 401, "forwarded, without the token");
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body = resp.text().await.expect("body");
    assert!(!body.contains("gateway_build_info"), "{body}");
    let resp = forwarded(Some("not-the-admin-token"))
        .await
        .expect("request");
    assert_eq!(resp.status(), 401, "forwarded, with a wrong token");
    let resp = forwarded(Some(ADMIN_TOKEN)).await.expect("request");
    assert_eq!(resp.status(), 200, "forwarded, with the admin token");
    let m = Metrics::parse(resp.text().await.expect("body"));
    assert_eq!(m.get("gateway_build_info", &[]), Some(1.0), "{}", m.text);
}

/// An admin port that cannot be bound is logged as an error, and the public
/// listener serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_port_in_use_does_not_stop_the_gateway() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let up = TestUpstream::start().await;
    let dir = TempDir::new();
    let mut process = spawn_gateway(
        &dir,
        &format!(
            "[admin]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n\
             [[tunnels]]\nid = \"app\"\n"
        ),
    );
    let public = public_addr(&process).await;
    wait_log(&process, "an error about the admin listener", |l| {
        l.contains("ERROR") && l.to_ascii_lowercase().contains("admin")
    })
    .await;

    let _agent = TestAgent::start_with(AgentConfig {
        gateway: format!("ws://{public}/ws"),
        tunnel: "app".to_owned(),
        token: None,
        upstream: up.url(),
        grace: Duration::from_secs(5),
        wait_upstream: false,
    })
    .await
    .expect("agent connects");
    let resp = client()
        .get(format!("http://{public}/about"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "log:\n{}", process.log());
    assert_eq!(resp.text().await.expect("body"), "about page from upstream");
    assert!(
        process.child.try_wait().expect("try_wait").is_none(),
        "the gateway exited; log:\n{}",
        process.log()
    );
    drop(taken);
}
