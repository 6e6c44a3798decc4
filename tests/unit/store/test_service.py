"""StoreService between in-process nodes: batched replica writes and acks, hinted handoff, refusals, bad frames."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from loguru import logger

from _store_cluster import TABLE, THREE, Cluster, fail_fsyncs_of, mark
from iris_mesh.sockets._codec import decode_mesh
from iris_mesh.store._coordinator import Done
from iris_mesh.store import _handoff
from iris_mesh.store._frames import parse_write_groups
from iris_mesh.store._versioned import Version, Versioned, encode_versioned

EDGE = "edge1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path, THREE, edges=(EDGE,), partition_limits={TABLE: 5})
    try:
        yield made
    finally:
        made.close()


def put_many(cluster: Cluster, node: str, keys: list[bytes], value: bytes = b"v") -> list[Done]:
    """Start every write in one loop turn (as the engine runs a mailbox full of them) and wait for every answer."""
    answers: dict[bytes, Done] = {}
    now = time.monotonic()
    for key in keys:
        cluster.services[node].async_put(TABLE, key, value, durability="quorum",
                                         on_done=lambda done, key=key: answers.__setitem__(key, done), now=now)
    cluster.run_until(lambda: len(answers) == len(keys), f"answers to {len(keys)} writes")
    return [answers[key] for key in keys]


def back_without_transition(cluster: Cluster, core: str) -> None:
    """`core` is up and alive to every node, with no membership transition: only the handoff repairs it."""
    cluster.down.discard(core)
    for membership in cluster.memberships.values():
        membership.states[core] = "alive"


def test_the_writes_of_one_turn_go_out_as_one_frame_per_replica_and_come_back_as_one_ack_frame_each(
    cluster: Cluster,
) -> None:
    keys = [b"user%03d\x00m" % i for i in range(300)]
    answers = put_many(cluster, EDGE, keys)
    assert all(done.ok for done in answers)
    assert {core: cluster.sent[("sput", core)] for core in THREE} == {core: 1 for core in THREE}
    assert cluster.sent[("sack", EDGE)] == 3
    for core in THREE:
        assert len(cluster.rows(core)) == 300


def test_a_core_that_was_down_gets_its_hinted_writes_and_the_hints_go_once_it_acked(cluster: Cluster) -> None:
    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(message.record["message"]), level="INFO")
    cluster.down.add("core3")
    mark(cluster, "core3", "dead")
    keys = [b"user%03d\x00m" % i for i in range(50)]
    assert all(done.ok and set(done.acked_by) == {"core1", "core2"} for done in put_many(cluster, EDGE, keys))
    for core in ("core1", "core2"):
        assert len(cluster.locals[core].hints_for("core3")) == 50
    assert cluster.rows("core3") == {}

    back_without_transition(cluster, "core3")  # anti-entropy has no reason to run, only handoff can repair it
    # Fresh writes keep coming while the handoff runs: their acks share frames with the handoff's.
    more = [b"user%03d\x00n" % i for i in range(50)]
    assert all(done.ok for done in put_many(cluster, EDGE, more))
    cluster.run_until(lambda: not cluster.locals["core1"].hints_for("core3")
                      and not cluster.locals["core2"].hints_for("core3"), "the hints to be handed off and dropped")
    assert set(cluster.rows("core3")) == set(keys) | set(more)
    assert cluster.rows("core3") == cluster.rows("core1")
    handed_off = sum(cluster.services[c].counters["hints_handed_off"] for c in ("core1", "core2"))
    assert handed_off >= 50
    assert sum(cluster.services[c].counters["ae_repairs_sent"] for c in THREE) == 0
    # The operator reads when the handoff to core3 starts and when it is done, on each core that held hints.
    try:
        cluster.run_until(lambda: sum("core3 has every write it missed" in m for m in logged) == 2, "the done lines")
    finally:
        logger.remove(sink)
    assert sum(m == "handing core3 the writes it missed (50 hints held here)" for m in logged) == 2, logged
    assert sum(m == "core3 has every write it missed that this core took: 50 hints handed off, none left"
               for m in logged) == 2, logged


def test_a_back_core_is_handed_its_hints_a_window_at_a_time_and_the_log_gives_their_number(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_handoff, "_HANDOFF_BATCH", 100)
    monkeypatch.setattr(_handoff, "_HANDOFF_WINDOW", 300)
    monkeypatch.setattr(_handoff, "_BUSY_INTERVAL_S", 0.0)  # a handoff pass every turn
    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(message.record["message"]), level="INFO")
    cluster.down.add("core3")
    mark(cluster, "core3", "dead")
    keys = [b"user%04d\x00m" % i for i in range(1200)]
    assert all(done.ok for done in put_many(cluster, EDGE, keys))
    cluster.paused.add("core3")  # back, but its answers are slow to come
    back_without_transition(cluster, "core3")

    def sent(core: str) -> int:
        return cluster.services[core].counters["hints_handed_off"]

    # Hints go out past the first batch without waiting for its acks, and stop at the window.
    cluster.run_until(lambda: sent("core1") == 300 and sent("core2") == 300, "a window of hints to each")
    for _ in range(50):
        cluster.turn()
    assert (sent("core1"), sent("core2")) == (300, 300)

    cluster.paused.discard("core3")
    try:
        cluster.run_until(lambda: sum("core3 has every write it missed" in m for m in logged) == 2, "the done lines")
    finally:
        logger.remove(sink)
    assert cluster.rows("core3") == cluster.rows("core1") and len(cluster.rows("core3")) == 1200
    # The operator reads how many there are to hand off (not "500+"), and that all went.
    assert sum(m == "handing core3 the writes it missed (1,200 hints held here)" for m in logged) == 2, logged
    assert sum(m == "core3 has every write it missed that this core took: 1,200 hints handed off, none left"
               for m in logged) == 2, logged


def test_a_drained_replicas_hints_are_read_again_only_once_new_hints_for_it_are_written(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every read of a drained replica's hints steps over all the deleted ones until RocksDB compacts them (600,000
    # took 0.12 s a read, at every handoff tick, on the engine thread).
    monkeypatch.setattr(_handoff, "_HANDOFF_INTERVAL_S", 0.0)  # a handoff pass every turn
    monkeypatch.setattr(_handoff, "_BUSY_INTERVAL_S", 0.0)
    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(message.record["message"]), level="INFO")
    reads: collections.Counter[tuple[str, str]] = collections.Counter()
    for core in ("core1", "core2"):
        local = cluster.locals[core]

        def counted(target: str, *args: Any, _read: Any = local.hints_page, _core: str = core, **kwargs: Any) -> Any:
            reads[_core, target] += 1
            return _read(target, *args, **kwargs)

        monkeypatch.setattr(local, "hints_page", counted)

    def drain(keys: list[bytes]) -> None:
        cluster.down.add("core3")
        mark(cluster, "core3", "dead")
        assert all(done.ok for done in put_many(cluster, EDGE, keys))
        back_without_transition(cluster, "core3")
        done = sum("core3 has every write it missed" in m for m in logged) + 2
        cluster.run_until(lambda: sum("core3 has every write it missed" in m for m in logged) == done,
                          "the done lines")
        assert set(keys) <= set(cluster.rows("core3"))

    try:
        drain([b"user%03d\x00m" % i for i in range(50)])
        before = reads.copy()
        for _ in range(50):
            cluster.turn()
        assert reads == before  # drained, and no hint for core3 written since: not read
        drain([b"user%03d\x00n" % i for i in range(10)])  # a new outage: its hints are read, and handed off
        assert all(reads[core, "core3"] > before[core, "core3"] for core in ("core1", "core2"))
    finally:
        logger.remove(sink)


def test_writes_from_a_forgotten_core_back_with_stale_data_are_refused(cluster: Cluster) -> None:
    """Until it set its data aside, what it writes (a hint handed off, a read repair, a coordinated write) is
    refused: its rows may hold deletes the cores purged since the forget."""
    cluster.memberships["core1"].refused.add("core3")
    done = cluster.put("core3", b"stale", b"v")
    assert done.ok  # core3 and core2 took it: a quorum
    assert b"stale" not in cluster.rows("core1") and b"stale" in cluster.rows("core2")
    assert cluster.services["core1"].counters["writes_refused_forgotten"] == 1
    assert cluster.put("core2", b"fresh", b"v").ok and b"fresh" in cluster.rows("core1")  # others as before


def test_the_hints_of_a_forgotten_core_are_dropped_a_share_per_turn_and_none_is_handed_off(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # All at once, 350,000 hints held every core's engine 5 s (each core drops its own when a core is forgotten).
    monkeypatch.setattr(_handoff, "_DROP_PER_TURN", 10)
    monkeypatch.setattr(_handoff, "_HANDOFF_INTERVAL_S", 0.0)
    monkeypatch.setattr(_handoff, "_BUSY_INTERVAL_S", 0.0)
    cluster.down.add("core3")
    mark(cluster, "core3", "dead")
    keys = [b"user%03d\x00m" % i for i in range(50)]
    assert all(done.ok for done in put_many(cluster, EDGE, keys))
    local = cluster.locals["core1"]
    assert len(local.hints_for("core3", limit=100)) == 50
    assert cluster.services["core1"].async_drop_hints("core3") == 50
    back_without_transition(cluster, "core3")  # meanwhile: what is being dropped is not handed to it
    left = [50]
    while left[-1]:
        assert len(left) < 100, left
        cluster.turn()
        left.append(len(local.hints_for("core3", limit=100)))
    assert max(a - b for a, b in zip(left, left[1:])) <= 2 * 10, left  # a share of the first turn, one of its tick
    assert len(left) >= 4, left
    assert cluster.services["core1"].counters["hints_handed_off"] == 0


def test_a_core_whose_fsync_failed_refuses_writes_and_the_others_keep_them_and_hints_for_it(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_fsyncs_of(monkeypatch, cluster.dbs[2])  # core3's
    first = [b"user%03d\x00m" % i for i in range(20)]
    assert all(done.ok and set(done.acked_by) == {"core1", "core2"} for done in put_many(cluster, EDGE, first))
    assert cluster.locals["core3"].durability_lost == "OSError: Input/output error"
    # From now on core3 refuses writes up front, its retries included (it holds them, maybe not on disk).
    assert cluster.locals["core3"].read(TABLE, first[0]) is not None
    again = [b"user%03d\x00n" % i for i in range(20)]
    assert all(done.ok and set(done.acked_by) == {"core1", "core2"} for done in put_many(cluster, EDGE, again))
    assert cluster.services["core3"].counters["writes_refused_fsync_failed"] == 20
    assert not any(key in cluster.rows("core3") for key in again)
    # Every write it missed waits as a hint on a core that took it, for after its restart.
    def hinted() -> set[bytes]:
        return {key for core in ("core1", "core2") for _, key, _ in cluster.locals[core].hints_for("core3")}

    cluster.run_until(lambda: hinted() == set(first) | set(again), "a hint for core3 of every write")


def test_a_scan_of_large_rows_comes_in_pages_that_fit_a_frame_and_its_cursors_read_them_all(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, THREE, edges=(EDGE,))  # no inbox limit
    try:
        _scan_large_rows(cluster)
    finally:
        cluster.close()


def _scan_large_rows(cluster: Cluster) -> None:
    keys = [b"bob\x00m%02d" % i for i in range(30)]
    for chunk in (keys[:10], keys[10:20], keys[20:]):  # 60 KiB each: 1.8 MB in all, over a frame's 1 MiB
        assert all(done.ok for done in put_many(cluster, "core1", chunk, b"x" * 60_000))
    got: list[bytes] = []
    cursor: bytes | None = None
    pages = 0
    while True:
        box: list[Any] = []
        cluster.services[EDGE].async_scan(TABLE, b"bob\x00", start_after=cursor, limit=100, on_done=box.append,
                                          now=time.monotonic())
        cluster.run_until(lambda: box, "a scan page")  # every frame on the way is checked to be under 1 MiB
        assert box[0].ok, box[0]
        got.extend(key for key, _item in box[0].items)
        pages += 1
        cursor = box[0].cursor
        if not box[0].more:
            break
    assert got == keys
    assert 1 < pages <= 30


def test_a_restarted_node_numbers_its_requests_afresh_so_an_answer_to_its_previous_run_matches_none(
    tmp_path: Path,
) -> None:
    def first_write_req(run: int) -> int:
        cluster = Cluster(tmp_path / f"run{run}", THREE, edges=(EDGE,))
        try:
            cluster.services[EDGE].async_put(TABLE, b"bob\x00m", b"v", durability="quorum", on_done=lambda _d: None,
                                             now=time.monotonic())
            cluster.services[EDGE].async_after_batch(time.monotonic())
            _node, frame = cluster.frames[0]
            (group,) = parse_write_groups(decode_mesh(frame))
            return group[3][0]
        finally:
            cluster.close()

    reqs = [first_write_req(run) for run in range(3)]
    assert len(set(reqs)) == 3, reqs  # the same numbers in every run let a late ack count for a new write


def test_writes_past_the_partition_limit_in_one_frame_are_refused_from_the_first_one_over_it(cluster: Cluster) -> None:
    keys = [b"bob\x00m%02d" % i for i in range(8)]
    answers = put_many(cluster, EDGE, keys)
    assert [done.code for done in answers] == ["ok"] * 5 + ["inbox_full"] * 3
    for core in THREE:
        assert sorted(cluster.rows(core)) == keys[:5]
    # A rewrite of a message the inbox holds is no new message: it is accepted.
    assert put_many(cluster, EDGE, [keys[0]], b"again")[0].ok
    # Another inbox is not affected.
    assert put_many(cluster, EDGE, [b"carol\x00m00"])[0].ok


def test_an_older_replica_write_arriving_after_a_newer_one_is_acked_and_changes_nothing(cluster: Cluster) -> None:
    newer = Versioned(Version(2000 << 16, "core9"), b"new")
    older = Versioned(Version(1000 << 16, "core9"), b"old")
    for item in (newer, older):  # as a repair and a late hint would arrive, out of order
        done = _replica_write(cluster, "core1", b"k", item)
        assert done == ["ok"]
    assert cluster.rows("core1")[b"k"] == newer


def _replica_write(cluster: Cluster, core: str, key: bytes, item: Versioned) -> list[str]:
    """Send `core` one sput entry from the edge, as an internal write, and collect the edge's view of its ack."""
    answers: list[str] = []
    edge = cluster.services[EDGE]
    original = edge._on_ack

    def record(node: str, req: int, code: str, now: float | None) -> None:
        answers.append(code)

    edge._on_ack = record  # type: ignore[method-assign]
    try:
        req = 1 << 62  # an internal request id: its ack goes through the per-request path
        msg = {"src": EDGE, "w": [[TABLE, [], 1, [req], [key, encode_versioned(item)]]]}
        cluster.ops[core]["sput"](msg, time.monotonic())
        cluster.run_until(lambda: answers, "the ack")
    finally:
        edge._on_ack = original  # type: ignore[method-assign]
    return answers


@pytest.mark.parametrize(
    "groups",
    [
        "not a list",
        [["offline_msg", [], 3, [1], [b"k"]]],  # one request, no value
        [["offline_msg", [], 3, [1, 2], [b"k", b"\x01\x00"] * 2]],  # values too short to be versioned
        [["offline_msg", [], 3, ["1"], [b"k", encode_versioned(Versioned(Version(1, "n"), b"v"))]]],
        [["offline_msg", [], 3, [1], ["k", encode_versioned(Versioned(Version(1, "n"), b"v"))]]],
        [["offline_msg", [5], 3, [1], [b"k", encode_versioned(Versioned(Version(1, "n"), b"v"))]]],
        [["offline_msg", [], 3, [1]]],
    ],
)
def test_malformed_write_frames_are_counted_and_nothing_of_them_is_applied(cluster: Cluster, groups: object) -> None:
    cluster.ops["core1"]["sput"]({"src": EDGE, "w": groups}, time.monotonic())
    cluster.turn()
    assert cluster.services["core1"].counters["bad_store_frames"] == 1
    assert cluster.rows("core1") == {}
    assert cluster.locals["core1"].stats()["pending"] == 0


def test_a_hint_for_a_node_that_is_no_expected_core_is_not_kept(cluster: Cluster) -> None:
    # core4 was forgotten here while the write was on its way: its hint would be handed to nobody, and "catching
    # up" would show in meshctl status for ever.
    raw = encode_versioned(Versioned(Version(1 << 16, "edge1"), b"v"))
    groups = [[TABLE, ["core4", "core3"], 3, [1], [b"k", raw]]]
    cluster.ops["core1"]["sput"]({"src": EDGE, "w": groups}, time.monotonic())
    cluster.run_until(lambda: cluster.locals["core1"].stats()["pending"] == 0 and b"k" in cluster.rows("core1"),
                      "the write")
    assert [key for _, key, _ in cluster.locals["core1"].hints_for("core4")] == []
    assert [key for _, key, _ in cluster.locals["core1"].hints_for("core3")] == [b"k"]  # an expected core's stays
    assert cluster.services["core1"].counters["hints_not_kept"] == 1


def test_malformed_ack_frames_are_counted(cluster: Cluster) -> None:
    edge = cluster.services[EDGE]
    for fields in ({"k": "nope"}, {"k": [1, "2"]}, {"a": [[1]]}):
        edge.mesh_ops()["sack"]({"src": "core1", **fields}, time.monotonic())
    assert edge.counters["bad_store_frames"] == 3


@pytest.mark.parametrize("bad", [2**64, 2**45, [1, 2, 3], "text"])
def test_a_malformed_read_or_page_answer_is_counted_and_the_good_answers_of_its_frame_still_count(
    cluster: Cluster, bad: object,
) -> None:
    # An integer would be taken by bytes() for a length (OverflowError, MemoryError) and a list for bytes.
    edge = cluster.services[EDGE]
    seen: list[tuple[int, object]] = []
    edge._on_value = lambda node, req, item, code, now: seen.append((req, item))  # type: ignore[method-assign]
    good = encode_versioned(Versioned(Version(1, "n"), b"v"))
    edge.mesh_ops()["sval"]({"src": "core1", "r": [[7, bad, "ok"], [8, good, "ok"]]}, time.monotonic())
    assert seen == [(8, Versioned(Version(1, "n"), b"v"))]
    edge.mesh_ops()["spage"]({"src": "core1", "r": [[9, [[b"k", bad]], False, "ok"]]}, time.monotonic())
    assert edge.counters["bad_store_frames"] == 2


def test_writes_for_replicas_still_busy_with_earlier_ones_leave_together_and_never_wait_long(cluster: Cluster) -> None:
    assert put_many(cluster, EDGE, [b"warm\x00up"])[0].ok  # every core has answered: all idle
    sent = {core: cluster.sent[("sput", core)] for core in THREE}
    cluster.paused.update(THREE)  # the cores take their time with what comes next
    answers: list[Done] = []
    now = time.monotonic()
    cluster.services[EDGE].async_put(TABLE, b"a\x00m", b"v", durability="quorum", on_done=answers.append, now=now)
    cluster.turn()  # idle replicas: it leaves at once
    assert {core: cluster.sent[("sput", core)] - sent[core] for core in THREE} == {core: 1 for core in THREE}
    for key in (b"b\x00m", b"c\x00m"):  # two more loop turns while the first write is unanswered
        cluster.services[EDGE].async_put(TABLE, key, b"v", durability="quorum", on_done=answers.append,
                                         now=time.monotonic())
        cluster.turn()
    assert {core: cluster.sent[("sput", core)] - sent[core] for core in THREE} == {core: 1 for core in THREE}
    # The end of a turn tells the engine when the held frame must leave (a tick is due then), unless it just left.
    soon = cluster.services[EDGE].async_after_batch(time.monotonic())
    assert (soon is not None and 0 <= soon <= 0.004) or cluster.sent[("sput", "core1")] - sent["core1"] == 2
    # Held no longer than a few milliseconds, answered or not: then both leave in one frame.
    cluster.run_until(lambda: all(cluster.sent[("sput", core)] - sent[core] == 2 for core in THREE),
                      "the held writes to leave", timeout_s=5.0)
    cluster.paused.clear()
    cluster.run_until(lambda: len(answers) == 3, "every answer")
    assert all(done.ok for done in answers)
    assert {core: cluster.sent[("sput", core)] - sent[core] for core in THREE} == {core: 2 for core in THREE}
    assert cluster.services[EDGE].async_after_batch(time.monotonic()) is None  # nothing held: no deadline


def test_the_latency_view_shows_the_writes_and_reads_a_node_coordinated_and_the_commits_of_each_core(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    keys = [b"user%03d\x00m" % i for i in range(20)]
    assert all(done.ok for done in put_many(cluster, EDGE, keys))
    read: list[Done] = []
    cluster.services[EDGE].async_get(TABLE, keys[0], on_done=read.append, now=time.monotonic())
    cluster.run_until(lambda: read, "the read's answer")
    elapsed_ms = (time.monotonic() - started) * 1000

    now = time.monotonic()
    edge = cluster.services[EDGE].latency_view(now)
    assert set(edge) == {"writes", "reads"}  # an edge commits nothing itself
    assert edge["writes"]["count"] == 20 and edge["writes"]["failed"] == 0
    assert 0 < edge["writes"]["p50_ms"] <= edge["writes"]["max_ms"] <= elapsed_ms
    assert edge["reads"]["count"] == 1
    for core in THREE:
        view = cluster.services[core].latency_view(now)
        assert view["writes"]["count"] == 0  # the edge coordinated them
        assert view["commit"]["count"] >= 1 and view["fsync"]["count"] >= 1
        assert 0 < view["fsync"]["max_ms"] <= elapsed_ms


def test_a_replica_read_gets_exactly_one_answer_and_leaves_nothing_behind(cluster: Cluster) -> None:
    assert cluster.put("core1", b"k", b"v").ok
    answers: list[tuple[str, bytes | None]] = []
    service = cluster.services["core1"]

    def read(node: str) -> None:
        service.async_read_replica(node, TABLE, b"k", lambda item, code: answers.append(
            (code, None if item is None else item.value)), time.monotonic())

    read("core2")
    cluster.run_until(lambda: answers, "core2's copy")
    read("core9")  # not a node: answered at once
    mark(cluster, "core3", "dead")
    read("core3")  # not alive: answered at once
    assert answers == [("ok", b"v"), ("unknown_node", None), ("unavailable", None)]
    del cluster.memberships["core1"].states["core3"]  # an expected core not heard since core1 started
    read("core3")
    assert answers[-1] == ("unavailable", None)  # down, not a name this cluster does not know
    del answers[-1]
    mark(cluster, "core3", "alive")
    cluster.down.add("core3")  # alive to the others, but its answer never comes: a timeout, then nothing is kept
    read("core3")
    cluster.run_until(lambda: len(answers) == 4, "the timeout of core3's read", timeout_s=10.0)
    assert answers[3] == ("timeout", None)
    assert service._direct_reads == {}


def test_a_delete_ordered_after_a_message_ids_time_ahead_of_the_clocks_is_no_clock_reading(cluster: Cluster) -> None:
    # A client whose clock is 5 minutes fast: its message's version, and the delete of it, are 5 minutes ahead.
    ahead = (time.time_ns() // 1_000_000 + 300_000) << 16
    box: list[Done] = []
    cluster.services[EDGE].async_put(TABLE, b"bob\x00m", None, durability="quorum", on_done=box.append,
                                     now=time.monotonic(), min_hlc=ahead)
    cluster.run_until(lambda: box, "the delete")
    assert box[0].ok
    for core in THREE:
        assert cluster.rows(core)[b"bob\x00m"].version == Version(ahead + 1, "")
        assert cluster.services[core].clock.refused == 0 and cluster.services[core].clock.last_hlc < ahead
