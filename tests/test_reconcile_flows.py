"""OpenFlow diff: identity, ownership, normalisation and ordering (pure, microseconds)."""

from __future__ import annotations

from pathlib import Path

from satupintu.compile.plan import Direction, FlowSpec, MeterSpec, RuleKind, SwitchPlan, flow_cookie
from satupintu.compile.state import compile_state
from satupintu.policy.load import load_policy_text
from satupintu.reconcile.flows import (
    canonical_actions,
    canonical_flow,
    canonical_match,
    diff_switch,
    is_ours,
)
from satupintu.topology import star_topology

REPO = Path(__file__).resolve().parents[1]
OURS = flow_cookie(RuleKind.ADMIT, 7)
INFRA = flow_cookie(RuleKind.INFRA, 0)
FOREIGN = 0xABCD

ADMIT = FlowSpec(0, 200, (("eth_type", 0x0800), ("in_port", 3), ("ipv4_src", ("10.1.7.0", "255.255.255.0"))),
                 (("meter", 14), ("write_metadata", 1, 3), ("goto", 1)), OURS)
MARK = FlowSpec(1, 990, (("eth_type", 0x0800), ("ip_proto", 17), ("metadata", (1, 3)), ("udp_dst", (5060, 0xFFFE))),
                (("set_dscp", 46), ("goto", 2)), flow_cookie(RuleKind.MARK, 0))
FORWARD = FlowSpec(2, 124, (("eth_type", 0x0800), ("ipv4_dst", ("10.1.7.0", "255.255.255.0"))),
                   (("meter", 15), ("output", 3)), flow_cookie(RuleKind.FORWARD, 7))
HOST = FlowSpec(2, 132, (("eth_type", 0x0800), ("ipv4_dst", "10.1.7.9")), (("output", 3),), OURS)
MISSES = tuple(FlowSpec(table, 0, (), (("drop",),), INFRA) for table in (0, 1, 2))
METERS = (MeterSpec(14, 5000, 2500, 7, Direction.UPLOAD), MeterSpec(15, 10000, 5000, 7, Direction.DOWNLOAD))


def _plan(flows: tuple[FlowSpec, ...] = (ADMIT, MARK, FORWARD, HOST, *MISSES),
          meters: tuple[MeterSpec, ...] = METERS) -> SwitchPlan:
    return SwitchPlan("s1", 1, flows, meters)


def test_identical_state_is_an_empty_diff() -> None:
    plan = _plan()
    diff = diff_switch(plan, list(plan.flows), list(plan.meters))
    assert diff.empty and diff.size == 0


def test_empty_switch_gets_everything() -> None:
    plan = _plan()
    diff = diff_switch(plan, [], [])
    assert diff.flows_add == list(plan.flows) and diff.meters_add == list(plan.meters)
    assert not (diff.flows_modify or diff.flows_delete or diff.meters_modify or diff.meters_delete)
    assert diff.size == len(plan.flows) + len(plan.meters)


def test_action_change_is_a_strict_modify_of_that_flow_only() -> None:
    changed = FlowSpec(MARK.table, MARK.priority, MARK.match, (("set_dscp", 34), ("goto", 2)), MARK.cookie)
    plan = _plan((ADMIT, changed, FORWARD, HOST, *MISSES))
    diff = diff_switch(plan, [ADMIT, MARK, FORWARD, HOST, *MISSES], list(METERS))
    assert diff.flows_modify == [(MARK, changed)] and diff.size == 1


def test_cookie_change_is_a_modify() -> None:
    recookied = FlowSpec(HOST.table, HOST.priority, HOST.match, HOST.actions, flow_cookie(RuleKind.FORWARD, 8))
    diff = diff_switch(_plan((ADMIT, MARK, FORWARD, recookied, *MISSES)), [ADMIT, MARK, FORWARD, HOST, *MISSES],
                       list(METERS))
    assert diff.flows_modify == [(HOST, recookied)] and diff.size == 1


def test_priority_or_match_change_is_add_plus_delete() -> None:
    moved = FlowSpec(HOST.table, HOST.priority + 1, HOST.match, HOST.actions, HOST.cookie)
    diff = diff_switch(_plan((ADMIT, MARK, FORWARD, moved, *MISSES)), [ADMIT, MARK, FORWARD, HOST, *MISSES],
                       list(METERS))
    assert diff.flows_add == [moved] and diff.flows_delete == [HOST] and diff.size == 2


def test_foreign_flows_are_left_alone_but_ours_are_deleted() -> None:
    foreign = FlowSpec(3, 10, (("in_port", 9),), (("output", 1),), FOREIGN)
    stale = FlowSpec(2, 124, (("eth_type", 0x0800), ("ipv4_dst", ("10.9.0.0", "255.255.0.0"))), (("output", 4),),
                     flow_cookie(RuleKind.FORWARD, 9))
    plan = _plan()
    diff = diff_switch(plan, [*plan.flows, foreign, stale], list(METERS))
    assert diff.flows_delete == [stale] and diff.size == 1
    assert not is_ours(FOREIGN) and is_ours(stale.cookie)


def test_foreign_table_miss_is_ours_to_set_in_our_tables() -> None:
    controller_miss = FlowSpec(1, 0, (), (("output", 0xFFFFFFFD),), 0)
    other_table_miss = FlowSpec(5, 0, (), (("output", 0xFFFFFFFD),), 0)
    plan = _plan()
    actual = [flow for flow in plan.flows if flow.key != MISSES[1].key] + [controller_miss, other_table_miss]
    diff = diff_switch(plan, actual, list(METERS))
    assert diff.flows_modify == [(controller_miss, MISSES[1])] and diff.size == 1
    # Not desired at all: a foreign table-miss in a table we program is removed.
    diff = diff_switch(_plan((ADMIT, MARK, FORWARD, HOST)), [ADMIT, MARK, FORWARD, HOST, controller_miss,
                                                               other_table_miss], list(METERS))
    assert diff.flows_delete == [controller_miss]


def test_foreign_flow_on_a_desired_key_is_taken_over() -> None:
    squatter = FlowSpec(HOST.table, HOST.priority, HOST.match, (("output", 1),), FOREIGN)
    plan = _plan()
    actual = [flow for flow in plan.flows if flow is not HOST] + [squatter]
    diff = diff_switch(plan, actual, list(METERS))
    assert diff.flows_modify == [(squatter, HOST)]


def test_meters_add_modify_delete() -> None:
    changed = MeterSpec(15, 20000, 10000, 7, Direction.DOWNLOAD)
    stale = MeterSpec(40, 100, 100, 20, Direction.UPLOAD)
    plan = _plan((ADMIT, MARK, FORWARD, HOST, *MISSES), (METERS[0], changed))
    diff = diff_switch(plan, list(plan.flows), [METERS[1], stale])
    assert diff.meters_add == [METERS[0]]
    assert diff.meters_modify == [(METERS[1], changed)]
    assert diff.meters_delete == [stale]
    assert diff.size == 3


def test_meter_used_by_a_foreign_flow_survives() -> None:
    foreign = FlowSpec(4, 10, (("in_port", 9),), (("meter", 40), ("output", 1)), FOREIGN)
    stale = MeterSpec(40, 100, 100, 20, Direction.UPLOAD)
    plan = _plan()
    diff = diff_switch(plan, [*plan.flows, foreign], [*METERS, stale])
    assert diff.empty


def test_switch_normalisation_is_not_a_change() -> None:
    """What OVS hands back: /32 as a plain address, full masks dropped, zero masks gone,
    host bits cleared, instructions in execution order, no instruction for drop."""
    flows = (
        FlowSpec(0, 200, (("eth_type", 0x0800), ("in_port", 3), ("ipv4_src", ("10.1.7.5", "255.255.255.0"))),
                 (("goto", 1), ("write_metadata", 1, 3), ("meter", 14)), OURS),
        FlowSpec(2, 132, (("eth_type", 0x0800), ("ipv4_dst", ("10.1.7.9", "255.255.255.255"))), (("output", 3),),
                 OURS),
        FlowSpec(2, 100, (("eth_type", 0x0800), ("ipv4_src", ("0.0.0.0", "0.0.0.0")), ("tcp_dst", (80, 0xFFFF)),
                          ("ip_proto", 6)), (("output", 2),), OURS),
        FlowSpec(2, 101, (("eth_type", 0x86DD), ("ipv6_dst", ("2001:0DB8:0:0::", "ffff:ffff:0000::"))),
                 (("output", 2),), OURS),
        FlowSpec(1, 5, (("metadata", (2, 0xFFFFFFFFFFFFFFFF)),), (("drop",),), OURS),
    )
    as_reported = [
        FlowSpec(0, 200, (("eth_type", 0x0800), ("in_port", 3), ("ipv4_src", ("10.1.7.0", "255.255.255.0"))),
                 (("meter", 14), ("write_metadata", 1, 3), ("goto", 1)), OURS),
        FlowSpec(2, 132, (("eth_type", 0x0800), ("ipv4_dst", "10.1.7.9")), (("output", 3),), OURS),
        FlowSpec(2, 100, (("eth_type", 0x0800), ("ip_proto", 6), ("tcp_dst", 80)), (("output", 2),), OURS),
        FlowSpec(2, 101, (("eth_type", 0x86DD), ("ipv6_dst", ("2001:db8::", "ffff:ffff::"))), (("output", 2),), OURS),
        FlowSpec(1, 5, (("metadata", 2),), (), OURS),
    ]
    diff = diff_switch(SwitchPlan("s1", 1, flows, ()), as_reported, [])
    assert diff.empty, diff


def test_canonical_forms() -> None:
    assert canonical_match([("ipv4_dst", ("10.1.7.200", "255.255.255.0")), ("eth_type", 2048)]) == (
        ("eth_type", 2048), ("ipv4_dst", ("10.1.7.0", "255.255.255.0")))
    assert canonical_match([("eth_dst", "AA:BB:CC:00:00:01")]) == (("eth_dst", "aa:bb:cc:00:00:01"),)
    assert canonical_match([("tcp_dst", (1027, 0xFC00))]) == (("tcp_dst", (1024, 0xFC00)),)
    assert canonical_actions([("drop",)]) == (("drop",),)
    assert canonical_actions([]) == (("drop",),)
    assert canonical_actions([("goto", 2), ("set_dscp", 46), ("output", 1)]) == (
        ("set_dscp", 46), ("output", 1), ("goto", 2))
    assert canonical_flow(HOST) is HOST  # already canonical: no copy


def test_compiled_plans_diff_to_nothing_against_themselves_and_count_a_reload() -> None:
    text = (REPO / "policies" / "minimal.yaml").read_text()
    policy = load_policy_text(text, "p.yaml").policy
    owners = [owner.id for owner in (*policy.opds, *policy.public_wifi)]
    state = compile_state(policy, star_topology(owners), scale=0.01)
    for plan in state.switches:
        assert diff_switch(plan, list(plan.flows), list(plan.meters)).empty
        # Every compiled flow is already canonical, so what OVS reports equals the plan.
        assert all(canonical_flow(flow) == flow for flow in plan.flows)
        diff = diff_switch(plan, [], [])
        assert len(diff.flows_add) == len(plan.flows) and len(diff.meters_add) == len(plan.meters)
