"""Tests for iris_mesh.messaging._client_frames: every documented server frame parses; malformed ones raise ProtocolError.

(They live here with the rest of the SDK's tests: the parsers exist for the SDK.)
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iris_mesh.messaging._client_frames import (
    SERVER_OPS,
    DeliverFrame,
    ErrorReply,
    HelloReply,
    InboxReply,
    MoveFrame,
    OkReply,
    PongReply,
    PresenceReply,
    SentReply,
    parse_server_frame,
)
from iris_mesh.messaging._protocol import (
    DEFAULT_LIMITS,
    S2C_OPS,
    Delivery,
    Limits,
    ProtocolError,
    build_deliver,
    build_error,
    build_hello,
    build_inbox,
    build_move,
    build_ok,
    build_pong,
    build_presence,
    build_sent,
)
from iris_mesh.sockets._codec import decode

DOC = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"
ID = bytes.fromhex("019000c79c007c3e91a4d2b85f06e1a9")
ID2 = bytes.fromhex("019000c79c007c3e91a4d2b85f06e1aa")


def server_vectors() -> list[bytes]:
    """The hex of every S→C test vector of docs/PROTOCOL.md."""
    text = DOC.read_text(encoding="utf-8")
    found = []
    for body in re.findall(r"^```cbor-vector\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if "dir: S→C" not in body:
            continue
        hex_part = body.split("hex:", 1)[1]
        found.append(bytes.fromhex("".join(hex_part.split())))
    return found


def refused(msg: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_server_frame(msg)
    return info.value


def test_a_parser_for_every_server_op() -> None:
    assert SERVER_OPS == S2C_OPS


def test_every_documented_server_vector_parses() -> None:
    vectors = server_vectors()
    assert len(vectors) >= len(S2C_OPS)
    parsed = [parse_server_frame(decode(raw)) for raw in vectors]
    assert {type(p) for p in parsed} == {
        HelloReply, OkReply, SentReply, DeliverFrame, InboxReply, PresenceReply, PongReply, ErrorReply, MoveFrame}
    by_type = {type(p): p for p in parsed}
    assert by_type[HelloReply] == HelloReply(node="edge1", version=1, limits=DEFAULT_LIMITS)
    assert by_type[SentReply] == SentReply(cid=2, id=ID, status="stored")
    deliver = by_type[DeliverFrame]
    assert deliver.delivery == Delivery(id=ID, sender="alice", ts_ms=1718000000003, body=b"hi", seq=1)
    pages = [p for p in parsed if isinstance(p, InboxReply)]
    assert [len(p.msgs) for p in pages] == [2, 0] and [p.more for p in pages] == [True, False]
    assert pages[0].cursor == bytes.fromhex("0000000000000002")
    assert by_type[PresenceReply] == PresenceReply(cid=5, user="bob", online=False, last_seen_ms=1718000000000)
    errors = [p for p in parsed if isinstance(p, ErrorReply)]
    assert errors[0] == ErrorReply(cid=2, code="rate_limited", detail="over 200 sends per second", retry_after_s=0.005)
    assert errors[1].cid is None and errors[1].code == "bad_frame"
    assert by_type[MoveFrame] == MoveFrame(detail="edge edge1 is stopping")


@pytest.mark.parametrize(
    "frame, expected",
    [
        (build_ok(7), OkReply(7)),
        (build_pong(8), PongReply(8)),
        (build_sent(1, ID, "delivered"), SentReply(1, ID, "delivered")),
        (build_presence(3, "bob", True, None), PresenceReply(3, "bob", True, None)),
        (build_error("unavailable", "later", cid=4), ErrorReply(4, "unavailable", "later", None)),
        (build_inbox(5, [], None, False), InboxReply(5, (), None, False)),
        (build_move("rebalance"), MoveFrame("rebalance")),
    ],
)
def test_builders_round_trip(frame: dict[str, Any], expected: object) -> None:
    assert parse_server_frame(frame) == expected


def test_unknown_keys_and_unknown_limits_are_ignored() -> None:
    hello = build_hello("edge9", Limits(sync_page=7))
    hello["limits"]["max_wormholes"] = 3
    hello["extra"] = [1, 2]
    parsed = parse_server_frame(hello)
    assert isinstance(parsed, HelloReply) and parsed.limits.sync_page == 7


def test_missing_limits_take_the_defaults() -> None:
    hello = build_hello("edge1", DEFAULT_LIMITS)
    hello["limits"] = {"sync_page": 10}
    parsed = parse_server_frame(hello)
    assert isinstance(parsed, HelloReply)
    assert parsed.limits == Limits(sync_page=10)


def test_an_unknown_error_code_reads_as_internal() -> None:
    frame = {"v": 1, "op": "error", "cid": 3, "code": "cosmic_ray", "detail": "bit flip"}
    parsed = parse_server_frame(frame)
    assert isinstance(parsed, ErrorReply)
    assert parsed.code == "internal" and "cosmic_ray" in parsed.detail and "bit flip" in parsed.detail


def test_an_integer_retry_after_is_accepted() -> None:
    frame = build_error("rate_limited", "slow", cid=1)
    frame["retry_after"] = 2
    parsed = parse_server_frame(frame)
    assert isinstance(parsed, ErrorReply) and parsed.retry_after_s == 2.0


def _deliver() -> dict[str, Any]:
    return build_deliver(Delivery(id=ID, sender="alice", ts_ms=1, body=b"", seq=1))


def _with(frame: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**frame, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    "frame, code",
    [
        ([1, 2], "bad_frame"),
        ({"op": "ok", "cid": 1}, "bad_frame"),
        ({"v": True, "op": "ok", "cid": 1}, "bad_frame"),
        ({"v": 2, "op": "ok", "cid": 1}, "bad_version"),
        ({"v": 1, "cid": 1}, "bad_frame"),
        ({"v": 1, "op": "send", "cid": 1}, "unknown_op"),
        (_with(build_ok(1), cid=-1), "bad_request"),
        (_with(build_ok(1), cid=True), "bad_request"),
        (_with(build_ok(1), cid=1 << 63), "bad_request"),
        (_with(build_ok(1), cid=_DROP), "bad_request"),
        (_with(build_sent(1, ID, "stored"), status="lost"), "bad_request"),
        (_with(build_sent(1, ID, "stored"), id=ID[:15]), "bad_request"),
        (_with(build_sent(1, ID, "stored"), id=ID.hex()), "bad_request"),
        (_with(_deliver(), **{"from": "not a user"}), "bad_request"),
        (_with(_deliver(), body="text"), "bad_request"),
        (_with(_deliver(), seq=1 << 64), "bad_request"),
        (_with(_deliver(), ts=-5), "bad_request"),
        (_with(build_inbox(1, [], None, False), cursor=_DROP), "bad_request"),
        (_with(build_inbox(1, [], None, False), cursor=b"x" * 257), "bad_request"),
        (_with(build_inbox(1, [], None, False), msgs={"a": 1}), "bad_request"),
        (_with(build_inbox(1, [], None, False), msgs=[{"id": ID}]), "bad_request"),
        (_with(build_inbox(1, [], None, False), more=1), "bad_request"),
        (_with(build_presence(1, "bob", True, 5), last_seen="yesterday"), "bad_request"),
        (_with(build_presence(1, "bob", True, 5), online=None), "bad_request"),
        (_with(build_error("internal", "x"), code=5), "bad_request"),
        (_with(build_error("internal", "x"), detail=_DROP), "bad_request"),
        (_with(build_error("rate_limited", "x", cid=1), retry_after=-1.0), "bad_request"),
        (_with(build_error("rate_limited", "x", cid=1), retry_after=math.nan), "bad_request"),
        (_with(build_error("rate_limited", "x", cid=1), retry_after=math.inf), "bad_request"),
        (_with(build_error("rate_limited", "x", cid=1), retry_after=True), "bad_request"),
        (_with(build_error("rate_limited", "x", cid=1), retry_after=1 << 1100), "bad_request"),  # no OverflowError
        (_with(build_hello("e", DEFAULT_LIMITS), node=""), "bad_request"),
        (_with(build_hello("e", DEFAULT_LIMITS), limits=[1]), "bad_request"),
        (_with(build_hello("e", DEFAULT_LIMITS), limits={"sync_page": 0}), "bad_request"),
        (_with(build_hello("e", DEFAULT_LIMITS), limits={"max_body_bytes": 1 << 20}), "bad_request"),
    ],
)
def test_malformed_frames_are_refused(frame: Any, code: str) -> None:
    assert refused(frame).code == code


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(S2C_OPS), fields=st.dictionaries(
    st.sampled_from(["cid", "id", "status", "from", "ts", "body", "seq", "msgs", "cursor", "more", "user", "online",
                     "last_seen", "code", "detail", "retry_after", "node", "version", "limits"]), _values, max_size=6))
def test_hostile_frames_raise_only_protocol_error(op: str, fields: dict[str, Any]) -> None:
    try:
        parse_server_frame({"v": 1, "op": op, **fields})
    except ProtocolError:
        pass


def test_a_move_names_the_other_edges_and_malformed_entries_are_left_out() -> None:
    key = "E1kR0o8nFcmmsL3H8yf7rqrM5ULns47xPz2QaW9d"
    frame = build_move("rebalance", [("edge2", "tcp://192.0.2.7:7211", key)])
    frame["edges"] += [{"node": "edge3", "endpoint": "192.0.2.8:7211", "key": key}, {"node": "edge4"}, "edge5",
                       {"node": "edge6", "endpoint": "tcp://192.0.2.9:7211", "key": "short"}]
    assert parse_server_frame(frame) == MoveFrame("rebalance", (("edge2", "tcp://192.0.2.7:7211", key),))
    assert parse_server_frame({**build_move("x"), "edges": "not a list"}) == MoveFrame("x")
    assert parse_server_frame({"v": 1, "op": "move"}) == MoveFrame("")  # no detail: still a move
