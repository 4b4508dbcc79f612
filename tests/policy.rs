//! Per-tunnel access policy, as a user of the public side of a tunnel meets it:
//! Basic authentication (and `gateway hash-password`), IP allow and deny lists,
//! rate limits, a bound on requests in flight and on connected agents; each
//! refusal answered by the gateway with its code, never passed to the app,
//! logged, and each policy changed by a reload without dropping agents.
//!
//! Everything runs on loopback port 0, with a real gateway (in this process, or
//! the binary where its log or its signals are what is checked), real agents and
//! a real upstream that records what reached it.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use base64::Engine as _;
use gateway::agent::AgentConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::process::{GATEWAY_BIN, Process, TempDir};
use common::wait::within;
use common::*;

// -----------------------------------------------------------------------------
// Credentials. The hashes were made once, outside these tests, and checked
// against libxcrypt (bcrypt) and the argon2 reference parameters.
// -----------------------------------------------------------------------------

/// `alice` / `wonderland`, argon2id with the default parameters.
const ALICE_ARGON2: &str = "$argon2id$v=19$m=19456,t=2,p=1$cG9saWN5LXRlc3Qtc2FsdA$F/gDmE23tUBbhSXN0Q7wzAV32vSS9RflovtPeZkjIoc";
/// `looking-glass`, bcrypt cost 5, as `htpasswd -B` writes it (`$2y$`).
const GLASS_BCRYPT_2Y: &str = "$2y$05$aE7qYUL3bETxbFLfZFOfGOkST4lqWSicfxZMbu5Np.hOO72TqqpOK";
/// The same hash with the `$2b$` prefix other bcrypt tools write.
const GLASS_BCRYPT_2B: &str = "$2b$05$aE7qYUL3bETxbFLfZFOfGOkST4lqWSicfxZMbu5Np.hOO72TqqpOK";

/// An `Authorization` value for Basic credentials, built by hand (so that
/// malformed ones can be sent too).
fn basic(user_and_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_and_password)
    )
}

// -----------------------------------------------------------------------------
// A recording upstream, a gated upstream, and a gateway with several tunnels.
// -----------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Reached {
    path: String,
    authorization: Option<String>,
}

/// Every request that reached the recording upstream, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Reached>>>);

impl Seen {
    /// How many requests for exactly `path` reached the upstream.
    fn count(&self, path: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// How many requests whose path starts with `prefix` reached the upstream.
    fn count_under(&self, prefix: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }

    /// The last request for `path`, if one reached the upstream.
    fn last(&self, path: &str) -> Option<Reached> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.path == path)
            .cloned()
    }
}

async fn record(State(seen): State<Seen>, uri: Uri, headers: HeaderMap) -> String {
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    seen.0.lock().unwrap().push(Reached {
        path: uri.path().to_owned(),
        authorization,
    });
    format!("reached {}", uri.path())
}

/// An upstream that answers `reached <path>` to anything and records it.
async fn recording_upstream() -> (TestUpstream, Seen) {
    let seen = Seen::default();
    let app = Router::new().fallback(record).with_state(seen.clone());
    (TestUpstream::serve(app).await, seen)
}

/// An upstream whose requests are held until [`Gate::open`]; it counts the
/// requests that arrived.
#[derive(Clone)]
struct Gate {
    arrived: Arc<AtomicUsize>,
    open: Arc<watch::Sender<bool>>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            arrived: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(watch::channel(false).0),
        }
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Lets every held request, and every later one, through.
    fn open(&self) {
        self.open.send_replace(true);
    }

    async fn serve(&self) -> TestUpstream {
        let app = Router::new().fallback(held).with_state(self.clone());
        TestUpstream::serve(app).await
    }
}

async fn held(State(gate): State<Gate>) -> &'static str {
    gate.arrived.fetch_add(1, Ordering::SeqCst);
    let mut open = gate.open.subscribe();
    let _ = open.wait_for(|open| *open).await;
    "released"
}

/// A gateway with tunnels `ids` (configured by `toml`), one agent on each, all
/// forwarding to one recording upstream. Requests name their tunnel with
/// `X-Tunnel-Id`.
struct Tunnels {
    gw: TestGateway,
    seen: Seen,
    agents: Vec<TestAgent>,
    _up: TestUpstream,
}

impl Tunnels {
    async fn start(toml: &str, ids: &[&str]) -> Self {
        let gw = TestGateway::start(config_from(toml)).await;
        Self::with_gateway(gw, None, ids).await
    }

    /// Like [`Tunnels::start`] with `gw`; agents dial `agent_gateway` when given
    /// (a WebSocket URL), else `gw`'s own address.
    async fn with_gateway(gw: TestGateway, agent_gateway: Option<String>, ids: &[&str]) -> Self {
        let (up, seen) = recording_upstream().await;
        let mut agents = Vec::new();
        for id in ids {
            let mut cfg = agent_config(&gw, id, None, &up.url());
            if let Some(url) = &agent_gateway {
                cfg.gateway = url.clone();
            }
            agents.push(TestAgent::start_with(cfg).await.expect("agent connects"));
            gw.wait_agents(id, 1).await;
        }
        Tunnels {
            gw,
            seen,
            agents,
            _up: up,
        }
    }

    fn get(&self, tunnel: &str, path: &str) -> reqwest::RequestBuilder {
        client()
            .get(self.gw.url(path))
            .header("x-tunnel-id", tunnel)
    }
}

/// A `[[tunnels]]` entry with `id` and the extra `keys` (TOML lines).
fn tunnel(id: &str, keys: &str) -> String {
    format!("[[tunnels]]\nid = \"{id}\"\n{keys}\n")
}

/// Checks a refusal the gateway answered itself: its status and error code.
#[track_caller]
fn assert_refused(resp: &reqwest::Response, status: u16, code: &str, what: &str) {
    assert_eq!(resp.status().as_u16(), status, "{what}");
    assert_eq!(
        resp.headers()
            .get("x-gateway-error")
            .and_then(|v| v.to_str().ok()),
        Some(code),
        "{what}: x-gateway-error"
    );
}

/// The status of a request and its body (the body read to its end).
async fn outcome(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// `Retry-After` as whole seconds; panics unless it is one.
#[track_caller]
fn retry_after_secs(resp: &reqwest::Response) -> u64 {
    let value = resp
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .expect("Retry-After is text");
    value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is whole seconds, got {value:?}"))
}

// -----------------------------------------------------------------------------
// Basic authentication.
// -----------------------------------------------------------------------------

/// An argon2id entry: without credentials, with a wrong password, an unknown
/// user, another scheme or a malformed value, the client gets 401 with the
/// challenge naming the tunnel, and the app sees nothing; with the right
/// credentials the request goes through, without its `Authorization`.
#[tokio::test]
async fn basic_auth_with_argon2id() {
    let t = Tunnels::start(
        &tunnel("argon", &format!("basic_auth = [\"alice:{ALICE_ARGON2}\"]")),
        &["argon"],
    )
    .await;

    let refused: [(&str, Option<String>); 7] = [
        ("/no-credentials", None),
        ("/wrong-password", Some(basic("alice:wonderlanD"))),
        ("/unknown-user", Some(basic("mallory:wonderland"))),
        ("/empty-password", Some(basic("alice:"))),
        ("/bearer", Some("Bearer wonderland".to_owned())),
        ("/not-base64", Some("Basic %%%not-base64%%%".to_owned())),
        ("/no-colon", Some(basic("alicewonderland"))),
    ];
    for (path, authorization) in refused {
        let mut req = t.get("argon", path);
        if let Some(value) = &authorization {
            req = req.header("authorization", value);
        }
        let resp = req.send().await.unwrap();
        assert_refused(&resp, 401, "unauthorized", path);
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .unwrap_or_else(|| panic!("{path}: a 401 carries WWW-Authenticate"))
            .to_str()
            .unwrap();
        assert!(
            challenge.starts_with("Basic realm=\"argon\""),
            "{path}: challenge {challenge:?}"
        );
        assert_eq!(t.seen.count(path), 0, "{path} reached the upstream");
    }

    let (status, body) = outcome(
        t.get("argon", "/welcome")
            .header("authorization", basic("alice:wonderland")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "reached /welcome");
    let reached = t
        .seen
        .last("/welcome")
        .expect("the request reached the app");
    assert_eq!(
        reached.authorization, None,
        "the gateway's credentials were passed on to the app"
    );

    // reqwest's own Basic credentials work the same way.
    let resp = t
        .get("argon", "/again")
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// bcrypt entries as `htpasswd -B` writes them (`$2y$`) and as other tools do
/// (`$2b$`); several users on one tunnel, each with their own password.
#[tokio::test]
async fn basic_auth_with_bcrypt() {
    let t = Tunnels::start(
        &tunnel(
            "crypt",
            &format!(
                "basic_auth = [\"bob:{GLASS_BCRYPT_2Y}\", \"carol:{GLASS_BCRYPT_2B}\", \"alice:{ALICE_ARGON2}\"]"
            ),
        ),
        &["crypt"],
    )
    .await;
    for (user, password, status) in [
        ("bob", "looking-glass", 200),
        ("carol", "looking-glass", 200),
        ("alice", "wonderland", 200),
        ("bob", "looking-glasS", 401),
        ("carol", "wonderland", 401),
        ("alice", "looking-glass", 401),
    ] {
        let path = format!("/{user}/{status}/{password}");
        let resp = t
            .get("crypt", &path)
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        if status == 200 {
            assert_eq!(resp.status(), 200, "{user}:{password}");
            assert_eq!(resp.text().await.unwrap(), format!("reached {path}"));
            assert_eq!(t.seen.last(&path).unwrap().authorization, None);
        } else {
            assert_refused(&resp, 401, "unauthorized", &format!("{user}:{password}"));
            assert_eq!(t.seen.count(&path), 0, "{user}:{password} reached the app");
        }
    }
}

/// `forward_authorization = true` passes the client's `Authorization` on to
/// the app; a tunnel without `basic_auth` leaves the header alone (apps that
/// check their own tokens keep working).
#[tokio::test]
async fn authorization_is_forwarded_only_when_asked_or_unused() {
    let toml = tunnel(
        "forwarding",
        &format!("basic_auth = [\"alice:{ALICE_ARGON2}\"]\nforward_authorization = true"),
    ) + &tunnel("open", "");
    let t = Tunnels::start(&toml, &["forwarding", "open"]).await;

    let credentials = basic("alice:wonderland");
    let (status, _) = outcome(
        t.get("forwarding", "/forwarded")
            .header("authorization", &credentials),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        t.seen.last("/forwarded").unwrap().authorization.as_deref(),
        Some(credentials.as_str())
    );
    // Forwarding does not mean skipping the check.
    let resp = t
        .get("forwarding", "/forwarded-wrong")
        .header("authorization", basic("alice:nope"))
        .send()
        .await
        .unwrap();
    assert_refused(&resp, 401, "unauthorized", "wrong password, forwarding on");
    assert_eq!(t.seen.count("/forwarded-wrong"), 0);

    let (status, _) = outcome(
        t.get("open", "/app-token")
            .header("authorization", "Bearer app-level-token"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        t.seen.last("/app-token").unwrap().authorization.as_deref(),
        Some("Bearer app-level-token"),
        "a tunnel without basic_auth must not touch Authorization"
    );
}

/// `auth_exempt` path prefixes need no credentials (a webhook from a service
/// that cannot log in); every other path still does, including ones that merely
/// look like the prefix.
#[tokio::test]
async fn auth_exempt_prefixes_need_no_credentials() {
    let t = Tunnels::start(
        &tunnel(
            "hooks",
            &format!("basic_auth = [\"alice:{ALICE_ARGON2}\"]\nauth_exempt = [\"/webhooks/\"]"),
        ),
        &["hooks"],
    )
    .await;

    for path in ["/webhooks/github", "/webhooks/stripe/events", "/webhooks/"] {
        let (status, body) = outcome(t.get("hooks", path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body, format!("reached {path}"));
        assert_eq!(t.seen.count(path), 1, "{path}");
    }
    for path in [
        "/webhooks",
        "/webhooksX/github",
        "/admin",
        "/",
        "/api/webhooks/x",
    ] {
        let resp = t.get("hooks", path).send().await.unwrap();
        assert_refused(&resp, 401, "unauthorized", path);
        assert_eq!(t.seen.count(path), 0, "{path} reached the app");
    }
    let (status, _) = outcome(
        t.get("hooks", "/admin")
            .basic_auth("alice", Some("wonderland")),
    )
    .await;
    assert_eq!(status, 200);
}

// -----------------------------------------------------------------------------
// `gateway hash-password`.
// -----------------------------------------------------------------------------

/// Runs `gateway hash-password` with `stdin`; (exit code, stdout, stderr).
fn hash_password(stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(GATEWAY_BIN)
        .arg("hash-password")
        .env_remove("RUST_LOG")
        .env_remove("GATEWAY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gateway hash-password");
    {
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write the password");
        // Dropped here: the end of input.
    }
    let exited = eventually!(
        blocking within Duration::from_secs(30) => child.try_wait().expect("try_wait"),
        "gateway hash-password to exit"
    );
    let out = child.wait_with_output().expect("output");
    (
        exited.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The printed hash is an argon2id PHC string, salted afresh on every run,
/// and it works in `basic_auth` for the password typed (its trailing newline
/// not part of it; colons and spaces are).
#[tokio::test]
async fn hash_password_prints_a_hash_basic_auth_accepts() {
    let password = "correct horse:battery staple";
    let (code, stdout, stderr) = hash_password(format!("{password}\n").as_bytes());
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let hash = stdout.trim();
    assert_eq!(hash.lines().count(), 1, "one line on stdout: {stdout:?}");
    assert!(hash.starts_with("$argon2id$v=19$"), "{stdout:?}");
    assert!(!stdout.contains(password), "the password was echoed");

    let (code, again, _) = hash_password(format!("{password}\n").as_bytes());
    assert_eq!(code, 0);
    assert_ne!(
        again.trim(),
        hash,
        "two hashes of one password must differ (a fresh salt each time)"
    );

    let t = Tunnels::start(
        &tunnel("hashed", &format!("basic_auth = [\"dave:{hash}\"]")),
        &["hashed"],
    )
    .await;
    let (status, _) = outcome(
        t.get("hashed", "/right")
            .header("authorization", basic(&format!("dave:{password}"))),
    )
    .await;
    assert_eq!(
        status, 200,
        "the printed hash does not accept its password (split at the first colon?)"
    );
    for (path, credentials) in [
        ("/with-newline", format!("dave:{password}\n")),
        ("/first-part", "dave:correct horse".to_owned()),
        ("/wrong", "dave:battery staple".to_owned()),
    ] {
        let resp = t
            .get("hashed", path)
            .header("authorization", basic(&credentials))
            .send()
            .await
            .unwrap();
        assert_refused(&resp, 401, "unauthorized", path);
    }
}

/// An empty password is refused: an error on stderr, no hash, a failing exit.
#[test]
fn hash_password_refuses_an_empty_password() {
    for input in [&b"\n"[..], b""] {
        let (code, stdout, stderr) = hash_password(input);
        assert_ne!(code, 0, "input {input:?}: stdout {stdout:?}");
        assert!(
            !stderr.trim().is_empty(),
            "input {input:?}: nothing on stderr"
        );
        assert!(
            !stdout.contains("$argon2"),
            "input {input:?}: a hash was printed: {stdout:?}"
        );
    }
}

// -----------------------------------------------------------------------------
// IP allow and deny lists.
// -----------------------------------------------------------------------------

/// From 127.0.0.1: a deny entry matching it, an allow list not including it, an
/// allow list of the other family, and a deny entry inside an allow list that
/// includes it are refused with 403; an allow list that includes it (CIDR or
/// bare address, lists mixing families) lets it through.
#[tokio::test]
async fn ip_lists_decide_by_the_client_address() {
    let cases = [
        ("deny-me", "deny_ips = [\"127.0.0.1\"]", 403),
        ("deny-range", "deny_ips = [\"127.0.0.0/8\"]", 403),
        ("outside", "allow_ips = [\"10.0.0.0/8\"]", 403),
        ("v6-only", "allow_ips = [\"::1\"]", 403),
        (
            "deny-wins",
            "allow_ips = [\"127.0.0.0/8\"]\ndeny_ips = [\"127.0.0.1/32\"]",
            403,
        ),
        ("inside", "allow_ips = [\"127.0.0.0/8\"]", 200),
        (
            "mixed",
            "allow_ips = [\"10.0.0.0/8\", \"::1\", \"2001:db8::/32\", \"127.0.0.1\"]\ndeny_ips = [\"192.0.2.0/24\", \"fe80::/10\"]",
            200,
        ),
        ("deny-other", "deny_ips = [\"10.0.0.0/8\", \"::1\"]", 200),
    ];
    let toml: String = cases.iter().map(|(id, keys, _)| tunnel(id, keys)).collect();
    let ids: Vec<&str> = cases.iter().map(|(id, _, _)| *id).collect();
    let t = Tunnels::start(&toml, &ids).await;

    for (id, keys, status) in cases {
        let path = format!("/{id}");
        let resp = t.get(id, &path).send().await.unwrap();
        if status == 403 {
            assert_refused(&resp, 403, "forbidden", &format!("{id}: {keys}"));
            assert_eq!(t.seen.count(&path), 0, "{id}: reached the app");
        } else {
            assert_eq!(resp.status(), 200, "{id}: {keys}");
            assert_eq!(resp.text().await.unwrap(), format!("reached {path}"));
        }
    }
}

/// The same lists over IPv6: a gateway on [::1] sees its client as ::1.
#[tokio::test]
async fn ip_lists_over_ipv6() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    };
    let cases = [
        ("v6-allowed", "allow_ips = [\"::1\"]", 200),
        ("v6-range", "allow_ips = [\"::/0\"]", 200),
        ("v6-denied", "deny_ips = [\"::1/128\"]", 403),
        ("v4-only", "allow_ips = [\"127.0.0.0/8\"]", 403),
        ("v4-denied", "deny_ips = [\"127.0.0.1\"]", 200),
    ];
    let toml: String = cases.iter().map(|(id, keys, _)| tunnel(id, keys)).collect();
    let mut config = config_from(&toml);
    config.server.host = "::1".parse().unwrap();
    let gw = TestGateway::start_on(config, listener).await;
    let ids: Vec<&str> = cases.iter().map(|(id, _, _)| *id).collect();
    let t = Tunnels::with_gateway(gw, None, &ids).await;

    for (id, keys, status) in cases {
        let path = format!("/{id}");
        let resp = t.get(id, &path).send().await.unwrap();
        if status == 403 {
            assert_refused(&resp, 403, "forbidden", &format!("{id}: {keys}"));
            assert_eq!(t.seen.count(&path), 0, "{id}: reached the app");
        } else {
            assert_eq!(resp.status(), 200, "{id}: {keys}");
        }
    }
}

/// A gateway listening on `::` (both families) sees an IPv4 client as
/// `::ffff:127.0.0.1`; IPv4 entries still apply to it.
#[tokio::test]
async fn ipv4_entries_match_ipv4_clients_of_a_dual_stack_listener() {
    let Ok(listener) = TcpListener::bind("[::]:0").await else {
        eprintln!("skipped: no IPv6 here");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let cases = [
        ("mapped-denied", "deny_ips = [\"127.0.0.1\"]", 403),
        ("mapped-allowed", "allow_ips = [\"127.0.0.0/8\"]", 200),
    ];
    let toml: String = cases.iter().map(|(id, keys, _)| tunnel(id, keys)).collect();
    let mut config = config_from(&toml);
    config.server.host = "::".parse().unwrap();
    let gw = TestGateway::start_on(config, listener).await;
    let ids: Vec<&str> = cases.iter().map(|(id, _, _)| *id).collect();
    let t = Tunnels::with_gateway(gw, Some(format!("ws://127.0.0.1:{port}/ws")), &ids).await;

    for (id, keys, status) in cases {
        let path = format!("/{id}");
        let resp = client()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .header("x-tunnel-id", id)
            .send()
            .await
            .unwrap();
        if status == 403 {
            assert_refused(&resp, 403, "forbidden", &format!("{id}: {keys}"));
            assert_eq!(t.seen.count(&path), 0, "{id}: reached the app");
        } else {
            assert_eq!(resp.status(), 200, "{id}: {keys}");
        }
    }
}

/// With `trust_forwarded`, the client is the right-most X-Forwarded-For
/// address (the one the trusted proxy added); without it the header is only a
/// claim, and neither gets anyone in nor keeps anyone out.
#[tokio::test]
async fn forwarded_for_counts_only_when_trusted() {
    let tunnels = tunnel("demo", "deny_ips = [\"203.0.113.0/24\"]")
        + &tunnel("allowlisted", "allow_ips = [\"198.51.100.0/24\"]");
    let ids = ["demo", "allowlisted"];

    let trusted = Tunnels::start(
        &format!("[server]\ntrust_forwarded = true\n{tunnels}"),
        &ids,
    )
    .await;
    let cases = [
        ("demo", Some("203.0.113.9"), 403),
        ("demo", Some("198.51.100.1"), 200),
        ("demo", Some("203.0.113.9, 198.51.100.1"), 200),
        ("demo", Some("198.51.100.1, 203.0.113.9"), 403),
        ("demo", None, 200),
        ("allowlisted", Some("198.51.100.7"), 200),
        ("allowlisted", Some("198.51.100.7, 203.0.113.9"), 403),
        ("allowlisted", None, 403),
    ];
    for (i, (id, xff, status)) in cases.into_iter().enumerate() {
        let path = format!("/trusted/{i}");
        let mut req = trusted.get(id, &path);
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        let resp = req.send().await.unwrap();
        let what = format!("trusted, {id}, X-Forwarded-For {xff:?}");
        if status == 403 {
            assert_refused(&resp, 403, "forbidden", &what);
            assert_eq!(trusted.seen.count(&path), 0, "{what}: reached the app");
        } else {
            assert_eq!(resp.status(), 200, "{what}");
        }
    }

    let untrusted = Tunnels::start(&tunnels, &ids).await;
    let cases = [
        ("demo", "203.0.113.9", 200),
        ("demo", "198.51.100.1, 203.0.113.9", 200),
        ("allowlisted", "198.51.100.7", 403),
    ];
    for (i, (id, xff, status)) in cases.into_iter().enumerate() {
        let path = format!("/untrusted/{i}");
        let resp = untrusted
            .get(id, &path)
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap();
        let what = format!("not trusted, {id}, X-Forwarded-For {xff:?}");
        if status == 403 {
            assert_refused(&resp, 403, "forbidden", &what);
            assert_eq!(untrusted.seen.count(&path), 0, "{what}: reached the app");
        } else {
            assert_eq!(resp.status(), 200, "{what}");
        }
    }
}

// -----------------------------------------------------------------------------
// Rate limits.
// -----------------------------------------------------------------------------

/// A token bucket: `requests` per `per`, `burst` at once (by default as many as
/// `requests`); beyond it 429 with `Retry-After`, and the app sees only the
/// requests that passed. A tunnel without a limit is not limited.
#[tokio::test]
async fn rate_limit_refuses_beyond_the_bucket() {
    let toml = tunnel("three", "rate_limit = { requests = 3, per = \"1m\" }")
        + &tunnel(
            "burst",
            "rate_limit = { requests = 3, per = \"1m\", burst = 2, key = \"client_ip\" }",
        )
        + &tunnel("free", "");
    let t = Tunnels::start(&toml, &["three", "burst", "free"]).await;

    for (id, passing) in [("three", 3), ("burst", 2)] {
        for i in 0..passing {
            let path = format!("/{id}/{i}");
            let (status, body) = outcome(t.get(id, &path)).await;
            assert_eq!(status, 200, "{id}: request {} of {passing}: {body}", i + 1);
        }
        for i in passing..passing + 2 {
            let path = format!("/{id}/{i}");
            let resp = t.get(id, &path).send().await.unwrap();
            assert_refused(
                &resp,
                429,
                "rate_limited",
                &format!("{id}: request {}", i + 1),
            );
            let wait = retry_after_secs(&resp);
            assert!(
                (1..=60).contains(&wait),
                "{id}: Retry-After {wait} s, with one token per 20 s"
            );
        }
        assert_eq!(
            t.seen.count_under(&format!("/{id}/")),
            passing,
            "{id}: refused requests reached the app"
        );
    }

    for i in 0..10 {
        let (status, _) = outcome(t.get("free", &format!("/free/{i}"))).await;
        assert_eq!(status, 200, "an unlimited tunnel, request {}", i + 1);
    }
}

/// `key = "client_ip"` (the default) gives each client its own bucket; `key =
/// "tunnel"` shares one among all clients of the tunnel.
#[tokio::test]
async fn rate_limit_keys() {
    let toml = format!(
        "[server]\ntrust_forwarded = true\n{}{}",
        tunnel("per-client", "rate_limit = { requests = 2, per = \"1h\" }"),
        tunnel(
            "shared",
            "rate_limit = { requests = 2, per = \"1h\", key = \"tunnel\" }"
        )
    );
    let t = Tunnels::start(&toml, &["per-client", "shared"]).await;
    let (first, second) = ("198.51.100.1", "198.51.100.2");

    for id in ["per-client", "shared"] {
        for i in 0..2 {
            let (status, _) = outcome(
                t.get(id, &format!("/{id}/first/{i}"))
                    .header("x-forwarded-for", first),
            )
            .await;
            assert_eq!(status, 200, "{id}: request {} of the first client", i + 1);
        }
        let resp = t
            .get(id, &format!("/{id}/first/2"))
            .header("x-forwarded-for", first)
            .send()
            .await
            .unwrap();
        assert_refused(&resp, 429, "rate_limited", &format!("{id}: third request"));
        assert!(retry_after_secs(&resp) >= 1);
    }

    let (status, _) = outcome(
        t.get("per-client", "/per-client/second/0")
            .header("x-forwarded-for", second),
    )
    .await;
    assert_eq!(status, 200, "another client has a bucket of its own");
    let resp = t
        .get("shared", "/shared/second/0")
        .header("x-forwarded-for", second)
        .send()
        .await
        .unwrap();
    assert_refused(&resp, 429, "rate_limited", "shared bucket, another client");
    assert_eq!(t.seen.count("/shared/second/0"), 0);
    assert_eq!(t.seen.count("/per-client/first/2"), 0);
}

// -----------------------------------------------------------------------------
// Requests in flight.
// -----------------------------------------------------------------------------

/// `max_concurrent_requests = 2`: with two requests held by the app, a third
/// is refused at once with 503; once they are released, new requests pass.
#[tokio::test]
async fn max_concurrent_requests_refuses_beyond_the_bound() {
    let gate = Gate::new();
    let up = gate.serve().await;
    let gw = TestGateway::start(config_from(&tunnel("demo", "max_concurrent_requests = 2"))).await;
    let _agent = TestAgent::start(&gw, "demo", &up.url()).await;
    gw.wait_agents("demo", 1).await;

    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(client().get(gw.url(&format!("/held/{i}"))).send()))
        .collect();
    eventually!(
        gate.arrived() == 2,
        "two requests to be held by the app (arrived: {})",
        gate.arrived()
    );

    let started = Instant::now();
    let resp = within(
        Duration::from_secs(10),
        "the third request's answer",
        client().get(gw.url("/third")).send(),
    )
    .await
    .unwrap();
    assert_refused(&resp, 503, "tunnel_busy", "a third request in flight");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after {:?}",
        started.elapsed()
    );
    assert!(
        resp.headers().contains_key("retry-after"),
        "a 503 for a busy tunnel says when to retry"
    );
    assert_eq!(gate.arrived(), 2, "the refused request reached the app");

    gate.open();
    for request in held {
        let resp = within(Duration::from_secs(10), "a held request", request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "released");
    }
    // The slots are free again: two at once pass.
    let (a, b) = tokio::join!(
        client().get(gw.url("/after/0")).send(),
        client().get(gw.url("/after/1")).send()
    );
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    assert_eq!(gate.arrived(), 4);
}

/// `max_concurrent_requests = 0`, and leaving it out, set no bound.
#[tokio::test]
async fn max_concurrent_requests_zero_is_no_limit() {
    let gate = Gate::new();
    let up = gate.serve().await;
    let gw = TestGateway::start(config_from(
        &(tunnel("zero", "max_concurrent_requests = 0") + &tunnel("unset", "")),
    ))
    .await;
    let _agents = (
        TestAgent::start(&gw, "zero", &up.url()).await,
        TestAgent::start(&gw, "unset", &up.url()).await,
    );
    gw.wait_agents("zero", 1).await;
    gw.wait_agents("unset", 1).await;

    let mut held = Vec::new();
    for id in ["zero", "unset"] {
        for i in 0..6 {
            held.push(tokio::spawn(
                client()
                    .get(gw.url(&format!("/{id}/{i}")))
                    .header("x-tunnel-id", id)
                    .send(),
            ));
        }
    }
    eventually!(
        gate.arrived() == 12,
        "twelve requests held by the app at once (arrived: {})",
        gate.arrived()
    );
    gate.open();
    for request in held {
        let resp = within(Duration::from_secs(10), "a held request", request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

// -----------------------------------------------------------------------------
// Agents per tunnel.
// -----------------------------------------------------------------------------

/// A raw agent handshake for `tunnel` at `ws_url`, expected to be refused;
/// returns (status, the reason header and the body).
async fn refused_handshake(ws_url: &str, tunnel: &str) -> (u16, String) {
    let mut req = ws_url.into_client_request().expect("ws url");
    let h = req.headers_mut();
    h.insert("x-tunnel-id", tunnel.parse().unwrap());
    h.insert(
        "sec-websocket-protocol",
        gateway::protocol::SUBPROTOCOL.parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("the agent handshake for {tunnel} was accepted"),
        Err(tungstenite::Error::Http(resp)) => {
            let reason = resp
                .headers()
                .get(gateway::protocol::REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), format!("{reason}\n{body}"))
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// `max_agents = 1`: a second agent is refused at the handshake, saying why,
/// while the first goes on serving; once the first leaves, another may come.
/// `max_agents = 0` (and leaving it out) sets no bound.
#[tokio::test]
async fn max_agents_refuses_extra_agents() {
    let (up, _seen) = recording_upstream().await;
    let gw = TestGateway::start(config_from(
        &(tunnel("single", "max_agents = 1")
            + &tunnel("zero", "max_agents = 0")
            + &tunnel("unset", "")),
    ))
    .await;
    let first = TestAgent::start(&gw, "single", &up.url()).await;
    gw.wait_agents("single", 1).await;

    let refused = TestAgent::start_with(agent_config(&gw, "single", None, &up.url())).await;
    let error = match refused {
        Ok(_) => panic!("a second agent was accepted on a tunnel with max_agents = 1"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.to_ascii_lowercase().contains("too many agents"),
        "the agent is told why: {error}"
    );
    let (status, reason) = refused_handshake(&gw.ws_url(), "single").await;
    assert!(
        status == 429 || status == 503,
        "refused with 429 or 503, got {status}: {reason}"
    );
    assert!(
        reason.to_ascii_lowercase().contains("too many agents"),
        "{reason}"
    );
    assert_eq!(gw.agents_of("single"), 1);
    assert!(
        gw.gateway
            .state()
            .registry
            .get(&first.connection_id)
            .is_some(),
        "the first agent is still registered"
    );
    let (status, _) = outcome(
        client()
            .get(gw.url("/still-served"))
            .header("x-tunnel-id", "single"),
    )
    .await;
    assert_eq!(status, 200);

    first.stop().await;
    gw.wait_agents("single", 0).await;
    let _next = TestAgent::start(&gw, "single", &up.url()).await;
    gw.wait_agents("single", 1).await;

    let mut many = Vec::new();
    for id in ["zero", "unset"] {
        for _ in 0..3 {
            many.push(TestAgent::start(&gw, id, &up.url()).await);
        }
        gw.wait_agents(id, 3).await;
    }
}

// -----------------------------------------------------------------------------
// Configuration.
// -----------------------------------------------------------------------------

fn load(toml: &str) -> Result<gateway::config::Config, gateway::config::ConfigError> {
    gateway::config::Config::load_str(
        Some(toml),
        None,
        &Default::default(),
        &gateway::config::Overrides::default(),
    )
}

/// Entries that are not `user:hash` with a valid hash are refused; the problem
/// names the tunnel and does not show what stood where the hash should be.
#[test]
fn malformed_basic_auth_entries_are_refused() {
    let truncated = ALICE_ARGON2.rsplit_once('$').unwrap().0;
    let cases: [(&str, String, &str); 6] = [
        (
            "no colon",
            "alice-without-a-hash".to_owned(),
            "(nothing secret here)",
        ),
        (
            "a password instead of a hash",
            "alice:plain-text-secret".to_owned(),
            "plain-text-secret",
        ),
        (
            "a hash without its user",
            ALICE_ARGON2.to_owned(),
            "F/gDmE23tUBbhSXN0Q7wzAV32vSS9RflovtPeZkjIoc",
        ),
        (
            "a truncated argon2id hash",
            format!("alice:{truncated}"),
            "cG9saWN5LXRlc3Qtc2FsdA",
        ),
        (
            "a truncated bcrypt hash",
            "alice:$2y$05$aE7qYUL3bETxbFLfZFOfGO".to_owned(),
            "aE7qYUL3bETxbFLfZFOfGO",
        ),
        (
            "an unknown scheme",
            "alice:$md5$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".to_owned(),
            "aGFzaGhhc2hoYXNo",
        ),
    ];
    for (what, entry, secret) in cases {
        let toml = format!(
            "[[tunnels]]\nid = \"guarded\"\nbasic_auth = [\"alice:{ALICE_ARGON2}\", {entry:?}]\n"
        );
        let problems = match load(&toml) {
            Ok(_) => panic!("{what}: {entry:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            problems.contains("guarded") || problems.contains("tunnels[0]"),
            "{what}: the problem names the tunnel: {problems}"
        );
        assert!(
            !problems.contains(secret),
            "{what}: the problem shows the hash or password: {problems}"
        );
        assert!(
            !problems.contains("F/gDmE23tUBbhSXN0Q7wzAV32vSS9RflovtPeZkjIoc"),
            "{what}: the valid entry's hash is shown: {problems}"
        );
    }
}

/// Addresses and ranges that do not parse, and an unknown rate-limit key, are
/// refused.
#[test]
fn malformed_ip_lists_and_rate_limits_are_refused() {
    for keys in [
        "allow_ips = [\"10.0.0.0/33\"]",
        "deny_ips = [\"not-an-address\"]",
        "allow_ips = [\"::1/129\"]",
        "deny_ips = [\"10.0.0.0/8\", \"192.168.1\"]",
        "allow_ips = [\"127.0.0.1/\"]",
        "rate_limit = { requests = 5, per = \"1m\", key = \"cookie\" }",
        "rate_limit = { requests = 5, per = \"a while\" }",
    ] {
        let toml = tunnel("ranged", keys);
        let problems = match load(&toml) {
            Ok(_) => panic!("{keys} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            problems.contains("ranged") || problems.contains("tunnels[0]"),
            "{keys}: the problem names the tunnel: {problems}"
        );
    }
}

fn check(config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(GATEWAY_BIN)
        .args(["--check", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("GATEWAY_CONFIG")
        .output()
        .expect("run gateway --check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gateway --check` on a bad entry or range exits 78, naming the tunnel and
/// not printing the hash.
#[test]
fn check_refuses_bad_policy_with_78() {
    let dir = TempDir::new();
    let truncated = ALICE_ARGON2.rsplit_once('$').unwrap().0;
    let cfg = dir.write(
        "g.toml",
        &tunnel(
            "guarded",
            &format!("basic_auth = [\"alice:{truncated}\"]\nallow_ips = [\"10.0.0.0/40\"]"),
        ),
    );
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 78, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("guarded") || stderr.contains("tunnels[0]"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cG9saWN5LXRlc3Qtc2FsdA") && !stdout.contains("cG9saWN5LXRlc3Qtc2FsdA"),
        "the hash is printed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("10.0.0.0/40") || stderr.contains("allow_ips"),
        "{stderr}"
    );
}

/// Every policy key set in the file shows in `gateway --check`'s effective
/// configuration, with its value.
#[test]
fn check_prints_every_policy_key() {
    let dir = TempDir::new();
    let cfg = dir.write(
        "g.toml",
        &format!(
            "[server]\ntrust_forwarded = true\n{}",
            tunnel(
                "full",
                &format!(
                    "basic_auth = [\"alice:{ALICE_ARGON2}\", \"bob:{GLASS_BCRYPT_2Y}\"]\n\
                     forward_authorization = true\n\
                     auth_exempt = [\"/webhooks/\", \"/status\"]\n\
                     allow_ips = [\"127.0.0.0/8\", \"::1\"]\n\
                     deny_ips = [\"127.0.0.2\", \"2001:db8::/32\"]\n\
                     rate_limit = {{ requests = 5, per = \"1m\", burst = 7, key = \"tunnel\" }}\n\
                     max_concurrent_requests = 4\n\
                     max_agents = 2"
                )
            )
        ),
    );
    let (code, stdout, stderr) = check(&cfg);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let printed: toml::Table = stdout
        .parse()
        .unwrap_or_else(|e| panic!("--check prints TOML ({e}):\n{stdout}"));
    let t = &printed["tunnels"].as_array().expect("tunnels")[0];
    let shown = |key: &str| {
        t.get(key)
            .unwrap_or_else(|| panic!("{key} missing from --check:\n{stdout}"))
    };

    let users: Vec<&str> = shown("basic_auth")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2, "{stdout}");
    assert!(
        users[0].starts_with("alice:") && users[1].starts_with("bob:"),
        "{stdout}"
    );
    assert_eq!(shown("forward_authorization").as_bool(), Some(true));
    let strings = |key: &str| -> Vec<String> {
        shown(key)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(strings("auth_exempt"), ["/webhooks/", "/status"]);
    let allow = strings("allow_ips");
    assert_eq!(allow.len(), 2, "{stdout}");
    assert_eq!(allow[0], "127.0.0.0/8");
    assert!(allow[1] == "::1" || allow[1] == "::1/128", "{stdout}");
    let deny = strings("deny_ips");
    assert_eq!(deny.len(), 2, "{stdout}");
    assert!(
        deny[0] == "127.0.0.2" || deny[0] == "127.0.0.2/32",
        "{stdout}"
    );
    assert_eq!(deny[1], "2001:db8::/32");

    let limit = shown("rate_limit").as_table().expect("rate_limit table");
    assert_eq!(limit["requests"].as_integer(), Some(5), "{stdout}");
    assert_eq!(limit["burst"].as_integer(), Some(7), "{stdout}");
    assert_eq!(limit["key"].as_str(), Some("tunnel"), "{stdout}");
    let per = limit["per"].as_str().expect("per as a duration string");
    assert!(per == "1m" || per == "60s", "{stdout}");
    assert_eq!(shown("max_concurrent_requests").as_integer(), Some(4));
    assert_eq!(shown("max_agents").as_integer(), Some(2));
}

// -----------------------------------------------------------------------------
// Reload.
// -----------------------------------------------------------------------------

/// A reload changes the policy for new requests, and keeps the agent: the
/// same connection serves before, between and after.
#[tokio::test]
async fn reload_changes_policy_and_keeps_agents() {
    let t = Tunnels::start(&tunnel("demo", ""), &["demo"]).await;
    let agent_id = t.agents[0].connection_id.clone();
    let same_agent = |what: &str| {
        assert_eq!(t.gw.agents_of("demo"), 1, "{what}");
        assert!(
            t.gw.gateway.state().registry.get(&agent_id).is_some(),
            "{what}: the agent was replaced or dropped"
        );
    };
    let (status, _) = outcome(t.get("demo", "/open")).await;
    assert_eq!(status, 200);

    let steps: [(&str, String); 4] = [
        ("deny", "deny_ips = [\"127.0.0.1\"]".to_owned()),
        ("auth", format!("basic_auth = [\"alice:{ALICE_ARGON2}\"]")),
        (
            "limit",
            "rate_limit = { requests = 1, per = \"1h\" }".to_owned(),
        ),
        ("open-again", String::new()),
    ];
    for (step, keys) in steps {
        let report = t.gw.gateway.reload(config_from(&tunnel("demo", &keys)));
        assert_eq!(report.disconnected, 0, "{step}: agents disconnected");
        same_agent(step);
        match step {
            "deny" => {
                let resp = t.get("demo", "/deny").send().await.unwrap();
                assert_refused(&resp, 403, "forbidden", "after adding deny_ips");
                assert_eq!(t.seen.count("/deny"), 0);
            }
            "auth" => {
                let resp = t.get("demo", "/auth").send().await.unwrap();
                assert_refused(&resp, 401, "unauthorized", "after adding basic_auth");
                let (status, _) = outcome(
                    t.get("demo", "/auth-ok")
                        .basic_auth("alice", Some("wonderland")),
                )
                .await;
                assert_eq!(status, 200, "deny_ips was replaced by the reload");
            }
            "limit" => {
                let (status, _) = outcome(t.get("demo", "/limit/0")).await;
                assert_eq!(status, 200, "basic_auth was removed by the reload");
                let resp = t.get("demo", "/limit/1").send().await.unwrap();
                assert_refused(&resp, 429, "rate_limited", "after adding rate_limit");
            }
            _ => {
                for i in 0..3 {
                    let (status, _) = outcome(t.get("demo", &format!("/again/{i}"))).await;
                    assert_eq!(status, 200, "every policy was removed by the reload");
                }
            }
        }
        same_agent(step);
    }
}

/// The agent config for the gateway process at `addr`.
fn agent_to(addr: SocketAddr, tunnel: &str, upstream: &str) -> AgentConfig {
    AgentConfig {
        gateway: format!("ws://{addr}/ws"),
        tunnel: tunnel.into(),
        token: None,
        upstream: upstream.into(),
        grace: Duration::from_secs(5),
        wait_upstream: false,
    }
}

/// Waits until `needle` occurs in at least `n` lines of the process's log.
async fn wait_lines(d: &Process, needle: &str, n: usize) {
    eventually!(
        within Duration::from_secs(15) => d.log().lines().filter(|l| l.contains(needle)).count() >= n,
        "{n} log lines containing {needle:?}; got:\n{}",
        d.log()
    );
}

/// Waits for a log line containing every one of `needles`; returns it.
async fn wait_line_with(d: &Process, needles: &[&str]) -> String {
    eventually!(
        within Duration::from_secs(15) => d
            .log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned),
        "a log line containing all of {needles:?}; got:\n{}",
        d.log()
    )
}

/// The real binary: SIGHUP applies a new policy to new requests while the agent
/// stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_policy_without_dropping_agents() {
    let (up, seen) = recording_upstream().await;
    let dir = TempDir::new();
    let cfg = dir.write("g.toml", &tunnel("demo", ""));
    let d = Process::gateway(&["--port", "0", "--config", cfg.to_str().unwrap()], &[]);
    let addr = d.addr_async().await;
    let agent = TestAgent::start_with(agent_to(addr, "demo", &up.url()))
        .await
        .expect("agent connects");
    let url = |path: &str| format!("http://{addr}{path}");
    let connections = format!("http://{addr}/connections");
    let connected = |list: &serde_json::Value| {
        list.as_array().map(Vec::len) == Some(1) && list[0]["connection_id"] == agent.connection_id
    };
    wait_json(&connections, "the agent to be listed", connected).await;
    let (status, _) = outcome(client().get(url("/before"))).await;
    assert_eq!(status, 200);

    dir.write("g.toml", &tunnel("demo", "deny_ips = [\"127.0.0.0/8\"]"));
    d.signal("HUP");
    wait_lines(&d, "configuration reloaded", 1).await;
    let resp = client().get(url("/denied")).send().await.unwrap();
    assert_refused(&resp, 403, "forbidden", "after SIGHUP added deny_ips");
    assert_eq!(seen.count("/denied"), 0);
    wait_json(&connections, "the agent to stay connected", connected).await;

    dir.write(
        "g.toml",
        &tunnel("demo", &format!("basic_auth = [\"bob:{GLASS_BCRYPT_2Y}\"]")),
    );
    d.signal("HUP");
    wait_lines(&d, "configuration reloaded", 2).await;
    let resp = client().get(url("/locked")).send().await.unwrap();
    assert_refused(&resp, 401, "unauthorized", "after SIGHUP added basic_auth");
    let (status, body) = outcome(
        client()
            .get(url("/unlocked"))
            .basic_auth("bob", Some("looking-glass")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen.last("/unlocked").unwrap().authorization, None);
    wait_json(&connections, "the agent to stay connected", connected).await;
}

/// The real binary logs each refusal with its status and reason code, and
/// never the credentials it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_with_their_code() {
    let (up, _seen) = recording_upstream().await;
    let gate = Gate::new();
    let gated = gate.serve().await;
    let dir = TempDir::new();
    let toml = tunnel("auth", &format!("basic_auth = [\"alice:{ALICE_ARGON2}\"]"))
        + &tunnel("blocked", "deny_ips = [\"127.0.0.1\"]")
        + &tunnel("limited", "rate_limit = { requests = 1, per = \"1h\" }")
        + &tunnel("busy", "max_concurrent_requests = 1")
        + &tunnel("crowded", "max_agents = 1");
    let cfg = dir.write("g.toml", &toml);
    let d = Process::gateway(
        &[
            "--port",
            "0",
            "--config",
            cfg.to_str().unwrap(),
            "--log-level",
            "info",
        ],
        &[],
    );
    let addr = d.addr_async().await;
    let mut agents = Vec::new();
    for (id, upstream) in [
        ("auth", up.url()),
        ("blocked", up.url()),
        ("limited", up.url()),
        ("busy", gated.url()),
        ("crowded", up.url()),
    ] {
        agents.push(
            TestAgent::start_with(agent_to(addr, id, &upstream))
                .await
                .expect("agent connects"),
        );
    }
    let get = |tunnel: &str, path: &str| {
        client()
            .get(format!("http://{addr}{path}"))
            .header("x-tunnel-id", tunnel)
    };

    let resp = get("auth", "/x")
        .basic_auth("alice", Some("hunter2-not-it"))
        .send()
        .await
        .unwrap();
    assert_refused(&resp, 401, "unauthorized", "wrong password");
    wait_line_with(&d, &["unauthorized", "status=401"]).await;

    let resp = get("blocked", "/x").send().await.unwrap();
    assert_refused(&resp, 403, "forbidden", "denied address");
    wait_line_with(&d, &["forbidden", "status=403"]).await;

    assert_eq!(get("limited", "/x").send().await.unwrap().status(), 200);
    let resp = get("limited", "/x").send().await.unwrap();
    assert_refused(&resp, 429, "rate_limited", "second request in an hour");
    wait_line_with(&d, &["rate_limited", "status=429"]).await;

    let holding = tokio::spawn(get("busy", "/held").send());
    eventually!(gate.arrived() == 1, "the first request to be held");
    let resp = get("busy", "/x").send().await.unwrap();
    assert_refused(&resp, 503, "tunnel_busy", "second request in flight");
    wait_line_with(&d, &["tunnel_busy", "status=503"]).await;
    gate.open();
    assert_eq!(holding.await.unwrap().unwrap().status(), 200);

    let extra = TestAgent::start_with(agent_to(addr, "crowded", &up.url())).await;
    assert!(extra.is_err(), "a second agent on crowded was accepted");
    wait_line_with(&d, &["too many agents"]).await;

    let log = d.log();
    assert!(
        !log.contains("hunter2") && !log.contains(&basic("alice:hunter2-not-it")[6..]),
        "credentials in the log:\n{log}"
    );
}
