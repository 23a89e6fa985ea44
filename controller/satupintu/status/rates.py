"""Two snapshots -> per-OPD and per-uplink rates, utilisation and drops (pure).

Rates are L2 bit/s as HTB counts them (Ethernet header included, no FCS): about 4.6% above
TCP goodput at a 1500-byte MTU. A counter that went down (daemon restarted, tree rebuilt)
is treated as reset, as Prometheus' rate() does: the increase is the new value."""

from __future__ import annotations

from dataclasses import dataclass

from satupintu.status.exposition import Snapshot

SORT_KEYS = ("rate", "util", "name", "drops")
DIRECTIONS = ("download", "upload")


@dataclass(frozen=True, slots=True)
class OwnerRow:
    code: str
    kind: str  # opd | wifi | unclassified
    direction: str
    rate_bps: float | None  # None: not in both scrapes
    guaranteed_bps: float | None
    ceiling_bps: float | None
    guarantee_utilisation: float | None  # rate / guarantee (above 1: borrowing)
    ceiling_utilisation: float | None  # rate / ceiling
    drops: float | None  # packets dropped between the two scrapes
    drops_total: float | None


@dataclass(frozen=True, slots=True)
class UplinkRow:
    direction: str
    port: str
    rate_bps: float | None
    capacity_bps: float | None
    utilisation: float | None
    drops: float | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    interval_s: float
    owners: list[OwnerRow]
    uplinks: list[UplinkRow]
    latest: Snapshot


def counter_increase(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return after if after < before else after - before


def _rate(before: float | None, after: float | None, interval_s: float) -> float | None:
    increase = counter_increase(before, after)
    return None if increase is None or interval_s <= 0 else increase * 8 / interval_s


def _ratio(value: float | None, of: float | None) -> float | None:
    return None if value is None or not of else value / of


def compute_report(before: Snapshot, after: Snapshot) -> StatusReport:
    interval_s = after.taken_s - before.taken_s
    owners = []
    for key, now in after.owners.items():
        then = before.owners.get(key)
        rate = _rate(then.bytes if then else None, now.bytes, interval_s)
        owners.append(OwnerRow(now.opd, now.kind, now.direction, rate, now.guaranteed_bps, now.ceiling_bps,
                               _ratio(rate, now.guaranteed_bps), _ratio(rate, now.ceiling_bps),
                               counter_increase(then.drops if then else None, now.drops), now.drops))
    uplinks = []
    for key, now_link in sorted(after.uplinks.items()):
        then_link = before.uplinks.get(key)
        rate = _rate(then_link.bytes if then_link else None, now_link.bytes, interval_s)
        uplinks.append(UplinkRow(now_link.direction, now_link.port, rate, now_link.capacity_bps,
                                 _ratio(rate, now_link.capacity_bps),
                                 counter_increase(then_link.drops if then_link else None, now_link.drops)))
    return StatusReport(interval_s, sort_owners(owners, "rate"), uplinks, after)


def sort_owners(rows: list[OwnerRow], key: str) -> list[OwnerRow]:
    """Busiest first for rate/util/drops (unknown values last), alphabetical for name;
    ties broken by code and direction so the order is stable between refreshes."""
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}; choose one of {', '.join(SORT_KEYS)}")

    def tie(row: OwnerRow) -> tuple[str, int]:
        return row.code, DIRECTIONS.index(row.direction) if row.direction in DIRECTIONS else len(DIRECTIONS)

    if key == "name":
        return sorted(rows, key=tie)
    value_of = {"rate": lambda row: row.rate_bps, "util": lambda row: row.ceiling_utilisation,
                "drops": lambda row: row.drops}[key]

    def order(row: OwnerRow) -> tuple[bool, float, tuple[str, int]]:
        value = value_of(row)
        return value is None, -(value or 0.0), tie(row)

    return sorted(rows, key=order)
