"""Quorum prefix scans: merge newest-wins, cursor at the shortest truncated page, repair, failures."""

from __future__ import annotations

import pytest

from iris_mesh.store._coordinator import ReplicaWrite
from iris_mesh.store._keys import compose, partition_key
from iris_mesh.store._scan import QuorumScanner, ReplicaScan
from iris_mesh.store._versioned import Version, Versioned

R3 = ["a", "b", "c"]


def v(hlc: int, value: bytes | None = b"x", node: str = "n") -> Versioned:
    return Versioned(Version(hlc, node), value)


def start(scanner: QuorumScanner, req: int = 1, limit: int = 10, live=R3):
    return scanner.scan(req, "offline_msg", b"bob\x00", start_after=None, limit=limit, replicas=R3, live=live, now=0.0)


def test_scan_goes_to_every_live_replica_and_answers_after_r_pages() -> None:
    scanner = QuorumScanner(read_quorum=2, timeout_s=2.0)
    outbound, done = start(scanner)
    assert [o.node for o in outbound] == R3 and not done
    assert isinstance(outbound[0].message, ReplicaScan)
    assert scanner.on_scan_reply("a", 1, [(b"bob\x001", v(1))], False, "ok", 0.1) == ([], [])
    repairs, done = scanner.on_scan_reply("b", 1, [(b"bob\x001", v(1)), (b"bob\x002", v(2))], False, "ok", 0.1)
    assert [key for key, _ in done[0].items] == [b"bob\x001", b"bob\x002"]
    assert done[0].more is False and done[0].cursor == b"bob\x002"
    # a lacked key 2: it is repaired.
    assert [(o.node, o.message.key) for o in repairs] == [("a", b"bob\x002")]
    assert all(isinstance(o.message, ReplicaWrite) and o.message.req < 0 for o in repairs)
    assert scanner.pending() == 0


def test_newest_version_wins_and_tombstones_are_left_out() -> None:
    scanner = QuorumScanner(read_quorum=2, timeout_s=2.0)
    start(scanner)
    scanner.on_scan_reply("a", 1, [(b"bob\x001", v(5, None)), (b"bob\x002", v(1, b"old"))], False, "ok", 0.0)
    repairs, done = scanner.on_scan_reply("b", 1, [(b"bob\x001", v(3)), (b"bob\x002", v(4, b"new"))], False, "ok", 0.0)
    assert [(k, item.value) for k, item in done[0].items] == [(b"bob\x002", b"new")]
    assert sorted((o.node, o.message.key) for o in repairs) == [("a", b"bob\x002"), ("b", b"bob\x001")]


def test_cursor_stops_at_the_shortest_truncated_page() -> None:
    scanner = QuorumScanner(read_quorum=2, timeout_s=2.0)
    start(scanner, limit=2)
    scanner.on_scan_reply("a", 1, [(b"bob\x001", v(1)), (b"bob\x002", v(1))], True, "ok", 0.0)
    _, done = scanner.on_scan_reply("b", 1, [(b"bob\x001", v(1)), (b"bob\x003", v(1))], True, "ok", 0.0)
    assert done[0].cursor == b"bob\x002" and done[0].more is True
    assert [key for key, _ in done[0].items] == [b"bob\x001", b"bob\x002"]


def test_too_few_live_replicas_is_unavailable_at_once() -> None:
    scanner = QuorumScanner(read_quorum=2, timeout_s=2.0)
    outbound, done = start(scanner, live=["a"])
    assert outbound == [] and done[0].code == "unavailable"


def test_failures_and_timeouts() -> None:
    scanner = QuorumScanner(read_quorum=2, timeout_s=2.0)
    start(scanner, req=1)
    scanner.on_scan_reply("a", 1, [], False, "partition_detected", 0.0)
    _, done = scanner.on_scan_reply("b", 1, [], False, "partition_detected", 0.0)
    assert done[0].code == "partition_detected"
    start(scanner, req=2)
    scanner.on_scan_reply("a", 2, [], False, "ok", 0.0)
    assert scanner.tick(1.9) == []
    timed_out = scanner.tick(2.0)
    assert timed_out[0].req == 2 and timed_out[0].code == "unavailable"
    assert scanner.on_scan_reply("b", 2, [], False, "ok", 2.1) == ([], [])


def test_partition_key_is_the_part_before_the_first_nul() -> None:
    assert partition_key(b"bob\x00123\x00x") == b"bob"
    assert partition_key(b"alice") == b"alice"
    assert compose(b"bob", b"1", b"2") == b"bob\x001\x002"
    with pytest.raises(ValueError):
        compose(b"b\x00b", b"1")
