"""Guards the set-up (scripts/setup.sh): Open vSwitch answers, userspace bridges can be made and
removed, Mininet imports and runs on the userspace datapath, and the skip-or-fail policy of
tests/conftest.py holds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from conftest import NetnsFactory, OvsBridgeFactory, enforce_requirements


def _vsctl(*args: str) -> str:
    return subprocess.run(["ovs-vsctl", "--timeout=15", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


# ---- the policy itself (runs anywhere) -------------------------------------------------------


def test_nothing_missing_neither_skips_nor_fails() -> None:
    enforce_requirements("emulation", [], ci=True)
    enforce_requirements("emulation", [], ci=False)


def test_missing_requirement_skips_outside_ci() -> None:
    with pytest.raises(pytest.skip.Exception, match="iperf3 not on PATH"):
        enforce_requirements("emulation", ["iperf3 not on PATH"], ci=False)


def test_missing_requirement_fails_in_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"CI=true.*iperf3 not on PATH"):
        enforce_requirements("emulation", ["iperf3 not on PATH"], ci=True)


def test_ci_variable_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        enforce_requirements("netns", ["not running as root"])
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        enforce_requirements("netns", ["not running as root"])


# ---- the machine -------------------------------------------------------------------------------


@pytest.mark.emulation
def test_ovs_answers() -> None:
    assert subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode == 0
    version = subprocess.run(["ovs-appctl", "--timeout=5", "-t", "ovs-vswitchd", "version"],
                             capture_output=True, text=True, check=True).stdout
    assert "Open vSwitch" in version


@pytest.mark.emulation
def test_netdev_bridge_is_created_and_removed(ovs_bridge_factory: OvsBridgeFactory) -> None:
    name = ovs_bridge_factory()
    assert name.startswith(f"sptest{os.getpid() % 1000}") and len(name) <= 15
    assert name in _vsctl("list-br").split()
    assert _vsctl("get", "bridge", name, "datapath_type") == "netdev"
    assert _vsctl("get", "bridge", name, "fail_mode") == "secure"
    # ovs-vswitchd realised it in the userspace datapath: the local port got OpenFlow port 65534.
    assert _vsctl("get", "interface", name, "ofport") == "65534"
    show = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "show", name], capture_output=True, text=True,
                          check=True).stdout
    assert "LOCAL" in show

    ovs_bridge_factory.remove(name)
    assert name not in _vsctl("list-br").split()
    assert ovs_bridge_factory.created == []


@pytest.mark.emulation
def test_mininet_imports_and_forwards_over_a_userspace_switch() -> None:
    from mininet.net import Mininet
    from mininet.node import OVSSwitch

    assert shutil.which("mnexec"), "Mininet needs mnexec from the Debian package"
    tag = os.getpid() % 1000
    switch_name = f"sptm{tag}"
    assert switch_name not in _vsctl("list-br").split()
    net = Mininet(topo=None, controller=None, build=False, autoSetMacs=True)

    def hung(_signum: int, _frame: object) -> None:
        raise TimeoutError("Mininet did not start two hosts and a switch within 60 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # Mininet waits forever for a host shell that died
    try:
        a = net.addHost(f"spt{tag}a", ip="10.0.0.1/24")
        b = net.addHost(f"spt{tag}b", ip="10.0.0.2/24")
        # standalone = NORMAL forwarding without a controller, fine for two ports
        switch = net.addSwitch(switch_name, cls=OVSSwitch, datapath="user", failMode="standalone",
                               dpid="00000000005e0001")
        net.addLink(a, switch)
        net.addLink(b, switch)
        net.build()
        net.start()
        assert _vsctl("get", "bridge", switch_name, "datapath_type") == "netdev"
        assert net.ping([a, b], timeout="2") == 0.0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        net.stop()
    assert switch_name not in _vsctl("list-br").split()


@pytest.mark.netns
def test_network_namespace_is_created_and_removed(netns_factory: NetnsFactory) -> None:
    name = netns_factory("env")
    assert name.startswith("sptest-") and name.endswith("-env")
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    netns_factory.remove(name)
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
