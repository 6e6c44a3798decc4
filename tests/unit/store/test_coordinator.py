"""Tests for iris_mesh.store._coordinator, driven by a manual clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iris_mesh.store._coordinator import (
    DURABILITIES,
    ERROR_CODES,
    Done,
    QuorumCoordinator,
    ReplicaRead,
    ReplicaWrite,
    Step,
)
from iris_mesh.store._versioned import HybridClock, Version, Versioned

REPLICAS = ("core1", "core2", "core3")
ALL_LIVE = frozenset(REPLICAS)
TABLE = "offline_msg"
KEY = b"bob\x00\x00\x00\x01\x00m1"
TIMEOUT_S = 2.0


def item(hlc: int, value: bytes | None = b"hello", node: str = "core1") -> Versioned:
    return Versioned(Version(hlc, node), value)


def make(**kwargs: object) -> QuorumCoordinator:
    kwargs.setdefault("timeout_s", TIMEOUT_S)
    return QuorumCoordinator(**kwargs)  # type: ignore[arg-type]


def put(
    coord: QuorumCoordinator,
    req: int = 1,
    value: Versioned | None = None,
    *,
    live: frozenset[str] | set[str] = ALL_LIVE,
    durability: str = "quorum",
    now: float = 0.0,
    replicas: tuple[str, ...] = REPLICAS,
) -> Step:
    return coord.put(
        req, TABLE, KEY, value or item(100), replicas=replicas, live=live, durability=durability, now=now
    )


def get(
    coord: QuorumCoordinator, req: int = 1, *, live: frozenset[str] | set[str] = ALL_LIVE, now: float = 0.0
) -> Step:
    return coord.get(req, TABLE, KEY, replicas=REPLICAS, live=live, now=now)


def writes(step: Step) -> list[tuple[str, ReplicaWrite]]:
    out = []
    for o in step.outbound:
        assert isinstance(o.message, ReplicaWrite)
        out.append((o.node, o.message))
    return out


def the_done(step: Step) -> Done:
    assert len(step.done) == 1, step
    return step.done[0]


# --- construction ---------------------------------------------------------------------


def test_defaults_are_majorities() -> None:
    coord = QuorumCoordinator()
    assert (coord.replication_factor, coord.write_quorum, coord.read_quorum) == (3, 2, 2)
    assert QuorumCoordinator(replication_factor=5).write_quorum == 3
    assert QuorumCoordinator(replication_factor=1).read_quorum == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"replication_factor": 0}, "replication_factor"),
        ({"write_quorum": 4}, "write_quorum"),
        ({"write_quorum": 0}, "write_quorum"),
        ({"read_quorum": 4}, "read_quorum"),
        ({"read_quorum": 0}, "read_quorum"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"hint_linger_s": -1.0}, "hint_linger_s"),
    ],
)
def test_nonsense_config_is_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuorumCoordinator(**kwargs)  # type: ignore[arg-type]


def test_public_constants() -> None:
    assert DURABILITIES == ("guaranteed", "quorum", "best_effort")
    assert ERROR_CODES == ("unavailable", "partition_detected", "bad_request", "inbox_full")


# --- quorum writes --------------------------------------------------------------------


def test_all_live_write_goes_to_every_replica_and_answers_at_the_second_ack() -> None:
    coord = make()
    step = put(coord)
    assert step.done == ()
    sent = writes(step)
    assert [node for node, _ in sent] == list(REPLICAS)
    assert all(m.req == 1 and m.hint_for == () and m.sync and m.item == item(100) for _, m in sent)
    assert coord.pending() == 1

    assert coord.on_write_ack("core2", 1, "ok", 0.1) == Step()
    done = the_done(coord.on_write_ack("core1", 1, "ok", 0.2))
    assert done.ok and done.code == "ok" and done.acked_by == ("core2", "core1")
    # Still tracked until the third replica answers; then nothing to hint.
    assert coord.pending() == 1
    assert coord.on_write_ack("core3", 1, "ok", 0.3) == Step()
    assert coord.pending() == 0


def test_one_replica_down_write_succeeds_with_hints_for_it() -> None:
    coord = make()
    step = put(coord, live={"core1", "core3", "edge9"})
    sent = writes(step)
    assert [node for node, _ in sent] == ["core1", "core3"]
    assert all(m.hint_for == ("core2",) for _, m in sent)
    coord.on_write_ack("core3", 1, "ok", 0.1)
    done = the_done(coord.on_write_ack("core1", 1, "ok", 0.1))
    assert done.ok and set(done.acked_by) == {"core1", "core3"}
    # Both live replicas acked: the down one is covered by their hints, no extra write.
    assert coord.pending() == 0
    assert coord.tick(100.0) == Step()


def test_two_replicas_down_is_unavailable_at_once_and_sends_nothing() -> None:
    coord = make()
    step = put(coord, live={"core1"})
    assert step.outbound == ()
    done = the_done(step)
    assert not done.ok and done.code == "unavailable"
    assert "1 of 3 replicas live" in done.detail and "needs 2" in done.detail
    assert coord.pending() == 0


def test_short_replica_set_cannot_make_a_quorum() -> None:
    coord = make()
    done = the_done(put(coord, replicas=("core1",), live={"core1"}))
    assert not done.ok and done.code == "unavailable" and "replication factor 3" in done.detail


def test_late_ack_gets_a_hint_on_the_first_acker() -> None:
    coord = make(hint_linger_s=1.0)
    put(coord, now=10.0)
    coord.on_write_ack("core3", 1, "ok", 10.1)
    assert the_done(coord.on_write_ack("core1", 1, "ok", 10.2)).ok
    assert coord.tick(11.1) == Step()  # linger runs from the answer (10.2), not the put
    step = coord.tick(11.2)
    assert step.done == ()
    [(node, hint)] = writes(step)
    assert node == "core3"  # the first acker, not core1
    assert hint.hint_for == ("core2",) and hint.item == item(100) and hint.sync
    assert hint.req < 0 and (hint.table, hint.key) == (TABLE, KEY)
    assert coord.pending() == 0
    # core2 finally answers, and the hint write is acked: both absorbed.
    assert coord.on_write_ack("core2", 1, "ok", 12.0) == Step()
    assert coord.on_write_ack("core3", hint.req, "ok", 12.0) == Step()


def test_hint_linger_defaults_to_the_timeout() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "ok", 0.5)
    coord.on_write_ack("core2", 1, "ok", 0.5)
    assert coord.tick(2.4) == Step()
    [(node, hint)] = writes(coord.tick(2.5))
    assert node == "core1" and hint.hint_for == ("core3",)


def test_next_deadline_tracks_the_earliest_live_timer() -> None:
    coord = make(hint_linger_s=0.5)
    assert coord.next_deadline() is None
    put(coord, now=1.0)
    assert coord.next_deadline() == 3.0
    coord.on_write_ack("core1", 1, "ok", 1.2)
    coord.on_write_ack("core2", 1, "ok", 1.2)
    assert coord.next_deadline() == pytest.approx(1.7)
    coord.on_write_ack("core3", 1, "ok", 1.3)
    assert coord.next_deadline() is None


def test_timers_fire_in_deadline_order_across_timeouts_and_lingers_even_if_now_goes_back() -> None:
    coord = make(hint_linger_s=0.5)
    put(coord, req=1, now=5.0)  # times out at 7.0
    put(coord, req=2, now=1.0)  # a caller's clock went back: times out at 3.0
    put(coord, req=3, now=2.0)  # answered at 2.1: lingers until 2.6
    coord.on_write_ack("core1", 3, "ok", 2.1)
    coord.on_write_ack("core2", 3, "ok", 2.1)
    assert coord.next_deadline() == pytest.approx(2.6)
    step = coord.tick(3.0)
    assert [o.node for o in step.outbound] == ["core1"]  # req 3's hint for core3, then req 2 times out
    assert [d.req for d in step.done] == [2]
    assert coord.next_deadline() == 7.0
    assert [d.req for d in coord.tick(7.0).done] == [1]
    assert coord.pending() == 0


def test_timeout_is_unavailable_and_says_the_write_may_have_happened() -> None:
    coord = make()
    put(coord, now=5.0)
    coord.on_write_ack("core2", 1, "ok", 5.5)
    assert coord.tick(6.9) == Step()
    step = coord.tick(7.0)
    done = the_done(step)
    assert not done.ok and done.code == "unavailable" and done.acked_by == ("core2",)
    assert done.detail == (
        "only 1 of 2 required replicas acknowledged within 2.0 s; the write may or may not have been applied"
    )
    # The failed write still leaves hints for the silent replicas on the one that acked.
    [(node, hint)] = writes(step)
    assert node == "core2" and hint.hint_for == ("core1", "core3")
    assert coord.pending() == 0
    assert coord.on_write_ack("core1", 1, "ok", 7.1) == Step()


def test_put_docstring_says_unavailable_may_have_been_applied() -> None:
    doc = " ".join((QuorumCoordinator.put.__doc__ or "").split())
    assert "does NOT mean the write did not happen" in doc
    assert "Retrying with the same key and the same value" in doc


def test_timeout_without_any_ack_emits_no_hint() -> None:
    coord = make()
    put(coord)
    step = coord.tick(TIMEOUT_S)
    assert the_done(step).code == "unavailable"
    assert step.outbound == ()
    assert coord.pending() == 0


def test_partition_detected_propagates_as_soon_as_quorum_is_out_of_reach() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "ok", 0.1)
    assert coord.on_write_ack("core2", 1, "partition_detected", 0.1) == Step()
    done = the_done(coord.on_write_ack("core3", 1, "unavailable", 0.2))
    assert not done.ok and done.code == "partition_detected"
    assert "core2 answered partition_detected" in done.detail
    assert done.acked_by == ("core1",)
    # Every replica answered: the write finishes at once, hinting both failures on core1.
    assert coord.pending() == 0


def test_failed_write_hints_on_an_acker_once_everyone_answered() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "partition_detected", 0.1)
    done = the_done(coord.on_write_ack("core2", 1, "partition_detected", 0.1))
    assert done.code == "partition_detected"
    [(node, hint)] = writes(coord.on_write_ack("core3", 1, "ok", 0.3))
    assert node == "core3" and hint.hint_for == ("core1", "core2")
    assert coord.pending() == 0


def test_errors_without_partition_are_unavailable() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "unavailable", 0.1)
    done = the_done(coord.on_write_ack("core2", 1, "disk_full", 0.1))
    assert not done.ok and done.code == "unavailable"


def test_guaranteed_needs_every_replica() -> None:
    coord = make()
    assert the_done(put(coord, durability="guaranteed", live={"core1", "core2"})).code == "unavailable"
    put(coord, 2, durability="guaranteed")
    assert coord.on_write_ack("core1", 2, "ok", 0.1) == Step()
    assert coord.on_write_ack("core2", 2, "ok", 0.1) == Step()
    done = the_done(coord.on_write_ack("core3", 2, "ok", 0.1))
    assert done.ok and len(done.acked_by) == 3
    put(coord, 3, durability="guaranteed")
    coord.on_write_ack("core1", 3, "ok", 0.1)
    assert the_done(coord.on_write_ack("core2", 3, "partition_detected", 0.1)).code == "partition_detected"


def test_best_effort_answers_at_once_with_unsynced_writes() -> None:
    coord = make()
    step = put(coord, durability="best_effort", live={"core3"})
    done = the_done(step)
    assert done.ok and done.code == "ok" and done.acked_by == ()
    sent = writes(step)
    assert [node for node, _ in sent] == ["core3"]
    assert not sent[0][1].sync and sent[0][1].hint_for == ("core1", "core2")
    assert coord.on_write_ack("core3", 1, "ok", 0.1) == Step()
    assert coord.pending() == 0


def test_best_effort_needs_one_live_replica() -> None:
    done = the_done(put(make(), durability="best_effort", live=set()))
    assert not done.ok and done.code == "unavailable"


def test_bad_requests_are_answered_not_raised() -> None:
    coord = make()
    assert the_done(put(coord, 1, durability="eventually")).code == "bad_request"
    assert the_done(put(coord, 2, replicas=())).code == "bad_request"
    assert the_done(put(coord, 3, replicas=("core1", "core1", "core2"))).code == "bad_request"
    assert the_done(put(coord, 4, replicas=("a", "b", "c", "d"))).code == "bad_request"
    assert coord.pending() == 0


def test_programming_errors_raise() -> None:
    coord = make()
    with pytest.raises(ValueError, match="negative"):
        put(coord, -1)
    put(coord, 7)
    with pytest.raises(ValueError, match="still tracked"):
        get(coord, 7)


def test_duplicate_unknown_and_stray_acks_are_ignored() -> None:
    coord = make()
    put(coord, live={"core1", "core2"})
    assert coord.on_write_ack("core1", 1, "ok", 0.1) == Step()
    assert coord.on_write_ack("core1", 1, "ok", 0.1) == Step()  # duplicate
    assert coord.on_write_ack("core3", 1, "ok", 0.1) == Step()  # was down, not sent to
    assert coord.on_write_ack("edge1", 1, "ok", 0.1) == Step()  # not a replica
    assert coord.on_write_ack("core2", 99, "ok", 0.1) == Step()  # unknown request
    assert coord.on_write_ack("core2", -5, "ok", 0.1) == Step()  # internal id
    assert coord.on_read_reply("core2", 1, item(1), "ok", 0.1) == Step()  # a read reply for a write
    done = the_done(coord.on_write_ack("core2", 1, "ok", 0.2))
    assert done.acked_by == ("core1", "core2")
    assert coord.on_write_ack("core2", 1, "ok", 0.3) == Step()  # finished request
    assert coord.pending() == 0


def test_a_delete_is_a_tombstone_write() -> None:
    clock = HybridClock("core1")
    tombstone = Versioned(clock.now(1_000), None)
    coord = make()
    [(_, message), *_] = writes(put(coord, value=tombstone))
    assert message.item.is_tombstone


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


def test_internal_ids_are_fresh() -> None:
    coord = make(hint_linger_s=0.0)
    ids = []
    for req in range(20):
        now = float(req)
        put(coord, req, live={"core1", "core2"}, now=now)
        coord.on_write_ack("core1", req, "ok", now)
        # core2 fails: the write is answered and finished at once, with a hint on core1.
        ids += [w.req for _, w in writes(coord.on_write_ack("core2", req, "partition_detected", now))]
        get(coord, 100 + req, now=now)
        coord.on_read_reply("core1", 100 + req, None, "ok", now)
        ids += [w.req for _, w in writes(coord.on_read_reply("core2", 100 + req, item(req + 1), "ok", now))]
    assert len(ids) == 40 and len(set(ids)) == 40 and all(i < 0 for i in ids)


def test_pending_drains_to_zero_under_load() -> None:
    coord = make()
    for req in range(50):
        put(coord, req, live={"core1", "core2"} if req % 2 else ALL_LIVE, now=req * 0.01)
        get(coord, 1000 + req, now=req * 0.01)
    assert coord.pending() == 100
    for req in range(0, 50, 3):
        coord.on_write_ack("core1", req, "ok", 0.6)
    coord.tick(100.0)
    assert coord.pending() == 0
    assert coord.next_deadline() is None


# --- properties -----------------------------------------------------------------------

CODES = ("ok", "ok", "ok", "partition_detected", "unavailable")
ACK_EVENT = st.tuples(
    st.sampled_from(REPLICAS + ("edge1",)),
    st.sampled_from(CODES),
    st.floats(min_value=0.0, max_value=1.5, allow_nan=False),
)
EVENT = st.one_of(ACK_EVENT, st.floats(min_value=0.0, max_value=1.5, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(
    live=st.sets(st.sampled_from(REPLICAS), min_size=2),
    durability=st.sampled_from(("quorum", "guaranteed")),
    events=st.lists(EVENT, max_size=25),
    linger=st.sampled_from((0.0, 0.7, 2.0)),
)
def test_any_interleaving_gives_one_honest_answer_and_hints_every_miss(
    live: set[str], durability: str, events: list[object], linger: float
) -> None:
    coord = make(hint_linger_s=linger)
    step = put(coord, 1, live=live, durability=durability)
    sent_to = [n for n in REPLICAS if n in live]
    required = 3 if durability == "guaranteed" else 2
    if len(sent_to) < required:
        assert the_done(step).code == "unavailable" and step.outbound == ()
        return
    assert step.done == ()

    now = 0.0
    dones: list[Done] = []
    hints: list[tuple[str, ReplicaWrite]] = []
    first_answer: dict[str, str] = {}  # replica -> first code it sent
    ok_before_done: list[str] = []
    ok_ever: list[str] = []

    def record(step: Step) -> None:
        for node, message in writes(step):
            assert message.req < 0
            hints.append((node, message))
        dones.extend(step.done)

    for event in events:
        if isinstance(event, tuple):
            node, code, dt = event
            now += dt
            if node in sent_to and node not in first_answer and not hints and coord.pending():
                first_answer[node] = code
                if code == "ok":
                    ok_ever.append(node)
                    if not dones:
                        ok_before_done.append(node)
            before = len(dones)
            record(coord.on_write_ack(node, 1, code, now))
            if len(dones) > before and dones[-1].ok:
                # Answered ok at exactly the ack that made the quorum.
                assert len(ok_before_done) == required and code == "ok"
        else:
            now += event
            record(coord.tick(now))
        assert len(dones) <= 1
        if not dones:
            assert len(ok_before_done) < required

    record(coord.tick(now + 100.0))
    assert coord.pending() == 0
    assert len(dones) == 1
    done = dones[0]
    assert done.req == 1
    if done.ok:
        assert done.code == "ok"
        assert list(done.acked_by) == ok_before_done and len(set(done.acked_by)) >= required
    else:
        assert done.code in ("unavailable", "partition_detected")
        assert len(ok_before_done) < required
        if done.code == "partition_detected":
            assert "partition_detected" in first_answer.values()

    missed = [n for n in sent_to if n not in ok_ever]
    if missed and ok_ever:
        [(target, hint)] = hints
        assert target == ok_ever[0]
        assert list(hint.hint_for) == missed and hint.item == item(100)
    else:
        assert hints == []


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


def test_replicas_refusing_for_a_full_inbox_fail_the_write_with_inbox_full() -> None:
    coordinator = QuorumCoordinator(timeout_s=2.0)
    item = Versioned(Version(1, "n"), b"x")
    coordinator.put(1, "offline_msg", b"bob\x00m", item, replicas=["a", "b", "c"], live=["a", "b", "c"], now=0.0)
    coordinator.on_write_ack("a", 1, "inbox_full", 0.0)
    step = coordinator.on_write_ack("b", 1, "inbox_full", 0.0)
    assert [(d.ok, d.code) for d in step.done] == [(False, "inbox_full")]


def test_done_details_made_on_first_read_and_done_is_immutable() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "ok", 0.1)
    done = the_done(coord.on_write_ack("core2", 1, "ok", 0.1))
    assert done.detail == "stored on core1, core2 (2 of 2 required acks, quorum)" == done.detail
    assert done == Done(1, True, "ok", "stored on core1, core2 (2 of 2 required acks, quorum)",
                        acked_by=("core1", "core2"))
    assert "stored on core1" in repr(done)
    with pytest.raises(AttributeError):
        done.ok = False  # type: ignore[misc]


# --- the batched shapes: put_fanout and on_write_acks ------------------------------------------


@pytest.mark.parametrize(("live", "durability"), [(ALL_LIVE, "quorum"), ({"core1", "core3"}, "quorum"),
                                                  ({"core2"}, "quorum"), (ALL_LIVE, "best_effort"),
                                                  (ALL_LIVE, "nonsense")])
def test_put_fanout_is_put_with_one_message_for_every_target(live: set[str], durability: str) -> None:
    by_put, by_fanout = make(), make()
    step = by_put.put(1, TABLE, KEY, item(100), replicas=REPLICAS, live=live, durability=durability, now=0.0)
    fanout, done = by_fanout.put_fanout(1, TABLE, KEY, item(100), replicas=REPLICAS, live=live, durability=durability,
                                        now=0.0)
    outbound = () if fanout is None else tuple((node, fanout.message) for node in fanout.nodes)
    assert tuple((o.node, o.message) for o in step.outbound) == outbound
    assert step.done == (() if done is None else (done,))
    assert by_put.pending() == by_fanout.pending()


@settings(max_examples=200, deadline=None)
@given(
    live=st.lists(st.sets(st.sampled_from(REPLICAS), min_size=2), min_size=12, max_size=12),
    acks=st.lists(st.tuples(st.sampled_from(REPLICAS + ("edge1",)), st.lists(st.integers(-2, 13), max_size=6)),
                  max_size=15),
)
def test_many_ok_acks_at_once_settle_exactly_as_the_same_acks_one_by_one(
    live: list[set[str]], acks: list[tuple[str, list[int]]]
) -> None:
    one_by_one, at_once = make(hint_linger_s=5.0), make(hint_linger_s=5.0)
    for req, replicas_live in enumerate(live):
        for coord in (one_by_one, at_once):
            put(coord, req, live=replicas_live, now=0.0)
    for node, reqs in acks:
        expected_done: list[Done] = []
        expected_out: list[object] = []
        for req in reqs:
            step = one_by_one.on_write_ack(node, req, "ok", 1.0)
            expected_done += step.done
            expected_out += step.outbound
        step = at_once.on_write_acks(node, reqs, 1.0)
        assert list(step.done) == expected_done
        assert [(o.node, o.message.hint_for, o.message.key) for o in step.outbound] == \
            [(o.node, o.message.hint_for, o.message.key) for o in expected_out]  # type: ignore[attr-defined]
    assert one_by_one.pending() == at_once.pending()
    assert one_by_one.tick(10.0).done == at_once.tick(10.0).done


def test_the_writes_of_one_turn_time_out_together_and_finished_ones_never_fire() -> None:
    coord = make()
    for req in range(100):
        put(coord, req, now=1.0)
    for req in range(0, 100, 2):
        coord.on_write_acks("core1", [req], 1.5)
        coord.on_write_acks("core2", [req], 1.5)
    assert coord.next_deadline() == pytest.approx(1.0 + TIMEOUT_S)  # the unanswered half times out first
    step = coord.tick(1.0 + TIMEOUT_S)
    assert sorted(d.req for d in step.done) == list(range(1, 100, 2))
    assert all(d.code == "unavailable" for d in step.done)
    assert coord.next_deadline() == pytest.approx(1.5 + TIMEOUT_S)  # then the answered half stops lingering
    step = coord.tick(10.0)
    assert step.done == () and sorted(o.message.key for o in step.outbound) == [KEY] * 50  # hints for core3
    assert coord.pending() == 0 and coord.next_deadline() is None


def test_a_replica_that_refused_with_inbox_full_gets_no_hint() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "ok", 0.1)
    assert coord.on_write_ack("core2", 1, "inbox_full", 0.1).done == ()
    # core3 misses it for another reason: it alone is hinted, never the replica that enforced its limit.
    step = coord.on_write_ack("core3", 1, "unavailable", 0.2)
    done = the_done(step)
    assert not done.ok and done.code == "inbox_full"
    [(node, hint)] = writes(step)
    assert node == "core1" and hint.hint_for == ("core3",)
    put(coord, 2)
    coord.on_write_ack("core1", 2, "ok", 0.1)
    coord.on_write_ack("core2", 2, "inbox_full", 0.1)
    assert writes(coord.on_write_ack("core3", 2, "inbox_full", 0.2)) == []
    assert coord.pending() == 0
