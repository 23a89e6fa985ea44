"""systemd's notify protocol (sd_notify) without libsystemd: one datagram to $NOTIFY_SOCKET.

`Type=notify` units learn from it when the daemon is ready (READY=1), reloading (RELOADING=1),
stopping (STOPPING=1) and alive (WATCHDOG=1, expected every $WATCHDOG_USEC). Outside systemd
(no $NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("satupintu.systemd")


def _socket_address(value: str) -> str | bytes:
    """'/run/systemd/notify' is a path; '@name' is Linux's abstract namespace (leading NUL)."""
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of $WATCHDOG_USEC (sd_watchdog_enabled's advice), or None when no watchdog is asked for
    (unset, zero, unparsable, or meant for another process per $WATCHDOG_PID)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class SystemdNotifier:
    """Sends notify messages; never raises (a lost notification must not stop enforcement)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        target = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = _socket_address(target) if target else None
        self.watchdog_interval_s = watchdog_interval_s(env)
        self._next_watchdog = 0.0
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of KEY=VALUE lines; True when it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as error:
            log.warning("cannot notify systemd at %r: %s", self.address, error)
            return False

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload to this message.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        """STATUS= for `systemctl status`, sent only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog_due_in(self) -> float | None:
        """Seconds until the next WATCHDOG=1 is due (None: no watchdog)."""
        if self.watchdog_interval_s is None or self.address is None:
            return None
        return max(0.0, self._next_watchdog - time.monotonic())

    def watchdog(self) -> None:
        """WATCHDOG=1 when due. Call it from the loop whose progress proves the daemon is alive."""
        if self.watchdog_due_in() == 0.0:
            self._next_watchdog = time.monotonic() + (self.watchdog_interval_s or 0.0)
            self.send("WATCHDOG=1")
