"""SATUPINTU_* environment variables as option defaults, so a systemd EnvironmentFile can carry
every daemon option (`SATUPINTU_OPENFLOW_LISTEN=0.0.0.0:6653`) and the command line still wins."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

PREFIX = "SATUPINTU_"
TRUE_WORDS = frozenset({"1", "yes", "true", "on"})
FALSE_WORDS = frozenset({"0", "no", "false", "off", ""})


def variable_name(action: argparse.Action) -> str:
    return PREFIX + action.dest.upper()


def defaults_from_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Name every option's variable in its help and take its default from the environment.

    A bad value is not an error here (that would break unrelated commands): it is stored as
    `args.environment_errors` for the command to report.
    """
    env = os.environ if environ is None else environ
    errors: list[str] = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        name = variable_name(action)
        action.help = f"{action.help or ''} [env {name}]".strip()
        if name not in env:
            continue
        value = env[name].strip()
        if isinstance(action, argparse._StoreTrueAction):
            if value.lower() not in TRUE_WORDS | FALSE_WORDS:
                errors.append(f"{name}={value!r}: expected one of 1, 0, yes, no, true, false, on, off")
                continue
            action.default = value.lower() in TRUE_WORDS
        elif action.choices is not None and value not in action.choices:
            errors.append(f"{name}={value!r}: expected one of {', '.join(map(str, action.choices))}")
            continue
        else:
            action.default = value  # argparse applies the option's type to a string default
        action.required = False
    parser.set_defaults(environment_errors=errors)


def report_environment_errors(args: argparse.Namespace) -> bool:
    """Print the bad SATUPINTU_* values (True when there were any)."""
    errors = getattr(args, "environment_errors", [])
    for error in errors:
        print(f"satupintu: environment variable {error}", file=sys.stderr)
    return bool(errors)
