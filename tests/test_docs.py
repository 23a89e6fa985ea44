"""The generated reference must match the code it documents."""

from __future__ import annotations

from pathlib import Path

from satupintu.docs import reference
from satupintu.metrics.exporter import METRICS

REPO = Path(__file__).resolve().parents[1]


def test_reference_is_current() -> None:
    shipped = (REPO / "docs" / "reference.md").read_text()
    assert shipped == reference(), "regenerate: .venv/bin/python -m satupintu.docs > docs/reference.md"


def test_reference_lists_every_metric_cli_option_and_policy_key() -> None:
    text = reference()
    assert all(f"`{spec.name}" in text for spec in METRICS)
    assert "`--openflow-listen`" in text and "`satupintu policy check`" in text
    assert "| `guaranteed` | rate |" in text and "| `prefixes` |" in text
