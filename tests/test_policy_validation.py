"""Policy validation, one rule per test: every error is FILE:LINE:COL: message, located where
the YAML says, naming what is wrong and what is allowed. Hostile input is refused cleanly."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from satupintu.policy.errors import MAX_ISSUES, Issue, PolicyError
from satupintu.policy.load import LoadedPolicy, load_policy, load_policy_bytes, load_policy_text
from satupintu.policy.schedule import BASE_WINDOW, active_window, next_boundary, resolve_allocations
from satupintu.policy.source import MAX_DEPTH, MAX_FILE_BYTES
from satupintu.policy.units import MAX_RATE_BPS, format_rate, parse_rate

NAME = "prov.yaml"
WIB = ZoneInfo("Asia/Jakarta")

# Valid: downloads 30+30 (+2 Wi-Fi floor, +1 unclassified) of 100Mbps; uploads 15+15 (+1, +0.5) of 50Mbps.
BASE = """\
version: 1
name: Provinsi Uji
timezone: Asia/Jakarta
backbone:
  download: 100Mbps
  upload: 50Mbps
classes:
  - id: 1
    name: realtime
    dscp: EF
    priority: 0
    share_percent: 20
    match:
      - protocol: udp
        ports: ["3478-3481"]
  - id: 2
    name: default
    dscp: BE
    priority: 2
    share_percent: 40
opds:
  - id: 1
    code: DINKES
    name: Dinas Kesehatan
    prefixes: [10.1.1.0/24]
    download: {guaranteed: 30Mbps, ceiling: 80Mbps}
    upload: {guaranteed: 15Mbps, ceiling: 40Mbps}
  - id: 2
    code: DISDIK
    name: Dinas Pendidikan
    prefixes: [10.1.2.0/24, "2001:db8:2::/48"]
    download:
      guaranteed: 30Mbps
      ceiling: 80Mbps
    upload:
      guaranteed: 15Mbps
      ceiling: 40Mbps
public_wifi:
  - id: 900
    code: WIFI
    name: Wi-Fi publik
    prefixes: [10.200.0.0/16]
    floor: {download: 2Mbps, upload: 1Mbps}
schedules:
  - name: office-hours
    days: [mon, tue, wed, thu, fri]
    start: "07:00"
    end: "16:00"
    opds:
      DINKES: {download: {guaranteed: 40Mbps}}
  - name: night
    days: [sat]
    start: "22:00"
    end: "06:00"
    opds:
      DISDIK:
        download: {ceiling: 90Mbps}
"""


# ---------------------------------------------------------------- helpers


def edit(old: str, new: str, text: str = BASE, count: int = 1) -> str:
    """Replace `old` (which must be in `text`) by `new`."""
    assert old in text, f"test bug: {old!r} not in policy"
    return text.replace(old, new, count)


def at(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based (line, column) where the nth occurrence of `needle` starts."""
    offset = -1
    for _ in range(nth):
        offset = text.index(needle, offset + 1)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def refused(text: str | bytes) -> list[Issue]:
    """Issues of a policy that must be refused; checks the common invariants."""
    with pytest.raises(PolicyError) as caught:
        if isinstance(text, bytes):
            load_policy_bytes(text, NAME)
        else:
            load_policy_text(text, NAME)
    issues = caught.value.issues
    assert caught.value.errors, "refused without any error"
    for issue in issues:
        assert issue.file == NAME and issue.line >= 1 and issue.column >= 1
        assert str(issue).startswith(f"{NAME}:{issue.line}:{issue.column}: ")
    return issues


def only_error(text: str | bytes) -> Issue:
    errors = [issue for issue in refused(text) if issue.severity == "error"]
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


def error_at(text: str, needle: str, *words: str, nth: int = 1, column: bool = True) -> Issue:
    """The error located at `needle` must exist and contain every word."""
    line, col = at(text, needle, nth)
    errors = [issue for issue in refused(text) if issue.severity == "error"]
    here = [issue for issue in errors if issue.line == line and (not column or issue.column == col)]
    assert here, f"no error at {line}:{col}; got:\n" + "\n".join(map(str, errors))
    matching = [issue for issue in here if all(word in issue.message for word in words)]
    assert matching, f"error at {line}:{col} lacks {words}:\n" + "\n".join(map(str, here))
    return matching[0]


def loaded(text: str) -> LoadedPolicy:
    return load_policy_text(text, NAME)


# ---------------------------------------------------------------- the base policy and the error format


def test_base_policy_is_valid_without_warnings() -> None:
    result = loaded(BASE)
    assert [opd.code for opd in result.policy.opds] == ["DINKES", "DISDIK"]
    assert result.policy.opds[0].download.guaranteed == 30_000_000
    assert result.warnings == ()
    assert result.sha256 == hashlib.sha256(BASE.encode()).hexdigest()
    assert result.file == NAME


def test_issue_prints_as_file_line_column_message() -> None:
    assert str(Issue("a.yaml", 3, 7, "bad")) == "a.yaml:3:7: bad"
    assert str(Issue("a.yaml", 3, 7, "meh", "warning")) == "a.yaml:3:7: warning: meh"
    error = PolicyError([Issue("a.yaml", 9, 1, "late"), Issue("a.yaml", 2, 5, "early")])
    assert str(error) == "a.yaml:2:5: early\na.yaml:9:1: late"


def test_load_policy_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "kab.yaml"
    text = edit("ceiling: 40Mbps}", "ceiling: 10Mbps}")
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.column) == (str(path), *at(text, "guaranteed: 15Mbps, ceiling: 10"))
    assert str(issue).startswith(f"{path}:{issue.line}:{issue.column}: ")
    good = tmp_path / "ok.yaml"
    good.write_text(BASE)
    assert load_policy(good).file == str(good)


# ---------------------------------------------------------------- all errors at once


def test_several_independent_errors_are_all_reported_in_one_policy_error() -> None:
    text = edit("name: Provinsi Uji", "nama: Provinsi Uji")                       # unknown top-level key
    text = edit("dscp: EF", "dscp: EFF", text)                                     # bad DSCP name
    text = edit("    code: DISDIK", "    code: disdik", text)                      # bad code pattern
    text = edit("upload: {guaranteed: 15Mbps, ceiling: 40Mbps}",
                "upload: {guaranteed: 15MB/s, ceiling: 40Mbps}", text)             # rate in bytes
    text = edit('start: "22:00"', 'start: "25:00"', text)                          # bad clock
    issues = refused(text)
    expected = sorted([
        (at(text, "nama")[0], "did you mean 'name'"),
        (at(text, "dscp: EFF")[0], "unknown DSCP 'EFF'"),
        (at(text, "code: disdik")[0], "expected an ASCII code"),
        (at(text, "15MB/s")[0], "in bytes"),
        (at(text, '"25:00"')[0], "not a time of day"),
    ])
    assert len(issues) == len(expected), "\n".join(map(str, issues))
    for (line, words), issue in zip(expected, issues, strict=True):
        assert issue.line == line and words in issue.message, str(issue)


def test_cross_check_errors_are_reported_together_with_schema_errors() -> None:
    text = edit("version: 1", "version: 2")                                             # schema: version
    text = edit("    code: DISDIK", "    code: disdik", text)                            # schema: opds[1]
    text = edit("prefixes: [10.200.0.0/16]", "prefixes: [10.1.0.0/16]", text)            # overlaps DINKES
    text = edit("download: {guaranteed: 30Mbps, ceiling: 80Mbps}",
                "download: {guaranteed: 30Mbps, ceiling: 180Mbps}", text)               # above capacity
    issues = refused(text)
    assert [issue.line for issue in issues] == sorted(issue.line for issue in issues)
    messages = {issue.line: issue.message for issue in issues}
    assert "expected an ASCII code" in messages[at(text, "code: disdik")[0]]
    assert "overlaps 10.1.1.0/24 of DINKES (opds[0].prefixes[0])" in messages[at(text, "10.1.0.0/16")[0]]
    assert "ceiling 180Mbps is above the backbone download capacity" in messages[at(text, "180Mbps")[0]]
    assert "version: Input should be 1 (got 2)" in messages[1]
    assert len(issues) == 4, "\n".join(map(str, issues))


def test_partial_cross_check_keeps_original_indices_and_does_not_blame_left_out_items() -> None:
    text = edit("  - id: 1\n    code: DINKES", "  - id: one\n    code: DINKES")  # opds[0] left out
    text = edit("prefixes: [10.200.0.0/16]", "prefixes: [10.1.2.128/25]", text)  # overlaps opds[1]
    issues = refused(text)
    assert len(issues) == 2, "\n".join(map(str, issues))
    assert "opds[0].id: expected a whole number (got 'one')" in issues[0].message
    assert issues[1].line == at(text, "10.1.2.128/25")[0]
    assert "of DISDIK (opds[1].prefixes[0])" in issues[1].message  # not opds[0]: indices are the file's
    # the schedule still names DINKES, which was left out: no "no OPD has code" error for it


def test_partial_cross_check_locates_errors_of_items_after_a_left_out_one() -> None:
    text = edit("  - id: 1\n    code: DINKES", "  - id: one\n    code: DINKES")  # opds[0] left out
    text = edit("      ceiling: 80Mbps", "      ceiling: 20Mbps", text)  # opds[1] download
    issues = refused(text)
    assert len(issues) == 2, "\n".join(map(str, issues))
    assert (issues[1].line, issues[1].column) == at(text, "guaranteed: 30Mbps\n      ceiling: 20Mbps")
    assert "DISDIK download: guaranteed 30Mbps is above its ceiling 20Mbps" in issues[1].message


# ---------------------------------------------------------------- unknown and missing keys


def test_unknown_key_suggests_guaranteed_for_gauranteed() -> None:
    text = edit("      guaranteed: 30Mbps\n      ceiling: 80Mbps", "      gauranteed: 30Mbps\n      ceiling: 80Mbps")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "gauranteed")
    assert "unknown key 'gauranteed'; did you mean 'guaranteed'?" in issue.message
    assert "allowed here: ceiling, guaranteed" in issue.message
    assert "missing required key" not in issue.message  # the typo explains the missing key


def test_unknown_key_suggests_prefixes_for_prefixs() -> None:
    text = edit("    prefixes: [10.1.1.0/24]", "    prefixs: [10.1.1.0/24]")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "prefixs")
    assert issue.message.startswith("opds[0]: unknown key 'prefixs'; did you mean 'prefixes'?")
    assert "allowed here: code, download, hard_cap, id, name, prefixes, upload" in issue.message


def test_unknown_key_inside_flow_mapping_of_a_schedule_override() -> None:
    text = edit("DINKES: {download: {guaranteed: 40Mbps}}", "DINKES: {downlod: {guaranteed: 40Mbps}}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "downlod")
    assert "did you mean 'download'?" in issue.message and "allowed here: download, upload" in issue.message


def test_unknown_key_in_the_wrong_case_suggests_the_lowercase_key() -> None:
    text = edit("    upload:\n      guaranteed: 15Mbps", "    UPLOAD:\n      guaranteed: 15Mbps")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "UPLOAD")
    assert "unknown key 'UPLOAD'; did you mean 'upload'?" in issue.message


def test_unknown_key_without_close_match_lists_allowed_keys_only() -> None:
    text = edit("timezone: Asia/Jakarta", "timezone: Asia/Jakarta\nflavour: vanilla")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "flavour")
    assert "unknown key 'flavour' (allowed here: allow_oversubscription, backbone," in issue.message
    assert "did you mean" not in issue.message


def test_missing_required_key_is_located_at_its_mapping() -> None:
    text = edit("    name: Dinas Pendidikan\n", "")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "id: 2", 2)  # the start of opds[1]
    assert issue.message == "opds[1]: missing required key 'name'"


def test_missing_required_key_in_nested_mapping() -> None:
    text = edit("  upload: 50Mbps\n", "")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "backbone:")
    assert issue.message == "backbone: missing required key 'upload'"


def test_wrong_type_for_a_mapping_says_which_keys_are_expected() -> None:
    text = edit("    download: {guaranteed: 30Mbps, ceiling: 80Mbps}", "    download: 30Mbps")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "download: 30Mbps")
    assert "expected a mapping with keys ceiling, guaranteed (got '30Mbps')" in issue.message


def test_wrong_type_for_a_list() -> None:
    text = edit('ports: ["3478-3481"]', "ports: 3478")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "ports: 3478")
    assert "valid list" in issue.message and "(got 3478)" in issue.message


def test_unsupported_version() -> None:
    text = edit("version: 1", "version: 2")
    issue = only_error(text)
    assert (issue.line, issue.column) == (1, 1)
    assert "version" in issue.message and "should be 1" in issue.message and "(got 2)" in issue.message


def test_literal_choice_suggests_the_close_one() -> None:
    text = edit("protocol: udp", "protocol: udpp")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "protocol: udpp")
    assert "'tcp', 'udp', 'icmp' or 'any'" in issue.message and "did you mean 'udp'?" in issue.message


def test_boolean_setting_accepts_only_true_or_false() -> None:
    text = edit("timezone: Asia/Jakarta", "timezone: Asia/Jakarta\nallow_oversubscription: maybe")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "allow_oversubscription")
    assert "expected true or false (got 'maybe')" in issue.message


def test_yes_no_where_text_is_expected_says_to_quote_it() -> None:
    text = edit("    code: DISDIK", "    code: NO")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "code: NO")
    assert "got the boolean false" in issue.message and "quote it" in issue.message


def test_number_where_text_is_expected_says_to_quote_it() -> None:
    text = edit("name: Dinas Kesehatan", "name: 2024")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "name: 2024")
    assert "quote it" in issue.message


# ---------------------------------------------------------------- identities: ids and codes


def test_negative_id() -> None:
    text = edit("  - id: 2\n", "  - id: -2\n")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "id: -2")
    assert "greater than or equal to 1" in issue.message and "(got -2)" in issue.message


def test_id_above_the_htb_limit() -> None:
    text = edit("  - id: 900", "  - id: 9000")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "id: 9000")
    assert "less than or equal to 8000" in issue.message


def test_id_that_is_not_a_number() -> None:
    issue = only_error(edit("  - id: 2\n", "  - id: two\n"))
    assert "expected a whole number (got 'two')" in issue.message


def test_duplicate_opd_id() -> None:
    text = edit("  - id: 2\n    code: DISDIK", "  - id: 1\n    code: DISDIK")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "id: 1", 3)  # classes[0], opds[0], opds[1]
    assert "id 1 is already used by opds[0] (DINKES); ids must be unique" in issue.message


def test_duplicate_id_between_opd_and_wifi_pool() -> None:
    text = edit("  - id: 900", "  - id: 2")
    error_at(text, "id: 2", "id 2 is already used by opds[1] (DISDIK)", "across opds and public_wifi", nth=3)


def test_duplicate_code() -> None:
    text = edit("code: DISDIK", "code: DINKES")
    error_at(text, "code: DINKES", "code 'DINKES' is already used by opds[0] (DINKES)", nth=2)


def test_lowercase_code_explains_the_pattern() -> None:
    text = edit("code: DISDIK", "code: disdik")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "code: disdik")
    assert "uppercase letter" in issue.message and "(got 'disdik')" in issue.message


def test_cyrillic_letter_in_code_is_named() -> None:
    text = edit("code: DISDIK", "code: DISD\u0406K")  # a Cyrillic I that looks Latin
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "code: DISD")
    assert "U+0406 CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I" in issue.message
    assert "not ASCII" in issue.message and "character 5" in issue.message


def test_code_too_long() -> None:
    issue = only_error(edit("code: DISDIK", "code: " + "D" * 25))
    assert "at most 24" in issue.message


# ---------------------------------------------------------------- prefixes


def test_prefix_with_host_bits_suggests_the_network() -> None:
    text = edit("[10.1.1.0/24]", "[10.1.1.7/24]")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "10.1.1.7/24")
    assert "host bits set: did you mean 10.1.1.0/24?" in issue.message


def test_prefix_that_is_not_an_address() -> None:
    text = edit("[10.1.1.0/24]", "[10.1.1.0/33]")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "10.1.1.0/33")
    assert "not an IPv4/IPv6 prefix like 10.1.7.0/24" in issue.message


def test_opd_needs_at_least_one_prefix() -> None:
    text = edit("[10.1.1.0/24]", "[]")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "prefixes: []")
    assert "at least 1 item" in issue.message


def test_overlapping_prefixes_between_opds() -> None:
    text = edit("prefixes: [10.1.2.0/24,", "prefixes: [10.1.0.0/16,")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "10.1.0.0/16")
    assert "prefix 10.1.0.0/16 overlaps 10.1.1.0/24 of DINKES (opds[0].prefixes[0])" in issue.message
    assert "exactly one OPD or pool" in issue.message


def test_repeated_prefix_between_opds() -> None:
    text = edit("prefixes: [10.1.2.0/24,", "prefixes: [10.1.1.0/24,")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "10.1.1.0/24", 2)
    assert "repeats 10.1.1.0/24 of DINKES" in issue.message


def test_overlapping_prefixes_between_opd_and_wifi_pool() -> None:
    text = edit("[10.200.0.0/16]", "[10.1.1.128/25]")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "10.1.1.128/25")
    assert "overlaps 10.1.1.0/24 of DINKES" in issue.message


def test_overlapping_ipv6_prefixes() -> None:
    text = edit("[10.1.1.0/24]", '[10.1.1.0/24, "2001:db8::/32"]')
    issue = only_error(text)
    assert issue.line == at(text, '"2001:db8:2::/48"')[0]
    assert "2001:db8:2::/48 overlaps 2001:db8::/32 of DINKES" in issue.message


def test_same_prefix_twice_in_one_opd() -> None:
    issue = only_error(edit("[10.1.1.0/24]", "[10.1.1.0/24, 10.1.1.0/24]"))
    assert "repeats 10.1.1.0/24 of the same owner" in issue.message


def test_adjacent_prefixes_do_not_overlap() -> None:
    loaded(edit("[10.1.1.0/24]", "[10.1.0.0/24, 10.1.1.0/24, 10.1.3.0/24]"))


# ---------------------------------------------------------------- rates and allocations


def test_rate_in_bytes_is_refused_with_the_bit_rate() -> None:
    text = edit("ceiling: 40Mbps}", "ceiling: 5MB/s}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "ceiling: 5MB/s")
    assert "'5MB/s' is in bytes per second" in issue.message and "= 40Mbps" in issue.message


def test_rate_without_unit_is_refused() -> None:
    text = edit("download: 100Mbps", "download: 100")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "download: 100")
    assert "has no unit" in issue.message and "300Mbps" in issue.message


def test_huge_rate_is_refused_without_a_traceback() -> None:
    text = edit("download: 100Mbps", "download: " + "9" * 400 + "Gbps")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "download: 999")
    assert "above 10Tbps" in issue.message and len(issue.message) < 200


def test_guaranteed_above_ceiling() -> None:
    text = edit("      guaranteed: 30Mbps\n      ceiling: 80Mbps", "      guaranteed: 30Mbps\n      ceiling: 20Mbps")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "guaranteed: 30Mbps\n      ceiling: 20")
    assert "DISDIK download: guaranteed 30Mbps is above its ceiling 20Mbps" in issue.message


def test_ceiling_above_capacity() -> None:
    text = edit("upload: {guaranteed: 15Mbps, ceiling: 40Mbps}", "upload: {guaranteed: 15Mbps, ceiling: 60Mbps}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "ceiling: 60Mbps")
    assert "DINKES upload: ceiling 60Mbps is above the backbone upload capacity 50Mbps" in issue.message


def test_hard_cap_below_guarantee() -> None:
    text = edit("    upload: {guaranteed: 15Mbps, ceiling: 40Mbps}\n  - id: 2",
                "    upload: {guaranteed: 15Mbps, ceiling: 40Mbps}\n    hard_cap: {upload: 10Mbps}\n  - id: 2")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "upload: 10Mbps")
    assert "hard cap 10Mbps is below its guarantee 15Mbps" in issue.message


def test_sum_of_guarantees_above_capacity_is_an_error_per_direction() -> None:
    text = edit("upload: {guaranteed: 15Mbps, ceiling: 40Mbps}", "upload: {guaranteed: 35Mbps, ceiling: 40Mbps}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "upload: 50Mbps")
    assert "upload: guarantees add up to 51.5Mbps" in issue.message
    assert "above the capacity 50Mbps" in issue.message and "allow_oversubscription: true" in issue.message


def test_oversubscription_allowed_is_a_warning_and_loads() -> None:
    text = edit("upload: {guaranteed: 15Mbps, ceiling: 40Mbps}", "upload: {guaranteed: 35Mbps, ceiling: 40Mbps}")
    text = edit("timezone: Asia/Jakarta\n", "timezone: Asia/Jakarta\nallow_oversubscription: true\n", text)
    result = loaded(text)
    (warning,) = result.warnings
    assert warning.severity == "warning" and (warning.line, warning.column) == at(text, "upload: 50Mbps")
    assert "add up to 51.5Mbps" in warning.message and "allowed by allow_oversubscription" in warning.message
    assert str(warning).startswith(f"{NAME}:{warning.line}:{warning.column}: warning: ")


def test_sum_of_guarantees_during_a_schedule_is_blamed_on_the_schedule() -> None:
    text = edit("DINKES: {download: {guaranteed: 40Mbps}}", "DINKES: {download: {guaranteed: 75Mbps}}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "opds:\n      DINKES")
    assert "during schedule 'office-hours' add up to 108Mbps" in issue.message


def test_unclassified_guarantee_counts_in_the_sum() -> None:
    text = edit("timezone: Asia/Jakarta\n", "timezone: Asia/Jakarta\nunclassified: {download: 1Mbps, upload: 20Mbps}\n")
    issue = only_error(text)
    assert "upload: guarantees add up to 51Mbps" in issue.message


def test_wifi_floor_above_its_ceiling() -> None:
    text = edit("floor: {download: 2Mbps, upload: 1Mbps}",
                "floor: {download: 2Mbps, upload: 1Mbps}\n    ceiling: {download: 1Mbps, upload: 10Mbps}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "download: 2Mbps")
    assert "WIFI download: floor 2Mbps is above its ceiling 1Mbps" in issue.message


def test_wifi_ceiling_above_capacity() -> None:
    text = edit("floor: {download: 2Mbps, upload: 1Mbps}",
                "floor: {download: 2Mbps, upload: 1Mbps}\n    ceiling: {download: 10Mbps, upload: 70Mbps}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "upload: 70Mbps")
    assert "WIFI upload: ceiling 70Mbps is above the backbone capacity 50Mbps" in issue.message


def test_big_wifi_floor_is_a_warning_and_loads() -> None:
    text = edit("floor: {download: 2Mbps, upload: 1Mbps}", "floor: {download: 20Mbps, upload: 1Mbps}")
    result = loaded(text)
    (warning,) = result.warnings
    assert (warning.line, warning.column) == at(text, "download: 20Mbps")
    assert "WIFI download: floor 20Mbps is more than 10% of capacity" in warning.message


# ---------------------------------------------------------------- classes and DSCP


def test_unknown_dscp_name_lists_the_names() -> None:
    text = edit("dscp: EF", "dscp: EFF")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "dscp: EFF")
    assert "unknown DSCP 'EFF'" in issue.message and "AF41" in issue.message and "0-63" in issue.message


def test_dscp_out_of_range() -> None:
    text = edit("dscp: EF", "dscp: 64")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "dscp: 64")
    assert "DSCP 64 is outside 0-63" in issue.message


def test_negative_dscp() -> None:
    assert "outside 0-63" in only_error(edit("dscp: EF", "dscp: -1")).message


@pytest.mark.parametrize(("written", "value"), [("EF", 46), ("ef", 46), ("AF41", 34), ("CS1", 8), ("46", 46),
                                                 ("12", 12), ("63", 63), ("LE", 1)])
def test_valid_dscp_names_and_numbers(written: str, value: int) -> None:
    assert loaded(edit("dscp: EF", f"dscp: {written}")).policy.classes[0].dscp == value


def test_duplicate_class_dscp() -> None:
    text = edit("dscp: BE", "dscp: EF")
    error_at(text, "dscp: EF", "class dscp 46 is already used by classes[0] (realtime)", nth=2)


def test_duplicate_class_id() -> None:
    text = edit("  - id: 2\n    name: default", "  - id: 1\n    name: default")
    error_at(text, "id: 1", "class id 1 is already used by classes[0]", nth=2)


def test_default_class_must_exist() -> None:
    text = edit("timezone: Asia/Jakarta\n", "timezone: Asia/Jakarta\ndefault_class: bulk\n")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "default_class")
    assert "default_class 'bulk' is not a class (classes: realtime, default)" in issue.message


def test_class_shares_above_100_percent() -> None:
    text = edit("share_percent: 40", "share_percent: 90")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "classes:")
    assert "adds up to 110%" in issue.message


def test_ports_on_icmp_are_refused() -> None:
    text = edit("protocol: udp", "protocol: icmp")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "ports:")
    assert "ports only apply to tcp and udp" in issue.message


def test_port_out_of_range() -> None:
    text = edit('"3478-3481"', '"3478-70000"')
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, '"3478-70000"')
    assert "1 <= low <= high <= 65535" in issue.message


# ---------------------------------------------------------------- time zones and schedules


def test_unknown_time_zone_suggests_indonesian_zones() -> None:
    text = edit("timezone: Asia/Jakarta", "timezone: WIB")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "timezone")
    assert "unknown time zone 'WIB'" in issue.message and "Asia/Jakarta" in issue.message


@pytest.mark.parametrize("zone", ["../../etc/passwd", "Asia", "/etc/localtime", "x" * 300, "Asia/Jakarta/"])
def test_hostile_time_zone_names_are_refused(zone: str) -> None:
    assert "unknown time zone" in only_error(edit("timezone: Asia/Jakarta", f"timezone: '{zone}'")).message


def test_clock_must_be_hh_mm() -> None:
    text = edit('start: "07:00"', 'start: "7am"')
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "start")
    assert "expected a time 'HH:MM'" in issue.message


def test_clock_out_of_range() -> None:
    assert "not a time of day (00:00-24:00)" in only_error(edit('end: "16:00"', 'end: "16:60"')).message


def test_start_cannot_be_24_00() -> None:
    text = edit('start: "07:00"', 'start: "24:00"')
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "start")
    assert "start '24:00' is not a time of day" in issue.message


def test_unknown_day_suggests_the_close_one() -> None:
    text = edit("days: [sat]", "days: [satu]")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "satu")
    assert "did you mean 'sat'?" in issue.message


def test_day_listed_twice() -> None:
    text = edit("days: [sat]", "days: [sat, sat]")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "days: [sat, sat]")
    assert "a day is listed twice" in issue.message


def test_empty_window() -> None:
    text = edit('end: "16:00"', 'end: "07:00"')
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, 'end: "07:00"')
    assert "start and end are both 07:00" in issue.message and 'end: "24:00"' in issue.message


def test_schedules_overlapping_on_the_same_day() -> None:
    text = edit("days: [sat]", "days: [fri]")
    text = edit('start: "22:00"', 'start: "15:00"', text)
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "days: [fri]")
    assert "schedule 'night' overlaps 'office-hours' on fri from 15:00" in issue.message


def test_schedules_overlapping_after_midnight() -> None:
    text = BASE + '  - name: sunday-morning\n    days: [sun]\n    start: "05:00"\n    end: "08:00"\n    opds: {}\n'
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "days: [sun]")
    assert "'sunday-morning' overlaps 'night' on sun from 05:00" in issue.message


def test_window_crossing_the_end_of_the_week_overlaps_monday_morning() -> None:
    text = edit("days: [sat]", "days: [sun]")
    text = edit('end: "06:00"', 'end: "07:30"', text)
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "days: [sun]")
    assert "'night' overlaps 'office-hours' on mon from 07:00" in issue.message


def test_back_to_back_windows_do_not_overlap() -> None:
    text = edit("days: [sat]", "days: [mon]")
    text = edit('start: "22:00"', 'start: "16:00"', text)
    text = edit('end: "06:00"', 'end: "07:00"', text)
    assert len(loaded(text).policy.schedules) == 2


def test_schedule_names_an_unknown_opd_with_a_suggestion() -> None:
    text = edit("DINKES: {download", "DINKEZ: {download")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "DINKEZ")
    assert "no OPD has code 'DINKEZ'; did you mean 'DINKES'?" in issue.message


def test_schedule_code_with_a_confusable_letter() -> None:
    text = edit("DINKES: {download", "DINK\u0415S: {download")
    issue = only_error(text)
    assert "did you mean 'DINKES'?" in issue.message and "U+0415" in issue.message


def test_duplicate_schedule_name() -> None:
    text = edit("- name: night", "- name: office-hours")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "name: office-hours", 2)
    assert "schedule name 'office-hours' is already used by schedules[0]" in issue.message


def test_schedule_override_guaranteed_above_ceiling() -> None:
    text = edit("DINKES: {download: {guaranteed: 40Mbps}}", "DINKES: {download: {ceiling: 20Mbps}}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "download: {ceiling: 20Mbps}")
    assert "schedule 'office-hours': DINKES download guaranteed 30Mbps is above its ceiling 20Mbps" in issue.message


def test_schedule_override_ceiling_above_capacity() -> None:
    issue = only_error(edit("download: {ceiling: 90Mbps}", "download: {ceiling: 190Mbps}"))
    assert "schedule 'night': DISDIK download ceiling 190Mbps is above the backbone capacity 100Mbps" in issue.message


# ---------------------------------------------------------------- schedule resolution


def _wib(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A time in January 2024 in Jakarta (1 January 2024 is a Monday), given in UTC."""
    return datetime(2024, 1, day, hour, minute, second, tzinfo=WIB).astimezone(UTC)


@pytest.mark.parametrize(
    ("when", "window"),
    [
        (_wib(1, 6, 59), BASE_WINDOW),            # Monday just before office hours
        (_wib(1, 7, 0), "office-hours"),          # start is inclusive
        (_wib(5, 15, 59, 59), "office-hours"),    # Friday
        (_wib(1, 16, 0), BASE_WINDOW),            # end is exclusive
        (_wib(6, 12, 0), BASE_WINDOW),            # Saturday noon
        (_wib(6, 22, 0), "night"),                # Saturday 22:00
        (_wib(7, 0, 0), "night"),                 # past midnight, now Sunday
        (_wib(7, 5, 59), "night"),
        (_wib(7, 6, 0), BASE_WINDOW),
        (_wib(5, 23, 0), BASE_WINDOW),            # Friday night: the window is Saturday's
    ],
)
def test_active_window_in_jakarta_time(when: datetime, window: str) -> None:
    assert active_window(loaded(BASE).policy, when) == window


def test_active_window_uses_the_policy_time_zone() -> None:
    jayapura = loaded(edit("timezone: Asia/Jakarta", "timezone: Asia/Jayapura")).policy  # WIT = UTC+9
    when = _wib(1, 6, 0)  # 06:00 in Jakarta is 08:00 in Jayapura
    assert active_window(loaded(BASE).policy, when) == BASE_WINDOW
    assert active_window(jayapura, when) == "office-hours"


def test_active_window_for_a_window_wrapping_the_week() -> None:
    policy = loaded(edit("days: [sat]", "days: [sun]")).policy  # Sunday 22:00 -> Monday 06:00
    assert active_window(policy, _wib(7, 23, 0)) == "night"
    assert active_window(policy, _wib(8, 5, 0)) == "night"  # Monday 8 January
    assert active_window(policy, _wib(8, 6, 0)) == BASE_WINDOW


@pytest.mark.parametrize(
    ("when", "boundary"),
    [
        (_wib(1, 6, 59, 30), _wib(1, 7, 0)),
        (_wib(1, 7, 0), _wib(1, 16, 0)),          # at a boundary: the next one
        (_wib(1, 8, 0, 30), _wib(1, 16, 0)),
        (_wib(5, 17, 0), _wib(6, 22, 0)),         # Friday evening -> Saturday night
        (_wib(6, 23, 0), _wib(7, 6, 0)),          # across midnight
        (_wib(7, 6, 0), _wib(8, 7, 0)),           # Sunday -> Monday office hours
    ],
)
def test_next_boundary(when: datetime, boundary: datetime) -> None:
    found = next_boundary(loaded(BASE).policy, when)
    assert found == boundary and found is not None and found.tzinfo == when.tzinfo


def test_next_boundary_is_in_the_callers_zone_and_none_without_schedules() -> None:
    policy = loaded(BASE).policy
    local = datetime(2024, 1, 1, 8, 0, tzinfo=WIB)
    assert next_boundary(policy, local) == datetime(2024, 1, 1, 16, 0, tzinfo=WIB)
    assert next_boundary(policy, local).tzinfo is WIB  # type: ignore[union-attr]
    plain = loaded(BASE[: BASE.index("schedules:")]).policy
    assert next_boundary(plain, local) is None
    assert active_window(plain, local) == BASE_WINDOW


def test_resolve_allocations_applies_only_the_overridden_values() -> None:
    policy = loaded(BASE).policy
    mbps = 1_000_000
    base = resolve_allocations(policy, None)
    assert base == resolve_allocations(policy, BASE_WINDOW)
    assert base[1] == {"download": (30 * mbps, 80 * mbps), "upload": (15 * mbps, 40 * mbps)}
    office = resolve_allocations(policy, "office-hours")
    assert office[1] == {"download": (40 * mbps, 80 * mbps), "upload": (15 * mbps, 40 * mbps)}
    assert office[2] == base[2]
    night = resolve_allocations(policy, "night")
    assert night[2]["download"] == (30 * mbps, 90 * mbps) and night[1] == base[1]
    with pytest.raises(KeyError):
        resolve_allocations(policy, "weekend")


# ---------------------------------------------------------------- rate parsing (units.py)


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("300Mbps", 300_000_000),
        ("1.5Gbit/s", 1_500_000_000),
        ("512kbps", 512_000),
        ("512Kbps", 512_000),
        ("300 Mbps", 300_000_000),
        (" 10Gbps ", 10_000_000_000),
        ("300mbps", 300_000_000),
        ("2.5Gbits/s", 2_500_000_000),
        ("100Mbit", 100_000_000),
        ("64kb/s", 64_000),
        ("300M", 300_000_000),
        ("1bps", 1),
        ("0.001Mbps", 1_000),
        ("10Tbps", MAX_RATE_BPS),
        ("0.1234567Gbps", 123_456_700),
    ],
)
def test_parse_rate_accepts(text: str, bps: int) -> None:
    assert parse_rate(text) == bps
    assert isinstance(parse_rate(text), int)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("300MB/s", "in bytes per second"),
        ("300MB", "(300MB = 2.4Gbps)"),
        ("1.5 GB/s", "in bytes"),
        ("100Bps", "in bytes"),
        ("8MiB/s", "in bytes"),
        (300, "has no unit"),
        (1.5, "has no unit"),
        ("300", "has no unit"),
        ("-5Mbps", "negative"),
        ("0Mbps", "at least 1bps"),
        ("0.0001kbps", "at least 1bps"),
        ("11Tbps", "above 10Tbps"),
        ("9" * 400 + "Mbps", "above 10Tbps"),
        ("1e9bps", "is not a rate"),
        ("1,5Gbps", "is not a rate"),
        ("300 Mb", "is not a rate"),
        ("\uff13\uff10\uff10Mbps", "is not a rate"),  # full-width digits
        ("fast", "is not a rate"),
        ("", "is not a rate"),
        (None, "got None"),
        (True, "got True"),
        ([300], "got a list"),
    ],
)
def test_parse_rate_refuses(value: object, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate(value)
    assert words in str(caught.value)
    assert len(str(caught.value)) < 250


@pytest.mark.parametrize(("bps", "text"), [(300_000_000, "300Mbps"), (1_500_000_000, "1.5Gbps"),
                                           (512_000, "512kbps"), (999, "999bps"), (10**13, "10Tbps")])
def test_format_rate_round_trips(bps: int, text: str) -> None:
    assert format_rate(bps) == text
    assert parse_rate(text) == bps


# ---------------------------------------------------------------- hostile input


def test_empty_file() -> None:
    issue = only_error("")
    assert (issue.line, issue.column) == (1, 1) and "file is empty" in issue.message


def test_whitespace_only_file() -> None:
    assert "file is empty" in only_error("  \n\n   \n").message


def test_comments_only_file() -> None:
    assert "file is empty" in only_error("# policy\n   # to do\n").message


def test_document_marker_only() -> None:
    assert "document is empty" in only_error("---\n...\n").message


def test_not_yaml() -> None:
    issue = only_error("version: 1\nopds: [unclosed\nname: x\n")
    assert issue.line == 3 and "not valid YAML" in issue.message


def test_top_level_list() -> None:
    issue = only_error("- version: 1\n- name: x\n")
    assert (issue.line, issue.column) == (1, 1) and "top level is a list; a policy is a mapping" in issue.message


def test_top_level_scalar() -> None:
    assert "top level is a single value (str)" in only_error("just some words\n").message


def test_binary_bytes_with_nul() -> None:
    issue = only_error(b"version: 1\nname: ab\x00cd\n")
    assert (issue.line, issue.column) == (2, 9) and "binary data (NUL byte)" in issue.message


def test_nul_in_text_is_refused_the_same_way() -> None:
    issue = only_error("version: 1\nname: ab\x00cd\n")
    assert (issue.line, issue.column) == (2, 9) and "binary data (NUL byte)" in issue.message


def test_non_utf8_bytes() -> None:
    issue = only_error(b"version: 1\nname: Dinas Ke\xe9sehatan\n")  # Latin-1 é
    assert (issue.line, issue.column) == (2, 15)
    assert "not UTF-8 text (byte 0xe9)" in issue.message and "save the file as UTF-8" in issue.message


def test_non_utf8_column_counts_characters() -> None:
    issue = only_error("name: Dinas Pendidikan é ".encode() + b"\xff\n")
    assert (issue.line, issue.column) == (1, 26)


def test_utf16_file() -> None:
    assert "UTF-16" in only_error(BASE.encode("utf-16")).message


def test_utf8_byte_order_mark_is_accepted() -> None:
    assert load_policy_bytes(b"\xef\xbb\xbf" + BASE.encode(), NAME).policy.name == "Provinsi Uji"


def test_lone_surrogate_in_text() -> None:
    issue = only_error("version: 1\nname: a\udcffb\n")
    assert (issue.line, issue.column) == (2, 8) and "U+DCFF" in issue.message


def test_control_character() -> None:
    issue = only_error("version: 1\nname: a\x07b\n")
    assert issue.line == 2 and "control characters are not allowed" in issue.message


def test_alias_bomb_is_refused_quickly() -> None:
    names = "abcdefghij"
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for level in range(1, 10):
        refs = ",".join([f"*{names[level - 1]}"] * 9)
        text += f"{names[level]}: &{names[level]} [{refs}]\n"
    started = time.perf_counter()
    issue = only_error(text)
    assert time.perf_counter() - started < 2
    assert "alias bomb" in issue.message and issue.line == 7  # level 6 is the first past 2,000,000 values


def test_recursive_alias() -> None:
    issue = only_error("a: &x [1, *x]\n")
    assert (issue.line, issue.column) == (1, 11) and "recursive alias" in issue.message


def test_undefined_alias() -> None:
    assert "no anchor &nowhere" in only_error("a: *nowhere\n").message


def test_aliases_that_stay_small_are_fine() -> None:
    text = edit("    download: {guaranteed: 30Mbps, ceiling: 80Mbps}\n    upload",
                "    download: &same {guaranteed: 30Mbps, ceiling: 80Mbps}\n    upload")
    text = edit("    download:\n      guaranteed: 30Mbps\n      ceiling: 80Mbps\n", "    download: *same\n", text)
    assert loaded(text).policy.opds[1].download.ceiling == 80_000_000


@pytest.mark.parametrize("how", ["file", "bytes", "text"])
def test_file_over_the_size_limit(tmp_path: Path, how: str) -> None:
    big = BASE + "# " + "x" * (MAX_FILE_BYTES + 10) + "\n"
    with pytest.raises(PolicyError) as caught:
        if how == "file":
            path = tmp_path / "big.yaml"
            path.write_text(big)
            load_policy(path)
        elif how == "bytes":
            load_policy_bytes(big.encode(), NAME)
        else:
            load_policy_text(big, NAME)
    (issue,) = caught.value.issues
    assert (issue.line, issue.column) == (1, 1) and "larger than the 16 MiB limit" in issue.message


def test_unreadable_file(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(PolicyError) as caught:
            load_policy(path)
        (issue,) = caught.value.issues
        assert issue.file == str(path) and "cannot read file" in issue.message


def test_duplicate_key() -> None:
    text = edit("  upload: 50Mbps\n", "  upload: 50Mbps\n  download: 200Mbps\n")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "download: 200Mbps")
    assert f"duplicate key 'download' (first defined on line {at(text, 'download: 100Mbps')[0]})" in issue.message


def test_duplicate_key_in_flow_mapping() -> None:
    text = edit("{guaranteed: 30Mbps, ceiling: 80Mbps}", "{guaranteed: 30Mbps, guaranteed: 80Mbps}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "guaranteed: 80Mbps")
    assert "duplicate key 'guaranteed'" in issue.message


def test_deep_nesting_is_refused() -> None:
    text = "version: 1\nname: " + "[" * 100 + "]" * 100 + "\n"
    issue = only_error(text)
    assert issue.line == 2 and f"nesting deeper than {MAX_DEPTH} levels" in issue.message


def test_very_deep_nesting_does_not_crash_the_interpreter() -> None:
    # libyaml's composer recursed in C and crashed Python (SIGSEGV) on ~50,000 brackets.
    for opener, closer in (("[", "]"), ("{a: ", "}")):
        issue = only_error("a: " + opener * 200_000 + closer * 200_000 + "\n")
        assert "nesting deeper" in issue.message


def test_merge_key() -> None:
    text = edit("    download: {guaranteed: 30Mbps, ceiling: 80Mbps}\n    upload",
                "    download: &d {guaranteed: 30Mbps, ceiling: 80Mbps}\n    upload")
    text = edit("    download:\n      guaranteed: 30Mbps", "    download:\n      <<: *d\n      guaranteed: 30Mbps",
                text)
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "<<")
    assert "merge keys (<<) are not supported" in issue.message


def test_multiple_documents() -> None:
    text = BASE + "---\nversion: 1\n"
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "---") and "a second YAML document" in issue.message


def test_tab_indentation() -> None:
    text = edit("  upload: 50Mbps", "\tupload: 50Mbps")
    issue = only_error(text)
    assert issue.line == at(text, "\tupload")[0] and "tab" in issue.message and "spaces" in issue.message


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!int", "!!binary", "!custom", "!!set"])
def test_yaml_tags_are_refused(tag: str) -> None:
    text = edit("version: 1", f"version: {tag} '1'") if tag != "!!set" else edit("version: 1", "version: !!set {1}")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "!")
    assert "YAML tag" in issue.message and "not supported" in issue.message


def test_str_tag_is_allowed() -> None:
    assert loaded(edit("name: Provinsi Uji", "name: !!str 2024")).policy.name == "2024"


def test_complex_mapping_key() -> None:
    issue = only_error("version: 1\n? [a, b]\n: 1\n")
    assert (issue.line, issue.column) == (2, 3) and "keys must be plain names" in issue.message


def test_number_with_thousands_of_digits() -> None:
    text = edit("  - id: 2\n", "  - id: " + "9" * 5000 + "\n")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, "999") and "5000 digits" in issue.message


def test_yaml_1_1_surprises_are_plain_strings() -> None:
    # YAML 1.1 would read 07:00 as 420 (sexagesimal) and 0700 as octal; the loader uses 1.2 core rules.
    text = edit('start: "07:00"', "start: 07:00")
    assert loaded(text).policy.schedules[0].start == 7 * 60


# ---------------------------------------------------------------- bounded output and time on hostile scale


def test_thousands_of_unknown_keys_are_summarised() -> None:
    text = BASE + "".join(f"extra{index}: 1\n" for index in range(5000))
    issues = refused(text)
    assert len(issues) == MAX_ISSUES + 1
    assert "... and 4000 more problems like the ones above" in issues[-1].message
    assert issues[-1].line == at(text, "extra1000:")[0]


def test_thousands_of_near_miss_codes_in_a_schedule_do_not_hang() -> None:
    # difflib against 8,000 codes for each of 3,000 unknown codes took 90 s before suggestions were capped.
    opds = "".join(
        f"  - {{id: {index}, code: OPD{index}, name: n, prefixes: [10.{index // 256}.{index % 256}.0/24],"
        f" download: {{guaranteed: 1kbps, ceiling: 1Mbps}}, upload: {{guaranteed: 1kbps, ceiling: 1Mbps}}}}\n"
        for index in range(1, 8001))
    overrides = "".join(f"      OPD{index}X: {{download: {{guaranteed: 1Mbps}}}}\n" for index in range(1, 3001))
    text = (BASE[: BASE.index("opds:")] + "opds:\n" + opds
            + "schedules:\n  - name: x\n    days: [sat]\n    start: '07:00'\n    end: '08:00'\n    opds:\n" + overrides)
    started = time.perf_counter()
    issues = refused(text)
    assert time.perf_counter() - started < 15
    assert "no OPD has code 'OPD1X'; did you mean 'OPD1'?" in issues[0].message
    assert len(issues) == MAX_ISSUES + 1 and "2000 more problems" in issues[-1].message


@pytest.mark.parametrize("character", ["\u2028", "\u2029", "\x85"])
def test_invisible_line_break_characters_are_refused_where_they_are(character: str) -> None:
    # YAML breaks lines at these; editors do not, so every later position would be off by one.
    text = edit("name: Dinas Kesehatan", f"name: Dinas{character}Kesehatan")
    issue = only_error(text)
    assert (issue.line, issue.column) == at(text, character)
    assert "invisible" in issue.message and f"U+{ord(character):04X}" in issue.message


def test_crlf_line_endings_give_the_same_positions() -> None:
    text = edit("code: DISDIK", "code: disdik")
    unix, windows = only_error(text), only_error(text.replace("\n", "\r\n"))
    assert (windows.line, windows.column, windows.message) == (unix.line, unix.column, unix.message)
    assert loaded(BASE.replace("\n", "\r\n")).policy == loaded(BASE).policy
