"""Human rates ("300Mbps", "1.5Gbit/s", "512kbps") to integer bit/s, and back."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

_RATE = re.compile(
    r"^\s*(?P<sign>-?)\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<prefix>[kKmMgGtT]?)\s*"
    r"(?P<unit>bps|bit/s|bits/s|bit|b/s)?\s*$"
)
_BYTES = re.compile(
    r"^\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<prefix>[kKmMgGtT]?)(?P<binary>i?)\s*(?P<unit>B|B/s|Bps|byte/s|bytes/s)\s*$"
)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
MAX_RATE_BPS = 10**13  # 10 Tbit/s: anything above is a typo
_MAX_DIGITS = 16  # more integer digits than this is above MAX_RATE_BPS whatever the unit

RATE_HELP = "a rate with a unit, e.g. 512kbps, 300Mbps, 1.5Gbit/s, 10Gbps (SI: k=1000)"


def _show(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def parse_rate(value: object) -> int:
    """Return bit/s as int; raise ValueError with a message an engineer can act on."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected {RATE_HELP}, got {value!r}")
    if isinstance(value, (int, float)):
        raise ValueError(f"rate {_show(repr(value))} has no unit: write it as {RATE_HELP}")
    if not isinstance(value, str):
        raise ValueError(f"expected {RATE_HELP}, got a {type(value).__name__}")
    shown = _show(value.strip())
    in_bytes = _BYTES.match(value)
    if in_bytes:
        number = in_bytes.group("number")
        hint = ""
        if len(number.split(".")[0]) <= _MAX_DIGITS and not in_bytes.group("binary"):
            bits = Decimal(number) * _SCALE[in_bytes.group("prefix").lower()] * 8
            hint = f" ({shown} = {format_rate(bits)})"
        raise ValueError(f"'{shown}' is in bytes per second; rates are in bits per second{hint}: write {RATE_HELP}")
    match = _RATE.match(value)
    if not match or (not match.group("unit") and not match.group("prefix")):
        if match or re.fullmatch(r"\s*[-+]?[0-9]+(?:\.[0-9]+)?\s*", value):
            raise ValueError(f"rate '{shown}' has no unit: write it as {RATE_HELP}")
        raise ValueError(f"'{shown}' is not {RATE_HELP}")
    number = match.group("number")
    if match.group("sign") == "-":
        raise ValueError(f"rate '{shown}' is negative; it must be greater than zero")
    if len(number.split(".")[0]) > _MAX_DIGITS:
        raise ValueError(f"rate '{shown}' is above 10Tbps; check the unit")
    exact = Decimal(number) * _SCALE[match.group("prefix").lower()]  # "mbps": millibits make no sense
    bits = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if bits <= 0:
        raise ValueError(f"rate '{shown}' must be at least 1bps")
    if bits > MAX_RATE_BPS:
        raise ValueError(f"rate '{shown}' is above 10Tbps; check the unit")
    return bits


def format_rate(bps: int | float | Decimal) -> str:
    """Shortest exact-ish form: 300Mbps, 1.5Gbps, 512kbps."""
    for suffix, scale in (("Tbps", 10**12), ("Gbps", 10**9), ("Mbps", 10**6), ("kbps", 10**3)):
        if bps >= scale:
            text = f"{bps / scale:.3f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{int(bps)}bps"
