"""Waiting for a condition in tests/cluster: poll it with a growing interval instead of sleeping a fixed time.

``poll`` returns the condition's value or None at the deadline;
``wait_until`` turns that deadline into an AssertionError that says what was
awaited. _netns.py polls for the processes of a namespace to be gone;
_hosts.py, the Switch it drives (_switch.py) and _mesh.py use wait_until.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["poll", "wait_until"]

T = TypeVar("T")

_poll_pause = threading.Event().wait  # the pause between polls of a condition, not a fixed sleep


def poll(
    predicate: Callable[[], T], timeout_s: float, *, interval_s: float = 0.05, max_interval_s: float = 0.5
) -> T | None:
    """Poll `predicate` until it returns something truthy (returned) or `timeout_s` passes (None).

    The interval grows from `interval_s` to `max_interval_s`; the predicate
    runs once more at the deadline. Exceptions from it propagate at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return None
        _poll_pause(min(interval_s, remaining_s))
        interval_s = min(interval_s * 1.5, max_interval_s)


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.05,
    max_interval_s: float = 0.5,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises AssertionError naming `what` (plus `details()`, if given) when
    `timeout_s` passes first. Exceptions from `predicate` propagate at once.
    """
    result = poll(predicate, timeout_s, interval_s=interval_s, max_interval_s=max_interval_s)
    if result:
        return result
    message = f"timed out after {timeout_s:g} s waiting for {what}"
    if details is not None:
        message += "\n" + details()
    raise AssertionError(message)
