"""QuorumCoordinator reads: picking the newest reply, read repair of stale and late repliers,
read timeouts and errors, and a property over any order of replies."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from _coordinator_harness import ALL_LIVE, KEY, REPLICAS, TABLE, get, item, make, the_done, writes
from iris_mesh.store._coordinator import Done, ReplicaRead, Step
from iris_mesh.store._versioned import HybridClock, Versioned


# --- reads ----------------------------------------------------------------------------


def test_read_with_one_replica_down_picks_the_newest_and_repairs_the_stale() -> None:
    coord = make()
    step = get(coord, live={"core1", "core2"})
    assert [(o.node, o.message) for o in step.outbound] == [
        ("core1", ReplicaRead(1, TABLE, KEY)),
        ("core2", ReplicaRead(1, TABLE, KEY)),
    ]
    assert coord.on_read_reply("core1", 1, item(5), "ok", 0.1) == Step()
    step = coord.on_read_reply("core2", 1, item(9), "ok", 0.2)
    done = the_done(step)
    assert done.ok and done.item == item(9) and done.acked_by == ("core1", "core2")
    [(node, repair)] = writes(step)
    assert node == "core1" and repair.item == item(9) and repair.sync and repair.hint_for == ()
    assert repair.req < 0
    assert coord.pending() == 0


def test_read_two_down_is_unavailable_at_once() -> None:
    coord = make()
    step = get(coord, live={"core3"})
    assert step.outbound == () and the_done(step).code == "unavailable"
    assert "needs 2" in the_done(step).detail


def test_read_repairs_empty_replicas() -> None:
    coord = make()
    get(coord)
    coord.on_read_reply("core1", 1, None, "ok", 0.1)
    step = coord.on_read_reply("core2", 1, item(3), "ok", 0.1)
    assert the_done(step).item == item(3)
    assert [node for node, _ in writes(step)] == ["core1"]


def test_nothing_anywhere_reads_none_and_repairs_nothing() -> None:
    coord = make()
    get(coord)
    coord.on_read_reply("core1", 1, None, "ok", 0.1)
    step = coord.on_read_reply("core3", 1, None, "ok", 0.1)
    done = the_done(step)
    assert done.ok and done.item is None and step.outbound == ()


def test_late_reply_is_repaired_and_a_newer_late_reply_repairs_the_rest() -> None:
    coord = make()
    get(coord)
    coord.on_read_reply("core1", 1, item(5), "ok", 0.1)
    assert the_done(coord.on_read_reply("core2", 1, item(5), "ok", 0.1)).item == item(5)
    assert coord.pending() == 1  # core3 has not replied yet
    # core3 is stale: it gets the newest after the answer.
    step = coord.on_read_reply("core3", 1, item(2), "ok", 0.5)
    assert step.done == ()
    assert [(n, w.item) for n, w in writes(step)] == [("core3", item(5))]
    assert coord.pending() == 0

    coord.get(2, TABLE, KEY, replicas=REPLICAS, live=ALL_LIVE, now=1.0)
    coord.on_read_reply("core1", 2, item(5), "ok", 1.1)
    coord.on_read_reply("core2", 2, item(5), "ok", 1.1)
    # A late reply newer than the answer: the replicas that answered get it.
    step = coord.on_read_reply("core3", 2, item(8), "ok", 1.2)
    assert [(n, w.item) for n, w in writes(step)] == [("core1", item(8)), ("core2", item(8))]


def test_read_is_tracked_until_the_timeout_for_late_replies() -> None:
    coord = make()
    get(coord)
    coord.on_read_reply("core1", 1, item(5), "ok", 0.1)
    coord.on_read_reply("core2", 1, item(5), "ok", 0.1)
    assert coord.tick(1.9) == Step()
    assert coord.tick(2.0) == Step()  # answered already: no second Done
    assert coord.pending() == 0
    assert coord.on_read_reply("core3", 1, None, "ok", 2.1) == Step()


def test_tombstone_newer_than_a_value_wins() -> None:
    clock = HybridClock("core2")
    written = Versioned(clock.now(1_000), b"hi")
    deleted = Versioned(clock.now(1_000), None)
    coord = make()
    get(coord)
    coord.on_read_reply("core1", 1, written, "ok", 0.1)
    step = coord.on_read_reply("core3", 1, deleted, "ok", 0.1)
    done = the_done(step)
    assert done.item == deleted and done.item.is_tombstone
    [(node, repair)] = writes(step)
    assert node == "core1" and repair.item.is_tombstone


def test_read_timeout_is_unavailable() -> None:
    coord = make()
    get(coord, now=3.0)
    coord.on_read_reply("core1", 1, item(1), "ok", 3.1)
    done = the_done(coord.tick(5.0))
    assert not done.ok and done.code == "unavailable"
    assert done.detail == "only 1 of 2 required replicas replied within 2.0 s"
    assert coord.pending() == 0


def test_read_errors_count_as_failures() -> None:
    coord = make()
    get(coord)
    coord.on_read_reply("core1", 1, None, "unavailable", 0.1)
    coord.on_read_reply("core1", 1, item(1), "ok", 0.1)  # duplicate: ignored
    done = the_done(coord.on_read_reply("core2", 1, None, "partition_detected", 0.1))
    assert not done.ok and done.code == "partition_detected"
    assert coord.on_write_ack("core3", 1, "ok", 0.2) == Step()  # a write ack for a read
    assert coord.on_read_reply("edge1", 1, item(1), "ok", 0.2) == Step()
    assert coord.on_read_reply("core3", 1, item(1), "ok", 0.2).done == ()
    assert coord.pending() == 0


def test_repair_acks_are_absorbed() -> None:
    coord = make()
    get(coord)
    coord.on_read_reply("core1", 1, None, "ok", 0.1)
    [(_, repair)] = writes(coord.on_read_reply("core2", 1, item(4), "ok", 0.1))
    assert coord.on_write_ack("core1", repair.req, "ok", 0.2) == Step()


# --- properties -----------------------------------------------------------------------


VERSION = st.one_of(st.none(), st.builds(item, st.integers(min_value=0, max_value=6)))


@settings(max_examples=300, deadline=None)
@given(
    live=st.sets(st.sampled_from(REPLICAS), min_size=2),
    held=st.fixed_dictionaries({n: VERSION for n in REPLICAS}),
    order=st.permutations(REPLICAS),
    codes=st.fixed_dictionaries({n: st.sampled_from(("ok", "ok", "ok", "unavailable")) for n in REPLICAS}),
    gaps=st.lists(st.floats(min_value=0.0, max_value=1.5, allow_nan=False), min_size=3, max_size=3),
)
def test_any_read_answers_once_with_the_newest_and_repairs_every_stale_replier(
    live: set[str],
    held: dict[str, Versioned | None],
    order: list[str],
    codes: dict[str, str],
    gaps: list[float],
) -> None:
    coord = make()
    get(coord, 1, live=live)
    now = 0.0
    dones: list[Done] = []
    has = {}  # what each replica holds after the repairs sent to it
    tracked_replies: list[str] = []
    for node, gap in zip(order, gaps):
        now += gap
        timed_out = coord.tick(now)
        dones.extend(timed_out.done)
        if coord.pending() and node in live and codes[node] == "ok":
            tracked_replies.append(node)
            has[node] = held[node]
        step = coord.on_read_reply(node, 1, held[node], codes[node], now)
        dones.extend(step.done)
        if step.done and step.done[0].ok:
            replies_so_far = [held[n] for n in tracked_replies]
            assert len(replies_so_far) == 2
            assert step.done[0].item == max(replies_so_far, key=lambda v: (v is not None, v and v.version))
        for target, repair in writes(step):
            assert repair.req < 0 and repair.sync
            assert target in has and repair.item.newer_than(has[target])  # never redundant
            has[target] = repair.item
        assert len(dones) <= 1
    dones.extend(coord.tick(now + 100.0).done)
    assert coord.pending() == 0
    [done] = dones
    found = [held[n] for n in tracked_replies if held[n] is not None]
    newest = max(found, default=None, key=lambda v: v.version)
    if done.ok and newest is not None:
        assert all(has[n] == newest for n in tracked_replies)
    if not done.ok:
        assert done.code == "unavailable"
