"""Production deployment: the systemd unit passes `systemd-analyze verify` and an offline
security review; scripts/install.sh lays out user, venv, config and unit under a temporary
DESTDIR (nothing on the machine changes), idempotently; the installed daemon, started the way
the unit says (its user, only its ambient capabilities, its environment file, a read-only file
system but its run and state directories, no writable-executable memory, its system call and address family
filters), shapes
the gateway ports, and cannot without CAP_NET_ADMIN. SATUPINTU_* variables configure the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import in_ci
from satupintu.cli import build_parser, main
from satupintu.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
UNIT_SOURCE = REPO / "deploy" / "systemd" / "satupintu.service"
UNIT = "/etc/systemd/system/satupintu.service"
CONF = "etc/satupintu"
HOST_UNITS = Path("/usr/lib/systemd/system")  # targets the unit depends on, for verify --root


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        message = f"{tool} not on PATH (Debian package systemd; run `sudo make setup`)"
        if in_ci():
            pytest.fail(f"CI=true, so not skipping: {message}", pytrace=False)
        pytest.skip(message)


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat), comments and sections dropped."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (our file uses no quoting)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# ---------------------------------------------------------------- install into a DESTDIR


@pytest.fixture(scope="module")
def destdir() -> Iterator[Path]:
    """One install for the module. World-traversable (not pytest's 0700 tmp dir) so the
    service user can reach the venv and its config, as it would under /."""
    _require("systemd-sysusers")
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI=true, so not skipping: install.sh needs root", pytrace=False)
        pytest.skip("install.sh needs root")
    root = Path(tempfile.mkdtemp(prefix="satupintu-deploy-"))
    root.chmod(0o755)
    try:
        result = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=os.environ | {"DESTDIR": str(root)},
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _service_ids(root: Path) -> tuple[int, int]:
    entry = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                 if line.startswith("satupintu:"))
    return int(entry[2]), int(entry[3])


def test_install_creates_the_user_venv_config_and_unit(destdir: Path) -> None:
    users = [line for line in (destdir / "etc/passwd").read_text().splitlines() if line.startswith("satupintu:")]
    assert len(users) == 1 and users[0].endswith(":/nonexistent:/usr/sbin/nologin"), users
    uid, gid = _service_ids(destdir)
    assert uid < 1000 and gid < 1000  # a system account

    config = destdir / CONF
    assert stat.S_IMODE(config.stat().st_mode) == 0o750 and config.stat().st_gid == gid
    for name in ("satupintu.env", "policy.yaml", "topology.yaml"):
        info = (config / name).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, gid), name
    env = environment_file(config / "satupintu.env")
    assert env["SATUPINTU_POLICY"] == "/etc/satupintu/policy.yaml"
    assert env["SATUPINTU_OPENFLOW_LISTEN"].startswith("127.0.0.1:")
    assert env["SATUPINTU_METRICS_LISTEN"].startswith("127.0.0.1:")

    assert (destdir / UNIT.lstrip("/")).read_text() == UNIT_SOURCE.read_text()
    assert os.readlink(destdir / "usr/local/bin/satupintu") == "/opt/satupintu/venv/bin/satupintu"
    venv_cli = destdir / "opt/satupintu/venv/bin/satupintu"
    checked = subprocess.run([str(venv_cli), "policy", "check", str(config / "policy.yaml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    # Not an editable install: the venv runs without the checkout.
    location = subprocess.run([str(destdir / "opt/satupintu/venv/bin/python"), "-c",
                               "import satupintu; print(satupintu.__file__)"], capture_output=True, text=True,
                              timeout=60, cwd="/")
    assert location.stdout.startswith(str(destdir / "opt/satupintu/venv/lib/")), location


def test_install_again_keeps_edited_config_and_restores_missing(destdir: Path) -> None:
    policy = destdir / CONF / "policy.yaml"
    edited = policy.read_text() + "# edited by the operator\n"
    policy.write_text(edited)
    (destdir / CONF / "topology.yaml").unlink()
    result = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=os.environ | {"DESTDIR": str(destdir)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert policy.read_text() == edited
    assert "kept /etc/satupintu/policy.yaml" in result.stdout
    assert (destdir / CONF / "topology.yaml").read_text() == (REPO / "topologies" / "star-50.yaml").read_text()
    assert sum(line.startswith("satupintu:") for line in (destdir / "etc/passwd").read_text().splitlines()) == 1


# ---------------------------------------------------------------- systemd-analyze


def _verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` exits 0 on unknown keys and bad values (it only prints them):
    a unit passes only with exit 0 and nothing printed."""
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree(HOST_UNITS, units, symlinks=True)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_installed_unit_passes_systemd_analyze_verify(destdir: Path) -> None:
    _require("systemd-analyze")
    result = _verify(destdir, UNIT)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize(("change", "expected"), [
    (("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key"),
    (("Type=notify", "Type=notifyy"), "Failed to parse service type"),
    (("ExecStart=/opt/satupintu/venv/bin/satupintu", "ExecStart=/opt/satupintu/venv/bin/satupintux"),
     "is not executable"),
])
def test_verify_catches_a_broken_unit(destdir: Path, change: tuple[str, str], expected: str) -> None:
    _require("systemd-analyze")
    broken = destdir / "etc/systemd/system/satupintu-broken.service"
    broken.write_text(UNIT_SOURCE.read_text().replace(*change, 1))
    try:
        result = _verify(destdir, "/etc/systemd/system/satupintu-broken.service")
    finally:
        broken.unlink()
    assert expected in result.stdout + result.stderr, result


def test_unit_security_exposure_stays_low(tmp_path: Path) -> None:
    """systemd's own review of the sandboxing (0 = locked down, 10 = none); this unit rates 1.5."""
    _require("systemd-analyze")

    def exposure_ok(unit: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    good = exposure_ok(UNIT_SOURCE)
    assert good.returncode == 0, good.stdout[-600:]
    weakened = tmp_path / "satupintu.service"
    weakened.write_text("\n".join(line for line in UNIT_SOURCE.read_text().splitlines()
                                  if not line.startswith(("Protect", "Private", "Restrict", "SystemCall"))))
    assert exposure_ok(weakened).returncode != 0


def test_unit_is_what_the_issue_asks_for() -> None:
    unit = unit_settings(UNIT_SOURCE.read_text())
    assert unit["Type"] == ["notify"] and unit["WatchdogSec"] and unit["Restart"] == ["on-failure"]
    assert unit["ExecReload"][0].split()[1:3] == ["reload", "--pid"]  # SIGHUP to $MAINPID, waits
    assert unit["User"] == ["satupintu"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert unit["EnvironmentFile"] == ["/etc/satupintu/satupintu.env"]
    assert "PrivateNetwork" not in unit and "PrivateUsers" not in unit  # it shapes the host's ports


# ---------------------------------------------------------------- least privilege, for real


# MemoryDenyWriteExecute=yes, the kernel's way (Linux >= 6.3): no writable+executable memory,
# inherited across exec. systemd uses a seccomp filter to the same effect.
_MDWE_EXEC = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("MemoryDenyWriteExecute not available in this kernel: not applied", file=sys.stderr)
os.execvp(sys.argv[1], sys.argv[1:])
"""


# SystemCallFilter= + SystemCallErrorNumber=EPERM and RestrictAddressFamilies=, with libseccomp
# (Debian python3-seccomp, for /usr/bin/python3) as systemd does: a call outside the allowed set
# fails with EPERM, a socket of another family with EAFNOSUPPORT.
_SECCOMP_EXEC = """
import errno, os, socket, sys, seccomp
allowed = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
families = [getattr(socket, name) for name in sys.argv[2].split()]
for name in sys.argv[1].split(","):
    try:
        if name == "socket":
            for family in families:
                allowed.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, family))
        else:
            allowed.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError):
        pass  # not a system call of this architecture, or newer than libseccomp
for family in range(64):
    if family not in families:
        allowed.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
allowed.load()
os.execvp(sys.argv[3], sys.argv[3:])
"""
SYSTEM_PYTHON = "/usr/bin/python3"


def _syscall_set(name: str) -> set[str]:
    """The system calls of a systemd set such as @system-service, nested sets expanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word.startswith("@"):
            calls |= _syscall_set(word)
        elif word and not word.startswith("#"):
            calls.add(word)
    return calls


def allowed_syscalls(filters: list[str]) -> set[str]:
    """SystemCallFilter= lines: the first is an allow list, later `~` lines take calls away."""
    allowed: set[str] = set()
    for index, line in enumerate(filters):
        deny = line.startswith("~")
        names = {call for item in line.lstrip("~").split() for call in
                 (_syscall_set(item) if item.startswith("@") else {item})}
        assert deny != (index == 0), f"expected one allow list, then deny lines: {filters}"
        allowed = allowed - names if deny else names
    return allowed


# ProtectSystem=strict with RuntimeDirectory= and StateDirectory=, in a mount namespace of the
# daemon's own: every mount read-only (kernel file systems aside) except the run directory ($1),
# which holds the state directory too.
_READ_ONLY_BUT_RUNDIR = """
set -e
findmnt -rn -o TARGET | grep -v -E '^/(proc|sys|dev)(/|$)' | while read -r target; do
    mount -o remount,bind,ro "$target" 2>/dev/null || true
done
mount --bind "$1" "$1" && mount -o remount,bind,rw "$1"
shift
exec "$@"
"""


def _run_as_service(destdir: Path, netns: str, workdir: Path, capabilities: str) -> dict:
    """Start ExecStart as the unit's User= with `capabilities` (setpriv) in `netns`, its
    environment from the installed EnvironmentFile, a read-only file system but for its run
    directory, MemoryDenyWriteExecute and SystemCallFilter; return status.json once both ports
    report."""
    unit = unit_settings((destdir / UNIT.lstrip("/")).read_text())
    uid, gid = _service_ids(destdir)
    env = environment_file(destdir / CONF / "satupintu.env")
    env |= {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SATUPINTU_POLICY": str(destdir / CONF / "policy.yaml"),
            "SATUPINTU_TOPOLOGY": str(destdir / CONF / "topology.yaml"),
            "SATUPINTU_PID_FILE": str(workdir / "satupintu.pid"),
            "SATUPINTU_STATUS_FILE": str(workdir / "status.json"),
            "SATUPINTU_STATE_DIR": str(workdir / "state")}
    exec_start = unit["ExecStart"][0].split()
    exec_start[0] = str(destdir) + exec_start[0]
    mdwe = [sys.executable, "-c", _MDWE_EXEC] if unit.get("MemoryDenyWriteExecute") == ["yes"] else []
    assert unit["ProtectSystem"] == ["strict"] and unit["RuntimeDirectory"] == unit["StateDirectory"] == ["satupintu"]
    assert unit["SystemCallErrorNumber"] == ["EPERM"]
    read_only = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _READ_ONLY_BUT_RUNDIR, "sh",
                 str(workdir)]
    argv = ["ip", "netns", "exec", netns, *read_only, *mdwe, "setpriv", f"--reuid={uid}", f"--regid={gid}",
            "--clear-groups",
            f"--inh-caps=-all{capabilities}", f"--ambient-caps=-all{capabilities}",
            f"--bounding-set=-all{capabilities}", "--no-new-privs",
            SYSTEM_PYTHON, "-c", _SECCOMP_EXEC, ",".join(sorted(allowed_syscalls(unit["SystemCallFilter"]))),
            " ".join(unit["RestrictAddressFamilies"]),
            "env", "-i",
            *(f"{key}={value}" for key, value in env.items()), *exec_start]
    daemon = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=(workdir / "daemon.log").open("w"))
    status_file = workdir / "status.json"
    try:
        deadline = time.monotonic() + 60
        while True:
            status = json.loads(status_file.read_text()) if status_file.exists() else {}
            if len(status.get("queues", {})) == 2:
                return status
            assert daemon.poll() is None, (workdir / "daemon.log").read_text()
            assert time.monotonic() < deadline, (workdir / "daemon.log").read_text()
            time.sleep(0.2)
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
        status_file.unlink(missing_ok=True)


@pytest.mark.netns
def test_installed_service_shapes_with_only_cap_net_admin_and_not_without(destdir: Path, netns_factory) -> None:
    """The gateway's two shaped ports are veths in a namespace of our own; the daemon runs
    there, as the unit's user, holding nothing but the unit's ambient capabilities."""
    _require("systemd-analyze")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        message = "python3-seccomp is not installed for /usr/bin/python3 (run `sudo make setup`)"
        if in_ci():
            pytest.fail(f"CI=true, so not skipping: {message}", pytrace=False)
        pytest.skip(message)
    topology = load_topology(destdir / CONF / "topology.yaml")
    ports = [topology.interface(topology.gateway, port) for port in (topology.upstream_port, topology.backbone_port)]
    netns = netns_factory("deploy")
    for index, port in enumerate(ports):
        for argv in (["link", "add", port, "type", "veth", "peer", "name", f"dpeer{index}"],
                     ["link", "set", port, "up"], ["link", "set", f"dpeer{index}", "up"]):
            subprocess.run(["ip", "-n", netns, *argv], check=True, timeout=15)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=15)
    workdir = Path(tempfile.mkdtemp(prefix="satupintu-run-"))
    uid, gid = _service_ids(destdir)
    os.chown(workdir, uid, gid)  # what RuntimeDirectory= gives it
    (workdir / "state").mkdir(mode=0o750)
    os.chown(workdir / "state", uid, gid)  # and StateDirectory=
    try:
        unit = unit_settings((destdir / UNIT.lstrip("/")).read_text())
        capabilities = "".join(f",+{cap.removeprefix('CAP_').lower()}" for cap in unit["AmbientCapabilities"])
        shaped = _run_as_service(destdir, netns, workdir, capabilities)
        assert all("error" not in report and report["classes_added"] > 0 for report in shaped["queues"].values()), \
            shaped["queues"]
        for port in ports:
            classes = subprocess.run(["tc", "-n", netns, "class", "show", "dev", port], capture_output=True,
                                     text=True, check=True, timeout=15).stdout
            assert classes.count("class htb") == shaped["queues"][port]["classes_added"], classes
        copy = workdir / "state" / "last-good-policy.yaml"  # written inside the sandbox, by the service user
        assert copy.read_bytes() == (destdir / CONF / "policy.yaml").read_bytes() and copy.stat().st_uid == uid

        for port in ports:
            subprocess.run(["tc", "-n", netns, "qdisc", "del", "dev", port, "root"], check=True, timeout=15)
        refused = _run_as_service(destdir, netns, workdir, "")
        assert all("Operation not permitted" in report.get("error", "") for report in refused["queues"].values()), \
            refused["queues"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- SATUPINTU_* variables


def test_environment_supplies_defaults_and_the_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SATUPINTU_POLICY", "/etc/satupintu/policy.yaml")
    monkeypatch.setenv("SATUPINTU_TOPOLOGY", "/etc/satupintu/topology.yaml")
    monkeypatch.setenv("SATUPINTU_OPENFLOW_LISTEN", "10.0.0.1:6653")
    monkeypatch.setenv("SATUPINTU_NO_WATCH", "yes")
    monkeypatch.setenv("SATUPINTU_SCALE", "0.5")
    args = build_parser().parse_args(["run", "--openflow-listen", "127.0.0.1:6813"])
    assert (args.policy, args.topology, args.openflow_listen) == (
        "/etc/satupintu/policy.yaml", "/etc/satupintu/topology.yaml", "127.0.0.1:6813")
    assert args.no_watch is True and args.scale == 0.5 and args.environment_errors == []


def test_without_environment_policy_is_still_required(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name in [name for name in os.environ if name.startswith("SATUPINTU_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--topology", "t.yaml"])
    assert "--policy" in capsys.readouterr().err


def test_bad_environment_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SATUPINTU_NO_WATCH", "maybe")
    monkeypatch.setenv("SATUPINTU_LOG_LEVEL", "LOUD")
    assert main(["run", "--policy", "p.yaml", "--topology", "t.yaml"]) == 2
    err = capsys.readouterr().err
    assert "SATUPINTU_NO_WATCH='maybe': expected one of 1, 0, yes, no" in err
    assert "SATUPINTU_LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR" in err

