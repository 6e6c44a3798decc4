"""Mesh frames that came on a link before its HELLO, held a moment for it. Engine thread only (sans-IO).

A peer's frames count only after its HELLO on that link (the HELLO says which
node and which process sends them). Right after a restart, on either side, a
peer's first frames can come before it said HELLO to this process: its link
connected between two HELLO tries, or it has not yet seen in our heartbeats
that we lost its HELLO. Dropped, such a frame (a quorum write, a read) was
answered by nobody, and its sender waited out `store_timeout_s` for it. Held
here for up to HOLD_S, it is handled right after the HELLO that comes for it.

Bounded in frames and bytes all links together: past either bound, a frame is
dropped as before. Only frames whose sender names the link's routing id are
held (others can never be let in).
"""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["FramesBeforeHello", "HOLD_S"]

HOLD_S = 2.0  # the default store_timeout_s: a request held longer has been answered unavailable already
_MAX_FRAMES = 10_000
_MAX_BYTES = 32 << 20


class FramesBeforeHello:
    """Frames held per routing id, in the order they came, until a HELLO lets them in or HOLD_S passes."""

    __slots__ = ("_held", "_frames", "_bytes", "_hold_s", "_max_frames", "_max_bytes")

    def __init__(self, *, hold_s: float = HOLD_S, max_frames: int = _MAX_FRAMES, max_bytes: int = _MAX_BYTES) -> None:
        self._held: dict[bytes, collections.deque[tuple[float, dict[str, Any], int]]] = {}
        self._frames = 0
        self._bytes = 0
        self._hold_s = hold_s
        self._max_frames = max_frames
        self._max_bytes = max_bytes

    def __bool__(self) -> bool:
        return self._frames > 0

    def hold(self, route: bytes, msg: dict[str, Any], size: int, now: float) -> bool:
        """Keep `msg` (`size` bytes on the wire) for the HELLO of `route`; False if full (the caller drops it)."""
        if self._frames >= self._max_frames or self._bytes + size > self._max_bytes:
            return False
        self._held.setdefault(route, collections.deque()).append((now, msg, size))
        self._frames += 1
        self._bytes += size
        return True

    def release(self, route: bytes, inc: int) -> tuple[list[dict[str, Any]], int]:
        """On a HELLO of process `inc` accepted on `route`: its frames held, in order, and how many of an older
        process were dropped. Frames of a newer process stay held for that process's own HELLO."""
        queue = self._held.get(route)
        if not queue:
            return [], 0
        taken: list[dict[str, Any]] = []
        dropped = 0
        newer: collections.deque[tuple[float, dict[str, Any], int]] = collections.deque()
        for entry in queue:
            frame_inc = entry[1]["inc"]
            if frame_inc > inc:
                newer.append(entry)
                continue
            self._frames -= 1
            self._bytes -= entry[2]
            if frame_inc == inc:
                taken.append(entry[1])
            else:
                dropped += 1
        if newer:
            self._held[route] = newer
        else:
            del self._held[route]
        return taken, dropped

    def expire(self, now: float) -> int:
        """Drop the frames held for HOLD_S with no HELLO for them; how many."""
        dropped = 0
        for route in list(self._held):
            queue = self._held[route]
            while queue and now - queue[0][0] >= self._hold_s:
                _when, _msg, size = queue.popleft()
                self._frames -= 1
                self._bytes -= size
                dropped += 1
            if not queue:
                del self._held[route]
        return dropped
