//! The real binaries as child processes: stderr collected line by line, waits that
//! poll with a deadline (blocking ones for plain tests, async ones for tests whose
//! runtime also hosts an in-process gateway), signals, exit codes.
//!
//! Child processes run on real time, so nothing here can use paused time: every
//! wait is for an event (a log line, the exit, the end of stderr).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wait::eventually;

pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_gateway");
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_gateway-agent");

/// How long a wait for a log line or an exit may take.
const WAIT: Duration = Duration::from_secs(15);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "gateway-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running binary whose stderr is collected; killed on drop.
pub struct Process {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Set once stderr reached its end (every line is in `lines`).
    stderr_done: Arc<AtomicBool>,
}

impl Process {
    /// Starts `bin` with `args`, `RUST_LOG`, `NOTIFY_SOCKET` and the gateway's
    /// variables cleared, then `envs` set.
    pub fn spawn(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("GATEWAY_CONFIG")
            .env_remove("GATEWAY_AGENT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn binary");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_done = Arc::new(AtomicBool::new(false));
        let (sink, done) = (lines.clone(), stderr_done.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
            done.store(true, Ordering::SeqCst);
        });
        Process {
            child,
            lines,
            stderr_done,
        }
    }

    /// The gateway binary.
    pub fn gateway(args: &[&str], envs: &[(&str, &str)]) -> Process {
        Self::spawn(GATEWAY_BIN, args, envs)
    }

    /// The agent binary.
    pub fn agent(args: &[&str]) -> Process {
        Self::spawn(AGENT_BIN, args, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn find(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Waits (blocking) for a log line containing `needle`.
    pub fn wait_line(&self, needle: &str) -> String {
        eventually!(
            blocking within WAIT => self.find(needle),
            "a log line containing {needle:?}; got:\n{}",
            self.log()
        )
    }

    /// Waits for a log line containing `needle` without blocking the runtime.
    pub async fn wait_line_async(&self, needle: &str) -> String {
        eventually!(
            within WAIT => self.find(needle),
            "a log line containing {needle:?}; got:\n{}",
            self.log()
        )
    }

    /// The address of the gateway's "listening on ADDR" line (text or JSON logs).
    pub fn addr(&self) -> SocketAddr {
        parse_listening(&self.wait_line("listening on "))
    }

    /// Like [`Process::addr`], without blocking the runtime.
    pub async fn addr_async(&self) -> SocketAddr {
        parse_listening(&self.wait_line_async("listening on ").await)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .expect("try_wait")
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits (blocking) for exit, then for the rest of its log; returns the exit
    /// code and how long the exit took. (A panic kills the process on drop.)
    pub fn wait_exit(&mut self, bound: Duration) -> (i32, Duration) {
        let start = Instant::now();
        let code = eventually!(
            blocking within bound => self.exited(),
            "pid {} to exit; log:\n{}",
            self.pid(),
            self.log()
        );
        let took = start.elapsed();
        eventually!(
            blocking within WAIT => self.stderr_done.load(Ordering::SeqCst),
            "the end of the stderr of pid {}, which exited",
            self.pid()
        );
        (code, took)
    }

    /// Waits for exit, then for the rest of its log, without blocking the
    /// runtime; returns the exit code.
    pub async fn wait_exit_async(&mut self, bound: Duration) -> i32 {
        let code = eventually!(
            within bound => self.exited(),
            "pid {} to exit; log:\n{}",
            self.pid(),
            self.log()
        );
        eventually!(
            within WAIT => self.stderr_done.load(Ordering::SeqCst),
            "the end of the stderr of pid {}, which exited",
            self.pid()
        );
        code
    }

    /// A field of /proc/<pid>/status, in KiB.
    pub fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{key} not in /proc/{}/status", self.pid()))
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listening(line: &str) -> SocketAddr {
    let rest = line.split("listening on ").nth(1).expect("address");
    rest.split(|c: char| !(c.is_ascii_alphanumeric() || ".:[]".contains(c)))
        .next()
        .expect("address")
        .parse()
        .expect("socket address")
}
