"""Property tests of the policy loader: whatever the input, it returns a LoadedPolicy or
raises PolicyError with located issues; never another exception, never a hang."""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from satupintu.policy.errors import PolicyError
from satupintu.policy.load import LoadedPolicy, load_policy_bytes, load_policy_text
from satupintu.policy.schedule import BASE_WINDOW, active_window, next_boundary

REPO = Path(__file__).resolve().parents[1]
MINIMAL = (REPO / "policies" / "minimal.yaml").read_text()
LINES = MINIMAL.splitlines()
NAME = "fuzz.yaml"

# SATUPINTU_FUZZ_EXAMPLES=20000 for a long, randomised hunt; the default run is quick and repeatable.
_EXAMPLES = int(os.environ.get("SATUPINTU_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize="SATUPINTU_FUZZ_EXAMPLES" not in os.environ,
    database=None,
)


def _lines_in(text: str) -> int:
    # libyaml also breaks lines on \r, NEL and the Unicode separators.
    return len(re.split(r"\r\n|[\n\r\x85\u2028\u2029]", text)) + 1


def _check(load: object, text: str | None = None) -> LoadedPolicy | None:
    """Run a load; assert it either succeeds or fails with only located, readable issues."""
    try:
        result = load()  # type: ignore[operator]
    except PolicyError as exc:
        assert exc.issues, "PolicyError without issues"
        assert exc.errors, "PolicyError with warnings only"
        for issue in exc.issues:
            assert issue.file == NAME
            assert issue.line >= 1 and issue.column >= 1, issue
            if text is not None:
                assert issue.line <= _lines_in(text), (issue, text)
            assert issue.message.strip()
            assert "Traceback" not in issue.message
            assert str(issue).startswith(f"{NAME}:{issue.line}:{issue.column}: ")
        return None
    assert isinstance(result, LoadedPolicy)
    assert all(warning.severity == "warning" for warning in result.warnings)
    return result


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(raw: bytes) -> None:
    _check(lambda: load_policy_bytes(raw, NAME))


@FUZZ
@given(st.binary(max_size=512).map(lambda junk: MINIMAL.encode() + junk))
def test_minimal_followed_by_random_bytes_never_crashes(raw: bytes) -> None:
    _check(lambda: load_policy_bytes(raw, NAME))


YAMLISH = st.text(
    alphabet=st.sampled_from(
        list(":-[]{}&*!|>'\"#%@`,? \n\t\r\\~<=.0123456789abcdefxyzABEFMGbps/\x85\u2028\ufeff\u0415")
    ),
    max_size=300,
)


@FUZZ
@given(YAMLISH)
def test_random_yamlish_text_never_crashes(text: str) -> None:
    _check(lambda: load_policy_text(text, NAME), text)


@FUZZ
@given(st.text(max_size=300))
def test_random_unicode_text_never_crashes(text: str) -> None:
    _check(lambda: load_policy_text(text, NAME), text)


RATES = st.one_of(
    st.sampled_from(["300Mbps", "1.5Gbit/s", "512kbps", "70MB/s", "300", "0Mbps", "-5Mbps", "11Tbps", "1e9bps",
                     "9" * 40 + "Mbps", "1,5Gbps", "\u0663Mbps", "300 mbps", "''", "~", "[1]", "{a: 1}", "0.0001kbps"]),
    st.from_regex(r"\A-?[0-9]{1,20}(\.[0-9]{1,4})?\s?[kKmMgGtTx]?(bps|bit/s|B/s|B|b)?\Z"),
)
SCALARS = st.one_of(
    RATES,
    st.integers(min_value=-10**6, max_value=10**30).map(str),
    st.sampled_from(["true", "no", "null", "~", "''", '"x"', "[]", "{}", "EF", "AF41", "64", "-1", "10.1.1.0/24",
                     "10.1.1.1/24", "::/0", '"07:00"', '"24:00"', '"23:00"', "DINKES", "&a x", "*a", "!!int 1",
                     "<<", "|\n  block"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12),
)
VALUE_LINE = re.compile(r"^(\s*(?:- )?[A-Za-z_]+:)\s*(\S.*)$")
RATE_TOKEN = re.compile(r"\d+(?:\.\d+)?[kMG]bps")


@st.composite
def mutated_minimal(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        operation = draw(st.sampled_from(["delete", "duplicate", "swap", "rate", "value", "indent", "insert"]))
        line = lines[index]
        if operation == "delete" and len(lines) > 1:
            del lines[index]
        elif operation == "duplicate":
            lines.insert(index, line)
        elif operation == "swap":
            other = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            first, second = VALUE_LINE.match(line), VALUE_LINE.match(lines[other])
            if first and second:
                lines[index] = f"{first.group(1)} {second.group(2)}"
                lines[other] = f"{second.group(1)} {first.group(2)}"
            else:
                lines[index], lines[other] = lines[other], lines[index]
        elif operation == "rate" and RATE_TOKEN.search(line):
            lines[index] = RATE_TOKEN.sub(lambda _: draw(RATES), line, count=1)
        elif operation == "value" and VALUE_LINE.match(line):
            match = VALUE_LINE.match(line)
            assert match is not None
            lines[index] = f"{match.group(1)} {draw(SCALARS)}"
        elif operation == "indent":
            lines[index] = " " * draw(st.integers(min_value=0, max_value=6)) + line.lstrip()
        elif operation == "insert":
            column = draw(st.integers(min_value=0, max_value=len(line)))
            lines[index] = line[:column] + draw(SCALARS) + line[column:]
    return "\n".join(lines) + "\n"


@FUZZ
@given(mutated_minimal())
def test_mutated_minimal_policy_loads_or_is_refused_with_located_issues(text: str) -> None:
    _check(lambda: load_policy_text(text, NAME), text)


@FUZZ
@given(mutated_minimal())
def test_mutated_policy_bytes_match_text_loading(text: str) -> None:
    """Loading from bytes and from text gives the same verdict and the same issues."""

    def outcome(load: object) -> object:
        try:
            return load().policy  # type: ignore[operator]
        except PolicyError as exc:
            return [str(issue) for issue in exc.issues]

    assert outcome(lambda: load_policy_bytes(text.encode(), NAME)) == outcome(lambda: load_policy_text(text, NAME))


def test_unmodified_minimal_policy_loads() -> None:
    loaded = _check(lambda: load_policy_text(MINIMAL, NAME), MINIMAL)
    assert loaded is not None and not loaded.warnings


GOOD_SCHEDULES = (REPO / "tests" / "data" / "good" / "midnight-and-week-wrap.yaml").read_text()
INSTANTS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)).map(
    lambda moment: moment.replace(tzinfo=UTC))


@FUZZ
@given(st.sampled_from(["Asia/Jayapura", "Asia/Jakarta", "Europe/Berlin", "America/New_York"]), INSTANTS,
       st.floats(min_value=0, max_value=1))
def test_the_window_in_force_holds_until_next_boundary(zone: str, when: datetime, fraction: float) -> None:
    policy = load_policy_text(GOOD_SCHEDULES.replace("Asia/Jayapura", zone), NAME).policy
    boundary = next_boundary(policy, when)
    assert boundary is not None and when < boundary <= when + timedelta(days=7, hours=2)
    between = when + (boundary - when) * fraction
    if between < boundary:
        assert active_window(policy, between) == active_window(policy, when)


# ---------------------------------------------------------------- prefix overlaps against a brute-force oracle

OWNER_TEMPLATE = """\
  - id: {id}
    code: OPD{id}
    name: Owner {id}
    prefixes: [{prefixes}]
    download: {{guaranteed: 1Mbps, ceiling: 10Mbps}}
    upload: {{guaranteed: 1Mbps, ceiling: 10Mbps}}
"""
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SMALL_PREFIX = st.one_of(
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(14, 26)).map(
        lambda t: ipaddress.ip_network(f"10.{t[0] % 4}.{t[1]}.0/{t[2]}", strict=False)),
    st.tuples(st.integers(0, 3), st.integers(40, 52)).map(
        lambda t: ipaddress.ip_network(f"2001:db8:{t[0]}::/{t[1]}", strict=False)),
)


@FUZZ
@given(st.lists(st.lists(SMALL_PREFIX, min_size=1, max_size=4), min_size=1, max_size=6))
def test_overlap_check_agrees_with_brute_force(owners: list[list[Network]]) -> None:
    body = "".join(OWNER_TEMPLATE.format(id=index + 1, prefixes=", ".join(f'"{net}"' for net in nets))
                   for index, nets in enumerate(owners))
    text = ("version: 1\nname: overlaps\nbackbone: {download: 1Gbps, upload: 1Gbps}\n"
            "classes:\n  - {id: 1, name: default, dscp: BE, priority: 1}\nopds:\n" + body)
    placed = _placed_prefixes(text)
    overlapping = {where for where, net in placed for other_where, other in placed
                   if where != other_where and net.version == other.version and net.overlaps(other)}
    by_path = {f"opds[{owner}].prefixes[{index}]": where
               for owner, wheres in enumerate(_placed_by_owner(placed, len(owners)))
               for index, where in enumerate(wheres)}
    reported: set[tuple[int, int]] = set()
    involved: set[tuple[int, int]] = set()
    try:
        load_policy_text(text, NAME)
    except PolicyError as exc:
        for issue in exc.issues:
            assert "overlaps" in issue.message or "repeats" in issue.message, issue
            partner = re.search(r"\((opds\[\d+\]\.prefixes\[\d+\])\)", issue.message)
            assert partner, issue
            reported.add((issue.line, issue.column))
            involved |= {(issue.line, issue.column), by_path[partner.group(1)]}
    assert reported <= overlapping
    assert involved == overlapping  # every prefix that overlaps another is named in some error


def _placed_by_owner(placed: list[tuple[tuple[int, int], Network]], owners: int) -> list[list[tuple[int, int]]]:
    lines = sorted({where[0] for where, _ in placed})
    assert len(lines) == owners
    return [[where for where, _ in placed if where[0] == line] for line in lines]


def _placed_prefixes(text: str) -> list[tuple[tuple[int, int], Network]]:
    """((line, column), network) of every quoted prefix in the text."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("prefixes:"):
            found += [((number, match.start() + 1), ipaddress.ip_network(match.group(1)))
                      for match in re.finditer(r'"([^"]+)"', line)]
    return found


# ---------------------------------------------------------------- schedule overlaps and windows against an oracle

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WINDOW = st.tuples(
    st.sets(st.integers(0, 6), min_size=1),
    st.one_of(st.just(0), st.integers(0, 95).map(lambda quarter: quarter * 15)),           # start 00:00 .. 23:45
    st.one_of(st.sampled_from([0, 1440]), st.integers(0, 96).map(lambda quarter: quarter * 15)),  # end .. 24:00
).filter(lambda window: window[1] != window[2])


def _covers(days: set[int], start: int, end: int, minute: int) -> bool:
    """Independent statement of the rule: a window whose end is before its start runs past midnight."""
    day, clock = divmod(minute, 1440)
    if start < end:
        return day in days and start <= clock < end
    return (day in days and clock >= start) or ((day - 1) % 7 in days and clock < end)


@FUZZ
@given(st.lists(WINDOW, min_size=1, max_size=4), st.integers(0, 7 * 1440 - 1))
def test_schedule_overlap_and_active_window_agree_with_an_independent_oracle(
        windows: list[tuple[set[int], int, int]], probe: int) -> None:
    schedules = "".join(
        f"  - name: w{index}\n    days: [{', '.join(DAY_NAMES[day] for day in sorted(days))}]\n"
        f"    start: \"{start // 60:02d}:{start % 60:02d}\"\n    end: \"{end // 60:02d}:{end % 60:02d}\"\n"
        f"    opds: {{}}\n"
        for index, (days, start, end) in enumerate(windows))
    text = edit_minimal_schedules(schedules)
    # every edge is on a quarter hour, so quarter hours are enough
    owners = [[index for index, window in enumerate(windows) if _covers(*window, quarter * 15)]
              for quarter in range(7 * 96)]
    clash = any(len(owner) > 1 for owner in owners)
    try:
        policy = load_policy_text(text, NAME).policy
    except PolicyError as exc:
        assert clash, exc
        assert all("overlaps" in issue.message for issue in exc.issues), exc
        return
    assert not clash
    # 8 January 2024 is a Monday; the policy's zone is Asia/Jakarta
    when = datetime(2024, 1, 8, tzinfo=ZoneInfo("Asia/Jakarta")) + timedelta(minutes=probe)
    expected = f"w{owners[probe // 15][0]}" if owners[probe // 15] else BASE_WINDOW
    assert active_window(policy, when) == expected


def edit_minimal_schedules(schedules: str) -> str:
    return MINIMAL[: MINIMAL.index("schedules:")] + "schedules:\n" + schedules
