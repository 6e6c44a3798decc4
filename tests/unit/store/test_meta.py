"""Node metadata: incarnations grow, a data directory belongs to one node, the clock never goes back across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from iris_mesh.store import Database, HybridClock, NodeMeta, StoreError


def test_incarnation_grows_across_restarts_and_the_directory_is_claimed(tmp_path: Path) -> None:
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    meta.claim("core1")
    first = meta.bump_incarnation()
    db.close()
    db = Database(tmp_path / "n")
    meta = NodeMeta(db)
    assert meta.bump_incarnation() == first + 1
    with pytest.raises(StoreError, match="belongs to node 'core1'"):
        meta.claim("core2")
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
    db.close()
