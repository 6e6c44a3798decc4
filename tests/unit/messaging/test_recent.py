"""RecentOutcomes: the status an origin edge answered for each (sender, id), for at least the TTL, in little memory."""

from __future__ import annotations

import tracemalloc

from iris_mesh.messaging._recent import RecentOutcomes

TTL = 600.0
T0 = 1000.25


def test_an_answer_is_found_by_its_sender_and_id_only() -> None:
    recent = RecentOutcomes(TTL)
    recent.remember("ab", b"c", "stored", T0)
    assert recent.get("ab", b"c") == "stored"
    assert recent.get("a", b"bc") is None  # the same bytes run together: another sender, another id
    assert recent.get("ab", b"d") is None
    assert recent.get("abc", b"") is None


def test_an_answer_is_kept_at_least_the_ttl_and_forgotten_within_a_second_after() -> None:
    recent = RecentOutcomes(TTL)
    recent.remember("alice", b"1", "delivered", T0)
    recent.remember("alice", b"2", "stored", T0 + 0.5)
    recent.forget_expired(T0 + TTL + 0.74)  # the end of the second T0 fell in, plus the TTL: not yet
    assert (recent.get("alice", b"1"), recent.get("alice", b"2")) == ("delivered", "stored")
    recent.forget_expired(T0 + TTL + 0.75)
    assert len(recent) == 0


def test_expiry_keeps_what_came_later() -> None:
    recent = RecentOutcomes(TTL)
    for n in range(100):
        recent.remember("alice", b"%d" % n, "stored", T0 + n)
    recent.forget_expired(T0 + TTL + 50)
    assert [n for n in range(100) if recent.get("alice", b"%d" % n)] == list(range(50, 100))


def test_an_id_remembered_again_keeps_its_first_time_and_takes_the_new_status() -> None:
    recent = RecentOutcomes(TTL)
    recent.remember("alice", b"1", "stored", T0)
    recent.remember("alice", b"1", "delivered", T0 + 300)
    assert recent.get("alice", b"1") == "delivered" and len(recent) == 1
    recent.forget_expired(T0 + TTL + 1)
    assert recent.get("alice", b"1") is None


def test_an_entry_costs_under_160_bytes() -> None:
    """What an edge pays per send per second of rate, for ten minutes (290 bytes in an OrderedDict of tuples)."""
    ids = [n.to_bytes(16, "big") for n in range(50_000)]
    recent = RecentOutcomes(TTL)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, msg_id in enumerate(ids):
            recent.remember("some.user@example", msg_id, "delivered", T0 + n / 1000)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(ids)
    finally:
        tracemalloc.stop()
    assert per_entry < 160, per_entry
