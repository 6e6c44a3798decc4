"""Stopping the processes a test started: by pid, all at once, SIGKILL after a grace period."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Iterable

STOP_GRACE_S = 10.0


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every running process by pid, then wait for all of them within one grace period and SIGKILL by
    pid whatever is left. A node's clean stop takes ~0.3 s (its mDNS goodbye), so nodes stopped one after
    the other would spend that once per node."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
        proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
