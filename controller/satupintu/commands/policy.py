"""`satupintu policy check|show|diff|schema`: the engineer's tools for the policy file."""

from __future__ import annotations

import argparse
import json
import sys

from satupintu.policy.checks import unclassified_rate
from satupintu.policy.diff import diff_policies
from satupintu.policy.errors import PolicyError
from satupintu.policy.load import LoadedPolicy, load_policy
from satupintu.policy.model import Policy
from satupintu.policy.units import format_rate

EXIT_OK, EXIT_INVALID = 0, 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    policy = subparsers.add_parser("policy", help="check, show, diff a policy file; print its JSON Schema")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate policy files (exit 0 valid, 2 invalid; errors on stderr)")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=cmd_check)
    show = actions.add_parser("show", help="table of OPDs: guarantee, ceiling, share of capacity")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--window", default=None, help="show allocations during this schedule window")
    show.set_defaults(handler=cmd_show)
    diff = actions.add_parser("diff", help="semantic diff and the enforcement changes it implies")
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    diff.add_argument("--topology", default=None, help="topology file (default: a star with every owner)")
    diff.add_argument("--scale", type=float, default=1.0, help="rate multiplier, as in emulate (default 1.0)")
    diff.set_defaults(handler=cmd_diff)
    schema = actions.add_parser("schema", help="print the policy JSON Schema (shipped as policies/schema.json)")
    schema.set_defaults(handler=cmd_schema)


def load_or_report(path: str) -> LoadedPolicy | None:
    """Load a policy, printing located errors and warnings to stderr."""
    try:
        loaded = load_policy(path)
    except PolicyError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        count = len(error.errors)
        print(f"{path}: invalid ({count} error{'s' if count != 1 else ''})", file=sys.stderr)
        return None
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    return loaded


def cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.files:
        loaded = load_or_report(path)
        if loaded is None:
            status = EXIT_INVALID
        else:
            policy = loaded.policy
            print(f"{path}: ok ({len(policy.opds)} OPDs, {len(policy.public_wifi)} Wi-Fi pools, "
                  f"{len(policy.classes)} classes, {len(policy.schedules)} schedules)")
    return status


def _share(rate: int, capacity: int) -> str:
    return f"{100 * rate / capacity:5.1f}%"


def render_table(policy: Policy, window: str | None = None) -> str:
    from satupintu.policy.schedule import resolve_allocations

    allocations = resolve_allocations(policy, window)
    down_cap, up_cap = policy.backbone.download, policy.backbone.upload
    header = (f"{'ID':>4}  {'CODE':<12} {'NAME':<36} {'DOWN guar':>10} {'ceil':>10} {'share':>6}   "
              f"{'UP guar':>10} {'ceil':>10} {'share':>6}  CAP")
    lines = [f"{policy.name}: download {format_rate(down_cap)}, upload {format_rate(up_cap)}"
             + (f" (window {window})" if window else ""), header, "-" * len(header)]
    totals = [0, 0]
    for opd in sorted(policy.opds, key=lambda item: item.id):
        (down_g, down_c), (up_g, up_c) = allocations[opd.id]["download"], allocations[opd.id]["upload"]
        totals[0] += down_g
        totals[1] += up_g
        cap = "hard" if opd.hard_cap else ""
        lines.append(f"{opd.id:>4}  {opd.code:<12} {opd.name[:36]:<36} {format_rate(down_g):>10} "
                     f"{format_rate(down_c):>10} {_share(down_g, down_cap)}   {format_rate(up_g):>10} "
                     f"{format_rate(up_c):>10} {_share(up_g, up_cap)}  {cap}")
    for pool in sorted(policy.public_wifi, key=lambda item: item.id):
        down_c = pool.ceiling.download if pool.ceiling else down_cap
        up_c = pool.ceiling.upload if pool.ceiling else up_cap
        totals[0] += pool.floor.download
        totals[1] += pool.floor.upload
        lines.append(f"{pool.id:>4}  {pool.code:<12} {pool.name[:36]:<36} {format_rate(pool.floor.download):>10} "
                     f"{format_rate(down_c):>10} {_share(pool.floor.download, down_cap)}   "
                     f"{format_rate(pool.floor.upload):>10} {format_rate(up_c):>10} "
                     f"{_share(pool.floor.upload, up_cap)}  wifi")
    totals[0] += unclassified_rate(policy, "download")
    totals[1] += unclassified_rate(policy, "upload")
    lines.append("-" * len(header))
    lines.append(f"{'':>4}  {'TOTAL':<12} {'guarantees incl. unclassified':<36} {format_rate(totals[0]):>10} "
                 f"{'':>10} {_share(totals[0], down_cap)}   {format_rate(totals[1]):>10} {'':>10} "
                 f"{_share(totals[1], up_cap)}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.file)
    if loaded is None:
        return EXIT_INVALID
    names = [schedule.name for schedule in loaded.policy.schedules]
    if args.window and args.window not in names:
        print(f"{args.file}: no schedule window '{args.window}' (windows: {', '.join(names) or 'none'})",
              file=sys.stderr)
        return EXIT_INVALID
    print(render_table(loaded.policy, args.window))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from satupintu.reconcile.state import describe_state_diff
    from satupintu.topology import load_topology, star_topology

    old, new = load_or_report(args.old), load_or_report(args.new)
    if old is None or new is None:
        return EXIT_INVALID
    changes = diff_policies(old.policy, new.policy)
    if changes.empty:
        print("no semantic change")
    for line in changes.added:
        print(f"+ {line}")
    for line in changes.removed:
        print(f"- {line}")
    for line in changes.changed:
        print(f"~ {line}")
    try:
        if args.topology:
            topology = load_topology(args.topology)
        else:
            owners = sorted({o.id for p in (old.policy, new.policy) for o in (*p.opds, *p.public_wifi)})
            topology = star_topology(owners)
    except PolicyError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return EXIT_INVALID
    print()
    print("enforcement changes:")
    for line in describe_state_diff(old.policy, new.policy, topology, args.scale):
        print(f"  {line}")
    return EXIT_OK


def schema_document() -> dict:
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Satu Pintu policy"
    return schema


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema_document(), indent=2, sort_keys=True))
    return EXIT_OK
