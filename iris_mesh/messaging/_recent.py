"""RecentOutcomes: the answer an origin edge gave each (sender, message id), kept at least `ttl_s`.

A resend of an id the edge already answered gets the same `sent` status from
here (docs/PROTOCOL.md 9.2: the cluster recognises an id for at least 10
minutes). So an edge holds an entry for every send it answered in the last ten
minutes, and its memory grows with its send rate: each entry is one bytes key
(sender, NUL, id) in a dict whose values are the edge's own status strings,
plus a reference to that key in a queue for expiry, about 115 bytes in all
(some 70 MB at 1,000 sends/s). Tuples of (sender, id) mapped to tuples of
(status, time) in an OrderedDict took about 290 bytes (some 175 MB).

Expiry is by whole seconds: an entry is forgotten in the first `forget_expired`
(every `remember` calls it) at least `ttl_s` after the second it was first
remembered ended: a second's entries at a time, never a large batch at once.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RecentOutcomes"]


class RecentOutcomes:
    """Engine thread only."""

    __slots__ = ("_ttl_s", "_status", "_order", "_seconds")

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._status: dict[bytes, str] = {}
        self._order: deque[bytes] = deque()  # keys, oldest first
        self._seconds: deque[list[int]] = deque()  # [whole second, keys remembered in it], oldest first

    def __len__(self) -> int:
        return len(self._status)

    def get(self, sender: str, msg_id: bytes) -> str | None:
        return self._status.get(_key(sender, msg_id))

    def remember(self, sender: str, msg_id: bytes, status: str, now: float) -> None:
        """Record the answer; an id already known keeps its first time (and takes the new status)."""
        self.forget_expired(now)
        key = _key(sender, msg_id)
        known = key in self._status
        self._status[key] = status
        if known:
            return
        self._order.append(key)
        second = math.floor(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([second, 1])

    def forget_expired(self, now: float) -> None:
        seconds, order, status = self._seconds, self._order, self._status
        while seconds and seconds[0][0] + 1 + self._ttl_s <= now:
            _, count = seconds.popleft()
            for _ in range(count):
                del status[order.popleft()]  # each key is queued once, when it first came


def _key(sender: str, msg_id: bytes) -> bytes:
    # User names never hold a NUL (docs/PROTOCOL.md), so the first NUL ends the sender.
    return sender.encode() + b"\x00" + msg_id
