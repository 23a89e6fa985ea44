"""The `satupintu` command: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from satupintu.commands import policy as policy_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="satupintu",
        description="Satu Pintu: per-OPD guarantees, ceilings and priorities on a shared government backbone.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    policy_commands.add_parser(subparsers)
    for name in ("daemon", "emulation", "observe", "status", "report"):
        module = _optional_module(name)
        if module is not None:
            module.add_parser(subparsers)
    return parser


def _optional_module(name: str):
    """Command groups whose heavy imports (os-ken, pyroute2) load only when used."""
    import importlib

    try:
        return importlib.import_module(f"satupintu.commands.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"satupintu.commands.{name}":
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
