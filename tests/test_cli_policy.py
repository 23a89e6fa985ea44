"""`satupintu policy ...` as engineers run it: exit codes, output, shipped schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from satupintu.cli import main
from satupintu.commands.policy import schema_document

REPO = Path(__file__).resolve().parents[1]
MINIMAL = REPO / "policies" / "minimal.yaml"


def test_check_valid_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(MINIMAL)]) == 0
    assert "ok (3 OPDs" in capsys.readouterr().out


def test_check_invalid_exits_2_with_located_errors_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.read_text().replace("ceiling: 80Mbps}", "ceiling: 10Mbps}", 1))
    assert main(["policy", "check", str(MINIMAL), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{bad}:22:" in captured.err and "above its ceiling 10Mbps" in captured.err
    assert "Traceback" not in captured.err


def test_check_hostile_file_is_refused_not_crashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert main(["policy", "check", str(bad)]) == 2
    assert "binary data" in capsys.readouterr().err


def test_show_prints_share_of_capacity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "show", str(MINIMAL)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if "DINKES" in row)
    assert "30Mbps" in line and "80Mbps" in line and "30.0%" in line
    assert main(["policy", "show", str(MINIMAL), "--window", "office-hours"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if "DINKES" in row)
    assert "40Mbps" in line and "40.0%" in line


def test_diff_reports_semantic_and_enforcement_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(MINIMAL.read_text().replace("download: {guaranteed: 20Mbps, ceiling: 60Mbps}",
                                               "download: {guaranteed: 20Mbps, ceiling: 50Mbps}"))
    assert main(["policy", "diff", str(MINIMAL), str(new)]) == 0
    out = capsys.readouterr().out
    assert "~ OPD BAPPEDA download.ceiling: 60Mbps -> 50Mbps" in out
    # Only BAPPEDA's download classes change: its OPD class and its 4 leaves, nothing else.
    changes = [line for line in out.splitlines() if "change class" in line]
    assert len(changes) == 5 and all("BAPPEDA" in line and "gw-eth1" in line for line in changes)
    assert "switch" not in out.split("enforcement changes:")[1]


def test_diff_identical_policies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "diff", str(MINIMAL), str(MINIMAL)]) == 0
    out = capsys.readouterr().out
    assert "no semantic change" in out and out.rstrip().endswith("none")


def test_shipped_schema_is_current_and_referenced() -> None:
    shipped = json.loads((REPO / "policies" / "schema.json").read_text())
    assert shipped == json.loads(json.dumps(schema_document())), "run: satupintu policy schema > policies/schema.json"
    for example in (REPO / "policies").glob("*.yaml"):
        assert example.read_text().startswith("# yaml-language-server: $schema=./schema.json"), example
    assert "opds" in shipped["required"] and "Opd" in shipped["$defs"]
