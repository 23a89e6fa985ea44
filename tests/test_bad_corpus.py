"""Every file in tests/data/bad/ is a policy with one thing wrong. Its first line says where
and what the error must say:

    # expect: LINE:COL substring      (or  # expect: LINE substring)

Each must be refused with PolicyError (never another exception), every issue located, and
one issue at the expected place containing the substring. Cases too big or too binary to
commit are built in tmp_path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from satupintu.policy.errors import PolicyError
from satupintu.policy.load import load_policy
from satupintu.policy.source import MAX_FILE_BYTES

BAD = Path(__file__).resolve().parent / "data" / "bad"
GOOD = Path(__file__).resolve().parent / "data" / "good"
REPO = Path(__file__).resolve().parents[1]
EXPECT = re.compile(rb"^# expect: (?P<line>\d+)(?::(?P<column>\d+))? (?P<substring>.+?)\r?\n")


@dataclass(frozen=True)
class Expectation:
    line: int
    column: int | None
    substring: str


def expectation(path: Path) -> Expectation:
    match = EXPECT.match(path.read_bytes())
    assert match, f"{path.name}: first line must be '# expect: LINE[:COL] substring'"
    column = match.group("column")
    return Expectation(int(match.group("line")), int(column) if column else None,
                       match.group("substring").decode("utf-8"))


def assert_refused_as_expected(path: Path, expected: Expectation) -> None:
    try:
        load_policy(path)
    except PolicyError as exc:
        issues = exc.issues
        errors = exc.errors
    else:
        pytest.fail(f"{path.name} was accepted")
    assert errors, f"{path.name}: PolicyError without errors"
    for issue in issues:
        assert issue.file == str(path)
        assert issue.line >= 1 and issue.column >= 1, f"unlocated issue: {issue}"
        assert str(issue).startswith(f"{path}:{issue.line}:{issue.column}: ")
    where = [issue for issue in issues
             if issue.line == expected.line and (expected.column is None or issue.column == expected.column)]
    shown = "\n".join(str(issue) for issue in issues)
    assert where, f"{path.name}: nothing at {expected.line}:{expected.column}; got:\n{shown}"
    assert any(expected.substring in issue.message for issue in where), (
        f"{path.name}: no issue at {expected.line}:{expected.column} says {expected.substring!r}; got:\n{shown}")


CORPUS = sorted(BAD.iterdir())


def test_corpus_has_at_least_fifty_cases() -> None:
    assert len(CORPUS) >= 50


@pytest.mark.parametrize("path", CORPUS, ids=[path.name for path in CORPUS])
def test_bad_policy_is_refused_where_and_how_expected(path: Path) -> None:
    assert_refused_as_expected(path, expectation(path))


GOOD_FILES = sorted(GOOD.glob("*.yaml")) + [REPO / "policies" / "minimal.yaml"]


WARNINGS = re.compile(r"^# expect-warnings: (\d+)\n")


@pytest.mark.parametrize("path", GOOD_FILES, ids=[path.name for path in GOOD_FILES])
def test_good_policy_loads(path: Path) -> None:
    """Valid policies load (the bad corpus breaks tests/data/good/corpus-base.yaml in one place
    per file); a first line '# expect-warnings: N' says how many warnings they carry."""
    loaded = load_policy(path)
    assert loaded.policy.opds
    match = WARNINGS.match(path.read_text())
    if match:
        assert len(loaded.warnings) == int(match.group(1)), "\n".join(map(str, loaded.warnings))
    for warning in loaded.warnings:
        assert warning.severity == "warning" and warning.line >= 1 and warning.column >= 1


# ---------------------------------------------------------------- built at test time

BASE = (REPO / "policies" / "minimal.yaml").read_bytes()


def _built(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_empty_file(tmp_path: Path) -> None:
    assert_refused_as_expected(_built(tmp_path, "empty.yaml", b""), Expectation(1, 1, "file is empty"))


def test_oversized_file(tmp_path: Path) -> None:
    content = BASE + b"# padding " + b"x" * (MAX_FILE_BYTES - len(BASE)) + b"\n"
    assert len(content) > MAX_FILE_BYTES
    assert_refused_as_expected(_built(tmp_path, "oversized.yaml", content),
                               Expectation(1, 1, "larger than the 16 MiB limit"))


def test_oversized_file_of_multibyte_text(tmp_path: Path) -> None:
    # Reading stops one byte past the limit, in the middle of a 2-byte 'é': still "too large", not "not UTF-8".
    content = BASE + b"# " + "\u00e9".encode() * (MAX_FILE_BYTES // 2) + b"\n"
    assert_refused_as_expected(_built(tmp_path, "oversized-utf8.yaml", content),
                               Expectation(1, 1, "larger than the 16 MiB limit"))


def test_file_exactly_at_the_size_limit_is_read(tmp_path: Path) -> None:
    content = BASE + b"#" + b"x" * (MAX_FILE_BYTES - len(BASE) - 2) + b"\n"
    assert len(content) == MAX_FILE_BYTES
    assert load_policy(_built(tmp_path, "at-limit.yaml", content)).policy.opds


def test_binary_file_with_nul_bytes(tmp_path: Path) -> None:
    content = b"version: 1\nname: \x7fELF\x02\x01\x01\x00\x00\x00\n"
    assert_refused_as_expected(_built(tmp_path, "binary.yaml", content), Expectation(2, 14, "binary data (NUL byte)"))


def test_gzip_compressed_policy(tmp_path: Path) -> None:
    import gzip

    path = _built(tmp_path, "policy.yaml.gz", gzip.compress(BASE))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (issue,) = caught.value.issues
    assert issue.line >= 1 and ("NUL" in issue.message or "UTF-8" in issue.message)


def test_utf16_policy(tmp_path: Path) -> None:
    path = _built(tmp_path, "utf16.yaml", BASE.decode().encode("utf-16"))
    assert_refused_as_expected(path, Expectation(1, 1, "UTF-16"))


def test_random_binary_bytes(tmp_path: Path) -> None:
    content = bytes(range(256)) * 64
    assert_refused_as_expected(_built(tmp_path, "random.bin", content), Expectation(1, 1, "binary data"))
