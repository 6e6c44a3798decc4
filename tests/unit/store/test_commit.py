"""Group commit through LocalStore: acknowledgements only after fsync, batches gathered, the loop never frozen.

The test thread plays the engine thread (see _local_harness); two tests run a real
thread or a child process instead.
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
from typing import Callable

import pytest

from _local_harness import (
    TABLE, Acks, Engine, FailingDatabase, GatedDatabase, answers_to, first_write_in_a_held_fsync, open_store, v,
)
from iris_mesh.store._commit import Batch, GroupCommit
from iris_mesh.store._db import Database
from iris_mesh.store._local import LocalStore
from iris_mesh.store._versioned import Version, Versioned
from support.waiting import wait_until


def test_writes_are_acknowledged_only_after_their_batch_is_fsynced(
    gated: tuple[LocalStore, Engine, GatedDatabase],
) -> None:
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


def test_writes_arriving_during_a_commit_gather_into_the_next_batch(
    gated: tuple[LocalStore, Engine, GatedDatabase],
) -> None:
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


def test_a_failed_write_reports_false_and_the_store_goes_on(
    failing: tuple[LocalStore, Engine, FailingDatabase],
) -> None:
    local, engine, db = failing
    db.fail_write = True
    assert answers_to(local, engine, b"b", v(1)) == [False]
    assert local.read(TABLE, b"b") is None
    db.fail_write = False
    assert answers_to(local, engine, b"c", v(1)) == [True]
    assert local.stats()["failed_commits"] == 1
    assert local.durability_lost is None


def test_after_a_failed_fsync_no_write_is_acknowledged_until_the_store_is_opened_again(
    failing: tuple[LocalStore, Engine, FailingDatabase], tmp_path: Path,
) -> None:
    local, engine, db = failing
    db.fail_fsync = True
    assert answers_to(local, engine, b"a", v(1)) == [False]
    assert local.durability_lost == "OSError: Input/output error"
    # The disk answers again, but "a" went to RocksDB and maybe not to disk: its retry, which finds it
    # there and is "not newer", must not be acknowledged as durable, nor may anything else.
    db.fail_fsync = False
    acks = Acks()
    assert local.read(TABLE, b"a") == v(1)
    local.async_apply(TABLE, b"a", v(1), acks("a again"))
    local.async_apply(TABLE, b"d", v(1), acks("d"))
    _, currents = local.async_apply_many(TABLE, [b"a", b"e"], [v(1), v(1)], [b"", b""], acks("group"))
    engine.turn_until(lambda: acks.got("a again", "d", "group"), "the refusals")
    assert (acks.results["a again"], acks.results["d"], acks.results["group"]) == ([False], [False], [False])
    assert currents == [None, None]
    assert local.read(TABLE, b"d") is None and local.read(TABLE, b"e") is None
    local.close()
    db.close()
    # A restart reads the database from disk again: writes are acknowledged again.
    db = FailingDatabase(tmp_path / "db")
    local, engine = open_store(db)
    try:
        assert answers_to(local, engine, b"d", v(1)) == [True] and local.durability_lost is None
    finally:
        local.close()
        db.close()


def test_a_batch_written_while_the_failed_fsync_ran_is_not_acknowledged_by_a_later_one(tmp_path: Path) -> None:
    class FailsOneFsync(GatedDatabase):
        """The first fsync waits for the gate and fails; the next ones succeed (as one may after an error)."""

        failed = False

        def flush_wal_synced(self) -> None:
            if not self.failed:
                self.failed = True
                self.in_fsync.set()
                assert self.gate.wait(10.0), "test never opened the fsync gate"
                raise OSError("Input/output error")
            Database.flush_wal_synced(self)

    db = FailsOneFsync(tmp_path / "db")
    local, engine = open_store(db)
    try:
        acks = Acks()
        local.async_apply(TABLE, b"first", v(1), acks("first"))
        engine.turn()
        assert db.in_fsync.wait(10.0)
        local.async_apply(TABLE, b"second", v(1), acks("second"))
        engine.turn()  # written behind "first" in the WAL; its fsync comes next
        db.gate.set()
        engine.turn_until(lambda: acks.got("first", "second"), "both answers")
        assert (acks.results["first"], acks.results["second"]) == ([False], [False])
    finally:
        db.gate.set()
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
        for commit in range(4):  # ~32 MB per batch, so each fsync takes long enough to look inside
            for i in range(8000):
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


def test_fsyncs_over_10_ms_are_counted_for_operators(tmp_path: Path) -> None:
    """A disk that stalls shows in the commit stats (`meshctl tables --json`), apart from the mean."""
    db = Database(tmp_path / "db")
    posted: list[Callable[[float], None]] = []
    readings = iter([0.0, 0.004, 1.0, 1.012])  # one fsync of 4 ms, one of 12 ms
    commit = GroupCommit(db, post=posted.append, on_written=lambda batch: None, name="t",
                         clock=lambda: next(readings))
    try:
        for _ in range(2):
            commit._sync([Batch()])
    finally:
        db.close()
    assert (commit.stats["commits"], commit.stats["fsyncs_over_10ms"]) == (2, 1)
    assert commit.stats["fsync_us_max"] == 12_000
