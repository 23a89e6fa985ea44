"""Watching a running emulation from outside, for tests and benchmarks: UDP echo probes
(loss and RTT of a realtime stream), the flows and HTB classes actually installed, and the
controller's status file. Everything reads the real switch, kernel or process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from satupintu.emulation.traffic import Host, in_host

ECHO_PORT = 3478  # a realtime port in the example policies: probes ride the realtime class
# The userspace datapath loses a rare probe packet under load even with no change at all
# (measured: 1 of 7,000 with one TCP flow, no reload). Tests therefore ask for no loss
# around a change and at most this fraction over the whole stream.
BACKGROUND_LOSS = 0.001


def echo_server(ready: dict, seconds: float, port: int = ECHO_PORT) -> subprocess.Popen:
    """A UDP echo server on the upstream host for `seconds` (then it exits by itself)."""
    inet = Host.from_ready(ready, ready.get("upstream_host", "inet"))
    return subprocess.Popen(in_host(inet.pid, [sys.executable, "-m", "satupintu.emulation.udpprobe", "server",
                                               "--bind", inet.ip, "--port", str(port), "--duration", str(seconds)]))


def start_probe(ready: dict, name: str, count: int, interval_s: float, port: int = ECHO_PORT) -> subprocess.Popen:
    """`count` echo requests from host `name` every `interval_s`; read with `probe_result`."""
    client = Host.from_ready(ready, name)
    inet = Host.from_ready(ready, ready.get("upstream_host", "inet"))
    return subprocess.Popen(in_host(client.pid, [
        sys.executable, "-m", "satupintu.emulation.udpprobe", "client", "--bind", client.ip, "--target", inet.ip,
        "--port", str(port), "--count", str(count), "--interval", str(interval_s)]),
        stdout=subprocess.PIPE, text=True)


def probe_result(process: subprocess.Popen, timeout_s: float) -> dict:
    out, _ = process.communicate(timeout=timeout_s)
    return json.loads(out)


def lost_near(results: list[dict], moment_unix: float, before_s: float = 0.2, after_s: float = 2.0) -> list[float]:
    """Send times (relative to `moment_unix`) of lost probe packets close to that moment.

    A change can only hurt packets sent after it or still in flight (milliseconds here);
    losses further back are the datapath's background loss (seen: 2 packets 0.885 s
    before the file was written), bounded separately by BACKGROUND_LOSS."""
    near = []
    for result in results:
        for sequence in result["lost_sequences"]:
            offset = result["started_unix"] + sequence * result["interval_s"] - moment_unix
            if -before_s <= offset <= after_s:
                near.append(round(offset, 3))
    return near


def lost_unix(result: dict) -> list[float]:
    """Unix send times of the lost packets of one probe result."""
    return [result["started_unix"] + sequence * result["interval_s"] for sequence in result["lost_sequences"]]


def total_loss(results: list[dict]) -> float:
    return sum(r["lost"] for r in results) / max(1, sum(r["sent"] for r in results))


def flow_count(bridge: str) -> int:
    """Flows on `bridge` that carry a cookie line (all of them, as ovs-ofctl prints them)."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge], capture_output=True, text=True,
                         check=True).stdout
    return sum(1 for line in out.splitlines() if "cookie=" in line)


def class_ids(port: str) -> list[str]:
    """HTB class ids on `port`, sorted."""
    out = subprocess.run(["tc", "class", "show", "dev", port], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[2] for line in out.splitlines() if line.startswith("class htb"))


def read_status(path: str | Path) -> dict:
    """The controller's JSON status file; {} while it is missing or being replaced."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/status has no VmRSS line")
