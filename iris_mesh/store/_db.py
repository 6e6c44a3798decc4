"""The node's RocksDB: one database per node, one column family per table.

Atomicity: a single `put`/`delete` on one column family is atomic, and so is one
`write(ops)` as a whole, across column families (one RocksDB WriteBatch): after a
crash either every op of the batch is there or none is.

Durability: every write goes to the write-ahead log (the WAL is never disabled
and RocksDB hands each write to the OS before the call returns; rocksdict has
no manual-WAL-flush mode, and none is set). So:

- once `write` (or any put) has returned, the data survives SIGKILL or a crash
  of this process, because it is in the OS page cache;
- it survives power loss or a kernel crash only once the WAL is fsync'd:
  `put_synced`, or `flush_wal_synced()` after the write returned.

Recovery replays the WAL up to the first damaged record (point-in-time
recovery), which after power loss can only be the unsynced tail.

Threads: RocksDB is thread-safe and so are these methods, except `close`, which
must run after every other user is done. `put_synced` holds the GIL for its whole
fsync; `flush_wal_synced` releases it, so group commit syncs with that one.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from rocksdict import (BlockBasedOptions, Checkpoint, DBRecoveryMode, Options, ReadOptions, Rdict, WriteBatch,
                      WriteOptions)

from iris_mesh.store._restore_mark import refuse_if_restoring

__all__ = [
    "CHECKPOINT_STAGING_PREFIX", "Database", "ENGINE_FIELDS", "ENGINE_PROPERTIES", "INSIDE_ASIDE_PREFIX",
    "MAX_WAL_BYTES", "StoreError", "TABLES", "held_by_this_process",
]

TABLES = ("offline_msg", "cross_region_queue", "presence", "hints", "meta")
# Tables written per message: every write first reads the key's current version, and for a new
# key (most of them) bloom filters answer "not here" without searching the memtable or the files.
_FILTERED = frozenset({"offline_msg", "cross_region_queue", "presence", "hints"})
_MEMTABLE_BLOOM_RATIO = 0.02  # of the write buffer: ~25 bits per key of a full memtable of small rows
_BLOOM_BITS_PER_KEY = 10
# Every replica of a range gets the same writes: with equal memtables all of them would flush at the
# same moment, and a quorum would wait for a flushing replica. Each open draws its own size.
_WRITE_BUFFER_BYTES = 64 << 20
_WRITE_BUFFER_JITTER = 0.4
# A WAL file is deleted only once every table with rows in it has flushed them. `meta` gets a row every
# CLOCK_SAVE_INTERVAL_S and would flush only at RocksDB's default limit (4 x the write buffers, ~3 GB),
# keeping every WAL since the start: ~3 GB of disk, and a 5 s replay on the next start. Past this
# total RocksDB flushes the tables that hold the oldest WAL instead. It is above what the busy tables'
# memtables hold between their own flushes, so they still flush when full.
MAX_WAL_BYTES = 512 << 20
# Data a core set aside inside its own data directory (one it could not rename: a mount point) is in a
# subdirectory named so; the directory counts as empty without it.
INSIDE_ASIDE_PREFIX = ".forgotten-"
# A checkpoint is first taken into a subdirectory so named inside the data directory (_checkpoint.py); one a
# crash left there is deleted when the database opens.
CHECKPOINT_STAGING_PREFIX = ".checkpoint-"
_FLUSH_POLL_S = 0.01
# Database.engine_state: (field, RocksDB integer property, summed over the tables or read for the whole database)
ENGINE_PROPERTIES = (
    ("memtable_bytes", "rocksdb.cur-size-all-mem-tables", True),
    ("table_file_bytes", "rocksdb.live-sst-files-size", True),
    ("l0_files", "rocksdb.num-files-at-level0", True),
    ("pending_compaction_bytes", "rocksdb.estimate-pending-compaction-bytes", True),
    ("flushes_running", "rocksdb.num-running-flushes", False),
    ("compactions_running", "rocksdb.num-running-compactions", False),
    ("delayed_write_rate", "rocksdb.actual-delayed-write-rate", False),
    ("writes_stopped", "rocksdb.is-write-stopped", False),
)
ENGINE_FIELDS = (*(name for name, _, _ in ENGINE_PROPERTIES), "wal_bytes")
# Column families another part of the node may create later; not foreign.
_KNOWN_EXTRA = frozenset({"default", "raft"})

# Databases open in this process (resolved paths). RocksDB's file lock does not
# stop a second open from the same process in a way the caller can test without
# risk (closing any descriptor of LOCK drops the process's POSIX lock), so
# `held_by_this_process` answers from here.
_open_here: set[Path] = set()
_open_here_lock = threading.Lock()


class StoreError(RuntimeError):
    """The node's data directory cannot be used; the node must not start."""


def held_by_this_process(path: Path) -> bool:
    """Whether a `Database` of this process has `path` open."""
    with _open_here_lock:
        return path.resolve() in _open_here


def _options(max_wal_bytes: int = MAX_WAL_BYTES) -> Options:
    opts = Options(raw_mode=True)
    # Flushes and compactions keep the normal CPU priority. Niced, a flush on a busy machine took
    # 0.2-0.4 s of wall time for 0.13 s of CPU and stalled the writes around it: bench/store.py's
    # p99 at half rate was 40-85 ms (max 70-140 ms) niced, 11-13 ms (max 23-27 ms) not.
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_paranoid_checks(True)
    opts.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    opts.set_bytes_per_sync(1 << 20)  # write table files back as they grow, not in one burst at their fsync
    opts.set_max_total_wal_size(max_wal_bytes)
    return opts


def _table_options(name: str) -> Options:
    opts = Options(raw_mode=True)
    if name in _FILTERED:
        opts.set_write_buffer_size(int(_WRITE_BUFFER_BYTES * random.uniform(1 - _WRITE_BUFFER_JITTER, 1 + _WRITE_BUFFER_JITTER)))
        opts.set_memtable_prefix_bloom_ratio(_MEMTABLE_BLOOM_RATIO)
        opts.set_memtable_whole_key_filtering(True)
        table = BlockBasedOptions()
        table.set_bloom_filter(_BLOOM_BITS_PER_KEY, False)
        opts.set_block_based_table_factory(table)
    return opts


def _check_directory(path: Path) -> None:
    """Refuse, before RocksDB writes anything there, a directory that is not ours."""
    if not any(not entry.name.startswith(INSIDE_ASIDE_PREFIX) for entry in path.iterdir()):
        return
    if not (path / "CURRENT").exists():
        raise StoreError(
            f"{path} is not empty and is not a RocksDB database; refusing to touch it "
            "(point data_dir at an empty or iris_mesh directory)"
        )
    try:
        existing = set(Rdict.list_cf(str(path), _options()))
    except Exception as exc:
        raise StoreError(
            f"the database in {path} is damaged ({exc}); refusing to open it. "
            "Restore a backup (meshctl restore) or move the directory away to let the node resync"
        ) from None
    foreign = existing - set(TABLES) - _KNOWN_EXTRA
    if foreign:
        raise StoreError(f"{path} holds tables this node does not know ({sorted(foreign)}); refusing to open it")
    if "meta" not in existing:
        raise StoreError(f"{path} is a RocksDB database of another program (no iris_mesh tables); refusing to open it")


class Database:
    """An open RocksDB with every table as a column family (byte keys, byte values)."""

    __slots__ = ("path", "_db", "_tables", "_handles", "_sync", "_closed", "_resolved")

    def __init__(self, path: Path, *, max_wal_bytes: int = MAX_WAL_BYTES) -> None:
        self.path = path
        unfinished = refuse_if_restoring(path)
        if unfinished is not None:
            raise StoreError(unfinished)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._resolved = path.resolve()
            if held_by_this_process(path):
                raise StoreError(f"the database in {path} is already open in this process")
            _check_directory(path)
        except OSError as exc:
            raise StoreError(
                f"cannot use {path} as the data directory: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else "")
                + " (config key data_dir)"
            ) from None
        try:
            tables = {name: _table_options(name) for name in TABLES}
            self._db = Rdict(str(path), _options(max_wal_bytes), column_families=tables)
        except Exception as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StoreError(
                    f"the database in {path} is in use by another process (a running node?): {text}"
                ) from None
            raise StoreError(f"cannot open the database in {path}: {text}") from None
        self._tables = {name: self._db.get_column_family(name) for name in TABLES}
        self._handles = {name: self._db.get_column_family_handle(name) for name in TABLES}
        self._sync = WriteOptions()
        self._sync.sync = True
        self._closed = False
        with _open_here_lock:
            _open_here.add(self._resolved)
        _drop_unfinished_checkpoints(path)

    def get(self, table: str, key: bytes) -> bytes | None:
        try:
            return self._tables[table].get(key)
        except Exception as exc:  # rocksdict raises a bare Exception (a checksum mismatch, an I/O error)
            raise self._read_failed(table, exc) from None

    def get_many(self, table: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of `keys` (None where there is none), read in one call."""
        try:
            return self._tables[table].get(list(keys)) if keys else []
        except Exception as exc:
            raise self._read_failed(table, exc) from None

    def put_synced(self, table: str, key: bytes, value: bytes) -> None:
        """Put and fsync the WAL before returning (for rare metadata writes only: holds the GIL during the sync)."""
        self._tables[table].put(key, value, self._sync)

    def write(self, ops: Iterable[tuple[str, bytes, bytes | None]]) -> int:
        """Apply (table, key, value) puts and (table, key, None) deletes as one atomic batch, without fsync; returns how many."""
        batch = WriteBatch(raw_mode=True)
        count = 0
        for table, key, value in ops:
            if value is None:
                batch.delete(key, self._handles[table])
            else:
                batch.put(key, value, self._handles[table])
            count += 1
        if count:
            self._db.write(batch)
        return count

    def flush_wal_synced(self) -> None:
        """Fsync the WAL: every write that returned before this call is now safe from power loss. Releases the GIL."""
        self._db.flush_wal(True)

    def iterate(self, table: str, *, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs in key order from the first key >= max(prefix, start) while keys start with `prefix`.

        The iterator reads one consistent snapshot taken when it starts.
        """
        options = ReadOptions()  # its bound is encoded as the table's keys are (raw) when the iterator is made
        end = _prefix_end(prefix)
        if end is not None:
            # RocksDB stops at the bound: without it a seek past the prefix's last live key steps over every
            # deleted key up to the next live one (a drained target's hints, until compaction) on each read.
            options.set_iterate_upper_bound(end)
        it = self._tables[table].iter(options)
        it.seek(max(prefix, start))
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield key, it.value()
            it.next()
        try:
            it.status()  # the end of the table, or an error that cut the iteration short (RocksDB's Iterator doc)
        except Exception as exc:
            raise self._read_failed(table, exc) from None

    def _read_failed(self, table: str, exc: Exception) -> StoreError:
        return StoreError(f"reading table {table} of the database in {self.path} failed: {exc}; the data directory "
                          "is damaged (or its disk fails): stop the node, then restore it from a backup (meshctl "
                          "restore) or move the directory aside and let anti-entropy fill a new one")

    def engine_state(self) -> dict[str, int]:
        """RocksDB's own state, for operators: what its background work and write throttle are doing now.

        memtable_bytes, table_file_bytes (on disk), l0_files and pending_compaction_bytes are
        summed over every table; wal_bytes is the size of the live WAL files (at most about
        MAX_WAL_BYTES); flushes_running and compactions_running count the background jobs;
        delayed_write_rate is the rate RocksDB slows writes to (bytes/s, 0: not slowed) and
        writes_stopped is 1 while it stops them (too many memtables waiting to flush or files
        at level 0).
        """
        out = {}
        for name, prop, per_table in ENGINE_PROPERTIES:
            sources = self._tables.values() if per_table else (self._db,)
            out[name] = sum(source.property_int_value(prop) or 0 for source in sources)
        out["wal_bytes"] = self._wal_bytes()
        return out

    def _wal_bytes(self) -> int:
        total = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.endswith(".log"):  # WAL files; RocksDB's own log is LOG, LOG.old.*
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:  # deleted once flushed, between the listing and the stat
                        pass
        return total

    def flush_memtables(self, wait_s: float, stopping: threading.Event | None = None) -> bool:
        """Have RocksDB flush every table's memtable and wait until it has, polling with the interpreter lock free
        (RocksDB's own flush call holds it while it waits); False if `wait_s` passed first or `stopping` was set."""
        for table in self._tables.values():
            table.flush(False)
        deadline = time.monotonic() + wait_s
        stopping = stopping or threading.Event()
        while any(table.property_int_value("rocksdb.mem-table-flush-pending") for table in self._tables.values()) \
                or self._db.property_int_value("rocksdb.num-running-flushes"):
            if time.monotonic() >= deadline or stopping.wait(_FLUSH_POLL_S):
                return False
        return True

    def checkpoint(self, dest: Path) -> None:
        """Write a consistent point-in-time copy (hard links where possible) to `dest`, which must not exist."""
        Checkpoint(self._db).create_checkpoint(str(dest))

    def close(self) -> None:
        """Sync the WAL and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._db.flush_wal(True)
        finally:
            for table in self._tables.values():
                table.close()
            self._tables = {}
            self._handles = {}
            self._db.close()
            with _open_here_lock:
                _open_here.discard(self._resolved)


def _drop_unfinished_checkpoints(path: Path) -> None:
    for entry in path.iterdir():
        if entry.name.startswith(CHECKPOINT_STAGING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `prefix` (None: no such key, as for b"")."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
