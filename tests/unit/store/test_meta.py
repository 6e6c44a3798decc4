"""Node metadata: incarnations grow (also past a restored or new data directory), a data directory belongs to one node
of one cluster, the clock never goes back across restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from iris_mesh.store import ClockKeeper, Database, HybridClock, NodeMeta, StoreError, seed_directory
from iris_mesh.store._backup import restore
from iris_mesh.store._checkpoint import checkpoint
from iris_mesh.store._versioned import Version, Versioned, encode_versioned


def test_incarnation_grows_across_restarts_and_the_directory_is_claimed(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    meta.claim("core1", "iris")
    first = meta.bump_incarnation(now=1_000_000.0)
    db.close()
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    assert meta.bump_incarnation(now=1_000_060.0) > first
    with pytest.raises(StoreError, match="belongs to node 'core1'"):
        meta.claim("core2", "iris")
    db.close()


def test_a_data_directory_of_another_cluster_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    NodeMeta(db).claim("core1", "prod")
    db.put_synced("offline_msg", b"k", b"v")
    with pytest.raises(StoreError, match="holds the data of cluster 'prod', not 'staging'"):
        NodeMeta(db).claim("core1", "staging")
    NodeMeta(db).claim("core1", "prod")  # still bound to its own cluster
    assert db.get("offline_msg", b"k") == b"v"
    db.close()


def test_a_data_directory_written_before_clusters_were_recorded_is_bound_at_its_next_start(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    db.put_synced("meta", b"node_id", b"core1")  # all an older release kept
    NodeMeta(db).claim("core1", "prod")
    with pytest.raises(StoreError, match="cluster 'prod'"):
        NodeMeta(db).claim("core1", "staging")
    db.close()


def test_incarnation_is_the_start_millisecond_or_one_more_than_the_last(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    assert meta.bump_incarnation(now=1_000_000.0007) == 1_000_000_000
    assert meta.bump_incarnation(now=1_000_000.0009) == 1_000_000_001  # two starts in one millisecond
    assert meta.bump_incarnation(now=999_000.0) == 1_000_000_002  # the clock was set back
    assert meta.bump_incarnation(now=1_000_050.0) == 1_000_050_000
    db.close()


def test_incarnation_grows_past_earlier_starts_when_the_data_directory_is_older_or_new(tmp_path: Path) -> None:
    # `meshctl restore` puts back a directory whose stored incarnation is older than the one peers saw
    # last, and a replaced data directory has none: peers would ignore the node until it passed theirs.
    before = tmp_path / "before"
    db = Database(before)
    NodeMeta(db).bump_incarnation(now=2_000_000.0)
    db.close()
    db = Database(tmp_path / "after")
    running = NodeMeta(db)
    running.bump_incarnation(now=2_000_010.0)
    seen_by_peers = running.bump_incarnation(now=2_000_020.0)
    db.close()
    db = Database(before)  # the restored (older) directory
    assert NodeMeta(db).bump_incarnation(now=2_000_030.0) > seen_by_peers
    db.close()
    db = Database(tmp_path / "fresh")
    assert NodeMeta(db).bump_incarnation(now=2_000_031.0) > seen_by_peers
    db.close()


def test_a_restarted_clock_starts_above_every_version_made_before(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    assert meta.clock_floor() == 0
    clock = HybridClock("core1", meta.clock_floor())
    made = clock.now(wall_ms=5_000_000)
    meta.save_clock(clock.last_hlc)
    db.close()

    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    restarted = HybridClock("core1", meta.clock_floor())
    # The wall clock went back an hour while the node was down: versions still go forward.
    assert restarted.now(wall_ms=5_000_000 - 3_600_000) > made
    db.close()


def test_expected_cores_are_kept_per_region(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    meta.save_expected_cores("eu", frozenset({"c2", "c1"}))
    assert meta.expected_cores("eu") == ["c1", "c2"]
    assert meta.expected_cores("us") == []
    meta.save_forgotten_cores("eu", {"c3": 1234})
    db.close()
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    assert meta.forgotten_cores("eu", 9999) == {"c3": 1234} and meta.forgotten_cores("us", 9999) == {}
    # Saved by an earlier version, without the time: forgotten now, as far as this node knows.
    db.write([("meta", b"forgotten_cores\x00eu", b'["c4"]')])
    assert meta.forgotten_cores("eu", 9999) == {"c4": 9999}
    db.close()


def test_a_claim_says_whether_the_directory_is_new_and_when_its_data_began_is_kept(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    assert meta.data_since() == 0  # not recorded yet (a directory of an earlier version reads the same)
    assert meta.claim("core1", "iris") is True
    meta.save_data_since(meta.bump_incarnation(time.time()))
    began = meta.data_since()
    assert began > 0
    assert meta.claim("core1", "iris") is False  # a later start: not new, and the time stays
    assert meta.bump_incarnation(time.time()) > began and meta.data_since() == began
    db.close()


def test_a_directory_seeded_from_a_run_starts_above_its_incarnation_and_clock(tmp_path: Path) -> None:
    """A core that set its data aside starts again on a new directory: peers must not take the new run for an
    older process (its incarnation), and its versions must not go back (its clock)."""
    ahead = int(time.time() * 1000) + 3_600_000  # the last run's incarnation and clock, an hour ahead of now
    seed_directory(tmp_path / "n", incarnation=ahead, last_hlc=ahead << 16)
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    assert meta.claim("core1", "iris") is True  # a new directory all the same: its data begins at this start
    assert meta.bump_incarnation(time.time()) == ahead + 1
    assert HybridClock("core1", meta.clock_floor()).now(wall_ms=int(time.time() * 1000)) > Version(ahead << 16, "core1")
    db.close()


def test_a_saved_reading_near_the_end_of_the_hlc_range_leaves_room_for_versions(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    meta.save_clock(2**64 - 65_536)  # a clock dragged to the end of time, saved before that was prevented
    clock = HybridClock("core1", meta.clock_floor())
    assert encode_versioned(Versioned(clock.now(wall_ms=5_000_000), b"v"))  # fits in 64 bits
    db.close()


def test_a_clock_pulled_ahead_by_a_peer_is_saved_at_once_so_a_restart_starts_above_it(tmp_path: Path) -> None:
    # A peer's clock 20 s ahead is merged; the node writes, and is killed before the next timed save.
    wall = [5_000_000]
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    clock = HybridClock("core1", meta.clock_floor(), wall_ms=lambda: wall[0])
    keeper = ClockKeeper(meta, lambda: clock.last_hlc)
    keeper.async_check(now=100.0)
    assert clock.observe(Version((wall[0] + 20_000) << 16, "core2"))
    made = clock.now(wall_ms=wall[0])
    keeper.async_check(now=100.01)  # the same turn: well before CLOCK_SAVE_INTERVAL_S
    db.close()  # killed: nothing else saved

    db = Database(tmp_path / "n")
    restarted = HybridClock("core1", NodeMeta(db).clock_floor(), wall_ms=lambda: wall[0])
    assert restarted.now(wall_ms=wall[0]) > made
    db.close()


def test_the_clock_is_saved_every_interval_and_not_at_every_turn() -> None:
    class Saved(list):
        save_clock = list.append

    saved = Saved()
    readings = iter(range(1 << 20, 1 << 30, 10 << 16))  # 10 ms of clock per turn: what the wall clock does
    keeper = ClockKeeper(saved, lambda: next(readings))  # type: ignore[arg-type]
    for turn in range(100):
        keeper.async_check(now=100.0 + turn * 0.01)  # a turn every 10 ms for one second
    assert len(saved) == 2  # at the start and after CLOCK_SAVE_INTERVAL_S


def test_the_note_a_restore_left_is_read_once(tmp_path: Path) -> None:
    data, backup = tmp_path / "data", tmp_path / "backup"
    db = Database(data)
    NodeMeta(db).claim("core1", "iris")
    checkpoint(db, backup)
    db.close()
    restore(backup, data)
    db = Database(data)
    note = NodeMeta(db).take_restore_note()
    assert note is not None and note["from"] == str(backup.resolve()), note
    db.close()
    db = Database(data)  # the next start has nothing to say
    assert NodeMeta(db).take_restore_note() is None
    db.close()
