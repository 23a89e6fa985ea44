"""Prometheus exposition text of the Satu Pintu exporter -> one typed snapshot (pure).

Only the series the status view needs are kept; unknown series are ignored, so a newer
daemon with more metrics still works with an older `satupintu status`."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

OwnerKey = tuple[str, str, str]  # (opd code, kind, direction)


@dataclass(slots=True)
class OwnerSample:
    """Counters and configured rates of one OPD (or Wi-Fi pool, or unclassified) in one direction."""

    opd: str
    kind: str
    direction: str
    bytes: float | None = None
    drops: float | None = None
    guaranteed_bps: float | None = None
    ceiling_bps: float | None = None


@dataclass(slots=True)
class UplinkSample:
    direction: str
    port: str
    bytes: float | None = None
    drops: float | None = None
    capacity_bps: float | None = None


@dataclass(slots=True)
class SwitchSample:
    name: str
    connected: bool = False
    flows: int = 0
    meters: int = 0
    openflow_errors: int = 0


@dataclass(slots=True)
class PolicySample:
    generation: int | None = None
    sha256: str = ""
    file: str = ""
    window: str = ""
    scale: float | None = None
    reloads_ok: int = 0
    reloads_failed: int = 0
    last_good_reload_unix: float | None = None


@dataclass(slots=True)
class Snapshot:
    """One scrape. `taken_s` is a monotonic clock reading supplied by the caller."""

    taken_s: float
    owners: dict[OwnerKey, OwnerSample] = field(default_factory=dict)
    uplinks: dict[tuple[str, str], UplinkSample] = field(default_factory=dict)
    switches: dict[str, SwitchSample] = field(default_factory=dict)
    policy: PolicySample = field(default_factory=PolicySample)


_OWNER_FIELDS = {
    "satupintu_opd_bytes_total": "bytes",
    "satupintu_opd_drops_total": "drops",
    "satupintu_opd_guaranteed_bps": "guaranteed_bps",
    "satupintu_opd_ceiling_bps": "ceiling_bps",
}
_UPLINK_FIELDS = {
    "satupintu_uplink_bytes_total": "bytes",
    "satupintu_uplink_drops_total": "drops",
    "satupintu_uplink_capacity_bps": "capacity_bps",
}
_SWITCH_FIELDS = {
    "satupintu_switch_flows": "flows",
    "satupintu_switch_meters": "meters",
    "satupintu_switch_openflow_errors_total": "openflow_errors",
}


class ExpositionError(ValueError):
    """The text is not Prometheus exposition format (or not from a Satu Pintu exporter)."""


_POLICY_SERIES = ("satupintu_policy_generation", "satupintu_policy_info", "satupintu_scale",
                  "satupintu_policy_reloads_total", "satupintu_policy_last_good_reload_timestamp_seconds",
                  "satupintu_switch_connected")
_WANTED = tuple(f"{name}{end}" for name in (*_OWNER_FIELDS, *_UPLINK_FIELDS, *_SWITCH_FIELDS, *_POLICY_SERIES)
                for end in ("{", " "))


def wanted_lines(text: str) -> str:
    """Comments and the samples of the series read here: per-class series are two thirds of a
    500-OPD scrape, and prometheus_client's parser costs ~10 us a line."""
    return "\n".join(line for line in text.splitlines() if line.startswith(_WANTED) or line.startswith("#")) + "\n"


def parse_snapshot(text: str, taken_s: float) -> Snapshot:
    snapshot = Snapshot(taken_s)
    try:
        families = list(text_string_to_metric_families(wanted_lines(text)))
    except (ValueError, TypeError, IndexError) as error:
        raise ExpositionError(f"not Prometheus exposition text: {error}") from error
    for family in families:
        for sample in family.samples:
            _take(snapshot, sample.name, sample.labels, sample.value)
    return snapshot


def _take(snapshot: Snapshot, name: str, labels: dict[str, str], value: float) -> None:
    if name in _OWNER_FIELDS:
        key = (labels.get("opd", ""), labels.get("kind", ""), labels.get("direction", ""))
        owner = snapshot.owners.get(key) or snapshot.owners.setdefault(key, OwnerSample(*key))
        setattr(owner, _OWNER_FIELDS[name], value)
    elif name in _UPLINK_FIELDS:
        key2 = (labels.get("direction", ""), labels.get("port", ""))
        uplink = snapshot.uplinks.get(key2) or snapshot.uplinks.setdefault(key2, UplinkSample(*key2))
        setattr(uplink, _UPLINK_FIELDS[name], value)
    elif name == "satupintu_switch_connected" or name in _SWITCH_FIELDS:
        switch_name = labels.get("switch", "")
        switch = snapshot.switches.get(switch_name) or snapshot.switches.setdefault(switch_name,
                                                                                     SwitchSample(switch_name))
        if name == "satupintu_switch_connected":
            switch.connected = value >= 1
        else:
            setattr(switch, _SWITCH_FIELDS[name], int(value))
    else:
        _take_policy(snapshot.policy, name, labels, value)


def _take_policy(policy: PolicySample, name: str, labels: dict[str, str], value: float) -> None:
    if name == "satupintu_policy_generation":
        policy.generation = int(value)
    elif name == "satupintu_policy_info":
        policy.sha256, policy.file, policy.window = labels.get("sha256", ""), labels.get("file", ""), \
            labels.get("window", "")
    elif name == "satupintu_scale":
        policy.scale = value
    elif name == "satupintu_policy_reloads_total":
        if labels.get("result") == "ok":
            policy.reloads_ok = int(value)
        elif labels.get("result") == "failed":
            policy.reloads_failed = int(value)
    elif name == "satupintu_policy_last_good_reload_timestamp_seconds":
        policy.last_good_reload_unix = value
