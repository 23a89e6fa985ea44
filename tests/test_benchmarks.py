"""The benchmark's pure parts: Faucet's config is the policy's ceilings, the no-control flows
forward every owner, Jain's index. (The benchmarks themselves run with `make bench`.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_quality import _static_flows, jain_index  # noqa: E402
from faucet_config import faucet_config, owner_rates  # noqa: E402

from satupintu.compile.plan import Direction  # noqa: E402
from satupintu.emulation.network import renamed  # noqa: E402
from satupintu.policy.load import load_policy  # noqa: E402
from satupintu.topology import load_topology  # noqa: E402

SCALE = 0.01


@pytest.fixture(scope="module")
def setup():
    policy = load_policy(REPO / "policies" / "jateng-50.yaml").policy
    topology = renamed(load_topology(REPO / "topologies" / "star-50.yaml"), "m")
    return policy, topology


def test_jain_index_is_one_for_equal_shares_and_one_over_n_when_one_takes_all() -> None:
    assert jain_index([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain_index([5.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert 0.25 < jain_index([1.0, 2.0, 3.0, 4.0]) < 1.0


def test_faucet_meters_are_the_ceilings_or_lower_hard_caps_in_both_directions(setup) -> None:
    policy, topology = setup
    config = faucet_config(policy, topology, SCALE, "base")
    meters = config["meters"]
    assert len({meter["meter_id"] for meter in meters.values()}) == len(meters), "meter ids must be unique"
    for opd in policy.opds:
        for direction in ("download", "upload"):
            want = getattr(opd, direction).ceiling
            cap = getattr(opd.hard_cap, direction, None) if opd.hard_cap else None
            want = min(want, cap) if cap is not None else want
            meter = meters[f"{'down' if direction == 'download' else 'up'}-{opd.id}"]
            band = {"type": "DROP", "rate": int(want * SCALE) // 1000}
            assert meter["entry"]["bands"] == [band], (opd.code, direction)
    capped = [opd for opd in policy.opds if opd.hard_cap and opd.hard_cap.download]
    assert capped and any(opd.hard_cap.download < opd.download.ceiling for opd in capped), "jateng-50 tests a cap"


def test_faucet_acls_meter_each_owner_on_its_port_and_each_prefix_at_the_upstream(setup) -> None:
    policy, topology = setup
    config = faucet_config(policy, topology, SCALE, "base")
    core = config["dps"]["mcore"]["interfaces"]
    upstream = config["dps"]["mgw"]["interfaces"][topology.upstream_port]
    assert upstream["acls_in"] == ["download"]
    metered = {rule["rule"]["ipv4_dst"]: rule["rule"]["actions"]["meter"] for rule in config["acls"]["download"]
               if "ipv4_dst" in rule["rule"]}
    for owner in [*policy.opds, *policy.public_wifi]:
        assert core[topology.attach_port(owner.id)]["acls_in"] == [f"upload-{owner.id}"]
        for prefix in owner.prefixes:
            assert metered[prefix] == f"down-{owner.id}"
    assert config["acls"]["download"][-1] == {"rule": {"actions": {"allow": 1}}}, "unmatched traffic must pass"


def test_owner_rates_follow_the_schedule_window(setup) -> None:
    policy, topology = setup
    windows = [schedule.name for schedule in policy.schedules]
    assert windows, "jateng-50 has schedules"
    base = {owner.code: owner for owner in owner_rates(policy, topology, SCALE, "base")}
    other = {owner.code: owner for owner in owner_rates(policy, topology, SCALE, windows[0])}
    assert any(base[code].guaranteed_bps[Direction.DOWNLOAD] != other[code].guaranteed_bps[Direction.DOWNLOAD]
               or base[code].ceiling_bps != other[code].ceiling_bps for code in base)


def test_no_control_flows_send_every_owner_prefix_to_its_port(setup) -> None:
    policy, topology = setup
    flows = _static_flows(topology, policy)
    for owner in [*policy.opds, *policy.public_wifi]:
        port = topology.attach_port(owner.id)
        for prefix in owner.prefixes:
            assert f"priority=100,ip,nw_dst={prefix},actions=output:{port}" in flows["mcore"]
            assert f"priority=100,arp,arp_tpa={prefix},actions=output:{port}" in flows["mcore"]
    assert any("output:2" in flow and "100.64.0.0/24" in flow for flow in flows["mgw"])
