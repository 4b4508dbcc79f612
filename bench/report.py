#!/usr/bin/env python3
"""Number crunching for the gateway benchmark (stdlib only).

- parse_wrk(text): the figures of one `wrk --latency` run.
- summarize(data): medians over rounds, ratios, target checks.
- markdown(data): the tables printed by bench/run.

Run on its own to re-render a saved result: python3 bench/report.py bench/results/X.json
"""

import json
import re
import statistics
import sys

# What the tunnel should reach (from the benchmark issue).
TARGETS = {
    # tunnel req/s divided by direct req/s, at least
    "ratio": {
        "get13_c1": 0.48,
        "get13_c32": 0.33,
        "get13_c256": 0.33,
        "get1m_c8": 0.23,
        "post1m_c8": 0.27,
    },
    # tunnel p99 at most this many times direct p99
    "p99_factor": {"get13_c256": 10},
    # gateway + agent CPU per 1000 small (13 B) requests, ms, under
    "cpu_ms_per_1000_small": 16,
    # gateway RSS with one idle agent, KiB, under
    "idle_rss_kib": 8 * 1024,
    # gateway RSS per additional idle agent, KiB, under
    "kib_per_agent": 16,
    "errors": 0,
}
SMALL = ("get13_c1", "get13_c32", "get13_c256")

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(text):
    """Requests, req/s, p50/p99 (ms) and errors (non-2xx/3xx + socket errors)."""
    out = {}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    if not m:
        raise ValueError(f"no request count in wrk output:\n{text}")
    out["requests"] = int(m.group(1))
    out["rps"] = float(re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M).group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+(\S+)", text, re.M)
        out[f"p{pct}_ms"] = round(_ms(m.group(1)), 4) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    out["socket_errors"] = dict(
        zip(("connect", "read", "write", "timeout"), map(int, m.groups()) if m else (0,) * 4)
    )
    out["errors"] = out["non_2xx"] + sum(out["socket_errors"].values())
    return out


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(data):
    """Per scenario and configuration: medians over rounds; then ratios and checks."""
    t = data["targets"]
    scenarios = {}
    for s in data["scenarios"]:
        sid = s["id"]
        row = {"label": s["label"]}
        for cfg in ("direct", "tunnel", "policy", "versus"):
            runs = [r for r in data["runs"] if r["scenario"] == sid and r["config"] == cfg]
            if not runs and cfg in ("policy", "versus"):
                continue
            per_k = lambda r, who: (  # noqa: E731  ms of CPU per 1000 requests
                sum(r["cpu_ms"][w] for w in who) * 1000 / r["wrk"]["requests"]
                if r["wrk"]["requests"] else None
            )
            row[cfg] = {
                "rounds_rps": [r["wrk"]["rps"] for r in runs],
                "rps": _median([r["wrk"]["rps"] for r in runs]),
                "p50_ms": _median([r["wrk"]["p50_ms"] for r in runs]),
                "p99_ms": _median([r["wrk"]["p99_ms"] for r in runs]),
                "errors": sum(r["wrk"]["errors"] for r in runs),
                "cpu_ms_per_1000": {
                    "gateway+agent": _median([per_k(r, ("gateway", "agent")) for r in runs]),
                    "gateway": _median([per_k(r, ("gateway",)) for r in runs]),
                    "agent": _median([per_k(r, ("agent",)) for r in runs]),
                    "nginx": _median([per_k(r, ("nginx",)) for r in runs]),
                },
                "peak_rss_kib": {
                    who: max(r["peak_rss_kib"][who] for r in runs)
                    for who in ("gateway", "agent", "nginx")
                },
            }
        d, tu = row["direct"], row["tunnel"]
        row["ratio"] = tu["rps"] / d["rps"] if d["rps"] else None
        for extra in ("policy", "versus"):
            if extra in row and d["rps"]:
                row[f"{extra}_ratio"] = row[extra]["rps"] / d["rps"]
        row["rounds_ratio"] = [
            round(a / b, 3) for a, b in zip(tu["rounds_rps"], d["rounds_rps"]) if b
        ]
        checks = {
            "ratio": row["ratio"] is not None and row["ratio"] >= t["ratio"][sid],
            "errors": d["errors"] + tu["errors"] <= t["errors"],
        }
        if sid in t["p99_factor"]:
            checks["p99"] = tu["p99_ms"] < t["p99_factor"][sid] * d["p99_ms"]
        if sid in SMALL:
            cpu = tu["cpu_ms_per_1000"]["gateway+agent"]
            checks["cpu"] = cpu is not None and cpu < t["cpu_ms_per_1000_small"]
        row["checks"] = checks
        scenarios[sid] = row
    mem = data["memory"]
    if not mem:
        return {"scenarios": scenarios, "memory_checks": {}}
    memory_checks = {"idle_rss": mem["idle_1"]["gateway_kib"] < t["idle_rss_kib"]}
    for step in mem["steps"]:
        memory_checks[f"kib_per_agent_{step['agents']}"] = (
            step["kib_per_agent"] < t["kib_per_agent"]
        )
    return {"scenarios": scenarios, "memory_checks": memory_checks}


def _fmt_ms(v):
    if v is None:
        return "-"
    if v < 1:
        return f"{v * 1000:.0f} µs"
    if v < 10:
        return f"{v:.2f} ms"
    return f"{v:.1f} ms"


def _mib(kib):
    return f"{kib / 1024:.1f}"


def _ok(flag):
    return "✅" if flag else "❌"


def markdown(data):
    s = data.get("summary") or summarize(data)
    t = data["targets"]
    m, v, st = data["machine"], data["versions"], data["settings"]
    lines = [
        f"# gateway benchmark, {data['date']}",
        "",
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}",
        f"- versions: {v['rustc']}; nginx {v['nginx']}; {v['wrk']}; commit {v['git_commit']}",
        f"- settings: {st['mode']} run, {st['rounds']} round(s) x {st['duration_s']} s per "
        f"scenario and configuration after a {st['warmup_s']} s warm-up, {st['order']}; "
        f"wrk -t1 on CPU {st['load_cpu']}; nginx (1 worker), gateway and agent on CPU "
        f"{st['sut_cpu']}; loopback; figures are medians over rounds, errors are summed",
        f"- run took {data['elapsed_seconds']:.0f} s",
        "",
        "| scenario | direct req/s | tunnel req/s | ratio (target) | direct p50 / p99 "
        "| tunnel p50 / p99 | errors direct / tunnel | gw+agent CPU per 1000 req (gw / agent) "
        "| peak RSS gw / agent (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sid, row in s["scenarios"].items():
        d, tu, c = row["direct"], row["tunnel"], row["checks"]
        ratio = f"{row['ratio']:.2f} (≥ {t['ratio'][sid]}) {_ok(c['ratio'])}"
        p99 = f"{_fmt_ms(tu['p50_ms'])} / {_fmt_ms(tu['p99_ms'])}"
        if "p99" in c:
            p99 += f" (p99 < {t['p99_factor'][sid]}x direct) {_ok(c['p99'])}"
        cpu = tu["cpu_ms_per_1000"]
        cpu_cell = (
            f"{cpu['gateway+agent']:.1f} ms ({cpu['gateway']:.1f} / {cpu['agent']:.1f})"
        )
        if "cpu" in c:
            cpu_cell += f" (< {t['cpu_ms_per_1000_small']}) {_ok(c['cpu'])}"
        rss = tu["peak_rss_kib"]
        lines.append(
            f"| {row['label']} | {d['rps']:,.0f} | {tu['rps']:,.0f} | {ratio} "
            f"| {_fmt_ms(d['p50_ms'])} / {_fmt_ms(d['p99_ms'])} | {p99} "
            f"| {d['errors']} / {tu['errors']} {_ok(c['errors'])} | {cpu_cell} "
            f"| {_mib(rss['gateway'])} / {_mib(rss['agent'])} |"
        )
    lines += [
        "",
        "Ratios per round: "
        + "; ".join(
            f"{row['label']} {', '.join(f'{r:.2f}' for r in row['rounds_ratio'])}"
            for row in s["scenarios"].values()
        ),
        "",
        "nginx worker CPU per 1000 requests, direct / tunnel: "
        + "; ".join(
            f"{row['label']} {row['direct']['cpu_ms_per_1000']['nginx']:.1f} / "
            f"{row['tunnel']['cpu_ms_per_1000']['nginx']:.1f} ms"
            for row in s["scenarios"].values()
        ),
    ]
    with_policy = [row for row in s["scenarios"].values() if "policy" in row]
    if with_policy:
        lines += ["", "Allow-all access policy (IP lists, rate limit, concurrency cap), same rounds: "
                  + "; ".join(
                      f"{row['label']} ratio {row['ratio']:.2f} without, "
                      f"{row['policy_ratio']:.2f} with; gateway CPU per request "
                      f"{row['tunnel']['cpu_ms_per_1000']['gateway']:.1f} / "
                      f"{row['policy']['cpu_ms_per_1000']['gateway']:.1f} µs"
                      for row in with_policy)]
    with_versus = [row for row in s["scenarios"].values() if "versus" in row]
    if with_versus:
        lines += ["", f"This build vs {data['settings'].get('versus')}, same rounds: "
                  + "; ".join(
                      f"{row['label']} ratio {row['ratio']:.2f} vs {row['versus_ratio']:.2f}; "
                      f"gateway CPU per request {row['tunnel']['cpu_ms_per_1000']['gateway']:.1f} "
                      f"vs {row['versus']['cpu_ms_per_1000']['gateway']:.1f} µs"
                      for row in with_versus)]
    noise = [(r.get("machine_noise") or {}, r["wall_seconds"]) for r in data["runs"]]
    busy = [n.get("other_busy_ms", 0) / (w * 10) for n, w in noise]
    steal = [n.get("steal_ms", 0) / (w * 10) for n, w in noise]
    lines += [
        "",
        "Other processes on the machine during the measured runs, in % of one CPU "
        f"(median / max): busy {statistics.median(busy):.0f} / {max(busy):.0f} %, "
        f"VM steal {statistics.median(steal):.1f} / {max(steal):.1f} %. Peak RSS is the "
        "highest VmHWM over the rounds, reset before each run (memory the allocator kept "
        "from earlier runs counts).",
    ]
    if not data["memory"]:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Memory (a fresh gateway, agents connected and idle)",
        "",
        "| agents | gateway RSS | KiB per agent beyond the first (target < "
        f"{t['kib_per_agent']}) | time to connect them | many_agents RSS |",
        "|---:|---:|---:|---:|---:|",
    ]
    mem = data["memory"]
    idle = mem["idle_1"]
    lines.append(
        f"| 1 | {_mib(idle['gateway_kib'])} MiB (target < {t['idle_rss_kib'] // 1024} MiB) "
        f"{_ok(s['memory_checks']['idle_rss'])} | - | - | - |"
    )
    for step in mem["steps"]:
        ok = s["memory_checks"][f"kib_per_agent_{step['agents']}"]
        lines.append(
            f"| {step['agents']:,} | {_mib(step['gateway_kib'])} MiB "
            f"| {step['kib_per_agent']:.1f} {_ok(ok)} | {step['connect_seconds']:.1f} s "
            f"| {_mib(step['many_agents_kib'])} MiB |"
        )
    lines += [
        "",
        f"Agent (gateway-agent) idle RSS: {_mib(idle['agent_kib'])} MiB. "
        f"Load-test gateway idle RSS before the runs: "
        f"{_mib(data['load_gateway_idle']['gateway_kib'])} MiB.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULT.json")
    with open(sys.argv[1]) as f:
        saved = json.load(f)
    print(markdown(saved))
