"""Traffic for emulation tests and the demo: iperf3 and ping run inside the emulated hosts'
network namespaces (entered by pid from the ready file). Every run is bounded in time."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass

from satupintu.emulation.processes import stop_process

IPERF_BASE_PORT = 5200
# Traffic stands for OPD clients (Windows and Linux default to CUBIC), not for this machine's
# BBR default, which starves competing flows behind shallow HTB queues (measured: some OPDs at 0).
TCP_CONGESTION_CONTROL = "cubic"


def in_host(pid: int, argv: list[str]) -> list[str]:
    """Command line that runs `argv` in the network namespace of host process `pid`."""
    return ["nsenter", "-t", str(pid), "-n", *argv]


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    pid: int
    ip: str

    @classmethod
    def from_ready(cls, ready: dict, name: str) -> Host:
        entry = ready["hosts"][name]
        return cls(name, int(entry["pid"]), entry["ip"])


@dataclass(frozen=True, slots=True)
class FlowResult:
    client: str
    download: bool
    goodput_bps: float  # receiver-side TCP goodput (or UDP received rate)
    seconds: float
    lost_packets: int = 0
    sent_packets: int = 0
    error: str = ""


class IperfServers:
    """One single-use iperf3 server per flow on the upstream host, one port each."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.processes: list[subprocess.Popen] = []

    def start(self, count: int, base_port: int = IPERF_BASE_PORT) -> list[int]:
        ports = [base_port + index for index in range(count)]
        for port in ports:
            self.processes.append(subprocess.Popen(
                in_host(self.server.pid, ["iperf3", "-s", "-1", "-p", str(port), "-B", self.server.ip]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.3)
        return ports

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            stop_process(process, timeout_s=5)
        self.processes.clear()

    def __enter__(self) -> IperfServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_client(client: Host, server: Host, port: int, seconds: float, *, download: bool = False,
                 udp_bps: int | None = None, dscp: int | None = None, omit_s: int = 2) -> subprocess.Popen:
    argv = ["iperf3", "-c", server.ip, "-p", str(port), "-t", str(seconds), "-J", "-B", client.ip,
            "--connect-timeout", "3000", "-C", TCP_CONGESTION_CONTROL]
    if omit_s:
        argv += ["-O", str(omit_s)]
    if download:
        argv.append("-R")
    if udp_bps is not None:
        argv += ["-u", "-b", str(udp_bps), "-l", "1000"]
    if dscp is not None:
        argv += ["-S", str(dscp << 2)]
    return subprocess.Popen(in_host(client.pid, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(process: subprocess.Popen, client: Host, download: bool, timeout_s: float) -> FlowResult:
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return FlowResult(client.name, download, 0.0, 0.0, error="timeout")
    try:
        data = json.loads(out)
    except ValueError:
        return FlowResult(client.name, download, 0.0, 0.0, error=(err or out or "no output")[:300])
    if "error" in data:
        return FlowResult(client.name, download, 0.0, 0.0, error=str(data["error"]))
    end = data.get("end", {})
    if "sum_received" in end:  # TCP
        received = end["sum_received"]
        return FlowResult(client.name, download, float(received["bits_per_second"]), float(received["seconds"]))
    summary = end.get("sum", {})  # UDP: receiver-side loss
    return FlowResult(client.name, download, float(summary.get("bits_per_second", 0.0)),
                      float(summary.get("seconds", 0.0)), int(summary.get("lost_packets", 0)),
                      int(summary.get("packets", 0)))


def run_flows(server: Host, clients: list[tuple[Host, bool]], seconds: float, *, dscp: int | None = None,
              udp_bps: int | None = None) -> list[FlowResult]:
    """Run one flow per (client, download?) pair at the same time; return their results."""
    with IperfServers(server) as servers:
        ports = servers.start(len(clients))
        processes = [start_client(client, server, port, seconds, download=download, dscp=dscp, udp_bps=udp_bps)
                     for (client, download), port in zip(clients, ports, strict=True)]
        return [collect(process, client, download, seconds + 30)
                for process, (client, download) in zip(processes, clients, strict=True)]


_RTT = re.compile(r"time=([\d.]+) ms")


def ping_rtts(client: Host, target_ip: str, count: int, interval_s: float = 0.05, tos: int | None = None,
              size: int = 56) -> list[float]:
    """RTTs in ms of `count` pings (bounded: count and a deadline)."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval_s), "-s", str(size), "-W", "1",
            "-w", str(int(count * interval_s + 5)), target_ip]
    if tos is not None:
        argv[1:1] = ["-Q", str(tos)]
    result = subprocess.run(in_host(client.pid, argv), capture_output=True, text=True,
                            timeout=count * interval_s + 15)
    return [float(value) for value in _RTT.findall(result.stdout)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
