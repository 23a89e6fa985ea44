"""The one entry point of the compiler: policy + topology + time window -> DesiredState."""

from __future__ import annotations

from satupintu.compile.flows import build_switch_plans
from satupintu.compile.plan import DesiredState
from satupintu.compile.queues import build_queue_plans
from satupintu.gcpause import gc_paused
from satupintu.policy.model import Policy
from satupintu.policy.schedule import BASE_WINDOW, resolve_allocations
from satupintu.topology import Topology


def compile_state(policy: Policy, topology: Topology, *, window: str = BASE_WINDOW, scale: float = 1.0,
                  policy_hash: str = "") -> DesiredState:
    """Pure and deterministic: the same inputs give an equal DesiredState."""
    with gc_paused():
        allocations = resolve_allocations(policy, window)
        return DesiredState(
            policy_hash=policy_hash,
            switches=tuple(build_switch_plans(policy, topology, scale)),
            queues=tuple(build_queue_plans(policy, allocations, topology, scale)),
            schedule_window=window,
        )
