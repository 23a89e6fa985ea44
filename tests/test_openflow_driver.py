"""OpenFlow driver: plan <-> os-ken message conversion (pure, no switch) and, against a
real Open vSwitch, reconcile that installs exactly the plan, survives a controller
restart without sending anything or resetting counters, and sends one modify for one
changed action."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from satupintu.compile.plan import Direction, FlowSpec, MeterSpec, RuleKind, SwitchPlan, flow_cookie, meter_id
from satupintu.compile.state import compile_state
from satupintu.drivers import ofmsgs
from satupintu.drivers.openflow import plans_from_json, plans_to_json
from satupintu.policy.load import load_policy_text
from satupintu.reconcile.flows import canonical_flow, diff_switch
from satupintu.topology import star_topology

REPO = Path(__file__).resolve().parents[1]
DATAPATH = SimpleNamespace(ofproto=ofp, ofproto_parser=parser)
TIMEOUT = 15

ADMIT, MARK, FORWARD, INFRA = (flow_cookie(kind, owner) for kind, owner in (
    (RuleKind.ADMIT, 7), (RuleKind.MARK, 0), (RuleKind.FORWARD, 7), (RuleKind.INFRA, 0)))
UP, DOWN = meter_id(7, Direction.UPLOAD), meter_id(7, Direction.DOWNLOAD)
NET = ("10.1.7.0", "255.255.255.0")


def sample_plan(dpid: int, dscp: int = 46) -> SwitchPlan:
    """Three tables like the compiler's: admit (meter, metadata), mark (masked ports,
    set_dscp), forward (masked and host prefixes, IPv6, meter before output)."""
    flows = (
        FlowSpec(0, 200, (("eth_type", 0x0800), ("in_port", 1), ("ipv4_src", NET)),
                 (("meter", UP), ("write_metadata", 1, 3), ("goto", 1)), ADMIT),
        FlowSpec(0, 200, (("arp_spa", NET), ("eth_type", 0x0806), ("in_port", 1)), (("goto", 2),), ADMIT),
        FlowSpec(0, 100, (("in_port", 1),), (("drop",),), ADMIT),
        FlowSpec(1, 990, (("eth_type", 0x0800), ("ip_proto", 17), ("metadata", (1, 3)), ("udp_dst", (5060, 0xFFFE))),
                 (("set_dscp", dscp), ("goto", 2)), MARK),
        FlowSpec(1, 1, (("eth_type", 0x0800), ("metadata", (1, 3))), (("set_dscp", 0), ("goto", 2)), MARK),
        FlowSpec(2, 124, (("eth_type", 0x0800), ("ipv4_dst", NET)), (("meter", DOWN), ("output", 1)), FORWARD),
        FlowSpec(2, 132, (("eth_type", 0x0800), ("ipv4_dst", "10.1.7.9")), (("output", 1),), FORWARD),
        FlowSpec(2, 101, (("eth_type", 0x86DD), ("ipv6_dst", ("2001:db8::", "ffff:ffff::"))), (("output", 2),),
                 FORWARD),
        FlowSpec(2, 1, (("eth_type", 0x0800),), (("output", 2),), INFRA),
        *(FlowSpec(table, 0, (), (("drop",),), INFRA) for table in (0, 1, 2)),
    )
    # OPD 7's hard cap at 1/100 scale: 5 Mbit/s up, 10 Mbit/s down, 500 ms of burst.
    meters = (MeterSpec(UP, 5000, 2500, 7, Direction.UPLOAD), MeterSpec(DOWN, 10000, 5000, 7, Direction.DOWNLOAD))
    return SwitchPlan("s1", dpid, flows, meters)


# ---------------------------------------------------------------- conversion (no switch)


def _through_the_wire(flow: FlowSpec) -> FlowSpec:
    """Serialise our flow-mod, parse it back as the switch would, report it as flow stats."""
    mod = ofmsgs.flow_mod(DATAPATH, flow, "add")
    mod.set_xid(1)
    mod.serialize()
    back = parser.OFPFlowMod.parser(DATAPATH, ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, len(mod.buf), 1, bytes(mod.buf))
    stats = parser.OFPFlowStats(table_id=back.table_id, priority=back.priority, cookie=back.cookie,
                                match=back.match, instructions=back.instructions)
    return ofmsgs.flow_from_stats(stats)


def test_flow_round_trip_through_os_ken_messages() -> None:
    for flow in sample_plan(1).flows:
        assert _through_the_wire(flow) == canonical_flow(flow) == flow


def test_flow_mod_commands_and_instruction_order() -> None:
    flow = sample_plan(1).flows[0]
    assert ofmsgs.flow_mod(DATAPATH, flow, "add").command == ofp.OFPFC_ADD
    assert ofmsgs.flow_mod(DATAPATH, flow, "modify").command == ofp.OFPFC_MODIFY_STRICT
    delete = ofmsgs.flow_mod(DATAPATH, flow, "delete")
    assert delete.command == ofp.OFPFC_DELETE_STRICT and delete.instructions == []
    scrambled = FlowSpec(0, 1, (), (("goto", 1), ("write_metadata", 1, 3), ("output", 2), ("meter", 4)), 0)
    kinds = [item.type for item in ofmsgs.instructions(DATAPATH, scrambled.actions)]
    assert kinds == [ofp.OFPIT_METER, ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_WRITE_METADATA, ofp.OFPIT_GOTO_TABLE]
    assert ofmsgs.instructions(DATAPATH, (("drop",),)) == []
    with pytest.raises(ofmsgs.UnsupportedAction):
        ofmsgs.instructions(DATAPATH, (("flood",),))


def test_unknown_instructions_read_back_different() -> None:
    stats = parser.OFPFlowStats(table_id=0, priority=5, cookie=ADMIT, match=parser.OFPMatch(in_port=1), instructions=[
        parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionSetField(eth_dst="00:00:00:00:00:01")])])
    flow = ofmsgs.flow_from_stats(stats)
    assert flow.actions[0][0] == "unknown"
    desired = SwitchPlan("s1", 1, (FlowSpec(0, 5, (("in_port", 1),), (("output", 2),), ADMIT),), ())
    assert len(diff_switch(desired, [flow], []).flows_modify) == 1


def test_meter_mod_and_read_back() -> None:
    meter = sample_plan(1).meters[0]
    mod = ofmsgs.meter_mod(DATAPATH, meter, "add")
    assert mod.command == ofp.OFPMC_ADD and mod.flags & ofp.OFPMF_KBPS and mod.flags & ofp.OFPMF_BURST
    assert [(band.rate, band.burst_size) for band in mod.bands] == [(5000, 2500)]
    mod.set_xid(1)
    mod.serialize()  # encodes without complaint
    config = parser.OFPMeterConfigStats(flags=ofmsgs.METER_FLAGS, meter_id=meter.meter_id, bands=mod.bands)
    assert ofmsgs.meter_from_config(config) == meter
    packets = parser.OFPMeterConfigStats(flags=ofp.OFPMF_PKTPS, meter_id=meter.meter_id, bands=mod.bands)
    assert ofmsgs.meter_from_config(packets).rate_kbps == ofmsgs.FOREIGN_RATE
    assert ofmsgs.meter_mod(DATAPATH, meter, "delete").bands == []


def test_plan_json_round_trip_of_compiled_plans() -> None:
    policy = load_policy_text((REPO / "policies" / "minimal.yaml").read_text(), "p.yaml").policy
    owners = [owner.id for owner in (*policy.opds, *policy.public_wifi)]
    state = compile_state(policy, star_topology(owners), scale=0.01)
    plans = {plan.dpid: plan for plan in state.switches}
    assert plans_from_json(plans_to_json(plans)) == plans
    for plan in state.switches:  # every compiled flow survives the wire unchanged
        assert all(_through_the_wire(flow) == flow for flow in plan.flows)


# ---------------------------------------------------------------- against Open vSwitch


def _ovs(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _dump_flows(bridge: str, stats: bool = False) -> list[str]:
    argv = ["ovs-ofctl", "-O", "OpenFlow13"] + ([] if stats else ["--no-stats"]) + ["dump-flows", bridge]
    return [line.strip() for line in _ovs(*argv).splitlines() if "cookie=" in line]


def _flow_stats(bridge: str, needle: str) -> tuple[int, float]:
    """(n_packets, duration) of the one flow whose line contains `needle`."""
    lines = [line for line in _dump_flows(bridge, stats=True) if needle in line]
    assert len(lines) == 1, lines
    fields = dict(part.strip().split("=", 1) for part in lines[0].split(" actions=")[0].split(",") if "=" in part)
    return int(fields["n_packets"]), float(fields["duration"].rstrip("s"))


def _meters(bridge: str) -> list[str]:
    text = _ovs("ovs-ofctl", "-O", "OpenFlow13", "dump-meters", bridge)
    return [" ".join(block.split()) for block in text.split("\n\n") if "meter=" in block
            for block in [block[block.index("meter="):]]]


EXPECTED_FLOWS = {
    "cookie=0x5350000100000007, priority=200,ip,in_port=1,nw_src=10.1.7.0/24 "
    "actions=meter:14,write_metadata:0x1/0x3,goto_table:1",
    "cookie=0x5350000100000007, priority=200,arp,in_port=1,arp_spa=10.1.7.0/24 actions=goto_table:2",
    "cookie=0x5350000100000007, priority=100,in_port=1 actions=drop",
    "cookie=0x5350000400000000, priority=0 actions=drop",
    "cookie=0x5350000200000000, table=1, priority=990,udp,metadata=0x1/0x3,tp_dst=0x13c4/0xfffe "
    "actions=set_field:{dscp}->ip_dscp,goto_table:2",
    "cookie=0x5350000200000000, table=1, priority=1,ip,metadata=0x1/0x3 actions=set_field:0->ip_dscp,goto_table:2",
    "cookie=0x5350000400000000, table=1, priority=0 actions=drop",
    "cookie=0x5350000300000007, table=2, priority=132,ip,nw_dst=10.1.7.9 actions=output:1",
    "cookie=0x5350000300000007, table=2, priority=124,ip,nw_dst=10.1.7.0/24 actions=meter:15,output:1",
    "cookie=0x5350000300000007, table=2, priority=101,ipv6,ipv6_dst=2001:db8::/32 actions=output:2",
    "cookie=0x5350000400000000, table=2, priority=1,ip actions=output:2",
    "cookie=0x5350000400000000, table=2, priority=0 actions=drop",
}
EXPECTED_METERS = [
    "meter=14 kbps burst stats bands= type=drop rate=5000 burst_size=2500",
    "meter=15 kbps burst stats bands= type=drop rate=10000 burst_size=5000",
]


def _expected_flows(dscp: int) -> set[str]:
    return {line.replace("{dscp}", str(dscp)) for line in EXPECTED_FLOWS}


def _udp_to_sip_packet() -> str:
    """Ethernet/IPv4/UDP from 10.1.7.5 to 10.2.0.1 port 5060: admit, mark, forward upstream."""
    eth = bytes.fromhex("ffffffffffff" "020000000001" "0800")
    ip = bytes.fromhex("4500001c00000000401100000a0107050a020001")
    udp = (1234).to_bytes(2, "big") + (5060).to_bytes(2, "big") + (8).to_bytes(2, "big") + bytes(2)
    return (eth + ip + udp).hex()


class ControllerProcess:
    """`python -m satupintu.drivers.openflow` on a plan file; reads its JSON status."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.plan_path = workdir / "plans.json"
        self.status_path = workdir / "status.json"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def write_plan(self, plan: SwitchPlan) -> None:
        self.plan_path.write_text(plans_to_json({plan.dpid: plan}))

    def start(self, *extra: str) -> None:
        self.status_path.unlink(missing_ok=True)
        self.starts += 1
        log = (self.workdir / f"controller{self.starts}.log").open("wb")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "controller"),
                                                                        os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "satupintu.drivers.openflow", "--plan", str(self.plan_path),
             "--listen", f"127.0.0.1:{self.port}", "--status", str(self.status_path), *extra],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)  # a crash: no goodbye to the switch
            self.process.wait(timeout=TIMEOUT)
        self.process = None

    def reload(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGHUP)

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_record(self, reason: str, count: int = 1, timeout: float = 30.0) -> dict:
        """The `count`-th reconcile with this reason (since the last start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            records = [record for record in self.status().get("reconciles", []) if record["reason"] == reason]
            if len(records) >= count:
                return records[count - 1]
            time.sleep(0.05)
        raise AssertionError(f"no '{reason}' reconcile within {timeout}s\n{self.log_tail()}")

    def log_tail(self) -> str:
        return (self.workdir / f"controller{self.starts}.log").read_text()[-3000:]


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.emulation
def test_reconcile_against_open_vswitch(tmp_path: Path) -> None:
    bridge = f"spof{os.getpid() % 10000}"
    dpid = int(f"5350{os.getpid():012x}", 16)
    port = _free_port()
    controller = ControllerProcess(tmp_path, port)
    assert subprocess.run(["ovs-vsctl", "br-exists", bridge], timeout=TIMEOUT).returncode == 2, f"{bridge} exists"
    try:
        _ovs("ovs-vsctl", f"--timeout={TIMEOUT}", "add-br", bridge, "--", "set", "bridge", bridge,
             "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13",
             f"other-config:datapath-id={dpid:016x}",
             "--", "add-port", bridge, f"{bridge}p1", "--", "set", "interface", f"{bridge}p1", "type=internal",
             "ofport_request=1",
             "--", "add-port", bridge, f"{bridge}p2", "--", "set", "interface", f"{bridge}p2", "type=internal",
             "ofport_request=2",
             "--", "set-controller", bridge, f"tcp:127.0.0.1:{port}",
             "--", "set", "controller", bridge, "max_backoff=1000")  # reconnect within 1 s of a restart
        _wait_until(lambda: _ovs("ovs-vsctl", "get", "bridge", bridge, "datapath_id").strip('"\n') == f"{dpid:016x}")

        # 1. First connect installs exactly the plan.
        controller.write_plan(sample_plan(dpid))
        controller.start()
        first = controller.wait_record("connect")
        assert first["ok"] and first["flow_add"] == 12 and first["meter_add"] == 2 and first["messages"] == 14
        assert set(_dump_flows(bridge)) == _expected_flows(46) and len(_dump_flows(bridge)) == 12
        assert _meters(bridge) == EXPECTED_METERS
        status = controller.status()["switches"]["s1"]
        assert status["connected"] and status["flows"] == 12 and status["meters"] == 2 and status["errors"] == 0

        # Traffic through the pipeline so that counters are non-zero.
        for _ in range(3):
            _ovs("ovs-ofctl", "-O", "OpenFlow13", "packet-out", bridge, "1", "table", _udp_to_sip_packet())
        admit = "priority=200,ip,in_port=1"
        _wait_until(lambda: _flow_stats(bridge, admit)[0] == 3)
        packets_before, age_before = _flow_stats(bridge, admit)

        # 2. A controller restart (crash) changes nothing that is already right.
        controller.kill()
        controller.start()
        second = controller.wait_record("connect")
        assert second["ok"] and second["messages"] == 0 and second["barriers"] == 0, second
        assert second["flows_read"] == 12 and second["meters_read"] == 2
        packets_after, age_after = _flow_stats(bridge, admit)
        assert packets_after == packets_before == 3
        assert age_after > age_before  # same flow, not a deleted and re-added one
        assert set(_dump_flows(bridge)) == _expected_flows(46)

        # 3. One changed action: exactly one strict modify, counters kept.
        controller.write_plan(sample_plan(dpid, dscp=34))
        controller.reload()
        third = controller.wait_record("plan changed")
        assert third["ok"] and third["messages"] == 1 and third["flow_modify"] == 1, third
        assert third["flow_add"] == third["flow_delete"] == third["meter_add"] == 0
        assert set(_dump_flows(bridge)) == _expected_flows(34)
        assert _flow_stats(bridge, "priority=990")[0] == 3

        # 3b. Only a meter changes (a hard cap), and back: one meter modify each; the meters are read
        # back, the flows (read back and matched when this plan's flows were applied) are not.
        for rate, count in ((4000, 2), (5000, 3)):
            plan = sample_plan(dpid, dscp=34)
            meter = plan.meters[0]
            faster = MeterSpec(meter.meter_id, rate, meter.burst_kbits, meter.owner_id, meter.direction)
            controller.write_plan(SwitchPlan(plan.name, dpid, plan.flows, (faster, *plan.meters[1:])))
            controller.reload()
            record = controller.wait_record("plan changed", count=count)
            assert record["ok"] and (record["messages"], record["meter_modify"]) == (1, 1), record
            assert record["flows_read"] == 0 and record["meters_read"] == 2, record
            assert f"rate={rate} burst_size={meter.burst_kbits}" in _meters(bridge)[0]
        assert _meters(bridge) == EXPECTED_METERS

        # 4. Next connect: a stale flow and meter of ours go, a foreign flow stays.
        _ovs("ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge,
             "cookie=0x5350000300000063,table=2,priority=150,ip,nw_dst=10.99.0.0/16,actions=output:2")
        _ovs("ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge, "cookie=0x1,table=3,priority=5,actions=output:1")
        _ovs("ovs-ofctl", "-O", "OpenFlow13", "add-meter", bridge, "meter=99,kbps,burst,band=type=drop,rate=100,"
             "burst_size=100")
        controller.kill()
        controller.start()
        fourth = controller.wait_record("connect")
        assert fourth["ok"] and (fourth["flow_delete"], fourth["meter_delete"], fourth["messages"]) == (1, 1, 2)
        flows = set(_dump_flows(bridge))
        assert flows == _expected_flows(34) | {"cookie=0x1, table=3, priority=5 actions=output:1"}
        assert _meters(bridge) == EXPECTED_METERS

        # 5. verify_on_change off: a plan change is diffed against the applied plan, no read.
        controller.kill()
        controller.start("--no-verify-on-change")
        assert controller.wait_record("connect")["messages"] == 0
        controller.write_plan(sample_plan(dpid, dscp=46))
        controller.reload()
        fifth = controller.wait_record("plan changed")
        assert fifth["ok"] and not fifth["read_back"] and fifth["flows_read"] == 0
        assert (fifth["messages"], fifth["flow_modify"]) == (1, 1), fifth
        assert set(_dump_flows(bridge)) == _expected_flows(46) | {"cookie=0x1, table=3, priority=5 actions=output:1"}

        # 6. A flow the switch refuses (goto backwards) is counted and logged, the rest applies.
        good = sample_plan(dpid, dscp=46)
        refused = FlowSpec(2, 50, (("in_port", 2),), (("goto", 1),), FORWARD)
        controller.write_plan(SwitchPlan(good.name, dpid, (*good.flows, refused), good.meters))
        controller.reload()
        sixth = controller.wait_record("plan changed", count=2)
        assert not sixth["ok"] and sixth["errors"] == 1 and sixth["flow_add"] == 1, sixth
        switch = controller.status()["switches"]["s1"]
        assert switch["errors"] == 1 and not switch["in_sync"]
        assert "OFPBIC_BAD_TABLE_ID" in controller.log_tail()
        assert set(_dump_flows(bridge)) == _expected_flows(46) | {"cookie=0x1, table=3, priority=5 actions=output:1"}
    finally:
        controller.kill()
        subprocess.run(["ovs-vsctl", f"--timeout={TIMEOUT}", "--if-exists", "del-br", bridge], timeout=TIMEOUT,
                       check=False)
