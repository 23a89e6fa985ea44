"""`satupintu run` (the daemon) and `satupintu reload`."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from satupintu.commands.environment import defaults_from_environment, report_environment_errors
from satupintu.policy.errors import PolicyError
from satupintu.signals import Signals

if TYPE_CHECKING:
    from satupintu.drivers.openflow import OpenFlowDriver
    from satupintu.drivers.systemd_notify import SystemdNotifier
    from satupintu.enforcer import Enforcer
    from satupintu.metrics.exporter import Metrics
    from satupintu.policy.load import LoadedPolicy
    from satupintu.topology import Topology

log = logging.getLogger("satupintu.daemon")

DEFAULT_OPENFLOW = "127.0.0.1:6653"
DEFAULT_METRICS = "127.0.0.1:9733"
DEFAULT_PID_FILE = "/run/satupintu/satupintu.pid"
DEFAULT_STATUS_FILE = "/run/satupintu/status.json"
DEFAULT_STATE_DIR = "/var/lib/satupintu"
POLL_SECONDS = 0.5  # the policy file watch; signals wake the loop at once


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the controller daemon in the foreground (logs to stderr)")
    run.add_argument("--policy", required=True, metavar="FILE", help="policy YAML (reloaded on change and SIGHUP)")
    run.add_argument("--topology", required=True, metavar="FILE", help="topology YAML")
    run.add_argument("--openflow-listen", default=DEFAULT_OPENFLOW, metavar="HOST:PORT",
                     help=f"OpenFlow listen address (default {DEFAULT_OPENFLOW})")
    run.add_argument("--metrics-listen", default=DEFAULT_METRICS, metavar="HOST:PORT",
                     help=f"Prometheus exporter address (default {DEFAULT_METRICS}); 'off' disables it")
    run.add_argument("--scale", type=float, default=1.0, help="multiply every rate (emulation uses 0.01)")
    run.add_argument("--pid-file", default=DEFAULT_PID_FILE, help=f"(default {DEFAULT_PID_FILE})")
    run.add_argument("--status-file", default=DEFAULT_STATUS_FILE, help=f"JSON status (default {DEFAULT_STATUS_FILE})")
    run.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                     help="keeps DIR/last-good-policy.yaml, a copy of the last policy applied; when the policy file "
                          "is invalid at start, that copy is enforced (if it compiles) until the file is fixed, "
                          f"instead of exiting (default {DEFAULT_STATE_DIR})")
    run.add_argument("--tls-key", default=None, help="controller private key (PEM): OpenFlow over TLS")
    run.add_argument("--tls-cert", default=None, help="controller certificate (PEM)")
    run.add_argument("--tls-ca", default=None, help="CA certificate that switch certificates must chain to")
    run.add_argument("--allow-plain-tcp", action="store_true",
                     help="accept OpenFlow over plain TCP on a non-loopback address (off: TLS required there)")
    run.add_argument("--no-watch", action="store_true", help="do not reload when the policy file changes")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(handler=cmd_run)
    defaults_from_environment(run)
    reload = subparsers.add_parser("reload", help="ask the running daemon to reload its policy (SIGHUP)")
    reload.add_argument("--pid-file", default=DEFAULT_PID_FILE)
    reload.add_argument("--status-file", default=DEFAULT_STATUS_FILE)
    reload.add_argument("--pid", type=int, default=None,
                        help="signal this process instead of the one in --pid-file (systemd: $MAINPID)")
    reload.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the outcome")
    reload.set_defaults(handler=cmd_reload)
    defaults_from_environment(reload)


def split_address(text: str, option: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"satupintu: {option} expects HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class _JournalFormatter(logging.Formatter):
    """systemd's journal stamps the time itself and reads a `<N>` syslog priority prefix, so
    `journalctl -u satupintu -p warning` shows exactly the warnings and errors."""

    PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):  # stderr is connected to the journal (systemd sets this)
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def cmd_run(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    from satupintu.commands.policy import load_or_report
    from satupintu.topology import load_topology

    if report_environment_errors(args):
        return 2
    with contextlib.redirect_stderr(io.StringIO()) as policy_report:
        loaded = load_or_report(args.policy)
    policy_valid = loaded is not None
    try:
        topology = load_topology(args.topology)
    except PolicyError as error:
        sys.stderr.write(policy_report.getvalue())
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return 2
    if loaded is not None:  # valid is not enough: it must also compile against this topology
        problems = _compile_problems(args, loaded, topology)
        if problems:
            policy_valid = False
            policy_report.write("".join(f"{line}\n" for line in problems))
    # An invalid policy file with a last good copy that compiles: the daemon starts and enforces
    # the copy (the Enforcer logs why); the report is printed only when it exits here.
    stand_in = [] if policy_valid else _last_good_problems(args, topology)
    if policy_valid or stand_in:
        sys.stderr.write(policy_report.getvalue())  # its warnings, or the errors it exits for
    if stand_in:
        for line in stand_in:
            print(line, file=sys.stderr)
        return 2
    of_host, of_port = split_address(args.openflow_listen, "--openflow-listen")
    tls = None
    if args.tls_key or args.tls_cert or args.tls_ca:
        if not (args.tls_key and args.tls_cert and args.tls_ca):
            print("satupintu: TLS needs --tls-key, --tls-cert and --tls-ca together", file=sys.stderr)
            return 2
        tls = {"key": args.tls_key, "cert": args.tls_cert, "ca": args.tls_ca}
        from satupintu.drivers.tls import TlsConfigError, server_context

        try:
            server_context(args.tls_key, args.tls_cert, args.tls_ca)  # before anything starts: a clear error
        except TlsConfigError as error:
            print(f"satupintu: {error}", file=sys.stderr)
            return 2
    elif not _is_loopback(of_host) and not args.allow_plain_tcp:
        print(f"satupintu: refusing plain-TCP OpenFlow on {of_host}: configure --tls-key/--tls-cert/--tls-ca "
              "or pass --allow-plain-tcp", file=sys.stderr)
        return 2
    return Daemon(args, topology, (of_host, of_port), tls).run()


def _compile_problems(args: argparse.Namespace, loaded: LoadedPolicy, topology: Topology) -> list[str]:
    """Why a valid policy file still cannot be enforced here (the topology lacks an OPD, ...)."""
    from satupintu.enforcer import Unusable, compile_loaded
    from satupintu.policy.schedule import active_window

    try:
        compile_loaded(loaded, args.policy, topology, scale=args.scale,
                       window=active_window(loaded.policy, datetime.now(UTC)))
    except Unusable as error:
        return error.messages
    return []


def _last_good_problems(args: argparse.Namespace, topology: Topology) -> list[str]:
    """Why the last good copy cannot stand in for the invalid policy file ([] when it can)."""
    from satupintu.enforcer import LAST_GOOD_NAME, Unusable, prepare

    copy = Path(args.state_dir) / LAST_GOOD_NAME
    if not os.path.exists(copy):
        return [f"satupintu: no last good copy of the policy ({copy}) to enforce instead"]
    try:
        prepare(copy, topology, scale=args.scale, now=datetime.now(UTC))
    except Unusable as error:
        return [f"satupintu: the last good copy {copy} cannot be enforced instead either:", *error.messages]
    return []


class Daemon:
    def __init__(self, args: argparse.Namespace, topology, openflow: tuple[str, int], tls: dict | None) -> None:
        self.args = args
        self.topology = topology
        self.openflow = openflow
        self.tls = tls

    def run(self) -> int:
        from satupintu.drivers.systemd_notify import SystemdNotifier
        from satupintu.drivers.tc import TcShaper
        from satupintu.enforcer import LAST_GOOD_NAME, Enforcer
        from satupintu.metrics.exporter import Metrics

        args = self.args
        signals = Signals()
        notifier = SystemdNotifier()
        metrics = Metrics()
        try:
            driver = self._start(metrics)
        except OSError as error:
            # Exit 1, not 2: a port still held by a stopping instance is worth a restart.
            print(f"satupintu: {error.strerror}", file=sys.stderr)
            return 1
        log.info("OpenFlow listening on %s:%d%s", *self.openflow, " (TLS)" if self.tls else "")
        shaper = TcShaper()
        enforcer = Enforcer(args.policy, self.topology, driver, shaper, scale=args.scale,
                            status_file=args.status_file, last_good_file=Path(args.state_dir) / LAST_GOOD_NAME)
        metrics.attach(enforcer, driver, shaper, self.topology)
        enforcer.reload("startup")
        # Ready once listening with the policy compiled and handed to the drivers: switches
        # connect (and get their flows) whenever they come, which may be long after.
        notifier.ready(_status_line(enforcer, driver.switch_status()))
        next_stats = 0.0
        try:
            # The watchdog is fed from this loop only: if a reload, a driver call or a file read
            # wedges it, WATCHDOG=1 stops and systemd restarts the service. A signal ends the
            # wait at once (a SIGHUP reload starts within milliseconds, not up to POLL_SECONDS).
            while not signals.wait(_wait_s(notifier)):
                notifier.watchdog()
                if signals.take_reload():
                    self._reload(enforcer, notifier, "SIGHUP")
                elif not args.no_watch and enforcer.file_changed():
                    self._reload(enforcer, notifier, "file changed")
                enforcer.check_schedule()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + 1.0
                    enforcer.keep_queues()
                    switches = driver.switch_status()
                    enforcer.write_status({"switches": switches})
                    notifier.status(_status_line(enforcer, switches))
        finally:
            notifier.stopping()
            log.info("stopping; flows and queues stay in place (switches run fail_mode=secure)")
            Path(args.pid_file).unlink(missing_ok=True)
        return 0

    def _start(self, metrics: Metrics) -> OpenFlowDriver:
        """Pid file, metrics listener, OpenFlow listener; an OSError says which one failed."""
        from satupintu.drivers.openflow import run_controller

        args = self.args
        for path in (args.pid_file, args.status_file):
            _or_explain(lambda path=path: Path(path).parent.mkdir(parents=True, exist_ok=True),
                        f"cannot create the directory of {path}")
        _or_explain(lambda: Path(args.pid_file).write_text(f"{os.getpid()}\n"),
                    f"cannot write the pid file {args.pid_file}")
        if args.metrics_listen != "off":
            host, port = split_address(args.metrics_listen, "--metrics-listen")
            _or_explain(lambda: metrics.serve(host, port), f"cannot listen for metrics on {host}:{port}")
            log.info("metrics on http://%s:%d/metrics", host, port)
        return run_controller({}, listen_host=self.openflow[0], listen_port=self.openflow[1], tls=self.tls)

    @staticmethod
    def _reload(enforcer: Enforcer, notifier: SystemdNotifier, reason: str) -> None:
        notifier.reloading()
        enforcer.reload(reason)
        notifier.ready(_status_line(enforcer, None))


def _or_explain(action: Callable[[], object], what: str) -> None:
    try:
        action()
    except OSError as error:
        raise OSError(error.errno, f"{what}: {error.strerror}") from None


def _wait_s(notifier: SystemdNotifier) -> float:
    due = notifier.watchdog_due_in()
    return POLL_SECONDS if due is None else min(POLL_SECONDS, due)


def _status_line(enforcer: Enforcer, switches: dict | None) -> str:
    """One line for `systemctl status`: what is enforced and whether the switches follow."""
    status = enforcer.status
    text = f"policy generation {status.generation} ({status.policy_sha256[:12]}), window {status.window}"
    if status.last is not None and not status.last.ok:
        text += f"; last reload REJECTED ({len(status.last.messages)} errors, old policy stays)"
    if enforcer.last_good_in_force:
        text += "; enforcing the LAST GOOD COPY (the policy file is invalid)"
    if switches is not None:
        expected = len(enforcer.desired.switches) if enforcer.desired else len(switches)
        in_sync = sum(1 for entry in switches.values() if entry.get("connected") and entry.get("in_sync"))
        text += f"; switches in sync {in_sync}/{expected}"
    if enforcer.queues_failed():
        text += "; some tc ports not shaped yet"
    return text


def cmd_reload(args: argparse.Namespace) -> int:
    if report_environment_errors(args):
        return 2
    try:
        pid = args.pid or int(Path(args.pid_file).read_text().strip())
    except (OSError, ValueError) as error:
        print(f"satupintu: cannot read pid file {args.pid_file}: {error}", file=sys.stderr)
        return 1
    before = _read_status(args.status_file)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"satupintu: no daemon with pid {pid} (stale {args.pid_file})", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status = _read_status(args.status_file)
        last = status.get("last_reload") or {}
        if status and last.get("at", 0) > (before.get("last_reload") or {}).get("at", 0):
            if last.get("ok"):
                print(f"reloaded: generation {status['generation']}, policy {status['policy_sha256'][:12]}")
                return 0
            print("reload rejected; the running policy stays:", file=sys.stderr)
            for message in last.get("messages", []):
                print(message, file=sys.stderr)
            return 2
        time.sleep(0.1)
    print(f"satupintu: no reload outcome within {args.timeout}s", file=sys.stderr)
    return 1


def _read_status(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
