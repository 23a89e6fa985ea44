"""Backbone topology: switches, trunks, the upstream, and where each OPD attaches.

The same file drives the controller (forwarding, shaping ports) and the Mininet builder.
Port numbers are explicit or derived from ids (owner `id` attaches on port 1000 + id), so
they are stable across edits.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from satupintu.policy.errors import Issue, PolicyError
from satupintu.policy.load import schema_issues
from satupintu.policy.source import load_yaml, read_text

ATTACH_PORT_BASE = 1000
SWITCH_NAME = r"^[a-z][a-z0-9]{0,5}$"  # short: Linux interface names are "<switch>-eth<port>" <= 15 chars


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class SwitchModel(_Strict):
    name: str = Field(pattern=SWITCH_NAME)
    dpid: int = Field(ge=1, le=2**48 - 1)


class LinkModel(_Strict):
    a: str
    a_port: int = Field(ge=1, le=999)
    b: str
    b_port: int = Field(ge=1, le=999)


class UpstreamModel(_Strict):
    switch: str
    port: int = Field(ge=1, le=999, description="Port toward the internet (upload is shaped on its egress).")
    backbone_port: int = Field(ge=1, le=999, description="Gateway trunk toward the OPDs (download shaped here).")
    address: str = Field("100.64.0.1", description="Emulation: address of the upstream host `inet`.")


class AttachModel(_Strict):
    switch: str
    owners: str = Field(description="Owner ids (OPDs and Wi-Fi pools), e.g. '1-25,900'.")

    @field_validator("owners")
    @classmethod
    def _ids(cls, value: str) -> str:
        parse_ids(value)
        return value


class TopologyModel(_Strict):
    name: str
    switches: list[SwitchModel] = Field(min_length=1)
    links: list[LinkModel] = Field(default_factory=list)
    upstream: UpstreamModel
    attach: list[AttachModel] = Field(min_length=1)


def parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"'{part.strip()}' is not an id or a range like 1-25")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low > high or high - low > 10_000:
            raise ValueError(f"range '{part.strip()}' is reversed or too large")
        ids.extend(range(low, high + 1))
    return ids


@dataclass(frozen=True, slots=True)
class Trunk:
    a: str
    a_port: int
    b: str
    b_port: int


@dataclass(slots=True)
class Topology:
    name: str
    dpids: dict[str, int]
    trunks: list[Trunk]
    gateway: str
    upstream_port: int
    backbone_port: int
    upstream_address: str
    attachments: dict[int, str]  # owner id -> switch
    _next_port: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._next_port = _next_hops(self.dpids, self.trunks)

    @staticmethod
    def attach_port(owner_id: int) -> int:
        return ATTACH_PORT_BASE + owner_id

    def port_toward(self, switch: str, target: str) -> int | None:
        """Port on `switch` that leads to `target` switch (shortest path); None if same."""
        if switch == target:
            return None
        return self._next_port[(switch, target)]

    def port_to_owner(self, switch: str, owner_id: int) -> int:
        target = self.attachments[owner_id]
        return self.attach_port(owner_id) if target == switch else self._next_port[(switch, target)]

    def port_to_upstream(self, switch: str) -> int:
        return self.upstream_port if switch == self.gateway else self._next_port[(switch, self.gateway)]

    def trunk_ports(self, switch: str) -> list[int]:
        ports = [t.a_port for t in self.trunks if t.a == switch] + [t.b_port for t in self.trunks if t.b == switch]
        return sorted(ports)

    def interface(self, switch: str, port: int) -> str:
        return f"{switch}-eth{port}"


def _next_hops(dpids: dict[str, int], trunks: list[Trunk]) -> dict[tuple[str, str], int]:
    """BFS from every switch; ties broken by switch name so paths are deterministic."""
    neighbours: dict[str, list[tuple[str, int]]] = {name: [] for name in dpids}
    for trunk in trunks:
        neighbours[trunk.a].append((trunk.b, trunk.a_port))
        neighbours[trunk.b].append((trunk.a, trunk.b_port))
    for items in neighbours.values():
        items.sort()
    table: dict[tuple[str, str], int] = {}
    for source in sorted(dpids):
        first_port: dict[str, int] = {}
        queue = deque([source])
        seen = {source}
        while queue:
            node = queue.popleft()
            for neighbour, port in neighbours[node]:
                if neighbour in seen:
                    continue
                seen.add(neighbour)
                first_port[neighbour] = port if node == source else first_port[node]
                queue.append(neighbour)
        for target, port in first_port.items():
            table[(source, target)] = port
    return table


def load_topology(path: str | Path) -> Topology:
    name, text = read_text(path)
    located = load_yaml(name, text)
    if not isinstance(located.data, dict):
        message = "top level must be a mapping with name, switches, links, upstream, attach"
        raise PolicyError([Issue(name, 1, 1, message)])
    try:
        model = TopologyModel.model_validate(located.data)
    except ValidationError as exc:
        raise PolicyError(schema_issues(exc, located, TopologyModel)) from None
    issues: list[Issue] = []

    def report(where: tuple, message: str) -> None:
        line, col = located.position(where)
        issues.append(Issue(name, line, col, message))

    dpids: dict[str, int] = {}
    for index, switch in enumerate(model.switches):
        if switch.name in dpids or switch.dpid in dpids.values():
            report(("switches", index), f"switch '{switch.name}' (dpid {switch.dpid}) repeats a name or dpid")
        dpids[switch.name] = switch.dpid
    used_ports: set[tuple[str, int]] = set()
    for index, link in enumerate(model.links):
        for end, port in ((link.a, link.a_port), (link.b, link.b_port)):
            if end not in dpids:
                report(("links", index), f"link end '{end}' is not a switch ({', '.join(dpids)})")
            if (end, port) in used_ports:
                report(("links", index), f"port {port} of '{end}' is used twice")
            used_ports.add((end, port))
    upstream = model.upstream
    if upstream.switch not in dpids:
        report(("upstream", "switch"), f"upstream switch '{upstream.switch}' is not a switch")
    if (upstream.switch, upstream.port) in used_ports:
        report(("upstream", "port"), f"upstream port {upstream.port} is already a trunk port")
    if (upstream.switch, upstream.backbone_port) not in used_ports:
        report(("upstream", "backbone_port"), f"backbone_port {upstream.backbone_port} is not a trunk of "
                                              f"'{upstream.switch}'; download is shaped on the gateway's trunk")
    attachments: dict[int, str] = {}
    attach_index: dict[int, int] = {}
    for index, attach in enumerate(model.attach):
        if attach.switch not in dpids:
            report(("attach", index, "switch"), f"'{attach.switch}' is not a switch")
        for owner in parse_ids(attach.owners):
            if owner in attachments:
                report(("attach", index, "owners"), f"owner {owner} is attached twice")
            attachments[owner] = attach.switch
            attach_index[owner] = index
    trunks = [Trunk(link.a, link.a_port, link.b, link.b_port) for link in model.links]
    if not issues:
        reach = _next_hops(dpids, trunks)
        for switch in dpids:
            if switch != upstream.switch and (switch, upstream.switch) not in reach:
                report(("switches",), f"switch '{switch}' has no path to the gateway '{upstream.switch}'")
    if not issues:
        _check_download_shaped(upstream, attachments, attach_index, reach, report)
    if issues:
        raise PolicyError(issues)
    return Topology(model.name, dpids, trunks, upstream.switch, upstream.port, upstream.backbone_port,
                    upstream.address, attachments)


def _check_download_shaped(upstream: UpstreamModel, attachments: dict[int, str], attach_index: dict[int, int],
                           reach: dict[tuple[str, str], int], report) -> None:
    """Download is shaped on the gateway's backbone_port only: an owner reached any other way
    (on the gateway itself, or behind another gateway trunk) would get unshaped downloads."""
    for owner, switch in sorted(attachments.items()):
        port = None if switch == upstream.switch else reach.get((upstream.switch, switch))
        if port == upstream.backbone_port:
            continue
        where = "on the gateway itself" if port is None else f"behind gateway port {port}"
        report(("attach", attach_index[owner], "owners"),
               f"owner {owner} is attached {where}, so its downloads would bypass the shaped trunk "
               f"(backbone_port {upstream.backbone_port} of '{upstream.switch}'); attach it to a switch "
               f"reached through that port")


def star_topology(owner_ids: list[int], name: str = "star") -> Topology:
    """Gateway `gw` with one trunk to `core`, every owner on `core` (benchmarks, tests)."""
    return Topology(name, {"gw": 1, "core": 2}, [Trunk("gw", 1, "core", 1)], "gw", 2, 1, "100.64.0.1",
                    {owner: "core" for owner in owner_ids})


def topology_yaml(topology: Topology) -> str:
    """The topology as a file `load_topology` reads back: lets an emulation hand a renamed copy to
    the controller process."""
    import json

    by_switch: dict[str, list[int]] = {}
    for owner, switch in sorted(topology.attachments.items()):
        by_switch.setdefault(switch, []).append(owner)
    lines = [f"name: {json.dumps(topology.name)}", "switches:"]
    lines += [f"  - {{name: {name}, dpid: {dpid}}}" for name, dpid in sorted(topology.dpids.items())]
    lines.append("links:" if topology.trunks else "links: []")
    lines += [f"  - {{a: {t.a}, a_port: {t.a_port}, b: {t.b}, b_port: {t.b_port}}}" for t in topology.trunks]
    lines += ["upstream:", f"  switch: {topology.gateway}", f"  port: {topology.upstream_port}",
              f"  backbone_port: {topology.backbone_port}", f"  address: {json.dumps(topology.upstream_address)}",
              "attach:"]
    lines += [f"  - {{switch: {switch}, owners: \"{','.join(map(str, owners))}\"}}"
              for switch, owners in sorted(by_switch.items())]
    return "\n".join(lines) + "\n"
