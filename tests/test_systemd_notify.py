"""sd_notify for real: a test binds the AF_UNIX datagram socket systemd would, starts the real
daemon with NOTIFY_SOCKET and WATCHDOG_USEC, and reads what arrives: READY after the first
enforcement, WATCHDOG at half the interval, RELOADING/READY around reloads (accepted and
rejected), STOPPING; and no WATCHDOG while the main loop is wedged on an unreadable policy file.

The daemon's topology has switches that never connect and gateway ports that do not exist
(it keeps retrying them): nothing on the machine is touched. Ports: OpenFlow 6813, metrics 9813.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from satupintu.drivers.systemd_notify import SystemdNotifier, watchdog_interval_s

REPO = Path(__file__).resolve().parents[1]
OPENFLOW = "127.0.0.1:6813"
METRICS = "127.0.0.1:9813"
TOPOLOGY = """\
name: notify-test
switches:
  - {name: dngw, dpid: 901}
  - {name: dncore, dpid: 902}
links:
  - {a: dngw, a_port: 1, b: dncore, b_port: 1}
upstream: {switch: dngw, port: 2, backbone_port: 1}
attach:
  - {switch: dncore, owners: "1-3,900"}
"""
Message = dict[str, str]


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; a thread collects every message."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, Message]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def since(self, start: int) -> list[tuple[float, Message]]:
        with self._lock:
            return self.messages[start:]

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_for(self, predicate: Callable[[Message], bool], after: int = 0, timeout: float = 30.0) -> int:
        """Index of the first message at or after `after` that matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (_, fields) in enumerate(self.since(after), start=after):
                if predicate(fields):
                    return index
            time.sleep(0.05)
        raise AssertionError(f"no matching notify message within {timeout}s; got {[m for _, m in self.since(after)]}")

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    listener = NotifySocket(path)
    try:
        yield path, listener
    finally:
        listener.close()


# ---------------------------------------------------------------- the module alone


def test_messages_reach_a_path_socket_and_an_abstract_one(notify_socket: tuple[str, NotifySocket]) -> None:
    path, listener = notify_socket
    SystemdNotifier({"NOTIFY_SOCKET": path}).ready("policy generation 1")
    index = listener.wait_for(lambda m: m.get("READY") == "1", timeout=5)
    assert listener.since(index)[0][1] == {"READY": "1", "STATUS": "policy generation 1", "MAINPID": str(os.getpid())}

    name = f"satupintu-test-{os.getpid()}"
    abstract = NotifySocket(b"\0" + name.encode())
    try:
        SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        abstract.wait_for(lambda m: m.get("STOPPING") == "1", timeout=5)
    finally:
        abstract.close()


def test_status_is_sent_only_when_it_changes_and_watchdog_only_when_due(
        notify_socket: tuple[str, NotifySocket]) -> None:
    path, listener = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
    for text in ("a", "a", "b", "b"):
        notifier.status(text)
    notifier.watchdog()
    notifier.watchdog()  # 30 s early: not sent
    listener.wait_for(lambda m: "WATCHDOG" in m, timeout=5)
    time.sleep(0.3)
    assert [m for _, m in listener.since(0)] == [{"STATUS": "a"}, {"STATUS": "b"}, {"WATCHDOG": "1"}]
    assert 29 < (notifier.watchdog_due_in() or 0) <= 30


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    me = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000"}) == 1.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": me}) == 1.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    for value in ("0", "", "soon", "-5"):
        assert watchdog_interval_s({"WATCHDOG_USEC": value}) is None
    assert watchdog_interval_s({}) is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and not notifier.send("READY=1")
    assert notifier.watchdog_due_in() is None


# ---------------------------------------------------------------- the real daemon


def _start_daemon(tmp_path: Path, notify_path: str, watchdog_usec: int, **settings: str) -> subprocess.Popen:
    """`satupintu run` configured only through SATUPINTU_* variables, as the unit does."""
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    policy = tmp_path / "policy.yaml"
    if not policy.exists():
        policy.write_text((REPO / "policies" / "minimal.yaml").read_text())
    env = {key: value for key, value in os.environ.items() if not key.startswith("SATUPINTU_")}
    env.update({
        "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": str(watchdog_usec),
        "SATUPINTU_POLICY": str(policy), "SATUPINTU_TOPOLOGY": str(tmp_path / "topology.yaml"),
        "SATUPINTU_OPENFLOW_LISTEN": OPENFLOW, "SATUPINTU_METRICS_LISTEN": METRICS,
        "SATUPINTU_PID_FILE": str(tmp_path / "pid"), "SATUPINTU_STATUS_FILE": str(tmp_path / "status.json"),
        "SATUPINTU_STATE_DIR": str(tmp_path / "state"),
        **settings,
    })
    return subprocess.Popen([sys.executable, "-m", "satupintu.cli", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "daemon.log").open("w"))


def _stop(daemon: subprocess.Popen) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(timeout=10)
        raise


def _watchdogs(messages: list[tuple[float, Message]]) -> list[float]:
    return [at for at, fields in messages if fields.get("WATCHDOG") == "1"]


def _reload(tmp_path: Path, pid: int) -> subprocess.CompletedProcess[str]:
    """What ExecReload runs."""
    return subprocess.run([sys.executable, "-m", "satupintu.cli", "reload", "--pid", str(pid),
                           "--status-file", str(tmp_path / "status.json"), "--timeout", "20"],
                          capture_output=True, text=True, timeout=60)


def test_daemon_notifies_ready_watchdog_reloads_and_stopping(
        tmp_path: Path, notify_socket: tuple[str, NotifySocket]) -> None:
    path, listener = notify_socket
    # JOURNAL_STREAM: systemd connected stderr to the journal.
    daemon = _start_daemon(tmp_path, path, 2_000_000, SATUPINTU_NO_WATCH="yes", JOURNAL_STREAM="8:12345")
    try:
        ready = listener.wait_for(lambda m: m.get("READY") == "1")
        status = listener.since(ready)[0][1]["STATUS"]
        assert status.startswith("policy generation 1 (") and "switches in sync 0/2" in status, status
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=10) as response:
            assert response.status == 200  # the SATUPINTU_METRICS_LISTEN address

        time.sleep(3.5)
        beats = _watchdogs(listener.since(ready))
        assert len(beats) >= 3, beats
        gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
        print(f"watchdog every {min(gaps):.2f}-{max(gaps):.2f} s (WATCHDOG_USEC 2 s)")
        assert max(gaps) < 2.0, gaps  # systemd would kill the service at 2 s

        mark = listener.count()
        accepted = _reload(tmp_path, daemon.pid)
        assert accepted.returncode == 0 and "reloaded: generation 2" in accepted.stdout, accepted
        reloading = listener.wait_for(lambda m: m.get("RELOADING") == "1", after=mark)
        assert int(listener.since(reloading)[0][1]["MONOTONIC_USEC"]) > 0
        ready = listener.wait_for(lambda m: m.get("READY") == "1", after=reloading)
        assert listener.since(ready)[0][1]["STATUS"].startswith("policy generation 2 ("), listener.since(ready)

        policy = tmp_path / "policy.yaml"
        policy.write_text(policy.read_text().replace("ceiling: 80Mbps", "ceiling: 8Mbps", 1))
        mark = listener.count()
        rejected = _reload(tmp_path, daemon.pid)
        assert rejected.returncode == 2 and "policy.yaml:" in rejected.stderr, rejected
        reloading = listener.wait_for(lambda m: m.get("RELOADING") == "1", after=mark)
        ready = listener.wait_for(lambda m: m.get("READY") == "1", after=reloading)
        status = listener.since(ready)[0][1]["STATUS"]
        assert status.startswith("policy generation 2 (") and "REJECTED" in status, status

        mark = listener.count()
        assert _stop(daemon) == 0
        listener.wait_for(lambda m: m.get("STOPPING") == "1", after=mark, timeout=5)
        # For the journal: syslog priority prefixes (journalctl -p), no second timestamp.
        log = (tmp_path / "daemon.log").read_text().splitlines()
        assert "<6>INFO satupintu.daemon: OpenFlow listening on 127.0.0.1:6813" in log, log[:20]
        assert any(line.startswith("<4>WARNING satupintu.enforcer: cannot shape dngw-eth") for line in log), log
        assert any(line.startswith("<3>ERROR satupintu.enforcer: policy reload (SIGHUP) rejected") for line in log)
    finally:
        _stop(daemon)


def test_watchdog_stops_while_the_main_loop_is_wedged_and_resumes_after(
        tmp_path: Path, notify_socket: tuple[str, NotifySocket]) -> None:
    """The policy file is swapped for a FIFO nobody writes (like a hung network mount): the
    reload blocks reading it. The OpenFlow listener still accepts, yet no WATCHDOG=1 comes."""
    path, listener = notify_socket
    daemon = _start_daemon(tmp_path, path, 1_000_000)  # watches the policy file
    policy = tmp_path / "policy.yaml"
    text = policy.read_text()
    try:
        ready = listener.wait_for(lambda m: m.get("READY") == "1")
        listener.wait_for(lambda m: m.get("WATCHDOG") == "1", after=ready)

        fifo = tmp_path / "policy.fifo"
        os.mkfifo(fifo)
        os.replace(fifo, policy)
        wedged = listener.wait_for(lambda m: m.get("RELOADING") == "1", after=ready, timeout=10)
        time.sleep(2.5)  # five watchdog intervals
        host, port = OPENFLOW.split(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # os-ken's threads are alive: only the main loop is stuck
        assert daemon.poll() is None
        assert _watchdogs(listener.since(wedged)) == [], listener.since(wedged)

        with policy.open("w") as writer:  # unblocks the reader
            writer.write(text)
        resumed = listener.wait_for(lambda m: m.get("READY") == "1", after=wedged, timeout=10)
        listener.wait_for(lambda m: m.get("WATCHDOG") == "1", after=resumed, timeout=5)
        assert listener.since(resumed)[0][1]["STATUS"].startswith("policy generation 2 (")
    finally:
        if policy.is_fifo():
            # A reader may still be blocked on it: open it non-blocking for writing to release it.
            with contextlib.suppress(OSError):
                os.close(os.open(policy, os.O_WRONLY | os.O_NONBLOCK))
        _stop(daemon)
