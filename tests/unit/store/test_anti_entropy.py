"""Anti-entropy: the sans-IO digest and repair logic, then the driver between in-process cores.

The first half plays sessions with the sans-IO pieces alone over dict "replicas".
The second half runs StoreServices on real LocalStores (`_store_cluster.Cluster`), with a
loopback mesh that encodes every frame as the engine would, and the test thread as engine thread.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from _store_cluster import TABLE, THREE, Cluster, mark
from iris_mesh.membership import Placement
from iris_mesh.store import _ae_responder, _ae_upkeep, _anti_entropy
from iris_mesh.store._ae_responder import Responder
from iris_mesh.store._ae_session import SCAN_CHUNK_ROWS
from iris_mesh.store._anti_entropy import SessionResult
from iris_mesh.store._reconcile import Listed, Reconciler
from iris_mesh.store._coordinator import Done
from iris_mesh.store._db import Database
from iris_mesh.store._digests import BUCKETS, DigestCache, bucket_of, differing, pack_digests, unpack_digests
from iris_mesh.store._local import LocalStore
from iris_mesh.store._service import USER_TABLES
from iris_mesh.store._versioned import Version, Versioned


def v(hlc: int, value: bytes | None = b"x", node: str = "core1") -> Versioned:
    return Versioned(Version(hlc, node), value)


# ---- sans-IO: replicas as dicts ----------------------------------------------------------------


class Replica:
    """A core's rows as a dict, with its digest cache kept current on every write (newer wins)."""

    def __init__(self, name: str, cores: tuple[str, ...], rf: int = 3) -> None:
        self.name = name
        self.rows: dict[tuple[str, bytes], Versioned] = {}
        placement = Placement(replication_factor=rf)

        def shares(key: bytes) -> tuple[str, ...]:
            replicas = placement.replicas(key, cores)
            return tuple(n for n in replicas if n != name) if name in replicas else ()

        self.shares = shares
        self.cache = DigestCache(USER_TABLES)
        self.cache.reset(shares, [c for c in cores if c != name])
        for table in USER_TABLES:
            self.cache.add_rows(table, [], last=True)

    def write(self, table: str, key: bytes, item: Versioned) -> bool:
        committed = lambda: self._version(table, key)  # noqa: E731
        self.cache.write_started(table, key, committed(), item.version)
        newer = item.newer_than(self.rows.get((table, key)))
        if newer:
            self.rows[(table, key)] = item
        self.cache.write_settled(table, key, True, committed)
        return newer

    def _version(self, table: str, key: bytes) -> Version | None:
        item = self.rows.get((table, key))
        return None if item is None else item.version

    def listing(self, peer: str, buckets: dict[str, list[int]]) -> dict[tuple[str, bytes], Listed]:
        return {
            (t, k): Listed(item.version, item.is_tombstone)
            for (t, k), item in sorted(self.rows.items())
            if bucket_of(k) in buckets.get(t, ()) and peer in self.shares(k)
        }


def test_settled_writes_hash_the_newest_version_seen_and_read_only_after_a_failed_commit() -> None:
    a = Replica("core1", THREE)
    reads: list[bytes] = []

    def committed(key: bytes) -> Callable[[], Version | None]:
        def read() -> Version | None:
            reads.append(key)
            return a._version(TABLE, key)
        return read

    for key, versions in ((b"k1", (5, 7, 6)), (b"k2", (5,))):
        for hlc in versions:  # overlapping writes of one key, one of them stale
            a.cache.write_started(TABLE, key, a._version(TABLE, key), Version(hlc, "core1"))
            if v(hlc).newer_than(a.rows.get((TABLE, key))):
                a.rows[(TABLE, key)] = v(hlc)
        for _ in versions:
            a.cache.write_settled(TABLE, key, key != b"k2", committed(key))
    assert reads == [b"k2"]
    b = Replica("core2", THREE)
    b.write(TABLE, b"k1", v(7))
    b.write(TABLE, b"k2", v(5))
    assert a.cache.in_flight() == 0
    assert not differing(a.cache.digests("core2"), b.cache.digests("core1"))


def session(a: Replica, b: Replica, purge_before_ms: int = 0) -> tuple[list[bytes], list[bytes]]:
    """A initiates with B: digests, B's listing merged with A's rows; both sides apply. Returns (pushed, pulled)."""
    diff = differing(b.cache.digests(a.name), unpack_digests(pack_digests(a.cache.digests(b.name))))
    reconciler = Reconciler(sorted(diff), purge_before_ms=purge_before_ms)
    for table in sorted(diff):
        reconciler.theirs(table, [(k, listed) for (t, k), listed in b.listing(a.name, diff).items() if t == table])
        reconciler.ours(table, [(key, item) for (t, key), item in sorted(a.rows.items())
                                if t == table and bucket_of(key) in diff[table] and b.name in a.shares(key)],
                        last=True)
    reconciler.theirs_done()
    pushes, pulls = reconciler.step(max_pulls=10**9)
    assert reconciler.done
    for table, key, item in pushes:
        b.write(table, key, item)
    for table, key in pulls:
        a.write(table, key, b.rows[(table, key)])
    return [key for _, key, _ in pushes], [key for _, key in pulls]


def test_equal_stores_transfer_nothing() -> None:
    a, b = Replica("core1", THREE), Replica("core2", THREE)
    for i in range(500):
        for replica in (a, b):
            replica.write(TABLE, b"user\x00%d" % i, v(1000 + i))
    assert differing(a.cache.digests("core2"), b.cache.digests("core1")) == {}
    assert session(a, b) == ([], [])
    assert session(b, a) == ([], [])


def test_one_missing_key_moves_exactly_that_key_either_way() -> None:
    a, b = Replica("core1", THREE), Replica("core2", THREE)
    for i in range(500):
        for replica in (a, b):
            replica.write(TABLE, b"k%d" % i, v(1000 + i))
    a.write(TABLE, b"only-a", v(5000))
    diff = differing(a.cache.digests("core2"), b.cache.digests("core1"))
    assert diff == {TABLE: [bucket_of(b"only-a")]}
    assert session(b, a) == ([], [b"only-a"])  # B initiates and pulls it
    assert b.rows == a.rows
    a.write("presence", b"only-b-now", v(6000))
    b.rows, b_missing = dict(b.rows), b.rows.pop(("presence", b"only-b-now"), None)
    assert b_missing is None
    assert session(a, b) == ([b"only-b-now"], [])  # A initiates and pushes it
    assert differing(a.cache.digests("core2"), b.cache.digests("core1")) == {}


def test_newer_tombstone_beats_older_value_and_is_never_undone() -> None:
    a, b = Replica("core1", THREE), Replica("core2", THREE)
    a.write(TABLE, b"m1", v(100, b"hello"))
    b.write(TABLE, b"m1", v(100, b"hello"))
    a.write(TABLE, b"m1", v(200, None, node="core2"))  # deleted while b was away
    # b initiates with its stale value: it must pull the tombstone, not push its value.
    assert session(b, a) == ([], [b"m1"])
    assert b.rows[(TABLE, b"m1")].is_tombstone and a.rows[(TABLE, b"m1")].is_tombstone
    # The stale value arriving late (a hint, a slow repair) loses on both sides.
    assert not a.write(TABLE, b"m1", v(100, b"hello")) and not b.write(TABLE, b"m1", v(100, b"hello"))
    assert session(a, b) == ([], []) and session(b, a) == ([], [])

    c = Replica("core3", THREE)
    c.write(TABLE, b"m1", v(100, b"hello"))
    assert session(a, c) == ([b"m1"], [])  # a initiates: pushes the tombstone
    assert c.rows[(TABLE, b"m1")].is_tombstone


def test_old_tombstones_are_not_sent_to_a_side_that_has_no_row() -> None:
    a, b = Replica("core1", THREE), Replica("core2", THREE)
    old = v(1000 << 16, None)
    a.write(TABLE, b"gone", old)
    assert session(a, b, purge_before_ms=2000) == ([], [])  # due for purging: not brought back to life
    assert session(b, a, purge_before_ms=2000) == ([], [])
    b.write(TABLE, b"gone", v(500 << 16, b"stale"))  # but an older value still loses to it
    assert session(a, b, purge_before_ms=2000) == ([b"gone"], [])
    assert b.rows[(TABLE, b"gone")].is_tombstone


def test_rows_still_in_the_write_path_are_left_to_it() -> None:
    reconciler = Reconciler([TABLE], purge_before_ms=0, settle_before_ms=4000)
    reconciler.theirs(TABLE, [(b"both", Listed(Version(1000 << 16, "core2"), False)),
                              (b"fresh", Listed(Version(5000 << 16, "core2"), False)),
                              (b"old", Listed(Version(1000 << 16, "core2"), False))])
    reconciler.theirs_done(TABLE)
    reconciler.ours(TABLE, [(b"both", v(4100 << 16)),  # our newer version is still on its way
                            (b"mine-fresh", v(4500 << 16)),  # written just now: not pushed yet
                            (b"mine-old", v(3000 << 16))], last=True)
    pushes, pulls = reconciler.step(max_pulls=100)
    assert [key for _, key, _ in pushes] == [b"mine-old"]
    assert pulls == [(TABLE, b"old")]  # "fresh" is left to the write path too
    assert reconciler.unsettled == 3 and reconciler.done


def test_the_merge_compares_only_what_both_sides_have_read_and_holds_no_more() -> None:
    """Listing and own rows arrive in pieces: a key is decided once both sides have passed it, never twice."""
    reconciler = Reconciler([TABLE, "presence"], purge_before_ms=0)
    listed = lambda hlc: Listed(Version(hlc, "core2"), False)  # noqa: E731
    reconciler.theirs(TABLE, [(b"a", listed(5)), (b"c", listed(5)), (b"e", listed(9))])
    reconciler.ours(TABLE, [(b"b", v(5)), (b"c", v(7))], last=False)
    pushes, pulls = reconciler.step(max_pulls=100)
    # a: only theirs, and our rows passed it; b: only ours, the listing passed it; c: ours newer. e waits for our side.
    assert [k for _, k, _ in pushes] == [b"b", b"c"] and pulls == [(TABLE, b"a")]
    assert (reconciler.buffered_theirs, reconciler.buffered_ours, reconciler.consumed) == (1, 0, 2)
    assert reconciler.theirs(TABLE, [(b"d", listed(1)), (b"f", listed(1))]) == 1  # d is out of order: dropped
    reconciler.ours(TABLE, [(b"e", v(3))], last=True)
    assert reconciler.step(max_pulls=1) == ([], [(TABLE, b"e")])  # at most max_pulls: f waits
    assert not reconciler.done
    assert reconciler.step(max_pulls=100) == ([], [(TABLE, b"f")])
    reconciler.theirs_done(TABLE)
    reconciler.ours("presence", [(b"p", v(4))], last=True)
    assert not reconciler.done  # the presence listing is not complete: p may still come from the peer
    assert reconciler.step(max_pulls=100) == ([], [])
    reconciler.theirs_done("presence")
    assert [k for _, k, _ in reconciler.step(max_pulls=100)[0]] == [b"p"] and reconciler.done


def test_keys_not_replicated_on_both_cores_are_never_compared() -> None:
    cores = ("core1", "core2", "core3", "core4", "core5")
    a, b = Replica("core1", cores), Replica("core2", cores)
    placement = Placement(replication_factor=3)
    keys = [b"key-%d" % i for i in range(400)]
    both = [k for k in keys if {"core1", "core2"} <= set(placement.replicas(k, cores))]
    a_only = [k for k in keys if "core1" in placement.replicas(k, cores) and k not in both]
    assert both and a_only
    for key in both + a_only:
        a.write(TABLE, key, v(10))
    for key in both:
        b.write(TABLE, key, v(10))
    assert differing(a.cache.digests("core2"), b.cache.digests("core1")) == {}
    a.write(TABLE, a_only[0], v(20))  # a newer version of an unshared key changes nothing for core2
    assert differing(a.cache.digests("core2"), b.cache.digests("core1")) == {}
    b.rows.clear()
    b.cache.reset(b.shares, [c for c in cores if c != "core2"])
    for table in USER_TABLES:
        b.cache.add_rows(table, [], last=True)
    pushed, pulled = session(a, b)
    assert sorted(pushed) == sorted(both) and pulled == []
    assert not set(a_only) & set(k for _, k in b.rows)


def test_cache_maintained_on_writes_equals_a_fresh_build_even_when_writes_race_the_build() -> None:
    a = Replica("core1", THREE)
    for i in range(300):
        a.write(TABLE, b"k%03d" % i, v(100 + i))
    # Rebuild from the committed rows in chunks, while writes arrive between chunks
    # and one write stays in flight across a chunk boundary.
    cache = DigestCache(USER_TABLES)
    cache.reset(a.shares, ["core2", "core3"])
    committed = lambda key: (lambda: a._version(TABLE, key))  # noqa: E731
    rows = sorted((k, item.version) for (t, k), item in a.rows.items() if t == TABLE)
    cache.add_rows(TABLE, rows[:100], last=False)
    cache.write_started(TABLE, b"k050", a._version(TABLE, b"k050"), Version(9000, "core1"))  # passed by the build
    cache.write_started(TABLE, b"k250", a._version(TABLE, b"k250"), Version(9001, "core1"))  # not yet passed
    a.rows[(TABLE, b"k050")] = v(9000)
    a.rows[(TABLE, b"k250")] = v(9001)
    cache.add_rows(TABLE, sorted((k, item.version) for (t, k), item in a.rows.items() if t == TABLE)[100:], last=True)
    cache.write_settled(TABLE, b"k050", True, committed(b"k050"))
    cache.write_settled(TABLE, b"k250", True, committed(b"k250"))
    for table in USER_TABLES[1:]:
        cache.add_rows(table, [], last=True)
    assert cache.ready and cache.in_flight() == 0
    fresh = DigestCache(USER_TABLES)
    fresh.reset(a.shares, ["core2", "core3"])
    for table in USER_TABLES:
        fresh.add_rows(table, sorted((k, item.version) for (t, k), item in a.rows.items() if t == table), last=True)
    assert cache.digests("core2") == fresh.digests("core2")
    assert differing(cache.digests("core3"), fresh.digests("core3")) == {}


def test_differing_honours_only_and_rejects_bad_digests() -> None:
    mine = {TABLE: [0] * BUCKETS}
    theirs = {TABLE: [0] * BUCKETS}
    theirs[TABLE][3] = theirs[TABLE][7] = 1
    assert differing(mine, theirs) == {TABLE: [3, 7]}
    assert differing(mine, theirs, only={TABLE: {7, 9}}) == {TABLE: [7]}
    assert differing(mine, {}) == {}
    for bad in (None, {TABLE: b"short"}, {1: b"\x00" * 8 * BUCKETS}):
        with pytest.raises(ValueError):
            unpack_digests(bad)


# ---- the driver between in-process cores ----------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path, THREE)
    try:
        yield made
    finally:
        made.close()



def test_a_core_that_missed_writes_and_a_delete_catches_up_without_hints(cluster: Cluster) -> None:
    assert cluster.put("core1", b"doomed", b"old").ok
    cluster.down.add("core3")
    mark(cluster, "core3", "dead")
    for i in range(2000):
        cluster.services["core1"].async_put(TABLE, b"k%05d" % i, b"v%d" % i, durability="quorum",
                                            on_done=lambda done: None, now=time.monotonic())
    assert cluster.put("core2", b"doomed", None).ok
    cluster.run_until(lambda: len(cluster.rows("core1")) == 2001 and len(cluster.rows("core2")) == 2001, "the writes")
    for core in ("core1", "core2"):
        assert cluster.services[core].async_drop_hints("core3") > 2000
    cluster.run_until(lambda: all(not cluster.locals[c].hints_for("core3") for c in ("core1", "core2")), "no hints")

    cluster.down.discard("core3")
    mark(cluster, "core3", "alive")
    expected = {k: item.version for k, item in cluster.rows("core1").items()}
    cluster.run_until(lambda: {k: item.version for k, item in cluster.rows("core3").items()} == expected,
                      "core3 to match core1")
    assert cluster.rows("core3")[b"doomed"].is_tombstone
    # Later sessions find nothing to do, in both directions, and the deleted value stays deleted.
    results = cluster.resync("core3")
    assert [(r.peer, r.code, r.pushed, r.pulled) for r in results] == [("core1", "ok", 0, 0), ("core2", "ok", 0, 0)]
    assert all(r.buckets == BUCKETS * len(USER_TABLES) for r in results)
    assert cluster.rows("core1")[b"doomed"].is_tombstone


def test_resync_finds_rows_that_bypassed_the_digests_and_reports_counts(cluster: Cluster) -> None:
    for i in range(50):
        assert cluster.put("core1", b"k%d" % i, b"v").ok
    # Behind the store's back, core2 loses a row and core3 gets an extra one (as a bad disk
    # or a lost write would): only a full pass, which trusts no digest, notices.
    lost = Versioned(Version(10, "core9"), b"extra")
    cluster.locals["core3"].async_apply(TABLE, b"extra", lost)
    cluster.run_until(lambda: b"extra" in cluster.rows("core3"), "the extra row")
    results = {r.peer: r for r in cluster.resync("core3")}
    assert results["core1"].pushed == 1 and results["core2"].pushed == 1
    assert all(b"extra" in cluster.rows(c) for c in THREE)


def test_a_resync_going_on_says_how_far_it_got_with_each_peer(cluster: Cluster) -> None:
    """What `meshctl resync` shows while it waits: each peer's step, rows listed and repairs so far."""
    for i in range(50):
        assert cluster.put("core1", b"k%d" % i, b"v").ok
    cluster.locals["core3"].async_apply(TABLE, b"extra", Versioned(Version(10, "core9"), b"extra"))
    cluster.run_until(lambda: b"extra" in cluster.rows("core3"), "the extra row")
    anti_entropy = cluster.services["core3"].anti_entropy
    assert anti_entropy.resyncs(time.monotonic()) == []
    box: list[list[SessionResult]] = []
    assert cluster.services["core3"].async_resync(time.monotonic(), 20.0, box.append) is None
    first = anti_entropy.resyncs(time.monotonic())
    assert [(r["peer"], r["listed"], r["pushed"], r["pulled"]) for r in first] == [("core1", 0, 0, 0), ("core2", 0, 0, 0)]
    assert all(isinstance(r["step"], str) and r["running_s"] >= 0 for r in first)
    seen: list[list[dict[str, Any]]] = []
    cluster.run_until(lambda: seen.append(anti_entropy.resyncs(time.monotonic())) or box, "the resync")
    assert any(r["listed"] == 50 for sample in seen for r in sample)  # the peers' rows, listed before it ended
    assert anti_entropy.resyncs(time.monotonic()) == []  # over: nothing going on


def test_sessions_refused_in_safe_mode_are_retried(cluster: Cluster) -> None:
    cluster.down.add("core3")
    mark(cluster, "core3", "dead")
    for i in range(20):
        assert cluster.put("core1", b"k%d" % i, b"v").ok
    for core in ("core1", "core2"):
        cluster.services[core].async_drop_hints("core3")
    cluster.memberships["core3"].safe = False
    cluster.down.discard("core3")
    mark(cluster, "core3", "alive")
    cluster.run_until(lambda: cluster.services["core1"].counters["ae_partition_detected"] > 0, "a refusal")
    assert len(cluster.rows("core3")) == 0
    cluster.memberships["core3"].safe = True
    cluster.run_until(lambda: len(cluster.rows("core3")) == 20, "the retry to repair core3")


def fresh_digests(cluster: Cluster, core: str, peer: str) -> dict[str, list[int]]:
    cache = DigestCache(USER_TABLES)
    service = cluster.services[core]
    cache.reset(service._shares_for(frozenset(THREE)), [peer])
    for table in USER_TABLES:
        cache.add_rows(table, [(k, item.version) for k, item in cluster.locals[core].scan(table)], last=True)
    return cache.digests(peer)


def test_digests_stay_exact_while_writes_and_sessions_interleave(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, THREE, interval_s=0.05)
    try:
        answered: list[Done] = []
        for i in range(3000):
            core = THREE[i % 3]
            key = b"k%d" % (i % 700)  # overwrites and deletes of the same keys, often within one commit
            value = None if i % 5 == 0 else b"v%d" % i
            cluster.services[core].async_put(TABLE, key, value, durability="quorum", on_done=answered.append,
                                              now=time.monotonic())
            if i % 50 == 0:
                cluster.turn()
        cluster.run_until(lambda: len(answered) == 3000 and all(c.anti_entropy.cache.in_flight() == 0
                                                                for c in cluster.services.values()), "quiescence")
        assert all(done.ok for done in answered)
        for core in THREE:
            anti_entropy = cluster.services[core].anti_entropy
            assert anti_entropy is not None and anti_entropy.cache.ready
            for peer in THREE:
                if peer != core:
                    assert anti_entropy.cache.digests(peer) == fresh_digests(cluster, core, peer), (core, peer)
        assert cluster.rows("core1") == cluster.rows("core2") == cluster.rows("core3")
    finally:
        cluster.close()


def test_tombstones_past_the_grace_period_are_purged_and_stay_gone(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, THREE, interval_s=0.05, grace_s=1.0)
    try:
        assert cluster.put("core1", b"keep", b"v").ok
        assert cluster.put("core1", b"gone", b"v").ok
        assert cluster.put("core2", b"gone", None).ok
        cluster.run_until(lambda: cluster.services["core1"].counters["ae_tombstones_purged"], "core1's purge",
                          timeout_s=15.0)
        # Until the purge is committed and the digests rebuilt, they still count the purged row: not ready.
        assert not cluster.services["core1"].anti_entropy.cache.ready
        cluster.run_until(lambda: all(b"gone" not in cluster.rows(c) for c in THREE), "the tombstone to be purged",
                          timeout_s=15.0)
        assert sum(s.counters["ae_tombstones_purged"] for s in cluster.services.values()) == 3
        cluster.run_until(lambda: all(s.anti_entropy.cache.ready for s in cluster.services.values()), "rebuilt digests")
        results = cluster.resync("core3")
        assert all(r.ok and r.pushed == r.pulled == 0 for r in results), results
        # A maintenance round (every second, here) rebuilds the digests: compare them once that is done.
        cluster.run_until(lambda: all(s.anti_entropy.cache.ready for s in cluster.services.values()), "rebuilt digests")
        for core in THREE:
            assert cluster.rows(core).keys() == {b"keep"}
            assert cluster.services[core].anti_entropy.cache.digests("core1" if core != "core1" else "core2") == \
                fresh_digests(cluster, core, "core1" if core != "core1" else "core2")
    finally:
        cluster.close()


def test_a_purge_reads_a_bounded_share_of_a_table_per_turn_and_still_purges_every_old_tombstone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One turn read every row of every table: a million rows held the engine a second, every maintenance round.
    monkeypatch.setattr(_ae_upkeep, "_PURGE_ROWS_PER_TURN", 5)
    cluster = Cluster(tmp_path, THREE, interval_s=0.05, grace_s=1.0)
    try:
        keys = [b"k%02d" % i for i in range(30)]
        assert all(cluster.put("core1", key, b"v").ok for key in keys)
        assert all(cluster.put("core1", key, None).ok for key in keys[::2])  # 15 tombstones
        cluster.run_until(lambda: all(len(cluster.rows(c)) == 30 for c in THREE), "every row on every core")
        local = cluster.locals["core1"]
        reads: list[int | None] = []

        def purge(table: str, cutoff: int, limit: int = 10_000, **kwargs: Any) -> Any:
            reads.append(kwargs.get("max_rows"))
            return purge_all(table, cutoff, limit, **kwargs)

        purge_all = local.async_purge_tombstones
        monkeypatch.setattr(local, "async_purge_tombstones", purge)
        cluster.wall_offset_ms += 1500  # the tombstones are past the grace period
        cluster.run_until(lambda: all(len(cluster.rows(c)) == 15 for c in THREE), "every old tombstone purged",
                          timeout_s=15.0)
        assert all(not cluster.rows(c)[key].is_tombstone for c in THREE for key in cluster.rows(c))
        assert reads and set(reads) == {5}
        assert len(reads) >= 30 // 5  # one pass over the table took several turns
        cluster.run_until(lambda: all(s.anti_entropy.cache.ready for s in cluster.services.values()), "rebuilt digests")
        for core, peer in (("core1", "core2"), ("core2", "core3"), ("core3", "core1")):
            assert cluster.services[core].anti_entropy.cache.digests(peer) == fresh_digests(cluster, core, peer)
    finally:
        cluster.close()


def test_a_core_down_past_the_grace_period_holds_the_purge_back_and_gets_the_deletes_on_its_return(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, THREE, interval_s=0.05, grace_s=1.0)
    try:
        assert cluster.put("core1", b"gone", b"v").ok
        cluster.run_until(lambda: all(b"gone" in cluster.rows(c) for c in THREE), "the row on every core")
        cluster.down.add("core3")
        mark(cluster, "core3", "dead")
        assert cluster.put("core1", b"gone", None).ok  # the delete core3 never hears of
        for core in ("core1", "core2"):
            cluster.services[core].async_drop_hints("core3")  # as if its hints were still far behind in the queue
        cluster.wall_offset_ms += 1500  # the tombstone is past the grace period
        builds = {c: cluster.services[c].counters["ae_cache_builds"] for c in ("core1", "core2")}
        # Each maintenance round (every second here) ends with the digests built again, purge or not.
        cluster.run_until(lambda: all(cluster.services[c].counters["ae_cache_builds"] >= builds[c] + 2
                                      for c in ("core1", "core2")), "maintenance rounds on core1 and core2")
        for core in ("core1", "core2"):
            kept = cluster.rows(core).get(b"gone")
            assert kept is not None and kept.is_tombstone, "purged while core3 still holds the row live"
        assert all(cluster.services[c].counters["ae_purges_held"] for c in ("core1", "core2"))
        assert not cluster.rows("core3")[b"gone"].is_tombstone

        # core3 returns; anti-entropy tells it of the delete, then the tombstone goes everywhere.
        cluster.down.discard("core3")
        mark(cluster, "core3", "alive")
        cluster.run_until(lambda: all(b"gone" not in cluster.rows(c) for c in THREE), "the tombstone purged everywhere",
                          timeout_s=15.0)
        assert all(b"gone" not in cluster.rows(c) for c in THREE)
    finally:
        cluster.close()


def test_digest_scan_speed(tmp_path: Path) -> None:
    """Measures the digest build (a full scan) per 10k rows; printed for the record, loosely bounded."""
    db = Database(tmp_path / "db")
    local = LocalStore(db, post=lambda fn: None)
    try:
        from iris_mesh.store._versioned import encode_versioned

        db.write([(TABLE, b"user%04d\x00%012d" % (i % 1000, i), encode_versioned(v(i << 16, b"m" * 100)))
                  for i in range(10_000)])
        cache = DigestCache(USER_TABLES)
        cache.reset(lambda key: ("core2", "core3"), ["core2", "core3"])
        started = time.perf_counter()
        cursor = None
        while True:
            rows = local.scan(TABLE, start_after=cursor, limit=256)
            cache.add_rows(TABLE, [(k, item.version) for k, item in rows], last=len(rows) < 256)
            if len(rows) < 256:
                break
            cursor = rows[-1][0]
        elapsed = time.perf_counter() - started
        print(f"digest build of 10k rows: {elapsed * 1000:.1f} ms")
        assert elapsed < 2.0
    finally:
        local.close()
        db.close()


def test_routine_sessions_list_only_buckets_left_quiet_since_their_first_round(cluster: Cluster) -> None:
    def settled() -> bool:
        return all(s.anti_entropy is not None and s.anti_entropy.cache.ready and not s.anti_entropy._sessions
                   and s.anti_entropy.last_results for s in cluster.services.values())

    cluster.run_until(settled, "the sessions every core starts with")
    mark(cluster, "core3", "dead")  # to core1 and core2 only: core3 runs on, with no reason to compare
    keys = [b"q%d" % i for i in range(5)]
    assert len({bucket_of(k) for k in keys}) == 5
    for key in keys:
        assert cluster.put("core1", key, b"v").ok
    for core in ("core1", "core2"):
        cluster.services[core].async_drop_hints("core3")
    cluster.run_until(lambda: all(not cluster.locals[c].hints_for("core3") for c in ("core1", "core2")), "no hints")
    for membership in cluster.memberships.values():
        membership.states["core3"] = "alive"  # no rejoin session: only the routine one below
    cluster.wall_offset_ms += 1100  # routine sessions leave rows younger than a second to the write path
    anti_entropy = cluster.services["core1"].anti_entropy
    assert anti_entropy is not None
    cluster.run_until(settled, "earlier sessions")
    assert cluster.rows("core3") == {}
    session = anti_entropy._start("core3", time.monotonic(), routine=True)
    cluster.run_until(lambda: session.state == "recheck", "the first round")
    assert session.first_diff == {TABLE: sorted(bucket_of(k) for k in keys)}
    # A write lands in the first key's bucket meanwhile (the write path delivers it to core3 too).
    assert cluster.put("core1", keys[0], b"newer").ok
    results: list[SessionResult] = []
    session.waiters.append(results.append)
    cluster.run_until(lambda: results, "the session")
    result = results[0]
    assert (result.code, result.buckets, result.pushed) == ("ok", 4, 4)
    assert {k: item.value for k, item in cluster.rows("core3").items()} == {
        keys[0]: b"newer", **{k: b"v" for k in keys[1:]}}


def test_an_end_code_no_responder_sends_is_a_bad_reply_and_names_no_counter(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A peer of another version, or a damaged frame: each distinct code would have become a counter of its own.
    made_up = iter(f"made-up-{n}" for n in range(10**6))
    monkeypatch.setattr(Responder, "_refusal", lambda self, src, fp: next(made_up))
    results = cluster.resync("core1")  # a session with each peer, each ended with a code of its own
    counters = cluster.services["core1"].counters
    assert counters["ae_bad_reply"] == 2, (results, sorted(counters))
    assert not [name for name in counters if "made-up" in name], sorted(counters)


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> int:
    """Windows a few thousand rows overrun (the real listing and pull-queue ones are 20,000): the listing window."""
    monkeypatch.setattr(_ae_responder, "LIST_WINDOW", 400)
    monkeypatch.setattr(_ae_responder, "_LIST_FLUSH_ROWS", 100)
    monkeypatch.setattr(_anti_entropy, "LIST_WINDOW", 400)
    monkeypatch.setattr(_anti_entropy, "_PULL_QUEUE", 300)
    monkeypatch.setattr(_anti_entropy, "_PULL_WINDOW", 100)  # pulls answered slower than the listing comes
    return 400


def rows_behind_the_store(cluster: Cluster, cores: tuple[str, ...], count: int) -> dict[bytes, Version]:
    """`count` rows on `cores` only, as a core restored from an old backup would lack them."""
    rows = {b"user%05d\x00m" % i: Version((1000 + i) << 16, "core1") for i in range(count)}
    for core in cores:
        for key, version in rows.items():
            cluster.locals[core].async_apply(TABLE, key, Versioned(version, b"v"))
    cluster.run_until(lambda: all(len(cluster.rows(c)) == count for c in cores), "the rows")
    return rows


def test_a_session_holds_a_bounded_share_of_a_listing_however_large(tmp_path: Path, small_windows: int) -> None:
    """An empty core resyncs 3,000 rows: the listing it has not compared and the keys it queues to pull stay within
    the windows (the whole listing was held before), and every row arrives."""
    cluster = Cluster(tmp_path, THREE)
    try:
        rows = rows_behind_the_store(cluster, ("core1", "core2"), 3000)
        initiator = cluster.services["core3"].anti_entropy
        responders = [cluster.services[c].anti_entropy._responder for c in ("core1", "core2")]
        held = {"listed": 0, "to_pull": 0, "ahead": 0}

        def sample() -> None:
            for session in initiator._sessions.values():
                if session.merge is not None:
                    held["listed"] = max(held["listed"], session.merge.buffered_theirs)
                held["to_pull"] = max(held["to_pull"], len(session.pull_queue))
            for responder in responders:
                for listing in responder._listings.values():
                    held["ahead"] = max(held["ahead"], listing.sent - listing.compared)

        compare = initiator._compare

        def compare_and_sample(session: Any) -> None:  # the high-water marks come and go within one turn
            compare(session)
            sample()

        initiator._compare = compare_and_sample  # type: ignore[method-assign]
        box: list[list[SessionResult]] = []
        assert cluster.services["core3"].async_resync(time.monotonic(), 20.0, box.append) is None
        cluster.run_until(lambda: sample() or box, "the resync")
        assert [(r.peer, r.code, r.listed) for r in box[0]] == [("core1", "ok", 3000), ("core2", "ok", 3000)]
        assert {k: item.version for k, item in cluster.rows("core3").items()} == rows
        # The windows were reached, and held: a frame of listed rows and a scan chunk is all they are overrun by.
        slack = _ae_responder._LIST_FLUSH_ROWS + SCAN_CHUNK_ROWS
        assert small_windows <= held["ahead"] <= small_windows + slack, held
        assert 0 < held["listed"] <= small_windows + slack, held
        assert 0 < held["to_pull"] <= _anti_entropy._PULL_QUEUE, held
    finally:
        cluster.close()


def test_a_listing_its_peer_stopped_comparing_is_dropped(tmp_path: Path, small_windows: int) -> None:
    """A listing waits for its peer to compare it; a peer whose session timed out says so, and one that says
    nothing has its listing dropped after 30 s, and is told: the core is not left busy with it."""
    cluster = Cluster(tmp_path, THREE)
    try:
        rows_behind_the_store(cluster, ("core1", "core2"), 1500)
        responder = cluster.services["core1"].anti_entropy._responder
        counters = cluster.services["core1"].counters

        def blocked() -> bool:
            return any(lst.sent - lst.compared >= small_windows for lst in responder._listings.values())

        # core3's session times out while core1's listing waits: core3 says so (ae_stop).
        cluster.paused.add("core3")  # core3 compares nothing: core1's listing fills its window and waits
        box: list[list[SessionResult]] = []
        assert cluster.services["core3"].async_resync(time.monotonic(), 0.3, box.append) is None
        cluster.run_until(blocked, "core1's listing to wait for core3")
        cluster.run_until(lambda: box, "core3's session to time out")
        assert dict((r.peer, r.code) for r in box[0])["core1"] == "timeout"
        cluster.run_until(lambda: responder.listings == 0, "core1 to drop the listing at core3's word")
        cluster.paused.discard("core3")
        cluster.frames.clear()

        # core3 says nothing for 30 s: core1 drops the listing and tells it, so it need not wait for its deadline.
        cluster.paused.add("core3")
        box.clear()
        assert cluster.services["core3"].async_resync(time.monotonic(), 20.0, box.append) is None
        cluster.run_until(blocked, "core1's listing to wait for core3 again")
        now = time.monotonic()
        responder.expire(now)  # seen waiting from now on
        [listing] = responder._listings.values()
        listing.heard_at = now - 25.0  # core3's last ae_more came 25 s before the window filled: a slow compare
        responder.expire(now + 6.0)
        assert responder.listings == 1  # the 30 s count from when it began to wait
        responder.expire(now + 29.0)
        assert responder.listings == 1
        responder.expire(time.monotonic() + 31.0)
        assert responder.listings == 0 and counters["ae_listings_stalled"] == 1
        cluster.paused.discard("core3")
        cluster.run_until(lambda: box, "core3's sessions to end", timeout_s=5.0)
        assert dict((r.peer, r.code) for r in box[0]) == {"core1": "busy", "core2": "ok"}
    finally:
        cluster.close()
