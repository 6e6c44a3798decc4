"""Upkeep of anti-entropy's digests: their build from a full scan, and the periodic tombstone purge.

The digests (`DigestCache`, `_digests.py`) are built by a scan of every table when
the expected core set changes, and rebuilt after each purge of tombstones past the
grace period (a purge deletes rows behind the cache's back), or after a maintenance
round with nothing to purge, which also heals the digests from any write that
bypassed the cache. The driver in `_anti_entropy.py` owns this and runs its scans.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from iris_mesh.store._ae_session import TableScan, View
from iris_mesh.store._digests import DigestCache
from iris_mesh.store._versioned import Versioned

if TYPE_CHECKING:
    from iris_mesh.store._local import LocalStore

__all__ = ["DigestUpkeep"]

# Tombstones older than the grace period are purged this often (at most); then the cache is rebuilt.
_MAINTENANCE_MAX_S = 3600.0
_MAINTENANCE_MIN_S = 1.0
# A purge pass goes through the tables over many engine turns: each reads at most this many rows (about 20 ms)
# and purges at most _PURGE_LIMIT of them (one write batch). A table of a million rows read in one turn held the
# engine a second, and its peers took the core for dead.
_PURGE_ROWS_PER_TURN = 20_000
_PURGE_LIMIT = 10_000


@dataclass(slots=True)
class _PurgePass:
    """Where a purge pass stands: the table it reads (an index in the tables), the key it goes on after."""

    cutoff_ms: int
    started: float
    table: int = 0
    after: bytes | None = None
    purged: int = 0


class DigestUpkeep:
    """Builds one core's digest cache and purges its old tombstones. Every method runs on the engine thread."""

    def __init__(
        self,
        *,
        node_id: str,
        local: LocalStore,
        cache: DigestCache,
        tables: Sequence[str],
        interval_s: float,
        tombstone_grace_s: float,
        wall_ms: Callable[[], int],
        start_scan: Callable[[TableScan], None],
        counters: dict[str, int],
        purge_horizon: Callable[[], tuple[int | None, list[str]]],
    ) -> None:
        self._node_id = node_id
        self._local = local
        self._cache = cache
        self._tables = tuple(tables)
        self._interval_s = interval_s
        self._grace_ms = int(tombstone_grace_s * 1000)
        self._maintenance_every_s = min(_MAINTENANCE_MAX_S, max(_MAINTENANCE_MIN_S, tombstone_grace_s / 4))
        self._wall_ms = wall_ms
        self._start_scan = start_scan
        self._counters = counters
        self._purge_horizon = purge_horizon  # see AntiEntropy.purge_horizon
        self._view = View(frozenset(), 0, lambda key: ())
        self._build: TableScan | None = None
        self._rebuild_when_commits: int | None = None
        self._next_maintenance: float | None = None
        self._purge: _PurgePass | None = None

    def rebuild(self, view: View) -> None:
        """The expected core set changed: rebuild the digests for `view`."""
        self._view = view
        self._rebuild()

    def _rebuild(self) -> None:
        if self._build is not None:
            self._build.cancelled = True
        self._cache.reset(self._view.shares, self._view.expected - {self._node_id})
        started = time.perf_counter()

        def rows(table: str, chunk: list[tuple[bytes, Versioned]], last: bool) -> None:
            self._cache.add_rows(table, [(key, item.version) for key, item in chunk], last=last)

        def done() -> None:
            self._build = None
            self._counters["ae_cache_builds"] += 1
            logger.debug("anti-entropy digests of {} built, {:.3f} s after the build started", self._node_id,
                         time.perf_counter() - started)

        self._build = TableScan(self._local, self._tables, rows, done)
        self._start_scan(self._build)

    def maintain(self, now: float) -> None:
        """Purge tombstones past the grace period; rebuild the digests once the purge is committed."""
        if self._next_maintenance is None:
            self._next_maintenance = now + self._maintenance_every_s
        if self._rebuild_when_commits is not None:
            stats = self._local.stats()
            if stats["pending"] == 0 or stats["commits"] + stats["failed_commits"] >= self._rebuild_when_commits:
                self._rebuild_when_commits = None
                self._rebuild()
            return
        if self._purge is not None:
            self._purge_some(now)
            return
        if now < self._next_maintenance:
            return
        cutoff_ms = self._wall_ms() - self._grace_ms
        horizon, lagging = self._purge_horizon()
        if horizon is None or horizon < cutoff_ms:
            self._counters["ae_purges_held"] += 1
            if lagging:
                logger.warning("tombstones older than {:.0f} s are kept on {}: {} not synced with it by anti-entropy "
                               "within that time (or since it started); a core back after that long would get its "
                               "deleted rows copied back as live. They go once it has; `meshctl forget NODE` a core "
                               "gone for good", self._grace_ms / 1000, self._node_id, ", ".join(lagging))
            if horizon is None:
                self._next_maintenance = now + self._maintenance_every_s
                self._rebuild()
                return
            cutoff_ms = horizon
        self._purge = _PurgePass(cutoff_ms, time.perf_counter())
        self._purge_some(now)

    def _purge_some(self, now: float) -> None:
        """One turn's share of the purge pass; at the pass's end, the digests are rebuilt."""
        purge = self._purge
        assert purge is not None
        table = self._tables[purge.table]
        purged, purge.after = self._local.async_purge_tombstones(table, purge.cutoff_ms, _PURGE_LIMIT,
                                                                 start_after=purge.after,
                                                                 max_rows=_PURGE_ROWS_PER_TURN)
        if purged:
            self._counters["ae_tombstones_purged"] += purged
            purge.purged += purged
            # From here until the rebuild the digests still count the purged rows: no session may use them, and a
            # build under way (it may have read them) is void.
            if self._build is not None:
                self._build.cancelled = True
                self._build = None
            self._cache.invalidate()
        if purge.after is not None:
            return
        purge.table += 1
        if purge.table < len(self._tables):
            return
        self._purge = None
        self._next_maintenance = now + self._maintenance_every_s
        if purge.purged:
            stats = self._local.stats()
            # The purge's last share sits in the staged batch: it commits right after the batch in flight, if any.
            self._rebuild_when_commits = stats["commits"] + stats["failed_commits"] + (2 if stats["in_flight"] else 1)
            logger.info("purged {} tombstones older than {:.0f} s ({:.3f} s); rebuilding the anti-entropy digests",
                        purge.purged, self._grace_ms / 1000, time.perf_counter() - purge.started)
        else:
            self._rebuild()  # also heals the digests from any write that bypassed the cache
