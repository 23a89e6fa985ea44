"""Validate + compile at 50 / 500 / 5,000 OPDs (target: 5,000 in <= 1 s on 2 cores).

Run: .venv/bin/python benchmarks/bench_compile.py [--repeat 5]
Prints min / median / max seconds per stage; results are written down in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import synthetic_policy_text

from satupintu.compile.state import compile_state
from satupintu.policy.load import load_policy_text
from satupintu.topology import star_topology


def measure(opd_count: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per stage and run, plus the size of what was compiled (flows, HTB classes, YAML MB)."""
    text = synthetic_policy_text(opd_count)
    timings: dict[str, list[float]] = {"load+validate": [], "compile": [], "total": []}
    for _ in range(repeat):
        started = time.perf_counter()
        loaded = load_policy_text(text, f"synthetic-{opd_count}.yaml")
        loaded_at = time.perf_counter()
        owners = [owner.id for owner in (*loaded.policy.opds, *loaded.policy.public_wifi)]
        state = compile_state(loaded.policy, star_topology(owners))
        done = time.perf_counter()
        timings["load+validate"].append(loaded_at - started)
        timings["compile"].append(done - loaded_at)
        timings["total"].append(done - started)
    timings["flows"] = [sum(len(plan.flows) for plan in state.switches)]
    timings["HTB classes"] = [sum(len(plan.classes) for plan in state.queues)]
    timings["YAML MB"] = [len(text) / 1e6]
    return timings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="50,500,5000")
    args = parser.parse_args()
    for size in (int(value) for value in args.sizes.split(",")):
        timings = measure(size, args.repeat)
        print(f"{size:>5} OPDs ({timings.pop('YAML MB')[0]:.2f} MB YAML, {timings.pop('flows')[0]} flows, "
              f"{timings.pop('HTB classes')[0]} HTB classes):")
        for stage, values in timings.items():
            print(f"    {stage:<14} min {min(values):.4f}s  median {statistics.median(values):.4f}s  "
                  f"max {max(values):.4f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
