"""Diff of two desired states with the same functions the drivers use to reconcile,
so `policy diff` prints exactly what a reload applies."""

from __future__ import annotations

from satupintu.compile.plan import DesiredState
from satupintu.compile.state import compile_state
from satupintu.policy.model import Policy
from satupintu.reconcile.flows import diff_switch
from satupintu.reconcile.queues import diff_queue_plans, rule_counts
from satupintu.topology import Topology


def state_diff_lines(old: DesiredState, new: DesiredState) -> list[str]:
    lines: list[str] = []
    old_switches = {plan.dpid: plan for plan in old.switches}
    for plan in new.switches:
        before = old_switches.get(plan.dpid)
        diff = diff_switch(plan, list(before.flows) if before else [], list(before.meters) if before else [])
        counts = {name: len(getattr(diff, name)) for name in
                  ("meters_add", "meters_modify", "meters_delete", "flows_add", "flows_modify", "flows_delete")}
        if any(counts.values()):
            lines.append(f"switch {plan.name}: flows +{counts['flows_add']} ~{counts['flows_modify']} "
                         f"-{counts['flows_delete']}, meters +{counts['meters_add']} ~{counts['meters_modify']} "
                         f"-{counts['meters_delete']}")
    old_queues = {plan.port: plan for plan in old.queues}
    for plan in new.queues:
        before = old_queues.get(plan.port)
        diff = diff_queue_plans(plan, list(before.classes) if before else [], list(before.rules) if before else [])
        for klass in diff.add_classes:
            lines.append(f"{plan.port} ({plan.direction.value}): add class 1:{klass.minor:x} {klass.label} "
                         f"rate {klass.rate_bps} ceil {klass.ceil_bps} bit/s")
        for old_class, klass in diff.change_classes:
            lines.append(f"{plan.port} ({plan.direction.value}): change class 1:{klass.minor:x} {klass.label} "
                         f"rate {old_class.rate_bps}->{klass.rate_bps} ceil {old_class.ceil_bps}->{klass.ceil_bps}"
                         " bit/s")
        for klass in diff.remove_classes:
            lines.append(f"{plan.port} ({plan.direction.value}): remove class 1:{klass.minor:x} {klass.label}")
        for ipv6, family in ((False, ""), (True, "IPv6 ")):
            added, changed, removed = rule_counts(diff, ipv6)
            if added or changed or removed:
                lines.append(f"{plan.port} ({plan.direction.value}): {family}u32 rules +{added} ~{changed} -{removed}")
        if before is not None and before.ipv6_hash_byte != plan.ipv6_hash_byte and any(r.ipv6 for r in plan.rules):
            lines.append(f"{plan.port} ({plan.direction.value}): IPv6 hash byte {before.ipv6_hash_byte}"
                         f"->{plan.ipv6_hash_byte}")
    return lines or ["none"]


def describe_state_diff(old: Policy, new: Policy, topology: Topology, scale: float = 1.0,
                        window: str = "base") -> list[str]:
    before = compile_state(old, topology, window=window, scale=scale)
    after = compile_state(new, topology, window=window, scale=scale)
    return state_diff_lines(before, after)
