"""Waiting on conditions with deadlines (never fixed sleeps)."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")

_poll_pause = threading.Event().wait  # a pause between polls of a condition, not a fixed sleep


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Poll `predicate` until it returns a truthy value and return it; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except AssertionError as exc:  # predicates may assert to explain themselves
            value, last_error = None, exc  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{detail}")
        _poll_pause(interval_s)
