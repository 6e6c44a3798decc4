"""Versioned tables on the node's RocksDB, written by group commit.

The engine thread stages writes during one loop turn; `async_end_of_batch` writes
what is staged as ONE atomic WriteBatch and hands it to group commit
(`_commit.py`), which makes it durable with one WAL fsync on a sync thread shared
by every batch written before that fsync started. Completions come back to the
engine thread through `post`.

Newer wins: a write is staged only if its version is larger than the key's
current value, where "current" is, in this order, what is staged, what is written
but not yet durable, and what is stored. Deletes are tombstones (values too), so a
late, older write never resurrects deleted data; `async_purge_tombstones` drops
old tombstones once every replica has had time to see them.

Replica writes arrive in groups (one per mesh frame and table): `async_apply_many`
stages a group with one completion for all of it, and keeps the encoding that came
over the wire, so those bytes are written as they are.

Hints for a replica that is down live in the `hints` table under
`len(target) target len(table) table key`, one per (target, table, key),
newest only, committed in the same batch as the writes of the turn.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, Callable, Sequence

from iris_mesh.store._commit import Batch, GroupCommit, OnDurable, Post
from iris_mesh.store._db import Database, StoreError
from iris_mesh.store._versioned import Version, Versioned, VersionError, decode_versioned

__all__ = ["LocalStore", "VERSIONED_TABLES"]

VERSIONED_TABLES = ("offline_msg", "cross_region_queue", "presence", "hints")
_HINTS = "hints"
_COUNTED_PARTITIONS = 4096
# Written batches waiting for an fsync, at most: past this, writes keep gathering in the staged
# batch. Every write looks its key up in each of them, so a slow disk must not let them pile up.
_MAX_WRITTEN_UNSYNCED = 8

_ABSENT = object()  # "not in this batch" (a staged delete is None)


class _Join:
    """Calls `fn(ok)` once every callback handed out by `one` has run; ok only if all of them got True."""

    __slots__ = ("fn", "waiting", "ok")

    def __init__(self, fn: OnDurable) -> None:
        self.fn = fn
        self.waiting = 0
        self.ok = True

    def one(self) -> OnDurable:
        self.waiting += 1
        return self._arrive

    def _arrive(self, ok: bool) -> None:
        if not ok:
            self.ok = False
        self.waiting -= 1
        if self.waiting == 0:
            self.fn(self.ok)


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
    callables of that turn, so everything a turn staged is written in that turn.
    """

    def __init__(self, db: Database, *, post: Post) -> None:
        self._db = db
        self._post = post
        self._staged = Batch()
        # (table, partition) -> live rows, least recently asked first (see live_in_partition)
        self._partition_live: dict[tuple[str, bytes], int] = {}
        self._live = {table: self._count_live(table) for table in VERSIONED_TABLES}
        self._hint_batches: dict[str, int] = {}  # replica -> batches written with hints for it (see hints_written)
        self._commit = GroupCommit(db, post=post, on_written=self._on_written, name=db.path.name)
        self._closed = False

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the sync thread."""
        if not self._closed:
            self._commit.start()

    def close(self) -> None:
        """Write what is staged, make everything written durable, stop the sync thread (join). Idempotent.

        Call it on the engine thread or after the engine stopped. Completions are
        still posted; if the engine no longer runs them, those writes are durable
        but never acknowledged, which loses nothing.
        """
        if self._closed:
            return
        self._closed = True
        if self._staged.ops:
            batch, self._staged = self._staged, Batch()
            self._write(batch)
        self._commit.close()

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
        """Stage `item` if it is newer than the current value (staged, written or durable); return whether it was.

        After a failed WAL fsync (`durability_lost`) nothing is staged and on_durable(False) runs: a value that
        fsync was to make durable may be in RocksDB and not on disk, so "not newer" proves nothing.

        on_durable(True) runs on the engine thread once the write (or, if it was
        not newer, the newer value already staged or written) is fsync'd;
        on_durable(False) if that commit failed. With sync=False it may run once
        the write is in RocksDB (safe from a process crash, not from power loss).
        before(current) runs first, with that current value, so callers need not read it again.
        """
        self._check_table(table)
        if self._commit.sync_failed is not None:
            if on_durable is not None:
                self._post(lambda _now: on_durable(False))
            return False
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

    def async_apply_many(
        self,
        table: str,
        keys: Sequence[bytes],
        items: Sequence[Versioned],
        raws: Sequence[bytes],
        on_durable: OnDurable,
        *,
        sync: bool = True,
        partition_limit: int | None = None,
    ) -> tuple[list[int], list[Version | None]]:
        """Apply a group of writes (keys[i] gets items[i], encoded as raws[i]) as `async_apply` applies one.

        Returns the positions refused for space, and for every other write, in order, the
        version of the key's current value it was compared with (None: no value). A live item
        for a key its partition does not hold yet is refused (and nothing else is done with
        it) while the partition already holds `partition_limit` live rows; rows staged earlier
        in the group count. on_durable(ok) runs once, on the engine thread, when every write
        that was not refused (or the newer value it lost to) is durable (with sync=False:
        written); ok is False if any of those commits failed, and for the whole group once the store has lost
        durability (then nothing is applied, and the versions returned are all None).
        """
        self._check_table(table)
        if self._commit.sync_failed is not None:
            self._post(lambda _now: on_durable(False))
            return [], [None] * len(keys)
        staged = self._staged
        ops, staged_raws, partition_delta = staged.ops, staged.raws, staged.partition_delta
        written = list(self._commit.written_batches())  # at most _MAX_WRITTEN_UNSYNCED
        counted = self._partition_live
        live_in_partition = self.live_in_partition
        stored = self._db.get_many(table, keys)  # one call: a read per key would cost more than the rest
        decode = self._decode
        refused: list[int] = []
        currents: list[Version | None] = []
        add_current = currents.append
        live_delta = 0
        on_staged = False
        waits_for: list[Batch] = []  # written batches holding newer values some writes lost to
        position = -1
        for key, item, raw, found in zip(keys, items, raws, stored):
            position += 1
            version, value = item
            ident = (table, key)
            current = ops.get(ident, _ABSENT)
            holder: Batch | None = staged
            if current is _ABSENT:
                holder = None
                for batch in written:
                    current = batch.ops.get(ident, _ABSENT)
                    if current is not _ABSENT:
                        holder = batch
                        break
                else:
                    current = None if found is None else decode(table, key, found)
            partition = None
            if partition_limit is not None and value is not None:
                cut = key.find(b"\x00")
                partition = key if cut < 0 else key[:cut]
                # A rewrite of a key the partition already holds (on disk, or staged or written to be) is never
                # refused.
                if current is None and live_in_partition(table, partition) >= partition_limit:
                    refused.append(position)
                    continue
            current_version = None if current is None else current[0]  # type: ignore[index]
            add_current(current_version)
            if current_version is None or version > current_version or (
                    version == current_version and item.newer_than(current)):  # type: ignore[arg-type]
                ops[ident] = item
                staged_raws[ident] = raw
                on_staged = True
                delta = (value is not None) - (current is not None and current[1] is not None)  # type: ignore[index]
                if delta:
                    live_delta += delta
                    if partition is None:
                        cut = key.find(b"\x00")
                        partition = key if cut < 0 else key[:cut]
                    where = (table, partition)
                    partition_delta[where] = partition_delta.get(where, 0) + delta
                    if where in counted:
                        counted[where] += delta
            elif holder is staged:
                on_staged = True
            elif holder is not None and holder not in waits_for:
                waits_for.append(holder)
        if live_delta:
            staged.live_delta[table] = staged.live_delta.get(table, 0) + live_delta
        join = _Join(on_durable)
        if on_staged:
            (staged.durable if sync else staged.early).append(join.one())
        if sync:  # written batches: only their fsync is still to come
            for batch in waits_for:
                batch.durable.append(join.one())
        if join.waiting == 0:
            self._post(lambda _now: on_durable(True))
        return refused, currents

    def async_put_hint(self, target: str, table: str, key: bytes, item: Versioned, on_durable: OnDurable | None = None) -> None:
        """Durably remember that replica `target` misses `item`; only the newest hint per (target, table, key) is kept."""
        self._check_table(table)
        self.async_apply(_HINTS, _hint_key(target, table, key), item, on_durable)
        self._staged.hint_targets.add(target)

    def async_drop_row(self, table: str, key: bytes, item: Versioned) -> None:
        """Delete the row (no tombstone) if it still holds `item`'s version: for a row handed over to other cores
        (a newer write that came meanwhile stays)."""
        self._check_table(table)
        current, _ = self._current(table, key)
        if current is not None and current.version == item.version:
            self._stage(table, key, None, current)

    def async_drop_hint(self, target: str, table: str, key: bytes, item: Versioned) -> None:
        """Delete the hint if it still holds `item`'s version (a newer hint stays)."""
        self._check_table(table)
        hint_key = _hint_key(target, table, key)
        current, _ = self._current(_HINTS, hint_key)
        if current is not None and current.version == item.version:
            self._stage(_HINTS, hint_key, None, current)

    def async_purge_tombstones(self, table: str, older_than_wall_ms: int, limit: int = 10_000, *,
                               start_after: bytes | None = None,
                               max_rows: int | None = None) -> tuple[int, bytes | None]:
        """Delete tombstones whose version's wall_ms is older than the cutoff, reading the rows after `start_after`:
        at most `limit` purged and `max_rows` read (a table of millions is purged over many engine turns).

        Returns how many were staged, and the key to go on after (None: the table's end was reached).
        """
        self._check_table(table)
        found: list[tuple[bytes, Versioned]] = []
        cursor = None
        read = 0
        for key, raw in self._db.iterate(table, start=start_after or b""):
            if start_after is not None and key <= start_after:
                continue
            if len(found) >= limit or (max_rows is not None and read >= max_rows):
                break
            read += 1
            cursor = key
            if len(raw) > 1 and raw[1] & 0x01:  # tombstone flag, without decoding live rows
                item = self._decode(table, key, raw)
                if item.version.wall_ms < older_than_wall_ms:
                    found.append((key, item))
        else:
            cursor = None  # the table's end
        purged = 0
        for key, item in found:
            current, _ = self._current(table, key)
            if current is not None and current.version == item.version:  # nothing newer staged or in flight
                self._stage(table, key, None, current)
                purged += 1
        return purged, cursor

    def async_end_of_batch(self) -> None:
        """Once per engine loop turn: write what is staged as one batch, for the sync thread's next fsync.

        While `_MAX_WRITTEN_UNSYNCED` written batches wait for their fsync (a slow disk), writes
        keep gathering in the staged batch instead, written once an fsync completes.
        """
        if self._closed or not self._staged.ops or self._commit.written_count >= _MAX_WRITTEN_UNSYNCED:
            return
        if not self._commit.started:
            raise StoreError("LocalStore.start() was not called; staged writes cannot be committed")
        batch, self._staged = self._staged, Batch()
        self._write(batch)

    def _write(self, batch: Batch) -> None:
        """Write a staged batch; if RocksDB refused it, its rows are not there: the partition counts forget them."""
        self._commit.async_write(batch)
        if not batch.written:
            counted = self._partition_live
            for ident, delta in batch.partition_delta.items():
                if ident in counted:
                    counted[ident] -= delta

    # ---- reads (any thread; they see written data, durable or about to be) ---

    def read(self, table: str, key: bytes) -> Versioned | None:
        """The newest written value, tombstones included (a batch written and waiting for its fsync counts)."""
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
        if limit is not None and limit <= 0:
            return []
        rows, _more = self.scan_page(table, prefix, start_after=start_after,
                                     limit=sys.maxsize if limit is None else limit, max_bytes=sys.maxsize)
        return rows

    def scan_page(
        self, table: str, prefix: bytes = b"", *, start_after: bytes | None = None, limit: int, max_bytes: int,
    ) -> tuple[list[tuple[bytes, Versioned]], bool]:
        """Rows as `scan` reads them, at most `limit`, and fewer once their keys and encoded values would hold over
        `max_bytes` (the first row always comes); and whether rows are left after them."""
        out: list[tuple[bytes, Versioned]] = []
        size = 0
        for key, raw in self._db.iterate(table, prefix=prefix, start=start_after or b""):
            if start_after is not None and key <= start_after:
                continue
            size += len(key) + len(raw)
            if len(out) >= limit or (out and size > max_bytes):
                return out, True
            out.append((key, self._decode(table, key, raw)))
        return out, False

    def live_in_partition(self, table: str, partition: bytes) -> int:
        """Live rows of one partition (keys `partition \\x00 ...`), counted once and then kept current.

        The first count reads the rows written to RocksDB and adds the writes staged for
        the next commit; meant for bounds such as the size of an inbox. The counts of the
        `_COUNTED_PARTITIONS` partitions asked for most recently are kept.
        """
        ident = (table, partition)
        counted = self._partition_live
        count = counted.pop(ident, None)
        if count is None:
            count = self._count_live(table, partition + b"\x00")
            # What RocksDB does not hold yet: the writes staged for the next commit (kept per partition as they
            # are staged: going through every staged write for each partition counted made a batch of writes to
            # many new partitions quadratic).
            count += self._staged.partition_delta.get(ident, 0)
            if len(counted) >= _COUNTED_PARTITIONS:
                del counted[next(iter(counted))]  # the least recently asked: counted again if asked again
        counted[ident] = count
        return count

    def hints_for(
        self, target: str, limit: int = 1000, *, after: tuple[str, bytes] | None = None,
    ) -> list[tuple[str, bytes, Versioned]]:
        """Hints for replica `target`: (table, key, item), in key order, after the hint `after`.

        Written hints, as the engine sees them: one dropped or replaced in this turn (staged, not
        written yet) is left out or read as its new version.
        """
        return self.hints_page(target, limit, after=after)[0]

    def hints_page(
        self, target: str, limit: int, *, after: tuple[str, bytes] | None = None, max_bytes: int = sys.maxsize,
    ) -> tuple[list[tuple[str, bytes, Versioned]], bool]:
        """Hints as `hints_for` reads them, fewer once their keys and values would hold over `max_bytes` (the
        first always comes); and whether hints are left after them."""
        prefix = _hint_key(target, "", b"")[:-1]  # length byte + target
        start_after = None if after is None else _hint_key(target, *after)
        staged = self._staged.ops
        out = []
        rows, more = self.scan_page(_HINTS, prefix, start_after=start_after, limit=limit, max_bytes=max_bytes)
        for raw_key, item in rows:
            newer = staged.get((_HINTS, raw_key), _ABSENT)
            if newer is None:
                continue
            _, table, key = _split_hint_key(raw_key)
            out.append((table, key, item if newer is _ABSENT else newer))
        return out, more

    def hints_written(self, target: str) -> int:
        """Changes whenever hints for replica `target` were written (not when any are dropped): a read of its hints
        that found none holds until this changes."""
        return self._hint_batches.get(target, 0)

    def count_hints_for(self, target: str, cap: int) -> int:
        """Committed hints for replica `target`, counted up to `cap` (nothing is decoded)."""
        prefix = _hint_key(target, "", b"")[:-1]
        return sum(1 for _ in itertools.islice(self._db.iterate(_HINTS, prefix=prefix), cap))

    def count(self, table: str) -> int:
        """Committed live rows (tombstones excluded). O(1): counted at open, then kept up to date."""
        if table not in self._live:
            raise ValueError(f"{table!r} is not a versioned table (one of {', '.join(VERSIONED_TABLES)})")
        return self._live[table]

    @property
    def durability_lost(self) -> str | None:
        """Why a WAL fsync failed (None: none has since the store opened). Writes are refused from then on."""
        return self._commit.sync_failed

    def engine_state(self) -> dict[str, int]:
        """RocksDB's background work and write throttle now (see `Database.engine_state`)."""
        return self._db.engine_state()

    def latency_view(self, now: float) -> dict[str, dict[str, Any]]:
        """The last minute's WAL fsyncs (`fsync`: the disk) and group commits (`commit`: from a batch's write to
        its completion on the engine thread, which is what a replica write waits for here)."""
        return {"commit": self._commit.commit_latency.summary(now), "fsync": self._commit.fsync_latency.summary(now)}

    def stats(self) -> dict[str, int]:
        """Commits (fsyncs), writes committed, largest commit, write/fsync time in µs, writes staged or not yet durable."""
        out = dict(self._commit.stats)
        out["staged"] = len(self._staged.ops)
        out["in_flight"] = self._commit.pending_writes()
        out["pending"] = out["staged"] + out["in_flight"]
        return out

    # ---- engine thread: internals -------------------------------------------

    def _check_table(self, table: str) -> None:
        if table not in VERSIONED_TABLES:
            raise ValueError(f"{table!r} is not a versioned table (one of {', '.join(VERSIONED_TABLES)})")
        if self._closed:
            raise StoreError("the local store is closed")

    def _current(self, table: str, key: bytes) -> tuple[Versioned | None, Batch | None]:
        """The key's newest value as the engine sees it, and the batch not yet durable that holds it (None: durable)."""
        ident = (table, key)
        current = self._staged.ops.get(ident, _ABSENT)
        if current is not _ABSENT:
            return current, self._staged  # type: ignore[return-value]
        for batch in self._commit.written_batches():
            current = batch.ops.get(ident, _ABSENT)
            if current is not _ABSENT:
                return current, batch  # type: ignore[return-value]
        return self.read(table, key), None

    def _stage(self, table: str, key: bytes, item: Versioned | None, current: Versioned | None) -> None:
        staged = self._staged
        staged.ops[(table, key)] = item
        if staged.raws:
            staged.raws.pop((table, key), None)
        delta = _is_live(item) - _is_live(current)
        if delta:
            staged.live_delta[table] = staged.live_delta.get(table, 0) + delta
            ident = (table, key.split(b"\x00", 1)[0])
            staged.partition_delta[ident] = staged.partition_delta.get(ident, 0) + delta
            if ident in self._partition_live:
                self._partition_live[ident] += delta

    def _wait_for(self, batch: Batch | None, on_durable: OnDurable, sync: bool) -> None:
        """Acknowledge a stale write once the newer value it lost to is durable."""
        if batch is None or (not sync and batch.written):
            self._post(lambda _now: on_durable(True))
        else:
            (batch.durable if sync else batch.early).append(on_durable)

    def _on_written(self, batch: Batch) -> None:
        for table, delta in batch.live_delta.items():
            self._live[table] += delta
        for target in batch.hint_targets:
            self._hint_batches[target] = self._hint_batches.get(target, 0) + 1

    def _decode(self, table: str, key: bytes, raw: bytes) -> Versioned:
        try:
            return decode_versioned(raw)
        except VersionError as exc:
            raise StoreError(f"damaged value in table {table} at key {key!r}: {exc}") from None

    def _count_live(self, table: str, prefix: bytes = b"") -> int:
        """Live rows (tombstones left out) under `prefix`, from the encoded values' flags: nothing is decoded."""
        return sum(1 for _, raw in self._db.iterate(table, prefix=prefix) if len(raw) > 1 and not raw[1] & 0x01)
