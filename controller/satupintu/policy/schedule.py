"""Time-of-day schedules: which window is in force, and the allocations it implies."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from satupintu.policy.model import DAYS, Policy, Schedule

WEEK_MINUTES = 7 * 24 * 60
BASE_WINDOW = "base"

Allocations = dict[int, dict[str, tuple[int, int]]]  # opd id -> direction -> (guaranteed, ceiling)


def weekly_intervals(schedule: Schedule) -> list[tuple[int, int]]:
    """Half-open minute-of-week intervals; a window past midnight spills into the next day."""
    intervals = []
    for day in schedule.days:
        start = DAYS.index(day) * 1440 + schedule.start
        length = (schedule.end - schedule.start) % 1440 or 1440
        end = start + length
        if end <= WEEK_MINUTES:
            intervals.append((start, end))
        else:
            intervals.append((start, WEEK_MINUTES))
            intervals.append((0, end - WEEK_MINUTES))
    return intervals


def active_window(policy: Policy, when: datetime) -> str:
    """Name of the schedule in force at `when` (aware datetime), or BASE_WINDOW."""
    local = when.astimezone(ZoneInfo(policy.timezone))
    minute = local.weekday() * 1440 + local.hour * 60 + local.minute
    for schedule in policy.schedules:
        if any(start <= minute < end for start, end in weekly_intervals(schedule)):
            return schedule.name
    return BASE_WINDOW


def next_boundary(policy: Policy, when: datetime) -> datetime | None:
    """The next instant at which the window in force may change (None without schedules)."""
    if not policy.schedules:
        return None
    zone = ZoneInfo(policy.timezone)
    local = when.astimezone(zone)
    minute = local.weekday() * 1440 + local.hour * 60 + local.minute
    edges = sorted({edge % WEEK_MINUTES for schedule in policy.schedules
                    for interval in weekly_intervals(schedule) for edge in interval})
    ahead = min(((edge - minute - 1) % WEEK_MINUTES) + 1 for edge in edges)
    start_of_minute = local.replace(second=0, microsecond=0)
    return (start_of_minute + timedelta(minutes=ahead)).astimezone(when.tzinfo)


def resolve_allocations(policy: Policy, window: str | None) -> Allocations:
    """Per OPD id, (guaranteed, ceiling) per direction, with the window's overrides applied."""
    allocations: Allocations = {
        opd.id: {
            "download": (opd.download.guaranteed, opd.download.ceiling),
            "upload": (opd.upload.guaranteed, opd.upload.ceiling),
        }
        for opd in policy.opds
    }
    if window in (None, BASE_WINDOW):
        return allocations
    schedule = next((item for item in policy.schedules if item.name == window), None)
    if schedule is None:
        raise KeyError(f"no schedule named {window!r}")
    ids = {opd.code: opd.id for opd in policy.opds}
    for code, override in schedule.opds.items():
        if code not in ids:
            continue
        for direction in ("download", "upload"):
            change = getattr(override, direction)
            if change is None:
                continue
            guaranteed, ceiling = allocations[ids[code]][direction]
            allocations[ids[code]][direction] = (
                change.guaranteed if change.guaranteed is not None else guaranteed,
                change.ceiling if change.ceiling is not None else ceiling,
            )
    return allocations
