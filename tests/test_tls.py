"""OpenFlow over TLS (issue 5 item 2): certificates made here with the openssl CLI, Open vSwitch
connecting over `ssl:`, and the switches and controllers that must be refused.

Open vSwitch's SSL settings (`ovs-vsctl set-ssl`) are global to the switch daemon: a test sets
them for its run and restores what was there before (other bridges use tcp: and do not care).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from satupintu.compile.plan import FlowSpec, RuleKind, SwitchPlan, flow_cookie
from satupintu.drivers.openflow import plans_to_json
from satupintu.drivers.tls import TlsConfigError, accept, server_context
from satupintu.emulation.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
TLS_PORT = 6824  # assigned to the security tests
TIMEOUT = 15
OFP_VERSION_1_3, OFPT_HELLO = 4, 0
OPENFLOW_HELLO = struct.pack("!BBHI", OFP_VERSION_1_3, OFPT_HELLO, 8, 1)
DPID = 0x5354_0000_0000 | os.getpid() % 0x10000


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """Two CAs: `ca` signs the controller and the genuine switch, `rogue_ca` an impostor of each."""

    dir: Path

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}.key")

    def cert(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")


def _openssl(*argv: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *argv], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"openssl {' '.join(argv)}: {result.stderr}"


def _new_key_args(name: str) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key"]


def make_pki(directory: Path) -> Pki:
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", *_new_key_args(ca), "-out", f"{ca}.pem", "-days", "2", "-subj",
                 f"/CN=satupintu test {ca}", cwd=directory)
    for name, ca in (("controller", "ca"), ("switch", "ca"), ("rogue-switch", "rogue-ca"),
                     ("rogue-controller", "rogue-ca")):
        _openssl("req", *_new_key_args(name), "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", cwd=directory)
    return Pki(directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ---------------------------------------------------------------- the controller's TLS context (no switch)


def test_server_context_requires_switch_certificates_from_the_ca(pki: Pki) -> None:
    context = server_context(pki.key("controller"), pki.cert("controller"), pki.cert("ca"))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(("files", "message"), [
    (("missing.key", "controller.pem", "ca.pem"), "TLS private key {dir}/missing.key: cannot read it: No such file"),
    (("controller.key", "missing.pem", "ca.pem"), "TLS certificate {dir}/missing.pem: cannot read it"),
    (("controller.key", "controller.pem", "missing.pem"), "TLS CA certificate {dir}/missing.pem: cannot read it"),
    (("switch.key", "controller.pem", "ca.pem"), "the private key does not belong to the certificate"),
    (("controller.key", "controller.key", "ca.pem"), "expected a PEM certificate and its PEM private key"),
    (("controller.key", "controller.pem", "controller.key"), "TLS CA certificate {dir}/controller.key: not a PEM"),
])
def test_unusable_tls_files_are_named(pki: Pki, files: tuple[str, str, str], message: str) -> None:
    key, cert, ca = (str(pki.dir / name) for name in files)
    with pytest.raises(TlsConfigError) as error:
        server_context(key, cert, ca)
    assert message.format(dir=pki.dir) in str(error.value)


def _accept_on_socketpair(pki: Pki, client: str | None, timeout_s: float = 5.0,
                          client_speaks: bool = True) -> tuple[list[dict], float]:
    """tls.accept on one end of a socket pair, a TLS client (or silence) on the other. Returns
    the peer certificates of the connections handed on to os-ken and how long accept took."""
    server_end, client_end = socket.socketpair()
    handed: list[dict] = []

    def handle(sock: ssl.SSLSocket, _address: object) -> None:
        handed.append(sock.getpeercert())
        sock.close()

    context = server_context(pki.key("controller"), pki.cert("controller"), pki.cert("ca"))
    started = time.monotonic()
    thread = threading.Thread(target=accept, args=(context, handle, server_end, ("192.0.2.9", 4242), timeout_s))
    thread.start()
    try:
        if client_speaks:
            client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client_context.check_hostname = False
            client_context.load_verify_locations(pki.cert("ca"))
            if client is not None:
                client_context.load_cert_chain(pki.cert(client), pki.key(client))
            try:
                with client_context.wrap_socket(client_end) as secure:
                    secure.sendall(OPENFLOW_HELLO)
            except (ssl.SSLError, ConnectionError):
                pass
        thread.join(timeout_s + 5)
        assert not thread.is_alive(), "accept did not return"
        return handed, time.monotonic() - started
    finally:
        client_end.close()


def test_accept_hands_on_only_authenticated_switches(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="satupintu.openflow")
    handed, _ = _accept_on_socketpair(pki, "switch")
    assert len(handed) == 1 and handed[0]["subject"] == ((("commonName", "switch"),),)
    assert "OpenFlow TLS connection from 192.0.2.9:4242 (TLSv1.3, CN=switch)" in caplog.text
    for client, reason in ((None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
                           ("rogue-switch", "unable to get local issuer certificate")):
        caplog.clear()
        handed, _ = _accept_on_socketpair(pki, client)
        assert handed == []
        assert f"refused OpenFlow TLS connection from 192.0.2.9:4242: {reason}" in caplog.text


def test_accept_drops_a_peer_that_never_says_anything(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    handed, took_s = _accept_on_socketpair(pki, None, timeout_s=0.3, client_speaks=False)
    assert handed == [] and took_s < 3
    assert "refused OpenFlow TLS connection from 192.0.2.9:4242" in caplog.text and "timed out" in caplog.text


# ---------------------------------------------------------------- helpers


def _tls_client(pki: Pki, client: str | None, port: int = TLS_PORT, host: str = "127.0.0.1") -> tuple[str, bytes]:
    """Connect as a switch would, with `client`'s certificate (None: none); trust the real CA.
    Returns (outcome, first bytes the controller sent): "ok" or the TLS error."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki.cert("ca"))
    if client is not None:
        context.load_cert_chain(pki.cert(client), pki.key(client))
    with socket.create_connection((host, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as secure:
                return "ok", secure.recv(8)  # the controller speaks first; a refusal arrives as an alert
        except (ssl.SSLError, ConnectionError) as error:
            return getattr(error, "reason", None) or type(error).__name__, b""


def _plain_client(port: int = TLS_PORT, host: str = "127.0.0.1") -> bytes:
    """An OpenFlow hello over plain TCP; returns what came back before the connection ended."""
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(OPENFLOW_HELLO)
        try:
            return raw.recv(8)
        except (ConnectionError, TimeoutError):
            return b""


def _is_openflow_hello(data: bytes) -> bool:
    return len(data) == 8 and data[0] == OFP_VERSION_1_3 and data[1] == OFPT_HELLO


def _wait_until(check: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s\n{detail()}")
        time.sleep(0.1)


def _wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    def listening() -> bool:
        assert process.poll() is None, f"controller exited:\n{log.read_text()[-3000:]}"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    _wait_until(listening, 20, "controller not listening", lambda: log.read_text()[-3000:])


def _stop(process: subprocess.Popen) -> None:
    stop_process(process, timeout_s=TIMEOUT)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "controller"),
                                                                    os.environ.get("PYTHONPATH")])))


class Runner:
    """`python -m satupintu.drivers.openflow` over TLS with one switch plan; its log and status."""

    def __init__(self, workdir: Path, pki: Pki, identity: str = "controller") -> None:
        self.workdir, self.pki, self.identity = workdir, pki, identity
        self.status_path = workdir / f"status-{identity}.json"
        self.log_path = workdir / f"controller-{identity}.log"
        cookie = flow_cookie(RuleKind.INFRA, 0)
        self.plan = SwitchPlan("stls", DPID, (FlowSpec(0, 10, (("in_port", 1),), (("output", 2),), cookie),
                                              FlowSpec(0, 0, (), (("drop",),), cookie)), ())
        plan_path = workdir / "plan.json"
        plan_path.write_text(plans_to_json({DPID: self.plan}))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "satupintu.drivers.openflow", "--plan", str(plan_path),
                 "--listen", f"127.0.0.1:{TLS_PORT}", "--status", str(self.status_path),
                 "--tls-key", pki.key(identity), "--tls-cert", pki.cert(identity), "--tls-ca", pki.cert("ca")],
                stdout=log, stderr=subprocess.STDOUT, env=_env())
        _wait_listening(TLS_PORT, self.process, self.log_path)

    def log(self) -> str:
        return self.log_path.read_text()

    def switch(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())["switches"].get("stls", {})
        except (OSError, ValueError, KeyError):
            return {}

    def stop(self) -> None:
        _stop(self.process)


# ---------------------------------------------------------------- Open vSwitch over TLS


def _vsctl(*argv: str) -> str:
    result = subprocess.run(["ovs-vsctl", f"--timeout={TIMEOUT}", *argv], capture_output=True, text=True,
                            timeout=TIMEOUT + 5)
    assert result.returncode == 0, f"ovs-vsctl {' '.join(argv)}: {result.stderr}"
    return result.stdout


def _flows(bridge: str) -> list[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge], capture_output=True,
                         text=True, timeout=TIMEOUT).stdout
    return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)


def _connected(bridge: str) -> bool:
    return _vsctl("get", "controller", bridge, "is_connected").strip() == "true"


def _ssl_settings() -> dict[str, str]:
    """`ovs-vsctl get-ssl` as a dict (empty when nothing is configured)."""
    pairs = (line.split(": ", 1) for line in _vsctl("get-ssl").splitlines() if ": " in line)
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture
def ovs_ssl() -> Iterator[Callable[[str, str], None]]:
    """set(switch_identity, trusted_ca): the switch's key and certificate, and the CA it trusts for
    the controller. Restores the previous global SSL settings afterwards."""
    before = _ssl_settings()

    def configure(key: str, cert: str, ca: str) -> None:
        _vsctl("set-ssl", key, cert, ca)

    try:
        yield configure
    finally:
        if before.get("Private key"):
            _vsctl("set-ssl", before["Private key"], before["Certificate"], before["CA Certificate"])
        else:
            _vsctl("del-ssl")


@pytest.fixture
def tls_bridge(ovs_bridge_factory, ovs_ssl) -> Iterator[tuple[str, Callable[[str, str], None]]]:
    bridge = ovs_bridge_factory(controller=f"ssl:127.0.0.1:{TLS_PORT}")
    _vsctl("set", "bridge", bridge, f"other-config:datapath-id={DPID:016x}", "--",
           "set", "controller", bridge, "max_backoff=1000")
    yield bridge, ovs_ssl


def _refused_for(runner: Runner, bridge: str, seconds: float) -> list[bool]:
    """Watch `seconds`: the controller never sees the switch and no flow appears. Returns the
    samples of Open vSwitch's is_connected (TLS 1.3 lets it believe for a moment)."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(_connected(bridge))
        assert not runner.switch().get("connected"), runner.log()[-2000:]
        assert _flows(bridge) == [], "a refused switch got flows"
        time.sleep(0.2)
    return samples


@pytest.mark.emulation
def test_switch_connects_over_tls_only_with_a_certificate_from_the_ca(tmp_path: Path, pki: Pki,
                                                                      tls_bridge) -> None:
    bridge, set_ssl = tls_bridge
    runner = Runner(tmp_path, pki)
    try:
        # 1. A switch whose certificate another CA signed: refused by the controller, no flows.
        set_ssl(pki.key("rogue-switch"), pki.cert("rogue-switch"), pki.cert("ca"))
        _wait_until(lambda: "refused OpenFlow TLS connection" in runner.log(), 15, "no refusal logged",
                    runner.log)
        samples = _refused_for(runner, bridge, 3.0)
        assert not all(samples), "Open vSwitch reports the refused switch as connected throughout"
        assert "unable to get local issuer certificate" in runner.log()
        assert f"switch {DPID:016x} connected" not in runner.log()

        # 2. The same bridge with a certificate from the right CA: connected over TLS, flows installed.
        set_ssl(pki.key("switch"), pki.cert("switch"), pki.cert("ca"))
        _wait_until(lambda: runner.switch().get("in_sync", False), 20, "switch not in sync over TLS", runner.log)
        assert _flows(bridge) == sorted([
            "cookie=0x5350000400000000, priority=10,in_port=1 actions=output:2",
            "cookie=0x5350000400000000, priority=0 actions=drop"])
        _wait_until(lambda: _connected(bridge), 10, "Open vSwitch does not report the TLS controller connected")
        assert "OpenFlow TLS connection from 127.0.0.1" in runner.log() and "CN=switch)" in runner.log()
        target = _vsctl("get", "controller", bridge, "target").strip().strip('"')
        assert target == f"ssl:127.0.0.1:{TLS_PORT}"
    finally:
        runner.stop()


@pytest.mark.emulation
def test_switch_refuses_a_controller_certificate_from_another_ca(tmp_path: Path, pki: Pki, tls_bridge) -> None:
    """Mutual: the switch checks the controller too. The controller below trusts the switch (its
    CA is the real one) but presents a certificate the switch's CA did not sign."""
    bridge, set_ssl = tls_bridge
    set_ssl(pki.key("switch"), pki.cert("switch"), pki.cert("ca"))
    runner = Runner(tmp_path, pki, identity="rogue-controller")
    try:
        # The switch aborts the handshake with an alert, which the controller logs.
        _wait_until(lambda: "TLSV1_ALERT_UNKNOWN_CA" in runner.log(), 15, "switch did not refuse the controller",
                    runner.log)
        _refused_for(runner, bridge, 2.0)
        assert f"switch {DPID:016x} connected" not in runner.log()
    finally:
        runner.stop()


@pytest.mark.emulation
def test_plain_tcp_switch_gets_nothing_from_a_tls_controller(tmp_path: Path, pki: Pki, ovs_bridge_factory) -> None:
    bridge = ovs_bridge_factory(controller=f"tcp:127.0.0.1:{TLS_PORT}")
    _vsctl("set", "bridge", bridge, f"other-config:datapath-id={DPID:016x}", "--",
           "set", "controller", bridge, "max_backoff=1000")
    runner = Runner(tmp_path, pki)
    try:
        _wait_until(lambda: "WRONG_VERSION_NUMBER" in runner.log(), 15, "plain-TCP switch not refused", runner.log)
        _refused_for(runner, bridge, 2.0)
    finally:
        runner.stop()


# ---------------------------------------------------------------- the daemon


def _daemon(tmp_path: Path, *extra: str, listen: str = f"127.0.0.1:{TLS_PORT}") -> list[str]:
    return [sys.executable, "-m", "satupintu.cli", "run", "--policy", str(REPO / "policies" / "minimal.yaml"),
            "--topology", str(REPO / "topologies" / "star-50.yaml"), "--openflow-listen", listen,
            "--metrics-listen", "off", "--pid-file", str(tmp_path / "daemon.pid"),
            "--status-file", str(tmp_path / "status.json"), "--state-dir", str(tmp_path / "state"),
            "--no-watch", *extra]


def _tls_options(pki: Pki, key: str = "controller", cert: str = "controller", ca: str = "ca") -> list[str]:
    return ["--tls-key", pki.key(key), "--tls-cert", pki.cert(cert), "--tls-ca", pki.cert(ca)]


def test_daemon_refuses_plain_tcp_on_a_non_loopback_address(tmp_path: Path) -> None:
    result = subprocess.run(_daemon(tmp_path, listen="0.0.0.0:6824"), capture_output=True, text=True,
                            timeout=60, env=_env())
    assert result.returncode == 2
    assert "refusing plain-TCP OpenFlow on 0.0.0.0" in result.stderr and "--allow-plain-tcp" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("options", "message"), [
    (lambda pki: ["--tls-key", pki.key("controller"), "--tls-cert", pki.cert("controller")],
     "TLS needs --tls-key, --tls-cert and --tls-ca together"),
    (lambda pki: _tls_options(pki, key="switch"), "the private key does not belong to the certificate"),
    (lambda pki: ["--tls-key", "/nonexistent/c.key", "--tls-cert", pki.cert("controller"), "--tls-ca",
                  pki.cert("ca")], "TLS private key /nonexistent/c.key: cannot read it: No such file or directory"),
])
def test_daemon_reports_unusable_tls_options(tmp_path: Path, pki: Pki, options, message: str) -> None:
    result = subprocess.run(_daemon(tmp_path, *options(pki)), capture_output=True, text=True, timeout=60,
                            env=_env())
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
    assert message in result.stderr


def test_daemon_speaks_openflow_over_mutually_authenticated_tls(tmp_path: Path, pki: Pki) -> None:
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(_daemon(tmp_path, *_tls_options(pki)), stdout=log, stderr=subprocess.STDOUT,
                                   env=_env())
    try:
        _wait_listening(TLS_PORT, process, log_path)
        outcome, first = _tls_client(pki, "switch")
        assert outcome == "ok" and _is_openflow_hello(first), (outcome, first)
        assert _tls_client(pki, None) == ("TLSV13_ALERT_CERTIFICATE_REQUIRED", b"")
        assert _tls_client(pki, "rogue-switch") == ("TLSV1_ALERT_UNKNOWN_CA", b"")
        assert not _is_openflow_hello(_plain_client())
        # Counting refusals is not enough: the readiness probe's bare connect is refused too.
        reasons = ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "unable to get local issuer certificate",
                   "WRONG_VERSION_NUMBER")
        _wait_until(lambda: all(reason in log_path.read_text() for reason in reasons), 5,
                    "every refusal logged with its reason", log_path.read_text)
        text = log_path.read_text()
        assert "OpenFlow listening on 127.0.0.1:6824 (TLS)" in text
        assert "(TLSv1.3, CN=switch)" in text
    finally:
        _stop(process)


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["plain-tcp-allowed", "tls"])
def test_daemon_on_a_non_loopback_address_with_tls_or_explicit_plain_tcp(tmp_path: Path, pki: Pki, netns_factory,
                                                                         mode: str) -> None:
    """In a namespace of our own with a documentation address (192.0.2.1): nothing outside sees it."""
    netns = netns_factory("tls")
    for command in (["link", "set", "lo", "up"], ["link", "add", "sp0", "type", "veth", "peer", "name", "sp1"],
                    ["addr", "add", "192.0.2.1/24", "dev", "sp0"], ["link", "set", "sp0", "up"],
                    ["link", "set", "sp1", "up"]):
        subprocess.run(["ip", "-n", netns, *command], check=True, timeout=TIMEOUT)
    options = ["--allow-plain-tcp"] if mode == "plain-tcp-allowed" else _tls_options(pki)
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(["ip", "netns", "exec", netns, *_daemon(tmp_path, *options,
                                                                           listen=f"192.0.2.1:{TLS_PORT}")],
                                   stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        probe = subprocess.run(["ip", "netns", "exec", netns, sys.executable, __file__, "probe", str(pki.dir)],
                               capture_output=True, text=True, timeout=60, env=_env())
        assert probe.returncode == 0, probe.stderr + log_path.read_text()[-2000:]
        result = json.loads(probe.stdout)
        if mode == "tls":
            assert result == {"tls": "ok", "tls_hello": True, "plain_hello": False}, result
        else:
            assert result["plain_hello"] and result["tls"] != "ok", result
    finally:
        _stop(process)


def _probe_from_inside(pki_dir: str) -> dict:
    """Run in the test's namespace: wait for the daemon on 192.0.2.1, try TLS and plain TCP."""
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("192.0.2.1", TLS_PORT)) == 0:
                break
        if time.monotonic() > deadline:
            raise SystemExit("the daemon does not listen on 192.0.2.1")
        time.sleep(0.1)
    pki = Pki(Path(pki_dir))
    try:
        outcome, first = _tls_client(pki, "switch", host="192.0.2.1")
    except (OSError, ssl.SSLError) as error:  # a plain-TCP controller never answers a ClientHello
        outcome, first = type(error).__name__, b""
    return {"tls": outcome, "tls_hello": _is_openflow_hello(first),
            "plain_hello": _is_openflow_hello(_plain_client(host="192.0.2.1"))}


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        print(json.dumps(_probe_from_inside(sys.argv[2])))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} probe PKI_DIR")
