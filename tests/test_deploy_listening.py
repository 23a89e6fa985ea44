"""Listening surfaces: with its defaults the daemon listens on exactly two TCP ports, OpenFlow
6653 and metrics 9733, both on loopback, and nothing else (no UDP, no other TCP). Run in a
network namespace of our own, so the default ports cannot clash with anything on the machine
and every socket in it is the daemon's. A port already taken is a one-line error."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from satupintu.commands.daemon import DEFAULT_METRICS, DEFAULT_OPENFLOW
from test_systemd_notify import TOPOLOGY  # switches that never connect, gateway ports that do not exist

REPO = Path(__file__).resolve().parents[1]


def _sockets(netns: str) -> list[tuple[str, str]]:
    """(netid, local address) of every listening TCP and every UDP socket in the namespace."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-H", "-lntu"], capture_output=True, text=True,
                         check=True, timeout=15).stdout
    return sorted((fields[0], fields[4]) for fields in (line.split() for line in out.splitlines()) if fields)


@pytest.mark.netns
@pytest.mark.parametrize("extra", [[], ["--metrics-listen", "off"]], ids=["defaults", "metrics-off"])
def test_daemon_listens_only_on_loopback_openflow_and_metrics(tmp_path: Path, netns_factory, extra: list[str]) -> None:
    netns = netns_factory("listen")
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=15)
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    status_file = tmp_path / "status.json"
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "satupintu.cli", "run",
         "--policy", str(REPO / "policies" / "minimal.yaml"), "--topology", str(tmp_path / "topology.yaml"),
         "--pid-file", str(tmp_path / "pid"), "--status-file", str(status_file), "--state-dir", str(tmp_path / "state"),
         *extra],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "daemon.log").open("w"))
    try:
        deadline = time.monotonic() + 30
        while not (status_file.exists() and json.loads(status_file.read_text()).get("generation")):
            assert daemon.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        expected = [("tcp", DEFAULT_OPENFLOW)] + ([] if extra else [("tcp", DEFAULT_METRICS)])
        assert DEFAULT_OPENFLOW == "127.0.0.1:6653" and DEFAULT_METRICS == "127.0.0.1:9733"
        assert _sockets(netns) == sorted(expected)
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


@pytest.mark.parametrize("taken", ["openflow", "metrics"])
def test_port_in_use_is_a_clear_error_not_a_traceback(tmp_path: Path, taken: str) -> None:
    """Exit 1 (systemd's Restart=on-failure retries: the old instance may still be stopping)."""
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = f"127.0.0.1:{holder.getsockname()[1]}"
        listen = {"openflow": "127.0.0.1:6813", "metrics": "127.0.0.1:9813", taken: busy}
        result = subprocess.run(
            [sys.executable, "-m", "satupintu.cli", "run", "--policy", str(REPO / "policies" / "minimal.yaml"),
             "--topology", str(tmp_path / "topology.yaml"), "--pid-file", str(tmp_path / "pid"),
             "--status-file", str(tmp_path / "status.json"), "--state-dir", str(tmp_path / "state"),
             "--openflow-listen", listen["openflow"], "--metrics-listen", listen["metrics"]],
            capture_output=True, text=True, timeout=60)
    what = "OpenFlow" if taken == "openflow" else "metrics"
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().endswith(f"satupintu: cannot listen for {what} on {busy}: Address already in use")
    assert "Traceback" not in result.stderr
