"""The last good policy, with the real daemon: every policy applied is copied, byte for byte, to
STATE_DIR/last-good-policy.yaml (a rejected one is not); a daemon (re)started while the policy
file is invalid enforces that copy, says so (log, status, metrics, a failed reload) and applies
the file once it is fixed; without a usable copy it exits 2 as before; a state directory it
cannot write is a warning, once. And a SIGHUP wakes the main loop at once.

The daemon is test_systemd_notify's (`satupintu run` configured through SATUPINTU_* variables,
a topology whose switches never connect and whose tc ports do not exist: nothing on the machine
is touched), without a notify socket. Ports: OpenFlow 6791-6796, metrics 9791-9796.
"""

from __future__ import annotations

import hashlib
import os
import signal
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from satupintu.emulation.observe import read_status
from satupintu.enforcer import LAST_GOOD_NAME
from satupintu.policy.load import load_policy
from test_reliability_input import _atomic, _save_and_wait
from test_systemd_notify import _start_daemon, _stop

REPO = Path(__file__).resolve().parents[1]
VALID = (REPO / "policies" / "minimal.yaml").read_bytes()
# Valid edits and a broken one (a guarantee above its ceiling, at a known line and column).
EDITED = VALID.replace(b"ceiling: 40Mbps", b"ceiling: 45Mbps", 1)
BROKEN = VALID.replace(b"ceiling: 80Mbps", b"ceiling: 8Mbps", 1)
BROKEN_LINE = VALID[:VALID.index(b"ceiling: 80Mbps")].count(b"\n") + 1
BROKEN_AT = f":{BROKEN_LINE}:"
assert EDITED != VALID and BROKEN != VALID


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., dict]]:
    """`run(port, state_dir, policy=bytes)` starts the daemon; every one started is stopped."""
    started = []

    def start(port: int, state: Path, policy: bytes | None = None) -> dict:
        if policy is not None:
            (tmp_path / "policy.yaml").write_bytes(policy)
        process = _start_daemon(tmp_path, "", 0, SATUPINTU_OPENFLOW_LISTEN=f"127.0.0.1:{6790 + port}",
                                SATUPINTU_METRICS_LISTEN=f"127.0.0.1:{9790 + port}", SATUPINTU_STATE_DIR=str(state))
        started.append(process)
        return {"process": process, "pid": process.pid, "policy": tmp_path / "policy.yaml",
                "status_file": tmp_path / "status.json", "log": tmp_path / "daemon.log",
                "metrics": f"http://127.0.0.1:{9790 + port}/metrics", "copy": state / LAST_GOOD_NAME}

    try:
        yield start
    finally:
        for process in started:
            _stop(process)


def _wait(daemon: dict, ready: Callable[[dict], bool], timeout: float = 30) -> dict:
    """The status of THIS daemon (not one killed before it) once `ready` says so."""
    deadline = time.monotonic() + timeout
    while not ((status := read_status(daemon["status_file"])).get("pid") == daemon["pid"] and ready(status)):
        assert daemon["process"].poll() is None, "the daemon exited:\n" + daemon["log"].read_text()[-3000:]
        assert time.monotonic() < deadline, f"status never got there: {status}"
        time.sleep(0.05)
    return status


def _generation(number: int) -> Callable[[dict], bool]:
    return lambda status: status.get("generation") == number


def _policy_metrics(daemon: dict) -> list[str]:
    with urllib.request.urlopen(daemon["metrics"], timeout=10) as response:
        return [line for line in response.read().decode().splitlines() if line.startswith("satupintu_policy")]


def test_every_applied_policy_is_copied_exactly_and_a_rejected_one_is_not(run, tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"  # created by the daemon
    original = b"\xef\xbb\xbf" + VALID.replace(b"\n", b"\r\n") + b"# kept as written\r\n"  # BOM, CRLF
    daemon = run(1, state, original)
    _wait(daemon, _generation(1))
    assert daemon["copy"].read_bytes() == original
    first = daemon["copy"].stat()

    same = _save_and_wait(daemon, lambda path: None)  # a SIGHUP, the file unchanged
    assert same["last_reload"]["ok"] and same["generation"] == 2
    assert (daemon["copy"].stat().st_ino, daemon["copy"].stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns), \
        "rewritten although the policy did not change"

    rejected = _save_and_wait(daemon, _atomic(BROKEN))
    assert not rejected["last_reload"]["ok"] and rejected["generation"] == 2
    assert daemon["copy"].read_bytes() == original

    applied = _save_and_wait(daemon, _atomic(EDITED))
    assert applied["last_reload"]["ok"] and applied["generation"] == 3
    assert daemon["copy"].read_bytes() == EDITED
    assert applied["policy_sha256"] == hashlib.sha256(EDITED).hexdigest()
    assert sorted(path.name for path in state.iterdir()) == [LAST_GOOD_NAME], "temporary files left behind"
    assert (applied["enforced_file"], applied["last_good_file"]) == (str(daemon["policy"]), str(daemon["copy"]))
    assert "cannot keep the last good policy" not in daemon["log"].read_text()


def test_a_restart_with_a_broken_policy_enforces_the_last_good_copy_until_it_is_fixed(run, tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = run(2, state, VALID)
    good = _wait(daemon, _generation(1))
    daemon["process"].send_signal(signal.SIGKILL)  # a crash; then a broken edit, then the restart
    daemon["process"].wait(timeout=20)
    (tmp_path / "policy.yaml").write_bytes(BROKEN)

    daemon = run(2, state)
    status = _wait(daemon, _generation(1))
    copy_sha = load_policy(daemon["copy"]).sha256
    assert status["policy_sha256"] == copy_sha == good["policy_sha256"]
    assert (status["enforced_file"], status["policy_file"]) == (str(daemon["copy"]), str(daemon["policy"]))
    assert (status["reloads_ok"], status["reloads_failed"]) == (0, 1)
    assert status["last_reload"]["ok"] is False and status["last_reload"]["reason"] == "startup"
    assert any(message.startswith(f"{daemon['policy']}{BROKEN_AT}") for message in status["last_reload"]["messages"])
    log = daemon["log"].read_text()
    assert f"ERROR satupintu.enforcer: {daemon['policy']} is invalid" in log, log
    assert f"enforcing the last good copy {daemon['copy']} instead" in log and f"(sha256 {copy_sha[:12]})" in log
    assert f"{daemon['policy']}{BROKEN_AT}" in log and "Traceback" not in log
    metrics = _policy_metrics(daemon)
    assert 'satupintu_policy_reloads_total{result="failed"} 1' in metrics, metrics
    assert "satupintu_policy_last_reload_success 0" in metrics, metrics  # SatuPintuPolicyReloadFailed fires
    written = daemon["copy"].stat().st_mtime  # when that policy was last applied, not 0 (1970)
    assert any(line.startswith("satupintu_policy_last_good_reload_timestamp_seconds ")
               and abs(float(line.split()[1]) - written) < 0.01 for line in metrics), metrics
    assert any(line.startswith("satupintu_policy_info{") and f'file="{daemon["copy"]}"' in line
               and copy_sha in line for line in metrics), metrics
    time.sleep(1.0)
    assert daemon["process"].poll() is None
    assert daemon["copy"].read_bytes() == VALID, "the broken file replaced the last good copy"

    fixed = _save_and_wait(daemon, _atomic(EDITED))
    assert fixed["last_reload"]["ok"] and fixed["generation"] == 2
    assert fixed["policy_sha256"] == hashlib.sha256(EDITED).hexdigest()
    assert fixed["enforced_file"] == str(daemon["policy"])
    assert daemon["copy"].read_bytes() == EDITED
    metrics = _policy_metrics(daemon)
    assert "satupintu_policy_last_reload_success 1" in metrics
    assert any(line.startswith("satupintu_policy_info{") and f'file="{daemon["policy"]}"' in line for line in metrics)


@pytest.mark.parametrize("copy", [None, b"version: 1\nname: [\n",
                                  (REPO / "policies" / "jateng-50.yaml").read_bytes()],
                         ids=["no copy", "invalid copy", "copy that does not compile against the topology"])
def test_a_broken_policy_without_a_usable_copy_still_exits_2(run, tmp_path: Path, copy: bytes | None) -> None:
    state = tmp_path / "state"
    if copy is not None:
        state.mkdir()
        (state / LAST_GOOD_NAME).write_bytes(copy)
    daemon = run(3, state, BROKEN)
    assert daemon["process"].wait(timeout=60) == 2
    err = daemon["log"].read_text()
    assert f"{daemon['policy']}{BROKEN_AT}" in err and f"{daemon['policy']}: invalid (" in err, err
    assert "Traceback" not in err and not (tmp_path / "status.json").exists()
    if copy is None:
        assert f"no last good copy of the policy ({state / LAST_GOOD_NAME})" in err, err
    else:
        assert f"the last good copy {state / LAST_GOOD_NAME} cannot be enforced instead either:" in err, err
        why = err.split("instead either:")[1]
        expected = f"{state / LAST_GOOD_NAME}:" if b"name: [" in copy else "does not attach: "
        assert expected in why, err
        assert (state / LAST_GOOD_NAME).read_bytes() == copy


def test_a_state_directory_that_cannot_be_written_is_one_warning(run, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    daemon = run(4, blocker / "state")
    _wait(daemon, _generation(1))
    for text in (EDITED, VALID):
        assert _save_and_wait(daemon, _atomic(text))["last_reload"]["ok"]
    time.sleep(0.5)
    assert daemon["process"].poll() is None
    warnings = [line for line in daemon["log"].read_text().splitlines() if "cannot keep the last good policy" in line]
    assert len(warnings) == 1, warnings
    assert "WARNING" in warnings[0] and "Not a directory" in warnings[0] and str(blocker) in warnings[0]


def test_sighup_wakes_the_main_loop_at_once(run, tmp_path: Path) -> None:
    """The loop sleeps up to POLL_SECONDS (0.5 s) between file checks; a signal ends the sleep.
    Measured: from the signal to the start of the reload (the record's end minus its duration,
    so neither the reload's own time nor this test's polling counts): under 1 ms here, where
    the old sleep gave 0-0.5 s. The median of 7 against 0.1 s leaves room for a loaded machine;
    the old loop passes it with probability ~3%."""
    daemon = run(5, tmp_path / "state", VALID)
    _wait(daemon, _generation(1))
    delays = []
    for attempt in range(7):
        time.sleep(0.05 + 0.07 * attempt)  # at different points of the 0.5 s poll
        sent = time.time()
        status = _save_and_wait(daemon, lambda path: None)
        delays.append(status["last_reload"]["at"] - status["last_reload"]["duration_s"] - sent)
    print("SIGHUP to reload start (s):", " ".join(f"{delay:.4f}" for delay in delays))
    assert statistics.median(delays) < 0.1, delays

    before = read_status(daemon["status_file"])["generation"]
    for _ in range(200):  # a storm: coalesced, and nothing wedges
        os.kill(daemon["pid"], signal.SIGHUP)
    after = _save_and_wait(daemon, lambda path: None)
    assert before < after["generation"] <= before + 201
    assert _stop(daemon["process"]) == 0


@pytest.mark.parametrize("with_copy", [False, True], ids=["no copy: exit 2", "copy: enforced"])
def test_a_valid_policy_that_does_not_compile_against_the_topology_is_not_started_with(
        run, tmp_path: Path, with_copy: bool) -> None:
    """jateng-50 is valid but names OPDs this topology does not attach: never run with nothing in force."""
    state = tmp_path / "state"
    if with_copy:
        state.mkdir()
        (state / LAST_GOOD_NAME).write_bytes(VALID)
    daemon = run(5, state, (REPO / "policies" / "jateng-50.yaml").read_bytes())
    if not with_copy:
        assert daemon["process"].wait(timeout=60) == 2
        err = daemon["log"].read_text()
        assert f"{daemon['policy']}: topology" in err and "does not attach: " in err, err
        assert f"no last good copy of the policy ({state / LAST_GOOD_NAME})" in err and "Traceback" not in err
        return
    status = _wait(daemon, _generation(1))
    assert status["enforced_file"] == str(daemon["copy"]) and status["reloads_failed"] == 1
    assert any("does not attach: " in message for message in status["last_reload"]["messages"]), status
