"""Enforcement quality side by side: Satu Pintu, Faucet 1.10.12 (meters), no control.

Run (as root, Open vSwitch running): .venv/bin/python benchmarks/bench_quality.py [--repeat 3] [--modes ...]

The same Mininet backbone (policies/jateng-50.yaml on topologies/star-50.yaml, scale 1/100,
switch prefix "m": bridges mgw, mcore), the same traffic (iperf3 TCP CUBIC from
satupintu.emulation.traffic, the UDP echo probe on realtime port 3478), three controllers:
  * satupintu: `satupintu run` (EmulationSession), OpenFlow on 127.0.0.1:6817;
  * faucet: Faucet 1.10.12 in its own virtualenv (benchmarks/.venv-faucet, created on first use)
    on 127.0.0.1:6818 with benchmarks/faucet_config.py's per-owner meters at the ceilings;
  * none: no controller, static forwarding flows (ovs-ofctl), no meters, no shaping.
Faucet and "none" have no queues of their own, so the backbone's line rate (what the upstream
link itself would impose) is a tbf at the backbone capacity with a 50 ms FIFO on the gateway's
two ports; for Satu Pintu its own HTB root (the same capacity) is that bottleneck.

Scenarios per repeat (each flow 10 s measured after 2 s omitted):
  single: SETWAN alone, download then upload: goodput / its ceiling;
  contention: every OPD and the Wi-Fi pool download at once: per-OPD goodput / guarantee,
    Jain's index over those shares, the backbone used; a realtime UDP probe from DINKES during
    it (RTT p50/p99 against the same probe on an idle backbone);
  five: 5 of the 50 OPDs (two L, one M, one S, one XS) download: total / backbone and / what
    they may use (min(backbone, sum of their ceilings)).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faucet_config import OwnerRates, faucet_config, owner_rates

from satupintu.compile.plan import Direction, leaf_minor
from satupintu.drivers.tc import read_stats
from satupintu.emulation.network import EmulatedNetwork, renamed
from satupintu.emulation.processes import stop_process
from satupintu.emulation.session import EmulationSession, ensure_ovs
from satupintu.emulation.traffic import Host, IperfServers, collect, in_host, percentile, run_flows, start_client
from satupintu.policy.load import load_policy
from satupintu.policy.model import Policy
from satupintu.policy.schedule import active_window
from satupintu.topology import Topology, load_topology

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "jateng-50.yaml"
TOPOLOGY = REPO / "topologies" / "star-50.yaml"
SCALE = 0.01
PREFIX = "m"
SATUPINTU_OPENFLOW_PORT = 6817
SATUPINTU_METRICS = "127.0.0.1:9817"
FAUCET_OPENFLOW_PORT = 6818
FAUCET_PROMETHEUS_PORT = 9818
FAUCET_VERSION = "1.10.12"
FAUCET_VENV = Path(__file__).resolve().parent / ".venv-faucet"
MEASURE_LOCK = "/tmp/satupintu-measure.lock"
SECONDS = 10
ECHO_PORT = 3478  # realtime class in jateng-50
PROBE_OPD, SINGLE_OPD = "DINKES", "SETWAN"
LINE_BUFFER_MS = 50
MODES = ("satupintu", "faucet", "none")
# A repeat during which more than this waited for OVS in the upstream port's socket buffer ran while
# OVS could not keep up (other emulations share ovs-vswitchd): discarded and run again, at most
# EXTRA_ATTEMPTS times per controller; the last attempt is kept whatever it shows.
DISTURBED_KB = 1000
EXTRA_ATTEMPTS = 2


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


_lock_depth = 0  # holds of the lock by this process: nested holds must not flock a second file


@contextlib.contextmanager
def measurement_lock() -> Iterator[float]:
    """Hold the shared measurement lock (flock on /tmp/satupintu-measure.lock); yields seconds waited.
    Re-entrant within one process (run_all holds it across several phases)."""
    import fcntl

    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield 0.0
        finally:
            _lock_depth -= 1
        return
    started = time.monotonic()
    with open(MEASURE_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield time.monotonic() - started
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------ the three backbones


def ensure_faucet_venv() -> Path:
    """benchmarks/.venv-faucet with faucet==1.10.12 (Faucet pins os-ken 3.x: it cannot share .venv)."""
    faucet = FAUCET_VENV / "bin" / "faucet"
    if faucet.exists():
        return FAUCET_VENV
    log(f"creating {FAUCET_VENV} with faucet=={FAUCET_VERSION} (first run only)")
    # Faucet's dependencies pytricia, chewie and beka build from source: a C compiler and Python's headers.
    headers = subprocess.run(["/usr/bin/python3", "-c", "import os, sysconfig; print(os.path.exists("
                              "os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"],
                             capture_output=True, text=True).stdout.strip() == "True"
    if shutil.which("gcc") is None or not headers:
        log("installing gcc and python3-dev (Faucet's pytricia compiles a C extension)")
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "gcc", "libc6-dev", "python3-dev"],
                       check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(FAUCET_VENV)], check=True)
    subprocess.run([str(FAUCET_VENV / "bin" / "pip"), "install", "-q", f"faucet=={FAUCET_VERSION}"], check=True)
    return FAUCET_VENV


def faucet_version() -> str:
    result = subprocess.run([str(FAUCET_VENV / "bin" / "pip"), "show", "faucet"], capture_output=True, text=True)
    return next((line.split()[1] for line in result.stdout.splitlines() if line.startswith("Version:")), "?")


def _line_rate(policy: Policy, topology: Topology) -> None:
    """The upstream link's own rate and FIFO on the gateway ports (for the controllers without queues)."""
    for direction, port in (("download", topology.backbone_port), ("upload", topology.upstream_port)):
        rate = int(getattr(policy.backbone, direction) * SCALE)
        subprocess.run(["tc", "qdisc", "replace", "dev", topology.interface(topology.gateway, port), "root", "tbf",
                        "rate", f"{rate}bit", "burst", "64kb", "latency", f"{LINE_BUFFER_MS}ms"], check=True)


def _wait_forwarding(hosts: dict[str, Host], upstream: Host, timeout_s: float = 90.0) -> float:
    """Ping the upstream host from every host until all answer (Faucet learns MACs on the way)."""
    started = time.monotonic()
    pending = [host for host in hosts.values() if host.name != upstream.name]
    while pending:
        processes = [(host, subprocess.Popen(in_host(host.pid, ["ping", "-n", "-c", "1", "-W", "1", upstream.ip]),
                                             stdout=subprocess.DEVNULL)) for host in pending]
        pending = [host for host, process in processes if process.wait() != 0]
        if pending and time.monotonic() - started > timeout_s:
            raise RuntimeError(f"no forwarding after {timeout_s:.0f}s from {[host.name for host in pending][:5]}")
    return time.monotonic() - started


def _static_flows(topology: Topology, policy: Policy) -> dict[str, list[str]]:
    """Plain forwarding for the star: owner prefixes to their ports, everything else toward the upstream."""
    (trunk,) = topology.trunks
    edge = trunk.b if trunk.a == topology.gateway else trunk.a
    edge_trunk_port = trunk.b_port if edge == trunk.b else trunk.a_port
    gw_trunk_port = trunk.a_port if edge == trunk.b else trunk.b_port
    upstream = topology.upstream_address.split("/")[0].rsplit(".", 1)[0] + ".0/24"
    flows = {topology.gateway: [f"priority=100,{kind},{field}={upstream},actions=output:{topology.upstream_port}"
                                for kind, field in (("ip", "nw_dst"), ("arp", "arp_tpa"))]
             + [f"priority=1,actions=output:{gw_trunk_port}"], edge: [f"priority=1,actions=output:{edge_trunk_port}"]}
    for owner in [*policy.opds, *policy.public_wifi]:
        if topology.attachments[owner.id] != edge:
            raise ValueError("static forwarding supports the star layout only")
        port = topology.attach_port(owner.id)
        for prefix in owner.prefixes:
            flows[edge] += [f"priority=100,ip,nw_dst={prefix},actions=output:{port}",
                            f"priority=100,arp,arp_tpa={prefix},actions=output:{port}"]
    return flows


class Backbone:
    """One mode's emulated backbone; `hosts` once started."""

    def __init__(self, mode: str, policy: Policy, topology: Topology, workdir: Path) -> None:
        self.mode, self.policy, self.topology, self.workdir = mode, policy, topology, workdir
        self.hosts: dict[str, Host] = {}
        self.started_s = 0.0
        self._session: EmulationSession | None = None
        self._network: EmulatedNetwork | None = None
        self._faucet: subprocess.Popen | None = None

    @property
    def download_port(self) -> str:
        return self.topology.interface(self.topology.gateway, self.topology.backbone_port)

    @property
    def upstream_port(self) -> str:
        return self.topology.interface(self.topology.gateway, self.topology.upstream_port)

    def realtime_leaf(self, owner_id: int) -> int | None:
        """The HTB leaf of `owner_id`'s realtime class (Satu Pintu only: the others have no classes)."""
        if self.mode != "satupintu":
            return None
        realtime = next(klass for klass in self.policy.classes if klass.name == "realtime")
        return leaf_minor(owner_id, realtime.id)

    def start(self) -> None:
        started = time.monotonic()
        ensure_ovs()
        if self.mode == "satupintu":
            self._session = EmulationSession(str(POLICY), str(TOPOLOGY), scale=SCALE,
                                             openflow_port=SATUPINTU_OPENFLOW_PORT, metrics_listen=SATUPINTU_METRICS,
                                             workdir=str(self.workdir / "satupintu"), switch_prefix=PREFIX)
            ready = self._session.start()
        else:
            if self.mode == "faucet":
                self._start_faucet()
            self._network = EmulatedNetwork(self.policy, self.topology, scale=SCALE,
                                            controller_port=FAUCET_OPENFLOW_PORT if self.mode == "faucet" else None)
            self._network.start()
            if self.mode == "none":
                for bridge, flows in _static_flows(self.topology, self.policy).items():
                    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flows", bridge, "-"], check=True,
                                   input="\n".join(flows) + "\n", text=True)
            _line_rate(self.policy, self.topology)
            ready = self._network.ready_info("", SCALE)
        self.hosts = {name: Host.from_ready(ready, name) for name in ready["hosts"]}
        _wait_forwarding(self.hosts, self.hosts["inet"])
        self.started_s = time.monotonic() - started

    def _start_faucet(self) -> None:
        venv = ensure_faucet_venv()
        config = self.workdir / "faucet.yaml"
        window = active_window(self.policy, datetime.now(UTC))
        import yaml

        config.write_text(yaml.safe_dump(faucet_config(self.policy, self.topology, SCALE, window), sort_keys=False))
        env = os.environ | {
            "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",  # the launcher execs osken-manager from PATH
            "FAUCET_CONFIG": str(config), "FAUCET_LOG": str(self.workdir / "faucet.log"),
            "FAUCET_EXCEPTION_LOG": str(self.workdir / "faucet-exception.log"),
            "FAUCET_PROMETHEUS_ADDR": "127.0.0.1", "FAUCET_PROMETHEUS_PORT": str(FAUCET_PROMETHEUS_PORT),
        }
        self._faucet = subprocess.Popen(
            [str(venv / "bin" / "faucet"), f"--ryu-ofp-tcp-listen-port={FAUCET_OPENFLOW_PORT}",
             "--ryu-ofp-listen-host=127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "faucet.stderr", "w"))  # noqa: SIM115

    def stop(self) -> None:
        if self._session is not None:
            self._session.stop()
        if self._network is not None:
            self._network.stop()
        stop_process(self._faucet, timeout_s=15)


# ------------------------------------------------------------------ scenarios


def jain_index(values: list[float]) -> float:
    """(sum x)^2 / (n * sum x^2): 1.0 when every x is equal, 1/n when one takes all."""
    return sum(values) ** 2 / (len(values) * sum(value * value for value in values)) if values else float("nan")


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _ovs_cpu_s() -> float:
    """CPU seconds ovs-vswitchd has used (every emulation on this machine shares that one process)."""
    try:
        pid = int(Path("/var/run/openvswitch/ovs-vswitchd.pid").read_text())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _root_backlog_bytes(port: str) -> int:
    out = subprocess.run(["tc", "-s", "-j", "qdisc", "show", "dev", port, "root"], capture_output=True, text=True)
    try:
        return sum(int(qdisc.get("backlog", 0)) for qdisc in json.loads(out.stdout or "[]"))
    except ValueError:
        return 0


def _packet_socket_rmem(ifindex: int) -> int:
    """Bytes (truesize) waiting in the receive buffers of the packet sockets bound to `ifindex`:
    Open vSwitch's userspace datapath reads each port through one; veths have no qdisc (noqueue)."""
    total = 0
    for line in Path("/proc/net/packet").read_text().splitlines()[1:]:
        fields = line.split()  # sk RefCnt Type Proto Iface R Rmem User Inode
        if len(fields) >= 7 and int(fields[4]) == ifindex:
            total += int(fields[6])
    return total


class QueueSampler(threading.Thread):
    """Where packets wait while the realtime probe runs under saturation, sampled every 0.1 s:
    at the gateway's download port (all HTB leaves, or the line's FIFO), in the probe's own
    realtime leaf, and before the gateway: in the receive buffer of the packet socket through
    which OVS reads the upstream port (it fills when OVS cannot forward as fast as the senders
    send: a FIFO ahead of every shaper); plus CPU use."""

    def __init__(self, port: str, realtime_minor: int | None, upstream_port: str) -> None:
        super().__init__(daemon=True)
        self.port, self.realtime_minor = port, realtime_minor
        self.upstream_ifindex = int(Path(f"/sys/class/net/{upstream_port}/ifindex").read_text())
        self.queued: list[int] = []
        self.realtime_queued: list[int] = []
        self.upstream_queued: list[int] = []
        self.cpu_start, self.ovs_start, self.started = _cpu_times(), _ovs_cpu_s(), time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.1):
            self.upstream_queued.append(_packet_socket_rmem(self.upstream_ifindex))
            if self.realtime_minor is None:
                self.queued.append(_root_backlog_bytes(self.port))
                continue
            stats = read_stats(self.port)
            self.queued.append(sum(entry.backlog_bytes for entry in stats.values() if entry.leaf))
            self.realtime_queued.append(stats[self.realtime_minor].qlen if self.realtime_minor in stats else 0)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join(timeout=5)
        busy, total = _cpu_times()
        elapsed = time.monotonic() - self.started
        out = {"diag: CPU busy % (both cores)": 100 * (busy - self.cpu_start[0]) / max(1, total - self.cpu_start[1]),
               "diag: ovs-vswitchd CPU % of one core": 100 * (_ovs_cpu_s() - self.ovs_start) / elapsed,
               "diag: kB queued at the gateway (max)": max(self.queued, default=0) / 1000,
               "diag: kB waiting for OVS on the upstream port (max)": max(self.upstream_queued, default=0) / 1000}
        if self.realtime_minor is not None:
            out["diag: packets queued in the probe's realtime leaf (max)"] = max(self.realtime_queued, default=0)
        return out


def other_bridges() -> int:
    """Open vSwitch bridges of other emulations: they share ovs-vswitchd (and its CPU) with ours."""
    result = subprocess.run(["ovs-vsctl", "--timeout=10", "list-br"], capture_output=True, text=True)
    return sum(1 for name in result.stdout.split() if not name.startswith(PREFIX))


def _echo_server(hosts: dict[str, Host], seconds: float) -> subprocess.Popen:
    inet = hosts["inet"]
    return subprocess.Popen(in_host(inet.pid, [sys.executable, "-m", "satupintu.emulation.udpprobe", "server",
                                               "--bind", inet.ip, "--port", str(ECHO_PORT),
                                               "--duration", str(seconds)]))


def _probe(hosts: dict[str, Host], name: str, count: int, interval_s: float = 0.02) -> subprocess.Popen:
    client, inet = hosts[name], hosts["inet"]
    return subprocess.Popen(in_host(client.pid, [
        sys.executable, "-m", "satupintu.emulation.udpprobe", "client", "--bind", client.ip, "--target", inet.ip,
        "--port", str(ECHO_PORT), "--count", str(count), "--interval", str(interval_s)]),
        stdout=subprocess.PIPE, text=True)


def _probe_result(process: subprocess.Popen, timeout_s: float = 60) -> dict:
    out, _ = process.communicate(timeout=timeout_s)
    return json.loads(out)


def scenario_single(backbone: Backbone, rates: dict[str, OwnerRates]) -> dict[str, float]:
    owner = rates[SINGLE_OPD]
    host, inet = backbone.hosts[f"opd{owner.owner_id}"], backbone.hosts["inet"]
    out = {}
    for direction in (Direction.DOWNLOAD, Direction.UPLOAD):
        result = run_flows(inet, [(host, direction is Direction.DOWNLOAD)], SECONDS)[0]
        if result.error:
            raise RuntimeError(f"single {direction}: {result.error}")
        out[f"single {direction.value} goodput/ceiling"] = result.goodput_bps / owner.ceiling_bps[direction]
    return out


def scenario_contention(backbone: Backbone, policy: Policy, rates: dict[str, OwnerRates]) -> dict[str, float]:
    hosts, inet = backbone.hosts, backbone.hosts["inet"]
    probe_host = f"opd{rates[PROBE_OPD].owner_id}"
    echo = _echo_server(hosts, 120)
    try:
        time.sleep(0.3)
        idle = _probe_result(_probe(hosts, probe_host, 200))
        opds = [rates[opd.code] for opd in policy.opds]
        wifi = rates[policy.public_wifi[0].code]
        clients = [(hosts[f"opd{owner.owner_id}"], True) for owner in opds] + [(hosts[f"wifi{wifi.owner_id}"], True)]
        with IperfServers(inet) as servers:
            ports = servers.start(len(clients))
            processes = [start_client(client, inet, port, SECONDS, download=True)
                         for (client, _), port in zip(clients, ports, strict=True)]
            time.sleep(4)  # 2 s omitted by iperf3, then 2 s of steady state before the probe starts
            sampler = QueueSampler(backbone.download_port, backbone.realtime_leaf(rates[PROBE_OPD].owner_id),
                                   backbone.upstream_port)
            sampler.start()
            busy = _probe(hosts, probe_host, 300)
            loaded = _probe_result(busy)
            diagnosis = sampler.stop()
            results = [collect(process, client, True, SECONDS + 40)
                       for process, (client, _) in zip(processes, clients, strict=True)]
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    errors = [f"{result.client}: {result.error}" for result in results if result.error]
    shares = [result.goodput_bps / owner.guaranteed_bps[Direction.DOWNLOAD]
              for result, owner in zip(results, opds, strict=False)]
    backbone_bps = policy.backbone.download * SCALE
    idle_p50, idle_p99 = percentile(idle["rtts_ms"], 0.5), percentile(idle["rtts_ms"], 0.99)
    busy_p50, busy_p99 = percentile(loaded["rtts_ms"], 0.5), percentile(loaded["rtts_ms"], 0.99)
    return {
        "contention worst OPD goodput/guarantee": min(shares),
        "contention median OPD goodput/guarantee": statistics.median(shares),
        "contention OPDs below 95% of guarantee": sum(share < 0.95 for share in shares),
        "contention Jain index (goodput/guarantee)": jain_index(shares),
        "contention Jain index (raw goodput)": jain_index([result.goodput_bps for result in results[:len(opds)]]),
        "contention backbone used": sum(result.goodput_bps for result in results) / backbone_bps,
        "contention Wi-Fi goodput/floor": results[-1].goodput_bps / wifi.guaranteed_bps[Direction.DOWNLOAD],
        "contention flow errors": len(errors),
        "realtime RTT idle p50 ms": idle_p50, "realtime RTT idle p99 ms": idle_p99,
        "realtime RTT saturated p50 ms": busy_p50, "realtime RTT saturated p99 ms": busy_p99,
        "realtime p99 added ms": busy_p99 - idle_p99,
        "realtime probe loss saturated %": 100 * loaded["lost"] / max(1, loaded["sent"]),
    } | diagnosis


def five_active(policy: Policy) -> list[str]:
    """Two OPDs of the largest guarantee tier, then one of each of the next tiers down to the smallest."""
    tiers: dict[int, list[str]] = {}
    for opd in policy.opds:
        tiers.setdefault(opd.download.guaranteed, []).append(opd.code)
    order = sorted(tiers, reverse=True)
    return [tiers[order[0]][0], tiers[order[0]][1], tiers[order[1]][0], tiers[order[2]][0], tiers[order[-1]][0]]


def scenario_five(backbone: Backbone, policy: Policy, rates: dict[str, OwnerRates]) -> dict[str, float]:
    chosen = [rates[code] for code in five_active(policy)]
    results = run_flows(backbone.hosts["inet"], [(backbone.hosts[f"opd{owner.owner_id}"], True) for owner in chosen],
                        SECONDS)
    total = sum(result.goodput_bps for result in results)
    backbone_bps = policy.backbone.download * SCALE
    may_use = min(backbone_bps, sum(owner.ceiling_bps[Direction.DOWNLOAD] for owner in chosen))
    return {"five active: backbone used": total / backbone_bps, "five active: of what they may use": total / may_use,
            "five active flow errors": sum(1 for result in results if result.error)}


def run_mode(mode: str, repeat: int, workdir: Path, progress: Callable[[str], None] = log) -> dict:
    policy = load_policy(POLICY).policy
    topology = renamed(load_topology(TOPOLOGY), PREFIX)
    window = active_window(policy, datetime.now(UTC))
    rates = {owner.code: owner for owner in owner_rates(policy, topology, SCALE, window)}
    (workdir / mode).mkdir(parents=True, exist_ok=True)
    backbone = Backbone(mode, policy, topology, workdir / mode)
    runs: list[dict[str, float]] = []
    discarded: list[dict[str, float]] = []
    try:
        progress(f"{mode}: building the backbone")
        backbone.start()
        progress(f"{mode}: forwarding after {backbone.started_s:.1f}s; measuring ({repeat} repeats)")
        with measurement_lock() as waited:
            if waited > 1:
                progress(f"{mode}: waited {waited:.0f}s for the measurement lock")
            attempt = 0
            while len(runs) < repeat and attempt < repeat + EXTRA_ATTEMPTS:
                attempt += 1
                run: dict[str, float] = {"diag: other emulations' bridges on this OVS": other_bridges(),
                                         "diag: load average (1 min) at start": os.getloadavg()[0]}
                run |= scenario_single(backbone, rates)
                run |= scenario_contention(backbone, policy, rates)
                run |= scenario_five(backbone, policy, rates)
                disturbed = run["diag: kB waiting for OVS on the upstream port (max)"] > DISTURBED_KB
                attempts_left = repeat + EXTRA_ATTEMPTS - attempt  # after this one
                discard = disturbed and attempts_left >= repeat - len(runs)
                (discarded if discard else runs).append(run)
                note = " OVS fell behind: discarded" if discard else " OVS fell behind: kept (no attempt left)" \
                    if disturbed else ""
                progress(f"{mode}: attempt {attempt}{note}: "
                         + ", ".join(f"{key} {value:.3f}" for key, value in run.items()
                                     if "goodput/" in key or "p99 added" in key or "waiting for OVS" in key))
    finally:
        backbone.stop()
    return {"mode": mode, "window": window, "runs": runs, "discarded": discarded, "start_s": backbone.started_s,
            "five_active": five_active(policy)}


def summary(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", metavar="FILE", help="write the raw runs as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (Mininet, Open vSwitch, tc)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for mode in args.modes.split(","):
            result = run_mode(mode, args.repeat, Path(tmp))
            results.append(result)
            for key in result["runs"][0]:
                low, mid, high = summary([run[key] for run in result["runs"]])
                print(f"  {mode:<10} {key:<45} {low:8.3f} {mid:8.3f} {high:8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
