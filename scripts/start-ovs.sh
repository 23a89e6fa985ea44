#!/usr/bin/env bash
# Start Open vSwitch (ovsdb-server + ovs-vswitchd) by hand: there is no systemd on the
# machines this project runs on. Idempotent: does nothing when both daemons answer.
# There is no kernel datapath either: every bridge must use datapath_type=netdev.
set -euo pipefail

RUN_DIR=/var/run/openvswitch
LOG_DIR=/var/log/openvswitch
SCHEMA=/usr/share/openvswitch/vswitch.ovsschema
# /etc/openvswitch/conf.db is a symlink into /var/lib/openvswitch on Debian, possibly dangling
# on a fresh install: resolve it so that `ovsdb-tool create` does not trip over the link.
DB=$(readlink -m /etc/openvswitch/conf.db)

die() { echo "start-ovs: $*" >&2; exit 1; }

# The userspace datapath sends on every system port through ONE AF_PACKET socket, created
# when ovs-vswitchd starts with net.core.wmem_default as its send buffer. Packets queued in
# the gateway's HTB classes stay charged to it, so with the default 212 kB the backlog of busy
# OPDs fills it and packets of idle OPDs are dropped before HTB sees them ("error sending
# Ethernet packet ... Resource temporarily unavailable"; measured: OPDs starved to 0 bit/s).
SEND_BUFFER_BYTES=16777216
# Receiving is one AF_PACKET socket per port, created when the port is added, with
# net.core.rmem_default as its buffer: 212 kB overflowed under full load (the socket of the
# gateway's upstream port dropped 2,400 packets in 10 s, realtime probes among them). 4 MiB
# absorbs the bursts; no restart needed: ports added afterwards (every emulation's) get it.
RECEIVE_BUFFER_BYTES=4194304
MARKER=$RUN_DIR/satupintu-send-buffer.pid

ovsdb_ok() { ovs-vsctl --timeout=5 show >/dev/null 2>&1; }
vswitchd_ok() { ovs-appctl --timeout=5 -t ovs-vswitchd version >/dev/null 2>&1; }
buffer_ok() { [[ -f $MARKER && -f $RUN_DIR/ovs-vswitchd.pid && $(cat "$MARKER") == $(cat "$RUN_DIR/ovs-vswitchd.pid") ]]; }

if [[ $EUID -eq 0 ]] && (( $(sysctl -n net.core.rmem_default) != RECEIVE_BUFFER_BYTES )); then
    sysctl -qw net.core.rmem_default=$RECEIVE_BUFFER_BYTES  # even when OVS runs: it is read per new port
fi

if ovsdb_ok && vswitchd_ok && buffer_ok; then
    exit 0
fi

[[ $EUID -eq 0 ]] || die "Open vSwitch is not running and starting it needs root (sudo $0)"
command -v ovsdb-server >/dev/null || die "ovsdb-server not found: install openvswitch-switch (scripts/setup.sh)"

mkdir -p "$RUN_DIR" "$LOG_DIR" "$(dirname "$DB")"

if ! ovsdb_ok; then
    if [[ ! -e $DB ]]; then
        ovsdb-tool create "$DB" "$SCHEMA"
    elif [[ $(ovsdb-tool needs-conversion "$DB" "$SCHEMA") == yes ]]; then
        ovsdb-tool convert "$DB" "$SCHEMA"
    fi
    ovsdb-server "$DB" \
        --remote=punix:"$RUN_DIR"/db.sock \
        --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
        --pidfile --detach --log-file \
        || ovsdb_ok || die "ovsdb-server did not start (see $LOG_DIR/ovsdb-server.log)"
    ovs-vsctl --no-wait init
fi

if (( $(sysctl -n net.core.wmem_default) < SEND_BUFFER_BYTES )); then
    sysctl -qw net.core.wmem_default=$SEND_BUFFER_BYTES
fi
if vswitchd_ok && ! buffer_ok; then
    # Started without the larger send buffer: restart it once (bridges stay in the database).
    ovs-appctl -t ovs-vswitchd exit
    for _ in $(seq 50); do vswitchd_ok || break; sleep 0.1; done
fi
if ! vswitchd_ok; then
    ovs-vswitchd unix:"$RUN_DIR"/db.sock --pidfile --detach --log-file \
        || vswitchd_ok || die "ovs-vswitchd did not start (see $LOG_DIR/ovs-vswitchd.log)"
    cp "$RUN_DIR/ovs-vswitchd.pid" "$MARKER"
fi

for _ in $(seq 75); do
    if ovsdb_ok && vswitchd_ok; then
        exit 0
    fi
    sleep 0.2
done
die "Open vSwitch does not answer after 15 s (logs in $LOG_DIR)"
