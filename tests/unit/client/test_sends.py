"""Tests for iris_mesh.client._sends: order, window, pacing, retries and deadlines, on a manual clock."""

from __future__ import annotations

import itertools

import pytest

from iris_mesh.client._errors import IrisError
from iris_mesh.client._sends import PendingSend, SendQueue
from iris_mesh.messaging._protocol import Limits

T0 = 50.0


def make_queue(**limits: int) -> SendQueue:
    return SendQueue(retry_initial_s=0.1, retry_max_s=1.0, limits=Limits(**limits))


_seqs = itertools.count(1)


def add(q: SendQueue, to: str, now: float = T0, timeout_s: float = 10.0) -> PendingSend:
    seq = next(_seqs)
    send = PendingSend(seq, seq.to_bytes(16, "big"), to, b"", None, now + timeout_s)
    q.add(send, now)
    return send


def test_sends_leave_in_submission_order_across_recipients() -> None:
    q = make_queue()
    sends = [add(q, to) for to in ("bob", "carol", "bob", "dave", "carol")]
    assert q.take_ready(T0) == sends
    assert q.in_flight == 5 and len(q) == 5


def test_the_window_caps_sends_in_flight() -> None:
    q = make_queue(max_pending_deliveries=2)
    a, b, c = add(q, "bob"), add(q, "bob"), add(q, "carol")
    assert q.take_ready(T0) == [a, b]
    assert q.take_ready(T0) == []
    q.confirmed(a, T0)
    assert q.take_ready(T0) == [c]


def test_sends_are_paced_by_the_edges_rate() -> None:
    q = make_queue(send_rate_per_s=10, send_burst=3)
    sends = [add(q, "bob") for _ in range(5)]
    assert q.take_ready(T0) == sends[:3]
    wake = q.next_wakeup(T0)
    assert wake == pytest.approx(T0 + 0.1)
    assert q.take_ready(T0 + 0.05) == []
    assert q.take_ready(T0 + 0.1) == sends[3:4]


def test_a_retry_waits_its_backoff_and_then_the_lane_goes_one_at_a_time() -> None:
    q = make_queue()
    a, b, c = add(q, "bob"), add(q, "bob"), add(q, "carol")
    assert q.take_ready(T0) == [a, b, c]
    assert q.retry_later(a, IrisError("unavailable", "down"), T0)
    assert q.retry_later(b, IrisError("unavailable", "down"), T0)
    d, e = add(q, "bob"), add(q, "carol")
    assert q.take_ready(T0) == [e]  # bob's lane waits; carol's does not
    assert q.next_wakeup(T0) == pytest.approx(T0 + 0.1)
    assert q.take_ready(T0 + 0.1) == [a]  # then one at a time, in order
    assert q.take_ready(T0 + 0.2) == []
    q.confirmed(a, T0 + 0.2)
    assert q.take_ready(T0 + 0.2) == [b, d]  # a `sent` ends the careful mode
    assert a.attempts == 2 and b.attempts == 2 and d.attempts == 1


def test_backoff_doubles_up_to_the_maximum() -> None:
    q = make_queue()
    a = add(q, "bob", timeout_s=100.0)
    now = T0
    waits = []
    for _ in range(6):
        (taken,) = q.take_ready(now) or [None]
        assert taken is a
        q.retry_later(a, IrisError("no_quorum", "no"), now)
        waits.append(q.next_wakeup(now) - now)  # type: ignore[operator]
        now += waits[-1]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_rate_limited_pauses_every_lane_for_retry_after() -> None:
    q = make_queue()
    a = add(q, "bob")
    q.take_ready(T0)
    b = add(q, "carol")
    assert q.retry_later(a, IrisError("rate_limited", "slow", retry_after=0.5), T0)
    assert q.take_ready(T0 + 0.4) == []
    assert q.take_ready(T0 + 0.5) == [a, b]


def test_a_retry_that_would_pass_the_deadline_finishes_the_send() -> None:
    q = make_queue()
    a = add(q, "bob", timeout_s=1.0)
    q.take_ready(T0)
    assert not q.retry_later(a, IrisError("rate_limited", "slow", retry_after=2.0), T0)
    assert a.done and len(q) == 0 and a.last_error is not None


def test_requeue_puts_sends_back_in_their_original_order() -> None:
    q = make_queue(max_pending_deliveries=3)
    sends = [add(q, to) for to in ("bob", "carol", "bob", "bob", "carol")]
    flying = q.take_ready(T0)
    assert flying == sends[:3]
    q.confirmed(sends[1], T0)
    assert q.requeue_in_flight(T0 + 1) == [sends[0], sends[2]]
    assert q.in_flight == 0
    assert q.take_ready(T0 + 1) == [sends[0], sends[2], sends[3]]
    q.confirmed(sends[0], T0 + 1)
    assert q.take_ready(T0 + 1) == [sends[4]]


def test_expired_sends_leave_the_queue_wherever_they_are() -> None:
    q = make_queue(max_pending_deliveries=1)
    a, b = add(q, "bob", timeout_s=1.0), add(q, "bob", timeout_s=2.0)
    q.take_ready(T0)
    assert q.next_wakeup(T0) == pytest.approx(T0 + 1.0)
    assert q.expired(T0 + 1.0) == [a]
    assert q.take_ready(T0 + 1.0) == [b]
    assert q.expired(T0 + 2.0) == [b]
    assert len(q) == 0 and q.in_flight == 0


def test_failed_sends_unblock_their_lane() -> None:
    q = make_queue()
    a, b = add(q, "bob"), add(q, "bob")
    q.take_ready(T0)
    q.retry_later(a, IrisError("unavailable", "x"), T0)
    q.failed(b, T0)  # b was in flight
    q.failed(a, T0)  # a was waiting in the lane
    assert len(q) == 0
    c = add(q, "bob")
    assert q.take_ready(T0) == [c]


def test_finished_sends_do_not_pile_up_in_the_deadline_heap() -> None:
    q = make_queue(send_rate_per_s=1_000_000, send_burst=1_000_000, max_pending_deliveries=1_000_000)
    for _ in range(10_000):
        send = add(q, "bob")
        q.take_ready(T0)
        q.confirmed(send, T0)
    assert len(q._deadlines) < 200  # type: ignore[attr-defined]


def test_drain_returns_every_unfinished_send_in_order() -> None:
    q = make_queue(max_pending_deliveries=1)
    sends = [add(q, "bob"), add(q, "carol"), add(q, "bob")]
    q.take_ready(T0)
    assert q.drain() == sends
    assert all(s.done for s in sends) and len(q) == 0 and q.next_wakeup(T0) is None
