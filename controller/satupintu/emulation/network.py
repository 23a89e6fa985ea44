"""The emulated backbone: one Mininet network built from a Policy and a Topology.

Every topology switch becomes an Open vSwitch bridge in the userspace datapath
(`datapath_type=netdev`: this kernel has no OVS module) in `fail_mode=secure`, so nothing
forwards until the controller installs flows (NORMAL-mode bridges stop forwarding at 50
ports here). Port numbers are those of the topology file (owner N on port 1000+N), so the
interface names the compiler shapes (`gw-eth1`, `gw-eth2`) are the real ones. Links carry no
tc limits: the only shaping is the controller's HTB on the gateway.

Hosts: `opd<id>` per OPD, `wifi<id>` per Wi-Fi pool, `inet` upstream. Each has an on-link
default route, so it ARPs for every destination and the controller forwards ARP by target
address. Offloads are turned off on every veth: TCP stalls in the userspace datapath otherwise.

`stop()` removes only what `start()` created, by name and pid; it never runs `mn -c`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satupintu.policy.model import Opd, Policy, WifiPool
from satupintu.topology import Topology, Trunk

log = logging.getLogger("satupintu.emulation")

UPSTREAM_HOST = "inet"
OFFLOAD_ARGS = "tx off rx off tso off gso off gro off"
HOST_OFFSET = 10  # hosts take .10 of their prefix: clear of gateways/servers an engineer may add
SYS_NET = Path("/sys/class/net")
IFNAMSIZ = 15  # longest Linux interface name
PARALLEL = 16  # concurrent helper processes when configuring host namespaces


class EmulationError(RuntimeError):
    """The network cannot be built (OVS down, a name already in use, Mininet missing)."""


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What a test or the ready file needs to reach a host: enter its netns by pid, bind to ip."""

    name: str
    pid: int
    ip: str
    owner_id: int | None = None  # OPD or Wi-Fi pool id; None for the upstream host
    addresses: tuple[str, ...] = ()  # every address with prefix length, primary first


@dataclass(frozen=True, slots=True)
class HostPlan:
    name: str
    owner_id: int | None
    switch: str
    port: int
    addresses: tuple[str, ...]  # "10.33.5.10/24"; the first is the primary
    mac: str


def host_address(prefix: str) -> str:
    """Address of the emulated host inside `prefix`, with its prefix length ("10.33.5.10/24")."""
    net = ipaddress.ip_network(prefix)
    if net.num_addresses > 2 * HOST_OFFSET:
        offset = HOST_OFFSET
    elif net.num_addresses > 2:
        offset = 1
    else:
        offset = 0  # /31, /32 (and IPv6 equivalents): every address is usable
    return f"{net.network_address + offset}/{net.prefixlen}"


def _mac(index: int) -> str:
    """Locally administered, stable MACs (02:53:50 = "SP"): readable in flow dumps and captures."""
    return "02:53:50:" + ":".join(f"{(index >> shift) & 0xFF:02x}" for shift in (16, 8, 0))


def host_plans(policy: Policy, topology: Topology) -> list[HostPlan]:
    """One host per owner on its attach port, plus `inet` on the gateway's upstream port."""
    owners: list[Opd | WifiPool] = sorted([*policy.opds, *policy.public_wifi], key=lambda owner: owner.id)
    missing = [owner.code for owner in owners if owner.id not in topology.attachments]
    if missing:
        raise EmulationError(f"topology '{topology.name}' does not attach: {', '.join(missing)}")
    plans = []
    for owner in owners:
        prefixes = sorted(owner.prefixes, key=lambda prefix: ":" in prefix)  # IPv4 first: it is the primary
        name = f"opd{owner.id}" if isinstance(owner, Opd) else f"wifi{owner.id}"
        plans.append(HostPlan(name, owner.id, topology.attachments[owner.id], topology.attach_port(owner.id),
                              tuple(host_address(prefix) for prefix in prefixes), _mac(owner.id)))
    upstream = topology.upstream_address if "/" in topology.upstream_address else f"{topology.upstream_address}/24"
    plans.append(HostPlan(UPSTREAM_HOST, None, topology.gateway, topology.upstream_port, (upstream,),
                          _mac(0xFFFF01)))
    return plans


def switch_interfaces(topology: Topology) -> list[str]:
    """Every interface the network creates in the root namespace (switch side of each veth)."""
    names = [topology.interface(trunk.a, trunk.a_port) for trunk in topology.trunks]
    names += [topology.interface(trunk.b, trunk.b_port) for trunk in topology.trunks]
    names += [topology.interface(switch, topology.attach_port(owner)) for owner, switch in topology.attachments.items()]
    names.append(topology.interface(topology.gateway, topology.upstream_port))
    return sorted(names)


def renamed(topology: Topology, prefix: str, dpid_offset: int = 0) -> Topology:
    """A copy of `topology` with every switch name prefixed and dpids shifted: lets a test build
    the same layout beside a running emulation (bridge and interface names must not clash)."""
    names = {name: prefix + name for name in topology.dpids}
    copy = Topology(topology.name, {names[name]: dpid + dpid_offset for name, dpid in topology.dpids.items()},
                    [Trunk(names[t.a], t.a_port, names[t.b], t.b_port) for t in topology.trunks],
                    names[topology.gateway], topology.upstream_port, topology.backbone_port,
                    topology.upstream_address, {owner: names[switch] for owner, switch in topology.attachments.items()})
    too_long = [name for name in switch_interfaces(copy) if len(name) > IFNAMSIZ]
    if too_long:
        raise EmulationError(f"prefix '{prefix}' makes interface names longer than {IFNAMSIZ}: {too_long[0]}")
    return copy


def existing_bridges() -> set[str]:
    result = subprocess.run(["ovs-vsctl", "--timeout=10", "list-br"], capture_output=True, text=True)
    if result.returncode != 0:
        raise EmulationError("Open vSwitch does not answer (ovs-vsctl list-br failed): start it with "
                             f"scripts/start-ovs.sh; {result.stderr.strip()}")
    return set(result.stdout.split())


def _run_parallel(commands: Iterable[list[str]], limit: int = PARALLEL) -> list[str]:
    """Run commands at most `limit` at a time; return the error output of those that failed."""
    failures: list[str] = []
    running: list[tuple[list[str], subprocess.Popen]] = []

    def reap(process_entry: tuple[list[str], subprocess.Popen]) -> None:
        argv, process = process_entry
        _, err = process.communicate()
        if process.returncode != 0:
            failures.append(f"{' '.join(argv)}: {err.strip()}")

    for argv in commands:
        if len(running) >= limit:
            reap(running.pop(0))
        running.append((argv, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
    for entry in running:
        reap(entry)
    return failures


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _pids_in_netns(inodes: set[int]) -> list[int]:
    """Processes living in one of these network namespaces (e.g. iperf3 started with nsenter)."""
    inodes = inodes - {_netns_inode(1) or -1, _netns_inode(os.getpid()) or -1}  # never the root netns or ours
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _netns_inode(int(entry)) in inodes:
            found.append(int(entry))
    return found


@dataclass
class EmulatedNetwork:
    """A Mininet backbone for one policy + topology; a context manager that always cleans up."""

    policy: Policy
    topology: Topology
    scale: float = 0.01  # only reported in the ready file: links are not shaped, the controller's HTB is
    controller_host: str = "127.0.0.1"
    controller_port: int | None = 6653  # None: no controller (switches drop everything)
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, for logs and benchmarks
    _net: Any = field(default=None, repr=False)
    _plans: list[HostPlan] = field(default_factory=list, repr=False)
    _netns: set[int] = field(default_factory=set, repr=False)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Build switches, hosts and links, configure addresses, routes and offloads."""
        if self._net is not None:
            raise EmulationError("network already started")
        try:
            from mininet.net import Mininet
            from mininet.node import OVSSwitch
        except ImportError as exc:
            raise EmulationError("Mininet is not installed in this environment: run scripts/setup.sh") from exc
        if os.geteuid() != 0:
            raise EmulationError("the emulation needs root (network namespaces, Open vSwitch)")
        self._plans = host_plans(self.policy, self.topology)
        self._check_free()
        started = time.monotonic()
        net = Mininet(topo=None, switch=OVSSwitch, controller=None, build=False, cleanup=False,
                      autoSetMacs=False, waitConnected=False)
        self._net = net
        try:
            self._build(net, OVSSwitch)
            self.timings["build"] = time.monotonic() - started
            mark = time.monotonic()
            net.start()  # one batched ovs-vsctl for every bridge and port
            self.timings["switches"] = time.monotonic() - mark
            mark = time.monotonic()
            self._configure_hosts(net)
            self._offloads_off(net)
            self.timings["configure"] = time.monotonic() - mark
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started
        log.info("emulated network %s: %d hosts, %d switches in %.1fs", self.topology.name, len(self.hosts),
                 len(self.topology.dpids), self.timings["start"])

    def stop(self) -> None:
        """Remove our bridges, host processes (and anything else left in their namespaces) and veths."""
        net, self._net = self._net, None
        if net is None:
            return
        started = time.monotonic()
        inodes = set(self._netns)
        # Bridges first, in one transaction: ports vanish from OVS before their veths do.
        bridges = [switch.name for switch in net.switches]
        if bridges:
            argv = ["ovs-vsctl", "--timeout=20"]
            for name in bridges:
                argv += ["--", "--if-exists", "del-br", name]
            subprocess.run(argv, capture_output=True)
        # Helpers a test started inside a host (iperf3 via nsenter) would keep its netns and veth alive.
        # Found while the namespaces still exist, so an inode number cannot have been reused yet.
        shells = {host.pid for host in net.hosts}
        for pid in _pids_in_netns(inodes):
            if pid not in shells:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for node in [*net.hosts, *net.switches]:
            with contextlib.suppress(OSError):
                node.terminate()
        # Trunk veths have both ends in the root namespace: only an explicit delete removes them.
        _ip_link_delete([self.topology.interface(trunk.a, trunk.a_port) for trunk in self.topology.trunks])
        self._delete_interfaces(switch_interfaces(self.topology) + bridges)
        self.hosts.clear()
        self._netns.clear()
        self.timings["stop"] = time.monotonic() - started
        log.info("emulated network %s stopped in %.1fs", self.topology.name, self.timings["stop"])

    def __enter__(self) -> EmulatedNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def host(self, name: str) -> Any:
        """The Mininet host `name` (use `.cmd(...)`, `.popen(...)`)."""
        if self._net is None:
            raise EmulationError("network is not started")
        return self._net.get(name)

    def ready_info(self, metrics_url: str, scale: float | None = None) -> dict:
        """The ready-file JSON: scale, every host's name/pid/ip, the metrics URL, switches."""
        return {
            "scale": self.scale if scale is None else scale,
            "metrics_url": metrics_url,
            "topology": self.topology.name,
            "upstream_host": UPSTREAM_HOST,
            "switches": {name: {"dpid": dpid} for name, dpid in sorted(self.topology.dpids.items())},
            "hosts": {name: {"name": info.name, "pid": info.pid, "ip": info.ip, "owner_id": info.owner_id,
                             "addresses": list(info.addresses)}
                      for name, info in self.hosts.items()},
        }

    def bridges(self) -> list[str]:
        return sorted(self.topology.dpids)

    # ------------------------------------------------------------------ building

    def _check_free(self) -> None:
        """Refuse to start over someone else's bridge or interface: Mininet would delete it."""
        taken = sorted(set(self.topology.dpids) & existing_bridges())
        in_root = set(os.listdir(SYS_NET))
        taken += [name for name in (*self.topology.dpids, *switch_interfaces(self.topology)) if name in in_root]
        if taken:
            raise EmulationError(f"already in use (another emulation running?): {', '.join(sorted(set(taken)))}; "
                                 "stop it, or delete these by name (never `mn -c`)")

    def _build(self, net: Any, switch_class: type) -> None:
        if self.controller_port is not None:
            net.addController(_quiet_remote_controller()("c0", ip=self.controller_host, port=self.controller_port))
        for name, dpid in sorted(self.topology.dpids.items()):
            net.addSwitch(name, cls=switch_class, dpid=f"{dpid:016x}", datapath="user", failMode="secure",
                          protocols="OpenFlow13", batch=True)
        for trunk in self.topology.trunks:
            net.addLink(trunk.a, trunk.b, port1=trunk.a_port, port2=trunk.b_port)
        for plan in self._plans:
            intf = f"{plan.name}-eth0"
            net.addHost(plan.name, ip=plan.addresses[0], defaultRoute=f"dev {intf}")
            # The MAC goes on at creation (`ip link add ... address`): setting it later costs 3 commands.
            net.addLink(plan.name, plan.switch, port1=0, port2=plan.port, addr1=plan.mac)
        net.build()

    def _configure_hosts(self, net: Any) -> None:
        for plan in self._plans:
            node = net.get(plan.name)
            self._netns.add(_netns_inode(node.pid) or -1)
            self.hosts[plan.name] = HostInfo(plan.name, node.pid, plan.addresses[0].split("/")[0], plan.owner_id,
                                             plan.addresses)

    def _offloads_off(self, net: Any) -> None:
        """ethtool -K on both ends of every veth, extra addresses, IPv6 off where unused: in parallel."""
        commands: list[list[str]] = []
        for plan in self._plans:
            intf = f"{plan.name}-eth0"
            script = [f"ethtool -K {intf} {OFFLOAD_ARGS}"]
            script += [f"ip addr add {address} dev {intf}" for address in plan.addresses[1:]]
            if not any(":" in address for address in plan.addresses):
                # No IPv6 here: silence router solicitations and MLD reports toward the switches.
                script.append("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            commands.append(["nsenter", "-t", str(self.hosts[plan.name].pid), "-n", "sh", "-ec", "; ".join(script)])
        root = switch_interfaces(self.topology)
        for start in range(0, len(root), 16):
            chunk = root[start:start + 16]
            commands.append(["sh", "-ec", "; ".join(f"ethtool -K {name} {OFFLOAD_ARGS}" for name in chunk)])
        for name in root:
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1")
        failures = _run_parallel(commands)
        if failures:
            raise EmulationError("configuring hosts failed:\n" + "\n".join(failures[:10]))

    @staticmethod
    def _delete_interfaces(names: list[str]) -> None:
        """Delete what is left of ours in the root namespace; a netns teardown deletes veths lazily."""
        deadline = time.monotonic() + 5
        while True:
            left = [name for name in names if (SYS_NET / name).exists()]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        _ip_link_delete(left)


def _ip_link_delete(names: list[str]) -> None:
    """Delete root-namespace links by name in one `ip` process (missing ones are skipped)."""
    present = [name for name in names if (SYS_NET / name).exists()]
    if present:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"link del {name}\n" for name in present),
                       capture_output=True, text=True)


def _write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).write_text(value)


def _quiet_remote_controller() -> type:
    from mininet.node import RemoteController

    class QuietRemoteController(RemoteController):
        """The controller may start after the switches (they retry): no warning for that."""

        def checkListening(self) -> None:
            return None

    return QuietRemoteController
