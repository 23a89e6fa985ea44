"""faucet.yaml for the same policy + topology: the best Faucet 1.10 can do with OpenFlow meters.

Faucet has no queues, guarantees or borrowing: per owner (OPD, Wi-Fi pool) one OF1.3 drop
meter per direction at its ceiling (the hard cap where lower; Wi-Fi: the backbone), at the
rates the Satu Pintu compiler gives for the same schedule window and scale:
  * upload: an ingress ACL on the owner's access port meters its IPv4 traffic;
  * download: an ingress ACL on the gateway's upstream port matches each owner prefix
    (`ipv4_dst`) and meters it.
Forwarding: every port of every switch is in one VLAN (native, untagged); Faucet learns MACs
and installs the forwarding flows. Meters use Faucet's default burst (no BURST flag): measured
on this machine, a small explicit burst makes policed TCP reach half its rate.

    .venv/bin/python benchmarks/faucet_config.py --policy policies/jateng-50.yaml \
        --topology topologies/star-50.yaml --switch-prefix m --scale 0.01 > faucet.yaml
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from satupintu.compile.plan import Direction, owner_minor
from satupintu.compile.state import compile_state
from satupintu.policy.load import load_policy
from satupintu.policy.model import Policy
from satupintu.policy.schedule import active_window
from satupintu.topology import Topology, load_topology

VLAN = "backbone"
VLAN_ID = 100
IPV4 = 0x0800


@dataclass(frozen=True, slots=True)
class OwnerRates:
    """What one owner may use, in bit/s, as the Satu Pintu compiler computes it (scaled)."""

    owner_id: int
    code: str
    prefixes: tuple[str, ...]
    guaranteed_bps: dict[Direction, int]
    ceiling_bps: dict[Direction, int]


def owner_rates(policy: Policy, topology: Topology, scale: float, window: str) -> list[OwnerRates]:
    """Guarantee and ceiling per owner and direction from the compiled HTB trees; hard caps lower the ceiling."""
    state = compile_state(policy, topology, window=window, scale=scale)
    classes = {plan.direction: {klass.minor: klass for klass in plan.classes} for plan in state.queues}
    rates = []
    for owner in sorted([*policy.opds, *policy.public_wifi], key=lambda item: item.id):
        guaranteed, ceiling = {}, {}
        for direction in (Direction.DOWNLOAD, Direction.UPLOAD):
            klass = classes[direction][owner_minor(owner.id)]
            guaranteed[direction], ceiling[direction] = klass.rate_bps, klass.ceil_bps
            cap = getattr(getattr(owner, "hard_cap", None), direction.value, None)
            if cap is not None:
                ceiling[direction] = min(ceiling[direction], int(cap * scale))
        ipv4 = tuple(prefix for prefix in owner.prefixes if ":" not in prefix)
        rates.append(OwnerRates(owner.id, owner.code, ipv4, guaranteed, ceiling))
    return rates


def _meter(meter_id: int, rate_bps: int) -> dict:
    return {"meter_id": meter_id, "entry": {"flags": ["KBPS"], "bands": [{"type": "DROP", "rate": rate_bps // 1000}]}}


def faucet_config(policy: Policy, topology: Topology, scale: float, window: str) -> dict:
    rates = owner_rates(policy, topology, scale, window)
    meters: dict[str, dict] = {}
    acls: dict[str, list[dict]] = {}
    interfaces: dict[str, dict[int, dict]] = {switch: {} for switch in topology.dpids}
    for trunk in topology.trunks:
        interfaces[trunk.a][trunk.a_port] = {"name": f"trunk-{trunk.b}", "native_vlan": VLAN}
        interfaces[trunk.b][trunk.b_port] = {"name": f"trunk-{trunk.a}", "native_vlan": VLAN}
    download_rules = []
    for owner in rates:
        up, down = f"up-{owner.owner_id}", f"down-{owner.owner_id}"
        # Faucet installs every meter on every switch: ids must differ across directions too.
        meters[up] = _meter(2 * owner.owner_id + 1, owner.ceiling_bps[Direction.UPLOAD])
        meters[down] = _meter(2 * owner.owner_id, owner.ceiling_bps[Direction.DOWNLOAD])
        acls[f"upload-{owner.owner_id}"] = [{"rule": {"dl_type": IPV4, "actions": {"allow": 1, "meter": up}}},
                                            {"rule": {"actions": {"allow": 1}}}]
        download_rules += [{"rule": {"dl_type": IPV4, "ipv4_dst": prefix, "actions": {"allow": 1, "meter": down}}}
                           for prefix in owner.prefixes]
        switch = topology.attachments[owner.owner_id]
        interfaces[switch][topology.attach_port(owner.owner_id)] = {
            "name": owner.code, "native_vlan": VLAN, "acls_in": [f"upload-{owner.owner_id}"]}
    acls["download"] = [*download_rules, {"rule": {"actions": {"allow": 1}}}]
    interfaces[topology.gateway][topology.upstream_port] = {"name": "upstream", "native_vlan": VLAN,
                                                            "acls_in": ["download"]}
    return {
        "vlans": {VLAN: {"vid": VLAN_ID, "description": "the backbone, one broadcast domain"}},
        "meters": meters,
        "acls": acls,
        "dps": {switch: {"dp_id": topology.dpids[switch], "hardware": "Open vSwitch",
                         "interfaces": dict(sorted(interfaces[switch].items()))}
                for switch in sorted(topology.dpids)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--topology", required=True)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--switch-prefix", default="")
    args = parser.parse_args(argv)
    policy = load_policy(args.policy).policy
    topology = load_topology(Path(args.topology))
    if args.switch_prefix:
        from satupintu.emulation.network import renamed

        topology = renamed(topology, args.switch_prefix)
    window = active_window(policy, datetime.now(UTC))
    yaml.safe_dump(faucet_config(policy, topology, args.scale, window), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
