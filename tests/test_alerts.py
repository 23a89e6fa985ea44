"""Alert rules (deploy/prometheus/): promtool checks them and runs their unit tests, every alert
has a firing and a quiet case, and the unit tests notice a weakened rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import enforce_requirements

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "satupintu-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "satupintu-rules.test.yml"
EXPECTED_ALERTS = {"SatuPintuControllerDown", "SatuPintuSwitchDown", "SatuPintuPolicyReloadFailed",
                   "SatuPintuShapingFailed", "SatuPintuUplinkSaturated", "SatuPintuOpdStarved"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    enforce_requirements("alert", [] if path else ["promtool not on PATH (Debian package prometheus)"])
    return str(path)


def _run(argv: list[str], cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def _alerts(rules_file: Path) -> dict[str, dict]:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_rules_and_example_config_pass_promtool_check(promtool: str) -> None:
    rules = _run([promtool, "check", "rules", str(RULES)])
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _run([promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr


def test_the_issue_alerts_exist_with_severity_and_summary() -> None:
    alerts = _alerts(RULES)
    assert set(alerts) == EXPECTED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert alerts["SatuPintuUplinkSaturated"]["for"] == "10m"


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = _run([promtool, "test", "rules", str(RULE_TESTS)], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS
    assert quiet >= EXPECTED_ALERTS - {"SatuPintuShapingFailed"}


@pytest.mark.parametrize(("alert", "old", "new"), [
    ("SatuPintuUplinkSaturated", "> 0.9", "> 0.96"),  # would miss 95% utilisation
    ("SatuPintuOpdStarved", "unless rate", "and rate"),  # would miss drops below the ceiling without backlog
    ("SatuPintuOpdStarved", "unless rate", "or rate"),  # would call bursts at the ceiling starvation
    ("SatuPintuOpdStarved", "min_over_time", "max_over_time"),  # would call a passing backlog demand
    ("SatuPintuSwitchDown", "== 0", "== 2"),
])
def test_unit_tests_catch_a_weakened_rule(promtool: str, tmp_path: Path, alert: str, old: str, new: str) -> None:
    text = RULES.read_text()
    start = text.index(f"alert: {alert}")
    end = text.find("- alert:", start)
    end = len(text) if end < 0 else end
    assert old in text[start:end]
    (tmp_path / "tests").mkdir()
    (tmp_path / RULES.name).write_text(text[:start] + text[start:end].replace(old, new) + text[end:])
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = _run([promtool, "test", "rules", RULE_TESTS.name], cwd=tmp_path / "tests")
    assert result.returncode != 0, f"the unit tests did not notice {alert}: {old!r} -> {new!r}"
    assert alert in result.stdout + result.stderr
