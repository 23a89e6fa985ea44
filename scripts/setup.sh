#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian bookworm machine, run as root:
#   1. the Debian packages (Open vSwitch, Mininet, iperf3, Prometheus, ...), skipped when present;
#   2. a virtualenv at REPO/.venv with this package (editable, with test extras) and Mininet;
#   3. Open vSwitch started (scripts/start-ovs.sh).
# Quiet on success, loud on failure. A second run takes seconds.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/.venv
STAMP=$VENV/.satupintu-setup

APT_PACKAGES=(
    openvswitch-switch   # ovsdb-server, ovs-vswitchd, ovs-vsctl, ovs-ofctl
    mininet              # mnexec (the venv's Mininet uses it), net-tools, socat
    iperf3
    iputils-ping
    ethtool              # offloads off on every veth: the userspace datapath needs it
    iproute2             # ip, tc
    prometheus           # promtool, to check the exporter's output
    systemd              # systemd-analyze verify/security (unit tests), systemd-sysusers (install.sh)
    python3-seccomp      # tests run the daemon under the unit's SystemCallFilter (libseccomp)
    python3
    python3-venv
    make
)
# The venv gets Mininet from PyPI (the Debian package serves /usr/bin/python3 only).
PIP_EXTRA=(mininet==2.3.0.dev6)

LOG=$(mktemp /tmp/satupintu-setup.XXXXXX.log)
step=""
on_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "setup: FAILED during: ${step:-?} (exit $rc)" >&2
        if [[ -s $LOG ]]; then
            echo "---- last lines of $LOG ----" >&2
            tail -n 60 "$LOG" >&2
            echo "---- full log kept at $LOG ----" >&2
        fi
    else
        rm -f "$LOG"
    fi
}
trap on_exit EXIT

# run DESCRIPTION CMD...: output goes to the log, shown only if the command fails.
run() {
    step=$1
    shift
    echo "+ $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1
}

die() { step=$1; echo "setup: $1" >&2; exit 1; }

# Serialise concurrent runs (apt, venv and OVS start are not safe to run twice at once).
LOCK=/tmp/satupintu-setup.lock
{ exec 9>>"$LOCK"; } 2>/dev/null || exec 9<"$LOCK"
flock 9

# ---- 1. Debian packages -------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "packages missing (${missing[*]}): run as root (sudo make setup)"
    export DEBIAN_FRONTEND=noninteractive
    # Update the lists once, unless an install from the current lists already works.
    if ! run "apt-get install ${missing[*]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
        run "apt-get update" apt-get update
        run "apt-get install ${missing[*]}" apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi
for tool in ovs-vsctl ovsdb-server ovs-vswitchd mnexec iperf3 ping ethtool ip tc promtool systemd-analyze \
    systemd-sysusers setpriv; do
    command -v "$tool" >/dev/null || die "$tool not found after installing the Debian packages"
done

# ---- 2. Virtualenv --------------------------------------------------------------------------
PYTHON=${PYTHON:-/usr/bin/python3}
[[ -x $PYTHON ]] || PYTHON=$(command -v python3)
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null
then
    rm -rf "$VENV"
    run "create virtualenv $VENV" "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when what is installed could have changed: pyproject.toml, this script.
want=$(cat "$REPO/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ $want != "$have" ]] || ! "$VENV/bin/python" -c 'import satupintu, mininet.net' 2>/dev/null; then
    rm -f "$STAMP"
    run "pip install -e .[test] ${PIP_EXTRA[*]}" \
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$REPO[test]" "${PIP_EXTRA[@]}"
    run "check the venv imports satupintu and mininet.net" \
        "$VENV/bin/python" -c 'import satupintu, mininet.net; from mininet.node import OVSSwitch'
    echo "$want" >"$STAMP"
fi
[[ -x $VENV/bin/satupintu ]] || die "$VENV/bin/satupintu is missing (the console script was not installed)"

# ---- 3. Open vSwitch -------------------------------------------------------------------------
# 9>&-: the daemons it starts must not inherit (and so hold forever) the set-up lock.
if [[ $EUID -eq 0 ]]; then
    run "start Open vSwitch (scripts/start-ovs.sh)" bash "$REPO/scripts/start-ovs.sh" 9>&-
else
    bash "$REPO/scripts/start-ovs.sh" >/dev/null 2>&1 9>&- \
        || echo "setup: warning: Open vSwitch is not running and needs root to start (sudo make setup)" >&2
fi
