"""The daemon's brain, free of os-ken and pyroute2: load -> compile -> hand plans to drivers.

A reload that fails validation changes nothing; a reload that succeeds hands the new
desired state to the drivers, which apply only the difference, and keeps a copy of the policy
it applied (the last good copy): a daemon that starts while the policy file is invalid
enforces that copy instead of nothing, and still watches the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from satupintu.compile.plan import DesiredState, QueuePlan, SwitchPlan
from satupintu.compile.state import compile_state
from satupintu.policy.errors import Issue, PolicyError
from satupintu.policy.load import LoadedPolicy, load_policy_bytes
from satupintu.policy.schedule import active_window, next_boundary
from satupintu.policy.source import MAX_FILE_BYTES
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
LAST_GOOD_NAME = "last-good-policy.yaml"  # in the state directory (`satupintu run --state-dir`)


class FlowDriver(Protocol):
    def set_desired(self, plans: dict[int, SwitchPlan]) -> None: ...


class QueueDriver(Protocol):
    def apply(self, plan: QueuePlan, *, verify: bool = True) -> object: ...


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
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 last_good_file: str | Path | None = None) -> None:
        self.source_path = Path(policy_path)  # the policy file: watched and reloaded
        self.in_force = self.source_path  # the file the enforced policy was read from
        self.last_good_file = Path(last_good_file) if last_good_file else None
        self._last_good_error: str | None = None  # the last warning about keeping the copy
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

    @property
    def policy_path(self) -> Path:
        """The file the enforced policy came from: the policy file, or the last good copy while
        that stands in for an invalid one (the `file` label of satupintu_policy_info)."""
        return self.in_force

    @property
    def last_good_in_force(self) -> bool:
        return self.in_force != self.source_path

    # ------------------------------------------------------------------ reloads

    def reload(self, reason: str) -> bool:
        """Load the policy file again; apply it only if it is valid and compiles."""
        started = time.monotonic()
        mtime = self._stat_mtime()  # before reading: a change while we read is seen next time
        try:
            prepared = prepare(self.source_path, self.topology, scale=self.scale, now=self.clock())
        except Unusable as error:
            return self._rejected(reason, started, mtime, error.messages)
        for warning in prepared.loaded.warnings:
            log.warning("%s", warning)
        self._mtime = mtime
        if self.last_good_in_force:
            log.info("%s is valid again: it replaces the last good copy", self.source_path)
        self._enforce(prepared)
        self.status.reloads_ok += 1
        self.status.last_good_reload = time.time()
        record = ReloadRecord(True, reason, time.time(), time.monotonic() - started)
        self.status.last = record
        log.info("policy generation %d applied (%s, window %s) in %.3fs", self.status.generation, reason,
                 prepared.desired.schedule_window, record.duration_s)
        self.write_status()
        self._keep_last_good(prepared.raw)
        return True

    def _enforce(self, prepared: Prepared) -> None:
        self.loaded = prepared.loaded
        self.in_force = prepared.path
        self._apply(prepared.desired)
        self.status.generation += 1
        self.status.policy_sha256 = prepared.loaded.sha256

    def _rejected(self, reason: str, started: float, mtime: float | None, messages: list[str]) -> bool:
        self._mtime = mtime
        self.status.reloads_failed += 1
        self.status.last = ReloadRecord(False, reason, time.time(), time.monotonic() - started, messages)
        # Nothing in force yet (the daemon is starting): the last good copy, rather than nothing.
        # The rejection still counts, so the reload-failed alert fires until the file is fixed.
        if self.loaded is not None or not self._fall_back(messages):
            log.error("policy reload (%s) rejected; %s:\n%s", reason,
                      "no policy is in force" if self.loaded is None else "the running policy stays",
                      "\n".join(messages))
        self.write_status()
        return False

    def _fall_back(self, messages: list[str]) -> bool:
        """Enforce the last good copy in place of the invalid policy file, if it compiles."""
        copy = self.last_good_file
        if copy is None or not os.path.exists(copy):
            return False
        try:
            prepared = prepare(copy, self.topology, scale=self.scale, now=self.clock())
        except Unusable as error:
            log.error("the last good copy %s cannot stand in for the invalid policy file:\n%s", copy,
                      "\n".join(error.messages))
            return False
        log.error("%s is invalid (%d problems); enforcing the last good copy %s instead, from %s (sha256 %s), "
                  "until the file is fixed (it is still watched, and reloaded on SIGHUP):\n%s", self.source_path,
                  len(messages), copy, _when(prepared.mtime), prepared.loaded.sha256[:12], "\n".join(messages))
        self._enforce(prepared)
        # The copy was written when that policy was last applied: its age is the honest one to show.
        self.status.last_good_reload = prepared.mtime
        return True

    def _keep_last_good(self, raw: bytes) -> None:
        """Write the policy just applied to the last good copy, atomically and only when it
        differs. A failure is a warning (once per error), never fatal."""
        copy = self.last_good_file
        if copy is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                if copy.read_bytes() == raw:
                    return
            copy.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            write_atomically(copy, raw)
        except OSError as error:
            problem = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
            if problem != self._last_good_error:
                log.warning("cannot keep the last good policy in %s: %s (the daemon runs on, but a restart "
                            "while the policy file is invalid will not have it to fall back on)", copy, problem)
            self._last_good_error = problem
            return
        if self._last_good_error is not None:
            log.info("the last good policy is kept in %s again", copy)
        self._last_good_error = None

    def _apply(self, desired: DesiredState) -> None:
        previous = {plan.port: plan for plan in self.desired.queues} if self.desired else {}
        self.desired = desired
        self.status.window = desired.schedule_window
        self.flows.set_desired({plan.dpid: plan for plan in desired.switches})
        # A port whose tree did not change is not touched, and a changed one is not read back
        # (65 ms per port at 500 OPDs) unless the change is structural: keep_queues verifies.
        changed = [plan for plan in desired.queues
                   if previous.get(plan.port) != plan or "error" in self.status.queues_applied.get(plan.port, {})]
        self.reapply_queues(changed, verify=False)

    def reapply_queues(self, plans: list[QueuePlan] | None = None, *, verify: bool = True) -> bool:
        """Make the tc trees match (again); a missing port is retried later, never fatal.
        verify=False lets the driver send a rate-only change without reading the port back."""
        if self.desired is None:
            return True
        ok = True
        for plan in self.desired.queues if plans is None else plans:
            try:
                self.status.queues_applied[plan.port] = _as_dict(self.queues.apply(plan, verify=verify))
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
            return os.stat(self.source_path).st_mtime
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
        desired = compile_loaded(self.loaded, self.in_force, self.topology, scale=self.scale, window=window)
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
            "policy_file": str(self.source_path),
            "enforced_file": str(self.policy_path),  # the last good copy while the policy file is invalid
            "last_good_file": None if self.last_good_file is None else str(self.last_good_file),
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """A policy file read once, validated and compiled: what enforcing it means."""

    path: Path
    raw: bytes  # exactly what was read (the last good copy keeps these bytes)
    mtime: float
    loaded: LoadedPolicy
    desired: DesiredState


class Unusable(Exception):
    """A policy file that cannot be enforced; `messages` are located (FILE:LINE:COL: ...)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


def prepare(path: Path, topology: Topology, *, scale: float, now: datetime) -> Prepared:
    """Read, validate and compile one policy file against the topology, or raise Unusable."""
    name = str(path)
    try:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)  # load_policy_bytes refuses more, located
                mtime = os.fstat(handle.fileno()).st_mtime
        except OSError as error:
            raise PolicyError([Issue(name, 1, 1, f"cannot read file: {error.strerror or error}")]) from None
        loaded = load_policy_bytes(raw, name)
    except PolicyError as error:
        raise Unusable([str(issue) for issue in error.issues]) from None
    desired = compile_loaded(loaded, path, topology, scale=scale, window=active_window(loaded.policy, now))
    return Prepared(path, raw, mtime, loaded, desired)


def compile_loaded(loaded: LoadedPolicy, path: str | Path, topology: Topology, *, scale: float,
                   window: str) -> DesiredState:
    """Compile a validated policy against the topology, or raise Unusable."""
    try:
        return compile_state(loaded.policy, topology, window=window, scale=scale, policy_hash=loaded.sha256)
    except ValueError as error:  # compile-time impossibilities (topology lacks an OPD, u32 limits)
        raise Unusable([f"{path}: {error}"]) from None


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file in the same directory, fsync, rename over `path`, fsync the directory:
    after a crash or a power cut `path` holds the old bytes or the new ones, never a mix."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(sep=" ", timespec="seconds")


def _as_dict(report: object) -> dict:
    if report is None:
        return {}
    if hasattr(report, "__dataclass_fields__"):
        return {name: getattr(report, name) for name in report.__dataclass_fields__}
    return dict(report) if isinstance(report, dict) else {"result": str(report)}
