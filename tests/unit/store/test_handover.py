"""Handover (iris_mesh/store/_handover.py): when a core joins, the partitions that move off a core leave it for the
cores that replicate them now, through hints, and nothing is lost or left behind."""

from __future__ import annotations

from pathlib import Path

from _store_cluster import TABLE, THREE, Cluster
from iris_mesh.membership import Placement
from iris_mesh.store._keys import partition_key

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

