#!/usr/bin/env bash
# Install Satu Pintu as a system service (run as root from a checkout; `sudo make install`):
#   - system user and group `satupintu` (systemd-sysusers, else useradd);
#   - the package in its own virtualenv: /opt/satupintu/venv, command linked to /usr/local/bin;
#   - /etc/satupintu/{satupintu.env,policy.yaml,topology.yaml}: examples, only where no file
#     exists yet (an operator's edited file is never overwritten);
#   - satupintu.service in /etc/systemd/system (always replaced: customise with drop-ins).
# Idempotent: a second run changes nothing an operator made, and reinstalls the package only
# when the checkout changed. It does not enable or start the service (edit the topology first).
#
# DESTDIR=/some/dir lays everything out under that directory instead of / (tests, inspection):
# the user goes into DESTDIR/etc/passwd and nothing on the machine itself changes. The venv is
# then built in place, so its scripts point into DESTDIR: not a package-staging area.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PREFIX=/opt/satupintu
CONFDIR=/etc/satupintu
UNITDIR=/etc/systemd/system
SYSUSERSDIR=/etc/sysusers.d
BINDIR=/usr/local/bin
USER_NAME=satupintu
PYTHON=${PYTHON:-/usr/bin/python3}
[[ -x $PYTHON ]] || PYTHON=$(command -v python3)

say() { echo "install: $*"; }
die() { echo "install: error: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (sudo make install): it creates a system user and writes under /etc and /opt"
[[ -f $REPO/deploy/systemd/satupintu.service ]] || die "$REPO is not a Satu Pintu checkout"
"$PYTHON" -c 'import sys, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null \
    || die "$PYTHON must be Python >= 3.11 with venv support: apt-get install python3 python3-venv"

# ---- 1. user and group ----------------------------------------------------------------------
install -d -m 0755 "$DESTDIR$SYSUSERSDIR"
install -m 0644 "$REPO/deploy/systemd/satupintu.sysusers.conf" "$DESTDIR$SYSUSERSDIR/satupintu.conf"
if command -v systemd-sysusers >/dev/null; then
    if [[ -n $DESTDIR ]]; then
        install -d -m 0755 "$DESTDIR/etc"
        systemd-sysusers --root="$DESTDIR" "$DESTDIR$SYSUSERSDIR/satupintu.conf"
    else
        systemd-sysusers "$SYSUSERSDIR/satupintu.conf"
    fi
elif [[ -z $DESTDIR ]]; then
    getent group "$USER_NAME" >/dev/null || groupadd --system "$USER_NAME"
    getent passwd "$USER_NAME" >/dev/null || useradd --system --gid "$USER_NAME" --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin --comment "Satu Pintu controller" "$USER_NAME"
else
    die "DESTDIR installs need systemd-sysusers (Debian package systemd)"
fi
# The group's number as the target system knows it (DESTDIR has its own /etc/group).
GID=$(awk -F: -v name="$USER_NAME" '$1 == name {print $3}' "$DESTDIR/etc/group")
[[ -n $GID ]] || die "group $USER_NAME was not created"
say "user and group $USER_NAME (gid $GID)"

# ---- 2. the package in its own virtualenv ----------------------------------------------------
VENV=$DESTDIR$PREFIX/venv
STAMP=$VENV/.satupintu-install
# What gets installed: the package's sources and its metadata (not tests, docs or .git).
want=$(cd "$REPO" && find pyproject.toml controller -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*' \
       | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python ]]; then
    install -d -m 0755 "$DESTDIR$PREFIX"
    "$PYTHON" -m venv "$VENV"
fi
if [[ $(cat "$STAMP" 2>/dev/null || true) != "$want" ]]; then
    say "installing the package into $PREFIX/venv (a minute on a fresh machine)"
    rm -f "$STAMP"
    # A copy, so the build never writes into the checkout (build/, *.egg-info).
    build=$(mktemp -d /tmp/satupintu-install.XXXXXX)
    trap 'rm -rf "$build"' EXIT
    cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/controller" "$build/"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-warn-script-location "$build"
    echo "$want" >"$STAMP"
else
    say "package already installed and unchanged"
fi
"$VENV/bin/satupintu" --help >/dev/null || die "$PREFIX/venv/bin/satupintu does not run"
install -d -m 0755 "$DESTDIR$BINDIR"
ln -sfn "$PREFIX/venv/bin/satupintu" "$DESTDIR$BINDIR/satupintu"
install -d -m 0755 "$DESTDIR$PREFIX/share/doc"
for doc in README.md README.id.md docs/operator-guide.md docs/reference.md; do
    [[ -f $REPO/$doc ]] && install -m 0644 "$REPO/$doc" "$DESTDIR$PREFIX/share/doc/"
done

# ---- 3. configuration: examples only where the operator has no file yet ------------------------
# root owns it, the service's group may read it: the daemon cannot change its own policy.
install -d -m 0750 -o root -g "$GID" "$DESTDIR$CONFDIR"
config() {  # config SOURCE NAME
    local target=$DESTDIR$CONFDIR/$2
    if [[ -e $target ]]; then
        say "kept $CONFDIR/$2 (exists)"
    else
        install -m 0640 -o root -g "$GID" "$1" "$target"
        say "wrote $CONFDIR/$2 (example: edit it)"
    fi
}
config "$REPO/deploy/systemd/satupintu.env" satupintu.env
config "$REPO/policies/minimal.yaml" policy.yaml
config "$REPO/topologies/star-50.yaml" topology.yaml

# ---- 4. the unit ------------------------------------------------------------------------------
install -d -m 0755 "$DESTDIR$UNITDIR"
install -m 0644 "$REPO/deploy/systemd/satupintu.service" "$DESTDIR$UNITDIR/satupintu.service"
say "installed $UNITDIR/satupintu.service"
if [[ -z $DESTDIR ]] && command -v systemd-analyze >/dev/null; then
    problems=$(cd / && systemd-analyze verify "$UNITDIR/satupintu.service" 2>&1) || true
    [[ -z $problems ]] || echo "install: warning: systemd-analyze verify: $problems" >&2
fi
if [[ -z $DESTDIR && -d /run/systemd/system ]]; then
    systemctl daemon-reload
    say "next: edit $CONFDIR/topology.yaml and policy.yaml, then: systemctl enable --now satupintu"
elif [[ -z $DESTDIR ]]; then
    say "systemd is not running here: see 'Without systemd' in $PREFIX/share/doc/operator-guide.md"
fi
