"""Group commit: batches written on the engine thread, made durable by one WAL fsync on a sync thread.

A RocksDB write of a batch holds the GIL for its whole memtable insert (rocksdict
does not release it), so it costs the engine loop the same wherever it runs: it
runs on the engine thread, which spares a hand-off per batch. The fsync is what
takes long, and `flush_wal_synced` releases the GIL: the sync thread runs it
while the loop goes on serving. One fsync makes every batch written before it
started durable. The engine writes each turn's batch at once, fsync under way or
not (RocksDB's WAL sync does not block writes from other threads), and queues it
for the sync thread; the sync thread takes every batch queued so far, fsyncs,
posts their completion and, if more were queued meanwhile, starts the next fsync
straight away. So the number of fsyncs adapts to the disk (one per turn when it is
fast, fewer covering more batches when it is slow), a write never waits for more
than the fsync under way plus its own, and the next fsync does not wait for a
round trip through the engine loop.

Completions reach the engine thread through `post`, in the order the batches were
written. A batch's `durable` callbacks run once it is synced (with False if its
write or fsync failed), its `early` ones (writes that do not need an fsync) once
it is written. After a failed fsync, no batch is reported durable again until the
database is opened again (`sync_failed`): the kernel may have dropped the pages
that fsync did not write, and a later fsync would not say so.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

from loguru import logger

from iris_mesh.store._db import Database
from iris_mesh.store._latency import LatencyWindow
from iris_mesh.store._versioned import Versioned, encode_versioned

__all__ = ["Batch", "GroupCommit", "OnDurable", "Post"]

_SLOW_FSYNC_US = 10_000

Post = Callable[[Callable[[float], None]], None]
OnDurable = Callable[[bool], None]


class Batch:
    """The writes of one loop turn. Engine thread only."""

    __slots__ = ("ops", "raws", "early", "durable", "live_delta", "partition_delta", "hint_targets", "written",
                 "written_at", "completed")

    def __init__(self) -> None:
        # (table, key) -> new value, or None for a delete
        self.ops: dict[tuple[str, bytes], Versioned | None] = {}
        # (table, key) -> the encoding of ops[(table, key)], where it came encoded
        self.raws: dict[tuple[str, bytes], bytes] = {}
        self.early: list[OnDurable] = []  # sync=False: may run once written, before the fsync
        self.durable: list[OnDurable] = []
        self.live_delta: dict[str, int] = {}
        # (table, partition) -> live rows the batch adds (or removes) there, against what RocksDB holds
        self.partition_delta: dict[tuple[str, bytes], int] = {}
        self.hint_targets: set[str] = set()  # replicas the batch stores hints for
        self.written = False
        self.written_at = 0.0  # perf_counter() once written
        self.completed = False


class GroupCommit:
    """Writes batches (engine thread) and syncs them (sync thread); see the module docstring.

    `on_written(batch)` runs on the engine thread right after a batch is in RocksDB,
    before anything else can read it, for bookkeeping such as live-row counts.
    """

    def __init__(self, db: Database, *, post: Post, on_written: Callable[[Batch], None], name: str,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._db = db
        self._clock = clock  # for the durations in `stats` and the latency windows
        self._post = post
        self._on_written = on_written
        self._name = name
        self._written: list[Batch] = []  # written and not completed yet, oldest first (engine thread)
        # Written batches for the sync thread to make durable, in write order (None: stop).
        self._requests: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Why a WAL fsync failed (None: none did). Set by the sync thread before it posts that fsync's
        # completions, and never cleared: from then on no batch is reported durable, and the store refuses
        # writes (LocalStore), until the database is opened again.
        self.sync_failed: str | None = None
        # For operators (engine thread): how long each fsync took, and how long each batch waited from
        # its write to its completion on the engine thread (what a replica write waits for here).
        self.fsync_latency = LatencyWindow()
        self.commit_latency = LatencyWindow()
        self.stats = {
            "commits": 0,
            "writes_committed": 0,
            "max_batch": 0,
            "write_us_total": 0,
            "fsync_us_total": 0,
            "fsync_us_max": 0,
            "fsyncs_over_10ms": 0,  # a disk that stalls (every core's fsyncs at once, if they share it)
            "failed_commits": 0,
        }

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sync thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._sync_loop, name=f"store-commit:{self._name}", daemon=True)
            self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def close(self) -> None:
        """Stop the sync thread after its fsync, then make everything written durable here; completions are posted.

        Call it on the engine thread or after the engine stopped, after the last `write`.
        """
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None
        pending = [batch for batch in self._written if not batch.completed]
        self._written = []
        if pending:
            self._sync(pending)

    # ---- engine thread -----------------------------------------------------------------------

    def async_write(self, batch: Batch) -> None:
        """Write `batch` as one atomic RocksDB batch, without fsync, and queue it for the sync thread's next fsync."""
        raws = batch.raws
        ops = [(table, key, None if item is None else raws.get((table, key)) or encode_versioned(item))
               for (table, key), item in batch.ops.items()]
        started = self._clock()
        try:
            self._db.write(ops)
        except Exception as exc:
            self.stats["failed_commits"] += 1
            logger.error(
                "storage write of {} operations failed, none acknowledged ({}); check disk space and the data directory",
                len(ops),
                exc,
            )
            self._post(lambda now: self._write_failed(batch, now))
            return
        batch.written_at = self._clock()
        self.stats["write_us_total"] += int((batch.written_at - started) * 1e6)
        batch.written = True
        self._on_written(batch)
        if batch.early:
            early, batch.early = batch.early, []
            self._post(lambda _now: _run_all(early, True))
        self._written.append(batch)
        self._requests.put(batch)  # after the write returned: the fsync that takes it covers it

    def written_batches(self) -> Iterator[Batch]:
        """Written batches not yet known to be durable, newest first."""
        return reversed(self._written)

    @property
    def written_count(self) -> int:
        """How many written batches are not known to be durable yet."""
        return len(self._written)

    def pending_writes(self) -> int:
        return sum(len(batch.ops) for batch in self._written)

    def _synced(self, batches: list[Batch], ok: bool, now: float, fsync_s: float | None) -> None:
        # Both lists are short (at most a few batches: see LocalStore's cap).
        self._written = [batch for batch in self._written if batch not in batches]
        if fsync_s is None:
            self.fsync_latency.record_failure(now)
        else:
            self.fsync_latency.record(fsync_s, now)
        completed_at = self._clock()
        for batch in batches:
            if batch.completed:
                continue
            if ok:
                self.commit_latency.record(completed_at - batch.written_at, now)
            else:
                self.commit_latency.record_failure(now)
            self._complete(batch, ok)

    def _write_failed(self, batch: Batch, now: float) -> None:
        if not batch.completed:
            self.commit_latency.record_failure(now)
            self._complete(batch, False)

    def _complete(self, batch: Batch, ok: bool) -> None:
        """Run a batch's callbacks once (a late second completion, e.g. after `close`, does nothing)."""
        if batch.completed:
            return
        batch.completed = True
        callbacks = batch.early + batch.durable
        batch.early, batch.durable = [], []
        _run_all(callbacks, ok and batch.written)

    # ---- sync thread ---------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        get, get_nowait = self._requests.get, self._requests.get_nowait
        stopping = False
        while not stopping:
            first = get()
            if first is None:
                break
            batches = [first]
            while True:  # everything written so far: one fsync covers it all
                try:
                    batch = get_nowait()
                except queue.Empty:
                    break
                if batch is None:
                    stopping = True
                    break
                batches.append(batch)
            try:
                self._sync(batches)
            except Exception:  # the thread must outlive anything, or no write would be acknowledged again
                logger.exception("the store's sync thread failed to complete a group commit; it goes on")
        # close() syncs whatever is left

    def _sync(self, batches: list[Batch]) -> None:
        """fsync the WAL, then post the completion of `batches` (every one of them was written before)."""
        writes = sum(len(batch.ops) for batch in batches)
        started = self._clock()
        if self.sync_failed is not None:
            # After a failed fsync, a later one may succeed without the lost pages (the kernel may have dropped
            # them), and these batches sit behind them in the WAL, which a restart replays only up to a gap.
            self.stats["failed_commits"] += 1
            self._post(lambda now: self._synced(batches, False, now, None))
            return
        try:
            self._db.flush_wal_synced()
        except Exception as exc:
            self.sync_failed = f"{type(exc).__name__}: {exc}"  # before the completions: see `sync_failed`
            self.stats["failed_commits"] += 1
            logger.critical(
                "fsync of the write-ahead log of {} failed for {} operations, none acknowledged as durable ({}); "
                "what it wrote since its last good fsync may not be on disk, and a later fsync would not say so, "
                "so it refuses every write until its node is restarted (the other replicas take them and keep "
                "hints for it): check the disk (free space, the kernel log), then restart the node",
                self._name,
                writes,
                exc,
            )
            self._post(lambda now: self._synced(batches, False, now, None))
            return
        fsync_s = self._clock() - started
        fsync_us = int(fsync_s * 1e6)
        stats = self.stats
        stats["commits"] += 1
        stats["writes_committed"] += writes
        stats["max_batch"] = max(stats["max_batch"], writes)
        stats["fsync_us_total"] += fsync_us
        stats["fsync_us_max"] = max(stats["fsync_us_max"], fsync_us)
        if fsync_us > _SLOW_FSYNC_US:
            stats["fsyncs_over_10ms"] += 1
        self._post(lambda now: self._synced(batches, True, now, fsync_s))


def _run_all(callbacks: list[OnDurable], ok: bool) -> None:
    for callback in callbacks:
        try:
            callback(ok)
        except Exception:
            logger.exception("an on_durable callback failed; the write itself is unaffected")
