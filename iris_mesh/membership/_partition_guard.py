"""Partition guard: a core accepts writes only while it sees a strict majority of its region's cores.

docs/ARCHITECTURE.md section 4, "Partition safety". Sans-IO: the engine calls `evaluate`
with the cores the failure detector currently counts as visible and the
monotonic `now`, logs the decision's reason when `changed` is True, and fails
writes fast with `partition_detected` while `is_safe_for_writes()` is False.

The majority is strict (visible * 2 > expected) so that an even split, such as
2 of 4, blocks writes on both sides instead of letting both halves write. The
node starts in safe mode and leaves it, at start-up and after a partition
alike, only once a majority has been visible without a break for
`safe_mode_exit_s`: a flapping link must not let writes through between flaps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["GuardDecision", "PartitionGuard"]


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """The outcome of one evaluate call; `changed` is True only when safe_for_writes flipped."""

    safe_for_writes: bool
    changed: bool
    visible: int
    expected: int
    reason: str


class PartitionGuard:
    """Decides whether this node may accept writes; not thread-safe, engine thread only."""

    __slots__ = (
        "_self_id",
        "_self_is_core",
        "_safe_mode_exit_s",
        "_expected",
        "_safe",
        "_ever_safe",
        "_majority_since",
        "_reason",
    )

    def __init__(
        self,
        *,
        self_id: str,
        self_is_core: bool,
        safe_mode_exit_s: float,
        expected_cores: Iterable[str] = (),
    ) -> None:
        """Starts not safe for writes; ValueError if safe_mode_exit_s < 0 or an edge lists itself as a core."""
        if safe_mode_exit_s < 0:
            raise ValueError(f"safe_mode_exit_s must be >= 0, got {safe_mode_exit_s}")
        self._self_id = self_id
        self._self_is_core = self_is_core
        self._safe_mode_exit_s = safe_mode_exit_s
        self._expected: set[str] = set()
        for node_id in expected_cores:
            self._check_addable(node_id)
            self._expected.add(node_id)
        if self_is_core:
            self._expected.add(self_id)
        self._safe = False
        # Only to word the exit message: start-up is not a partition healing.
        self._ever_safe = False
        self._majority_since: float | None = None
        self._reason = self._waiting_reason(self._count(()), len(self._expected))

    @property
    def expected_cores(self) -> frozenset[str]:
        """The cores whose majority is required; a core always includes itself."""
        return frozenset(self._expected)

    def add_core(self, node_id: str) -> bool:
        """Add a core to the expected set; True if the set grew (the caller persists it)."""
        self._check_addable(node_id)
        if node_id in self._expected:
            return False
        self._expected.add(node_id)
        return True

    def forget_core(self, node_id: str) -> bool:
        """Remove a core from the expected set; True if it shrank. ValueError for a core's own id."""
        if self._self_is_core and node_id == self._self_id:
            raise ValueError(f"{node_id} cannot forget itself: a core is always in its own expected set")
        if node_id not in self._expected:
            return False
        self._expected.discard(node_id)
        return True

    def evaluate(self, visible_cores: Iterable[str], now: float) -> GuardDecision:
        """Update the decision for the cores visible at `now` (unknown ids are ignored)."""
        visible = self._count(visible_cores)
        expected = len(self._expected)
        # 0 expected is never a majority: a node that knows no cores has no
        # basis to believe it is on the right side of anything.
        majority = expected > 0 and visible * 2 > expected

        if self._safe:
            if majority:
                self._reason = f"accepting writes ({visible} of {expected} cores visible)"
                return self._decide(changed=False, visible=visible, expected=expected)
            # Enter safe mode at once, without a grace period: every write
            # accepted without a majority risks a split brain.
            self._safe = False
            self._majority_since = None
            self._reason = f"PARTITION DETECTED - entering safe mode ({visible} of {expected} cores visible)"
            return self._decide(changed=True, visible=visible, expected=expected)

        if not majority:
            # Any break in the majority restarts the exit wait.
            self._majority_since = None
            self._reason = self._waiting_reason(visible, expected)
            return self._decide(changed=False, visible=visible, expected=expected)

        if self._majority_since is None:
            self._majority_since = now
        held_s = now - self._majority_since
        if held_s < self._safe_mode_exit_s:
            self._reason = (
                f"majority of cores visible for {held_s:.1f} of {self._safe_mode_exit_s:.1f} s - "
                f"still in safe mode ({visible} of {expected} cores visible)"
            )
            return self._decide(changed=False, visible=visible, expected=expected)

        self._safe = True
        if self._ever_safe:
            self._reason = (
                f"partition healed - leaving safe mode "
                f"({visible} of {expected} cores visible for {held_s:.1f} s)"
            )
        else:
            self._reason = f"majority of cores visible - accepting writes ({visible} of {expected} cores visible)"
        self._ever_safe = True
        return self._decide(changed=True, visible=visible, expected=expected)

    def is_safe_for_writes(self) -> bool:
        """True only while the last evaluate found a majority held for safe_mode_exit_s."""
        return self._safe

    @property
    def reason(self) -> str:
        """The state as of the last evaluate, as a sentence (for `meshctl status`)."""
        return self._reason

    def _check_addable(self, node_id: str) -> None:
        if not node_id:
            raise ValueError("a core's node id must not be empty")
        if not self._self_is_core and node_id == self._self_id:
            # An edge counted as a core would lend a vote it does not have.
            raise ValueError(f"{node_id} is an edge and cannot be an expected core")

    def _count(self, visible_cores: Iterable[str]) -> int:
        # Cores outside the expected set (not yet admitted, or forgotten) must
        # not vote, or a burst of newcomers could outvote the real ring.
        seen = self._expected.intersection(visible_cores)
        if self._self_is_core:
            seen.add(self._self_id)
        return len(seen)

    def _waiting_reason(self, visible: int, expected: int) -> str:
        if expected == 0:
            return "no expected cores known - refusing writes"
        if self._ever_safe:
            return f"in safe mode - waiting for a majority of cores ({visible} of {expected} visible)"
        return f"waiting for a majority of cores ({visible} of {expected} visible)"

    def _decide(self, *, changed: bool, visible: int, expected: int) -> GuardDecision:
        return GuardDecision(self._safe, changed, visible, expected, self._reason)
