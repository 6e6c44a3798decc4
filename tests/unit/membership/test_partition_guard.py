"""Tests for iris_mesh.membership._partition_guard, driven by a manual clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.membership._partition_guard import GuardDecision, PartitionGuard

CORES = ("core1", "core2", "core3")
EXIT_S = 1.0


def make_guard(
    *, self_id: str = "core1", self_is_core: bool = True, cores: tuple[str, ...] = CORES, exit_s: float = EXIT_S
) -> PartitionGuard:
    return PartitionGuard(
        self_id=self_id, self_is_core=self_is_core, safe_mode_exit_s=exit_s, expected_cores=cores
    )


def make_safe(guard: PartitionGuard, visible: tuple[str, ...] = CORES, start: float = 0.0) -> float:
    """Drive the guard out of start-up safe mode; returns the time it became safe."""
    guard.evaluate(visible, start)
    decision = guard.evaluate(visible, start + EXIT_S)
    assert decision.safe_for_writes and decision.changed
    return start + EXIT_S


# --- construction and the expected set -----------------------------------------------


def test_starts_not_safe_with_a_waiting_reason() -> None:
    guard = make_guard()
    assert not guard.is_safe_for_writes()
    assert guard.reason == "waiting for a majority of cores (1 of 3 visible)"


def test_a_core_always_expects_itself() -> None:
    guard = make_guard(cores=("core2", "core3"))
    assert guard.expected_cores == frozenset(CORES)
    assert not guard.add_core("core1")


def test_an_edge_does_not_expect_itself() -> None:
    guard = make_guard(self_id="edge1", self_is_core=False)
    assert guard.expected_cores == frozenset(CORES)
    assert guard.reason == "waiting for a majority of cores (0 of 3 visible)"


def test_an_edge_cannot_be_an_expected_core() -> None:
    with pytest.raises(ValueError, match="edge1"):
        make_guard(self_id="edge1", self_is_core=False, cores=("core1", "edge1"))
    guard = make_guard(self_id="edge1", self_is_core=False)
    with pytest.raises(ValueError, match="edge1"):
        guard.add_core("edge1")


def test_negative_exit_time_is_rejected() -> None:
    with pytest.raises(ValueError, match="safe_mode_exit_s"):
        make_guard(exit_s=-0.1)


def test_add_and_forget_report_whether_the_set_changed() -> None:
    guard = make_guard()
    assert guard.add_core("core4") is True
    assert guard.add_core("core4") is False
    assert guard.expected_cores == frozenset({*CORES, "core4"})
    assert guard.forget_core("core4") is True
    assert guard.forget_core("core4") is False
    assert guard.expected_cores == frozenset(CORES)


def test_a_core_cannot_forget_itself() -> None:
    guard = make_guard()
    with pytest.raises(ValueError, match="core1"):
        guard.forget_core("core1")
    assert "core1" in guard.expected_cores


def test_expected_cores_is_a_copy() -> None:
    guard = make_guard()
    snapshot = guard.expected_cores
    guard.add_core("core4")
    assert "core4" not in snapshot


# --- start-up --------------------------------------------------------------------------


def test_start_up_needs_majority_for_the_exit_time() -> None:
    guard = make_guard()
    d = guard.evaluate(["core2"], 0.0)
    assert d == GuardDecision(
        False, False, 2, 3, "majority of cores visible for 0.0 of 1.0 s - still in safe mode (2 of 3 cores visible)"
    )
    d = guard.evaluate(["core2"], 0.99)
    assert not d.safe_for_writes and not d.changed
    d = guard.evaluate(["core2"], 1.0)
    assert d == GuardDecision(True, True, 2, 3, "majority of cores visible - accepting writes (2 of 3 cores visible)")
    assert guard.is_safe_for_writes()
    assert guard.reason == d.reason
    d = guard.evaluate(["core2"], 1.5)
    assert d.safe_for_writes and not d.changed, "changed is reported once per flip"


def test_without_majority_start_up_never_becomes_safe() -> None:
    guard = make_guard()
    for step in range(100):
        d = guard.evaluate([], step * 0.5)
        assert d == GuardDecision(False, False, 1, 3, "waiting for a majority of cores (1 of 3 visible)")


def test_zero_exit_time_is_safe_on_first_majority() -> None:
    guard = make_guard(exit_s=0.0)
    d = guard.evaluate(["core2", "core3"], 5.0)
    assert d.safe_for_writes and d.changed


def test_a_single_core_cluster_is_its_own_majority() -> None:
    guard = make_guard(cores=())
    guard.evaluate([], 0.0)
    d = guard.evaluate([], EXIT_S)
    assert d.safe_for_writes and (d.visible, d.expected) == (1, 1)


def test_no_expected_cores_is_never_safe() -> None:
    guard = make_guard(self_id="edge1", self_is_core=False, cores=())
    for now in (0.0, 10.0, 100.0):
        d = guard.evaluate(["core1", "core2"], now)
        assert not d.safe_for_writes
        assert (d.visible, d.expected) == (0, 0)
    assert guard.reason == "no expected cores known - refusing writes"


# --- counting --------------------------------------------------------------------------


def test_unknown_cores_do_not_count() -> None:
    guard = make_guard()
    d = guard.evaluate(["core7", "core8", "core9"], 0.0)
    assert (d.visible, d.expected) == (1, 3)
    d = guard.evaluate(["core7", "core8", "core9"], 10.0)
    assert not d.safe_for_writes


def test_listing_itself_or_duplicates_does_not_double_count() -> None:
    guard = make_guard(cores=("core2", "core3", "core4"))
    d = guard.evaluate(["core1", "core1", "core2", "core2"], 0.0)
    assert (d.visible, d.expected) == (2, 4)


def test_edge_does_not_count_itself() -> None:
    guard = make_guard(self_id="edge1", self_is_core=False)
    d = guard.evaluate(["core1"], 0.0)
    assert (d.visible, d.expected) == (1, 3)
    guard.evaluate(["core1", "core2"], 1.0)
    d = guard.evaluate(["core1", "core2"], 2.0)
    assert d.safe_for_writes and (d.visible, d.expected) == (2, 3)


def test_even_split_is_not_safe() -> None:
    guard = make_guard(cores=("core1", "core2", "core3", "core4"))
    for now in (0.0, 5.0, 50.0):
        d = guard.evaluate(["core2"], now)
        assert not d.safe_for_writes
        assert (d.visible, d.expected) == (2, 4)
    guard.evaluate(["core2", "core3"], 51.0)
    d = guard.evaluate(["core2", "core3"], 52.0)
    assert d.safe_for_writes and d.visible == 3


# --- partitions ------------------------------------------------------------------------


def test_losing_majority_enters_safe_mode_at_once() -> None:
    guard = make_guard()
    now = make_safe(guard)
    d = guard.evaluate(["core2"], now + 0.1)
    assert d.safe_for_writes and not d.changed, "2 of 3 is still a majority"
    d = guard.evaluate([], now + 0.2)
    assert d == GuardDecision(False, True, 1, 3, "PARTITION DETECTED - entering safe mode (1 of 3 cores visible)")
    assert not guard.is_safe_for_writes()
    d = guard.evaluate([], now + 0.3)
    assert d == GuardDecision(
        False, False, 1, 3, "in safe mode - waiting for a majority of cores (1 of 3 visible)"
    )


def test_healing_waits_for_the_exit_time_then_reports_healed() -> None:
    guard = make_guard()
    now = make_safe(guard)
    guard.evaluate([], now + 1.0)
    d = guard.evaluate(["core2", "core3"], now + 2.0)
    assert not d.safe_for_writes and not d.changed
    d = guard.evaluate(["core2", "core3"], now + 2.5)
    assert not d.safe_for_writes
    d = guard.evaluate(["core2", "core3"], now + 3.0)
    assert d == GuardDecision(
        True, True, 3, 3, "partition healed - leaving safe mode (3 of 3 cores visible for 1.0 s)"
    )


def test_flapping_majority_restarts_the_exit_wait() -> None:
    guard = make_guard()
    now = make_safe(guard)
    guard.evaluate([], now + 0.1)
    guard.evaluate(["core2"], now + 1.0)
    guard.evaluate(["core2"], now + 1.9)
    guard.evaluate([], now + 1.95)  # majority lost just before the wait ends
    d = guard.evaluate(["core2"], now + 2.0)
    assert not d.safe_for_writes
    d = guard.evaluate(["core2"], now + 2.9)
    assert not d.safe_for_writes, "the wait restarted at now+2.0, not now+1.0"
    d = guard.evaluate(["core2"], now + 3.0)
    assert d.safe_for_writes and d.changed


def test_a_majority_of_other_cores_also_counts() -> None:
    """The visible majority may change members during the wait; what matters is that one holds."""
    guard = make_guard(cores=("core1", "core2", "core3", "core4", "core5"))
    guard.evaluate(["core2", "core3"], 0.0)
    guard.evaluate(["core4", "core5"], 0.5)
    d = guard.evaluate(["core3", "core4"], 1.0)
    assert d.safe_for_writes


def test_growing_the_expected_set_can_cost_the_majority() -> None:
    guard = make_guard()
    now = make_safe(guard, visible=("core2",))
    assert guard.add_core("core4")
    d = guard.evaluate(["core2"], now + 0.1)
    assert d == GuardDecision(False, True, 2, 4, "PARTITION DETECTED - entering safe mode (2 of 4 cores visible)")


def test_forgetting_a_dead_core_can_restore_the_majority() -> None:
    guard = make_guard(cores=("core1", "core2", "core3", "core4"))
    guard.evaluate(["core2"], 0.0)
    assert not guard.evaluate(["core2"], 5.0).safe_for_writes
    assert guard.forget_core("core4")
    d = guard.evaluate(["core2"], 6.0)
    assert (d.visible, d.expected, d.safe_for_writes) == (2, 3, False)
    d = guard.evaluate(["core2"], 7.0)
    assert d.safe_for_writes


# --- properties --------------------------------------------------------------------------

_ALL = ("core1", "core2", "core3", "core4", "core5")
_steps = st.lists(
    st.tuples(
        st.frozensets(st.sampled_from(_ALL + ("stranger",))),
        st.floats(min_value=0.0, max_value=0.6, allow_nan=False),
    ),
    max_size=50,
)


@given(
    steps=_steps,
    n_expected=st.integers(min_value=0, max_value=5),
    self_is_core=st.booleans(),
    exit_s=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_never_safe_without_a_strict_majority_held_for_the_exit_time(
    steps: list[tuple[frozenset[str], float]], n_expected: int, self_is_core: bool, exit_s: float
) -> None:
    self_id = "core1" if self_is_core else "edge1"
    cores = _ALL[:n_expected]
    guard = PartitionGuard(
        self_id=self_id, self_is_core=self_is_core, safe_mode_exit_s=exit_s, expected_cores=cores
    )
    expected = guard.expected_cores
    now = 0.0
    was_safe = False
    majority_since: float | None = None  # independent model of the continuous-majority timer
    for visible, dt in steps:
        now += dt
        d = guard.evaluate(visible, now)
        seen = (visible & expected) | ({self_id} if self_is_core else set())
        assert (d.visible, d.expected) == (len(seen), len(expected))
        majority = len(seen) * 2 > len(expected)
        if majority:
            majority_since = now if majority_since is None else majority_since
        else:
            majority_since = None

        if d.safe_for_writes:
            assert majority, f"safe with only {d.visible} of {d.expected}"
            assert majority_since is not None and now - majority_since >= exit_s
        elif was_safe:
            assert not majority, "left safe mode while a majority was visible"
        else:
            # Not safe and not entering: the wait must really be unfinished.
            assert majority_since is None or now - majority_since < exit_s
        assert d.changed == (d.safe_for_writes != was_safe)
        assert guard.is_safe_for_writes() == d.safe_for_writes
        assert guard.reason == d.reason
        if d.changed and not d.safe_for_writes:
            assert d.reason.startswith("PARTITION DETECTED - entering safe mode")
        was_safe = d.safe_for_writes
