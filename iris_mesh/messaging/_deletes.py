"""Deletes of acked stored messages, retried until the store takes them. Engine thread only.

A message leaves the inbox when its recipient acks it: a quorum delete of its
row. That write fails while the user's replicas cannot take it (two of their
three cores down, a partition: `unavailable`, `partition_detected`). The user
has the message, so the delete is not dropped: it is tried again after
`RETRY_FIRST_S`, then twice as long each time up to `RETRY_MAX_S`, until it
succeeds; each wait is drawn between half and all of that backoff, so that
deletes refused together (an outage) are not all tried again together. Trying
again is safe: each attempt writes a tombstone newer than the message
(`min_hlc`), whatever the earlier attempts did. An ack of an id the
session was not handed (carried over from an earlier session) is deleted once,
not retried: it may name no stored message at all, and such a message comes
again in a later sync anyway.

Meanwhile the row is still stored, and this edge hands it to none of the
user's sessions (`waiting`): the user acked it. Other edges do not know, so a
session of the same user there may get it once more (clients drop ids they
already surfaced, PROTOCOL.md 9.2). At most `MAX_WAITING` deletes wait; past
that the oldest is given up (counted, logged) and its message may come again.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from loguru import logger

from iris_mesh.messaging._inbox import Store, inbox_key, stored_version

__all__ = ["AckDeletes", "MAX_WAITING", "RETRIES_PER_TICK", "RETRY_FIRST_S", "RETRY_MAX_S", "retry_delay_s"]

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
MAX_WAITING = 100_000
# Retries (of deletes, and of inbox pushes) started per tick: after an outage the backlog goes out over
# several ticks, not in one burst.
RETRIES_PER_TICK = 200


def retry_delay_s(failures: int, jitter: float = 1.0) -> float:
    """How long to wait after the `failures`-th failure in a row (1, 2, ...) before trying again.

    The backoff doubles from `RETRY_FIRST_S` to `RETRY_MAX_S`; `jitter` (0 to 1, drawn per wait) puts the wait
    between half (0) and all (1) of it.
    """
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(failures - 1, 16)) * (0.5 + 0.5 * jitter)


class _Waiting:
    __slots__ = ("user", "msg_id", "retry", "failures", "due")

    def __init__(self, user: str, msg_id: bytes, retry: bool) -> None:
        self.user = user
        self.msg_id = msg_id
        self.retry = retry
        self.failures = 0
        self.due: float | None = None  # None: an attempt is on its way


class AckDeletes:
    """The deletes of acked messages: one quorum write each, tried again while it fails."""

    __slots__ = ("_store", "_counters", "_now", "_jitter", "_waiting", "_failing", "_due", "_order")

    def __init__(self, *, store: Store, counters: collections.Counter[str], now: Callable[[], float],
                 jitter: Callable[[], float] = random.random) -> None:
        """`counters` is the edge's; `now` is the engine's current monotonic time; `jitter` draws each wait's
        place in its backoff (see `retry_delay_s`)."""
        self._store = store
        self._counters = counters
        self._now = now
        self._jitter = jitter
        # By inbox key, oldest first: deletes on their way or waiting to be tried again.
        self._waiting: dict[bytes, _Waiting] = {}
        self._failing = 0  # entries of _waiting that failed at least once
        self._due: list[tuple[float, int, bytes]] = []  # heap of (when to try again, order, key); stale ones skipped
        self._order = itertools.count()

    def async_delete(self, user: str, msg_id: bytes, now: float, *, retry: bool = True) -> None:
        """`user` acked a stored message: delete its row now, and (with `retry`) again later while that fails."""
        key = inbox_key(user, msg_id)
        entry = self._waiting.get(key)
        if entry is not None:
            if entry.due is not None:
                self._schedule(key, entry, now)  # acked again: try at the next tick rather than wait out the backoff
            return
        entry = self._waiting[key] = _Waiting(user, msg_id, retry)
        if len(self._waiting) > MAX_WAITING:
            oldest_key = next(iter(self._waiting))
            oldest = self._waiting.pop(oldest_key)
            self._failing -= oldest.failures > 0
            self._counters["inbox_deletes_given_up"] += 1
            if self._counters["inbox_deletes_given_up"] % 1000 == 1:
                logger.warning("more than {} acked messages wait for their delete: gave up deleting {}'s {} (the "
                               "store has refused deletes for a while); it may be delivered once more (logged "
                               "for every 1000th given up)", MAX_WAITING, oldest.user, oldest.msg_id.hex())
        self._attempt(key, entry, now)

    def waiting(self, key: bytes) -> bool:
        """The row under inbox `key` was acked and its delete has not succeeded yet."""
        return key in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def async_tick(self, now: float) -> None:
        """Try again the deletes whose wait is over."""
        started = 0
        while self._due and self._due[0][0] <= now and started < RETRIES_PER_TICK:
            due, _order, key = heapq.heappop(self._due)
            entry = self._waiting.get(key)
            if entry is None or entry.due != due:
                continue  # deleted, given up, or rescheduled meanwhile
            self._counters["inbox_delete_retries"] += 1
            self._attempt(key, entry, now)
            started += 1

    def _schedule(self, key: bytes, entry: _Waiting, due: float) -> None:
        entry.due = due
        heapq.heappush(self._due, (due, next(self._order), key))

    def _attempt(self, key: bytes, entry: _Waiting, now: float) -> None:
        entry.due = None

        def done(result: Any) -> None:
            if self._waiting.get(key) is not entry:
                return  # given up meanwhile
            if result.ok:
                del self._waiting[key]
                if entry.failures:
                    self._failing -= 1
                    self._counters["inbox_deletes_recovered"] += 1
                    if not self._failing:
                        logger.info("the deletes of acked messages succeed again: none is waiting to be retried")
                return
            self._counters["inbox_delete_failures"] += 1
            if not entry.retry:
                del self._waiting[key]
                self._counters["inbox_deletes_not_retried"] += 1
                return
            if not self._failing:
                logger.warning("the delete of an acked message failed ({}: {}): this one and any other that fails "
                               "are tried again until the store takes them", result.code, result.detail)
            self._failing += entry.failures == 0
            entry.failures += 1
            self._schedule(key, entry, self._now() + retry_delay_s(entry.failures, self._jitter()))

        self._store.async_put("offline_msg", key, None, durability="quorum", on_done=done, now=now,
                              min_hlc=stored_version(entry.msg_id).hlc)
