"""Versioned values: the on-disk encoding round trip, ordering, and decoding many at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.store._versioned import (
    MAX_OBSERVED_AHEAD_MS,
    HybridClock,
    Version,
    Versioned,
    VersionError,
    decode_many,
    decode_versioned,
    encode_versioned,
)

ITEMS = st.builds(
    Versioned,
    st.builds(Version, st.integers(min_value=0, max_value=2**64 - 1), st.text(max_size=20)),
    st.one_of(st.none(), st.binary(max_size=64)),
)


@given(items=st.lists(ITEMS, max_size=20))
def test_decoding_many_is_decoding_each(items: list[Versioned]) -> None:
    raws = [encode_versioned(item) for item in items]
    assert decode_many(raws) == [decode_versioned(raw) for raw in raws] == items


@given(a=ITEMS, b=ITEMS)
def test_versions_order_as_hlc_then_node_and_newer_wins(a: Versioned, b: Versioned) -> None:
    assert (a.version < b.version) == ((a.version.hlc, a.version.node) < (b.version.hlc, b.version.node))
    if a.version != b.version:
        assert a.newer_than(b) == (a.version > b.version)
    assert a.newer_than(None)
    # One winner for any two different items, whichever a replica got first: replicas converge.
    assert not (a.newer_than(b) and b.newer_than(a))
    assert a.newer_than(b) or b.newer_than(a) or a == b


def test_equal_versions_from_one_message_id_resolve_the_same_way_everywhere() -> None:
    pinned = Version(1_700_000_000_000 << 16, "")  # a stored message's version, made from its id
    first, second, deleted = Versioned(pinned, b"from carol"), Versioned(pinned, b"from alice"), Versioned(pinned, None)
    assert first.newer_than(second) and not second.newer_than(first)  # the larger value
    assert deleted.newer_than(first) and not first.newer_than(deleted)  # a tombstone above any value
    assert not first.newer_than(Versioned(pinned, b"from carol"))  # the same write again changes nothing


@pytest.mark.parametrize("raw", [b"", b"\x01\x00\x00", b"\x02" + encode_versioned(Versioned(Version(1, "n"), b"v"))[1:],
                                 encode_versioned(Versioned(Version(1, "node"), None))[:-2],
                                 b"\x01\x00" + bytes(8) + b"\x01\xff"])
def test_bad_encodings_are_refused_one_at_a_time_and_in_a_group(raw: bytes) -> None:
    with pytest.raises(VersionError):
        decode_versioned(raw)
    with pytest.raises(VersionError):
        decode_many([encode_versioned(Versioned(Version(1, "n"), b"ok")), raw])


def test_a_reading_from_far_ahead_of_the_wall_clock_is_not_merged_and_is_counted() -> None:
    wall = [1_700_000_000_000]
    clock = HybridClock("core1", wall_ms=lambda: wall[0])
    near = Version((wall[0] + MAX_OBSERVED_AHEAD_MS) << 16, "core2")
    assert clock.observe(near, "core2") and clock.last_hlc == near.hlc
    far = Version((wall[0] + MAX_OBSERVED_AHEAD_MS + 1) << 16 | 5, "core3")
    assert not clock.observe(far, "core3")
    assert clock.last_hlc == near.hlc and clock.refused == 1 and clock.last_refused == ("core3", far)
    assert clock.now(wall[0]).hlc == near.hlc + 1  # versions go on from the last merged reading
    # The largest hlc there is: refused, so later versions never run out of bits.
    assert not clock.observe(Version(2**64 - 1, "core3"), "core3") and clock.refused == 2
    wall[0] += 2 * MAX_OBSERVED_AHEAD_MS  # once the wall clock catches up, the same reading is merged
    assert clock.observe(far, "core3") and clock.last_hlc == far.hlc


def test_a_version_pinned_from_a_message_id_is_not_a_clock_reading() -> None:
    clock = HybridClock("core1", wall_ms=lambda: 1_700_000_000_000)
    pinned = Version((1_700_000_000_000 + 10 * MAX_OBSERVED_AHEAD_MS) << 16, "")
    assert clock.observe(pinned, "edge1") and clock.last_hlc == 0 and clock.refused == 0
