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

A delete that failed once is written to the edge's local journal (`Journal`,
the node's own database) until it succeeds or is given up: an edge restarted
during the outage tries those deletes again from its first tick, and hands
their messages to no session meanwhile, rather than letting the store deliver
them once more to users who acked them.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any, Protocol

from loguru import logger

from iris_mesh.messaging._inbox import Store, inbox_key, message_id_of, stored_version

__all__ = ["AckDeletes", "Journal", "MAX_WAITING", "RETRIES_PER_TICK", "RETRY_FIRST_S", "RETRY_MAX_S",
           "retry_delay_s"]

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


class Journal(Protocol):
    """Records that outlive a restart of the edge (`iris_mesh.store.LocalJournal`); writes never raise."""

    def put(self, key: bytes, value: bytes = b"") -> None: ...
    def delete(self, key: bytes) -> None: ...
    def items(self) -> list[tuple[bytes, bytes]]: ...


class _Waiting:
    __slots__ = ("user", "msg_id", "retry", "failures", "due", "journaled")

    def __init__(self, user: str, msg_id: bytes, retry: bool) -> None:
        self.user = user
        self.msg_id = msg_id
        self.retry = retry
        self.failures = 0
        self.due: float | None = None  # None: an attempt is on its way
        self.journaled = False  # in the journal: deleted from it once the delete succeeds or is given up


class AckDeletes:
    """The deletes of acked messages: one quorum write each, tried again while it fails."""

    __slots__ = ("_store", "_counters", "_now", "_jitter", "_journal", "_waiting", "_failing", "_due", "_order")

    def __init__(self, *, store: Store, counters: collections.Counter[str], now: Callable[[], float],
                 jitter: Callable[[], float] = random.random, journal: Journal | None = None) -> None:
        """`counters` is the edge's; `now` is the engine's current monotonic time; `jitter` draws each wait's
        place in its backoff (see `retry_delay_s`); `journal` keeps the failing deletes over a restart, and
        those it kept from before are tried again from the first tick."""
        self._store = store
        self._counters = counters
        self._now = now
        self._jitter = jitter
        self._journal = journal
        # By inbox key, oldest first: deletes on their way or waiting to be tried again.
        self._waiting: dict[bytes, _Waiting] = {}
        self._failing = 0  # entries of _waiting that failed at least once
        self._due: list[tuple[float, int, bytes]] = []  # heap of (when to try again, order, key); stale ones skipped
        self._order = itertools.count()
        if journal is not None:
            self._recall(journal)

    def _recall(self, journal: Journal) -> None:
        """The deletes that still failed when the edge stopped: waiting (their messages handed to no session), due
        at the first tick."""
        records = journal.items()
        for key, _value in records[:-MAX_WAITING]:  # more than may wait: given up, as they would be here
            journal.delete(key)
            self._counters["inbox_deletes_given_up"] += 1
        for key, _value in records[-MAX_WAITING:]:
            try:
                user, msg_id = key[:key.index(b"\x00")].decode(), message_id_of(key)
            except ValueError:
                journal.delete(key)  # not an inbox key: nothing to retry
                continue
            entry = self._waiting[key] = _Waiting(user, msg_id, True)
            entry.journaled = True
            entry.failures = 1
            self._failing += 1
            self._schedule(key, entry, float("-inf"))
        if self._waiting:
            self._counters["inbox_deletes_recalled"] += len(self._waiting)
            logger.warning("{} deletes of acked messages failed before this edge restarted: they are tried again "
                           "(their messages are handed to no session meanwhile)", len(self._waiting))

    def async_delete(self, user: str, msg_id: bytes, now: float, *, retry: bool = True) -> None:
        """`user` acked a stored message: delete its row now, and (with `retry`) again later while that fails."""
        key = inbox_key(user, msg_id)
        entry = self._waiting.get(key)
        if entry is not None:
            entry.retry = entry.retry or retry  # an ack of a session that was handed it: retried while it fails
            if entry.due is not None:
                self._schedule(key, entry, now)  # acked again: try at the next tick rather than wait out the backoff
            return
        if not retry and len(self._waiting) >= MAX_WAITING:
            # One attempt only, and a full table: not at the cost of a delete owed until the store takes it.
            self._counters["inbox_deletes_not_retried"] += 1
            return
        entry = self._waiting[key] = _Waiting(user, msg_id, retry)
        if len(self._waiting) > MAX_WAITING:
            oldest_key = next(iter(self._waiting))
            oldest = self._waiting.pop(oldest_key)
            self._failing -= oldest.failures > 0
            if oldest.journaled and self._journal is not None:
                self._journal.delete(oldest_key)
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
                if entry.journaled and self._journal is not None:
                    self._journal.delete(key)
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
            if not entry.journaled and self._journal is not None:
                self._journal.put(key)
                entry.journaled = True
            self._schedule(key, entry, self._now() + retry_delay_s(entry.failures, self._jitter()))

        self._store.async_put("offline_msg", key, None, durability="quorum", on_done=done, now=now,
                              min_hlc=stored_version(entry.msg_id).hlc)
