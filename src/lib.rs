//! gateway: a self-hosted HTTP tunnel.
//!
//! Agents next to private web apps dial out to the gateway over WebSocket; the
//! gateway checks their tunnel IDs and tokens, and proxies public HTTP requests to
//! them over yamux streams carried by that WebSocket. The gateway is the only end
//! that understands HTTP; the agent splices bytes to its local upstream.
//!
//! # Layout
//!
//! - [`config`]: the TOML/env/flag layers, typed and validated (timeouts live here).
//! - [`telemetry`]: tracing to stderr and rolling files.
//! - [`systemd`]: `READY=1`, `STOPPING=1`, watchdog.
//! - [`shutdown`]: the watch channel every task listens to, and the drain.
//! - [`gateway`]: the HTTP surface: accept loop, own endpoints, `/ws`, the proxy.
//! - [`registry`]: connected agents (DashMap) and agent selection.
//! - [`transport`]: WebSocket as a byte stream, yamux sessions, stream I/O.
//! - [`protocol`]: the wire constants both ends share.
//! - [`agent`]: the other end, `gateway-agent`.
//!
//! The binaries in `src/bin/` only parse flags, load the config, call into here and
//! turn errors into one line and an exit code.

pub mod agent;
pub mod auth;
pub mod config;
pub mod gateway;
pub mod protocol;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use gateway::Gateway;
pub use shutdown::Shutdown;

/// Exit code for a bad configuration (EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;
/// Exit code for bad command-line usage (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// The async runtime for the binaries: single-threaded when this process may use
/// only one CPU (taskset, cgroup quota), where it measured 5-10 % faster than a
/// one-worker multi-threaded runtime; one worker per usable CPU otherwise.
///
/// Also tunes the allocator ([`tune_allocator`]): both binaries call this once,
/// first thing.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tune_allocator();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}

/// glibc's malloc gives memory back to the kernel as soon as 128 KiB are free at
/// the top of its heap, and serves requests above a moving threshold with fresh
/// `mmap`s. Under load the tunnel frees and reallocates such amounts all the time
/// (frame buffers, hyper's read buffers), so every burst paid for page faults and
/// zeroed pages again: ~8 % of the agent's CPU on 1 MiB bodies. Fixed thresholds
/// keep up to 8 MiB of freed memory for reuse; an idle process is unaffected.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread
    // of ours exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
