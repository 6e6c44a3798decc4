"""The quorum coordinator's bookkeeping: one record per request in flight, and the deadline queues that expire them.

A deadline queue holds `(when, [req, ...])` in deadline order, one queue per
delay: the delay is constant and `now` does not go back, so a new timer goes at
the end, with the others of its loop turn. Stale requests are skipped when
popped, which is cheaper than removing them when they finish; a record's
`timer_at` says which entry is its live one. The queues are bare deques and
their operations plain functions, not a class: `arm` runs on every write.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from operator import itemgetter

from iris_mesh.store._versioned import Versioned

__all__ = ["DeadlineQueue", "PendingRead", "PendingWrite", "arm", "due", "live_head"]

DeadlineQueue = deque[tuple[float, list[int]]]


class PendingWrite:
    """A write in flight: sent to `sent_to`, answered once `required` of them ack (or it fails)."""

    __slots__ = (
        "req",
        "table",
        "key",
        "item",
        "durability",
        "sent_to",
        "required",
        "sync",
        "acked",
        "failed",
        "answered",
        "timer_at",
    )

    def __init__(
        self,
        req: int,
        table: str,
        key: bytes,
        item: Versioned,
        durability: str,
        sent_to: tuple[str, ...],
        required: int,
        sync: bool,
    ) -> None:
        self.req = req
        self.table = table
        self.key = key
        self.item = item
        self.durability = durability
        self.sent_to = sent_to
        self.required = required
        self.sync = sync
        self.acked: list[str] = []  # "ok" acks, in arrival order
        self.failed: dict[str, str] = {}  # replica -> error code
        self.answered = False
        self.timer_at = 0.0

    def heard_from(self, node: str) -> bool:
        return node in self.failed or node in self.acked

    def outstanding(self) -> int:
        return len(self.sent_to) - len(self.acked) - len(self.failed)


class PendingRead:
    """A read in flight: sent to `sent_to`, answered once `required` of them reply (or it fails)."""

    __slots__ = (
        "req",
        "table",
        "key",
        "sent_to",
        "required",
        "replied",
        "known",
        "failed",
        "newest",
        "answered",
        "timer_at",
    )

    def __init__(self, req: int, table: str, key: bytes, sent_to: tuple[str, ...], required: int) -> None:
        self.req = req
        self.table = table
        self.key = key
        self.sent_to = sent_to
        self.required = required
        self.replied: list[str] = []  # good replies, in arrival order
        # What each replica that replied holds, as far as we know: its reply,
        # or the repair we sent it since (repairs apply only if newer).
        self.known: dict[str, Versioned | None] = {}
        self.failed: dict[str, str] = {}
        self.newest: Versioned | None = None
        self.answered = False
        self.timer_at = 0.0

    def heard_from(self, node: str) -> bool:
        return node in self.failed or node in self.known

    def outstanding(self) -> int:
        return len(self.sent_to) - len(self.replied) - len(self.failed)


def arm(tracked: PendingWrite | PendingRead, when: float, queue: DeadlineQueue) -> None:
    """Set `tracked`'s timer to `when`, in `queue`."""
    tracked.timer_at = when
    if queue:
        last_when, last = queue[-1]
        if when == last_when:  # the common case: requests of one loop turn share their deadlines
            last.append(tracked.req)
            return
        if when < last_when:  # `now` went back (a caller's clock): keep the order
            at = bisect_left(queue, when, key=itemgetter(0))
            if at < len(queue) and queue[at][0] == when:
                queue[at][1].append(tracked.req)
            else:
                queue.insert(at, (when, [tracked.req]))
            return
    queue.append((when, [tracked.req]))


def live_head(queue: DeadlineQueue, is_live: Callable[[float, int], bool]) -> float | None:
    """Drop finished requests from the front of `queue`; the deadline of the first live one, if any."""
    while queue:
        when, reqs = queue[0]
        live = [req for req in reqs if is_live(when, req)]
        if live:
            reqs[:] = live
            return when
        queue.popleft()
    return None


def due(timeouts: DeadlineQueue, lingers: DeadlineQueue, now: float) -> DeadlineQueue | None:
    """The queue whose head is the earliest timer due at `now`, if any (a timeout before a linger at the same time)."""
    if timeouts and timeouts[0][0] <= now and not (lingers and lingers[0][0] < timeouts[0][0]):
        return timeouts
    if lingers and lingers[0][0] <= now:
        return lingers
    return None
