"""Handover: the rows of partitions this core no longer replicates go to the cores that do. Engine thread only.

When the expected core set changes (a core added, or one forgotten), placement moves some partitions off a core.
Its copies of them are seen by nothing afterwards: anti-entropy compares only the partitions two cores share, and
the tombstone purge holds back only for those. Left there, such copies grew the disk for ever, and came back to life
when the partition moved back (a core forgotten later): deleted messages too, once their tombstones were purged.

A pass reads every user table, at most _ROWS_PER_TURN rows (and _BYTES_PER_TURN) a turn, at start and after each
change of the expected set, while writes are accepted and the WAL is sound. A row of a partition this core does not
replicate becomes a hint for each core that does (handed off as any hint: the newer version wins there) and is
deleted here, in the same write batch: it is never in neither place. That is done for a row whose copy here is
current (its partition was this core's right up to the change this process saw) or younger than the tombstone grace
period (a delete of it left a tombstone that is not purged yet, and wins). Any other row (one left from before this
process started, older than the grace period) may be stale: a delete of it may have been purged everywhere else,
so handed over it would come back to life. It stays as it is. With no more expected cores than the replication
factor every core replicates everything, and a pass reads nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from iris_mesh.store._keys import partition_key

if TYPE_CHECKING:
    from iris_mesh.store._local import LocalStore

__all__ = ["Handover"]

_ROWS_PER_TURN = 2_000
_BYTES_PER_TURN = 4 << 20


@dataclass(slots=True)
class _Pass:
    expected: frozenset[str]
    before: frozenset[str] | None  # the set this process had until the change (None: the pass at start)
    table: int = 0
    after: bytes | None = None
    moved: int = 0


class Handover:
    """Passes over one core's user tables for rows of partitions it no longer replicates (see the module docstring).

    `replicas_in(key, cores)` are the replicas of `key` among `cores`; `wall_ms` the wall clock.
    """

    def __init__(
        self,
        *,
        node_id: str,
        local: LocalStore,
        tables: Sequence[str],
        replication_factor: int,
        replicas_in: Callable[[bytes, frozenset[str]], list[str]],
        expected_cores: Callable[[], frozenset[str]],
        is_safe_for_writes: Callable[[], bool],
        wall_ms: Callable[[], int],
        tombstone_grace_s: float,
        counters: dict[str, int],
    ) -> None:
        self._node_id = node_id
        self._local = local
        self._tables = tuple(tables)
        self._replication_factor = replication_factor
        self._replicas_in = replicas_in
        self._expected_cores = expected_cores
        self._is_safe = is_safe_for_writes
        self._wall_ms = wall_ms
        self._grace_ms = int(tombstone_grace_s * 1000)
        self._counters = counters
        self._done_for: frozenset[str] | None = None  # the expected set of the last pass that ended
        self._pass: _Pass | None = None

    def async_tick(self) -> bool:
        """One turn's share of a pass; whether a pass is reading its tables (tick again soon)."""
        expected = self._expected_cores()
        if self._pass is not None and self._pass.expected != expected:
            self._pass = None  # the set changed again: a pass for the new one, from the start
        if self._pass is None:
            if expected == self._done_for:
                return False
            self._pass = _Pass(expected, self._done_for)
        if not self._is_safe() or self._local.durability_lost is not None:
            return False  # waits, in no hurry: the set may change again (safe mode), or no hint could be written
        if self._node_id not in expected or len(expected) <= self._replication_factor:
            # Every core replicates everything (or this one is no expected core: its view is not to act on).
            self._end(0)
            return False
        self._share(self._pass)
        return self._pass is not None

    def _share(self, run: _Pass) -> None:
        table = self._tables[run.table]
        rows, more = self._local.scan_page(table, b"", start_after=run.after, limit=_ROWS_PER_TURN,
                                           max_bytes=_BYTES_PER_TURN)
        young_from = self._wall_ms() - self._grace_ms
        placed: dict[bytes, tuple[list[str], bool]] = {}  # partition -> its replicas now, and whether it was ours
        moved = 0
        for key, item in rows:
            partition = partition_key(key)
            known = placed.get(partition)
            if known is None:
                was_ours = run.before is not None and self._node_id in self._replicas_in(key, run.before)
                known = placed[partition] = (self._replicas_in(key, run.expected), was_ours)
            replicas, was_ours = known
            if self._node_id in replicas or not (was_ours or item.version.wall_ms >= young_from):
                continue
            if not run.moved and not moved:
                logger.info("{} hands the rows of partitions it no longer replicates to the cores that do (as "
                            "hints; expected cores now {})", self._node_id, ", ".join(sorted(run.expected)))
            for target in replicas:
                self._local.async_put_hint(target, table, key, item)
            self._local.async_drop_row(table, key, item)
            moved += 1
        self._counters["handover_rows"] += moved
        run.moved += moved
        if more and rows:
            run.after = rows[-1][0]
        elif run.table + 1 < len(self._tables):
            run.table, run.after = run.table + 1, None
        else:
            self._end(run.moved)

    def _end(self, moved: int) -> None:
        assert self._pass is not None
        self._done_for, self._pass = self._pass.expected, None
        if moved:
            logger.info("{} handed over {:,} rows of partitions it no longer replicates (they go out as hints)",
                        self._node_id, moved)
