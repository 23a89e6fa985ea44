"""Bad input given to a RUNNING daemon: every file of the bad corpus (tests/data/bad, plus the
cases test_bad_corpus.py builds at run time, a deleted policy file and a directory in its
place) is saved over the policy of a live `satupintu run`, which must reject it with located
messages and leave the running policy (generation, hash) and the kernel's HTB trees exactly
as they were, without a traceback, and still apply a valid edit afterwards.

The daemon runs for real inside a private network namespace with the gateway's two ports
as veths named as in star-50 (gw-eth1, gw-eth2), so its tc driver shapes real interfaces
and its OpenFlow and metrics listeners bind that namespace's loopback (no switch connects:
flows are planned, not installed; the policy path is the same for both).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import NetnsFactory
from satupintu.emulation.observe import read_status
from satupintu.emulation.variants import edit_opd
from satupintu.policy.source import MAX_FILE_BYTES
from test_bad_corpus import BASE, CORPUS, Expectation, expectation

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "jateng-50.yaml"
TOPOLOGY = REPO / "topologies" / "star-50.yaml"
PORTS = ("gw-eth1", "gw-eth2")

BUILT: dict[str, tuple[bytes, Expectation]] = {
    "empty": (b"", Expectation(1, 1, "file is empty")),
    "nul-bytes": (b"version: 1\nname: \x7fELF\x02\x01\x01\x00\x00\x00\n", Expectation(2, 14, "binary data (NUL byte)")),
    "utf16": (BASE.decode().encode("utf-16"), Expectation(1, 1, "UTF-16")),
    "gzip": (gzip.compress(BASE), Expectation(1, 1, "")),
    "random-bytes": (bytes(range(256)) * 64, Expectation(1, 1, "binary data")),
    "oversized": (BASE + b"# " + b"x" * MAX_FILE_BYTES + b"\n", Expectation(1, 1, "larger than the 16 MiB limit")),
}


def _run(argv: list[str], check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    namespaces = NetnsFactory()
    workdir = tmp_path_factory.mktemp("input")
    process = None
    try:
        ns = namespaces("input")
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for port in PORTS:
            _run(["ip", "-n", ns, "link", "add", port, "type", "veth", "peer", "name", f"peer-{port}"])
            _run(["ip", "-n", ns, "link", "set", port, "up"])
        policy = workdir / "policy.yaml"
        policy.write_text(POLICY.read_text())
        status_file, log_file = workdir / "status.json", workdir / "daemon.log"
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "satupintu.cli", "run", "--policy", str(policy),
                 "--topology", str(TOPOLOGY), "--scale", "0.01", "--openflow-listen", "127.0.0.1:6653",
                 "--metrics-listen", "127.0.0.1:9733", "--pid-file", str(workdir / "daemon.pid"),
                 "--status-file", str(status_file), "--state-dir", str(workdir / "state")],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            status = read_status(status_file)
            queues = status.get("queues") or {}
            if status.get("generation") == 1 and len(queues) == 2 and not any("error" in q for q in queues.values()):
                break
            assert process.poll() is None and time.monotonic() < deadline, log_file.read_text()[-3000:]
            time.sleep(0.1)
        yield {"ns": ns, "policy": policy, "status_file": status_file, "log": log_file, "process": process,
               "pid": status["pid"]}
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        namespaces.cleanup()


def _kernel_state(ns: str) -> dict[str, str]:
    """Classes, leaf qdiscs and filters of both ports, without counters."""
    return {f"{what} {port}": _run(["tc", "-n", ns, what, "show", "dev", port])
            for port in PORTS for what in ("class", "qdisc", "filter")}


def _save_and_wait(daemon: dict, write) -> dict:
    """Apply `write` to the policy path and return the daemon's status once it has judged it."""
    before = (read_status(daemon["status_file"]).get("last_reload") or {}).get("at", 0)
    write(daemon["policy"])
    os.kill(daemon["pid"], signal.SIGHUP)  # `satupintu reload`; the file watch alone takes up to 0.5 s more
    deadline = time.monotonic() + 10
    while True:
        status = read_status(daemon["status_file"])
        if (status.get("last_reload") or {}).get("at", 0) > before:
            return status
        assert daemon["process"].poll() is None, "the daemon died:\n" + daemon["log"].read_text()[-3000:]
        assert time.monotonic() < deadline, "no reload outcome within 10 s"
        time.sleep(0.02)


def _atomic(content: bytes):
    def write(path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(content)
        os.replace(temporary, path)
    return write


def _restore(daemon: dict) -> None:
    path: Path = daemon["policy"]
    if path.is_dir():
        path.rmdir()
    if path.is_file() and path.read_bytes() == POLICY.read_bytes():
        return
    status = _save_and_wait(daemon, _atomic(POLICY.read_bytes()))
    assert status["last_reload"]["ok"], status["last_reload"]


def _assert_rejected_and_untouched(daemon: dict, write, expected: Expectation | None) -> None:
    """The bad files follow each other on disk (the running policy stays the valid one whatever
    the file holds); the last test restores the valid file."""
    running = read_status(daemon["status_file"])
    kernel = _kernel_state(daemon["ns"])
    if daemon["policy"].is_dir():
        daemon["policy"].rmdir()
    status = _save_and_wait(daemon, write)
    last = status["last_reload"]
    assert last["ok"] is False, "accepted"
    located = re.compile(rf"^{re.escape(str(daemon['policy']))}:(\d+):(\d+): \S")
    assert last["messages"], "rejected without a message"
    for message in last["messages"]:
        assert located.match(message), f"not located: {message!r}"
    if expected is not None:
        at = [m for m in last["messages"] if located.match(m).group(1) == str(expected.line)
              and (expected.column is None or located.match(m).group(2) == str(expected.column))]
        assert any(expected.substring in message for message in at), (expected, last["messages"])
    assert (status["generation"], status["policy_sha256"]) == (running["generation"], running["policy_sha256"])
    assert status["reloads_failed"] == running["reloads_failed"] + 1
    assert _kernel_state(daemon["ns"]) == kernel, "the HTB trees changed"


@pytest.mark.parametrize("path", CORPUS, ids=[path.name for path in CORPUS])
def test_a_bad_file_saved_over_the_running_policy_changes_nothing(daemon: dict, path: Path) -> None:
    _assert_rejected_and_untouched(daemon, _atomic(path.read_bytes()), expectation(path))


@pytest.mark.parametrize("name", sorted(BUILT))
def test_a_bad_built_file_saved_over_the_running_policy_changes_nothing(daemon: dict, name: str) -> None:
    content, expected = BUILT[name]
    _assert_rejected_and_untouched(daemon, _atomic(content), expected if expected.substring else None)


def test_a_deleted_policy_or_a_directory_in_its_place_changes_nothing(daemon: dict) -> None:
    _assert_rejected_and_untouched(daemon, lambda path: path.unlink(), Expectation(1, 1, "cannot read file"))

    def directory(path: Path) -> None:
        path.unlink(missing_ok=True)
        path.mkdir()

    _assert_rejected_and_untouched(daemon, directory, Expectation(1, 1, "cannot read file"))


def test_a_file_written_in_place_in_two_halves_is_rejected_then_applied(daemon: dict) -> None:
    """An editor that writes in place: the daemon may see the first half; it must never apply it."""
    text = POLICY.read_bytes()
    half = text.index(b"download: {", len(text) // 2) + 20
    _assert_rejected_and_untouched(daemon, lambda path: path.write_bytes(text[:half]), None)


def test_a_policy_written_in_place_slowly_is_applied_once_whole_never_half(daemon: dict) -> None:
    """Written in place in 16 pieces 60 ms apart, each cut at an OPD boundary: every piece the
    watch could see is a VALID policy lacking the OPDs after the cut. The daemon (polling every
    0.5 s) must wait until the file settles and apply only the whole file, once."""
    _restore(daemon)
    whole = edit_opd(POLICY.read_text(), "SETWAN", "ceiling: 1Gbps", "ceiling: 500Mbps").encode()
    cuts = [index for index in range(len(whole)) if whole.startswith(b"\n  - id: ", index)][4::3][:16]
    running = read_status(daemon["status_file"])
    try:
        with open(daemon["policy"], "r+b") as handle:
            handle.truncate(0)
            written = 0
            for cut in [*cuts, len(whole)]:
                handle.write(whole[written:cut + 1])
                handle.flush()
                written = cut + 1
                time.sleep(0.06)
        deadline = time.monotonic() + 5
        while (status := read_status(daemon["status_file"]))["reloads_ok"] == running["reloads_ok"]:
            assert time.monotonic() < deadline, "the whole file was never applied"
            time.sleep(0.05)
        time.sleep(1.0)  # anything applied late would show now
        status = read_status(daemon["status_file"])
    finally:
        _restore(daemon)
    assert len(cuts) == 16
    assert status["reloads_ok"] == running["reloads_ok"] + 1, "a partly written policy was applied"
    assert status["reloads_failed"] == running["reloads_failed"]
    assert status["policy_sha256"] == hashlib.sha256(whole).hexdigest()


def test_tc_trees_damaged_behind_the_daemons_back_are_repaired(daemon: dict) -> None:
    """`tc qdisc del` on one port (a NIC reset or a re-created interface does the same) and a
    class changed by hand on the other: within VERIFY_QUEUES_S (5 s) + the 1 s loop both match
    their plans again, without a policy change."""
    ns = daemon["ns"]
    kernel = _kernel_state(ns)
    _run(["tc", "-n", ns, "qdisc", "del", "dev", "gw-eth1", "root"])
    _run(["tc", "-n", ns, "class", "change", "dev", "gw-eth2", "classid", "1:10", "htb", "rate", "1mbit",
          "ceil", "1mbit"])
    damaged_at = time.monotonic()
    assert _kernel_state(ns) != kernel
    while _kernel_state(ns) != kernel:
        assert time.monotonic() - damaged_at < 12, "the tc trees were not repaired"
        time.sleep(0.2)
    print(f"tc trees repaired {time.monotonic() - damaged_at:.1f} s after the damage")
    assert "had drifted from its plan" in daemon["log"].read_text()


def test_after_all_that_a_valid_edit_applies_and_nothing_raised(daemon: dict) -> None:
    running = read_status(daemon["status_file"])
    edited = edit_opd(POLICY.read_text(), "SETWAN", "ceiling: 1Gbps", "ceiling: 500Mbps").encode()
    if daemon["policy"].is_dir():
        daemon["policy"].rmdir()
    try:
        status = _save_and_wait(daemon, _atomic(edited))
        classes = _run(["tc", "-n", daemon["ns"], "class", "show", "dev", "gw-eth1", "classid", "1:10"])
    finally:
        _restore(daemon)
    assert status["last_reload"]["ok"] and status["generation"] == running["generation"] + 1
    assert "ceil 5Mbit" in classes, classes  # SETWAN (opd 2, class 1:10): 500 Mbps at scale 1/100
    log = daemon["log"].read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 200:][:3000]
    assert log.count("rejected; the running policy stays") == status["reloads_failed"]
