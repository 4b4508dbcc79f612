//! The async runtime of both binaries, and the allocator settings they share.

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
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes allocator parameters; called before any thread
    // of ours exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go's
/// runtime does: every connection is a descriptor, and a soft limit of 1024
/// (many shells' default) would be reached long before `limits.max_connections`.
/// Returns the soft limit now in force, if it could be read.
pub fn raise_fd_limit() -> Option<u64> {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        Some(lim.rlim_cur)
    }
}
