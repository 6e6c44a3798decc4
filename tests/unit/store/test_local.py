"""LocalStore: newer-wins, stale writes, tombstones, hints, scans, partition counts, groups of replica writes.

Group commit itself is tested in test_commit.py. The test thread plays the engine
thread (see _local_harness).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from _local_harness import TABLE, Acks, Engine, FailingDatabase, GatedDatabase, open_store, v
from iris_mesh.store._local import LocalStore
from iris_mesh.store._versioned import Version, Versioned, encode_versioned


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
    # the same version with two values (two writes made from one message id): the same winner in either order
    assert local.async_apply(TABLE, b"d", v(30, b"from carol", node=""))
    assert local.async_apply(TABLE, b"d", v(30, b"from dave", node=""))
    assert local.async_apply(TABLE, b"e", v(30, b"from dave", node=""))
    assert not local.async_apply(TABLE, b"e", v(30, b"from carol", node=""))
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] >= 1, "the commit")
    # older arrivals after the newer one is stored
    assert not local.async_apply(TABLE, b"b", v(15, b"late"))
    engine.turn()
    assert local.read(TABLE, b"a") == v(20, b"new")
    assert local.read(TABLE, b"b") == v(20, b"new")
    assert local.read(TABLE, b"c") == v(20, b"from-b", node="b")
    assert local.read(TABLE, b"d") == local.read(TABLE, b"e") == v(30, b"from dave", node="")


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
    assert local.async_purge_tombstones(TABLE, older_than_wall_ms=3000) == (1, None)
    engine.turn_until(lambda: local.stats()["pending"] == 0 and local.stats()["commits"] == 2, "the purge commit")
    assert local.read(TABLE, b"old-dead") is None
    assert local.read(TABLE, b"new-dead") == v(wall(5000), None)
    assert local.read(TABLE, b"revived") == v(wall(2000), b"back")
    assert local.read(TABLE, b"live") == v(wall(1000), b"x")
    assert local.count(TABLE) == 2
    assert local.async_purge_tombstones(TABLE, older_than_wall_ms=10_000, limit=1) == (1, b"new-dead")
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


def test_replica_writes_of_equal_versions_and_different_values_end_the_same_in_either_order(
        store: tuple[LocalStore, Engine]) -> None:
    """Two writes made from one message id (two senders' equal ids): every replica keeps the same one."""
    local, engine = store
    carol, dave = v(30, b"from carol", node=""), v(30, b"from dave", node="")
    acks = Acks()
    apply_group(local, [(b"x", carol), (b"y", dave)], acks("first"))
    engine.turn_until(lambda: acks.got("first"), "the first group")
    apply_group(local, [(b"x", dave), (b"y", carol), (b"x", carol)], acks("second"))
    engine.turn_until(lambda: acks.got("second"), "the second group")
    assert local.read(TABLE, b"x") == local.read(TABLE, b"y") == dave
    assert local.count(TABLE) == 2


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


def stored_first(local: LocalStore, engine: Engine, key: bytes) -> Acks:
    """`key` written (version 1) and durable; the Acks its answer went to ("first"), for the test's next writes."""
    acks = Acks()
    assert local.async_apply(TABLE, key, v(1), acks("first"))
    engine.turn_until(lambda: acks.got("first"), "the first message")
    return acks


def test_a_group_past_the_partition_limit_is_refused_from_the_row_over_it(store: tuple[LocalStore, Engine]) -> None:
    local, engine = store
    acks = stored_first(local, engine, b"bob\x00m0")
    rows = [(b"bob\x00m%d" % i, v(2)) for i in range(1, 5)] + [(b"bob\x00m0", v(3)), (b"bob\x00gone", v(3, None))]
    refused, currents = apply_group(local, rows, acks("group"), limit=3)
    # m1, m2 fill the inbox to 3; m3, m4 are refused; a rewrite of m0 and a delete are never refused.
    assert refused == [2, 3]
    assert len(currents) == len(rows) - 2
    engine.turn_until(lambda: acks.got("group"), "the group's answer")
    assert sorted(k for k, item in local.scan(TABLE, b"bob\x00") if not item.is_tombstone) == \
        [b"bob\x00m0", b"bob\x00m1", b"bob\x00m2"]
    assert local.live_in_partition(TABLE, b"bob") == 3


def test_a_retry_of_a_write_staged_in_the_same_turn_is_not_refused_as_over_the_limit(
        store: tuple[LocalStore, Engine]) -> None:
    # A send and its retry (same id, same value) in one loop turn, the inbox one row short of its limit.
    local, engine = store
    acks = stored_first(local, engine, b"bob\x00m0")
    assert apply_group(local, [(b"bob\x00m1", v(2))], acks("send"), limit=2)[0] == []
    refused, currents = apply_group(local, [(b"bob\x00m1", v(2))], acks("retry"), limit=2)
    assert refused == [] and currents == [Version(2, "n1")]
    engine.turn_until(lambda: acks.got("send", "retry"), "both answers")
    assert acks.results == {"first": [True], "send": [True], "retry": [True]}
    assert local.live_in_partition(TABLE, b"bob") == 2


def test_a_group_whose_commit_fails_is_answered_false(failing: tuple[LocalStore, Engine, FailingDatabase]) -> None:
    local, engine, db = failing
    acks = Acks()
    db.fail_write = True
    apply_group(local, [(b"a", v(1)), (b"b", v(1))], acks("group"))
    engine.turn_until(lambda: acks.got("group"), "the failed answer")
    assert acks.results["group"] == [False]
    assert local.read(TABLE, b"a") is None


def test_the_rows_of_a_failed_commit_leave_the_partition_counts(tmp_path: Path) -> None:
    """A partition counted before a commit that RocksDB refuses: its count must not keep the rows that are not there,
    or a user with an empty inbox would be refused as full."""
    db = FailingDatabase(tmp_path / "db")
    local, engine = open_store(db)
    try:
        acks = Acks()
        assert local.live_in_partition(TABLE, b"bob") == 0
        db.fail_write = True
        apply_group(local, [(b"bob\x00m%d" % i, v(1)) for i in range(3)], acks("failed"), limit=3)
        engine.turn_until(lambda: acks.got("failed"), "the failed answer")
        assert acks.results["failed"] == [False]
        assert local.live_in_partition(TABLE, b"bob") == 0
        db.fail_write = False
        refused, _currents = apply_group(local, [(b"bob\x00m9", v(2))], acks("next"), limit=3)
        assert refused == [], "an empty inbox was refused as full"
        engine.turn_until(lambda: acks.got("next"), "the next answer")
        assert acks.results["next"] == [True]
        assert local.live_in_partition(TABLE, b"bob") == 1
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


def test_partitions_first_counted_while_a_group_is_staged_count_its_rows_in_their_own_partition(
        store: tuple[LocalStore, Engine]) -> None:
    """A group (as replica writes come) to many users, some of them new, then a delete of a written row."""
    local, engine = store
    acks = stored_first(local, engine, b"eve\x00m0")
    rows = [(b"u%02d\x00m%d" % (u, i), v(2)) for u in range(20) for i in range(u % 3 + 1)]
    apply_group(local, [*rows, (b"eve\x00m0", v(2, None)), (b"eve\x00m1", v(2))], acks("group"), limit=10)
    assert local.stats()["staged"] == len(rows) + 2
    assert [local.live_in_partition(TABLE, b"u%02d" % u) for u in range(20)] == [u % 3 + 1 for u in range(20)]
    assert local.live_in_partition(TABLE, b"eve") == 1  # m0 deleted, m1 added
    engine.turn_until(lambda: acks.got("group"), "the group's answer")
    assert [local.live_in_partition(TABLE, b"u%02d" % u) for u in range(20)] == [u % 3 + 1 for u in range(20)]
    assert local.live_in_partition(TABLE, b"eve") == 1
