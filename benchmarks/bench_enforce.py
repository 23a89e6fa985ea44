"""Enforcement benchmark: switch connect -> fully enforced, one-OPD changes, controller RSS.

Run (as root, Open vSwitch running; timings need the shared lock):
    flock /tmp/satupintu-measure.lock .venv/bin/python benchmarks/bench_enforce.py [--repeat 3] [--sizes 50,500]
(benchmarks/run_all.py runs this and takes the lock itself.)

Per size and repeat it builds a private test bed, measures, and tears it down again:
  * OVS bridges `mbgw` (dpid 0x42) and `mbcore` (dpid 0x43): datapath_type=netdev,
    fail_mode=secure, OpenFlow13, no controller yet;
  * veth pairs mbgw-eth1/mbcore-eth1 (trunk, download shaped on mbgw-eth1) and mbgw-eth2/mbup-eth0
    (upstream, upload shaped on mbgw-eth2). tc only needs the interfaces, so they are not
    attached to the bridges (the flows name ports by number; OVS accepts that);
  * the OpenFlow driver as a subprocess (`python -m satupintu.drivers.openflow`) listening on
    127.0.0.1:6817 with the compiled plans, so its RSS can be read from /proc.

Stages:
  1. tc full build (TcShaper.apply on both gateway ports, empty interfaces), then
     `ovs-vsctl set-controller` on both bridges; "OpenFlow sync" is set-controller .. the
     later of the two connect reconciles' finish (their `at`, written by the driver).
     tc is applied *before* the connect, so "connect to fully enforced" is reported as
     tc build + OpenFlow sync (sequential, the conservative sum).
  2. one OPD's download ceiling changed (tc only, on the changed port only, as the enforcer
     does: OpenFlow plans stay equal, the driver is told anyway (SIGHUP) and must send
     nothing), then one OPD's hard cap changed
     (one meter modify on mbcore; tc unchanged).
  3. controller VmRSS / VmHWM after enforcement and after the changes.

Names and ports are this benchmark's own (prefix "m", OpenFlow 6817): it runs beside other
emulations, which disturb timings unless every measurement holds the lock.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import synthetic_policy_text

from satupintu.compile.state import compile_state
from satupintu.drivers.openflow import plans_to_json
from satupintu.drivers.tc import ApplyReport, TcShaper
from satupintu.emulation.processes import stop_process
from satupintu.policy.load import load_policy_text
from satupintu.topology import Topology, Trunk

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
GW, CORE = "mbgw", "mbcore"
DPIDS = {GW: 0x42, CORE: 0x43}
LISTEN = ("127.0.0.1", 6817)
VETHS = (("mbgw-eth1", "mbcore-eth1"), ("mbgw-eth2", "mbup-eth0"))
CAPPED_OPD = 1  # gets a hard cap (synthetic policies have none)
CHANGED_OPD = 2  # gets its download ceiling changed
HARD_CAP, HARD_CAP_CHANGED = "500Mbps", "400Mbps"
CEILING_CHANGED = "900Mbps"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


# ------------------------------------------------------------------ policy and plans


def bench_topology(owner_ids: list[int]) -> Topology:
    """star_topology with private switch names: trunk mbgw:1 - mbcore:1, upstream on mbgw:2."""
    return Topology("bench", dict(DPIDS), [Trunk(GW, 1, CORE, 1)], GW, 2, 1, "100.64.0.1",
                    {owner: CORE for owner in owner_ids})


def _opd_block(text: str, opd_id: int) -> tuple[int, int]:
    start = text.index(f"  - id: {opd_id}\n")
    end = text.find("\n  - ", start + 1)
    return start, len(text) if end < 0 else end


def with_hard_cap(text: str, rate: str) -> str:
    _start, end = _opd_block(text, CAPPED_OPD)
    return text[:end] + f"\n    hard_cap: {{download: {rate}}}" + text[end:]


def with_ceiling(text: str, rate: str) -> str:
    start, end = _opd_block(text, CHANGED_OPD)
    block = re.sub(r"(download: \{guaranteed: \w+, ceiling: )\w+", rf"\g<1>{rate}", text[start:end], count=1)
    return text[:start] + block + text[end:]


def compile_text(text: str):
    loaded = load_policy_text(text, "bench.yaml")
    owners = [owner.id for owner in (*loaded.policy.opds, *loaded.policy.public_wifi)]
    return compile_state(loaded.policy, bench_topology(owners))


def plans_of(state) -> dict:
    return {plan.dpid: plan for plan in state.switches}


# ------------------------------------------------------------------ test bed


def teardown() -> None:
    for bridge in (GW, CORE):
        sh("ovs-vsctl", "--if-exists", "del-br", bridge, check=False)
    for name, _peer in VETHS:
        sh("ip", "link", "del", name, check=False)


def setup() -> None:
    teardown()
    for bridge in (GW, CORE):
        sh("ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
           "fail_mode=secure", "protocols=OpenFlow13", f"other-config:datapath-id={DPIDS[bridge]:016x}")
    for name, peer in VETHS:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", name, "up")
        sh("ip", "link", "set", peer, "up")


@dataclass
class Controller:
    workdir: Path
    process: subprocess.Popen | None = None
    plan_path: Path = field(init=False)
    status_path: Path = field(init=False)

    verify_on_change: bool = True

    def __post_init__(self) -> None:
        self.plan_path = self.workdir / "plans.json"
        self.status_path = self.workdir / "status.json"

    def start(self, plans: dict) -> None:
        self.plan_path.write_text(plans_to_json(plans))
        self.status_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(PYTHON), "-m", "satupintu.drivers.openflow", "--plan", str(self.plan_path),
             "--listen", f"{LISTEN[0]}:{LISTEN[1]}", "--status", str(self.status_path),
             *(() if self.verify_on_change else ("--no-verify-on-change",))],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "controller.log", "w"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while not self.status_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"controller did not start; see {self.workdir / 'controller.log'}")
            time.sleep(0.02)

    def status(self) -> dict:
        while True:
            try:
                return json.loads(self.status_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.005)

    def reload(self, plans: dict) -> None:
        self.plan_path.write_text(plans_to_json(plans))
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def wait_records(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Wait until the driver has logged `count` reconciles in all; returns the history."""
        deadline = time.monotonic() + timeout
        while True:
            history = self.status()["reconciles"]
            if len(history) >= count:
                return history
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(history)} of {count} reconciles after {timeout}s")
            time.sleep(0.005)

    def memory_kb(self) -> dict[str, int]:
        assert self.process is not None
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values

    def stop(self) -> None:
        stop_process(self.process, timeout_s=10)


def apply_tc(state, only: list[str] | None = None, shaper: TcShaper | None = None,
             verify: bool = True) -> tuple[float, list[ApplyReport]]:
    """verify=False, with the shaper that built the ports, is what the enforcer does on a policy change."""
    shaper = shaper or TcShaper()
    started = time.perf_counter()
    reports = [shaper.apply(plan, verify=verify) for plan in state.queues if only is None or plan.port in only]
    return time.perf_counter() - started, reports


# ------------------------------------------------------------------ one run


def run_once(opd_count: int, workdir: Path, verify_on_change: bool = True) -> dict[str, float]:
    base_text = with_hard_cap(synthetic_policy_text(opd_count), HARD_CAP)
    state = compile_text(base_text)
    plans = plans_of(state)
    out: dict[str, float] = {}
    setup()
    controller = Controller(workdir, verify_on_change=verify_on_change)
    try:
        controller.start(plans)
        # 1. full build: tc first, then the switches connect.
        shaper = TcShaper()
        out["tc build s"], reports = apply_tc(state, shaper=shaper)
        out["tc build requests"] = sum(report.requests for report in reports)
        started = time.time()
        sh("ovs-vsctl", "set-controller", GW, f"tcp:{LISTEN[0]}:{LISTEN[1]}", "--",
           "set-controller", CORE, f"tcp:{LISTEN[0]}:{LISTEN[1]}")
        history = controller.wait_records(2)
        status = controller.status()
        if not all(switch["in_sync"] for switch in status["switches"].values()) or len(status["switches"]) != 2:
            raise RuntimeError(f"switches not in sync: {status['switches']}")
        by_dpid = {record["dpid"]: record for record in history[:2]}
        finished = {}
        for name in (GW, CORE):
            record = by_dpid[DPIDS[name]]
            if not record["ok"]:
                raise RuntimeError(f"reconcile failed: {record}")
            finished[name] = record["at"]
            out[f"OF {name} sync s"] = record["at"] - started
            out[f"OF {name} reconcile s"] = record["duration_s"]
            out[f"OF {name} messages"] = record["messages"]
        out["OF sync s (both)"] = max(finished.values()) - started
        out["connect->enforced s"] = out["tc build s"] + out["OF sync s (both)"]
        memory = controller.memory_kb()
        out["RSS after enforce MiB"] = memory["VmRSS"] / 1024

        # 2a. one OPD's download ceiling: tc only.
        text = with_ceiling(base_text, CEILING_CHANGED)
        started_compile = time.perf_counter()
        changed = compile_text(text)
        out["ceiling: recompile s"] = time.perf_counter() - started_compile
        new_plans = plans_of(changed)
        out["ceiling: OF plans changed"] = sum(new_plans[dpid] != plans[dpid] for dpid in plans)
        controller.reload(new_plans)
        # As the enforcer does: only ports whose QueuePlan changed, sent as the difference from the
        # plan the shaper last verified (a rate-only change reads nothing back).
        changed_ports = [new.port for new, old in zip(changed.queues, state.queues, strict=True) if new != old]
        out["ceiling: tc ports changed"] = len(changed_ports)
        out["ceiling: tc s"], reports = apply_tc(changed, only=changed_ports, shaper=shaper, verify=False)
        out["ceiling: tc read back"] = sum(report.read_back for report in reports)
        out["ceiling: tc requests"] = sum(report.requests for report in reports)
        out["ceiling: tc class changes"] = sum(report.changes for report in reports)
        time.sleep(0.5)  # give the driver time to (wrongly) reconcile
        out["ceiling: OF messages"] = sum(record["messages"] for record in controller.status()["reconciles"][2:])
        out["ceiling: OF reconciles"] = len(controller.status()["reconciles"]) - 2
        out["ceiling: total s (compile+tc)"] = out["ceiling: recompile s"] + out["ceiling: tc s"]
        seen = 2 + int(out["ceiling: OF reconciles"])

        # 2b. one OPD's hard cap: one meter modify on mbcore, tc unchanged.
        text = with_hard_cap(with_ceiling(synthetic_policy_text(opd_count), CEILING_CHANGED), HARD_CAP_CHANGED)
        started_compile = time.perf_counter()
        capped = compile_text(text)
        out["cap: recompile s"] = time.perf_counter() - started_compile
        capped_plans = plans_of(capped)
        signalled = time.time()
        controller.reload(capped_plans)
        out["cap: tc ports changed"] = sum(new != old for new, old in zip(capped.queues, changed.queues, strict=True))
        changed_switches = sum(capped_plans[dpid] != new_plans[dpid] for dpid in plans)
        history = controller.wait_records(seen + changed_switches)
        records = history[seen:]
        out["cap: OF messages"] = sum(record["messages"] for record in records)
        out["cap: OF meter modifies"] = sum(record["meter_modify"] for record in records)
        out["cap: OF reconcile s"] = max(record["duration_s"] for record in records)
        out["cap: OF read-back s"] = max(record["read_s"] for record in records)
        out["cap: OF SIGHUP->synced s"] = max(record["at"] for record in records) - signalled
        out["cap: total s (compile+OF)"] = out["cap: recompile s"] + out["cap: OF reconcile s"]
        memory = controller.memory_kb()
        out["RSS after changes MiB"] = memory["VmRSS"] / 1024
        out["RSS peak (HWM) MiB"] = memory["VmHWM"] / 1024
    finally:
        controller.stop()
        teardown()
    return out


def print_summary(size: int, runs: list[dict[str, float]]) -> None:
    """min / median / max of every figure over the runs at one size."""
    print(f"{size:>5} OPDs, {len(runs)} runs:")
    for key in runs[0]:
        values = [run[key] for run in runs]
        print(f"    {key:<30} min {min(values):9.4f}  median {statistics.median(values):9.4f}  "
              f"max {max(values):9.4f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="50,500")
    parser.add_argument("--no-verify-on-change", action="store_true",
                        help="driver diffs plan changes against its last applied plan (no read-back)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (OVS bridges, veths, tc)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-enforce-") as tmp:
        for size in (int(value) for value in args.sizes.split(",")):
            print_summary(size, [run_once(size, Path(tmp), not args.no_verify_on_change) for _ in range(args.repeat)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
