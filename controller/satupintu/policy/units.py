"""Human rates ("300Mbps", "1.5Gbit/s", "512kbps") to integer bit/s, and back."""

from __future__ import annotations

import re

_RATE = re.compile(
    r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<prefix>[kKmMgGtT]?)\s*(?P<unit>bps|bit/s|bits/s|bit|b/s)?\s*$"
)
_BYTES = re.compile(r"^\s*\d+(?:\.\d+)?\s*[kKmMgGtT]?(B|B/s|Bps|byte/s|bytes/s)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
MAX_RATE_BPS = 10**13  # 10 Tbit/s: anything above is a typo

RATE_HELP = "a rate with a unit, e.g. 512kbps, 300Mbps, 1.5Gbit/s, 10Gbps (SI: k=1000)"


def parse_rate(value: object) -> int:
    """Return bit/s as int; raise ValueError with a message an engineer can act on."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected {RATE_HELP}, got {value!r}")
    if isinstance(value, (int, float)):
        raise ValueError(f"rate {value!r} has no unit: write it as {RATE_HELP}")
    if not isinstance(value, str):
        raise ValueError(f"expected {RATE_HELP}, got a {type(value).__name__}")
    if _BYTES.match(value):
        raise ValueError(f"'{value}' is in bytes; rates are in bits: use e.g. '{value.strip()[:-1]}bps'"
                         if value.strip().endswith("B") else f"'{value}' is in bytes; write {RATE_HELP}")
    match = _RATE.match(value)
    if not match or (not match.group("unit") and not match.group("prefix")):
        raise ValueError(f"'{value}' is not {RATE_HELP}")
    prefix = match.group("prefix")
    if prefix == "m" and match.group("unit") in (None, "bit", "bps"):
        pass  # "mbps" is common and unambiguous for a rate: millibits make no sense
    bits = round(float(match.group("number")) * _SCALE[prefix.lower()])
    if bits <= 0:
        raise ValueError(f"rate '{value}' must be greater than zero")
    if bits > MAX_RATE_BPS:
        raise ValueError(f"rate '{value}' is above 10Tbps; check the unit")
    return bits


def format_rate(bps: int | float) -> str:
    """Shortest exact-ish form: 300Mbps, 1.5Gbps, 512kbps."""
    for suffix, scale in (("Tbps", 10**12), ("Gbps", 10**9), ("Mbps", 10**6), ("kbps", 10**3)):
        if bps >= scale:
            text = f"{bps / scale:.3f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{int(bps)}bps"
