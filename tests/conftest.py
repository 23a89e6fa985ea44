"""Shared fixtures, and the policy for tests that depend on the machine.

Markers (declared in pyproject.toml):

- ``emulation``: needs root, Open vSwitch answering (ovsdb-server and ovs-vswitchd), Mininet
  importable with ``mnexec`` on PATH, and iperf3.
- ``netns``: needs root and ``ip netns``.

When a requirement is missing such a test is skipped with the reason, except under CI
(``CI=true``), where it fails: in CI a missing dependency is a broken set-up, never a silent
skip. ``scripts/setup.sh`` (``sudo make setup``) installs and starts everything.

Fixtures that create machine state (OVS bridges, network namespaces) give them unique names
and remove exactly those names at teardown: no broad clean-up, never ``mn -c``.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 15  # seconds for one ovs-vsctl / ip command

_bridge_counter = itertools.count()
_netns_counter = itertools.count()


# ---- environment policy ---------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _run_ok(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=TIMEOUT).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _missing_root() -> list[str]:
    return [] if os.geteuid() == 0 else ["not running as root"]


def missing_for_emulation() -> list[str]:
    """What the ``emulation`` marker needs and this machine lacks (empty when all is there)."""
    missing = _missing_root()
    if shutil.which("ovs-vsctl") is None:
        missing.append("Open vSwitch is not installed (ovs-vsctl not on PATH)")
    elif not _run_ok(["ovs-vsctl", "--timeout=5", "show"]):
        missing.append("ovsdb-server does not answer (`ovs-vsctl show` failed)")
    elif not _run_ok(["ovs-appctl", "--timeout=5", "-t", "ovs-vswitchd", "version"]):
        missing.append("ovs-vswitchd does not answer")
    try:
        importlib.import_module("mininet.net")
    except Exception as error:  # ImportError, or Mininet failing at import time
        missing.append(f"Mininet is not importable ({error.__class__.__name__}: {error})")
    if shutil.which("mnexec") is None:
        missing.append("mnexec not on PATH (Debian package mininet)")
    elif not _run_ok(["mnexec", "-n", "true"]):
        # Mininet hangs (rather than failing) when its hosts' shells cannot start.
        missing.append("`mnexec -n true` failed: Mininet cannot create host namespaces here")
    if shutil.which("iperf3") is None:
        missing.append("iperf3 not on PATH")
    return missing


def missing_for_netns() -> list[str]:
    """What the ``netns`` marker needs and this machine lacks (empty when all is there)."""
    missing = _missing_root()
    if shutil.which("ip") is None:
        missing.append("iproute2 is not installed (ip not on PATH)")
    elif not _run_ok(["ip", "netns", "list"]):
        missing.append("`ip netns list` failed")
    return missing


def enforce_requirements(kind: str, missing: list[str], ci: bool | None = None) -> None:
    """Skip (locally) or fail (CI) when ``missing`` is not empty."""
    if not missing:
        return
    reason = f"{kind} test needs: " + "; ".join(missing) + " (run `sudo make setup`)"
    if in_ci() if ci is None else ci:
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    pytest.skip(reason)


_cache: dict[str, list[str]] = {}


def _missing_cached(kind: str, probe: Callable[[], list[str]]) -> list[str]:
    # Probed once per session when all is there; a missing requirement is probed again, so a
    # test that is skipped early does not hide OVS coming up later.
    if _cache.get(kind) != []:
        _cache[kind] = probe()
    return _cache[kind]


def require_emulation() -> None:
    enforce_requirements("emulation", _missing_cached("emulation", missing_for_emulation))


def require_netns() -> None:
    enforce_requirements("netns", _missing_cached("netns", missing_for_netns))


def pytest_configure(config: pytest.Config) -> None:
    # Mininet 2.3.0.dev6 compares OVS versions with distutils' StrictVersion.
    config.addinivalue_line("filterwarnings", "ignore:distutils Version classes:DeprecationWarning")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("emulation") is not None:
        require_emulation()
    if item.get_closest_marker("netns") is not None:
        require_netns()


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


HOST_LAST_GOOD = Path("/var/lib/satupintu/last-good-policy.yaml")  # `satupintu run`'s default --state-dir


@pytest.fixture(scope="session", autouse=True)
def host_state_untouched() -> Iterator[None]:
    """Every daemon a test starts keeps its last good policy in the test's own directory: a copy
    left in the host's state directory would be enforced by the next `satupintu run` there."""
    before = HOST_LAST_GOOD.stat().st_mtime_ns if HOST_LAST_GOOD.exists() else None
    yield
    after = HOST_LAST_GOOD.stat().st_mtime_ns if HOST_LAST_GOOD.exists() else None
    assert after == before, f"a test wrote {HOST_LAST_GOOD}: pass --state-dir to every `satupintu run`"


def _check(argv: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


class _CreatedByName:
    """Remembers what a test created, by name, and deletes exactly that at teardown."""

    what = "test resources"

    def __init__(self) -> None:
        self.created: list[str] = []

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        errors = []
        for name in reversed(self.created[:]):
            try:
                self.remove(name)
            except Exception as error:
                errors.append(str(error))
        if errors:
            raise RuntimeError(f"could not delete {self.what}: " + "; ".join(errors))


class OvsBridgeFactory(_CreatedByName):
    """Creates userspace (netdev) OVS bridges named ``sptest<pid%1000><n>`` and deletes exactly
    those at teardown. ``fail_mode=secure``: nothing forwards until flows are installed."""

    def _new_name(self) -> str:
        prefix = f"sptest{os.getpid() % 1000}"
        while True:
            name = f"{prefix}{next(_bridge_counter)}"
            if len(name) > 15:  # IFNAMSIZ - 1: the bridge's internal port has the same name
                raise RuntimeError("ran out of OVS bridge names")
            if not _run_ok(["ovs-vsctl", "--timeout=5", "br-exists", name]):
                return name

    def __call__(self, protocols: str | None = "OpenFlow13", controller: str | None = None,
                 fail_mode: str = "secure") -> str:
        name = self._new_name()
        self.created.append(name)  # before add-br: a timed-out add-br may still leave the row
        argv = ["ovs-vsctl", f"--timeout={TIMEOUT}", "add-br", name, "--", "set", "bridge", name,
                "datapath_type=netdev", f"fail_mode={fail_mode}"]
        if protocols:
            argv.append(f"protocols={protocols}")
        if controller:
            argv += ["--", "set-controller", name, controller]
        _check(argv)
        return name

    def remove(self, name: str) -> None:
        if name not in self.created:
            raise ValueError(f"{name} was not created by this factory")
        _check(["ovs-vsctl", f"--timeout={TIMEOUT}", "--if-exists", "del-br", name])
        self.created.remove(name)

    what = "test bridges"


@pytest.fixture
def ovs_bridge_factory() -> Iterator[OvsBridgeFactory]:
    """``make = ovs_bridge_factory; name = make()``; ``make.remove(name)`` deletes one early."""
    factory = OvsBridgeFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


class NetnsFactory(_CreatedByName):
    """Creates network namespaces named ``sptest-<pid>-<n>[-label]`` and deletes exactly those
    at teardown (their veths go with them)."""

    def __call__(self, label: str = "") -> str:
        existing = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                      timeout=TIMEOUT).stdout.split())
        while True:
            name = f"sptest-{os.getpid()}-{next(_netns_counter)}" + (f"-{label}" if label else "")
            if name not in existing:
                break
        self.created.append(name)
        _check(["ip", "netns", "add", name])
        return name

    def remove(self, name: str) -> None:
        if name not in self.created:
            raise ValueError(f"{name} was not created by this factory")
        if Path("/run/netns", name).exists():
            _check(["ip", "netns", "delete", name])
        self.created.remove(name)

    what = "test namespaces"


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    """``make = netns_factory; ns = make("client")``; deleted at teardown."""
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


# ---- emulation runs ---------------------------------------------------------------------------


@contextlib.contextmanager
def emulation_process(workdir: Path, *options: str, timeout_s: float = 180.0,
                      env: dict[str, str] | None = None) -> Iterator[dict]:
    """`satupintu emulate OPTIONS` as a child process (pass your own --switch-prefix and ports):
    yields its ready-file JSON once enforcement is active; stops it with SIGTERM afterwards and
    fails the test if it did not exit cleanly."""
    ready_file = workdir / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "satupintu.cli", "emulate", *options, "--ready-file", str(ready_file),
         "--workdir", str(workdir / "controller")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"emulation did not become ready:\n{process.communicate()[0][-4000:]}")
        time.sleep(0.2)
    ready = json.loads(ready_file.read_text())
    try:
        yield ready
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
        assert process.returncode == 0, output[-3000:]
        left = set(ready.get("switches", {})) & set(
            subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout.split())
        assert not left, f"emulation left its bridges behind: {sorted(left)}"
