"""QuorumCoordinator writes: config, acks and failure codes, durabilities, bad requests, Done,
and the batched put_fanout/on_write_acks shapes. Timers and hints: test_coordinator_timers.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _coordinator_harness import ALL_LIVE, KEY, REPLICAS, TABLE, get, item, make, put, the_done, writes
from iris_mesh.store._coordinator import DURABILITIES, ERROR_CODES, Done, QuorumCoordinator, Step
from iris_mesh.store._versioned import HybridClock, Version, Versioned


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


def test_a_write_that_every_replica_refused_fails_with_the_refusal_and_wrote_nothing() -> None:
    coord = make()
    put(coord)
    assert coord.on_write_ack("core1", 1, "partition_detected", 0.1) == Step()
    # Out of reach now, but core3's answer decides between "nothing written" and "a copy on core3".
    assert coord.on_write_ack("core2", 1, "unavailable", 0.1) == Step()
    done = the_done(coord.on_write_ack("core3", 1, "partition_detected", 0.2))
    assert not done.ok and done.code == "partition_detected"
    assert "core1 answered partition_detected" in done.detail and "nothing was written" in done.detail
    assert coord.pending() == 0


def test_a_write_a_replica_took_fails_unavailable_not_with_a_refusal_as_soon_as_quorum_is_out_of_reach() -> None:
    # A refusal's code tells the client nothing was stored (PROTOCOL 8); core1's copy spreads (hints, repair).
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "ok", 0.1)
    assert coord.on_write_ack("core2", 1, "partition_detected", 0.1) == Step()
    done = the_done(coord.on_write_ack("core3", 1, "unavailable", 0.2))
    assert not done.ok and done.code == "unavailable"
    assert "core2 answered partition_detected" in done.detail and "may or may not" in done.detail
    assert done.acked_by == ("core1",)
    # Every replica answered: the write finishes at once, hinting both failures on core1.
    assert coord.pending() == 0


def test_a_write_whose_last_replica_does_not_answer_after_refusals_fails_unavailable_at_its_timeout() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "partition_detected", 0.1)
    assert coord.on_write_ack("core2", 1, "partition_detected", 0.1) == Step()
    done = the_done(coord.tick(2.5))
    assert not done.ok and done.code == "unavailable" and "may or may not" in done.detail


def test_failed_write_hints_on_an_acker_once_everyone_answered() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "partition_detected", 0.1)
    assert coord.on_write_ack("core2", 1, "partition_detected", 0.1) == Step()
    step = coord.on_write_ack("core3", 1, "ok", 0.3)
    assert the_done(step).code == "unavailable"  # core3 holds it: not "nothing was written"
    [(node, hint)] = writes(step)
    assert node == "core3" and hint.hint_for == ("core1", "core2")
    assert coord.pending() == 0


def test_errors_without_partition_are_unavailable() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "unavailable", 0.1)
    coord.on_write_ack("core2", 1, "disk_full", 0.1)
    done = the_done(coord.on_write_ack("core3", 1, "unavailable", 0.1))
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
    assert the_done(coord.on_write_ack("core2", 3, "partition_detected", 0.1)).code == "unavailable"


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


# --- inbox_full and Done --------------------------------------------------------------


def test_replicas_refusing_for_a_full_inbox_fail_the_write_with_inbox_full() -> None:
    coordinator = QuorumCoordinator(timeout_s=2.0)
    item = Versioned(Version(1, "n"), b"x")
    coordinator.put(1, "offline_msg", b"bob\x00m", item, replicas=["a", "b", "c"], live=["a", "b", "c"], now=0.0)
    coordinator.on_write_ack("a", 1, "inbox_full", 0.0)
    coordinator.on_write_ack("b", 1, "inbox_full", 0.0)
    step = coordinator.on_write_ack("c", 1, "inbox_full", 0.0)
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


def test_a_replica_that_refused_with_inbox_full_gets_no_hint() -> None:
    coord = make()
    put(coord)
    coord.on_write_ack("core1", 1, "ok", 0.1)
    assert coord.on_write_ack("core2", 1, "inbox_full", 0.1).done == ()
    # core3 misses it for another reason: it alone is hinted, never the replica that enforced its limit.
    step = coord.on_write_ack("core3", 1, "unavailable", 0.2)
    done = the_done(step)
    assert not done.ok and done.code == "inbox_full"  # core1, one row short of the limit, took it all the same
    assert "may still arrive" in done.detail
    [(node, hint)] = writes(step)
    assert node == "core1" and hint.hint_for == ("core3",)
    put(coord, 2)
    coord.on_write_ack("core1", 2, "ok", 0.1)
    coord.on_write_ack("core2", 2, "inbox_full", 0.1)
    assert writes(coord.on_write_ack("core3", 2, "inbox_full", 0.2)) == []
    assert coord.pending() == 0


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
