"""Stopping the child processes the emulation, tests and benchmarks start: one way, by pid."""

from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
    """Send `sig` (SIGTERM: let it clean up), wait up to `timeout_s`, then SIGKILL and reap."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
