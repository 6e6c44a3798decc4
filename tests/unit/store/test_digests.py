"""Digest upkeep: once writes settle, the digests are those of the committed rows, kept in groups or one by one."""

from __future__ import annotations

import random

import pytest

from iris_mesh.store._digests import BUCKETS, AllShared, DigestCache, bucket_of, entry_hash
from iris_mesh.store._versioned import Version

TABLE = "offline_msg"
PEERS = ("core2", "core3")


def shares(key: bytes) -> tuple[str, ...]:
    return PEERS if key[-1] % 3 else ("core2",)


def fresh(built: bool) -> DigestCache:
    cache = DigestCache((TABLE,))
    cache.reset(shares, PEERS)
    cache.add_rows(TABLE, [(b"k050", Version(1, "core1"))], last=built)
    return cache


def digests_of(committed: dict[bytes, Version], peer: str, built: bool) -> list[int]:
    """What the digests must be, from the committed rows: those the build passed, shared with `peer`."""
    digests = [0] * BUCKETS
    for key, version in committed.items():
        if (built or key <= b"k050") and peer in shares(key):
            digests[bucket_of(key)] ^= entry_hash(key, version)
    return digests


@pytest.mark.parametrize("built", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_groups_of_writes_keep_the_same_digests_as_writes_one_by_one(seed: int, built: bool) -> None:
    rnd = random.Random(seed)
    one, many = fresh(built), fresh(built)
    committed: dict[bytes, Version] = {b"k050": Version(1, "core1")}
    for _turn in range(30):
        keys = [b"k%03d" % rnd.randrange(100) for _ in range(rnd.randrange(1, 12))]
        news = [Version(rnd.randrange(1, 1000), rnd.choice(("core1", "core2"))) for _ in keys]
        currents = []
        seen = dict(committed)
        for key, new in zip(keys, news):  # what the store reports: the newest value staged before, else stored
            currents.append(seen.get(key))
            if seen.get(key) is None or new > seen[key]:
                seen[key] = new
        for key, current, new in zip(keys, currents, news):
            one.write_started(TABLE, key, current, new)
        many.writes_started(TABLE, keys, currents, news)
        ok = rnd.random() > 0.1
        if ok:
            committed = seen
        for key in keys:
            one.write_settled(TABLE, key, ok, lambda key=key: committed.get(key))
        many.writes_settled(TABLE, keys, ok, committed.get)
        assert one.digests("core2") == many.digests("core2") and one.digests("core3") == many.digests("core3")
        assert one.in_flight() == many.in_flight() == 0
        for peer in PEERS:
            assert many.digests(peer)[TABLE] == digests_of(committed, peer, built)
    assert one.touched(TABLE, 5) == many.touched(TABLE, 5)


def test_a_settled_group_hashes_each_committed_version_into_its_bucket_for_each_sharing_peer() -> None:
    cache = fresh(True)
    key = b"k001"  # shared with both peers
    cache.writes_started(TABLE, [key], [None], [Version(7, "core1")])
    assert cache.digests("core2") == fresh(True).digests("core2")  # not hashed while in flight
    cache.writes_settled(TABLE, [key], True, lambda k: None)
    expected = fresh(True)
    expected.write_started(TABLE, key, None, Version(7, "core1"))
    expected.write_settled(TABLE, key, True, lambda: None)
    assert cache.digests("core2") == expected.digests("core2")
    assert cache.digests("core2") != fresh(True).digests("core2")
    assert entry_hash(key, Version(7, "core1")) in {a ^ b for a, b in zip(cache.digests("core3")[TABLE],
                                                                       fresh(True).digests("core3")[TABLE])}


@pytest.mark.parametrize("built", [True, False])
@pytest.mark.parametrize("seed", range(10))
def test_when_every_peer_shares_every_key_one_digest_serves_them_all_and_equals_the_per_peer_digests(
        seed: int, built: bool) -> None:
    rnd = random.Random(seed)
    caches = [DigestCache((TABLE,)), DigestCache((TABLE,))]
    caches[0].reset(lambda key: PEERS, PEERS)
    caches[1].reset(AllShared(PEERS), PEERS)
    rows = sorted({(b"k%03d" % rnd.randrange(100), Version(rnd.randrange(1, 50), "core1")) for _ in range(40)})
    rows = list({key: (key, version) for key, version in rows}.values())
    committed = dict(rows)
    half = len(rows) // 2
    for cache in caches:
        cache.add_rows(TABLE, rows[:half], last=False)  # the build has passed half of the table
    for _turn in range(30):
        keys = [b"k%03d" % rnd.randrange(100) for _ in range(rnd.randrange(1, 12))]
        news = [Version(rnd.randrange(1, 1000), rnd.choice(("core1", "core2"))) for _ in keys]
        currents, seen = [], dict(committed)
        for key, new in zip(keys, news):
            currents.append(seen.get(key))
            if seen.get(key) is None or new > seen[key]:
                seen[key] = new
        ok = rnd.random() > 0.1
        if ok:
            committed = seen
        for cache in caches:
            cache.writes_started(TABLE, keys, currents, news)
            cache.writes_settled(TABLE, keys, ok, committed.get)
    if built:
        for cache in caches:
            cache.add_rows(TABLE, [(key, committed[key]) for key in sorted(committed) if key > rows[half - 1][0]],
                           last=True)
    per_peer, shared = caches
    assert shared.digests("core2") == shared.digests("core3") == per_peer.digests("core2") == per_peer.digests("core3")
    assert any(per_peer.digests("core2")[TABLE])
    assert shared.in_flight() == 0
