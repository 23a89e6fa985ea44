"""A port that cannot be shaped (not created yet, NIC gone) is retried every second by the
daemon; the journal gets one warning per port and error, then one per repeat interval."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from satupintu.compile.plan import SwitchPlan
from satupintu.drivers.tc import TcShaper
from satupintu.emulation.network import renamed
from satupintu.enforcer import Enforcer
from satupintu.policy.load import load_policy
from satupintu.topology import star_topology

REPO = Path(__file__).resolve().parents[1]


class _NoSwitches:
    """The flow side with no switch attached: this test is about the tc side only."""

    def __init__(self) -> None:
        self.plans: dict[int, SwitchPlan] = {}

    def set_desired(self, plans: dict[int, SwitchPlan]) -> None:
        self.plans = plans


@pytest.mark.netns
def test_a_missing_port_is_logged_once_then_every_repeat_interval(tmp_path: Path, caplog) -> None:
    if shutil.which("tc") is None:
        pytest.skip("needs iproute2")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text((REPO / "policies" / "minimal.yaml").read_text())
    policy = load_policy(policy_file).policy
    owners = [owner.id for owner in (*policy.opds, *policy.public_wifi)]
    topology = renamed(star_topology(owners), "zq")  # zqgw-eth1/2 exist nowhere
    enforcer = Enforcer(policy_file, topology, _NoSwitches(), TcShaper())
    with caplog.at_level(logging.WARNING, logger="satupintu.enforcer"):
        assert enforcer.reload("test")
        for _ in range(5):
            assert not enforcer.reapply_queues()
        warned = [record.getMessage() for record in caplog.records if "cannot shape" in record.getMessage()]
        assert sorted(message.split()[2] for message in warned) == ["zqgw-eth1", "zqgw-eth2"], warned
        assert all("error" in entry for entry in enforcer.status.queues_applied.values())

        caplog.clear()
        enforcer.repeat_warning_s = 0.0
        assert not enforcer.reapply_queues()
        assert len([r for r in caplog.records if "cannot shape" in r.getMessage()]) == 2
