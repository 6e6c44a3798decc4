"""Tests for iris_mesh.membership._placement (rendezvous hashing)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.membership._placement import Placement, rendezvous_replicas

N_KEYS = 10_000


def _keys() -> list[str]:
    return [f"user{i}" for i in range(N_KEYS)]


def test_scores_follow_the_documented_formula() -> None:
    """Pin the hash: other nodes (and data already on disk) depend on this exact function."""
    cores = [f"core{i}" for i in range(1, 8)]
    key = b"alice\x00\x01"

    def score(node: str) -> int:
        return int.from_bytes(hashlib.blake2b(key + b"\x00" + node.encode(), digest_size=8).digest(), "big")

    expected = sorted(cores, key=lambda n: (-score(n), n))[:3]
    assert rendezvous_replicas(key, cores, 3) == expected


def test_text_and_utf8_bytes_keys_are_the_same_key() -> None:
    cores = ["core1", "core2", "core3", "core4", "core5"]
    assert rendezvous_replicas("björn", cores, 3) == rendezvous_replicas("björn".encode(), cores, 3)


def test_deterministic_and_independent_of_core_order() -> None:
    cores = ["core1", "core2", "core3", "core4", "core5"]
    placement = Placement()
    for key in _keys()[:500]:
        first = placement.replicas(key, cores)
        assert placement.replicas(key, cores) == first
        assert placement.replicas(key, list(reversed(cores))) == first
        assert placement.replicas(key, iter(sorted(cores, key=hash))) == first
        assert len(first) == 3 and len(set(first)) == 3


def test_keys_spread_over_all_cores() -> None:
    cores = ["core1", "core2", "core3", "core4", "core5"]
    counts = dict.fromkeys(cores, 0)
    for key in _keys():
        for node in rendezvous_replicas(key, cores, 3):
            counts[node] += 1
    # Each core should hold about 3/5 of the keys.
    for node, count in counts.items():
        assert 0.55 < count / N_KEYS < 0.65, (node, count)


def test_rf_larger_than_cores_returns_every_core_once() -> None:
    assert sorted(rendezvous_replicas("k", ["core2", "core1"], 5)) == ["core1", "core2"]
    assert Placement(replication_factor=3).replicas("k", ["core1"]) == ["core1"]
    assert Placement().replicas("k", []) == []


def test_duplicate_cores_take_one_slot() -> None:
    assert sorted(rendezvous_replicas("k", ["core1", "core1", "core1", "core2"], 3)) == ["core1", "core2"]


def test_replicas_are_a_prefix_of_the_ranking() -> None:
    """Raising rf extends the replica set; it never reshuffles the existing members."""
    cores = [f"core{i}" for i in range(1, 9)]
    for key in _keys()[:300]:
        full = rendezvous_replicas(key, cores, len(cores))
        for rf in range(1, len(cores) + 1):
            assert rendezvous_replicas(key, cores, rf) == full[:rf]


@pytest.mark.parametrize("rf", [0, -1])
def test_bad_replication_factor_is_rejected(rf: int) -> None:
    with pytest.raises(ValueError, match="replication"):
        rendezvous_replicas("k", ["core1"], rf)
    with pytest.raises(ValueError, match="replication_factor"):
        Placement(replication_factor=rf)


def test_adding_a_fourth_core_moves_about_a_quarter_of_placements() -> None:
    old_cores = ["core1", "core2", "core3"]
    new_cores = old_cores + ["core4"]
    placement = Placement(replication_factor=3)
    moved = 0
    for key in _keys():
        old = set(placement.replicas(key, old_cores))
        new = set(placement.replicas(key, new_cores))
        assert old == set(old_cores)
        moved += len(old - new)
        # Whatever moved, moved to the new core: old cores never swap keys among themselves.
        assert new - old <= {"core4"}
    share = moved / (N_KEYS * 3)
    assert 0.20 <= share <= 0.30, share


def test_removing_a_core_changes_only_the_sets_that_held_it() -> None:
    cores = ["core1", "core2", "core3", "core4", "core5"]
    gone = "core3"
    remaining = [c for c in cores if c != gone]
    placement = Placement(replication_factor=3)
    touched = 0
    for key in _keys():
        old = placement.replicas(key, cores)
        new = placement.replicas(key, remaining)
        if gone in old:
            touched += 1
            assert set(old) - set(new) == {gone}
            assert len(set(new) - set(old)) == 1
            # The survivors keep their relative rank, so the primary only moves if it was `gone`.
            assert [n for n in new if n in old] == [n for n in old if n != gone]
        else:
            assert new == old
    # About 3/5 of the keys have core3 as a replica; make sure the branch above really ran.
    assert 0.55 < touched / N_KEYS < 0.65


@given(
    key=st.binary(max_size=32),
    cores=st.sets(st.text(min_size=1, max_size=8), max_size=8),
    rf=st.integers(min_value=1, max_value=5),
)
def test_replicas_are_distinct_members_of_the_cores(key: bytes, cores: set[str], rf: int) -> None:
    replicas = rendezvous_replicas(key, cores, rf)
    assert len(replicas) == min(rf, len(cores))
    assert len(set(replicas)) == len(replicas)
    assert set(replicas) <= cores


def test_remembered_sets_follow_a_change_of_the_core_set() -> None:
    placement = Placement(replication_factor=2)
    four = frozenset({"core1", "core2", "core3", "core4"})
    keys = _keys()[:200]
    for key in keys * 2:  # the second pass answers from the cache
        assert placement.replicas(key, four) == rendezvous_replicas(key, four, 2)
    three = ["core1", "core2", "core5"]
    for key in keys:
        assert placement.replicas(key, three) == rendezvous_replicas(key, three, 2)


def test_with_at_most_rf_cores_every_core_holds_every_key_sorted() -> None:
    placement = Placement(replication_factor=3)
    for key in _keys()[:50]:
        assert placement.replicas(key, frozenset({"core3", "core1", "core2"})) == ["core1", "core2", "core3"]
        assert placement.replicas(key, ["core2", "core2"]) == ["core2"]
