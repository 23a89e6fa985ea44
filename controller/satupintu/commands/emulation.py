"""`satupintu emulate` (a Mininet backbone under the real controller) and `satupintu demo`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DEFAULT_POLICY = REPO / "policies" / "jateng-50.yaml"
DEFAULT_TOPOLOGY = REPO / "topologies" / "star-50.yaml"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    emulate = subparsers.add_parser("emulate", help="run the policy on an emulated Mininet backbone until stopped")
    _common(emulate)
    emulate.add_argument("--ready-file", default=None, metavar="PATH",
                         help="write JSON (scale, hosts with pid and ip, metrics URL) once enforcement is active")
    emulate.set_defaults(handler=cmd_emulate)
    demo = subparsers.add_parser("demo", help="50-OPD emulation with a realistic traffic mix; prints a report")
    _common(demo)
    demo.add_argument("--seconds", type=int, default=45, help="length of the traffic phase (default 45)")
    demo.set_defaults(handler=cmd_demo)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default=None, metavar="FILE",
                        help="policy YAML (default: policies/jateng-50.yaml of this checkout)")
    parser.add_argument("--topology", default=None, metavar="FILE",
                        help="topology YAML (default: topologies/star-50.yaml of this checkout)")
    parser.add_argument("--scale", type=float, default=0.01, help="multiply every rate (default 0.01 = 1/100)")
    parser.add_argument("--openflow-port", type=int, default=6653)
    parser.add_argument("--metrics-listen", default="127.0.0.1:9733", metavar="HOST:PORT")
    parser.add_argument("--workdir", default=None, help="controller status/log directory (default: a temp dir)")
    parser.add_argument("--switch-prefix", default="", metavar="PREFIX",
                        help="prefix every switch name (bridges 'agw', 'acore'), to run beside another emulation")


def _require_root() -> int | None:
    if os.geteuid() != 0:
        print("satupintu: the emulation needs root (network namespaces, Open vSwitch)", file=sys.stderr)
        return 1
    return None


def _session(args: argparse.Namespace):
    from satupintu.emulation.session import EmulationSession

    return EmulationSession(args.policy or str(DEFAULT_POLICY), args.topology or str(DEFAULT_TOPOLOGY),
                            scale=args.scale, openflow_port=args.openflow_port,
                            metrics_listen=args.metrics_listen, workdir=args.workdir,
                            switch_prefix=args.switch_prefix)


def cmd_emulate(args: argparse.Namespace) -> int:
    if (code := _require_root()) is not None:
        return code
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    session = _session(args)
    try:
        info = session.start()
        if args.ready_file:
            temporary = Path(args.ready_file).with_suffix(".tmp")
            temporary.write_text(json.dumps(info, indent=1, sort_keys=True))
            os.replace(temporary, args.ready_file)
        print(f"emulation ready: {len(info['hosts'])} hosts, metrics at {info['metrics_url']}", file=sys.stderr)
        while not stop.wait(0.5):  # a bare wait() is not woken by the signal handler here
            pass
    finally:
        session.stop()
        if args.ready_file:
            Path(args.ready_file).unlink(missing_ok=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if (code := _require_root()) is not None:
        return code
    from satupintu.emulation.demo import run_demo

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    session = _session(args)
    try:
        info = session.start()
        print(run_demo(session.policy, info, args.seconds, args.scale))
    finally:
        session.stop()
    return 0
