"""The 50-OPD demo: a realistic mix (some OPDs saturating, video calls, Wi-Fi soaking) and
a per-OPD table of configured versus achieved rates."""

from __future__ import annotations

import json
import subprocess
import sys

from satupintu.emulation.traffic import Host, IperfServers, collect, in_host, start_client
from satupintu.policy.model import Policy
from satupintu.policy.units import format_rate

REALTIME_PORT = 3478


def run_demo(policy: Policy, ready: dict, seconds: int, scale: float) -> str:
    inet = Host.from_ready(ready, "inet")
    opds = sorted(policy.opds, key=lambda opd: opd.id)
    # Every third OPD downloads flat out, every fifth uploads, Wi-Fi soaks up the rest.
    downloaders = [opd for opd in opds if opd.id % 3 == 1]
    uploaders = [opd for opd in opds if opd.id % 5 == 2]
    callers = [opd for opd in opds if opd.id % 10 == 5][:4]
    flows: list[tuple[Host, bool, str]] = [(Host.from_ready(ready, f"opd{o.id}"), True, o.code) for o in downloaders]
    flows += [(Host.from_ready(ready, f"opd{o.id}"), False, o.code) for o in uploaders]
    for pool in policy.public_wifi:
        flows.append((Host.from_ready(ready, f"wifi{pool.id}"), True, pool.code))
    print(f"demo: {len(downloaders)} OPDs downloading, {len(uploaders)} uploading, {len(callers)} video calls, "
          f"Wi-Fi soaking, for {seconds}s at scale {scale}", file=sys.stderr)
    echo = subprocess.Popen(in_host(inet.pid, [sys.executable, "-m", "satupintu.emulation.udpprobe", "server",
                                               "--bind", inet.ip, "--port", str(REALTIME_PORT),
                                               "--duration", str(seconds + 20)]))
    calls = [subprocess.Popen(in_host(Host.from_ready(ready, f"opd{o.id}").pid, [
        sys.executable, "-m", "satupintu.emulation.udpprobe", "client", "--bind",
        Host.from_ready(ready, f"opd{o.id}").ip, "--target", inet.ip, "--port", str(REALTIME_PORT),
        "--count", str(seconds * 20), "--interval", "0.05"]), stdout=subprocess.PIPE, text=True) for o in callers]
    with IperfServers(inet) as servers:
        ports = servers.start(len(flows))
        processes = [start_client(host, inet, port, seconds, download=download)
                     for (host, download, _), port in zip(flows, ports, strict=True)]
        results = [collect(process, host, download, seconds + 30)
                   for process, (host, download, _) in zip(processes, flows, strict=True)]
    call_results = []
    for opd, process in zip(callers, calls, strict=True):
        out, _ = process.communicate(timeout=seconds + 30)
        call_results.append((opd, json.loads(out or "{}")))
    echo.terminate()
    echo.wait(timeout=10)
    return _report(policy, flows, results, call_results, scale)


def _report(policy: Policy, flows, results, call_results, scale: float) -> str:
    by_code = {opd.code: opd for opd in policy.opds}
    lines = [f"{'OPD':<16} {'dir':<9} {'guaranteed':>11} {'ceiling':>10} {'achieved':>11} {'x guar':>7} "
             f"{'of ceiling':>10}"]
    for (_, download, code), result in zip(flows, results, strict=True):
        direction = "download" if download else "upload"
        opd = by_code.get(code)
        if opd is not None:
            allocation = getattr(opd, direction)
            guaranteed, ceiling = allocation.guaranteed * scale, allocation.ceiling * scale
        else:
            pool = next(pool for pool in policy.public_wifi if pool.code == code)
            guaranteed = getattr(pool.floor, direction) * scale
            ceiling = getattr(policy.backbone, direction) * scale
        achieved = result.goodput_bps
        note = f" ERROR {result.error}" if result.error else ""
        lines.append(f"{code:<16} {direction:<9} {format_rate(guaranteed):>11} {format_rate(ceiling):>10} "
                     f"{format_rate(achieved):>11} {achieved / guaranteed:>6.2f}x "
                     f"{100 * achieved / ceiling:>9.1f}%{note}")
    total_down = sum(r.goodput_bps for (_, d, _), r in zip(flows, results, strict=True) if d)
    lines.append(f"backbone download used: {format_rate(total_down)} of "
                 f"{format_rate(policy.backbone.download * scale)} "
                 f"({100 * total_down / (policy.backbone.download * scale):.1f}%)")
    for opd, call in call_results:
        rtts = sorted(call.get("rtts_ms", []))
        if rtts:
            p99 = rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))]
            lines.append(f"video call {opd.code}: {call['received']}/{call['sent']} packets, RTT median "
                         f"{rtts[len(rtts) // 2]:.2f} ms, p99 {p99:.2f} ms")
        else:
            lines.append(f"video call {opd.code}: no replies ({call})")
    return "\n".join(lines)
