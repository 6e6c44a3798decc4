"""HintHandoff: a core's hinted writes, handed to their replica once it is back. Engine thread only.

A hint is a write this core stored for a replica that missed it (`hint_for` of a replica
write, see `_replica.py`). Every `_HANDOFF_INTERVAL_S` the hints for alive replicas go out
as internal replica writes, with request ids the service hands out (from
`INTERNAL_REQ_BASE` up); a hint is dropped once its replica acked it, and sent again if no
ack came within `_HANDOFF_TIMEOUT_S`. While a replica is being handed its hints, the next
ones go out every `_BUSY_INTERVAL_S`, at most `_HANDOFF_WINDOW` of them unacked, read on
from the last one sent (the deleted hints before it are not read again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from loguru import logger

from iris_mesh.store._frames import SYNC, WriteSender
from iris_mesh.store._local import LocalStore
from iris_mesh.store._versioned import Versioned, encode_versioned

if TYPE_CHECKING:
    from iris_mesh.store._service import StoreMembership

__all__ = ["HintHandoff"]

_HANDOFF_INTERVAL_S = 0.5
_BUSY_INTERVAL_S = 0.02
_HANDOFF_BATCH = 500
_HANDOFF_WINDOW = 4000
_HANDOFF_TIMEOUT_S = 5.0
_COUNT_CAP = 100_000  # counted in the engine thread: a bound on the time it takes (about 0.1 s)
# Hints of a forgotten replica are dropped this many per turn (and at most _DROP_BYTES of them read): all at once,
# 350,000 held every core's engine 5 s, and their values all in memory.
_DROP_PER_TURN = 2_000
_DROP_BYTES = 8 << 20


class HintHandoff:
    """Hands off the hints of one core's local store (cores only: edges hold none)."""

    def __init__(
        self,
        *,
        node_id: str,
        local: LocalStore,
        membership: StoreMembership,
        writes: WriteSender,
        internal_ids: Iterator[int],
        counters: dict[str, int],
    ) -> None:
        self.node_id = node_id
        self._local = local
        self._membership = membership
        self._writes = writes
        self._internal_ids = internal_ids
        self._counters = counters
        self._handoffs: dict[int, tuple[str, str, bytes, Versioned, float]] = {}  # req -> (target, table, key, item, sent_at)
        self._handoff_keys: set[tuple[str, str, bytes]] = set()
        self._next_handoff = 0.0
        self._busy = False  # a replica that is alive is being handed its hints: tick again soon
        # Replicas whose hints are being handed off -> how many it acked so far (for the operator's log).
        self._handing: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # replica -> hints sent to it and not answered yet
        # replica -> the last hint read, and `hints_written` then: the next read starts after it unless hints came since
        self._resume: dict[str, tuple[tuple[str, bytes], int]] = {}
        # replica -> the last hint dropped (None: none yet), and `hints_written` when the drop was asked for
        self._dropping: dict[str, tuple[tuple[str, bytes] | None, int]] = {}
        # replica -> `hints_written` when a read from its first hint found none: not read again until that changes
        # (each read would step over the deleted hints until RocksDB compacts them away)
        self._drained: dict[str, int] = {}

    def async_tick(self, now: float) -> float | None:
        """Hand off what is due; returns how soon it wants the next tick while handing off (None: no hurry)."""
        if now >= self._next_handoff:
            self._busy = bool(self._dropping) or any(self._membership.state_of(target) == "alive"
                                                     for target in self._handing)
            self._next_handoff = now + (_BUSY_INTERVAL_S if self._busy else _HANDOFF_INTERVAL_S)
            self._hand_off_hints(now)
        return max(0.0, self._next_handoff - now) if self._busy else None

    def async_on_ack(self, req: int, code: str) -> bool:
        """Take the ack of request `req` if it is a handoff's (the hint goes once "ok"); False if it is not one."""
        handoff = self._handoffs.pop(req, None)
        if handoff is None:
            return False
        target, table, key, item, _sent_at = handoff
        self._forget_sent(target, table, key)
        if code == "ok":
            self._local.async_drop_hint(target, table, key, item)
            if target in self._handing:
                self._handing[target] += 1
        return True

    def async_drop_hints(self, target: str) -> int:
        """Forget every hint for replica `target` (a forgotten core; repair is left to anti-entropy): the first
        _DROP_PER_TURN now, the rest over the next ticks, none handed off meanwhile. Returns how many are held (counted
        up to _COUNT_CAP)."""
        for req, (hinted, table, key, _item, _sent_at) in list(self._handoffs.items()):
            if hinted == target:
                del self._handoffs[req]
                self._forget_sent(hinted, table, key)
        self._resume.pop(target, None)
        self._drained.pop(target, None)
        self._handing.pop(target, None)
        held = self._local.count_hints_for(target, _COUNT_CAP)
        if held:
            self._dropping[target] = (None, self._local.hints_written(target))
            self._drop_some(target)
        return held

    def _drop_some(self, target: str) -> None:
        after, written = self._dropping[target]
        if self._local.hints_written(target) != written:
            # Hints for it were kept since: it is an expected core again (back after a forget): what is left goes
            # to it as any hint.
            del self._dropping[target]
            return
        hints, more = self._local.hints_page(target, _DROP_PER_TURN, after=after, max_bytes=_DROP_BYTES)
        for table, key, item in hints:
            self._local.async_drop_hint(target, table, key, item)
        if not more:
            del self._dropping[target]  # the last of them
        elif hints:
            table, key, _item = hints[-1]
            self._dropping[target] = ((table, key), written)

    def _forget_sent(self, target: str, table: str, key: bytes) -> None:
        self._handoff_keys.discard((target, table, key))
        left = self._in_flight.get(target, 0) - 1
        if left > 0:
            self._in_flight[target] = left
        else:
            self._in_flight.pop(target, None)

    def _hand_off_hints(self, now: float) -> None:
        """Send hinted writes to replicas that are back; a hint is dropped once its replica acked."""
        for target in list(self._dropping):
            self._drop_some(target)
        for req, (target, table, key, _item, sent_at) in list(self._handoffs.items()):
            if now - sent_at > _HANDOFF_TIMEOUT_S:  # never acked (the replica died again): retry later
                del self._handoffs[req]
                self._forget_sent(target, table, key)
                self._resume.pop(target, None)  # read again from its first hint
        for target in sorted(self._membership.expected_cores() - {self.node_id}):
            if self._membership.state_of(target) == "alive":
                self._hand_off_to(target, now)

    def _hand_off_to(self, target: str, now: float) -> None:
        if target in self._dropping:
            return
        written = self._local.hints_written(target)
        if self._drained.get(target) == written:
            return
        room = min(_HANDOFF_BATCH, _HANDOFF_WINDOW - self._in_flight.get(target, 0))
        if room <= 0:
            return
        resume = self._resume.get(target)
        after = resume[0] if resume is not None and resume[1] == written else None  # a new hint may sort before it
        hints, more = self._local.hints_page(target, room, after=after)
        if hints:
            table, key, _item = hints[-1]
            self._resume[target] = ((table, key), written)  # read on after the last one
            if target not in self._handing:
                self._handing[target] = 0
                held = self._local.count_hints_for(target, _COUNT_CAP)
                logger.info("handing {} the writes it missed ({}{} hints held here)", target, f"{held:,}",
                            "+" if held >= _COUNT_CAP else "")
        elif target not in self._in_flight:
            # None after the last one read, and every one sent answered: read from the first (a refused one stays)
            # at the next tick, or, if that was such a read, none is left.
            self._resume.pop(target, None)
            if after is None and not more:  # (a page of hints dropped in this turn is read as none: more follow)
                self._drained[target] = written
                if target in self._handing:
                    logger.info("{} has every write it missed that this core took: {} hints handed off, none left",
                                target, f"{self._handing.pop(target):,}")
        for table, key, item in hints:
            if (target, table, key) in self._handoff_keys:
                continue
            req = next(self._internal_ids)
            self._handoffs[req] = (target, table, key, item, now)
            self._handoff_keys.add((target, table, key))
            self._in_flight[target] = self._in_flight.get(target, 0) + 1
            self._writes.add((target,), table, (), SYNC, req, key, encode_versioned(item), now)
            self._counters["hints_handed_off"] += 1
