"""Handover (iris_mesh/store/_handover.py): when a core joins, the partitions that move off a core leave it for the
cores that replicate them now, through hints, and nothing is lost or left behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from _store_cluster import TABLE, THREE, Cluster, fail_fsyncs_of
from iris_mesh.membership import Placement
from iris_mesh.store._keys import partition_key
from iris_mesh.store._versioned import Version, Versioned

FOUR = (*THREE, "core4")
PLACEMENT = Placement(replication_factor=3)


def replicas(key: bytes, cores: tuple[str, ...]) -> set[str]:
    return set(PLACEMENT.replicas(partition_key(key), frozenset(cores)))


def test_partitions_that_move_off_a_core_when_a_core_joins_leave_it_and_reach_their_new_replicas(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, FOUR, interval_s=0.05)
    try:
        for membership in cluster.memberships.values():
            membership.cores = frozenset(THREE)  # core4 is not expected yet
        keys = [b"user%02d\x00m1" % i for i in range(40)]
        assert all(cluster.put("core1", key, b"v").ok for key in keys)
        deleted = keys[::5]
        assert all(cluster.put("core1", key, None).ok for key in deleted)  # tombstones move too
        moved = {core: {k for k in keys if core not in replicas(k, FOUR)} for core in THREE}
        assert all(moved.values())

        for membership in cluster.memberships.values():
            membership.cores = frozenset(FOUR)  # core4 joins

        def placed() -> bool:
            return all(set(cluster.rows(core)) == {k for k in keys if core in replicas(k, FOUR)} for core in FOUR)

        cluster.run_until(placed, "every partition on its replicas under four cores, and only there", timeout_s=20.0)
        for core in FOUR:
            for key, item in cluster.rows(core).items():
                assert item.is_tombstone == (key in deleted), (core, key)
        assert sum(cluster.services[c].counters["handover_rows"] for c in THREE) == sum(map(len, moved.values()))
        assert cluster.services["core4"].counters["handover_rows"] == 0
        cluster.run_until(lambda: all(cluster.locals[c].count("hints") == 0 for c in FOUR), "every hint handed off")
    finally:
        cluster.close()



def test_a_row_left_from_before_this_process_started_moves_only_if_younger_than_the_grace_period(
    tmp_path: Path,
) -> None:
    # A copy left behind by an older version, or while this core was down, may be stale: a delete of it may have
    # been purged everywhere else, and handed over it would come back to life. A young one's delete is not purged yet.
    cluster = Cluster(tmp_path, FOUR, interval_s=0.05, grace_s=1.0)
    try:
        elsewhere = [k for k in (b"user%02d\x00m1" % i for i in range(40)) if "core1" not in replicas(k, FOUR)]
        old_key, young_key = elsewhere[:2]
        wall_ms = time.time_ns() // 1_000_000
        local = cluster.locals["core1"]
        local.async_apply(TABLE, old_key, Versioned(Version((wall_ms - 5_000) << 16, "edge1"), b"stale?"))
        local.async_apply(TABLE, young_key, Versioned(Version(wall_ms << 16, "edge1"), b"young"))
        local.async_end_of_batch()  # in RocksDB before this core's first turn
        young_replicas = replicas(young_key, FOUR)
        cluster.run_until(lambda: all(young_key in cluster.rows(c) for c in young_replicas)
                          and young_key not in cluster.rows("core1"), "the young row on its replicas only")
        for _ in range(20):
            cluster.turn()
        assert cluster.rows("core1")[old_key].value == b"stale?"  # left as it was
        assert all(old_key not in cluster.rows(c) for c in replicas(old_key, FOUR))
        assert cluster.services["core1"].counters["handover_rows"] == 1
    finally:
        cluster.close()


def test_a_core_whose_wal_fsync_failed_hands_nothing_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It keeps no hint any more: a row deleted here for a hint that was never kept would be in neither place.
    cluster = Cluster(tmp_path, FOUR, interval_s=0.05)
    try:
        for membership in cluster.memberships.values():
            membership.cores = frozenset(THREE)
        keys = [b"user%02d\x00m1" % i for i in range(20)]
        assert all(cluster.put("core1", key, b"v").ok for key in keys)
        fail_fsyncs_of(monkeypatch, cluster.dbs[0])  # core1's
        assert cluster.put("core2", b"after\x00m1", b"v").ok  # core1's fsync fails on it
        cluster.run_until(lambda: cluster.locals["core1"].durability_lost is not None, "core1's failed fsync")
        for membership in cluster.memberships.values():
            membership.cores = frozenset(FOUR)
        for _ in range(50):
            cluster.turn()
        assert set(keys) <= set(cluster.rows("core1")) and cluster.services["core1"].counters["handover_rows"] == 0
    finally:
        cluster.close()
