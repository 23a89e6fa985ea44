"""The emulated 50-OPD backbone (star-50 + jateng-50 at scale 1/100) without a controller:
bridges in the userspace datapath and secure fail mode, ports numbered as the topology says,
hosts addressed and routed on-link, offloads off, and a teardown that leaves nothing of ours.

Switch names get a per-process prefix (`renamed`) so the test can run beside a live
emulation of the same topology; nothing is cleaned up by pattern, never with `mn -c`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from satupintu.emulation.network import (
    UPSTREAM_HOST,
    EmulatedNetwork,
    EmulationError,
    renamed,
    switch_interfaces,
)
from satupintu.policy.load import load_policy
from satupintu.topology import Topology, load_topology

pytestmark = pytest.mark.emulation

REPO = Path(__file__).resolve().parents[1]
PREFIX = f"t{os.getpid() % 100}"  # "t42core-eth1900" is 15 characters: the most Linux allows
DPID_OFFSET = 0x5E00_0000 + (os.getpid() % 100) * 0x100
START_BUDGET_S = 30.0  # measured ~2-3 s idle, ~14 s with other tests hogging both cores
OFFLOADS = ("tx-checksumming", "rx-checksumming", "tcp-segmentation-offload", "generic-segmentation-offload",
            "generic-receive-offload")


def _run(argv: list[str], check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def _vsctl(*args: str) -> str:
    return _run(["ovs-vsctl", "--timeout=15", *args]).strip()


@pytest.fixture(scope="module")
def policy():
    return load_policy(REPO / "policies" / "jateng-50.yaml").policy


@pytest.fixture(scope="module")
def topology() -> Topology:
    return renamed(load_topology(REPO / "topologies" / "star-50.yaml"), PREFIX, DPID_OFFSET)


@pytest.fixture(scope="module")
def network(policy, topology) -> Iterator[EmulatedNetwork]:
    net = EmulatedNetwork(policy, topology, scale=0.01, controller_port=None)
    try:
        net.start()
        yield net
    finally:
        net.stop()


def _offloads(output: str) -> dict[str, str]:
    features = dict(re.findall(r"^([a-z-]+): (on|off)", output, re.MULTILINE))
    return {name: features.get(name, "missing") for name in OFFLOADS}


def test_network_builds_fast(network: EmulatedNetwork) -> None:
    print(f"timings: {network.timings}")
    assert network.timings["start"] < START_BUDGET_S, network.timings


def test_bridges_are_userspace_secure_openflow13(network: EmulatedNetwork, topology: Topology) -> None:
    gateway, core = PREFIX + "gw", PREFIX + "core"
    for bridge in (gateway, core):
        assert _vsctl("get", "bridge", bridge, "fail_mode") == "secure"
        assert _vsctl("get", "bridge", bridge, "datapath_type") == "netdev"
        assert "OpenFlow13" in _vsctl("get", "bridge", bridge, "protocols")
        assert int(_vsctl("get", "bridge", bridge, "other_config:datapath-id").strip('"'), 16) == \
            topology.dpids[bridge]
    assert len(_vsctl("list-ports", core).split()) == 52  # trunk + 50 OPDs + Wi-Fi
    assert sorted(_vsctl("list-ports", gateway).split()) == [f"{gateway}-eth1", f"{gateway}-eth2"]


def test_ports_carry_the_topology_numbers(network: EmulatedNetwork, topology: Topology) -> None:
    core = PREFIX + "core"
    for owner in (1, 27, 50, 900):
        assert _vsctl("get", "Interface", f"{core}-eth{1000 + owner}", "ofport") == str(1000 + owner)
    assert _vsctl("get", "Interface", f"{core}-eth1", "ofport") == "1"
    assert _vsctl("get", "Interface", f"{PREFIX}gw-eth2", "ofport") == "2"


def test_hosts_have_their_addresses_and_an_on_link_default_route(network: EmulatedNetwork, policy) -> None:
    assert len(network.hosts) == 52
    assert network.hosts["opd1"].ip == "10.33.5.10"
    assert network.hosts["opd50"].ip == "10.33.250.10"
    assert network.hosts["wifi900"].ip == "10.200.0.10"
    assert network.hosts[UPSTREAM_HOST].ip == "100.64.0.1"
    for name, info in network.hosts.items():
        addresses = network.host(name).cmd(f"ip -4 -o addr show dev {name}-eth0")
        for address in info.addresses:
            assert f"inet {address} " in addresses, (name, addresses)
        assert network.host(name).cmd("ip route show default").split() == ["default", "dev", f"{name}-eth0",
                                                                          "scope", "link"]
    setda = next(opd for opd in policy.opds if opd.code == "SETDA")
    assert len(setda.prefixes) == 2 and network.hosts["opd1"].addresses == ("10.33.5.10/24", "10.33.7.10/24")


def test_offloads_are_off_on_both_ends(network: EmulatedNetwork, topology: Topology) -> None:
    for name in ("opd1", "opd50", "wifi900", UPSTREAM_HOST):
        assert set(_offloads(network.host(name).cmd(f"ethtool -k {name}-eth0")).values()) == {"off"}, name
    for interface in switch_interfaces(topology):
        assert set(_offloads(_run(["ethtool", "-k", interface])).values()) == {"off"}, interface


def test_ready_info_is_the_ready_file_shape(network: EmulatedNetwork) -> None:
    info = json.loads(json.dumps(network.ready_info("http://127.0.0.1:9733/metrics", 0.01)))
    assert info["scale"] == 0.01 and info["metrics_url"] == "http://127.0.0.1:9733/metrics"
    assert len(info["hosts"]) == 52
    opd7 = info["hosts"]["opd7"]
    assert (opd7["name"], opd7["ip"]) == ("opd7", "10.33.35.10") and Path(f"/proc/{opd7['pid']}").exists()
    # The pid is a handle on the host's network namespace (what traffic.py enters with nsenter).
    out = _run(["nsenter", "-t", str(opd7["pid"]), "-n", "ip", "-4", "-o", "addr", "show", "dev", "opd7-eth0"])
    assert "10.33.35.10/24" in out


def test_secure_bridges_forward_nothing_without_flows(network: EmulatedNetwork) -> None:
    out = network.host("opd1").cmd("ping -n -c 1 -W 1 100.64.0.1")
    assert " 0 received" in out, out


def test_hand_installed_flows_carry_ping_and_tcp(network: EmulatedNetwork) -> None:
    """Port numbers end to end and offloads off: a TCP flow would stall otherwise."""
    gateway, core = PREFIX + "gw", PREFIX + "core"
    flows = {gateway: ["in_port=1,actions=output:2", "in_port=2,actions=output:1"],
             core: ["in_port=1001,actions=output:1", "in_port=1,actions=output:1001"]}
    try:
        for bridge, specs in flows.items():
            for spec in specs:
                _run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge, f"cookie=0x5e,{spec}"])
        out = network.host("opd1").cmd("ping -n -c 3 -i 0.2 -W 2 100.64.0.1")
        assert " 3 received" in out, out
        inet = network.host(UPSTREAM_HOST)
        server = inet.popen(["iperf3", "-s", "-1", "-B", "100.64.0.1", "-p", "5299"])
        try:
            time.sleep(0.3)
            result = network.host("opd1").cmd("iperf3 -J -t 2 -c 100.64.0.1 -p 5299 -B 10.33.5.10 "
                                              "--connect-timeout 3000")
            goodput = json.loads(result)["end"]["sum_received"]["bits_per_second"]
        finally:
            server.kill()
            server.wait(timeout=5)
        print(f"opd1 -> inet TCP goodput {goodput / 1e6:.0f} Mbit/s")
        assert goodput > 20e6, goodput  # a stalled TCP (offloads on) makes a few kbit/s
    finally:
        for bridge in flows:
            _run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge, "cookie=0x5e/-1"], check=False)


def _live_namespaces() -> set[int]:
    inodes = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                inodes.add(os.stat(f"/proc/{entry}/ns/net").st_ino)
    return inodes


def test_teardown_leaves_nothing_of_ours(policy) -> None:
    topology = renamed(load_topology(REPO / "topologies" / "star-50.yaml"), f"u{os.getpid() % 100}", DPID_OFFSET + 16)
    net = EmulatedNetwork(policy, topology, controller_port=None)
    net.start()
    helper = None
    try:
        pids = [info.pid for info in net.hosts.values()]
        namespaces = {os.stat(f"/proc/{pid}/ns/net").st_ino for pid in pids}
        # A helper left running inside a host (as a test's iperf3 would be) must not keep it alive.
        helper = subprocess.Popen(["nsenter", "-t", str(pids[0]), "-n", "sleep", "300"])
        net.stop()
        print(f"timings: {net.timings}")
        assert net.timings["stop"] < START_BUDGET_S
        assert not set(_vsctl("list-br").split()) & set(topology.dpids)
        ours = (*switch_interfaces(topology), *topology.dpids)
        assert [name for name in ours if Path("/sys/class/net", name).exists()] == []
        assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
        assert helper.wait(timeout=10) != 0
        assert not namespaces & _live_namespaces()
        assert net.hosts == {}
    finally:
        net.stop()  # idempotent
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()


def test_refuses_to_start_over_an_existing_bridge(policy, ovs_bridge_factory) -> None:
    """Mininet deletes a bridge of the same name before creating its own: refuse instead."""
    taken = ovs_bridge_factory()
    base = load_topology(REPO / "topologies" / "star-50.yaml")
    topology = Topology("clash", {taken: 7001, "v1core": 7002}, [], taken, 2, 1, "100.64.0.1",
                        dict.fromkeys(base.attachments, "v1core"))
    net = EmulatedNetwork(policy, topology, controller_port=None)
    with pytest.raises(EmulationError, match=f"already in use.*{taken}"):
        net.start()
    assert _vsctl("br-exists", taken) == ""  # still there (exit 0)
    assert not Path("/sys/class/net/v1core-eth1001").exists()


def test_renamed_refuses_names_too_long_for_linux() -> None:
    with pytest.raises(EmulationError, match="longer than 15"):
        renamed(load_topology(REPO / "topologies" / "star-50.yaml"), "long")


# ---------------------------------------------------------------- the compiled pipeline, installed by hand

_OFCTL_FIELDS = {"in_port": "in_port", "eth_type": "dl_type", "ipv4_src": "nw_src", "ipv4_dst": "nw_dst",
                 "arp_spa": "arp_spa", "arp_tpa": "arp_tpa", "metadata": "metadata", "ip_proto": "nw_proto",
                 "tcp_src": "tcp_src", "tcp_dst": "tcp_dst", "udp_src": "udp_src", "udp_dst": "udp_dst",
                 "ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst"}


def _ofctl_value(value: object) -> str:
    if isinstance(value, tuple):
        base, mask = value
        return f"{base}/{mask}" if isinstance(base, str) else f"{base:#x}/{mask:#x}"
    return str(value)


def _ofctl_action(action: tuple) -> str:
    kind = action[0]
    if kind == "meter":
        return f"meter:{action[1]}"
    if kind == "output":
        return f"output:{action[1]}"
    if kind == "set_dscp":
        return f"set_field:{action[1]}->ip_dscp"
    if kind == "write_metadata":
        return f"write_metadata:{action[1]:#x}/{action[2]:#x}"
    if kind == "goto":
        return f"goto_table:{action[1]}"
    raise AssertionError(f"this test does not know the action {action!r}: teach _ofctl_action")


def _ofctl_flow(flow) -> str:
    """A FlowSpec as an ovs-ofctl line (instructions in OF1.3 order: meter, apply, metadata, goto)."""
    order = {"meter": 0, "output": 1, "set_dscp": 1, "write_metadata": 2, "goto": 3}
    actions = sorted((action for action in flow.actions if action[0] != "drop"), key=lambda a: order.get(a[0], 1))
    match = "".join(f",{_OFCTL_FIELDS[key]}={_ofctl_value(value)}" for key, value in flow.match)
    instructions = ",".join(_ofctl_action(action) for action in actions) or "drop"
    return f"table={flow.table},priority={flow.priority},cookie={flow.cookie:#x}{match},actions={instructions}"


def test_compiled_pipeline_forwards_on_the_tree(policy, tmp_path: Path) -> None:
    """Until the OpenFlow driver runs here: the compiler's flows, installed with ovs-ofctl into a
    tree-50 backbone, carry ARP and IP over three hops, drop inter-OPD and spoofed traffic."""
    from satupintu.compile.state import compile_state

    topology = renamed(load_topology(REPO / "topologies" / "tree-50.yaml"), f"w{os.getpid() % 100}",
                       DPID_OFFSET + 32)
    state = compile_state(policy, topology, scale=0.01)
    with EmulatedNetwork(policy, topology, controller_port=None) as net:
        for plan in state.switches:
            for meter in plan.meters:
                _run(["ovs-ofctl", "-O", "OpenFlow13", "add-meter", plan.name,
                      f"meter={meter.meter_id},kbps,burst,band=type=drop,rate={meter.rate_kbps},"
                      f"burst_size={meter.burst_kbits}"])
            flows = tmp_path / f"{plan.name}.flows"
            flows.write_text("".join(_ofctl_flow(flow) + "\n" for flow in plan.flows))
            _run(["ovs-ofctl", "-O", "OpenFlow13", "add-flows", plan.name, str(flows)])

        def ping(source: str, target: str, *extra: str) -> bool:
            out = net.host(source).cmd(f"ping -n -c 2 -i 0.2 -W 1 {' '.join(extra)} {target}")
            return " 2 received" in out

        for source in ("opd1", "opd25", "opd50", "wifi900"):  # d1, d3, d5 and core
            assert ping(source, "100.64.0.1"), source
        assert ping(UPSTREAM_HOST, "10.33.35.10")  # download direction, inet ARPs for opd7
        assert not ping("opd1", "10.33.10.10")  # inter_opd: deny
        net.host("opd1").cmd("ip addr add 10.33.10.99/24 dev opd1-eth0")
        assert not ping("opd1", "100.64.0.1", "-I", "10.33.10.99")  # OPD 2's address from OPD 1's port
