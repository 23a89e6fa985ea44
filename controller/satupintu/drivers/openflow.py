"""OpenFlow 1.3 driver: a thin os-ken app that makes each switch match its SwitchPlan.

Reconcile, never flush. On every connect (and whenever a switch's plan changes) the
driver reads the switch back (all flows of all tables, all meter configs), diffs that
against the plan with `satupintu.reconcile.flows.diff_switch` (the same diff
`policy diff` prints) and sends only the difference, phase by phase with a barrier
after each: new/changed meters, then new/changed flows, then stale flows, then stale
meters. A controller restart therefore sends nothing when the switch is already right,
and flow counters survive (nothing is deleted and re-added). With `fail_mode=secure`
the switch keeps forwarding on its installed flows while the controller is away.

Threads: os-ken delivers events on the app's event thread; anything that waits for a
switch (stats replies, barriers) runs on one worker per connected switch, spawned with
`os_ken.lib.hub` (native threads in os-ken 4.2.2, green threads under
OSKEN_HUB_TYPE=eventlet). Public methods may be called from any thread.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from satupintu.compile.plan import COOKIE_TAG, COOKIE_TAG_MASK, Direction, FlowSpec, MeterSpec, SwitchPlan
from satupintu.drivers import ofmsgs
from satupintu.drivers.tls import TlsConfigError
from satupintu.drivers.tls import accept as tls_accept
from satupintu.drivers.tls import server_context as tls_server_context
from satupintu.reconcile.flows import SwitchDiff, diff_switch, is_ours
from satupintu.signals import Signals

log = logging.getLogger("satupintu.openflow")

APP_MODULE = "satupintu.drivers.openflow"
APP_NAME = "OpenFlowDriver"
_STOP = object()


class OpenFlowRequestError(RuntimeError):
    """A request the driver waits for failed: error reply, timeout or disconnect."""


@dataclass(slots=True)
class ReconcileRecord:
    """One reconcile of one switch, for status files and benchmarks."""

    dpid: int
    reason: str  # "connect", "plan changed", "retry"
    ok: bool = False
    at: float = 0.0  # unix time when it finished
    duration_s: float = 0.0  # first stats request .. last barrier reply
    read_s: float = 0.0  # reading flows and meters back
    diff_s: float = 0.0
    apply_s: float = 0.0  # sending the difference until the last barrier reply
    read_back: bool = True  # False: diffed against the last applied plan (verify_on_change off)
    flows_read: int = 0
    meters_read: int = 0
    messages: int = 0  # flow-mods + meter-mods sent (stats requests and barriers not counted)
    flow_add: int = 0
    flow_modify: int = 0
    flow_delete: int = 0
    meter_add: int = 0
    meter_modify: int = 0
    meter_delete: int = 0
    barriers: int = 0
    errors: int = 0  # OpenFlow error replies to this reconcile's messages
    error: str = ""  # why it did not finish (timeout, disconnect)


@dataclass(frozen=True, slots=True)
class SwitchCounters:
    """Counters of our flows and of all meters, read at `at` (unix time)."""

    dpid: int
    at: float
    flows: tuple[ofmsgs.FlowCounter, ...]
    meters: tuple[ofmsgs.MeterCounter, ...]


class _Waiter:
    """Collects the (possibly multipart) reply to one request."""

    __slots__ = ("done", "kind", "parts")

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.parts: list[Any] = []
        self.done: Any = hub.Queue()


class _Connection:
    """One connection of a switch: its worker's queue, the requests waiting for replies
    and the xids of the reconcile in flight. A new connection gets a new object, so a
    worker still finishing on the old one cannot disturb it."""

    __slots__ = ("batch", "batch_errors", "closed", "datapath", "send_lock", "waiters", "wake")

    def __init__(self, datapath: Any) -> None:
        self.datapath = datapath
        self.wake: Any = hub.Queue()
        self.waiters: dict[int, _Waiter] = {}
        self.batch: set[int] = set()
        self.batch_errors = 0
        self.closed = False
        self.send_lock: Any = hub.Semaphore(1)

    def close(self, why: str) -> None:
        self.closed = True
        self.wake.put(_STOP)
        for waiter in list(self.waiters.values()):
            waiter.done.put(why)
        self.waiters.clear()


@dataclass(slots=True)
class _Switch:
    dpid: int
    conn: _Connection | None = None  # the current connection
    connected: bool = False
    connects: int = 0
    errors: int = 0
    flows: int = 0  # our flows on the switch, as last read or reconciled
    meters: int = 0
    reconciles: int = 0
    applied: SwitchPlan | None = None  # the plan the switch was last made to match
    counters: SwitchCounters | None = None


class OpenFlowDriver(app_manager.OSKenApp):
    """os-ken app; see the module docstring. Options (``driver_options`` dict):
    request_timeout (s, default 30), retry_s (s, default 5; retry after a failed
    reconcile), stats_interval (s, default 0 = read counters only on request),
    verify_on_change (default True: a plan change reads the switch back too; False:
    diff against the plan the switch was last made to match, which skips the read,
    ~1.5 s at 30,000 flows, but misses out-of-band edits until the next connect)."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, driver_options: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = dict(driver_options or {})
        self.request_timeout = float(options.pop("request_timeout", 30.0))
        self.retry_s = float(options.pop("retry_s", 5.0))
        self.stats_interval = float(options.pop("stats_interval", 0.0))
        self.verify_on_change = bool(options.pop("verify_on_change", True))
        if options:
            raise TypeError(f"unknown OpenFlow driver options: {', '.join(sorted(options))}")
        self._desired: dict[int, SwitchPlan] = {}
        self._switches: dict[int, _Switch] = {}
        self.last_reconcile: dict[int, ReconcileRecord] = {}
        self._reconcile_listeners: list[Callable[[ReconcileRecord], None]] = []
        self._stats_listeners: list[Callable[[SwitchCounters], None]] = []

    def start(self) -> Any:
        thread = super().start()
        if self.stats_interval > 0:
            self.threads.append(hub.spawn(self._poll_stats))
        return thread

    # ------------------------------------------------------------------ public API

    def set_desired(self, plans: dict[int, SwitchPlan]) -> None:
        """Store the plans (dpid -> plan) and reconcile every connected switch whose plan
        differs from what it was last made to match. A switch without a plan is left
        as it is (never flushed)."""
        self._desired = dict(plans)
        for dpid, switch in list(self._switches.items()):
            plan = self._desired.get(dpid)
            conn = switch.conn
            if switch.connected and conn is not None and plan is not None and plan != switch.applied:
                conn.wake.put("plan changed")

    def desired(self) -> dict[int, SwitchPlan]:
        return dict(self._desired)

    def wait_reconciled(self, timeout: float = 30.0, dpids: list[int] | None = None) -> bool:
        """Block until every listed (default: every planned) switch is connected and
        matches its current plan; False on timeout. For tests and benchmarks."""
        deadline = time.monotonic() + timeout
        while True:
            plans = self._desired
            wanted = dpids if dpids is not None else list(plans)
            if all((switch := self._switches.get(dpid)) is not None and switch.connected
                   and switch.applied is not None and switch.applied == plans.get(dpid) for dpid in wanted):
                return True
            if time.monotonic() >= deadline:
                return False
            hub.sleep(0.02)

    def switch_status(self) -> dict[str, dict]:
        """Per switch (by plan name, or dpid in hex when it has no plan): connected,
        flows (ours) and meters installed, OpenFlow error count, last reconcile."""
        out: dict[str, dict] = {}
        for dpid, switch in sorted(self._switches.items()):
            plan = self._desired.get(dpid)
            name = plan.name if plan is not None else f"{dpid:016x}"
            record = self.last_reconcile.get(dpid)
            out[name] = {
                "dpid": dpid, "connected": switch.connected, "connects": switch.connects,
                "flows": switch.flows, "meters": switch.meters, "errors": switch.errors,
                "reconciles": switch.reconciles,
                "in_sync": plan is not None and switch.applied == plan,
                "last_reconcile": None if record is None else asdict(record),
            }
        return out

    def read_counters(self, dpid: int, timeout: float | None = None) -> SwitchCounters | None:
        """Ask the switch now for the counters of our flows and of its meters (None when
        it is not connected). Listeners added with add_stats_listener see the result."""
        switch = self._switches.get(dpid)
        conn = None if switch is None else switch.conn
        if switch is None or conn is None or not switch.connected:
            return None
        datapath = conn.datapath
        wait = self.request_timeout if timeout is None else timeout
        parser = datapath.ofproto_parser
        flows = self._request(conn, ofmsgs.flow_stats_request(datapath, COOKIE_TAG, COOKIE_TAG_MASK),
                              parser.OFPFlowStatsReply, wait)
        meters = self._request(conn, ofmsgs.meter_stats_request(datapath), parser.OFPMeterStatsReply, wait)
        counters = SwitchCounters(dpid, time.time(), tuple(ofmsgs.flow_counter(stats) for stats in flows),
                                  tuple(ofmsgs.meter_counter(stats) for stats in meters))
        switch.counters = counters
        switch.flows, switch.meters = len(counters.flows), len(counters.meters)
        for listener in list(self._stats_listeners):
            listener(counters)
        return counters

    def counters(self, dpid: int) -> SwitchCounters | None:
        """The counters last read (by read_counters or the stats poller)."""
        switch = self._switches.get(dpid)
        return None if switch is None else switch.counters

    def add_stats_listener(self, listener: Callable[[SwitchCounters], None]) -> None:
        self._stats_listeners.append(listener)

    def add_reconcile_listener(self, listener: Callable[[ReconcileRecord], None]) -> None:
        """Called on the switch's worker thread after every reconcile (keep it short)."""
        self._reconcile_listeners.append(listener)

    # ------------------------------------------------------------------ os-ken events

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        datapath = ev.datapath
        if datapath.id is None:
            return  # died during the handshake
        if ev.state == MAIN_DISPATCHER:
            self._connected(datapath)
        elif ev.state == DEAD_DISPATCHER:
            self._disconnected(datapath)

    def _connected(self, datapath: Any) -> None:
        switch = self._switches.get(datapath.id)
        if switch is None:
            switch = self._switches[datapath.id] = _Switch(datapath.id)
        elif switch.conn is not None:
            switch.conn.close("replaced by a new connection")
        conn = _Connection(datapath)
        switch.conn = conn
        switch.connected = True
        switch.connects += 1
        switch.applied = None  # never trust memory across connections: read the switch back
        conn.wake.put("connect")
        log.info("switch %016x connected from %s", datapath.id, datapath.address)
        hub.spawn(self._worker, switch, conn)

    def _disconnected(self, datapath: Any) -> None:
        switch = self._switches.get(datapath.id)
        conn = None if switch is None else switch.conn
        if switch is None or conn is None or conn.datapath is not datapath:
            return  # an old connection of a switch that has reconnected
        switch.connected = False
        conn.close("switch disconnected")
        log.warning("switch %016x disconnected", datapath.id)

    def _current(self, datapath: Any) -> tuple[_Switch, _Connection] | None:
        switch = self._switches.get(datapath.id) if datapath.id is not None else None
        conn = None if switch is None else switch.conn
        if switch is None or conn is None or conn.datapath is not datapath:
            return None
        return switch, conn

    def _reply(self, ev: Any) -> None:
        msg = ev.msg
        current = self._current(msg.datapath)
        if current is None:
            return
        waiter = current[1].waiters.get(msg.xid)
        if waiter is None or not isinstance(msg, waiter.kind):
            return
        body = getattr(msg, "body", None)
        if body:
            waiter.parts.extend(body)
        if not getattr(msg, "flags", 0) & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            waiter.done.put(None)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats_reply(self, ev: Any) -> None:
        self._reply(ev)

    @set_ev_cls(ofp_event.EventOFPMeterConfigStatsReply, MAIN_DISPATCHER)
    def _meter_config_reply(self, ev: Any) -> None:
        self._reply(ev)

    @set_ev_cls(ofp_event.EventOFPMeterStatsReply, MAIN_DISPATCHER)
    def _meter_stats_reply(self, ev: Any) -> None:
        self._reply(ev)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev: Any) -> None:
        self._reply(ev)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        datapath = msg.datapath
        proto = datapath.ofproto
        failed = "?"
        if len(msg.data) >= 2:
            try:
                failed = proto.ofp_msg_type_to_str(msg.data[1])
            except Exception:  # unknown type number
                failed = str(msg.data[1])
        try:
            what = f"{proto.ofp_error_type_to_str(msg.type)}/{proto.ofp_error_code_to_str(msg.type, msg.code)}"
        except Exception:  # experimenter or unknown codes
            what = f"type {msg.type} code {msg.code}"
        log.error("switch %s: OpenFlow error %s answering %s xid %d", f"{datapath.id:016x}" if datapath.id else
                  datapath.address, what, failed, msg.xid)
        current = self._current(datapath)
        if current is None:
            return
        switch, conn = current
        switch.errors += 1
        if msg.xid in conn.batch:
            conn.batch_errors += 1
        waiter = conn.waiters.get(msg.xid)
        if waiter is not None:
            waiter.done.put(f"OpenFlow error {what}")

    # ------------------------------------------------------------------ requests

    def _request(self, conn: _Connection, request: Any, reply_kind: type, timeout: float) -> list[Any]:
        """Send one request and wait for its whole (multipart) reply."""
        waiter = _Waiter(reply_kind)
        with conn.send_lock:
            if conn.closed:
                raise OpenFlowRequestError("connection closed")
            xid = conn.datapath.set_xid(request)
            conn.waiters[xid] = waiter
            sent = conn.datapath.send_msg(request)
        try:
            if not sent:
                raise OpenFlowRequestError("connection closing")
            try:
                outcome = waiter.done.get(timeout=timeout)
            except hub.QueueEmpty:
                raise OpenFlowRequestError(f"no reply to {type(request).__name__} within {timeout:g}s") from None
        finally:
            conn.waiters.pop(xid, None)
        if outcome is not None:
            raise OpenFlowRequestError(str(outcome))
        return waiter.parts

    @staticmethod
    def _send_batch(conn: _Connection, messages: list[Any]) -> None:
        with conn.send_lock:
            for message in messages:
                conn.batch.add(conn.datapath.set_xid(message))
                if conn.closed or not conn.datapath.send_msg(message):
                    raise OpenFlowRequestError("connection closing")

    # ------------------------------------------------------------------ reconcile

    def _worker(self, switch: _Switch, conn: _Connection) -> None:
        """One per connection: reconciles on request, coalescing requests that pile up."""
        wake = conn.wake
        failed = False
        while True:
            try:
                reason = wake.get(timeout=self.retry_s) if failed else wake.get()
            except hub.QueueEmpty:
                reason = "retry"
            if reason is _STOP:
                return
            while True:  # coalesce: one reconcile reads the newest plan anyway
                try:
                    extra = wake.get(block=False)
                except hub.QueueEmpty:
                    break
                if extra is _STOP:
                    return
            if conn.closed:
                return
            record = self._reconcile(switch, conn, str(reason))
            if conn.closed:
                return  # what it did is moot: the next connection reads the switch back
            failed = not record.ok and bool(record.error)
            for listener in list(self._reconcile_listeners):
                try:
                    listener(record)
                except Exception:
                    log.exception("reconcile listener failed")

    def _reconcile(self, switch: _Switch, conn: _Connection, reason: str) -> ReconcileRecord:
        plan = self._desired.get(switch.dpid)
        datapath = conn.datapath
        record = ReconcileRecord(switch.dpid, reason)
        started = time.monotonic()
        parser = datapath.ofproto_parser
        applied = switch.applied
        try:
            if reason == "plan changed" and not self.verify_on_change and applied is not None:
                record.read_back = False
                actual_flows, actual_meters = list(applied.flows), list(applied.meters)
            else:
                # A plan change that leaves every flow as applied (a hard cap: one meter) reads back the
                # meters only: the flows were read back and matched when that plan was applied, and
                # reading 3,000 of them costs ~0.15 s at 500 OPDs (measured, benchmarks/RESULTS.md).
                flows_as_applied = applied is not None and plan is not None and plan.flows == applied.flows
                if reason == "plan changed" and flows_as_applied:
                    actual_flows = list(applied.flows)
                else:
                    flow_stats = self._request(conn, ofmsgs.flow_stats_request(datapath), parser.OFPFlowStatsReply,
                                               self.request_timeout)
                    actual_flows = [ofmsgs.flow_from_stats(stats) for stats in flow_stats]
                    record.flows_read = len(actual_flows)
                meter_configs = self._request(conn, ofmsgs.meter_config_request(datapath),
                                              parser.OFPMeterConfigStatsReply, self.request_timeout)
                actual_meters = [ofmsgs.meter_from_config(config) for config in meter_configs]
                record.meters_read = len(actual_meters)
            read_done = time.monotonic()
            record.read_s = read_done - started
            if plan is None:  # no plan: look, never touch
                switch.flows = sum(1 for flow in actual_flows if is_ours(flow.cookie))
                switch.meters = len(actual_meters)
                record.ok = True
                return self._finish(switch, record, started)
            diff = diff_switch(plan, actual_flows, actual_meters)
            applied_at = time.monotonic()
            record.diff_s = applied_at - read_done
            conn.batch = set()
            conn.batch_errors = 0
            for phase in self._phases(datapath, diff, record):
                self._send_batch(conn, phase)
                self._request(conn, ofmsgs.barrier(datapath), parser.OFPBarrierReply, self.request_timeout)
                record.barriers += 1
            record.apply_s = time.monotonic() - applied_at
            record.errors = conn.batch_errors
            record.ok = record.errors == 0
            switch.flows = len(plan.flows) - record.errors  # an error is (usually) one flow-mod refused
            kept = ({meter.meter_id for meter in actual_meters} - {meter.meter_id for meter in plan.meters}
                    - {meter.meter_id for meter in diff.meters_delete})
            switch.meters = len(plan.meters) + len(kept)
            if record.ok and not conn.closed:
                switch.applied = plan
            else:
                log.error("switch %016x: %d OpenFlow errors while reconciling; it does not match its plan",
                          switch.dpid, record.errors)
        except OpenFlowRequestError as error:
            record.error = str(error)
            log.warning("switch %016x: reconcile (%s) did not finish: %s", switch.dpid, reason, error)
        finally:
            conn.batch = set()
        return self._finish(switch, record, started)

    def _finish(self, switch: _Switch, record: ReconcileRecord, started: float) -> ReconcileRecord:
        record.duration_s = time.monotonic() - started
        record.at = time.time()
        switch.reconciles += 1
        self.last_reconcile[switch.dpid] = record
        if record.messages or not record.ok:
            log.info("switch %016x: reconcile (%s) sent %d messages (flows +%d ~%d -%d, meters +%d ~%d -%d) "
                     "in %.3fs", switch.dpid, record.reason, record.messages, record.flow_add, record.flow_modify,
                     record.flow_delete, record.meter_add, record.meter_modify, record.meter_delete,
                     record.duration_s)
        else:
            log.info("switch %016x: reconcile (%s): already in sync (%d flows read) in %.3fs", switch.dpid,
                     record.reason, record.flows_read, record.duration_s)
        return record

    @staticmethod
    def _phases(datapath: Any, diff: SwitchDiff, record: ReconcileRecord) -> list[list[Any]]:
        """Make before break: meters that flows will use, then new and changed flows, then
        stale flows, then the meters only they used. Empty phases are skipped (so an
        in-sync switch gets no message at all, not even a barrier)."""
        meters_in = [ofmsgs.meter_mod(datapath, meter, "add") for meter in diff.meters_add]
        meters_in += [ofmsgs.meter_mod(datapath, new, "modify") for _old, new in diff.meters_modify]
        flows_in = [ofmsgs.flow_mod(datapath, flow, "add") for flow in diff.flows_add]
        # OF1.3 modify cannot change a cookie: a cookie change is an ADD on the same key,
        # which replaces the flow in place and keeps its counters.
        flows_in += [ofmsgs.flow_mod(datapath, new, "modify" if old.cookie == new.cookie else "add")
                     for old, new in diff.flows_modify]
        flows_out = [ofmsgs.flow_mod(datapath, flow, "delete") for flow in diff.flows_delete]
        meters_out = [ofmsgs.meter_mod(datapath, meter, "delete") for meter in diff.meters_delete]
        record.flow_add, record.flow_modify, record.flow_delete = (len(diff.flows_add), len(diff.flows_modify),
                                                                  len(diff.flows_delete))
        record.meter_add, record.meter_modify, record.meter_delete = (len(diff.meters_add), len(diff.meters_modify),
                                                                     len(diff.meters_delete))
        record.messages = diff.size
        return [phase for phase in (meters_in, flows_in, flows_out, meters_out) if phase]

    def _poll_stats(self) -> None:
        while True:
            hub.sleep(self.stats_interval)
            for dpid, switch in list(self._switches.items()):
                if not switch.connected:
                    continue
                try:
                    self.read_counters(dpid)
                except OpenFlowRequestError as error:
                    log.warning("switch %016x: counters not read: %s", dpid, error)
                except Exception:
                    log.exception("switch %016x: stats listener failed", dpid)


# ---------------------------------------------------------------------- in-process start

_started: OpenFlowDriver | None = None
_start_lock = threading.Lock()


def _configure(listen_host: str, listen_port: int, tls: dict | None) -> None:
    from os_ken import cfg
    from os_ken.controller import controller as os_ken_controller

    conf = cfg.CONF
    conf(args=[], project="os_ken")
    conf.set_override("ofp_listen_host", listen_host)
    if tls:
        key = tls.get("ctl_privkey") or tls.get("key")
        cert = tls.get("ctl_cert") or tls.get("cert")
        ca = tls.get("ca_certs") or tls.get("ca")
        if not (key and cert):
            raise TlsConfigError("TLS needs a private key and a certificate (ctl_privkey/key, ctl_cert/cert)")
        context = tls_server_context(key, cert, ca)  # a bad file fails here, not silently in os-ken's listener
        if ca is None:
            log.warning("OpenFlow TLS without a CA: switch certificates are not checked")
        conf.set_override("ctl_privkey", key)
        conf.set_override("ctl_cert", cert)
        conf.set_override("ca_certs", ca)  # None: switch certificates are not checked
        conf.set_override("ofp_ssl_listen_port", listen_port)
        conf.set_override("ofp_tcp_listen_port", listen_port)  # unused with TLS; set so os-ken opens no 6633
        os_ken_controller.StreamServer = _tls_stream_server(context)
    else:
        conf.set_override("ctl_privkey", None)
        conf.set_override("ctl_cert", None)
        conf.set_override("ofp_tcp_listen_port", listen_port)
        os_ken_controller.StreamServer = hub.StreamServer


def _tls_stream_server(context: ssl.SSLContext) -> type:
    """os-ken's listener with our handshake (satupintu.drivers.tls says why) in place of its own."""

    class TlsStreamServer(hub.StreamServer):
        def __init__(self, listen_info: Any, handle: Any = None, backlog: Any = None, spawn: str = "default",
                     **ssl_args: Any) -> None:
            super().__init__(listen_info, handle, backlog, spawn)  # a plain listener ...
            if ssl_args:  # ... that does the TLS handshake our way
                self.handle = functools.partial(tls_accept, context, handle)

    return TlsStreamServer


def _check_bindable(host: str, port: int) -> None:
    """os-ken binds in a background thread and only logs a failure: fail here instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(error.errno, f"cannot listen for OpenFlow on {host}:{port}: {error.strerror}") from None


def _instantiate(options: dict) -> OpenFlowDriver:
    manager = app_manager.AppManager.get_instance()
    manager.load_apps([APP_MODULE])
    contexts = manager.create_contexts()
    manager.instantiate_apps(driver_options=options, **contexts)
    return manager.applications[APP_NAME]


def run_controller(driver_kwargs: dict | None = None, listen_host: str = "127.0.0.1", listen_port: int = 6653,
                   tls: dict | None = None) -> OpenFlowDriver:
    """Start os-ken in this process (once) and return the running OpenFlowDriver.

    driver_kwargs: OpenFlowDriver options (request_timeout, retry_s, stats_interval).
    tls: {"key"/"ctl_privkey", "cert"/"ctl_cert", "ca"/"ca_certs"} -> OpenFlow over TLS
    on listen_port (CA given: switch certificates must chain to it).
    Like osken-manager without its blocking join: os-ken's threads are daemon threads,
    so the caller's main loop owns the process and may simply return to exit.
    """
    global _started
    with _start_lock:
        if _started is not None:
            raise RuntimeError("the OpenFlow controller is already running in this process")
        _check_bindable(listen_host, listen_port)
        _configure(listen_host, listen_port, tls)
        options = dict(driver_kwargs or {})
        if hub.HUB_TYPE == "native":
            # Threads inherit daemon-ness from their creator: start the apps from a daemon
            # thread so every os-ken thread (listener, per-switch loops) is a daemon too.
            box: list[Any] = []

            def boot() -> None:
                try:
                    box.append(_instantiate(options))
                except BaseException as error:
                    box.append(error)

            booter = threading.Thread(target=boot, name="os-ken-boot", daemon=True)
            booter.start()
            booter.join()
            if isinstance(box[0], BaseException):
                raise box[0]
            _started = box[0]
        else:
            _started = _instantiate(options)
        return _started


# ---------------------------------------------------------------------- stand-alone runner
# `python -m satupintu.drivers.openflow --plan plans.json --listen 127.0.0.1:6653 --status s.json`
# runs the driver alone on a plan file (re-read on SIGHUP) and writes a JSON status after
# every reconcile: used by the integration test and benchmarks, handy for debugging.


def _tuplify(value: object) -> object:
    return tuple(_tuplify(item) for item in value) if isinstance(value, list) else value


def plans_to_json(plans: dict[int, SwitchPlan]) -> str:
    return json.dumps([{
        "name": plan.name, "dpid": plan.dpid,
        "flows": [[flow.table, flow.priority, flow.match, flow.actions, flow.cookie] for flow in plan.flows],
        "meters": [[meter.meter_id, meter.rate_kbps, meter.burst_kbits, meter.owner_id, meter.direction.value]
                   for meter in plan.meters],
    } for plan in plans.values()])


def plans_from_json(text: str) -> dict[int, SwitchPlan]:
    plans: dict[int, SwitchPlan] = {}
    for item in json.loads(text):
        flows = tuple(FlowSpec(table, priority, _tuplify(match), _tuplify(actions), cookie)  # type: ignore[arg-type]
                      for table, priority, match, actions, cookie in item["flows"])
        meters = tuple(MeterSpec(meter_id, rate, burst, owner, Direction(direction))
                       for meter_id, rate, burst, owner, direction in item["meters"])
        plans[int(item["dpid"])] = SwitchPlan(item["name"], int(item["dpid"]), flows, meters)
    return plans


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m satupintu.drivers.openflow", description=__doc__.split("\n")[0])
    parser.add_argument("--plan", required=True, help="JSON list of switch plans (plans_to_json); SIGHUP re-reads")
    parser.add_argument("--listen", default="127.0.0.1:6653", metavar="HOST:PORT")
    parser.add_argument("--status", required=True, help="JSON status written after every reconcile")
    parser.add_argument("--no-verify-on-change", action="store_true",
                        help="on a plan change, diff against the last applied plan instead of reading back")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-ca")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = args.listen.rpartition(":")
    tls = {"key": args.tls_key, "cert": args.tls_cert, "ca": args.tls_ca} if args.tls_key else None
    status_path = Path(args.status)
    history: list[dict] = []
    lock = threading.Lock()
    signals = Signals()
    options = {"retry_s": 2.0, "verify_on_change": not args.no_verify_on_change}
    try:
        driver = run_controller(options, listen_host=host.strip("[]"), listen_port=int(port), tls=tls)
    except (TlsConfigError, OSError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2

    def publish(record: ReconcileRecord | None = None) -> None:
        with lock:
            if record is not None:
                history.append(asdict(record))
            _write_json(status_path, {"pid": os.getpid(), "reconciles": history, "switches": driver.switch_status()})

    driver.add_reconcile_listener(publish)
    driver.set_desired(plans_from_json(Path(args.plan).read_text()))
    publish()
    while not signals.wait(0.2):
        if signals.take_reload():
            driver.set_desired(plans_from_json(Path(args.plan).read_text()))
            log.info("plan file re-read")
    return 0


if __name__ == "__main__":
    # Run through the package module so os-ken's AppManager finds the very class we start.
    from satupintu.drivers.openflow import main as _main

    sys.exit(_main())
