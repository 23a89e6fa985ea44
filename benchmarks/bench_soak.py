"""Soak benchmark: the 50-OPD emulation at full load for --minutes with periodic policy reloads.

Run (as root, Open vSwitch running; takes --minutes plus ~1 minute):
    nice -n 5 .venv/bin/python benchmarks/bench_soak.py --minutes 30 --out benchmarks/SOAK.md

What it does:
  * `satupintu emulate` (jateng-50 on star-50, scale 1/100) with its own switch prefix "k",
    OpenFlow port 6816 and metrics on 127.0.0.1:9816, so it runs beside other emulations;
  * full load: every OPD and the Wi-Fi pool download (--upload: every OPD uploads as well),
    each a bounded iperf3 run (CUBIC, --flow-seconds) restarted in a loop until the end.
    Download is the contended direction; both directions at once saturate the single
    ovs-vswitchd thread of a 2-core machine (measured on tree-50: realtime RTT p50 760 ms, in
    OVS's receive sockets), which would measure OVS, not the controller;
  * a policy reload every --reload-every seconds, cycling valid B (one OPD's ceiling halved),
    an invalid file, valid A (the original), another invalid file, ... (each outcome checked
    against the status file);
  * every --sample-every seconds: the controller's VmRSS, open fds and threads (/proc), and a
    realtime-class UDP echo probe (1 s at 50 packets/s) from three OPDs on different tiers.
Targets: RSS drift (median of the last window vs the first) <= 5%, no growing latency
(probe RTT p50/p99 per window). Raw samples go to --workdir/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from satupintu.emulation.observe import echo_server, probe_result, read_status, rss_kib, start_probe
from satupintu.emulation.traffic import Host, IperfServers, collect, percentile, start_client
from satupintu.emulation.variants import broken_variants, edit_opd

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "jateng-50.yaml"
TOPOLOGY = REPO / "topologies" / "star-50.yaml"
PREFIX, OPENFLOW_PORT, METRICS = "k", 6816, "127.0.0.1:9816"
CHANGED_OPD = "SETWAN"
PROBE_HOSTS = ("opd1", "opd20", "opd45")  # SETDA (largest guarantee), a mid-tier and a small OPD
DOWNLOAD_PORT, UPLOAD_PORT = 5300, 5500


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--reload-every", type=float, default=20.0, help="seconds between policy reloads")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS/RTT samples")
    parser.add_argument("--window-minutes", type=float, default=5.0, help="report windows (default 5)")
    parser.add_argument("--flow-seconds", type=int, default=60, help="length of one bounded iperf3 run")
    parser.add_argument("--upload", action="store_true", help="every OPD uploads as well (saturates OVS here)")
    parser.add_argument("--workdir", default="/tmp/satupintu-soak")
    parser.add_argument("--out", default=None, help="write the Markdown report here (e.g. benchmarks/SOAK.md)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base = POLICY.read_text()
    valid = [("B: SETWAN ceiling 500Mbps", edit_opd(base, CHANGED_OPD, "ceiling: 1Gbps", "ceiling: 500Mbps")),
             ("A: original", base)]
    broken = broken_variants(base, CHANGED_OPD)
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(base)
    ready_file = workdir / "ready.json"
    ready_file.unlink(missing_ok=True)
    started_at = datetime.now(UTC)
    log_file = open(workdir / "emulate.log", "w")  # noqa: SIM115 (open while the emulation runs)
    emulate = subprocess.Popen(
        [sys.executable, "-m", "satupintu.cli", "emulate", "--policy", str(policy_file), "--topology", str(TOPOLOGY),
         "--switch-prefix", PREFIX, "--openflow-port", str(OPENFLOW_PORT), "--metrics-listen", METRICS,
         "--ready-file", str(ready_file), "--workdir", str(workdir / "controller")],
        stdout=log_file, stderr=subprocess.STDOUT)
    try:
        ready = _wait_ready(emulate, ready_file)
        result = soak(ready, args, policy_file, valid, broken)
    finally:
        emulate.send_signal(signal.SIGTERM)
        emulate.wait(timeout=120)
        log_file.close()
    result["started_utc"] = started_at.isoformat(timespec="seconds")
    result["command"] = " ".join(["benchmarks/bench_soak.py", *sys.argv[1:]])
    (workdir / "soak.json").write_text(json.dumps(result, indent=1))
    report = markdown(result, args)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


def _wait_ready(process: subprocess.Popen, ready_file: Path) -> dict:
    deadline = time.monotonic() + 240
    while not ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"emulation did not become ready (exit {process.poll()}); see its log")
        time.sleep(0.5)
    return json.loads(ready_file.read_text())


def _load_loop(inet: Host, client: Host, port: int, download: bool, until: float, flow_s: int,
               stats: dict, stop: threading.Event) -> None:
    """Bounded iperf3 runs back to back until `until` or `stop` (each run at most `flow_s` seconds)."""
    while (left := until - time.monotonic()) > 5 and not stop.is_set():
        seconds = int(min(flow_s, left - 2))
        with IperfServers(inet) as servers:
            servers.start(1, base_port=port)
            result = collect(start_client(client, inet, port, seconds, download=download, omit_s=1),
                             client, download, seconds + 30)
        stats["runs"] += 1
        if result.error:
            stats["errors"] += 1
            time.sleep(1)


def soak(ready: dict, args: argparse.Namespace, policy_file: Path, valid: list, broken: list) -> dict:
    status_file = ready["controller_status_file"]
    pid = int(Path(ready["controller_pid_file"]).read_text())
    duration_s = args.minutes * 60
    start = time.monotonic()
    until = start + duration_s
    inet = Host.from_ready(ready, "inet")
    echo = echo_server(ready, duration_s + 120)
    load_stats = {"runs": 0, "errors": 0}
    stop = threading.Event()
    threads = []
    clients = sorted(name for name in ready["hosts"] if name != "inet")
    for index, name in enumerate(clients):
        host = Host.from_ready(ready, name)
        upload = args.upload and not name.startswith("wifi")
        directions = [(True, DOWNLOAD_PORT)] + ([(False, UPLOAD_PORT)] if upload else [])
        for download, base_port in directions:
            thread = threading.Thread(target=_load_loop, daemon=True, args=(
                inet, host, base_port + index, download, until, args.flow_seconds, load_stats, stop))
            thread.start()
            threads.append(thread)
    samples: list[dict] = []
    reloads: list[dict] = []
    next_reload = start + args.reload_every
    next_sample = start + 5
    try:
        while (now := time.monotonic()) < until:
            if now >= next_reload:
                turn, expect_ok = len(reloads) // 2, len(reloads) % 2 == 0  # valid, invalid, valid, ...
                what, text = valid[turn % len(valid)] if expect_ok else broken[turn % len(broken)]
                reloads.append(_reload(status_file, policy_file, what, text, expect_ok, now - start))
                next_reload += args.reload_every
            elif now >= next_sample:
                samples.append(_sample(ready, pid, now - start))
                next_sample += args.sample_every
            else:
                time.sleep(min(0.2, max(0.0, min(next_reload, next_sample) - now)))
    finally:
        stop.set()  # interrupted: no new runs; the running ones end within --flow-seconds
        for thread in threads:
            thread.join(timeout=args.flow_seconds + 60)
        echo.terminate()
        echo.wait(timeout=10)
    final = read_status(status_file)
    return {"samples": samples, "reloads": reloads, "load": load_stats, "duration_s": duration_s,
            "controller_pid": pid, "final_generation": final.get("generation"),
            "final_reloads_ok": final.get("reloads_ok"), "final_reloads_failed": final.get("reloads_failed")}


def _reload(status_file: str, policy_file: Path, what: str, text: str, expect_ok: bool, at_s: float) -> dict:
    before = (read_status(status_file).get("last_reload") or {}).get("at", 0)
    temporary = policy_file.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, policy_file)  # the daemon sees the new mtime within its 0.5 s poll
    written = time.monotonic()
    last: dict = {}
    while time.monotonic() - written < 10:
        last = read_status(status_file).get("last_reload") or {}
        if last.get("at", 0) > before:
            break
        time.sleep(0.05)
    seen = last.get("at", 0) > before
    return {"at_s": round(at_s, 1), "what": what, "expect_ok": expect_ok, "seen": seen, "ok": last.get("ok"),
            "as_expected": seen and last.get("ok") == expect_ok, "duration_s": last.get("duration_s"),
            "outcome_after_s": round(time.monotonic() - written, 3)}


def _sample(ready: dict, pid: int, at_s: float) -> dict:
    probes = [start_probe(ready, name, 50, 0.02) for name in PROBE_HOSTS]
    proc = Path(f"/proc/{pid}")
    stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    sample = {"at_s": round(at_s, 1), "rss_kib": rss_kib(pid), "fds": len(os.listdir(proc / "fd")),
              "threads": len(os.listdir(proc / "task")),
              "cpu_s": (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")}
    results = [probe_result(probe, 30) for probe in probes]
    sample["rtts_ms"] = [round(rtt, 3) for result in results for rtt in result["rtts_ms"]]
    sample["sent"] = sum(result["sent"] for result in results)
    sample["lost"] = sum(result["lost"] for result in results)
    return sample


def windows(result: dict, window_s: float) -> list[dict]:
    rows = []
    count = max(1, round(result["duration_s"] / window_s))
    previous_cpu = None
    for index in range(count):
        low, high = index * window_s, (index + 1) * window_s
        inside = [sample for sample in result["samples"] if low <= sample["at_s"] < high]
        if not inside:
            continue
        rtts = [rtt for sample in inside for rtt in sample["rtts_ms"]]
        cpu_end = inside[-1]["cpu_s"]
        cpu_start = inside[0]["cpu_s"] if previous_cpu is None else previous_cpu
        span = inside[-1]["at_s"] - (inside[0]["at_s"] if previous_cpu is None else low)
        previous_cpu = cpu_end
        rows.append({"from_min": low / 60, "to_min": high / 60, "samples": len(inside),
                     "rss_median_kib": statistics.median(sample["rss_kib"] for sample in inside),
                     "rss_max_kib": max(sample["rss_kib"] for sample in inside),
                     "fds": max(sample["fds"] for sample in inside),
                     "threads": max(sample["threads"] for sample in inside),
                     "cpu_percent": 100 * (cpu_end - cpu_start) / span if span > 0 else float("nan"),
                     "p50": percentile(rtts, 0.5), "p99": percentile(rtts, 0.99),
                     "sent": sum(sample["sent"] for sample in inside),
                     "lost": sum(sample["lost"] for sample in inside),
                     "reloads": sum(1 for reload in result["reloads"] if low <= reload["at_s"] < high)})
    return rows


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    ovs = subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"{cpu}, `nproc` = {os.cpu_count()}; kernel {platform.release()}; Python {platform.python_version()}; "
            f"{ovs.strip()} (userspace datapath)")


def markdown(result: dict, args: argparse.Namespace) -> str:
    rows = windows(result, args.window_minutes * 60)
    first, last = rows[0], rows[-1]
    drift = (last["rss_median_kib"] - first["rss_median_kib"]) / first["rss_median_kib"]
    reloads = result["reloads"]
    unexpected = [reload for reload in reloads if not reload["as_expected"]]
    sent = sum(row["sent"] for row in rows)
    lost = sum(row["lost"] for row in rows)
    lines = [
        "# Soak: 30 minutes at full load with periodic reloads" if args.minutes == 30 else
        f"# Soak: {args.minutes:g} minutes at full load with periodic reloads",
        "",
        f"- Date: {result['started_utc']} (UTC start); machine: {_machine()}.",
        f"- Command: `nice -n 5 .venv/bin/python {result['command']}` (as root). Run WITHOUT the shared",
        "  measurement lock and at nice 5, beside other engineers' tests: its targets are drift and latency",
        "  growth, not absolute rates.",
        "- Emulation: jateng-50 on star-50 at scale 1/100 (switch prefix `k`, OpenFlow 6816).",
        f"- Load: every OPD {'downloading and uploading' if args.upload else 'downloading'}, the Wi-Fi pool "
        f"downloading (iperf3 CUBIC, "
        f"{args.flow_seconds} s runs back to back): {result['load']['runs']} runs, {result['load']['errors']} "
        "failed to start or finish.",
        f"- Reloads: every {args.reload_every:g} s, valid B / invalid / valid A / invalid ...: {len(reloads)} reloads, "
        f"{sum(1 for r in reloads if r['expect_ok'])} valid and {sum(1 for r in reloads if not r['expect_ok'])} "
        f"invalid; {len(unexpected)} with an unexpected outcome; final generation "
        f"{result['final_generation']} (ok {result['final_reloads_ok']}, rejected {result['final_reloads_failed']}).",
        f"- Samples every {args.sample_every:g} s: controller VmRSS, fds, threads, CPU (/proc), and a realtime UDP "
        f"echo probe (50 packets in 1 s from each of {', '.join(PROBE_HOSTS)}).",
        "",
        f"**Controller RSS drift: {100 * drift:+.2f}%** (median of the last window vs the first; target <= 5%: "
        f"{'met' if abs(drift) <= 0.05 else 'NOT met'}). "
        f"**Probe RTT p50 {first['p50']:.2f} -> {last['p50']:.2f} ms, p99 {first['p99']:.2f} -> {last['p99']:.2f} ms** "
        f"(first -> last window). Probe loss {lost} of {sent} ({100 * lost / max(1, sent):.3f}%).",
        "",
        "| window (min) | samples | reloads | RSS median (MiB) | RSS max (MiB) | fds | threads | ctl CPU % "
        "| RTT p50 (ms) | RTT p99 (ms) | probe lost/sent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['from_min']:g}-{row['to_min']:g} | {row['samples']} | {row['reloads']} "
                     f"| {row['rss_median_kib'] / 1024:.1f} | {row['rss_max_kib'] / 1024:.1f} | {row['fds']} "
                     f"| {row['threads']} | {row['cpu_percent']:.1f} | {row['p50']:.2f} | {row['p99']:.2f} "
                     f"| {row['lost']}/{row['sent']} |")
    mean_outcome = statistics.mean(r["outcome_after_s"] for r in reloads) if reloads else float("nan")
    lines += ["", f"Reload outcome seen in the status file {mean_outcome:.2f} s after the write on average "
              "(the daemon polls the file's mtime every 0.5 s).", ""]
    if unexpected:
        lines += ["Unexpected reload outcomes:", ""] + [f"- {r}" for r in unexpected] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
