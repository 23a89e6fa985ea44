"""Usage statistics, right-sizing recommendations and cost shares: pure arithmetic on sampled
counters, no Prometheus and no I/O, so the method is tested in microseconds.

Method (also shown by `satupintu report --help`):

- Rates: the byte counter of an OPD's HTB class (L2 bytes, one direction) is sampled every
  `--step`; each step's rate is (bytes[t] - bytes[t - step]) * 8 / step. A counter that went
  down (controller restart, tree rebuilt) restarts from zero; a step with a missing sample is
  skipped, never interpolated.
- Average, p95 (nearest rank) and peak are over these step rates, so they depend on the step:
  a 5-minute step smooths bursts shorter than 5 minutes.
- Hours above guarantee: the number of steps whose rate exceeded the guarantee in force at that
  step (guarantees follow schedule windows), times the step.
- Recommended guarantee: p95 x headroom, rounded up to whole Mbit/s; recommended ceiling:
  peak x headroom, rounded up, at least the recommended guarantee and at most the uplink. An
  OPD idle for the whole period gets the 1 Mbit/s minimum: choose a representative period
  (a month of office days), not a holiday week.
- Cost shares: the monthly uplink cost split in proportion to bytes carried (both directions,
  OPDs and Wi-Fi pools alike; "by usage") and, for comparison, in proportion to guaranteed rate
  (what each owner reserves; "by guarantee"). Rupiah are whole and shares add up exactly to
  the cost (largest remainder).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_HEADROOM = 1.2
DEFAULT_ROUND_BPS = 1_000_000


@dataclass(frozen=True, slots=True)
class UsageStats:
    average_bps: float
    p95_bps: float
    peak_bps: float
    hours_above_guarantee: float
    bytes: float
    steps: int  # step rates the figures are computed from


@dataclass(frozen=True, slots=True)
class Recommendation:
    guaranteed_bps: int
    ceiling_bps: int


def step_rates(samples: Sequence[tuple[float, float]], step_s: float) -> list[tuple[float, float]]:
    """(t, bytes counter) samples at step spacing -> (t, bit/s over the step ending at t)."""
    rates = []
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if abs((t1 - t0) - step_s) > step_s * 1e-6:  # a gap: no sample at t0 + step
            continue
        delta = v1 - v0 if v1 >= v0 else v1  # counter reset: it counted v1 since
        rates.append((t1, delta * 8 / step_s))
    return rates


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (the value below which `fraction` of values fall); 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(rates: Sequence[tuple[float, float]], step_s: float,
              guaranteed_at: Mapping[float, float] | float) -> UsageStats:
    """Figures of one owner and direction. `guaranteed_at` maps step time -> guarantee in force
    (or is one number for the whole period)."""
    values = [rate for _, rate in rates]
    if isinstance(guaranteed_at, Mapping):
        above = sum(1 for t, rate in rates if t in guaranteed_at and rate > guaranteed_at[t])
    else:
        above = sum(1 for rate in values if rate > guaranteed_at)
    return UsageStats(
        average_bps=sum(values) / len(values) if values else 0.0,
        p95_bps=percentile(values, 0.95),
        peak_bps=max(values, default=0.0),
        hours_above_guarantee=above * step_s / 3600,
        bytes=sum(values) * step_s / 8,
        steps=len(values),
    )


def round_up(bps: float, unit_bps: int) -> int:
    return int(math.ceil(bps / unit_bps - 1e-9) * unit_bps) if bps > 0 else 0


def recommend(stats: UsageStats, capacity_bps: float, headroom: float = DEFAULT_HEADROOM,
              round_bps: int = DEFAULT_ROUND_BPS) -> Recommendation:
    """Guarantee from p95, ceiling from peak, both with headroom (see the module docstring)."""
    guaranteed = max(round_bps, round_up(stats.p95_bps * headroom, round_bps))
    ceiling = max(guaranteed, round_up(stats.peak_bps * headroom, round_bps))
    capacity = int(capacity_bps)
    if capacity > 0:
        guaranteed, ceiling = min(guaranteed, capacity), min(ceiling, capacity)
    return Recommendation(guaranteed, ceiling)


def split_cost(total_idr: int, weights: Mapping[str, float]) -> dict[str, int]:
    """`total_idr` split in proportion to `weights`, whole rupiah adding up exactly to the total."""
    weight_sum = sum(max(0.0, weight) for weight in weights.values())
    if weight_sum <= 0:
        return dict.fromkeys(weights, 0)
    exact = {key: total_idr * max(0.0, weight) / weight_sum for key, weight in weights.items()}
    shares = {key: math.floor(value) for key, value in exact.items()}
    left = total_idr - sum(shares.values())
    for key in sorted(exact, key=lambda key: (shares[key] - exact[key], key))[:left]:
        shares[key] += 1
    return shares
