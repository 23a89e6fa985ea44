"""One emulation run: Open vSwitch, the Mininet backbone, and the controller daemon as a
separate process (so tests can kill and restart it), torn down by name and pid."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from satupintu.emulation.processes import stop_process
from satupintu.policy.load import load_policy
from satupintu.topology import Topology, load_topology, topology_yaml

log = logging.getLogger("satupintu.emulation")

START_OVS = Path(__file__).resolve().parents[3] / "scripts" / "start-ovs.sh"


def ensure_ovs() -> None:
    """Start Open vSwitch (or restart ovs-vswitchd once with a large enough socket send buffer).

    One implementation for set-up and emulation: scripts/start-ovs.sh explains why."""
    if not START_OVS.exists():
        raise RuntimeError(f"{START_OVS} not found: run the emulation from a checkout of Satu Pintu")
    result = subprocess.run(["bash", str(START_OVS)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"starting Open vSwitch failed: {result.stderr.strip()}")


class ControllerProcess:
    """`satupintu run` as a child process with its own pid, status and log files."""

    def __init__(self, policy: str, topology: str, scale: float, openflow_port: int, metrics_listen: str,
                 workdir: Path) -> None:
        self.policy, self.topology, self.scale = policy, topology, scale
        self.openflow_port, self.metrics_listen = openflow_port, metrics_listen
        self.workdir = workdir
        self.status_file = workdir / "status.json"
        self.pid_file = workdir / "controller.pid"
        self.log_file = workdir / "controller.log"
        self.state_dir = workdir / "state"  # its own last good policy copy, never the host's /var/lib/satupintu
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "satupintu.cli", "run", "--policy", self.policy, "--topology", self.topology,
                "--scale", str(self.scale), "--openflow-listen", f"127.0.0.1:{self.openflow_port}",
                "--metrics-listen", self.metrics_listen, "--pid-file", str(self.pid_file),
                "--status-file", str(self.status_file), "--state-dir", str(self.state_dir)]
        self.status_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log_handle:
            self.process = subprocess.Popen(argv, stdout=log_handle, stderr=log_handle, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_process(self.process, sig, timeout_s=15)

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def enforcement_ready(status: dict, topology: Topology) -> bool:
    """All switches connected and in sync, both queue trees applied without error."""
    switches = status.get("switches") or {}
    if status.get("generation", 0) < 1:
        return False
    for name in topology.dpids:
        entry = switches.get(name) or {}
        if not (entry.get("connected") and entry.get("in_sync")):
            return False
    queues = status.get("queues") or {}
    return len(queues) == 2 and not any(entry.get("error") for entry in queues.values())


class EmulationSession:
    def __init__(self, policy_path: str, topology_path: str, scale: float = 0.01, openflow_port: int = 6653,
                 metrics_listen: str = "127.0.0.1:9733", workdir: str | None = None,
                 switch_prefix: str = "") -> None:
        """`switch_prefix` renames every switch (bridges "agw", "acore"): runs beside another emulation."""
        self.policy_path = os.path.abspath(policy_path)
        self.topology_path = os.path.abspath(topology_path)
        self.scale = scale
        self.openflow_port = openflow_port
        self.metrics_listen = metrics_listen
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="satupintu-emu-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policy = load_policy(self.policy_path).policy
        self.topology = load_topology(self.topology_path)
        if switch_prefix:
            from satupintu.emulation.network import renamed

            self.topology = renamed(self.topology, switch_prefix)
            self.topology_path = str(self.workdir / "topology.yaml")
            Path(self.topology_path).write_text(topology_yaml(self.topology))
        self.network = None
        self.controller = ControllerProcess(self.policy_path, self.topology_path, scale, openflow_port,
                                            metrics_listen, self.workdir)

    def start(self, timeout_s: float = 120.0) -> dict:
        from satupintu.emulation.network import EmulatedNetwork

        ensure_ovs()
        started = time.monotonic()
        self.network = EmulatedNetwork(self.policy, self.topology, scale=self.scale,
                                       controller_port=self.openflow_port)
        self.network.start()
        log.info("network built in %.1fs", time.monotonic() - started)
        self.controller.start()
        self.wait_enforced(timeout_s)
        log.info("enforcement active %.1fs after start", time.monotonic() - started)
        return self.ready_info()

    def wait_enforced(self, timeout_s: float) -> float:
        started = time.monotonic()
        deadline = started + timeout_s
        while not enforcement_ready(self.controller.status(), self.topology):
            if not self.controller.alive():
                raise RuntimeError(f"controller exited; see {self.controller.log_file}:\n"
                                   + self.controller.log_file.read_text()[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"enforcement not active within {timeout_s}s; status: {self.controller.status()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def ready_info(self) -> dict:
        host, _, port = self.metrics_listen.rpartition(":")
        info = self.network.ready_info(f"http://{host}:{port}/metrics", self.scale)
        info.update({"controller_pid": self.controller.process.pid if self.controller.process else None,
                     "controller_status_file": str(self.controller.status_file),
                     "controller_pid_file": str(self.controller.pid_file),
                     "controller_state_dir": str(self.controller.state_dir),
                     "controller_log": str(self.controller.log_file),
                     "policy": self.policy_path, "topology": self.topology_path,
                     "openflow_port": self.openflow_port})
        return info

    def stop(self) -> None:
        self.controller.kill(signal.SIGTERM)
        if self.network is not None:
            self.network.stop()
            self.network = None
