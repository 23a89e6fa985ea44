"""The shipped 50-OPD topologies: they load, attach every owner of the Jawa Tengah policy,
compile, and forward along loop-free shortest paths; broken files give located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from satupintu.compile.flows import ETH_IP, TABLE_FORWARD
from satupintu.compile.plan import RuleKind, flow_cookie
from satupintu.compile.state import compile_state
from satupintu.policy.errors import PolicyError
from satupintu.policy.load import load_policy
from satupintu.topology import Topology, load_topology

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = ("star-50", "tree-50", "ring-50")
IFNAMSIZ = 15  # longest Linux interface name


@pytest.fixture(scope="module")
def policy():
    return load_policy(REPO / "policies" / "jateng-50.yaml").policy


def _load(name: str) -> Topology:
    return load_topology(REPO / "topologies" / f"{name}.yaml")


def _neighbours(topology: Topology) -> dict[tuple[str, int], str]:
    """(switch, trunk port) -> the switch at the other end."""
    links: dict[tuple[str, int], str] = {}
    for trunk in topology.trunks:
        links[(trunk.a, trunk.a_port)] = trunk.b
        links[(trunk.b, trunk.b_port)] = trunk.a
    return links


def _walk_to_owner(topology: Topology, start: str, owner: int) -> list[str]:
    """Follow next-hop ports from `start` until the port is the owner's attach port."""
    links = _neighbours(topology)
    path, switch = [start], start
    for _ in range(len(topology.dpids)):
        port = topology.port_to_owner(switch, owner)
        if port == topology.attach_port(owner):
            assert topology.attachments[owner] == switch
            return path
        switch = links[(switch, port)]
        path.append(switch)
    raise AssertionError(f"no way from {start} to owner {owner}: loop along {path}")


def _walk_to_upstream(topology: Topology, start: str) -> list[str]:
    links = _neighbours(topology)
    path, switch = [start], start
    for _ in range(len(topology.dpids)):
        port = topology.port_to_upstream(switch)
        if switch == topology.gateway:
            assert port == topology.upstream_port
            return path
        switch = links[(switch, port)]
        path.append(switch)
    raise AssertionError(f"no way from {start} to the upstream: loop along {path}")


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_topology_loads_with_gateway_trunk_and_short_names(name: str) -> None:
    topology = _load(name)
    assert topology.name == name
    assert topology.gateway == "gw" and topology.upstream_port == 2 and topology.backbone_port == 1
    assert topology.backbone_port in topology.trunk_ports("gw")
    assert topology.upstream_port not in topology.trunk_ports("gw")
    assert len(set(topology.dpids.values())) == len(topology.dpids)
    for owner, switch in topology.attachments.items():
        assert len(topology.interface(switch, topology.attach_port(owner))) <= IFNAMSIZ
    for switch in topology.dpids:
        for port in topology.trunk_ports(switch):
            assert len(topology.interface(switch, port)) <= IFNAMSIZ


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_every_policy_owner_is_attached_and_the_policy_compiles(name: str, policy) -> None:
    topology = _load(name)
    owners = {opd.id for opd in policy.opds} | {pool.id for pool in policy.public_wifi}
    assert len(owners) == 51
    assert set(topology.attachments) == owners
    state = compile_state(policy, topology, scale=0.01)
    assert {plan.name for plan in state.switches} == set(topology.dpids)
    assert sorted(plan.port for plan in state.queues) == ["gw-eth1", "gw-eth2"]


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_forwarding_is_loop_free_from_every_switch(name: str, policy) -> None:
    topology = _load(name)
    for switch in topology.dpids:
        assert _walk_to_upstream(topology, switch)[-1] == "gw"
        for owner in topology.attachments:
            _walk_to_owner(topology, switch, owner)


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_every_download_leaves_the_gateway_through_the_backbone_port(name: str) -> None:
    """The download HTB tree sits on gw:backbone_port, so every owner must be reached through it."""
    topology = _load(name)
    for owner in topology.attachments:
        assert topology.port_to_owner("gw", owner) == topology.backbone_port


def test_star_attaches_everyone_on_core() -> None:
    topology = _load("star-50")
    assert topology.trunks and len(topology.trunks) == 1
    assert set(topology.attachments.values()) == {"core"}
    assert topology.port_to_upstream("core") == 1
    assert topology.port_to_owner("core", 17) == 1017
    assert topology.port_to_owner("core", 900) == 1900


def test_tree_reaches_d3_opds_through_core_port_13() -> None:
    topology = _load("tree-50")
    on_d3 = sorted(owner for owner, switch in topology.attachments.items() if switch == "d3")
    assert on_d3 == list(range(21, 31))
    for owner in on_d3:
        assert topology.port_to_owner("gw", owner) == 1
        assert topology.port_to_owner("core", owner) == 13
        assert topology.port_to_owner("d3", owner) == 1000 + owner
        assert topology.port_to_owner("d1", owner) == 1  # up to core, never sideways
        assert _walk_to_owner(topology, "gw", owner) == ["gw", "core", "d3"]
    assert topology.attachments[900] == "core"
    assert {topology.port_to_upstream(switch) for switch in ("d1", "d2", "d3", "d4", "d5", "core")} == {1}


def test_ring_uses_the_shorter_arc_and_stays_consistent() -> None:
    topology = _load("ring-50")
    assert _walk_to_owner(topology, "gw", 5) == ["gw", "core", "r1"]
    assert _walk_to_owner(topology, "gw", 45) == ["gw", "core", "r5"]
    assert len(_walk_to_owner(topology, "gw", 35)) == 4  # gw core r5 r4
    assert len(_walk_to_owner(topology, "gw", 25)) == 5  # r3 is three ring hops away either way
    for switch in ("r1", "r2", "r3", "r4", "r5"):
        assert len(_walk_to_upstream(topology, switch)) <= 5


def test_compiled_gateway_forwards_opd_prefixes_to_the_backbone_port(policy) -> None:
    topology = _load("tree-50")
    state = compile_state(policy, topology, scale=0.01)
    gateway = next(plan for plan in state.switches if plan.name == "gw")
    d3 = next(plan for plan in state.switches if plan.name == "d3")
    for owner in (21, 25, 30):
        cookie = flow_cookie(RuleKind.FORWARD, owner)
        gw_out = {flow.actions[-1] for flow in gateway.flows if flow.cookie == cookie and flow.table == TABLE_FORWARD
                  and ("eth_type", ETH_IP) in flow.match and flow.actions[-1][0] == "output"}
        assert gw_out == {("output", 1)}
        d3_out = {flow.actions[-1] for flow in d3.flows if flow.cookie == cookie and flow.table == TABLE_FORWARD
                  and flow.actions[-1][0] == "output"}
        assert d3_out == {("output", 1000 + owner)}


# ---------------------------------------------------------------- malformed files

GOOD = """\
name: t
switches:
  - {name: gw, dpid: 1}
  - {name: core, dpid: 2}
links:
  - {a: gw, a_port: 1, b: core, b_port: 1}
upstream: {switch: gw, port: 2, backbone_port: 1}
attach:
  - {switch: core, owners: "1-3"}
"""


def _errors(tmp_path: Path, text: str) -> list:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_topology(path)
    assert all(issue.file.endswith("topology.yaml") for issue in caught.value.issues)
    return caught.value.issues


def _has(issues: list, line: int, text: str) -> bool:
    return any(issue.line == line and text in issue.message for issue in issues)


def test_the_good_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(GOOD)
    assert load_topology(path).attachments == {1: "core", 2: "core", 3: "core"}


def test_unknown_switch_in_a_link_is_located(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("b: core, b_port: 1}", "b: cor, b_port: 1}"))
    assert _has(issues, 6, "'cor' is not a switch"), issues


def test_unknown_switch_in_attach_is_located(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("{switch: core, owners", "{switch: d9, owners"))
    assert _has(issues, 9, "'d9' is not a switch"), issues


def test_duplicate_port_is_located(tmp_path: Path) -> None:
    text = GOOD.replace("  - {name: core, dpid: 2}\n", "  - {name: core, dpid: 2}\n  - {name: d1, dpid: 3}\n")
    text = text.replace("b: core, b_port: 1}\n", "b: core, b_port: 1}\n  - {a: core, a_port: 1, b: d1, b_port: 1}\n")
    issues = _errors(tmp_path, text)
    assert _has(issues, 8, "port 1 of 'core' is used twice"), issues


def test_missing_backbone_trunk_is_located(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("backbone_port: 1}", "backbone_port: 3}"))
    assert _has(issues, 7, "backbone_port 3 is not a trunk"), issues
    no_links = GOOD.replace("links:\n  - {a: gw, a_port: 1, b: core, b_port: 1}\n", "")
    issues = _errors(tmp_path, no_links)
    assert _has(issues, 5, "backbone_port 1 is not a trunk"), issues


def test_upstream_on_a_trunk_port_is_located(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("port: 2, backbone", "port: 1, backbone"))
    assert _has(issues, 7, "upstream port 1 is already a trunk port"), issues


def test_owner_attached_twice_and_duplicate_dpid_are_located(tmp_path: Path) -> None:
    text = GOOD.replace("{name: core, dpid: 2}", "{name: core, dpid: 1}")
    text += '  - {switch: gw, owners: "3,900"}\n'
    issues = _errors(tmp_path, text)
    assert _has(issues, 4, "repeats a name or dpid"), issues
    assert _has(issues, 10, "owner 3 is attached twice"), issues


def test_switch_without_a_path_to_the_gateway_is_reported(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("  - {name: core, dpid: 2}\n", "  - {name: core, dpid: 2}\n"
                                                                           "  - {name: lost, dpid: 9}\n"))
    assert any("'lost' has no path to the gateway" in issue.message for issue in issues), issues


def test_schema_errors_are_located(tmp_path: Path) -> None:
    issues = _errors(tmp_path, GOOD.replace("{name: core, dpid: 2}", "{name: Core-Switch-1, dpid: 2}"))
    assert any(issue.line == 4 for issue in issues), issues
    issues = _errors(tmp_path, GOOD.replace('owners: "1-3"', 'owners: "3-1"'))
    assert any(issue.line == 9 and "reversed" in issue.message for issue in issues), issues


def test_owner_missing_from_the_topology_stops_the_compiler(tmp_path: Path, policy) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(GOOD.replace('"1-3"', '"1-49,900"'))
    with pytest.raises(ValueError, match="does not attach: UPTD-PPA"):
        compile_state(policy, load_topology(path), scale=0.01)


@pytest.mark.parametrize("name", ["star-50", "tree-50", "ring-50"])
def test_topology_yaml_round_trips_a_renamed_copy(tmp_path, repo_root, name):
    from satupintu.emulation.network import renamed
    from satupintu.topology import topology_yaml

    original = renamed(load_topology(repo_root / "topologies" / f"{name}.yaml"), "x")
    path = tmp_path / "t.yaml"
    path.write_text(topology_yaml(original))
    copy = load_topology(path)
    assert copy.dpids == original.dpids and copy.trunks == original.trunks
    assert copy.attachments == original.attachments and copy.gateway == original.gateway == "xgw"
    assert (copy.upstream_port, copy.backbone_port, copy.upstream_address) == (
        original.upstream_port, original.backbone_port, original.upstream_address)


@pytest.mark.parametrize(("attach", "where"), [
    ('{switch: gw, owners: "3"}', "on the gateway itself"),
    ('{switch: side, owners: "3"}', "behind gateway port 3"),
])
def test_an_owner_whose_downloads_would_bypass_the_shaped_trunk_is_refused(tmp_path, attach, where):
    path = tmp_path / "t.yaml"
    path.write_text(f"""name: bypass
switches: [{{name: gw, dpid: 1}}, {{name: core, dpid: 2}}, {{name: side, dpid: 3}}]
links:
  - {{a: gw, a_port: 1, b: core, b_port: 1}}
  - {{a: gw, a_port: 3, b: side, b_port: 1}}
upstream: {{switch: gw, port: 2, backbone_port: 1}}
attach:
  - {{switch: core, owners: "1-2"}}
  - {attach}
""")
    with pytest.raises(PolicyError) as caught:
        load_topology(path)
    message = str(caught.value)
    assert "t.yaml:9:" in message and f"owner 3 is attached {where}" in message and "backbone_port 1" in message
    assert "owner 1" not in message and "owner 2" not in message
