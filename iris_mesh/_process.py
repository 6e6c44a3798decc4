"""What the node's own process uses: memory, CPU time, threads, open files; for `meshctl status`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["process_usage"]

_PROC_SELF = Path("/proc/self")


def process_usage() -> dict[str, Any]:
    """rss_bytes (resident now), cpu_s (user + system since start), threads and open_fds; None where unknown.

    Read from /proc (Linux); without it, only cpu_s is known.
    """
    times = os.times()
    return {
        "rss_bytes": _rss_bytes(),
        "cpu_s": round(times.user + times.system, 3),
        "threads": _threads(),
        "open_fds": _open_fds(),
    }


def _rss_bytes() -> int | None:
    try:
        resident_pages = int((_PROC_SELF / "statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _threads() -> int | None:
    try:
        for line in (_PROC_SELF / "status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir(_PROC_SELF / "fd"))
    except OSError:
        return None
