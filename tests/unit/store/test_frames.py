"""Replica write and ack frames: grouping, cutting under the frame budget, and parsing what the codec decodes."""

from __future__ import annotations

import pytest

from iris_mesh.sockets._codec import decode_mesh, encode_body, encode_pairs, envelope
from iris_mesh.store._frames import (
    FRAME_BUDGET_BYTES,
    FRESH,
    SYNC,
    AckBatcher,
    WriteBatcher,
    parse_write_groups,
)
from iris_mesh.store._outbox import frame_chunks
from iris_mesh.store._versioned import Version, Versioned, encode_versioned

NODES = ("core1", "core2", "core3")


def item(hlc: int, value: bytes | None = b"v") -> Versioned:
    return Versioned(Version(hlc, "edge1"), value)


def on_the_wire(groups: list[object]) -> dict[str, object]:
    """A sput frame as a replica decodes it (encoded once, spliced with a link's header, as the engine does)."""
    frame = encode_body(envelope("sput", w=groups)).frame(3, encode_pairs(src="edge1", inc=1, seq=7))
    return decode_mesh(frame)


def test_writes_for_the_same_replicas_share_a_frame_and_group_by_table_hints_and_flags() -> None:
    batcher = WriteBatcher()
    writes = [
        (NODES, "offline_msg", (), SYNC | FRESH, 1, b"a", item(1)),
        (NODES, "offline_msg", (), SYNC | FRESH, 2, b"b", item(2, None)),
        (NODES, "presence", (), SYNC | FRESH, 3, b"p", item(3)),
        (NODES, "offline_msg", ("core3",), SYNC | FRESH, 4, b"c", item(4)),
        (("core1",), "offline_msg", (), SYNC, 5, b"a", item(1)),
    ]
    for nodes, table, hint_for, flags, req, key, value in writes:
        batcher.add(nodes, table, hint_for, flags, req, key, encode_versioned(value))
    frames = batcher.drain()
    assert not batcher
    assert [(nodes, rows) for nodes, _, rows in frames] == [(NODES, 4), (("core1",), 1)]
    parsed = parse_write_groups(on_the_wire(frames[0][1]))
    assert [(g[0], g[1], g[2], g[3], g[4], g[5]) for g in parsed] == [
        ("offline_msg", (), SYNC | FRESH, [1, 2], [b"a", b"b"], [item(1), item(2, None)]),
        ("presence", (), SYNC | FRESH, [3], [b"p"], [item(3)]),
        ("offline_msg", ("core3",), SYNC | FRESH, [4], [b"c"], [item(4)]),
    ]
    assert parsed[0][6] == [encode_versioned(item(1)), encode_versioned(item(2, None))]  # the bytes as sent


def test_a_turn_of_writes_is_cut_into_frames_under_the_budget_in_order() -> None:
    batcher = WriteBatcher()
    value = b"x" * 4000
    total = 3 * FRAME_BUDGET_BYTES // len(value)
    for req in range(total):
        batcher.add(NODES, "offline_msg", (), SYNC, req, b"k%05d" % req, encode_versioned(item(req, value)))
    frames = batcher.drain()
    assert len(frames) >= 3
    reqs = []
    for _nodes, groups, rows in frames:
        encoded = encode_body(envelope("sput", w=groups)).frame(3, encode_pairs(src="edge1", inc=1, seq=1))
        assert len(encoded) < FRAME_BUDGET_BYTES + 4096
        parsed = parse_write_groups(on_the_wire(groups))
        assert rows == sum(len(g[3]) for g in parsed)
        reqs += [req for g in parsed for req in g[3]]
    assert reqs == list(range(total))


def test_acks_are_request_lists_per_node_with_failures_apart_and_cut_when_long() -> None:
    batcher = AckBatcher()
    batcher.ok("edge1", [1, 2, 3])
    batcher.other("edge1", 4, "inbox_full")
    batcher.ok("edge1", [5])
    batcher.other("edge2", 9, "partition_detected")
    frames = sorted(batcher.drain())
    assert frames == [("edge1", {"k": [1, 2, 3, 5], "a": [[4, "inbox_full"]]}), ("edge2", {"a": [[9, "partition_detected"]]})]
    assert not batcher and batcher.drain() == []
    many = list(range(100_000))
    batcher.ok("edge1", many)
    frames = batcher.drain()
    assert len(frames) > 1
    assert [req for _node, fields in frames for req in fields["k"]] == many


@pytest.mark.parametrize(
    ("groups", "problem"),
    [
        (None, "list 'w'"),
        ([["offline_msg", [], 1, [1]]], "table, hint_for"),
        ([["offline_msg", [], 1, [1, 2], [b"k", b"v"]]], "wrong types or lengths"),
        ([["offline_msg", [7], 1, [1], [b"k", b"v"]]], "hint target"),
        ([["offline_msg", [], 1, [True], [b"k", b"v"]]], "request id"),
        ([["offline_msg", [], 1, [1], [b"k", "v"]]], "byte string"),
        ([["offline_msg", [], 1, [1], [b"k", b"\x01\x00\x00"]]], "bad versioned value"),
        ([["offline_msg", [], 1, [1], [b"k", b"\x09" + encode_versioned(item(1))[1:]]]], "bad versioned value"),
    ],
)
def test_malformed_groups_are_refused_with_a_reason(groups: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_write_groups({"w": groups})


def test_open_frames_leave_when_ready_says_so_and_full_ones_always() -> None:
    batcher = WriteBatcher()
    big = b"x" * 60_000
    for req in range(6):  # the first frame fills up: only the second one stays open
        batcher.add(NODES, "offline_msg", (), SYNC, req, b"k%d" % req, encode_versioned(item(req, big)), now=1.0 + req)
    batcher.add(("core1",), "offline_msg", (), SYNC, 9, b"h", encode_versioned(item(9)), now=0.5)
    asked: list[tuple[tuple[str, ...], int, float]] = []

    def never(nodes: tuple[str, ...], rows: int, opened_at: float) -> bool:
        asked.append((nodes, rows, opened_at))
        return False

    full = batcher.take(never)
    assert [(nodes, rows) for nodes, _, rows in full] == [(NODES, 4)]
    assert sorted(asked) == [(("core1",), 1, 0.5), (NODES, 2, 5.0)]
    assert batcher.oldest() == 0.5
    rest = batcher.take(lambda nodes, rows, opened_at: nodes == NODES)
    assert [(nodes, rows) for nodes, _, rows in rest] == [(NODES, 2)]
    assert [(nodes, rows) for nodes, _, rows in batcher.drain()] == [(("core1",), 1)]
    assert batcher.oldest() is None and not batcher


def test_scan_pages_of_one_turn_are_cut_into_frames_by_the_rows_they_hold() -> None:
    # Four pages of two 100 kB rows to one node in one turn: together 800 kB, so not one frame.
    pages = [[req, [[b"bob\x00m%d" % i, b"x" * 100_000] for i in range(2)], True, "ok"] for req in range(4)]
    chunks = frame_chunks(pages)
    assert [entry for chunk in chunks for entry in chunk] == pages
    sizes = [len(encode_body(envelope("spage", r=chunk)).frame(3, encode_pairs(src="core1", inc=1, seq=1)))
             for chunk in chunks]
    assert len(chunks) == 4 and max(sizes) <= FRAME_BUDGET_BYTES, sizes
