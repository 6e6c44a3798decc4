"""Versioned values: the on-disk encoding round trip, ordering, and decoding many at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iris_mesh.store._versioned import Version, Versioned, VersionError, decode_many, decode_versioned, encode_versioned

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
    assert a.newer_than(b) == (a.version > b.version)
    assert a.newer_than(None)


@pytest.mark.parametrize("raw", [b"", b"\x01\x00\x00", b"\x02" + encode_versioned(Versioned(Version(1, "n"), b"v"))[1:],
                                 encode_versioned(Versioned(Version(1, "node"), None))[:-2],
                                 b"\x01\x00" + bytes(8) + b"\x01\xff"])
def test_bad_encodings_are_refused_one_at_a_time_and_in_a_group(raw: bytes) -> None:
    with pytest.raises(VersionError):
        decode_versioned(raw)
    with pytest.raises(VersionError):
        decode_many([encode_versioned(Versioned(Version(1, "n"), b"ok")), raw])
