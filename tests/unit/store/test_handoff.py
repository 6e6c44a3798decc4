"""HintHandoff against a stand-in local store: when it may take a replica's hints for handed off, and when a drop of
a replica's hints stops. (Handoff between real stores: test_service.py.)"""

from __future__ import annotations

import collections
import itertools
from typing import Any

from iris_mesh.store._handoff import HintHandoff
from iris_mesh.store._versioned import Version, Versioned

ITEM = Versioned(Version(1 << 16, "edge1"), b"v")


class Local:
    """Hints as pages the test sets; `written` stands for LocalStore.hints_written."""

    def __init__(self) -> None:
        self.pages: list[tuple[list[tuple[str, bytes, Versioned]], bool]] = []
        self.reads = 0
        self.written = 0
        self.dropped: list[bytes] = []

    def hints_written(self, target: str) -> int:
        return self.written

    def hints_page(self, target: str, limit: int, *, after: Any = None, max_bytes: int = 0) -> Any:
        self.reads += 1
        return self.pages.pop(0) if self.pages else ([], False)

    def count_hints_for(self, target: str, cap: int) -> int:
        return 5

    def async_drop_hint(self, target: str, table: str, key: bytes, item: Versioned) -> None:
        self.dropped.append(key)


class Membership:
    def state_of(self, node_id: str) -> str:
        return "alive"

    def expected_cores(self) -> frozenset[str]:
        return frozenset({"core1", "core2"})


class Writes:
    def add(self, *args: Any) -> None:
        pass


def handoff(local: Local) -> HintHandoff:
    return HintHandoff(node_id="core1", local=local, membership=Membership(),  # type: ignore[arg-type]
                       writes=Writes(), internal_ids=itertools.count(1 << 40),  # type: ignore[arg-type]
                       counters=collections.defaultdict(int))


def test_a_first_page_read_as_empty_because_its_hints_were_just_dropped_does_not_end_the_handoff() -> None:
    # Acked hints whose deletes wait in the staged batch (a slow disk) read as none; the hints after them remain,
    # and taking the replica for drained would leave them until a new hint for it is written.
    local = Local()
    local.pages = [([], True), ([("offline_msg", b"k2", ITEM)], False)]
    runner = handoff(local)
    runner.async_tick(0.0)
    runner.async_tick(10.0)
    assert local.reads == 2  # read again: the hint after the dropped page goes out


def test_a_drop_of_a_replicas_hints_stops_once_new_hints_for_it_are_kept() -> None:
    # It is an expected core again (back after a forget): the hints kept for it from now on are not dropped.
    local = Local()
    local.pages = [([("offline_msg", b"k1", ITEM)], True), ([("offline_msg", b"k2", ITEM)], True)]
    runner = handoff(local)
    assert runner.async_drop_hints("core2") == 5
    assert local.dropped == [b"k1"]
    local.written += 1  # a hint for core2 kept since
    runner.async_tick(10.0)
    assert local.dropped == [b"k1"]
