"""Tests for iris_mesh.membership._failure_detector, driven by a manual clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.membership._failure_detector import (
    FailureDetector,
    PeerState,
    PeerStatus,
    Transition,
)

SUSPECT_S = 0.5
DEAD_S = 1.0


@pytest.fixture
def fd() -> FailureDetector:
    return FailureDetector(suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)


@pytest.mark.parametrize(
    ("suspect", "dead"),
    [(0.0, 1.0), (-1.0, 1.0), (1.0, 1.0), (2.0, 1.0)],
)
def test_rejects_bad_timeouts(suspect: float, dead: float) -> None:
    with pytest.raises(ValueError, match="suspect_after_s"):
        FailureDetector(suspect_after_s=suspect, dead_after_s=dead)


def test_first_heartbeat_is_a_join(fd: FailureDetector) -> None:
    assert fd.heard("core2", 3, now=10.0) == [
        Transition("core2", None, PeerState.ALIVE, 3, "core2 joined (incarnation 3)")
    ]
    assert fd.state("core2") is PeerState.ALIVE
    assert fd.incarnation("core2") == 3
    assert fd.visible() == frozenset({"core2"})


def test_a_peer_that_says_it_stops_is_dead_at_once_and_is_not_suspected_first(fd: FailureDetector) -> None:
    fd.heard("core2", 3, now=10.0)
    assert fd.left("core2", 2, now=10.5) == []  # a goodbye of the process before: nothing about this one
    assert fd.left("core2", 3, now=10.5) == [
        Transition("core2", PeerState.ALIVE, PeerState.DEAD, 3, "core2 stopped (it said so: a planned stop)",
                   planned=True)
    ]
    assert fd.state("core2") is PeerState.DEAD and "core2" not in fd.visible()
    assert fd.tick(now=20.0) == [] and fd.left("core2", 3, now=20.0) == []  # nothing more to say about it
    assert fd.left("core9", 1, now=20.0) == []  # never heard of
    # Back (a restart): a new incarnation, alive at once.
    [back] = fd.heard("core2", 4, now=21.0)
    assert (back.new, back.planned, back.reason) == (PeerState.ALIVE, False, "core2 restarted (incarnation 3 -> 4)")


def test_a_heartbeat_sent_before_a_goodbye_and_read_after_it_does_not_revive_the_peer(fd: FailureDetector) -> None:
    fd.heard("core2", 3, now=10.0)
    fd.left("core2", 3, now=10.0)
    # Its last heartbeat (the PUB socket) is read in the same turn as its goodbye (its mesh link), after it.
    assert fd.heard("core2", 3, now=10.001) == []
    assert fd.state("core2") is PeerState.DEAD and "core2" not in fd.visible()
    # Heard again well after (dead_after_s), the same process did not stop after all: alive again.
    [back] = fd.heard("core2", 3, now=10.0 + fd.dead_after_s + 0.1)
    assert back.new is PeerState.ALIVE and fd.state("core2") is PeerState.ALIVE


def test_unknown_peer_has_no_state(fd: FailureDetector) -> None:
    assert fd.state("nobody") is None
    assert fd.incarnation("nobody") is None
    assert fd.visible() == frozenset()
    assert fd.snapshot(5.0) == {}


def test_repeated_heartbeats_report_nothing(fd: FailureDetector) -> None:
    fd.heard("core2", 1, now=0.0)
    assert fd.heard("core2", 1, now=0.1) == []
    assert fd.heard("core2", 1, now=0.2) == []


def test_heartbeats_keep_a_peer_alive(fd: FailureDetector) -> None:
    fd.heard("core2", 1, now=0.0)
    for step in range(1, 50):
        now = step * 0.4
        fd.heard("core2", 1, now=now)
        assert fd.tick(now + 0.3) == []
    assert fd.state("core2") is PeerState.ALIVE


def test_silence_makes_suspect_then_dead(fd: FailureDetector) -> None:
    fd.heard("core2", 1, now=0.0)
    assert fd.tick(0.25) == []
    assert fd.tick(0.5) == [
        Transition("core2", PeerState.ALIVE, PeerState.SUSPECT, 1, "core2 is suspect: no heartbeat for 0.50 s")
    ]
    assert fd.state("core2") is PeerState.SUSPECT
    assert fd.visible() == frozenset({"core2"}), "a suspect still counts as a member"
    assert fd.tick(0.75) == [], "suspect is reported once"
    assert fd.tick(1.25) == [
        Transition("core2", PeerState.SUSPECT, PeerState.DEAD, 1, "core2 is dead: no heartbeat for 1.25 s")
    ]
    assert fd.state("core2") is PeerState.DEAD
    assert fd.visible() == frozenset()
    assert fd.tick(5.0) == [], "dead is reported once"


def test_one_long_tick_goes_straight_to_dead(fd: FailureDetector) -> None:
    fd.heard("core2", 1, now=0.0)
    assert fd.tick(1.5) == [
        Transition("core2", PeerState.ALIVE, PeerState.DEAD, 1, "core2 is dead: no heartbeat for 1.50 s")
    ]


def test_thresholds_are_inclusive(fd: FailureDetector) -> None:
    fd.heard("core2", 1, now=0.0)
    [t] = fd.tick(0.5)
    assert t.new is PeerState.SUSPECT
    [t] = fd.tick(1.0)
    assert t.new is PeerState.DEAD


def test_a_tick_in_the_past_never_improves_a_state(fd: FailureDetector) -> None:
    fd.heard("core2", 1, now=0.0)
    fd.tick(2.0)
    assert fd.tick(0.6) == []
    assert fd.state("core2") is PeerState.DEAD


def test_suspect_heard_again_is_alive(fd: FailureDetector) -> None:
    fd.heard("core2", 1, now=0.0)
    fd.tick(0.6)
    assert fd.heard("core2", 1, now=0.75) == [
        Transition(
            "core2", PeerState.SUSPECT, PeerState.ALIVE, 1, "core2 is alive again after 0.75 s of silence"
        )
    ]
    assert fd.state("core2") is PeerState.ALIVE
    assert fd.tick(1.0) == [], "the heartbeat reset the silence timer"


def test_dead_heard_again_at_same_incarnation_is_alive(fd: FailureDetector) -> None:
    fd.heard("core2", 4, now=0.0)
    fd.tick(1.2)
    assert fd.heard("core2", 4, now=1.4) == [
        Transition("core2", PeerState.DEAD, PeerState.ALIVE, 4, "core2 is alive again after 1.40 s of silence")
    ]
    assert fd.visible() == frozenset({"core2"})


def test_higher_incarnation_is_a_restart_even_when_alive(fd: FailureDetector) -> None:
    fd.heard("core2", 3, now=0.0)
    assert fd.heard("core2", 4, now=0.1) == [
        Transition("core2", PeerState.ALIVE, PeerState.ALIVE, 4, "core2 restarted (incarnation 3 -> 4)")
    ]
    assert fd.incarnation("core2") == 4


def test_restart_of_a_dead_peer_reports_restart_not_recovery(fd: FailureDetector) -> None:
    fd.heard("core2", 3, now=0.0)
    fd.tick(2.0)
    assert fd.heard("core2", 5, now=2.5) == [
        Transition("core2", PeerState.DEAD, PeerState.ALIVE, 5, "core2 restarted (incarnation 3 -> 5)")
    ]
    assert fd.state("core2") is PeerState.ALIVE


def test_stale_incarnation_is_ignored_and_does_not_refresh(fd: FailureDetector) -> None:
    fd.heard("core2", 4, now=0.0)
    assert fd.heard("core2", 3, now=0.4) == []
    assert fd.incarnation("core2") == 4
    # Had the stale frame refreshed the timer, 0.6 s would be only 0.2 s of silence.
    [t] = fd.tick(0.6)
    assert t.new is PeerState.SUSPECT


def test_stale_incarnation_does_not_revive_a_dead_peer(fd: FailureDetector) -> None:
    fd.heard("core2", 4, now=0.0)
    fd.tick(2.0)
    assert fd.heard("core2", 3, now=2.1) == []
    assert fd.state("core2") is PeerState.DEAD


def test_tick_reports_peers_in_node_id_order(fd: FailureDetector) -> None:
    for node_id in ("core3", "core1", "core2"):
        fd.heard(node_id, 1, now=0.0)
    fd.heard("core2", 1, now=0.8)
    transitions = fd.tick(1.1)
    assert [(t.node_id, t.new) for t in transitions] == [
        ("core1", PeerState.DEAD),
        ("core3", PeerState.DEAD),
    ]
    assert fd.state("core2") is PeerState.ALIVE


def test_snapshot_reports_silence_without_changing_state(fd: FailureDetector) -> None:
    fd.heard("core1", 2, now=0.0)
    fd.heard("core2", 7, now=0.5)
    snap = fd.snapshot(now=0.9)
    assert snap == {
        "core1": PeerStatus(PeerState.ALIVE, 2, pytest.approx(0.9)),
        "core2": PeerStatus(PeerState.ALIVE, 7, pytest.approx(0.4)),
    }
    assert fd.state("core1") is PeerState.ALIVE, "snapshot is read-only; only tick ages peers"
    snap["core1"] = PeerStatus(PeerState.DEAD, 0, 0.0)
    assert fd.state("core1") is PeerState.ALIVE


def test_forget_drops_the_peer_and_next_frame_is_a_join(fd: FailureDetector) -> None:
    fd.heard("core2", 5, now=0.0)
    fd.forget("core2")
    fd.forget("core2")  # idempotent
    assert fd.state("core2") is None
    assert fd.visible() == frozenset()
    assert fd.tick(10.0) == []
    # After forgetting, even an older incarnation is accepted as a fresh join.
    [t] = fd.heard("core2", 1, now=11.0)
    assert (t.old, t.new, t.incarnation) == (None, PeerState.ALIVE, 1)


def test_value_classes_are_immutable() -> None:
    t = Transition("core2", None, PeerState.ALIVE, 1, "core2 joined (incarnation 1)")
    with pytest.raises(AttributeError):
        t.reason = "x"  # type: ignore[misc]
    assert not hasattr(t, "__dict__")


_events = st.lists(
    st.tuples(
        st.sampled_from(["heard", "tick"]),
        st.sampled_from(["core1", "core2", "edge1"]),
        st.integers(min_value=0, max_value=3),
        st.floats(min_value=0.0, max_value=0.7, allow_nan=False),
    ),
    max_size=60,
)


@given(_events)
def test_states_match_silence_and_transitions_are_consistent(
    events: list[tuple[str, str, int, float]],
) -> None:
    """For any event sequence: each transition starts from the state the peer was in, and
    after a tick every peer's state matches its silence since the last accepted frame."""
    fd = FailureDetector(suspect_after_s=SUSPECT_S, dead_after_s=DEAD_S)
    now = 0.0
    model: dict[str, tuple[int, float]] = {}  # node -> (incarnation, last accepted frame time)
    for kind, node_id, inc, dt in events:
        now += dt
        before = {n: fd.state(n) for n in ("core1", "core2", "edge1")}
        if kind == "heard":
            transitions = fd.heard(node_id, inc, now)
            if node_id not in model or inc >= model[node_id][0]:
                model[node_id] = (inc, now)
            else:
                assert transitions == []
        else:
            transitions = fd.tick(now)
            for n, (_, last) in model.items():
                silent = now - last
                if silent >= DEAD_S:
                    assert fd.state(n) is PeerState.DEAD
                elif silent >= SUSPECT_S:
                    assert fd.state(n) is PeerState.SUSPECT
                else:
                    assert fd.state(n) is PeerState.ALIVE
        assert len({t.node_id for t in transitions}) == len(transitions), "one transition per peer per call"
        for t in transitions:
            assert t.old is before[t.node_id]
            assert t.node_id in t.reason
            assert fd.state(t.node_id) is t.new
        for n, (model_inc, _) in model.items():
            assert fd.incarnation(n) == model_inc
        assert fd.visible() == {n for n in model if fd.state(n) is not PeerState.DEAD}
