"""Handover: the rows of partitions this core no longer replicates go to the cores that do. Engine thread only.

When the expected core set changes (a core added, or one forgotten), placement moves some partitions off a core.
Its copies of them are seen by nothing afterwards: anti-entropy compares only the partitions two cores share, and
the tombstone purge holds back only for those. Left there, such copies grew the disk for ever, and came back to life
when the partition moved back (a core forgotten later): deleted messages too, once their tombstones were purged.

A pass reads every user table, at most _ROWS_PER_TURN rows (and _BYTES_PER_TURN) a turn, at start and after each
change of the expected set, in writable mode only (in safe mode the set may be about to change again). Each row of a
partition this core does not replicate becomes a hint for each core that does (handed off as any hint: the newer
version wins there) and is deleted here, in the same write batch: it is never in neither place. With no more
expected cores than the replication factor every core replicates everything, and a pass has nothing to read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from loguru import logger

from iris_mesh.store._keys import partition_key

if TYPE_CHECKING:
    from iris_mesh.store._local import LocalStore

__all__ = ["Handover"]

_ROWS_PER_TURN = 2_000
_BYTES_PER_TURN = 4 << 20


class Handover:
    """Passes over one core's user tables for rows of partitions it no longer replicates (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        local: LocalStore,
        tables: Sequence[str],
        replication_factor: int,
        replicas_for: Callable[[bytes], list[str]],
        expected_cores: Callable[[], frozenset[str]],
        is_safe_for_writes: Callable[[], bool],
        counters: dict[str, int],
    ) -> None:
        self._node_id = node_id
        self._local = local
        self._tables = tuple(tables)
        self._replication_factor = replication_factor
        self._replicas_for = replicas_for
        self._expected_cores = expected_cores
        self._is_safe = is_safe_for_writes
        self._counters = counters
        self._done_for: frozenset[str] | None = None  # the expected set of the last pass that ended
        self._pass: tuple[frozenset[str], int, bytes | None, int] | None = None  # set, table index, after, moved

    def async_tick(self) -> bool:
        """One turn's share of a pass; whether a pass is under way (tick again soon)."""
        expected = self._expected_cores()
        if self._pass is None or self._pass[0] != expected:
            if expected == self._done_for:
                return False
            self._pass = (expected, 0, None, 0)  # (again) from the start, for this set
        if not self._is_safe():
            return True
        if self._node_id not in expected or len(expected) <= self._replication_factor:
            # Every core replicates everything (or this one is no expected core: its view is not to act on).
            self._end(expected, 0)
            return False
        _set, table_index, after, moved_before = self._pass
        moved = moved_before
        table = self._tables[table_index]
        rows, more = self._local.scan_page(table, b"", start_after=after, limit=_ROWS_PER_TURN,
                                           max_bytes=_BYTES_PER_TURN)
        replicas_of: dict[bytes, list[str]] = {}
        for key, item in rows:
            partition = partition_key(key)
            replicas = replicas_of.get(partition)
            if replicas is None:
                replicas = replicas_of[partition] = self._replicas_for(key)
            if self._node_id in replicas:
                continue
            if moved == 0:
                logger.info("{} hands the rows of partitions it no longer replicates to the cores that do (as "
                            "hints; expected cores now {})", self._node_id, ", ".join(sorted(expected)))
            for target in replicas:
                self._local.async_put_hint(target, table, key, item)
            self._local.async_drop_row(table, key, item)
            moved += 1
        self._counters["handover_rows"] += moved - moved_before
        if more and rows:
            self._pass = (expected, table_index, rows[-1][0], moved)
        elif table_index + 1 < len(self._tables):
            self._pass = (expected, table_index + 1, None, moved)
        else:
            self._end(expected, moved)
            return False
        return True

    def _end(self, expected: frozenset[str], moved: int) -> None:
        self._pass = None
        self._done_for = expected
        if moved:
            logger.info("{} handed over {:,} rows of partitions it no longer replicates (they go out as hints)",
                        self._node_id, moved)
