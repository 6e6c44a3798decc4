"""Tests for iris_mesh.client._dedup: queued vs returned, and the bounded memory of returned ids."""

from __future__ import annotations

import pytest

from iris_mesh.client._dedup import Seen, SeenMessages

HOUR = 3600.0


def key(n: int, sender: str = "alice") -> tuple[str, bytes]:
    return (sender, n.to_bytes(16, "big"))


def test_new_then_queued_then_returned() -> None:
    seen = SeenMessages(window=10)
    assert seen.classify(key(1)) is Seen.NEW
    seen.queued(key(1))
    assert seen.classify(key(1)) is Seen.QUEUED and seen.waiting == 1
    seen.returned(key(1), 0.0)
    assert seen.classify(key(1)) is Seen.RETURNED and seen.waiting == 0
    assert seen.classify(key(1, sender="bob")) is Seen.NEW


def test_returned_ids_are_remembered_for_an_hour_or_the_last_window_of_them_whichever_are_more() -> None:
    seen = SeenMessages(window=3)
    for n in range(1, 6):  # five in a burst: all of the last hour, all remembered although the window is 3
        seen.queued(key(n))
        seen.returned(key(n), 100.0)
    assert all(seen.classify(key(n)) is Seen.RETURNED for n in range(1, 6)) and len(seen) == 5
    seen.returned(key(6), 100.0 + HOUR)  # an hour later: the burst is out of the hour, the last 3 stay
    assert [seen.classify(key(n)) for n in range(1, 7)] == [Seen.NEW] * 3 + [Seen.RETURNED] * 3
    assert len(seen) == 3


def test_the_default_window_holds_ten_thousand_ids() -> None:
    seen = SeenMessages(window=10_000)
    for n in range(10_050):
        seen.returned(key(n), n * 0.4)  # over more than an hour: the oldest beyond 10,000 go
    assert len(seen) == 10_000
    assert seen.classify(key(49)) is Seen.NEW and seen.classify(key(50)) is Seen.RETURNED


def test_a_window_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        SeenMessages(window=0)
