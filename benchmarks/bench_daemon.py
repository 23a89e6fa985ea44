"""The real daemon (`satupintu run`) at N OPDs: switch connect -> fully enforced, one-OPD changes, RSS.

Run (as root, Open vSwitch running): .venv/bin/python benchmarks/bench_daemon.py [--repeat 3] [--sizes 50,500]

Same test bed as bench_enforce.py (bridges mbgw/mbcore, veths, benchmarks/synthetic.py's policy
at scale 1.0 plus a download hard cap on OPD 1), but the whole daemon runs, as in production:
policy loader, enforcer, tc shaper, OpenFlow driver and the Prometheus exporter in one process.
  1. The daemon starts (loads, compiles, builds both HTB trees) with the switches not yet
     pointed at it; then `ovs-vsctl set-controller` on both bridges. "connect -> enforced" is
     set-controller .. the later switch's connect reconcile finished (the driver's `at`).
  2. One OPD's download ceiling changed in the policy file + SIGHUP: the daemon's own reload
     time (load + validate + compile + tc on the changed port + plans handed to the driver),
     and that no OpenFlow message follows.
  3. One OPD's hard cap changed + SIGHUP: reload time + the meter's OpenFlow reconcile.
  4. VmRSS after enforcement and after the changes (VmHWM: the peak).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_enforce as bed
from synthetic import synthetic_policy_text

from satupintu.emulation.processes import stop_process
from satupintu.policy.load import load_policy_text
from satupintu.topology import topology_yaml

METRICS_LISTEN = "127.0.0.1:9817"
TIMEOUT_S = 120.0


class Daemon:
    def __init__(self, workdir: Path, policy_text: str, profile: Path | None = None) -> None:
        self.workdir = workdir
        self.policy = workdir / "policy.yaml"
        self.status_file = workdir / "status.json"
        self.policy.write_text(policy_text)
        topology = workdir / "topology.yaml"
        policy = load_policy_text(policy_text, "bench.yaml").policy
        owners = [owner.id for owner in (*policy.opds, *policy.public_wifi)]
        topology.write_text(topology_yaml(bed.bench_topology(owners)))
        self.status_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(bed.PYTHON), *(["-m", "cProfile", "-o", str(profile)] if profile else []),
             "-m", "satupintu.cli", "run", "--policy", str(self.policy), "--topology", str(topology),
             "--openflow-listen", f"{bed.LISTEN[0]}:{bed.LISTEN[1]}", "--metrics-listen", METRICS_LISTEN,
             "--pid-file", str(workdir / "daemon.pid"), "--status-file", str(self.status_file),
             "--state-dir", str(workdir / "state"), "--no-watch",
             "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "daemon.log", "w"))  # noqa: SIM115

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, ready, what: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            status = self.status()
            if ready(status):
                return status
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon: no {what}; log:\n{(self.workdir / 'daemon.log').read_text()[-3000:]}")
            time.sleep(0.02)

    def change(self, text: str) -> dict:
        """Write the policy, SIGHUP, wait for the next generation; returns its status."""
        generation = self.status().get("generation", 0)
        self.policy.write_text(text)
        self.process.send_signal(signal.SIGHUP)
        return self.wait(lambda status: status.get("generation", 0) > generation, "reload")

    def memory_mib(self) -> dict[str, float]:
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values

    def stop(self) -> None:
        stop_process(self.process, timeout_s=30)


def _reconciles(status: dict) -> dict[str, dict]:
    return {name: (entry.get("last_reconcile") or {}) for name, entry in (status.get("switches") or {}).items()}


def run_once(opd_count: int, workdir: Path, profile: Path | None = None) -> dict[str, float]:
    base_text = bed.with_hard_cap(synthetic_policy_text(opd_count), bed.HARD_CAP)
    out: dict[str, float] = {}
    bed.setup()
    daemon = Daemon(workdir, base_text, profile)
    try:
        status = daemon.wait(lambda s: s.get("generation", 0) >= 1 and len(s.get("queues") or {}) == 2, "start")
        out["startup reload s"] = status["last_reload"]["duration_s"]
        started = time.time()
        bed.sh("ovs-vsctl", "set-controller", bed.GW, f"tcp:{bed.LISTEN[0]}:{bed.LISTEN[1]}", "--",
           "set-controller", bed.CORE, f"tcp:{bed.LISTEN[0]}:{bed.LISTEN[1]}")
        status = daemon.wait(lambda s: len(_reconciles(s)) == 2 and all(
            record.get("ok") and record.get("at", 0) > started for record in _reconciles(s).values())
            and all(entry.get("in_sync") for entry in s["switches"].values()), "switches in sync")
        records = _reconciles(status)
        out["connect->enforced s"] = max(record["at"] for record in records.values()) - started
        out["connect OF messages"] = sum(record["messages"] for record in records.values())
        out["RSS enforced MiB"] = daemon.memory_mib()["VmRSS"]

        # One OPD's download ceiling: tc only.
        queues_before = status["queues"]
        status = daemon.change(bed.with_ceiling(base_text, bed.CEILING_CHANGED))
        if not status["last_reload"]["ok"]:
            raise RuntimeError(f"ceiling reload failed: {status['last_reload']}")
        out["ceiling: reload s"] = status["last_reload"]["duration_s"]
        reapplied = [entry for port, entry in status["queues"].items() if entry != queues_before.get(port)]
        out["ceiling: tc ports re-applied"] = len(reapplied)
        out["ceiling: tc requests"] = sum(entry.get("requests", 0) for entry in reapplied)
        time.sleep(1.2)  # the driver would have reconciled by now if the OpenFlow plans differed
        after = _reconciles(daemon.status())
        out["ceiling: OF messages"] = sum(record["messages"] for name, record in after.items()
                                          if record.get("at", 0) != records[name].get("at"))

        # One OPD's hard cap: one meter modify on the OPD switch.
        signalled = time.time()
        ceiling_changed = bed.with_ceiling(synthetic_policy_text(opd_count), bed.CEILING_CHANGED)
        status = daemon.change(bed.with_hard_cap(ceiling_changed, bed.HARD_CAP_CHANGED))
        out["cap: reload s"] = status["last_reload"]["duration_s"]
        status = daemon.wait(lambda s: _reconciles(s).get(bed.CORE, {}).get("at", 0) > signalled, "meter reconcile")
        record = _reconciles(status)[bed.CORE]
        out["cap: OF messages"] = record["messages"]
        out["cap: OF reconcile s"] = record["duration_s"]
        out["cap: OF read-back s"] = record["read_s"]  # flows and meters read back before the diff
        out["cap: total s"] = out["cap: reload s"] + out["cap: OF reconcile s"]
        memory = daemon.memory_mib()
        out["RSS after changes MiB"] = memory["VmRSS"]
        out["RSS peak (HWM) MiB"] = memory["VmHWM"]
    finally:
        daemon.stop()
        bed.teardown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="50,500")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="run the daemon under cProfile; DIR/daemon-<OPDs>-<run>.prof (times inflate ~2-3x)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (OVS bridges, veths, tc)", file=sys.stderr)
        return 2
    for size in (int(value) for value in args.sizes.split(",")):
        runs = []
        for run in range(args.repeat):
            profile = args.profile / f"daemon-{size}-{run}.prof" if args.profile else None
            if profile:
                profile.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
                runs.append(run_once(size, Path(tmp), profile))
        bed.print_summary(size, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
