"""Key-level repair of one anti-entropy session, sans-IO: which rows to push and which to pull.

The responder's listing and the initiator's own rows of the same buckets both come in key
order, table by table; the two streams are merged as they arrive, so a session holds only
the rows one side has read ahead of the other, never a whole table.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from iris_mesh.store._versioned import Version, Versioned

__all__ = ["Listed", "Reconciler"]


@dataclass(frozen=True, slots=True)
class Listed:
    """One row of the responder's listing."""

    version: Version
    tombstone: bool


class _Table:
    __slots__ = ("theirs", "ours", "theirs_done", "ours_done", "last_theirs")

    def __init__(self) -> None:
        self.theirs: deque[tuple[bytes, Listed]] = deque()
        self.ours: deque[tuple[bytes, Versioned]] = deque()
        self.theirs_done = self.ours_done = False
        self.last_theirs: bytes | None = None


class Reconciler:
    """The initiator's side of one session: the responder's listing merged with its own rows of the same buckets.

    Only strictly newer versions move, in either direction. A key whose newer version
    was written at or after `settle_before_ms` is left alone: the write path is still
    delivering it, and a later round repairs it if it really went missing. A tombstone
    older than `purge_before_ms` is not sent to a side that has no row at all: it is
    due for purging there anyway, and sending it would only bring it back.

    Feed both sides with `theirs` / `ours` (each in key order) and say when a table's
    side is complete; `step` compares every key both sides have read up to.
    """

    def __init__(self, tables: Iterable[str], *, purge_before_ms: int, settle_before_ms: int | None = None) -> None:
        self._tables = {table: _Table() for table in tables}
        self._purge_before_ms = purge_before_ms
        self._settle_before_ms = settle_before_ms
        self.unsettled = 0  # keys left to the write path
        self.consumed = 0  # listed rows compared so far
        self.buffered_ours = 0
        self.buffered_theirs = 0

    def theirs(self, table: str, entries: Iterable[tuple[bytes, Listed]]) -> int:
        """Listed rows of `table`, in key order; returns how many were out of order or of no table asked (dropped)."""
        state = self._tables.get(table)
        dropped = 0
        for key, listed in entries:
            if state is None or state.theirs_done or (state.last_theirs is not None and key <= state.last_theirs):
                dropped += 1
                continue
            state.last_theirs = key
            state.theirs.append((key, listed))
            self.buffered_theirs += 1
        return dropped

    def theirs_done(self, table: str | None = None) -> None:
        """The listing of `table` (of every table: None) is complete."""
        for name, state in self._tables.items():
            if table is None or name == table:
                state.theirs_done = True

    def ours(self, table: str, rows: Iterable[tuple[bytes, Versioned]], *, last: bool) -> None:
        """Our own shared rows of `table`'s differing buckets, in key order; `last`: no more follow."""
        state = self._tables[table]
        for row in rows:
            state.ours.append(row)
            self.buffered_ours += 1
        state.ours_done = state.ours_done or last

    @property
    def done(self) -> bool:
        """Both sides of every table are complete and compared."""
        return all(s.theirs_done and s.ours_done and not s.theirs and not s.ours for s in self._tables.values())

    def step(self, max_pulls: int) -> tuple[list[tuple[str, bytes, Versioned]], list[tuple[str, bytes]]]:
        """Compare what both sides have read: (our rows to push, keys to pull), at most `max_pulls` pulls."""
        pushes: list[tuple[str, bytes, Versioned]] = []
        pulls: list[tuple[str, bytes]] = []
        for table, state in self._tables.items():
            theirs, ours = state.theirs, state.ours
            while len(pulls) < max_pulls:
                if theirs and ours:
                    their_key, our_key = theirs[0][0], ours[0][0]
                elif theirs and state.ours_done:
                    their_key, our_key = theirs[0][0], None
                elif ours and state.theirs_done:
                    their_key, our_key = None, ours[0][0]
                else:
                    break
                other = mine = None
                if their_key is not None and (our_key is None or their_key <= our_key):
                    other = theirs.popleft()[1]
                    self.buffered_theirs -= 1
                    self.consumed += 1
                if our_key is not None and (their_key is None or our_key <= their_key):
                    key, mine = ours.popleft()
                    self.buffered_ours -= 1
                if mine is not None and self._push(mine, other):
                    pushes.append((table, key, mine))
                elif other is not None and self._pull(other, mine):
                    pulls.append((table, their_key))  # type: ignore[arg-type]
        return pushes, pulls

    def _push(self, mine: Versioned, other: Listed | None) -> bool:
        if other is None:
            return not self._recent(mine.version) and not (mine.is_tombstone and self._purgeable(mine.version))
        return mine.version > other.version and not self._recent(mine.version)

    def _pull(self, other: Listed, mine: Versioned | None) -> bool:
        if mine is None:
            return not self._recent(other.version) and not (other.tombstone and self._purgeable(other.version))
        return other.version > mine.version and not self._recent(other.version)

    def _recent(self, version: Version) -> bool:
        if self._settle_before_ms is None or version.wall_ms < self._settle_before_ms:
            return False
        self.unsettled += 1
        return True

    def _purgeable(self, version: Version) -> bool:
        return version.wall_ms < self._purge_before_ms
