"""QuorumCoordinator timers: hints after the linger, write timeouts, deadlines, fresh internal ids,
draining to zero, and a property over any interleaving of write acks and ticks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _coordinator_harness import ALL_LIVE, KEY, REPLICAS, TABLE, TIMEOUT_S, get, item, make, put, the_done, writes
from iris_mesh.store._coordinator import Done, QuorumCoordinator, ReplicaWrite, Step


# --- hints and timeouts ---------------------------------------------------------------


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


# --- internal ids, draining under load, and one turn's timeouts -----------------------


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
