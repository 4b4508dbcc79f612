#!/usr/bin/env python3
"""Drives the gateway benchmark (started by bench/run; stdlib only).

Load (wrk) runs on CPU 0; nginx, the gateway and the agent share CPU 1. Every
scenario is measured against nginx directly and through the tunnel, alternating,
for several rounds. Before that, a fresh gateway is measured idle with 1, 1,000 and
10,000 agents connected (the extra agents come from examples/many_agents.rs).

Raw measurements go to bench/results/<stamp>.json; bench/report.py turns them
into the Markdown table printed on stdout (and can re-render a saved file).
"""

import argparse
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

LOAD_CPU = "0"
SUT_CPU = "1"
TUNNEL = "bench"
SMALL_BODY = b"Hello, world\n"  # 13 bytes
BIG_SIZE = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")

# id, label, path, connections, wrk lua script (None: GET)
SCENARIOS = [
    ("get13_c1", "13 B GET c=1", "/13b", 1, None),
    ("get13_c32", "13 B GET c=32", "/13b", 32, None),
    ("get13_c256", "13 B GET c=256", "/13b", 256, None),
    ("get1m_c8", "1 MiB GET c=8", "/1m", 8, None),
    ("post1m_c8", "1 MiB POST c=8", "/upload", 8, "post.lua"),
]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- processes


class Procs:
    """Every process the benchmark starts, so that all are stopped at the end."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.running = []

    def start(self, name, argv, cpu, stdin=None, stdout=None):
        logfile = open(self.workdir / f"{name}.log", "ab")
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        p = subprocess.Popen(
            ["taskset", "-c", cpu, *map(str, argv)],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else logfile,
            stderr=logfile,
            env=env,
        )
        p.bench_name = name
        self.running.append(p)
        return p

    def stop(self, p, timeout=10):
        if p.poll() is None:
            if p.stdin:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{p.bench_name} (pid {p.pid}) ignored SIGTERM for {timeout}s: killing it")
                p.kill()
                p.wait(5)
        if p in self.running:
            self.running.remove(p)

    def stop_all(self):
        for p in reversed(list(self.running)):
            self.stop(p)

    def check_alive(self, *procs):
        for p in procs:
            if p.poll() is not None:
                tail = (self.workdir / f"{p.bench_name}.log").read_text(errors="replace")[-2000:]
                raise BenchError(f"{p.bench_name} exited with {p.returncode}; its log ends:\n{tail}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_until(what, check, timeout, interval=0.05):
    """Calls check() until it returns a true value; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError) as e:
            last = e
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def http_get(url, timeout=2):
    """Status and body; an error status (a 503 "starting" /health) is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --------------------------------------------------------------------------- /proc


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def system_ticks():
    """CPU ticks of all CPUs from /proc/stat: (user + nice + system, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2], (v[7] if len(v) > 7 else 0)


def children_ticks():
    """CPU time of this process's waited-for children (wrk), in ticks."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * CLK_TCK


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])  # KiB
    return out


def reset_peak_rss(pid):
    """Resets VmHWM to the current RSS (writing 5 to clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pid:
                kids.append(int(entry))
    return kids


# --------------------------------------------------------------------------- the pieces


def write_nginx_conf(d, port):
    html = d / "html"
    html.mkdir(parents=True)
    (d / "tmp").mkdir()
    (html / "13b").write_bytes(SMALL_BODY)
    (html / "1m").write_bytes(b"a" * BIG_SIZE)
    (html / "upload").write_bytes(b"ok\n")
    (html / "upload-check").write_bytes(b"ok\n")
    # POST /upload: the mirror module reads the whole body (into memory, 2 MiB
    # buffer) before the content phase; the static handler then refuses POST with
    # 405, which error_page turns into a 200 with the small file. So every byte is
    # read before the answer. /upload-check is the same with an access log of
    # $request_length, used once before the runs to prove it.
    body_rules = (
        "mirror /sink; mirror_request_body on; "
        "client_max_body_size 2m; client_body_buffer_size 2m; "
        "error_page 405 =200 $uri;"
    )
    conf = f"""
worker_processes 1;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    log_format check '$request_method $uri $status $request_length';
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        root {html};
        location = /sink {{ internal; return 204; }}
        location = /upload {{ {body_rules} }}
        location = /upload-check {{ {body_rules} access_log {d}/check.log check; }}
    }}
}}
"""
    (d / "nginx.conf").write_text(conf)
    (d / "post.lua").write_text(
        "-- 1 MiB POST per request\n"
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {BIG_SIZE})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )


def start_nginx(procs, d, port):
    master = procs.start(
        "nginx",
        ["nginx", "-p", d, "-c", d / "nginx.conf", "-e", d / "error.log", "-g", "daemon off;"],
        SUT_CPU,
    )
    url = f"http://127.0.0.1:{port}"
    poll_until("nginx to answer", lambda: http_get(url + "/13b")[1] == SMALL_BODY, 10)
    workers = children(master.pid)
    if len(workers) != 1:
        raise BenchError(f"expected 1 nginx worker, found {workers}")
    return master, workers[0], url


# An access policy that lets every request through, for --policy: what the
# admission checks cost when they allow.
ALLOW_ALL_POLICY = (
    'allow_ips = ["0.0.0.0/0", "::/0"]\n'
    'deny_ips = ["192.0.2.0/24"]\n'
    'rate_limit = { requests = 1000000000, per = "1s" }\n'
    "max_concurrent_requests = 1000000\n"
)


def start_gateway(procs, bins, d, name, policy=""):
    port = free_port()
    conf = d / f"{name}.toml"
    base = (
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n\n"
        "[timeouts]\n"
        'shutdown_grace = "1s"\n\n'
        "[log]\n"
        'level = "warn"\n\n'
        "[[tunnels]]\n"
        f'id = "{TUNNEL}"\n' + policy
    )
    # 10,000 idle agents and 1,000 client connections, all from 127.0.0.1: above
    # the default connection caps. Binaries older than [limits] max_connections
    # refuse the section, and get the file without it.
    conf.write_text(base + "\n[limits]\nmax_connections = 30000\nmax_connections_per_ip = 0\n")
    checked = subprocess.run(
        [bins / "gateway", "--check", "--config", conf], capture_output=True
    )
    if checked.returncode != 0:
        conf.write_text(base)
    p = procs.start(
        name, [bins / "gateway", "--config", conf, "--port", port, "--log-level", "warn"], SUT_CPU
    )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        # Up and serving: "ok", or "starting" (503) while its tunnel has no
        # agent yet, which is what the agent started next will fix.
        procs.check_alive(p)
        return json.loads(http_get(url + "/health")[1])["status"] in ("ok", "starting")

    poll_until(f"{name} /health", healthy, 15)
    return p, url


def agent_count(gw_url):
    return json.loads(http_get(gw_url + "/health", timeout=10)[1])["agents"]


def start_agent(procs, bins, gw_url, upstream, name):
    ws = gw_url.replace("http://", "ws://") + "/ws"
    before = len(json.loads(http_get(gw_url + "/connections")[1]))
    p = procs.start(
        name,
        [bins / "gateway-agent", "--gateway", ws, "--tunnel", TUNNEL, "--upstream", upstream,
         "--log-level", "warn"],
        SUT_CPU,
    )

    def listed():
        procs.check_alive(p)
        conns = json.loads(http_get(gw_url + "/connections")[1])
        return len(conns) > before and any(TUNNEL in json.dumps(c) for c in conns)

    poll_until(f"{name} to be listed in /connections", listed, 15)
    return p


def run_wrk(url, conns, seconds, script, workdir):
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", str(workdir / script)]
    argv.append(url)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise BenchError(f"wrk failed ({r.returncode}): {r.stderr.strip()}\n{r.stdout}")
    return r.stdout


def check_post_reads_body(url, d):
    """POSTs 1 MiB to /upload-check and checks nginx logged the whole body as read."""
    log_path = d / "check.log"
    before = log_path.read_text().count("\n") if log_path.exists() else 0
    req = urllib.request.Request(
        url + "/upload-check", data=b"y" * BIG_SIZE, method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status != 200:
            raise BenchError(f"POST {url}/upload-check answered {r.status}")
    lines = poll_until(
        "nginx's check log", lambda: log_path.read_text().splitlines()[before:], 5
    )
    length = int(lines[-1].split()[-1])
    if length < BIG_SIZE:
        raise BenchError(f"nginx read only {length} bytes of a 1 MiB POST via {url}")
    return length


# --------------------------------------------------------------------------- phases


def memory_phase(procs, bins, d, upstream, counts):
    """A fresh gateway, idle, with 1 then `counts` agents connected."""
    log("memory: fresh gateway + 1 agent")
    gw, gw_url = start_gateway(procs, bins, d, "gateway-mem")
    agent = start_agent(procs, bins, gw_url, upstream, "agent-mem")
    time.sleep(1)  # let both settle (readiness was polled above)
    out = {
        "idle_1": {
            "agents": agent_count(gw_url),
            "gateway_kib": proc_status(gw.pid)["VmRSS"],
            "agent_kib": proc_status(agent.pid)["VmRSS"],
        },
        "steps": [],
    }
    ws = gw_url.replace("http://", "ws://") + "/ws"
    total = 1
    tools = []
    try:
        for target in counts:
            extra = target - total
            log(f"memory: connecting {extra} more agents (many_agents) for {target} in all")
            t0 = time.monotonic()
            tool = procs.start(
                f"many-agents-{target}",
                [bins / "examples" / "many_agents", "--gateway", ws, "--tunnel", TUNNEL,
                 "--upstream", upstream, "--count", extra, "--parallel", 64],
                LOAD_CPU, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )
            tools.append(tool)
            line = read_line(tool, timeout=180, procs=procs)
            if line.strip() != f"connected {extra}":
                raise BenchError(f"many_agents said {line!r}")
            total = target
            poll_until(f"{target} agents in /health", lambda: agent_count(gw_url) >= target, 60,
                       interval=0.5)
            connect_s = time.monotonic() - t0
            time.sleep(2)  # idle: let connection bursts settle
            procs.check_alive(gw, agent, tool)
            n = agent_count(gw_url)
            st = proc_status(gw.pid)
            step = {
                "agents": n,
                "connect_seconds": round(connect_s, 2),
                "gateway_kib": st["VmRSS"],
                "gateway_hwm_kib": st["VmHWM"],
                "many_agents_kib": sum(proc_status(t.pid)["VmRSS"] for t in tools),
            }
            step["kib_per_agent"] = round(
                (step["gateway_kib"] - out["idle_1"]["gateway_kib"]) / (n - 1), 2
            )
            out["steps"].append(step)
            log(f"memory: {n} agents: gateway RSS {st['VmRSS']} KiB "
                f"({step['kib_per_agent']} KiB per extra agent)")
    finally:
        for t in reversed(tools):
            procs.stop(t)
        procs.stop(agent)
        procs.stop(gw)
    return out


def read_line(p, timeout, procs):
    deadline = time.monotonic() + timeout
    buf = b""
    fd = p.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                procs.check_alive(p)
                raise BenchError(f"{p.bench_name} closed stdout")
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode()
        else:
            procs.check_alive(p)
    raise BenchError(f"{p.bench_name} printed nothing within {timeout}s")


def load_phase(procs, bins, d, nginx_worker, upstream, args):
    """Every scenario, direct and through a fresh gateway + agent; d is nginx's dir."""
    gw, gw_url = start_gateway(procs, bins, procs.workdir, "gateway")
    agent = start_agent(procs, bins, gw_url, upstream, "agent")
    # Extra configurations, measured in the same rounds on the small requests,
    # each a second gateway and agent: --policy, the same build with an
    # allow-all access policy; --versus=DIR, another build (an earlier commit).
    extra = {}
    if args.policy:
        extra["policy"] = (bins, ALLOW_ALL_POLICY)
    if args.versus:
        extra["versus"] = (args.versus, "")
    extra_procs = {}
    for cfg, (cfg_bins, policy) in extra.items():
        gwx, gwx_url = start_gateway(procs, cfg_bins, procs.workdir, f"gateway-{cfg}", policy)
        agentx = start_agent(procs, cfg_bins, gwx_url, upstream, f"agent-{cfg}")
        extra_procs[cfg] = (gwx, agentx, gwx_url)
    time.sleep(1)  # settle before the idle figures (readiness was polled above)
    idle = {"gateway_kib": proc_status(gw.pid)["VmRSS"], "agent_kib": proc_status(agent.pid)["VmRSS"]}
    pids_of = {"tunnel": {"gateway": gw.pid, "agent": agent.pid, "nginx": nginx_worker}}
    pids_of["direct"] = pids_of["tunnel"]
    targets = {"direct": upstream, "tunnel": gw_url}
    for cfg, (gwx, agentx, gwx_url) in extra_procs.items():
        targets[cfg] = gwx_url
        pids_of[cfg] = {"gateway": gwx.pid, "agent": agentx.pid, "nginx": nginx_worker}
    checks = {cfg: check_post_reads_body(url, d) for cfg, url in targets.items()}
    log(f"nginx read the whole 1 MiB POST body: {checks}")
    runs = []
    configs = lambda sid: ("direct", "tunnel", *extra) if sid in report.SMALL \
        else ("direct", "tunnel")  # noqa: E731
    total = args.rounds * sum(len(configs(sc[0])) for sc in SCENARIOS)
    for rnd in range(1, args.rounds + 1):
        for sid, label, path, conns, script in SCENARIOS:
            for cfg in configs(sid):
                pids = pids_of[cfg]
                url = targets[cfg] + path
                log(f"[{len(runs) + 1}/{total}] round {rnd} {label} {cfg}")
                procs.check_alive(gw, agent)
                run_wrk(url, conns, args.warmup, script, d)
                for pid in pids.values():
                    reset_peak_rss(pid)
                before = {k: cpu_ticks(p) for k, p in pids.items()}
                sys0, kids0 = system_ticks(), children_ticks()
                t0 = time.monotonic()
                out = run_wrk(url, conns, args.duration, script, d)
                wall = time.monotonic() - t0
                after = {k: cpu_ticks(p) for k, p in pids.items()}
                sys1, kids1 = system_ticks(), children_ticks()
                ours = sum(after[k] - before[k] for k in pids) + (kids1 - kids0)
                # Busy time of everything else on the machine (other users, builds):
                # the benchmark's figures are only as good as this is small.
                other = {
                    "other_busy_ms": round(max(0, sys1[0] - sys0[0] - ours) * 1000 / CLK_TCK),
                    "steal_ms": round((sys1[1] - sys0[1]) * 1000 / CLK_TCK),
                }
                procs.check_alive(gw, agent)
                runs.append({
                    "round": rnd,
                    "scenario": sid,
                    "config": cfg,
                    "wall_seconds": round(wall, 3),
                    "cpu_ms": {k: (after[k] - before[k]) * 1000 / CLK_TCK for k in pids},
                    "peak_rss_kib": {k: proc_status(p)["VmHWM"] for k, p in pids.items()},
                    "wrk": report.parse_wrk(out),
                    "machine_noise": other,
                    "wrk_output": out,
                })
                w = runs[-1]["wrk"]
                log(f"    {w['rps']:.0f} req/s, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, "
                    f"errors {w['errors']}; other processes busy {other['other_busy_ms']} ms, "
                    f"steal {other['steal_ms']} ms")
    warnings = (procs.workdir / "gateway.log").read_text(errors="replace").splitlines()
    for gwx, agentx, _ in extra_procs.values():
        procs.stop(agentx)
        procs.stop(gwx)
    procs.stop(agent)
    procs.stop(gw)
    return runs, checks, idle, warnings[-50:]


# --------------------------------------------------------------------------- metadata


def command_output(argv, cwd=None):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def machine_info(root):
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": model,
            "kernel": platform.release(),
            "ip_local_port_range": Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split(),
            "ulimit_nofile": command_output(["bash", "-c", "ulimit -n"]),
        },
        "versions": {
            "rustc": command_output(["rustc", "-V"]),
            "nginx": command_output(["nginx", "-v"]).replace("nginx version: ", ""),
            "wrk": command_output(["wrk", "-v"]).splitlines()[0].split(" Copyright")[0],
            "git_commit": command_output(["git", "rev-parse", "HEAD"], cwd=root)
            + (" (with uncommitted changes)" if dirty else ""),
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--quick", action="store_true", help="1 s per scenario, 1 round, <= 1,000 agents")
    ap.add_argument("--only", help="comma-separated scenario ids (e.g. get13_c32,get1m_c8); "
                    "for measuring one change quickly, not for the published table")
    ap.add_argument("--seconds", type=int, help="seconds per run (overrides the mode)")
    ap.add_argument("--rounds", type=int, help="rounds (overrides the mode)")
    ap.add_argument("--no-memory", action="store_true", help="skip the idle-agents memory phase")
    ap.add_argument("--strict", action="store_true", help="exit 2 when any run had errors "
                    "(for a smoke test: the figures themselves are never judged)")
    ap.add_argument("--policy", action="store_true", help="also measure the small requests "
                    "through a gateway with an allow-all access policy, in the same rounds")
    ap.add_argument("--versus", type=Path, help="also measure the small requests through "
                    "gateway and gateway-agent from this directory (another build), in the same "
                    "rounds")
    ap.add_argument("--bins", type=Path, help="directory holding gateway, gateway-agent and "
                    "examples/many_agents (default: ROOT/target/release); for comparing builds")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup, rounds, agents = 1, 1, 1, [1000]
    else:
        args.duration, args.warmup, rounds, agents = 10, 2, 3, [1000, 10000]
    args.rounds = args.rounds or rounds
    args.duration = args.seconds or args.duration
    if args.no_memory:
        agents = []
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {sc[0] for sc in SCENARIOS}
        if unknown:
            ap.error(f"unknown scenario(s) {sorted(unknown)}; known: {[sc[0] for sc in SCENARIOS]}")
        SCENARIOS[:] = [sc for sc in SCENARIOS if sc[0] in wanted]

    bins = args.bins or args.root / "target" / "release"
    results_dir = args.root / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    workdir.chmod(0o755)  # nginx's worker may run as another user (www-data)
    procs = Procs(workdir)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    started = time.time()
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        **machine_info(args.root),
        "settings": {
            "mode": ("quick" if args.quick else "full") + (f" (only {args.only})" if args.only else ""),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "versus": str(args.versus) if args.versus else None,
            "load_cpu": LOAD_CPU,
            "sut_cpu": SUT_CPU,
            "wrk": "wrk -t1 --latency (default 2 s timeout), pinned with taskset",
            "order": "per round, per scenario: direct then tunnel",
            "nginx": "nginx worker_processes 1, access_log off, keepalive_requests 1e8",
            "gateway": "release build, log level warn, one open tunnel 'bench'",
            "binaries": str(bins),
        },
        "targets": report.TARGETS,
        "scenarios": [{"id": s[0], "label": s[1], "path": s[2], "connections": s[3]}
                      for s in SCENARIOS],
    }
    ok = False
    try:
        nginx_dir = workdir / "nginx"
        nginx_dir.mkdir()
        nginx_port = free_port()
        write_nginx_conf(nginx_dir, nginx_port)
        _master, worker, upstream = start_nginx(procs, nginx_dir, nginx_port)
        data["memory"] = memory_phase(procs, bins, workdir, upstream, agents) if agents else {}
        runs, checks, idle, gw_log = load_phase(procs, bins, nginx_dir, worker, upstream, args)
        data["runs"] = runs
        data["post_body_check_bytes"] = checks
        data["load_gateway_idle"] = idle
        data["gateway_log_tail"] = gw_log
        ok = True
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
        log(f"FAILED: {e}")
    finally:
        procs.stop_all()
    data["elapsed_seconds"] = round(time.time() - started, 1)
    if not ok:
        log(f"logs kept in {workdir}")
        partial = results_dir / f"{stamp}-failed.json"
        partial.write_text(json.dumps(data, indent=1))
        log(f"partial results: {partial}")
        return 1
    data["summary"] = report.summarize(data)
    out = results_dir / f"{stamp}.json"
    out.write_text(json.dumps(data, indent=1))
    print(report.markdown(data))
    log(f"raw results: {out} ({data['elapsed_seconds']} s)")
    shutil.rmtree(workdir, ignore_errors=True)
    failed = [f"{r['scenario']} {r['config']} round {r['round']}: {r['wrk']['errors']} errors"
              for r in data["runs"] if r["wrk"]["errors"]]
    if args.strict and failed:
        log("errors (--strict): " + "; ".join(failed))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
