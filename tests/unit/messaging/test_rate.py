"""Tests for iris_mesh.messaging._rate, driven by a manual clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.messaging._rate import RateLimiter


def test_a_full_bucket_allows_a_burst_then_says_how_long_to_wait() -> None:
    limiter = RateLimiter(rate_per_s=200, burst=400)
    assert all(limiter.try_take(10.0) == 0.0 for _ in range(400))
    assert limiter.try_take(10.0) == pytest.approx(1 / 200)


def test_waiting_retry_after_is_enough() -> None:
    limiter = RateLimiter(rate_per_s=3, burst=1)
    now = 0.0
    for _ in range(50):
        assert limiter.try_take(now) == 0.0
        wait = limiter.try_take(now)
        assert wait > 0.0
        now += wait
    assert now == pytest.approx(50 / 3)


def test_refused_attempts_take_nothing() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1)
    assert limiter.try_take(0.0) == 0.0
    assert limiter.try_take(0.5) == pytest.approx(0.5)
    assert limiter.try_take(0.5) == pytest.approx(0.5)
    assert limiter.try_take(0.75) == pytest.approx(0.25)
    assert limiter.try_take(1.0) == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    limiter = RateLimiter(rate_per_s=10, burst=5)
    assert limiter.try_take(0.0) == 0.0
    assert sum(limiter.try_take(1000.0) == 0.0 for _ in range(20)) == 5


def test_a_clock_stepping_back_refills_nothing_and_breaks_nothing() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1)
    assert limiter.try_take(100.0) == 0.0
    assert limiter.try_take(50.0) == pytest.approx(1.0)
    # The reference point stayed at 100: one second after it, a token is back.
    assert limiter.try_take(100.5) == pytest.approx(0.5)
    assert limiter.try_take(101.0) == 0.0


def test_is_full_tells_when_an_idle_limiter_can_be_dropped() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=4)
    assert limiter.is_full(0.0)
    limiter.try_take(0.0)
    assert not limiter.is_full(0.0)
    assert not limiter.is_full(0.4)
    assert limiter.is_full(0.5)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0), (1, -3)])
def test_nonsense_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, gaps: list[float]) -> None:
    limiter = RateLimiter(rate, burst)
    now = start = 1000.0
    allowed = 0
    for gap in gaps:
        now += gap
        wait = limiter.try_take(now)
        assert wait >= 0.0
        if wait == 0.0:
            allowed += 1
        else:
            assert wait <= 1 / rate + 1e-9
        assert allowed <= burst + rate * (now - start) + 1e-6
