"""LatencyWindow: percentiles within a bucket's width, a window that forgets, failures kept apart."""

from __future__ import annotations

import math
import random

import pytest

from iris_mesh.store._latency import LatencyWindow


def _exact(values: list[float], fraction: float) -> float:
    """The value of rank ceil(fraction * n), as the window counts ranks."""
    return sorted(values)[math.ceil(fraction * len(values)) - 1]


def test_an_empty_window_reports_no_request() -> None:
    summary = LatencyWindow().summary(100.0)
    assert summary == {"window_s": 60.0, "count": 0, "failed": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None,
                       "max_ms": None}


def test_percentiles_are_at_most_9_percent_above_the_exact_ones_and_never_below() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-6.0, 1.0) for _ in range(20_000)]  # around 2.5 ms, a long tail
    window = LatencyWindow()
    for value in values:
        window.record(value, 5.0)
    summary = window.summary(5.0)
    assert summary["count"] == len(values)
    for name, fraction in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
        exact_ms = _exact(values, fraction) * 1000
        assert exact_ms <= summary[name] <= exact_ms * 1.091, (name, exact_ms, summary[name])
    assert summary["max_ms"] == pytest.approx(max(values) * 1000, abs=0.001)


def test_a_percentile_never_exceeds_the_largest_duration() -> None:
    window = LatencyWindow()
    for _ in range(10):
        window.record(0.001, 1.0)  # 1 ms exactly: its bucket's upper edge is 1.09 ms
    summary = window.summary(1.0)
    assert summary["p50_ms"] == summary["p99_ms"] == summary["max_ms"] == 1.0


def test_the_window_forgets_what_is_older_than_its_length() -> None:
    window = LatencyWindow(slots=6, slot_s=10.0)
    window.record(0.050, 0.0)  # a slow request at t=0
    for t in range(1, 60):
        window.record(0.002, float(t))
    assert window.summary(59.0)["max_ms"] == 50.0
    assert window.summary(59.0)["count"] == 60
    # At t=60 the slot of t=0..9 is out of the window, with the slow request in it.
    later = window.summary(60.0)
    assert later["count"] == 50
    assert later["max_ms"] == 2.0
    # Recording after a long silence starts afresh.
    window.record(0.004, 500.0)
    fresh = window.summary(500.0)
    assert fresh["count"] == 1 and fresh["max_ms"] == 4.0


def test_failures_are_counted_apart_from_the_durations() -> None:
    window = LatencyWindow()
    window.record(0.003, 1.0)
    window.record_failure(1.0)
    window.record_failure(2.0)
    summary = window.summary(2.0)
    assert summary["count"] == 1 and summary["failed"] == 2
    assert summary["max_ms"] == 3.0


def test_durations_beyond_the_buckets_are_kept_as_the_largest_and_tiny_ones_as_the_smallest() -> None:
    window = LatencyWindow()
    window.record(0.0, 1.0)
    window.record(120.0, 1.0)
    summary = window.summary(1.0)
    assert summary["count"] == 2
    assert summary["max_ms"] == 120_000.0
    assert summary["p50_ms"] is not None and summary["p50_ms"] <= 0.002


def test_a_window_needs_slots_of_positive_length() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        LatencyWindow(slots=0)
    with pytest.raises(ValueError, match="positive length"):
        LatencyWindow(slot_s=0.0)
