"""The daemon's brain, free of os-ken and pyroute2: load -> compile -> hand plans to drivers.

A reload that fails validation changes nothing; a reload that succeeds hands the new
desired state to the drivers, which apply only the difference.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from satupintu.compile.plan import DesiredState, QueuePlan, SwitchPlan
from satupintu.compile.state import compile_state
from satupintu.policy.errors import PolicyError
from satupintu.policy.load import LoadedPolicy, load_policy
from satupintu.policy.schedule import active_window, next_boundary
from satupintu.topology import Topology

log = logging.getLogger("satupintu.enforcer")

# A policy file modified less than this long ago may still be being written. Editors and tools
# that write in place (nano, `cat >`, scp) leave it half-written for a moment, and a file cut
# at an OPD boundary is a VALID policy that lacks every OPD after the cut: applying it would take
# those OPDs offline. Editors write in milliseconds; the watch polls every 0.5 s.
SETTLE_S = 0.2
# The tc trees are read back and repaired this often (a `tc qdisc del`, a NIC reset or a
# re-created interface otherwise leaves every OPD of a port unshaped until the next policy
# change); less often when reading back is slow, so it costs at most VERIFY_SHARE of a core.
VERIFY_QUEUES_S = 5.0
VERIFY_SHARE = 0.05
REPEAT_WARNING_S = 60.0  # a port that stays unshapeable is retried every second but logged this often


class FlowDriver(Protocol):
    def set_desired(self, plans: dict[int, SwitchPlan]) -> None: ...


class QueueDriver(Protocol):
    def apply(self, plan: QueuePlan) -> object: ...


@dataclass(slots=True)
class ReloadRecord:
    ok: bool
    reason: str
    at: float
    duration_s: float
    messages: list[str] = field(default_factory=list)


@dataclass(slots=True)
class EnforcerStatus:
    generation: int = 0
    policy_sha256: str = ""
    window: str = "base"
    reloads_ok: int = 0
    reloads_failed: int = 0
    last_good_reload: float = 0.0
    last: ReloadRecord | None = None
    queues_applied: dict[str, dict] = field(default_factory=dict)


class Enforcer:
    """Owns the running policy. Every public method is safe to call from one thread at a time."""

    def __init__(self, policy_path: str | Path, topology: Topology, flows: FlowDriver, queues: QueueDriver,
                 *, scale: float = 1.0, status_file: str | Path | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.policy_path = Path(policy_path)
        self.topology = topology
        self.flows = flows
        self.queues = queues
        self.scale = scale
        self.status_file = Path(status_file) if status_file else None
        self.clock = clock
        self.loaded: LoadedPolicy | None = None
        self.desired: DesiredState | None = None
        self.status = EnforcerStatus()
        self._mtime: float | None = None
        self._next_verify = 0.0
        self.repeat_warning_s = REPEAT_WARNING_S
        self._unshaped: dict[str, tuple[str, float]] = {}  # port -> (error, when last logged)

    # ------------------------------------------------------------------ reloads

    def reload(self, reason: str) -> bool:
        """Load the policy file again; apply it only if it is valid and compiles."""
        started = time.monotonic()
        mtime = self._stat_mtime()  # before reading: a change while we read is seen next time
        try:
            loaded = load_policy(self.policy_path)
            window = active_window(loaded.policy, self.clock())
            desired = self._compile(loaded, window)
        except PolicyError as error:
            return self._rejected(reason, started, mtime, [str(issue) for issue in error.issues])
        except ValueError as error:  # compile-time impossibilities (topology lacks an OPD, u32 limits)
            return self._rejected(reason, started, mtime, [f"{self.policy_path}: {error}"])
        for warning in loaded.warnings:
            log.warning("%s", warning)
        self._mtime = mtime
        self.loaded = loaded
        self._apply(desired)
        self.status.generation += 1
        self.status.policy_sha256 = loaded.sha256
        self.status.reloads_ok += 1
        self.status.last_good_reload = time.time()
        record = ReloadRecord(True, reason, time.time(), time.monotonic() - started)
        self.status.last = record
        log.info("policy generation %d applied (%s, window %s) in %.3fs", self.status.generation, reason,
                 desired.schedule_window, record.duration_s)
        self.write_status()
        return True

    def _compile(self, loaded: LoadedPolicy, window: str) -> DesiredState:
        return compile_state(loaded.policy, self.topology, window=window, scale=self.scale,
                             policy_hash=loaded.sha256)

    def _rejected(self, reason: str, started: float, mtime: float | None, messages: list[str]) -> bool:
        self._mtime = mtime
        self.status.reloads_failed += 1
        self.status.last = ReloadRecord(False, reason, time.time(), time.monotonic() - started, messages)
        log.error("policy reload (%s) rejected; the running policy stays:\n%s", reason, "\n".join(messages))
        self.write_status()
        return False

    def _apply(self, desired: DesiredState) -> None:
        previous = {plan.port: plan for plan in self.desired.queues} if self.desired else {}
        self.desired = desired
        self.status.window = desired.schedule_window
        self.flows.set_desired({plan.dpid: plan for plan in desired.switches})
        # A port whose tree did not change is not read back (measured: 65 ms per port at 500 OPDs).
        changed = [plan for plan in desired.queues
                   if previous.get(plan.port) != plan or "error" in self.status.queues_applied.get(plan.port, {})]
        self.reapply_queues(changed)

    def reapply_queues(self, plans: list[QueuePlan] | None = None) -> bool:
        """Make the tc trees match (again); a missing port is retried later, never fatal."""
        if self.desired is None:
            return True
        ok = True
        for plan in self.desired.queues if plans is None else plans:
            try:
                self.status.queues_applied[plan.port] = _as_dict(self.queues.apply(plan))
            except Exception as error:  # netlink errors, port not there yet
                ok = False
                self.status.queues_applied[plan.port] = {"error": f"{type(error).__name__}: {error}"}
                self._warn_unshaped(plan.port, str(error))
            else:
                if self._unshaped.pop(plan.port, None) is not None:
                    log.warning("%s is shaped again", plan.port)
        return ok

    def _warn_unshaped(self, port: str, error: str) -> None:
        """Once per port and error, then every repeat_warning_s: a missing port must not flood the journal."""
        now = time.monotonic()
        last = self._unshaped.get(port)
        if last is not None and last[0] == error and now - last[1] < self.repeat_warning_s:
            return
        self._unshaped[port] = (error, now)
        log.warning("cannot shape %s yet: %s (retrying every second, logged every %.0f s)", port, error,
                    self.repeat_warning_s)

    def keep_queues(self) -> None:
        """Call often: retries ports that failed and, every VERIFY_QUEUES_S, makes every tree match
        its plan again (the driver reads the kernel back and sends nothing when all is right)."""
        if time.monotonic() < self._next_verify:
            if self.queues_failed():
                self.reapply_queues()
            return
        started = time.monotonic()
        self.reapply_queues()
        took = time.monotonic() - started
        self._next_verify = time.monotonic() + max(VERIFY_QUEUES_S, took / VERIFY_SHARE)
        for port, entry in self.status.queues_applied.items():
            if entry.get("requests"):
                log.warning("%s had drifted from its plan (rebuilt: %s): %d tc requests put it back", port,
                            entry.get("rebuilt"), entry["requests"])

    def queues_failed(self) -> bool:
        return any("error" in entry for entry in self.status.queues_applied.values())

    # ------------------------------------------------------------------ triggers

    def file_changed(self) -> bool:
        """The file differs from the one last read and has not been written for SETTLE_S."""
        mtime = self._stat_mtime()
        if mtime == self._mtime:
            return False
        return mtime is None or not 0 <= time.time() - mtime < SETTLE_S  # a future mtime cannot settle: go

    def _stat_mtime(self) -> float | None:
        try:
            return os.stat(self.policy_path).st_mtime
        except OSError:
            return None

    def check_schedule(self) -> bool:
        """Recompile if the schedule window in force has changed; True when it did."""
        if self.loaded is None:
            return False
        window = active_window(self.loaded.policy, self.clock())
        if window == self.status.window:
            return False
        log.info("schedule window %s -> %s", self.status.window, window)
        desired = self._compile(self.loaded, window)
        self._apply(desired)
        self.status.generation += 1
        self.write_status()
        return True

    def seconds_to_boundary(self) -> float | None:
        if self.loaded is None:
            return None
        now = self.clock()
        boundary = next_boundary(self.loaded.policy, now)
        return None if boundary is None else max(0.0, (boundary - now).total_seconds())

    # ------------------------------------------------------------------ status

    def status_dict(self) -> dict:
        status = self.status
        last = status.last
        return {
            "pid": os.getpid(),
            "generation": status.generation,
            "policy_file": str(self.policy_path),
            "policy_sha256": status.policy_sha256,
            "window": status.window,
            "scale": self.scale,
            "reloads_ok": status.reloads_ok,
            "reloads_failed": status.reloads_failed,
            "last_good_reload": status.last_good_reload,
            "last_reload": None if last is None else {
                "ok": last.ok, "reason": last.reason, "at": last.at, "duration_s": last.duration_s,
                "messages": last.messages},
            "queues": status.queues_applied,
        }

    def write_status(self, extra: dict | None = None) -> None:
        if self.status_file is None:
            return
        payload = self.status_dict() | (extra or {})
        temporary = self.status_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(temporary, self.status_file)


def _as_dict(report: object) -> dict:
    if report is None:
        return {}
    if hasattr(report, "__dataclass_fields__"):
        return {name: getattr(report, name) for name in report.__dataclass_fields__}
    return dict(report) if isinstance(report, dict) else {"result": str(report)}
