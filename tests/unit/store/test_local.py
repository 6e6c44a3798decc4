"""LocalStore: group commit, newer-wins, acknowledgements only after fsync, hints, tombstones.

The test thread plays the engine thread: `post` queues callables, and `Engine.turn`
runs them and ends the loop turn, as the real engine does.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from iris_mesh.store._db import Database
from iris_mesh.store._local import LocalStore
from iris_mesh.store._versioned import Version, Versioned, encode_versioned
from support.waiting import wait_until

TABLE = "offline_msg"


def v(hlc: int, value: bytes | None = b"x", node: str = "n1") -> Versioned:
    return Versioned(Version(hlc, node), value)


class Engine:
    """Stands in for the engine thread: posted callables wait until the test runs a turn."""

    def __init__(self) -> None:
        self.mailbox: collections.deque[Callable[[float], None]] = collections.deque()
        self.store: LocalStore | None = None

    def post(self, fn: Callable[[float], None]) -> None:
        self.mailbox.append(fn)  # deque.append is thread-safe

    def run_posted(self) -> None:
        while self.mailbox:
            self.mailbox.popleft()(time.monotonic())

    def turn(self) -> None:
        self.run_posted()
        assert self.store is not None
        self.store.async_end_of_batch()

    def turn_until(self, predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
        def step() -> object:
            self.turn()
            return predicate()

        wait_until(step, timeout_s, what, interval_s=0.001)


class Acks:
    """Collects on_durable results per name."""

    def __init__(self) -> None:
        self.results: dict[str, list[bool]] = collections.defaultdict(list)

    def __call__(self, name: str) -> Callable[[bool], None]:
        return lambda ok: self.results[name].append(ok)

    def got(self, *names: str) -> bool:
        return all(self.results.get(name) for name in names)


class GatedDatabase(Database):
    """A real database whose WAL fsync waits until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.in_fsync = threading.Event()
        self.gate = threading.Event()

    def flush_wal_synced(self) -> None:
        self.in_fsync.set()
        assert self.gate.wait(10.0), "test never opened the fsync gate"
        super().flush_wal_synced()
        self.in_fsync.clear()


class FailingDatabase(Database):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail_write = False
        self.fail_fsync = False

    def write(self, ops):  # type: ignore[no-untyped-def]
        if self.fail_write:
            raise OSError("No space left on device")
        return super().write(ops)

    def flush_wal_synced(self) -> None:
        if self.fail_fsync:
            raise OSError("Input/output error")
        super().flush_wal_synced()


def open_store(db: Database) -> tuple[LocalStore, Engine]:
    engine = Engine()
    store = LocalStore(db, post=engine.post)
    engine.store = store
    store.start()
    return store, engine


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[LocalStore, Engine]]:
    db = Database(tmp_path / "db")
    store, engine = open_store(db)
    yield store, engine
    store.close()
    db.close()


def first_write_in_a_held_fsync(store: LocalStore, engine: Engine, db: GatedDatabase) -> Acks:
    """Write b"first" and run a turn: its fsync starts and hangs until the test opens the gate."""
    acks = Acks()
    store.async_apply(TABLE, b"first", v(1), acks("first"))
    engine.turn()
    assert db.in_fsync.wait(10.0)
    return acks


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[LocalStore, Engine, GatedDatabase]]:
    db = GatedDatabase(tmp_path / "db")
    store, engine = open_store(db)
    yield store, engine, db
    db.gate.set()
    store.close()
    db.close()


def test_writes_are_acknowledged_only_after_their_batch_is_fsynced(gated: tuple[LocalStore, Engine, GatedDatabase]) -> None:
    store, engine, db = gated
    acks = Acks()
    for i in range(5):
        assert store.async_apply(TABLE, b"k%d" % i, v(10), acks(f"k{i}"))
    engine.turn()
    assert db.in_fsync.wait(10.0)
    for _ in range(20):  # turns keep running while the fsync is blocked; nothing may be acked
        engine.turn()
    assert not acks.results
    db.gate.set()
    engine.turn_until(lambda: acks.got(*(f"k{i}" for i in range(5))), "acks after the fsync")
    assert all(r == [True] for r in acks.results.values())
    assert store.read(TABLE, b"k3") == v(10)


def test_writes_staged_in_one_turn_are_one_commit(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    acks = Acks()
    for i in range(500):
        local.async_apply(TABLE, b"k%04d" % i, v(1, b"x" * 100), acks(str(i)))
    engine.turn_until(lambda: len(acks.results) == 500, "500 acks")
    stats = local.stats()
    assert stats["commits"] == 1
    assert stats["writes_committed"] == 500
    assert stats["max_batch"] == 500
    assert stats["pending"] == 0
    assert local.count(TABLE) == 500


def test_writes_arriving_during_a_commit_gather_into_the_next_batch(gated: tuple[LocalStore, Engine, GatedDatabase]) -> None:
    store, engine, db = gated
    acks = first_write_in_a_held_fsync(store, engine, db)
    for i in range(30):  # three turns while the first commit is in flight
        store.async_apply(TABLE, b"k%02d" % i, v(1), acks(f"k{i}"))
        if i % 10 == 9:
            engine.turn()
    assert store.stats()["pending"] == 31
    db.gate.set()
    engine.turn_until(lambda: len(acks.results) == 31, "every ack")
    stats = store.stats()
    assert (stats["commits"], stats["writes_committed"], stats["max_batch"]) == (2, 31, 30)


def test_the_next_fsync_starts_as_the_last_ends_without_a_turn_of_the_engine(
    gated: tuple[LocalStore, Engine, GatedDatabase],
) -> None:
    """A turn's writes go to RocksDB at once, fsync under way or not; the sync thread chains the fsyncs."""
    store, engine, db = gated
    acks = first_write_in_a_held_fsync(store, engine, db)
    store.async_apply(TABLE, b"second", v(1), acks("second"))
    engine.turn()
    assert store.read(TABLE, b"second") == v(1)  # written while the first fsync is blocked
    db.gate.set()
    # No engine turn from here until both fsyncs are done: the second needs nothing from the loop.
    wait_until(lambda: store.stats()["commits"] == 2, 10.0, "the second fsync, started by the sync thread alone")
    assert not acks.results
    engine.turn_until(lambda: acks.got("first", "second"), "both acks")
    assert acks.results == {"first": [True], "second": [True]}


def test_a_slow_fsync_lets_only_a_few_batches_pile_up_and_the_rest_gather(
    gated: tuple[LocalStore, Engine, GatedDatabase],
) -> None:
    """Each write looks its key up in every written batch: while an fsync hangs, turns past the cap stage."""
    store, engine, db = gated
    acks = first_write_in_a_held_fsync(store, engine, db)
    for turn in range(20):
        store.async_apply(TABLE, b"k%02d" % turn, v(1), acks(f"k{turn}"))
        engine.turn()
    written = [turn for turn in range(20) if store.read(TABLE, b"k%02d" % turn) is not None]
    assert written == list(range(7)), written  # 8 batches written with "first"; the rest staged together
    db.gate.set()
    engine.turn_until(lambda: len(acks.results) == 21, "every ack once the disk is back")
    assert all(r == [True] for r in acks.results.values())
    assert all(store.read(TABLE, b"k%02d" % turn) == v(1) for turn in range(20))


def test_newer_version_wins_whatever_the_arrival_order(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    # newer first, in one turn
    assert local.async_apply(TABLE, b"a", v(20, b"new"))
    assert not local.async_apply(TABLE, b"a", v(10, b"old"))
    # older first, in one turn
    assert local.async_apply(TABLE, b"b", v(10, b"old"))
    assert local.async_apply(TABLE, b"b", v(20, b"new"))
    # same hlc: the node id breaks the tie the same way on every replica
    assert local.async_apply(TABLE, b"c", v(20, b"from-a", node="a"))
    assert local.async_apply(TABLE, b"c", v(20, b"from-b", node="b"))
    assert not local.async_apply(TABLE, b"c", v(20, b"from-a", node="a"))
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] >= 1, "the commit")
    # older arrivals after the newer one is stored
    assert not local.async_apply(TABLE, b"b", v(15, b"late"))
    engine.turn()
    assert local.read(TABLE, b"a") == v(20, b"new")
    assert local.read(TABLE, b"b") == v(20, b"new")
    assert local.read(TABLE, b"c") == v(20, b"from-b", node="b")


def test_stale_write_is_acknowledged_once_the_newer_value_in_flight_is_durable(
    gated: tuple[LocalStore, Engine, GatedDatabase],
) -> None:
    store, engine, db = gated
    acks = Acks()
    assert store.async_apply(TABLE, b"k", v(20, b"new"), acks("new"))
    engine.turn()
    assert db.in_fsync.wait(10.0)
    assert not store.async_apply(TABLE, b"k", v(10, b"old"), acks("stale"))
    assert not store.async_apply(TABLE, b"k", v(20, b"new"), acks("retry"))  # the same write again
    for _ in range(10):
        engine.turn()
    assert not acks.results
    db.gate.set()
    engine.turn_until(lambda: acks.got("new", "stale", "retry"), "acks")
    assert acks.results == {"new": [True], "stale": [True], "retry": [True]}
    # against a stored (durable) value, the stale write is acknowledged at once, but never inside the call
    assert not store.async_apply(TABLE, b"k", v(5, b"older"), acks("stale2"))
    assert "stale2" not in acks.results
    engine.run_posted()
    assert acks.results["stale2"] == [True]
    assert store.read(TABLE, b"k") == v(20, b"new")


def test_stale_write_waits_for_a_newer_value_that_is_only_staged(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    acks = Acks()
    local.async_apply(TABLE, b"k", v(20), acks("new"))
    local.async_apply(TABLE, b"k", v(10), acks("stale"))
    engine.run_posted()
    assert not acks.results
    engine.turn_until(lambda: acks.got("new", "stale"), "acks")
    assert local.stats()["commits"] == 1


def test_sync_false_may_be_acknowledged_before_the_fsync(gated: tuple[LocalStore, Engine, GatedDatabase]) -> None:
    store, engine, db = gated
    acks = Acks()
    store.async_apply(TABLE, b"fast", v(1), acks("fast"), sync=False)
    store.async_apply(TABLE, b"safe", v(1), acks("safe"))
    engine.turn()
    assert db.in_fsync.wait(10.0)
    engine.turn_until(lambda: acks.got("fast"), "the sync=False ack")
    assert "safe" not in acks.results
    assert store.read(TABLE, b"fast") == v(1)  # in RocksDB (safe from a process crash) already
    db.gate.set()
    engine.turn_until(lambda: acks.got("safe"), "the synced ack")


def test_failed_fsync_reports_false_and_the_store_goes_on(tmp_path: Path) -> None:
    db = FailingDatabase(tmp_path / "db")
    local, engine = open_store(db)
    try:
        acks = Acks()
        db.fail_fsync = True
        local.async_apply(TABLE, b"a", v(1), acks("a"))
        engine.turn_until(lambda: acks.got("a"), "the failed ack")
        assert acks.results["a"] == [False]
        db.fail_fsync, db.fail_write = False, True
        local.async_apply(TABLE, b"b", v(1), acks("b"))
        engine.turn_until(lambda: acks.got("b"), "the failed ack")
        assert acks.results["b"] == [False]
        assert local.read(TABLE, b"b") is None
        db.fail_write = False
        local.async_apply(TABLE, b"c", v(1), acks("c"))
        engine.turn_until(lambda: acks.got("c"), "the ack")
        assert acks.results["c"] == [True]
        assert local.stats()["failed_commits"] == 2
    finally:
        local.close()
        db.close()


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    local, engine = open_store(db)
    acks = Acks()
    local.async_apply(TABLE, b"acked", v(1, b"one"), acks("acked"))
    engine.turn_until(lambda: acks.got("acked"), "the ack")
    local.async_apply(TABLE, b"staged", v(2, b"two"))  # staged, never handed off: close commits it
    local.async_apply("presence", b"gone", v(3, None))
    local.close()
    local.close()  # idempotent
    db.close()
    db = Database(tmp_path / "db")
    local, _ = open_store(db)
    try:
        assert local.read(TABLE, b"acked") == v(1, b"one")
        assert local.read(TABLE, b"staged") == v(2, b"two")
        assert local.read("presence", b"gone") == v(3, None)
        assert local.count(TABLE) == 2
        assert local.count("presence") == 0
    finally:
        local.close()
        db.close()


_CHILD = textwrap.dedent(
    """
    import collections, os, signal, sys, threading
    from pathlib import Path
    from iris_mesh.store._db import Database
    from iris_mesh.store._local import LocalStore
    from iris_mesh.store._versioned import Version, Versioned

    mailbox = collections.deque()
    wake = threading.Event()
    def post(fn):
        mailbox.append(fn)
        wake.set()
    store = LocalStore(Database(Path(sys.argv[1])), post=post)
    store.start()
    target = int(sys.argv[2])
    acked = 0
    def on_durable(key):
        def cb(ok):
            global acked
            if ok:
                sys.stdout.write(key.decode() + "\\n")
                sys.stdout.flush()
                acked += 1
        return cb
    i = 0
    while True:  # the engine loop: a turn stages 25 writes, then runs completions
        for _ in range(25):
            key = b"k%08d" % i
            store.async_apply("offline_msg", key, Versioned(Version(i + 1, "n1"), key * 10), on_durable(key))
            i += 1
        store.async_end_of_batch()
        if acked >= target:
            os.kill(os.getpid(), signal.SIGKILL)  # with a batch staged and one in flight
        wake.wait(0.05)
        wake.clear()
        while mailbox:
            mailbox.popleft()(0.0)
    """
)


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    """The guarantee acks rely on: what on_durable(True) reported is there after the process is killed."""
    path = tmp_path / "db"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "2000"],
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    acked = [line for line in child.stdout.decode().split("\n") if line]
    assert len(acked) >= 2000
    db = Database(path)
    try:
        for key in acked:
            raw = key.encode()
            stored = db.get(TABLE, raw)
            assert stored is not None, f"acked key {key} lost after SIGKILL"
        local, _ = open_store(db)
        try:
            for key in acked:
                raw = key.encode()
                assert local.read(TABLE, raw) == Versioned(Version(int(key[1:]) + 1, "n1"), raw * 10)
        finally:
            local.close()
    finally:
        db.close()


def test_tombstones_read_back_are_not_counted_and_only_old_ones_are_purged(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    wall = lambda ms: ms << 16  # noqa: E731 - an hlc reading at wall time `ms`
    local.async_apply(TABLE, b"live", v(wall(1000), b"x"))
    local.async_apply(TABLE, b"old-dead", v(wall(1000), None))
    local.async_apply(TABLE, b"new-dead", v(wall(5000), None))
    local.async_apply(TABLE, b"revived", v(wall(1000), None))
    engine.turn_until(lambda: local.stats()["commits"] == 1 and local.stats()["pending"] == 0, "the commit")
    assert local.read(TABLE, b"old-dead") == v(wall(1000), None)
    assert local.read(TABLE, b"old-dead").is_tombstone  # type: ignore[union-attr]
    assert local.count(TABLE) == 1
    assert [k for k, _ in local.scan(TABLE)] == [b"live", b"new-dead", b"old-dead", b"revived"]
    # an older write cannot resurrect a deleted key
    assert not local.async_apply(TABLE, b"old-dead", v(wall(900), b"zombie"))
    # a newer write staged for a tombstone's key keeps the purge away from it
    assert local.async_apply(TABLE, b"revived", v(wall(2000), b"back"))
    assert local.async_purge_tombstones(TABLE, older_than_wall_ms=3000) == 1
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 2, "the purge commit")
    assert local.read(TABLE, b"old-dead") is None
    assert local.read(TABLE, b"new-dead") == v(wall(5000), None)
    assert local.read(TABLE, b"revived") == v(wall(2000), b"back")
    assert local.read(TABLE, b"live") == v(wall(1000), b"x")
    assert local.count(TABLE) == 2
    assert local.async_purge_tombstones(TABLE, older_than_wall_ms=10_000, limit=1) == 1
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 3, "the second purge")
    assert local.read(TABLE, b"new-dead") is None


def test_count_follows_overwrites_and_deletes(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    for i in range(10):
        local.async_apply(TABLE, b"k%d" % i, v(1))
    local.async_apply(TABLE, b"k0", v(2, None))  # delete within the same batch
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 1, "commit")
    assert local.count(TABLE) == 9
    local.async_apply(TABLE, b"k1", v(3))  # overwrite: same count
    local.async_apply(TABLE, b"k2", v(3, None))
    local.async_apply(TABLE, b"k0", v(4))  # back after delete
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 2, "commit")
    assert local.count(TABLE) == 9
    assert local.count("presence") == 0


def test_hints_keep_the_newest_only_and_drop_only_the_matching_version(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    acks = Acks()
    local.async_apply(TABLE, b"m1", v(2), acks("write"))
    local.async_put_hint("core2", TABLE, b"m1", v(2), acks("hint"))
    local.async_put_hint("core2", TABLE, b"m1", v(1), acks("older-hint"))
    local.async_put_hint("core3", TABLE, b"m1", v(2))
    local.async_put_hint("core2", "presence", b"u1", v(7, None))
    engine.turn_until(lambda: acks.got("write", "hint", "older-hint"), "acks")
    assert local.stats()["commits"] == 1  # the write and its hints in one group commit
    assert sorted(local.hints_for("core2"), key=str) == [("offline_msg", b"m1", v(2)), ("presence", b"u1", v(7, None))]
    assert local.hints_for("core3") == [("offline_msg", b"m1", v(2))]
    assert local.hints_for("core") == []  # a target is not a prefix of another
    assert len(local.hints_for("core2", limit=1)) == 1
    local.async_put_hint("core2", TABLE, b"m1", v(3))
    local.async_drop_hint("core2", TABLE, b"m1", v(2))  # delivered an older version: the newer hint stays
    local.async_drop_hint("core2", "presence", b"u1", v(7, None))
    local.async_drop_hint("core3", TABLE, b"m1", v(2))
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 2, "commit")
    assert local.hints_for("core2") == [("offline_msg", b"m1", v(3))]
    assert local.hints_for("core3") == []
    local.async_drop_hint("core2", TABLE, b"m1", v(3))
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 3, "commit")
    assert local.hints_for("core2") == []


def test_scan_is_in_key_order_with_prefix_cursor_and_limit(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    for key in [b"bob\x00003", b"alice\x00002", b"alice\x00001", b"alice\x00003", b"alicia\x00001"]:
        local.async_apply(TABLE, key, v(1, key))
    local.async_apply(TABLE, b"alice\x00002", v(2, None))
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 1, "commit")
    keys = lambda rows: [k for k, _ in rows]  # noqa: E731
    assert keys(local.scan(TABLE, b"alice\x00")) == [b"alice\x00001", b"alice\x00002", b"alice\x00003"]
    assert local.scan(TABLE, b"alice\x00")[1][1].is_tombstone
    assert keys(local.scan(TABLE, b"alice\x00", limit=2)) == [b"alice\x00001", b"alice\x00002"]
    assert keys(local.scan(TABLE, b"alice\x00", start_after=b"alice\x00002")) == [b"alice\x00003"]
    assert keys(local.scan(TABLE, b"alice\x00", start_after=b"alice\x00003")) == []
    assert keys(local.scan(TABLE, start_after=b"alicia\x00001")) == [b"bob\x00003"]
    assert keys(local.scan(TABLE, b"zed")) == []


def test_partition_counts_are_kept_for_the_most_recently_asked_partitions(
    store: tuple[LocalStore, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    import iris_mesh.store._local as local_module

    monkeypatch.setattr(local_module, "_COUNTED_PARTITIONS", 2)
    local, engine = store
    for user in (b"ann", b"bob", b"cat"):
        local.async_apply(TABLE, user + b"\x00001", v(1))
    engine.turn_until(lambda: local.stats()["pending"] == 0, "commit")
    assert [local.live_in_partition(TABLE, u) for u in (b"ann", b"bob", b"ann", b"cat")] == [1, 1, 1, 1]
    assert len(local._partition_live) == 2  # bob, the least recently asked, was dropped
    local.async_apply(TABLE, b"ann\x00002", v(1))  # kept current while counted
    local.async_apply(TABLE, b"bob\x00002", v(1))
    assert local.live_in_partition(TABLE, b"ann") == 2
    engine.turn_until(lambda: local.stats()["pending"] == 0, "commit")
    assert local.live_in_partition(TABLE, b"bob") == 2  # counted again from disk


def test_writes_are_refused_after_close_and_for_unknown_tables(store: tuple[LocalStore, Engine]) -> None:
    local, _ = store
    with pytest.raises(ValueError):
        local.async_apply("meta", b"k", v(1))
    local.close()
    with pytest.raises(Exception, match="closed"):
        local.async_apply(TABLE, b"k", v(1))


def test_engine_thread_keeps_running_while_the_wal_is_fsynced(tmp_path: Path) -> None:
    """The sync thread's fsync releases the GIL: the engine loop makes progress in the middle of it."""

    class TimedDatabase(Database):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.windows: list[tuple[float, float]] = []

        def flush_wal_synced(self) -> None:
            start = time.perf_counter()
            super().flush_wal_synced()
            self.windows.append((start, time.perf_counter()))

    switch_s = 0.0005
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(switch_s)
    db = TimedDatabase(tmp_path / "db")
    local, engine = open_store(db)
    stamps: list[float] = []
    try:
        payload = os.urandom(4000)
        for commit in range(6):  # ~8 MB per batch, so each fsync takes long enough to look inside
            for i in range(2000):
                local.async_apply(TABLE, b"%d-%05d" % (commit, i), v(1, payload))
            local.async_end_of_batch()
            deadline = time.monotonic() + 30
            while len(db.windows) <= commit:  # the engine loop: spin, as if serving frames
                stamps.append(time.perf_counter())
                assert time.monotonic() < deadline, "commit did not finish"
            engine.run_posted()
    finally:
        sys.setswitchinterval(old_switch)
        local.close()
        db.close()
    slop = 4 * switch_s  # a thread switch at either edge of the call is not evidence
    measurable = [(a + slop, b - slop) for a, b in db.windows if b - a > 3 * slop]
    if not measurable:
        pytest.skip("this disk syncs too fast to look inside an fsync")
    inside = sum(1 for t in stamps for a, b in measurable if a < t < b)
    assert inside > 0, f"the engine loop was frozen during every fsync ({db.windows})"


def test_close_commits_staged_writes_even_if_never_started(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    engine = Engine()
    local = LocalStore(db, post=engine.post)
    acks = Acks()
    local.async_apply(TABLE, b"k", v(1), acks("k"))
    local.close()
    engine.run_posted()  # completions still arrive, after the fact
    assert acks.results == {"k": [True]}
    db.close()
    db = Database(tmp_path / "db")
    try:
        assert db.get(TABLE, b"k") is not None
    finally:
        db.close()


def test_a_real_engine_thread_gets_every_write_acknowledged(tmp_path: Path) -> None:
    """Completions racing with hand-offs: every staged write is committed and acknowledged exactly once."""
    db = Database(tmp_path / "db")
    mailbox: collections.deque[Callable[[float], None]] = collections.deque()
    wake = threading.Event()

    def post(fn: Callable[[float], None]) -> None:
        mailbox.append(fn)
        wake.set()

    local = LocalStore(db, post=post)
    acks: list[bool] = []
    total = 3000

    def engine_loop() -> None:
        local.start()
        staged = 0
        deadline = time.monotonic() + 60
        while len(acks) < total and time.monotonic() < deadline:
            for _ in range(min(7, total - staged)):
                local.async_apply(TABLE, b"k%05d" % staged, v(1), acks.append)
                staged += 1
            while mailbox:
                mailbox.popleft()(time.monotonic())
            local.async_end_of_batch()
            if staged >= total:
                wake.wait(0.01)  # the poll timeout of a real loop
                wake.clear()
        local.close()

    thread = threading.Thread(target=engine_loop, name="test-engine")
    thread.start()
    thread.join(90)
    db.close()
    assert len(acks) == total and all(acks)
    stats = local.stats()
    assert stats["writes_committed"] == total
    assert stats["commits"] < total  # writes were grouped


# ---- groups of replica writes -----------------------------------------------------------------


def apply_group(local: LocalStore, rows: list[tuple[bytes, Versioned]], done: Callable[[bool], None], *,
                limit: int | None = None) -> tuple[list[int], list[Version | None]]:
    keys = [key for key, _ in rows]
    items = [item for _, item in rows]
    return local.async_apply_many(TABLE, keys, items, [encode_versioned(i) for i in items], done, partition_limit=limit)


def test_a_group_is_applied_newer_wins_with_one_answer_once_all_of_it_is_durable(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    acks = Acks()
    assert local.async_apply(TABLE, b"old", v(50, b"stored"), acks("setup"))
    engine.turn_until(lambda: acks.got("setup"), "the setup write")
    refused, currents = apply_group(local, [(b"a", v(10)), (b"a", v(5)), (b"b", v(7, None)), (b"old", v(40))], acks("group"))
    assert refused == []
    # What each write was compared with: nothing, the first write of the group, nothing, the stored value.
    assert currents == [None, Version(10, "n1"), None, Version(50, "n1")]
    engine.run_posted()
    assert "group" not in acks.results
    engine.turn_until(lambda: acks.got("group"), "the group's answer")
    assert acks.results["group"] == [True]
    assert local.read(TABLE, b"a") == v(10) and local.read(TABLE, b"b") == v(7, None)
    assert local.read(TABLE, b"old") == v(50, b"stored")
    assert local.stats()["commits"] == 2 and local.count(TABLE) == 2


def test_a_group_that_lost_to_a_value_being_fsynced_is_answered_after_that_fsync(
    gated: tuple[LocalStore, Engine, GatedDatabase],
) -> None:
    store, engine, db = gated
    acks = Acks()
    store.async_apply(TABLE, b"k", v(20), acks("newer"))
    engine.turn()
    assert db.in_fsync.wait(10.0)
    apply_group(store, [(b"k", v(10))], acks("stale"))
    for _ in range(10):
        engine.turn()
    assert not acks.results
    db.gate.set()
    engine.turn_until(lambda: acks.got("newer", "stale"), "both answers")
    assert acks.results == {"newer": [True], "stale": [True]}
    assert store.read(TABLE, b"k") == v(20)


def test_a_group_past_the_partition_limit_is_refused_from_the_row_over_it(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    acks = Acks()
    assert local.async_apply(TABLE, b"bob\x00m0", v(1), acks("first"))
    engine.turn_until(lambda: acks.got("first"), "the first message")
    rows = [(b"bob\x00m%d" % i, v(2)) for i in range(1, 5)] + [(b"bob\x00m0", v(3)), (b"bob\x00gone", v(3, None))]
    refused, currents = apply_group(local, rows, acks("group"), limit=3)
    # m1, m2 fill the inbox to 3; m3, m4 are refused; a rewrite of m0 and a delete are never refused.
    assert refused == [2, 3]
    assert len(currents) == len(rows) - 2
    engine.turn_until(lambda: acks.got("group"), "the group's answer")
    assert sorted(k for k, item in local.scan(TABLE, b"bob\x00") if not item.is_tombstone) == \
        [b"bob\x00m0", b"bob\x00m1", b"bob\x00m2"]
    assert local.live_in_partition(TABLE, b"bob") == 3


def test_a_group_whose_commit_fails_is_answered_false(tmp_path: Path) -> None:
    db = FailingDatabase(tmp_path / "db")
    local, engine = open_store(db)
    try:
        acks = Acks()
        db.fail_write = True
        apply_group(local, [(b"a", v(1)), (b"b", v(1))], acks("group"))
        engine.turn_until(lambda: acks.got("group"), "the failed answer")
        assert acks.results["group"] == [False]
        assert local.read(TABLE, b"a") is None
    finally:
        local.close()
        db.close()


def test_a_partition_first_counted_while_writes_are_staged_counts_them(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    local.async_apply(TABLE, b"dan\x00m0", v(1))
    local.async_apply(TABLE, b"dan\x00m1", v(1))
    engine.turn_until(lambda: local.stats()["pending"] == 0, "commit")
    local.async_apply(TABLE, b"dan\x00m2", v(2))  # staged, not yet written
    local.async_apply(TABLE, b"dan\x00m3", v(2))
    local.async_apply(TABLE, b"dan\x00m0", v(2, None))  # a staged delete of a written row
    local.async_apply(TABLE, b"dan\x00m1", v(2))  # a staged rewrite: no new row
    assert local.stats()["staged"] == 4
    assert local.live_in_partition(TABLE, b"dan") == 3
    engine.turn_until(lambda: local.stats()["pending"] == 0, "commit")
    assert local.live_in_partition(TABLE, b"dan") == 3
    assert sum(1 for _, item in local.scan(TABLE, b"dan\x00") if not item.is_tombstone) == 3
