"""Versioned tables on the node's RocksDB, written by group commit.

The engine thread stages writes during one loop turn; `async_end_of_batch` hands
what is staged to a committer thread as ONE atomic WriteBatch, which it writes
without sync and then makes durable with ONE `flush_wal_synced` (that call
releases the GIL, so the engine loop keeps serving during the fsync; a synced
put would freeze it). Completions come back to the engine thread through `post`.
While a batch is in flight, new writes gather into the next one, so the number
of fsyncs adapts to the disk: one per turn when it is fast, fewer and larger
batches when it is slow.

Newer wins: a write is staged only if its version is larger than the key's
current value, where "current" is, in this order, what is staged, what is in
flight, and what is stored. Deletes are tombstones (values too), so a late,
older write never resurrects deleted data; `async_purge_tombstones` drops old
tombstones once every replica has had time to see them.

Hints for a replica that is down live in the `hints` table under
`len(target) target len(table) table key`, one per (target, table, key),
newest only, committed in the same batch as the writes of the turn.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from loguru import logger

from iris_mesh.store._db import Database, StoreError
from iris_mesh.store._versioned import Versioned, VersionError, decode_versioned, encode_versioned

__all__ = ["LocalStore", "VERSIONED_TABLES"]

VERSIONED_TABLES = ("offline_msg", "cross_region_queue", "presence", "hints")
_HINTS = "hints"
_COUNTED_PARTITIONS = 4096

Post = Callable[[Callable[[float], None]], None]
OnDurable = Callable[[bool], None]


class _Batch:
    """The writes of one group commit. Engine thread: ops, callbacks; committer: reads ops."""

    __slots__ = ("ops", "early", "durable", "live_delta", "written")

    def __init__(self) -> None:
        # (table, key) -> new value, or None for a delete
        self.ops: dict[tuple[str, bytes], Versioned | None] = {}
        self.early: list[OnDurable] = []  # sync=False: may run once written, before the fsync
        self.durable: list[OnDurable] = []
        self.live_delta: dict[str, int] = {}
        self.written = False


def _is_live(item: Versioned | None) -> bool:
    return item is not None and not item.is_tombstone


def _hint_key(target: str, table: str, key: bytes) -> bytes:
    t, tb = target.encode(), table.encode()
    if len(t) > 255 or len(tb) > 255:
        raise ValueError("hint target and table names must be at most 255 bytes")
    return bytes([len(t)]) + t + bytes([len(tb)]) + tb + key


def _split_hint_key(raw: bytes) -> tuple[str, str, bytes]:
    t_len = raw[0]
    target = raw[1 : 1 + t_len].decode()
    tb_len = raw[1 + t_len]
    start = 2 + t_len
    return target, raw[start : start + tb_len].decode(), raw[start + tb_len :]


class LocalStore:
    """Versioned tables on the node's RocksDB with group commit. Methods named async_* run on the engine thread only.

    `post(fn)` must queue fn(now) to run on the engine thread and wake its loop;
    the engine calls `async_end_of_batch` once per loop turn, after the posted
    callables of that turn, so a completion that frees the committer lets the
    next staged batch go in the same turn.
    """

    def __init__(self, db: Database, *, post: Post) -> None:
        self._db = db
        self._post = post
        self._staged = _Batch()
        # (table, partition) -> live rows, least recently asked first (see live_in_partition)
        self._partition_live: dict[tuple[str, bytes], int] = {}
        self._inflight: _Batch | None = None  # engine thread's view: handed off, completion not yet run
        self._live = {table: self._count_live(table) for table in VERSIONED_TABLES}
        self._cond = threading.Condition()
        self._handoff: _Batch | None = None  # guarded by _cond: the batch the committer must take
        self._committing = False  # guarded by _cond
        self._stopping = False  # guarded by _cond
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stats = {
            "commits": 0,
            "writes_committed": 0,
            "max_batch": 0,
            "write_us_total": 0,
            "fsync_us_total": 0,
            "fsync_us_max": 0,
            "failed_commits": 0,
        }

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the committer thread."""
        if self._thread is None and not self._closed:
            self._spawn()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._commit_loop, name=f"store-commit:{self._db.path.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is staged, stop the committer (join). Idempotent.

        Call it on the engine thread or after the engine stopped. Completions are
        still posted; if the engine no longer runs them, those writes are durable
        but never acknowledged, which loses nothing.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            if not self._staged.ops:
                return
            self._spawn()
        assert self._thread is not None
        with self._cond:
            self._cond.wait_for(lambda: self._handoff is None and not self._committing)
        if self._staged.ops:
            batch, self._staged = self._staged, _Batch()
            self._inflight = batch
            with self._cond:
                self._handoff = batch
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._handoff is None and not self._committing)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    # ---- engine thread: writes ----------------------------------------------

    def async_apply(
        self,
        table: str,
        key: bytes,
        item: Versioned,
        on_durable: OnDurable | None = None,
        *,
        sync: bool = True,
        before: Callable[[Versioned | None], None] | None = None,
    ) -> bool:
        """Stage `item` if it is newer than the current value (staged, in flight or stored); return whether it was.

        on_durable(True) runs on the engine thread once the write (or, if it was
        not newer, the newer value already staged or in flight) is fsync'd;
        on_durable(False) if that commit failed. With sync=False it may run once
        the write is in RocksDB (safe from a process crash, not from power loss).
        before(current) runs first, with that current value, so callers need not read it again.
        """
        self._check_table(table)
        current, batch = self._current(table, key)
        if before is not None:
            before(current)
        if item.newer_than(current):
            self._stage(table, key, item, current)
            if on_durable is not None:
                (self._staged.durable if sync else self._staged.early).append(on_durable)
            return True
        if on_durable is not None:
            self._wait_for(batch, on_durable, sync)
        return False

    def async_put_hint(self, target: str, table: str, key: bytes, item: Versioned, on_durable: OnDurable | None = None) -> None:
        """Durably remember that replica `target` misses `item`; only the newest hint per (target, table, key) is kept."""
        self._check_table(table)
        self.async_apply(_HINTS, _hint_key(target, table, key), item, on_durable)

    def async_drop_hint(self, target: str, table: str, key: bytes, item: Versioned) -> None:
        """Delete the hint if it still holds `item`'s version (a newer hint stays)."""
        self._check_table(table)
        hint_key = _hint_key(target, table, key)
        current, _ = self._current(_HINTS, hint_key)
        if current is not None and current.version == item.version:
            self._stage(_HINTS, hint_key, None, current)

    def async_purge_tombstones(self, table: str, older_than_wall_ms: int, limit: int = 10_000) -> int:
        """Delete tombstones whose version's wall_ms is older than the cutoff; returns how many were staged."""
        self._check_table(table)
        found: list[tuple[bytes, Versioned]] = []
        for key, raw in self._db.iterate(table):
            if len(found) >= limit:
                break
            if len(raw) > 1 and raw[1] & 0x01:  # tombstone flag, without decoding live rows
                item = self._decode(table, key, raw)
                if item.version.wall_ms < older_than_wall_ms:
                    found.append((key, item))
        purged = 0
        for key, item in found:
            current, _ = self._current(table, key)
            if current is not None and current.version == item.version:  # nothing newer staged or in flight
                self._stage(table, key, None, current)
                purged += 1
        return purged

    def async_end_of_batch(self) -> None:
        """Hand what this turn staged to the committer, if it is idle (once per engine loop turn)."""
        if self._inflight is not None or self._closed:
            return
        staged = self._staged
        if not staged.ops:
            return
        if self._thread is None:
            raise StoreError("LocalStore.start() was not called; staged writes cannot be committed")
        self._staged = _Batch()
        self._inflight = staged
        with self._cond:
            self._handoff = staged
            self._cond.notify_all()

    # ---- reads (any thread; they see committed data only) -------------------

    def read(self, table: str, key: bytes) -> Versioned | None:
        """The newest committed value, tombstones included (a batch whose fsync is under way counts as committed)."""
        raw = self._db.get(table, key)
        return None if raw is None else self._decode(table, key, raw)

    def scan(
        self,
        table: str,
        prefix: bytes = b"",
        *,
        start_after: bytes | None = None,
        limit: int | None = None,
    ) -> list[tuple[bytes, Versioned]]:
        """Committed rows whose key starts with `prefix`, in key order, after `start_after`; tombstones included."""
        out: list[tuple[bytes, Versioned]] = []
        if limit is not None and limit <= 0:
            return out
        for key, raw in self._db.iterate(table, prefix=prefix, start=start_after or b""):
            if start_after is not None and key <= start_after:
                continue
            out.append((key, self._decode(table, key, raw)))
            if limit is not None and len(out) >= limit:
                break
        return out

    def live_in_partition(self, table: str, partition: bytes) -> int:
        """Live rows of one partition (keys `partition \\x00 ...`), counted once and then kept current.

        Approximate by the writes in flight when it is first counted; meant for soft bounds
        such as the size of an inbox. The counts of the `_COUNTED_PARTITIONS` partitions
        asked for most recently are kept.
        """
        ident = (table, partition)
        counted = self._partition_live
        count = counted.pop(ident, None)
        if count is None:
            count = sum(1 for _key, item in self.scan(table, partition + b"\x00") if not item.is_tombstone)
            if len(counted) >= _COUNTED_PARTITIONS:
                del counted[next(iter(counted))]  # the least recently asked: counted again if asked again
        counted[ident] = count
        return count

    def hints_for(self, target: str, limit: int = 1000) -> list[tuple[str, bytes, Versioned]]:
        """Committed hints for replica `target`: (table, key, item), in key order."""
        prefix = _hint_key(target, "", b"")[:-1]  # length byte + target
        out = []
        for raw_key, item in self.scan(_HINTS, prefix, limit=limit):
            _, table, key = _split_hint_key(raw_key)
            out.append((table, key, item))
        return out

    def count(self, table: str) -> int:
        """Committed live rows (tombstones excluded). O(1): counted at open, then kept up to date."""
        if table not in self._live:
            raise ValueError(f"{table!r} is not a versioned table (one of {', '.join(VERSIONED_TABLES)})")
        return self._live[table]

    def stats(self) -> dict[str, int]:
        """Commits, writes committed, largest batch, write/fsync time in µs, writes staged or in flight."""
        out = dict(self._stats)
        out["staged"] = len(self._staged.ops)
        out["in_flight"] = len(self._inflight.ops) if self._inflight is not None else 0
        out["pending"] = out["staged"] + out["in_flight"]
        return out

    # ---- engine thread: internals -------------------------------------------

    def _check_table(self, table: str) -> None:
        if table not in VERSIONED_TABLES:
            raise ValueError(f"{table!r} is not a versioned table (one of {', '.join(VERSIONED_TABLES)})")
        if self._closed:
            raise StoreError("the local store is closed")

    def _current(self, table: str, key: bytes) -> tuple[Versioned | None, _Batch | None]:
        """The key's newest value as the engine sees it, and the uncommitted batch that holds it (None: stored)."""
        ident = (table, key)
        if ident in self._staged.ops:
            return self._staged.ops[ident], self._staged
        if self._inflight is not None and ident in self._inflight.ops:
            return self._inflight.ops[ident], self._inflight
        return self.read(table, key), None

    def _stage(self, table: str, key: bytes, item: Versioned | None, current: Versioned | None) -> None:
        staged = self._staged
        staged.ops[(table, key)] = item
        delta = _is_live(item) - _is_live(current)
        if delta:
            staged.live_delta[table] = staged.live_delta.get(table, 0) + delta
            if self._partition_live:
                ident = (table, key.split(b"\x00", 1)[0])
                if ident in self._partition_live:
                    self._partition_live[ident] += delta

    def _wait_for(self, batch: _Batch | None, on_durable: OnDurable, sync: bool) -> None:
        """Acknowledge a stale write once the newer value it lost to is durable."""
        if batch is None or (not sync and batch.written):
            self._post(lambda _now: on_durable(True))
        else:
            (batch.durable if sync else batch.early).append(on_durable)

    def _on_written(self, batch: _Batch) -> None:
        if batch.written:
            return
        batch.written = True
        for table, delta in batch.live_delta.items():
            self._live[table] += delta
        early, batch.early = batch.early, []
        for cb in early:
            self._callback(cb, True)

    def _on_done(self, batch: _Batch, written: bool, durable: bool) -> None:
        if written:
            self._on_written(batch)
        callbacks = batch.early + batch.durable
        batch.early, batch.durable = [], []
        if self._inflight is batch:
            self._inflight = None
        for cb in callbacks:
            self._callback(cb, durable)

    @staticmethod
    def _callback(cb: OnDurable, ok: bool) -> None:
        try:
            cb(ok)
        except Exception:
            logger.exception("an on_durable callback failed; the write itself is unaffected")

    def _decode(self, table: str, key: bytes, raw: bytes) -> Versioned:
        try:
            return decode_versioned(raw)
        except VersionError as exc:
            raise StoreError(f"damaged value in table {table} at key {key!r}: {exc}") from None

    def _count_live(self, table: str) -> int:
        return sum(1 for _, raw in self._db.iterate(table) if len(raw) > 1 and not raw[1] & 0x01)

    # ---- committer thread -----------------------------------------------------

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._handoff is not None or self._stopping)
                batch = self._handoff
                if batch is None:
                    return
                # Taken now: the completion posted by _commit may let the engine hand
                # over the next batch before this commit's bookkeeping ends.
                self._handoff = None
                self._committing = True
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._committing = False
                    self._cond.notify_all()

    def _commit(self, batch: _Batch) -> None:
        ops = [(table, key, None if item is None else encode_versioned(item)) for (table, key), item in batch.ops.items()]
        t0 = time.perf_counter()
        try:
            self._db.write(ops)
        except Exception as exc:
            self._stats["failed_commits"] += 1
            logger.error(
                "storage write of {} operations failed, none acknowledged ({}); check disk space and the data directory",
                len(ops),
                exc,
            )
            self._post(lambda _now: self._on_done(batch, written=False, durable=False))
            return
        t1 = time.perf_counter()
        if batch.early:
            self._post(lambda _now: self._on_written(batch))
        try:
            self._db.flush_wal_synced()
        except Exception as exc:
            self._stats["failed_commits"] += 1
            logger.error(
                "fsync of the write-ahead log failed for {} operations, none acknowledged as durable ({}); "
                "the disk may be failing: stop the node and check it",
                len(ops),
                exc,
            )
            self._post(lambda _now: self._on_done(batch, written=True, durable=False))
            return
        fsync_us = int((time.perf_counter() - t1) * 1e6)
        stats = self._stats
        stats["commits"] += 1
        stats["writes_committed"] += len(ops)
        stats["max_batch"] = max(stats["max_batch"], len(ops))
        stats["write_us_total"] += int((t1 - t0) * 1e6)
        stats["fsync_us_total"] += fsync_us
        stats["fsync_us_max"] = max(stats["fsync_us_max"], fsync_us)
        self._post(lambda _now: self._on_done(batch, written=True, durable=True))
