"""Cross-checks the schema cannot express: uniqueness, overlaps, sums, schedules."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from satupintu.policy.errors import MAX_ISSUES, Issue, more_issues
from satupintu.policy.model import DAYS, Policy
from satupintu.policy.schedule import resolve_allocations, weekly_intervals
from satupintu.policy.source import Located
from satupintu.policy.units import format_rate

WIFI_FLOOR_WARN_FRACTION = 0.10


def cross_check(policy: Policy, located: Located, index_map: dict[str, list[int]] | None = None) -> list[Issue]:
    """Every cross-check problem, located. `index_map` (section -> original index of each item)
    is given when items that failed the schema were left out: paths and messages are mapped
    back to the file, and checks that would blame the missing items are skipped."""
    issues: list[Issue] = []
    index_map = index_map or {}
    hidden: list[tuple[int, int]] = []

    def report(path: tuple, message: str, severity: str = "error") -> None:
        if index_map:
            path = _remap(path, index_map)
        line, col = located.position(path)
        if len(issues) >= MAX_ISSUES:
            hidden.append((line, col))
            return
        if index_map:
            message = _remap_text(message, index_map)
        issues.append(Issue(located.file, line, col, message, severity))

    _check_identity(policy, report)
    _check_classes(policy, report, check_default="classes" not in index_map)
    _check_prefixes(policy, report)
    _check_allocations(policy, report)
    _check_schedules(policy, report, check_codes="opds" not in index_map)
    _check_sums(policy, report)
    if hidden:
        issues.append(more_issues(located.file, *hidden[0], len(hidden)))
    return issues


_SECTION_INDEX = re.compile(r"\b(classes|opds|public_wifi|schedules)\[(\d+)\]")


def _remap(path: tuple, index_map: dict[str, list[int]]) -> tuple:
    if len(path) >= 2 and path[0] in index_map and isinstance(path[1], int):
        return (path[0], index_map[path[0]][path[1]], *path[2:])
    return path


def _remap_text(message: str, index_map: dict[str, list[int]]) -> str:
    def original(match: re.Match[str]) -> str:
        section, index = match.group(1), int(match.group(2))
        if section in index_map and index < len(index_map[section]):
            return f"{section}[{index_map[section][index]}]"
        return match.group(0)

    return _SECTION_INDEX.sub(original, message)


def _owners(policy: Policy) -> Iterator[tuple[str, int, object]]:
    for index, opd in enumerate(policy.opds):
        yield "opds", index, opd
    for index, pool in enumerate(policy.public_wifi):
        yield "public_wifi", index, pool


def _check_identity(policy: Policy, report) -> None:
    seen_ids: dict[int, tuple] = {}
    seen_codes: dict[str, tuple] = {}
    for section, index, owner in _owners(policy):
        here = (section, index)
        if owner.id in seen_ids:
            report(here + ("id",), f"id {owner.id} is already used by {_name(policy, seen_ids[owner.id])}; "
                                   "ids must be unique across opds and public_wifi")
        else:
            seen_ids[owner.id] = here
        if owner.code in seen_codes:
            report(here + ("code",), f"code '{owner.code}' is already used by {_name(policy, seen_codes[owner.code])}")
        else:
            seen_codes[owner.code] = here


def _name(policy: Policy, where: tuple) -> str:
    section, index = where
    owner = getattr(policy, section)[index]
    return f"{section}[{index}] ({owner.code})"


def _check_classes(policy: Policy, report, check_default: bool = True) -> None:
    by_key: dict[tuple[str, object], int] = {}
    for index, klass in enumerate(policy.classes):
        for key in ("id", "name", "dscp"):
            value = getattr(klass, key)
            if (key, value) in by_key:
                report(("classes", index, key),
                       f"class {key} {value!r} is already used by classes[{by_key[(key, value)]}] "
                       f"({policy.classes[by_key[(key, value)]].name}); each class needs its own {key}")
            else:
                by_key[(key, value)] = index
        for rule_index, rule in enumerate(klass.match):
            if rule.ports and rule.protocol == "icmp":
                report(("classes", index, "match", rule_index, "ports"),
                       f"class '{klass.name}': ports only apply to tcp and udp (or any), not icmp; "
                       "remove the ports or change the protocol")
    names = [klass.name for klass in policy.classes]
    if check_default and policy.default_class not in names:
        report(("default_class",),
               f"default_class '{policy.default_class}' is not a class (classes: {', '.join(names)})")
    total_share = sum(klass.share_percent for klass in policy.classes)
    if total_share > 100:
        report(("classes",), f"share_percent of all classes adds up to {total_share}%; at most 100% of a guarantee "
                             "can be reserved for classes")


def _check_prefixes(policy: Policy, report) -> None:
    """No address may belong to two owners (or twice to one). Sorted by first address, each
    prefix is compared with the widest-reaching one before it; the error goes on whichever
    of the two comes later in the file and names the other."""
    entries = []
    for section, index, owner in _owners(policy):
        for prefix_index, text in enumerate(owner.prefixes):
            network = ipaddress.ip_network(text)
            entries.append((network.version, int(network.network_address), int(network.broadcast_address),
                            network.prefixlen, (section, index, "prefixes", prefix_index), owner.code, text))
    entries.sort()
    last_end: dict[int, tuple] = {}
    for version, start, end, _, path, code, text in entries:
        previous = last_end.get(version)
        if previous is not None and start <= previous[0]:
            _, other_path, other_code, other_text = previous
            here, there = (path, other_path) if path > other_path else (other_path, path)
            here_text, there_text = (text, other_text) if here is path else (other_text, text)
            there_code = other_code if there is other_path else code
            what = "repeats" if other_text == text else "overlaps"
            owner_note = "the same owner" if other_code == code else there_code
            report(here, f"prefix {here_text} {what} {there_text} of {owner_note} ({_dotted(there)}); "
                         "each address must belong to exactly one OPD or pool")
            if end > previous[0]:
                last_end[version] = (end, path, code, text)
        else:
            last_end[version] = (end, path, code, text)


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))


def _check_allocations(policy: Policy, report) -> None:
    capacity = {"download": policy.backbone.download, "upload": policy.backbone.upload}
    for index, opd in enumerate(policy.opds):
        for direction in ("download", "upload"):
            allocation = getattr(opd, direction)
            here = ("opds", index, direction)
            if allocation.guaranteed > allocation.ceiling:
                report(here + ("guaranteed",),
                       f"{opd.code} {direction}: guaranteed {format_rate(allocation.guaranteed)} "
                       f"is above its ceiling {format_rate(allocation.ceiling)}; guaranteed must be <= ceiling")
            if allocation.ceiling > capacity[direction]:
                report(here + ("ceiling",),
                       f"{opd.code} {direction}: ceiling {format_rate(allocation.ceiling)} is above "
                       f"the backbone {direction} capacity {format_rate(capacity[direction])}; "
                       "ceiling must be <= capacity")
            cap = getattr(opd.hard_cap, direction) if opd.hard_cap else None
            if cap is not None and cap < allocation.guaranteed:
                report(("opds", index, "hard_cap", direction),
                       f"{opd.code} {direction}: hard cap {format_rate(cap)} is below its guarantee "
                       f"{format_rate(allocation.guaranteed)}, which could then never be met")
    for index, pool in enumerate(policy.public_wifi):
        for direction in ("download", "upload"):
            floor = getattr(pool.floor, direction)
            ceiling = getattr(pool.ceiling, direction) if pool.ceiling else capacity[direction]
            if floor > ceiling:
                report(("public_wifi", index, "floor", direction),
                       f"{pool.code} {direction}: floor {format_rate(floor)} is above its ceiling "
                       f"{format_rate(ceiling)}")
            if ceiling > capacity[direction]:
                report(("public_wifi", index, "ceiling", direction),
                       f"{pool.code} {direction}: ceiling {format_rate(ceiling)} is above the backbone capacity "
                       f"{format_rate(capacity[direction])}")
            if floor > capacity[direction] * WIFI_FLOOR_WARN_FRACTION:
                report(("public_wifi", index, "floor", direction),
                       f"{pool.code} {direction}: floor {format_rate(floor)} is more than 10% of capacity; "
                       "public Wi-Fi is meant to take leftovers", "warning")


def _check_schedules(policy: Policy, report, check_codes: bool = True) -> None:
    try:
        ZoneInfo(policy.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        report(("timezone",), f"unknown time zone '{policy.timezone}' (e.g. Asia/Jakarta for WIB, Asia/Makassar "
                              "for WITA, Asia/Jayapura for WIT)")
    codes = {opd.code: opd for opd in policy.opds}
    suggestions = 20  # difflib against thousands of codes is slow: suggest for the first few only
    names: dict[str, int] = {}
    taken: list[tuple[int, int, int]] = []  # (start, end, schedule index) in minutes of the week
    for index, schedule in enumerate(policy.schedules):
        here = ("schedules", index)
        if schedule.name in names:
            report(here + ("name",), f"schedule name '{schedule.name}' is already used by "
                                     f"schedules[{names[schedule.name]}]; each schedule needs its own name")
            continue
        names[schedule.name] = index
        if schedule.start == 24 * 60:
            report(here + ("start",), f"schedule '{schedule.name}': start '24:00' is not a time of day; "
                                      "write '00:00' and list the next day")
            continue
        if schedule.start == schedule.end:
            report(here + ("end",), f"schedule '{schedule.name}': start and end are both {_clock(schedule.start)}; "
                                    "a window needs a length (for a whole day write start: \"00:00\", end: \"24:00\")")
            continue
        for code in schedule.opds:
            if code not in codes and check_codes:
                suggestions -= 1
                report(here + ("opds", code),
                       f"schedule '{schedule.name}': no OPD has code '{code}'{_guess(code, codes, suggestions >= 0)}")
        overlap = _first_overlap(weekly_intervals(schedule), taken)
        if overlap is not None:
            begin, other = overlap
            report(here + ("days",), f"schedule '{schedule.name}' overlaps '{policy.schedules[other].name}' on "
                                     f"{DAYS[begin // 1440 % 7]} from {_clock(begin % 1440)}; windows must not overlap "
                                     "(a window whose end is before its start runs past midnight)")
        taken.extend((start, end, index) for start, end in weekly_intervals(schedule))
        if any(code not in codes for code in schedule.opds):
            continue
        allocations = resolve_allocations(policy, schedule.name)
        for code, override in schedule.opds.items():
            for direction in ("download", "upload"):
                change = getattr(override, direction)
                if change is None:
                    continue
                guaranteed, ceiling = allocations[codes[code].id][direction]
                base = getattr(codes[code], direction)
                if guaranteed > ceiling and (guaranteed, ceiling) != (base.guaranteed, base.ceiling):
                    report(here + ("opds", code, direction),
                           f"schedule '{schedule.name}': {code} {direction} guaranteed {format_rate(guaranteed)} "
                           f"is above its ceiling {format_rate(ceiling)}")
                capacity = getattr(policy.backbone, direction)
                if change.ceiling is not None and ceiling > capacity:
                    report(here + ("opds", code, direction),
                           f"schedule '{schedule.name}': {code} {direction} ceiling {format_rate(ceiling)} is above "
                           f"the backbone capacity {format_rate(capacity)}")


def _first_overlap(intervals: list[tuple[int, int]],
                   taken: list[tuple[int, int, int]]) -> tuple[int, int] | None:
    """(minute of the week where the overlap begins, index of the other schedule), if any."""
    found: tuple[int, int] | None = None
    for start, end in intervals:
        for other_start, other_end, other in taken:
            if start < other_end and other_start < end:
                begin = max(start, other_start)
                if found is None or begin < found[0]:
                    found = (begin, other)
    return found


def _guess(code: str, codes: dict, suggest: bool = True) -> str:
    guess = difflib.get_close_matches(code, list(codes), n=1, cutoff=0.6) if suggest else []
    note = ""
    strange = next((ch for ch in code if not ch.isascii()), None)
    if strange is not None:
        note = f"; it contains the non-ASCII character '{strange}' (U+{ord(strange):04X})"
    return (f"; did you mean '{guess[0]}'?" if guess else "") + note


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _check_sums(policy: Policy, report) -> None:
    """Guarantees (OPDs + Wi-Fi floors + unclassified) must fit the capacity, per direction,
    in the base window and in every schedule; a schedule is only blamed for what it adds."""
    base_totals: dict[str, int] = {}
    windows: list[tuple[int | None, str | None]] = [(None, None)]
    windows += list(enumerate(schedule.name for schedule in policy.schedules))
    for index, window in windows:
        allocations = resolve_allocations(policy, window)
        for direction in ("download", "upload"):
            capacity = getattr(policy.backbone, direction)
            total = sum(alloc[direction][0] for alloc in allocations.values())
            total += sum(getattr(pool.floor, direction) for pool in policy.public_wifi)
            total += unclassified_rate(policy, direction)
            if window is None:
                base_totals[direction] = total
            if total <= capacity or (window is not None and total <= base_totals[direction]):
                continue
            where = "" if window is None else f" during schedule '{window}'"
            path = ("backbone", direction) if index is None else ("schedules", index, "opds")
            message = (f"{direction}: guarantees{where} add up to {format_rate(total)} (OPDs + Wi-Fi floors + "
                       f"unclassified), above the capacity {format_rate(capacity)}")
            if policy.allow_oversubscription:
                report(path, message + "; allowed by allow_oversubscription", "warning")
            else:
                report(path, message + "; lower guarantees or set allow_oversubscription: true")


def unclassified_rate(policy: Policy, direction: str) -> int:
    if policy.unclassified is not None:
        return getattr(policy.unclassified, direction)
    return max(getattr(policy.backbone, direction) // 100, 8_000)
