"""LatencyWindow: how long the last minute's requests took, for operators (`meshctl latency`). Sans-IO.

Durations go into log-spaced buckets, eight per doubling, so a percentile is known to
within 9 %: it is reported as the upper edge of its bucket ("p99 at most X"), or as the
largest duration if that is smaller. The window is `slots` rotating slots of `slot_s`
seconds each; a summary covers the slots of the last `slots * slot_s` seconds (the oldest
one partly). Recording a duration costs one logarithm and a few list operations, so it
runs on every write.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LatencyWindow"]

_PER_DOUBLING = 8
_BUCKETS = 26 * _PER_DOUBLING  # 1 us .. 2**26 us (67 s); longer durations land in the last bucket
_log2 = math.log2


def _upper_edge_ms(bucket: int) -> float:
    return 2.0 ** ((bucket + 1) / _PER_DOUBLING) / 1000.0


class LatencyWindow:
    """Durations (and failures) of the last `slots * slot_s` seconds; `record` and `summary` take `now` (seconds)."""

    __slots__ = ("_slot_s", "_ids", "_counts", "_totals", "_max_s", "_failed", "_current", "_current_from",
                 "_current_to")

    def __init__(self, *, slots: int = 6, slot_s: float = 10.0) -> None:
        if slots < 1 or slot_s <= 0:
            raise ValueError(f"a latency window needs at least one slot of positive length, not {slots} x {slot_s} s")
        self._slot_s = slot_s
        self._ids = [-1] * slots  # the slot number (now // slot_s) each ring entry holds
        self._counts = [[0] * _BUCKETS for _ in range(slots)]
        self._totals = [0] * slots
        self._max_s = [0.0] * slots
        self._failed = [0] * slots
        # The ring entry of the slot recorded into last, and the times it covers (a shortcut for `_slot`).
        self._current = 0
        self._current_from = self._current_to = 0.0

    def record(self, seconds: float, now: float) -> None:
        """One request answered after `seconds`."""
        i = self._current if self._current_from <= now < self._current_to else self._slot(now)
        micros = seconds * 1e6
        bucket = int(_log2(micros) * _PER_DOUBLING) if micros >= 1.0 else 0
        self._counts[i][bucket if bucket < _BUCKETS else _BUCKETS - 1] += 1
        self._totals[i] += 1
        if seconds > self._max_s[i]:
            self._max_s[i] = seconds

    def record_failure(self, now: float) -> None:
        """One request that failed (its duration is not mixed with the others')."""
        self._failed[self._current if self._current_from <= now < self._current_to else self._slot(now)] += 1

    def summary(self, now: float) -> dict[str, Any]:
        """count, failed, p50/p90/p99 (upper bucket edges) and max in ms over the window (None: no request)."""
        current = int(now // self._slot_s)
        live = [i for i, slot in enumerate(self._ids) if current - len(self._ids) < slot <= current]
        total = sum(self._totals[i] for i in live)
        out: dict[str, Any] = {
            "window_s": len(self._ids) * self._slot_s,
            "count": total,
            "failed": sum(self._failed[i] for i in live),
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "max_ms": None,
        }
        if not total:
            return out
        max_ms = max(self._max_s[i] for i in live) * 1000.0
        merged = [sum(column) for column in zip(*(self._counts[i] for i in live))]
        for name, fraction in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            rank = math.ceil(fraction * total)
            seen = 0
            for bucket, count in enumerate(merged):
                seen += count
                if seen >= rank:
                    out[name] = round(min(_upper_edge_ms(bucket), max_ms), 3)
                    break
        out["max_ms"] = round(max_ms, 3)
        return out

    def _slot(self, now: float) -> int:
        """The ring entry for `now`, emptied first if it still holds an older slot."""
        number = int(now // self._slot_s)
        i = number % len(self._ids)
        if self._ids[i] != number:
            self._ids[i] = number
            self._counts[i] = [0] * _BUCKETS
            self._totals[i] = 0
            self._max_s[i] = 0.0
            self._failed[i] = 0
        self._current, self._current_from, self._current_to = i, number * self._slot_s, (number + 1) * self._slot_s
        return i
