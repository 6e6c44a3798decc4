"""The frame codec: round trips, limits, and hostile input never escaping as anything but FrameError."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.sockets import FrameError, decode, decode_mesh, encode, envelope
from iris_mesh.sockets._codec import encode_body, encode_pairs


def test_round_trip_keeps_every_field() -> None:
    msg = envelope("hello", src="core1", inc=3, seq=7, body=b"\x00\xff", peers=[{"id": "a"}])
    assert decode_mesh(encode(msg)) == msg


def test_envelope_carries_the_protocol_version() -> None:
    assert envelope("ping") == {"v": PROTOCOL_VERSION, "op": "ping"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"", "bad_frame"),
        (b"\xff", "bad_frame"),
        (cbor2.dumps([1, 2]), "bad_frame"),
        (cbor2.dumps({"op": "x"}), "bad_frame"),
        (cbor2.dumps({"v": True, "op": "x"}), "bad_frame"),
        (cbor2.dumps({"v": PROTOCOL_VERSION + 1, "op": "x"}), "bad_version"),
        (cbor2.dumps({"v": PROTOCOL_VERSION, "op": ""}), "bad_frame"),
        (cbor2.dumps({"v": PROTOCOL_VERSION, "op": 5}), "bad_frame"),
        (cbor2.dumps({"v": PROTOCOL_VERSION, "op": "x"}) + b"\x00", "bad_frame"),
        (b"\x81" * 100 + b"\x00", "bad_frame"),  # nested 100 deep
        (b"\xa2\x61a\x01\x61a\x02", "bad_frame"),  # duplicate key
    ],
)
def test_bad_frames_are_refused_with_a_code(frame: bytes, code: str) -> None:
    with pytest.raises(FrameError) as info:
        decode(frame)
    assert info.value.code == code


def test_the_error_for_a_duplicate_key_does_not_quote_a_huge_key_back() -> None:
    # cbor2 names the key; echoed whole, a 600 KB frame drew a 1.2 MB error reply (over the frame limit).
    key = "\x00" * 300_000
    frame = b"\xa2" + cbor2.dumps(key) + b"\x01" + cbor2.dumps(key) + b"\x02"
    with pytest.raises(FrameError) as info:
        decode(frame)
    detail = str(info.value)
    assert detail.startswith("not valid CBOR: ") and "Duplicate" in detail and len(detail) < 300, detail[:400]


@pytest.mark.parametrize(
    ("fields", "ids"),
    [
        ({"v": PROTOCOL_VERSION + 1, "op": "ping", "cid": 4}, {"cid": 4}),
        ({"v": PROTOCOL_VERSION, "rid": 9}, {"rid": 9}),
        ({"v": "1", "op": "ping", "cid": 0, "rid": (1 << 63) - 1}, {"cid": 0, "rid": (1 << 63) - 1}),
        ({"op": "ping", "cid": -1, "rid": 1 << 63}, {}),
        ({"op": "ping", "cid": True, "rid": "7"}, {}),
    ],
)
def test_a_refused_map_carries_its_readable_request_ids(fields: dict[str, object], ids: dict[str, int]) -> None:
    with pytest.raises(FrameError) as info:
        decode(cbor2.dumps(fields))
    assert info.value.ids == ids


def test_a_tagged_map_is_refused_with_a_detail_that_says_so() -> None:
    # The self-describe tag (55799) around an otherwise good frame: cbor2 reads a tagged map as a frozendict.
    with pytest.raises(FrameError) as info:
        decode(b"\xd9\xd9\xf7" + cbor2.dumps({"v": PROTOCOL_VERSION, "op": "ping", "cid": 1}))
    assert info.value.code == "bad_frame" and "tagged CBOR map" in str(info.value)


@pytest.mark.parametrize("value", [
    cbor2.CBORTag(4, [0, 1 << 400_000]),  # a decimal: cbor2 made a Decimal of it in time growing as its size squared
    cbor2.CBORTag(30, [1 << 400_000, 3]),  # a rational: the same
    cbor2.CBORTag(28, [cbor2.CBORTag(29, 0)]),  # shared references: a few bytes that stand for a huge value
    cbor2.CBORTag(37, b"u" * 16),  # any other tag: the protocol uses none
], ids=["decimal", "rational", "shared", "uuid"])
def test_tagged_values_are_refused_before_they_are_decoded(value: object) -> None:
    frame = cbor2.dumps({"v": PROTOCOL_VERSION, "op": "ping", "cid": 1, "x": value})
    with pytest.raises(FrameError) as info:
        decode(frame, max_frame_bytes=1 << 20)
    assert info.value.code == "bad_frame" and "CBOR tags are not used by this protocol" in str(info.value)


def test_bignums_are_integers_and_still_decode() -> None:
    assert decode(cbor2.dumps({"v": PROTOCOL_VERSION, "op": "ping", "n": 1 << 70, "m": -(1 << 70)}))["n"] == 1 << 70


def test_frame_over_the_limit_is_refused_before_decoding() -> None:
    frame = encode(envelope("x", body=b"a" * 2000))
    assert decode(frame, max_frame_bytes=len(frame))["body"] == b"a" * 2000
    with pytest.raises(FrameError) as info:
        decode(frame, max_frame_bytes=len(frame) - 1)
    assert info.value.code == "too_large"


@pytest.mark.parametrize("missing", ["src", "inc", "seq"])
def test_mesh_frames_need_src_inc_seq(missing: str) -> None:
    msg = envelope("hb", src="core1", inc=1, seq=1)
    del msg[missing]
    with pytest.raises(FrameError):
        decode_mesh(encode(msg))


def test_mesh_frame_with_negative_seq_is_refused() -> None:
    with pytest.raises(FrameError):
        decode_mesh(encode(envelope("hb", src="core1", inc=1, seq=-1)))


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    try:
        decode_mesh(data)
    except FrameError:
        pass


_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(["v", "op", "src", "inc", "seq", "card", "x"]), _cbor_values, max_size=7))
def test_generated_maps_decode_or_fail_cleanly(msg: dict) -> None:
    frame = cbor2.dumps(msg)
    try:
        out = decode_mesh(frame)
    except FrameError:
        return
    # Whatever is accepted has a well-formed envelope.
    assert out["v"] == PROTOCOL_VERSION and isinstance(out["op"], str) and out["op"]
    assert isinstance(out["src"], str) and isinstance(out["inc"], int) and isinstance(out["seq"], int)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda k: k not in ("v", "op", "src", "inc", "seq")),
                           st.one_of(st.integers(), st.binary(max_size=40), st.lists(st.integers(), max_size=4)),
                           max_size=40),
    seq=st.integers(min_value=0, max_value=2**40),
)
def test_a_body_encoded_once_and_spliced_per_link_decodes_like_the_whole_frame(fields: dict[str, object], seq: int) -> None:
    body = encode_body(envelope("sput", **fields))
    frame = body.frame(3, encode_pairs(src="core1", inc=7, seq=seq))
    assert decode_mesh(frame) == envelope("sput", src="core1", inc=7, seq=seq, **fields)
    # Another link's splice of the same body is its own frame.
    assert decode_mesh(body.frame(3, encode_pairs(src="core1", inc=7, seq=seq + 1)))["seq"] == seq + 1


@pytest.mark.parametrize("version", [1 << 20000, -(1 << 20000)], ids=["huge", "huge-negative"])
def test_a_version_too_long_to_print_is_refused_as_a_bad_version(version: int) -> None:
    for decoder in (decode, decode_mesh):
        with pytest.raises(FrameError) as info:
            decoder(cbor2.dumps({"v": version, "op": "hello", "src": "a", "inc": 1, "seq": 1}))
        assert info.value.code == "bad_version" and "of 20001 bits" in str(info.value)


def test_a_check_that_fails_unexpectedly_is_a_bad_frame_not_another_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("something no check foresaw")

    monkeypatch.setattr("iris_mesh.sockets._codec._decode", broken)
    with pytest.raises(FrameError) as info:
        decode(cbor2.dumps({"v": PROTOCOL_VERSION, "op": "x"}))
    assert info.value.code == "bad_frame" and "ValueError" in str(info.value)
