"""Tests for iris_mesh.messaging._protocol: parsing refuses with the documented codes, builders, hostile maps."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from cbor2 import CBORTag
from hypothesis import given, settings
from hypothesis import strategies as st

from iris_mesh import PROTOCOL_VERSION
from iris_mesh.sockets._codec import FrameError, decode, encode
from iris_mesh.messaging._protocol import (
    C2S_OPS,
    DEFAULT_LIMITS,
    ERROR_CODES,
    MAX_CID,
    RETRYABLE_ERROR_CODES,
    SEND_STATUSES,
    AckRequest,
    Delivery,
    HelloRequest,
    Limits,
    LoginRequest,
    LogoutRequest,
    PingRequest,
    PresenceRequest,
    ProtocolError,
    SendRequest,
    SyncRequest,
    build_deliver,
    build_error,
    build_hello,
    build_inbox,
    build_ok,
    build_presence,
    build_sent,
    is_valid_user,
    parse_request,
)

ID = bytes(range(16))
ID2 = bytes(range(1, 17))


def frame(op: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": op, **fields}


def refused(msg: object, limits: Limits = DEFAULT_LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(msg, limits)
    return info.value


# --- the error list ---------------------------------------------------------------------


def test_error_codes_hold_the_required_closed_list() -> None:
    required = {
        "auth_failed", "not_logged_in", "too_large", "bad_frame", "bad_request", "bad_version", "unknown_op",
        "unavailable", "partition_detected", "rate_limited", "inbox_full", "too_many_pending", "no_quorum",
        "internal",
    }  # fmt: skip
    assert required <= set(ERROR_CODES)
    assert RETRYABLE_ERROR_CODES <= set(ERROR_CODES)
    assert all(meaning and "\n" not in meaning for meaning in ERROR_CODES.values())


def test_error_codes_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        ERROR_CODES["new"] = "x"  # type: ignore[index]


def test_a_protocol_error_needs_a_documented_code_and_renders_its_reply() -> None:
    with pytest.raises(ValueError):
        ProtocolError("oops", "no such code")
    err = ProtocolError("bad_request", "'to' is missing", 9)
    assert err.to_frame() == frame("error", cid=9, code="bad_request", detail="'to' is missing")
    assert ProtocolError("bad_frame", "x").to_frame() == frame("error", code="bad_frame", detail="x")


# --- happy paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "request_"),
    [
        (frame("hello"), HelloRequest()),
        (frame("hello", client="sdk/1"), HelloRequest(client="sdk/1")),
        (frame("hello", client=None), HelloRequest()),
        (frame("login", cid=1, user="alice", token="t"), LoginRequest(1, "alice", "t")),
        (frame("send", cid=2, id=ID, to="bob", body=b""), SendRequest(2, ID, "bob", b"")),
        (frame("send", cid=2, id=ID, to="bob", body=b"", after=ID), SendRequest(2, ID, "bob", b"", after=ID)),
        (frame("send", cid=2, id=ID, to="bob", body=b"", after=None), SendRequest(2, ID, "bob", b"")),
        (frame("ack", ids=[ID, ID2, ID]), AckRequest((ID, ID2, ID))),
        (frame("sync", cid=3, cursor=None), SyncRequest(3, None)),
        (frame("sync", cid=3, cursor=b"c", limit=7), SyncRequest(3, b"c", 7)),
        (frame("presence", cid=4, user="b.o-b_@x"), PresenceRequest(4, "b.o-b_@x")),
        (frame("ping", cid=MAX_CID), PingRequest(MAX_CID)),
        (frame("logout", cid=0), LogoutRequest(0)),
    ],
)
def test_valid_requests_parse_into_their_dataclass(msg: dict[str, Any], request_: object) -> None:
    assert parse_request(msg) == request_


def test_unknown_keys_are_ignored() -> None:
    assert parse_request(frame("ping", cid=1, future={"x": 1}, **{"7": 7})) == PingRequest(1)


def test_every_client_op_has_a_parser_and_the_requests_know_their_op() -> None:
    assert set(C2S_OPS) == {"hello", "login", "send", "ack", "sync", "presence", "ping", "logout"}
    for cls in (HelloRequest, LoginRequest, SendRequest, AckRequest, SyncRequest, PresenceRequest, PingRequest,
                LogoutRequest):  # fmt: skip
        assert cls.op in C2S_OPS


def test_requests_are_frozen_and_slotted() -> None:
    request = PingRequest(1)
    with pytest.raises(AttributeError):
        request.cid = 2  # type: ignore[misc]
    assert not hasattr(request, "__dict__")


def test_sync_page_size_is_capped_by_the_limit() -> None:
    limits = Limits(sync_page=100)
    assert SyncRequest(1, None).page_size(limits) == 100
    assert SyncRequest(1, None, limit=7).page_size(limits) == 7
    assert SyncRequest(1, None, limit=5000).page_size(limits) == 100


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "code", "cid"),
    [
        ([1, 2], "bad_frame", None),
        ("hello", "bad_frame", None),
        ({"op": "ping", "cid": 1}, "bad_frame", 1),
        ({"v": True, "op": "ping", "cid": 1}, "bad_frame", 1),
        ({"v": -1, "op": "ping"}, "bad_version", None),
        ({"v": 1.0, "op": "ping"}, "bad_frame", None),
        ({"v": PROTOCOL_VERSION + 1, "op": "ping", "cid": 5}, "bad_version", 5),
        ({"v": PROTOCOL_VERSION, "cid": 5}, "bad_frame", 5),
        ({"v": PROTOCOL_VERSION, "op": "", "cid": 5}, "bad_frame", 5),
        ({"v": PROTOCOL_VERSION, "op": b"ping", "cid": 5}, "bad_frame", 5),
        (frame("deliver", cid=5), "unknown_op", 5),
        (frame("pong", cid=5), "unknown_op", 5),
        (frame("PING", cid=5), "unknown_op", 5),
        # cid
        (frame("ping"), "bad_request", None),
        (frame("ping", cid=-1), "bad_request", None),
        (frame("ping", cid=MAX_CID + 1), "bad_request", None),
        (frame("ping", cid=True), "bad_request", None),
        (frame("ping", cid=1.0), "bad_request", None),
        (frame("ping", cid="1"), "bad_request", None),
        # login
        (frame("login", cid=1, token="t"), "bad_request", 1),
        (frame("login", cid=1, user="al ice", token="t"), "bad_request", 1),
        (frame("login", cid=1, user="alice"), "bad_request", 1),
        (frame("login", cid=1, user="alice", token=""), "bad_request", 1),
        (frame("login", cid=1, user="alice", token=b"t"), "bad_request", 1),
        (frame("login", cid=1, user="alice", token="t" * 513), "bad_request", 1),
        # send
        (frame("send", id=ID, to="bob", body=b""), "bad_request", None),
        (frame("send", cid=2, id=ID[:15], to="bob", body=b""), "bad_request", 2),
        (frame("send", cid=2, id=ID + b"\x00", to="bob", body=b""), "bad_request", 2),
        (frame("send", cid=2, id=ID.hex(), to="bob", body=b""), "bad_request", 2),
        (frame("send", cid=2, id=ID, body=b""), "bad_request", 2),
        (frame("send", cid=2, id=ID, to="", body=b""), "bad_request", 2),
        (frame("send", cid=2, id=ID, to="bob"), "bad_request", 2),
        (frame("send", cid=2, id=ID, to="bob", body="hi"), "bad_request", 2),
        (frame("send", cid=2, id=ID, to="bob", body=b"", **{"from": "alice"}), "bad_request", 2),
        (frame("send", cid=2, id=ID, to="bob", body=b"", after=ID[:15]), "bad_request", 2),
        (frame("send", cid=2, id=ID, to="bob", body=b"", after=ID.hex()), "bad_request", 2),
        (frame("send", cid=2, id=ID, to="bob", body=b"x" * (DEFAULT_LIMITS.max_body_bytes + 1)), "too_large", 2),
        # ack
        (frame("ack"), "bad_request", None),
        (frame("ack", ids=[]), "bad_request", None),
        (frame("ack", ids=ID), "bad_request", None),
        (frame("ack", ids=[ID, b"short"]), "bad_request", None),
        (frame("ack", ids=[ID] * (DEFAULT_LIMITS.max_ack_ids + 1)), "bad_request", None),
        # sync
        (frame("sync", cid=3), "bad_request", 3),
        (frame("sync", cid=3, cursor="c"), "bad_request", 3),
        (frame("sync", cid=3, cursor=b"c" * 257), "bad_request", 3),
        (frame("sync", cid=3, cursor=None, limit=0), "bad_request", 3),
        (frame("sync", cid=3, cursor=None, limit=True), "bad_request", 3),
        (frame("sync", cid=3, cursor=None, limit=1 << 32), "bad_request", 3),
        # presence
        (frame("presence", cid=4), "bad_request", 4),
        (frame("presence", cid=4, user="x" * 65), "bad_request", 4),
    ],
)
def test_bad_requests_get_their_documented_code_and_echo_a_readable_cid(
    msg: object, code: str, cid: int | None
) -> None:
    err = refused(msg)
    assert (err.code, err.cid) == (code, cid)
    assert err.detail


def test_body_limit_follows_the_limits_passed_in() -> None:
    limits = Limits(max_body_bytes=10, max_frame_bytes=2048)
    assert parse_request(frame("send", cid=1, id=ID, to="bob", body=b"x" * 10), limits).body == b"x" * 10
    assert refused(frame("send", cid=1, id=ID, to="bob", body=b"x" * 11), limits).code == "too_large"


def test_ack_may_carry_a_whole_window_of_ids() -> None:
    limits = Limits(max_pending_deliveries=3, sync_page=5)
    assert len(parse_request(frame("ack", ids=[ID] * 5), limits).ids) == 5  # type: ignore[union-attr]
    assert refused(frame("ack", ids=[ID] * 6), limits).code == "bad_request"


def test_error_details_quote_hostile_values_briefly() -> None:
    err = refused(frame("send", cid=1, id=ID, to="x" * 1_000_000, body=b""))
    assert len(err.detail) < 200
    err = refused({"v": PROTOCOL_VERSION, "op": "y" * 1_000_000})
    assert len(err.detail) < 300


@pytest.mark.parametrize(
    "hostile",
    [1 << 100_000, -(1 << 100_000), CBORTag(4000, 1 << 100_000), [1 << 100_000] * 3, {"k": "v" * 10**6}],
    ids=["bignum", "negative bignum", "tagged bignum", "list of bignums", "big map"],
)
def test_hostile_values_in_any_field_give_a_short_bad_request(hostile: object) -> None:
    for msg in (frame("ping", cid=hostile), frame("send", cid=1, id=hostile, to="bob", body=b""),
                frame("sync", cid=1, cursor=None, limit=hostile), {"v": hostile, "op": "ping"},
                frame("presence", cid=1, user=hostile)):  # fmt: skip
        err = refused(msg)
        assert err.code in ("bad_request", "bad_frame", "bad_version")
        assert len(err.detail) < 200


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("x" * 64, True),
        ("Alice_B.c@d-e", True),
        ("0", True),
        ("", False),
        ("x" * 65, False),
        ("bob\n", False),
        ("b ob", False),
        ("bøb", False),
        ("b/ob", False),
        ("bob\x00", False),
        (b"bob", False),
        (None, False),
    ],
)
def test_user_names(name: object, valid: bool) -> None:
    assert is_valid_user(name) is valid


# --- hostile input ----------------------------------------------------------------------

_scalars = st.one_of(
    st.sampled_from([None, True, False, 0, 1, -1, MAX_CID, MAX_CID + 1, 1 << 64, "", "bob", b"", ID, ID[:15]]),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=70),
    st.binary(max_size=20),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.lists(st.binary(min_size=15, max_size=17), max_size=4),
    st.dictionaries(st.text(max_size=4), _scalars, max_size=3),
)
_keys = st.sampled_from(["v", "op", "cid", "id", "ids", "to", "body", "user", "token", "cursor", "limit", "client",
                         "from"])  # fmt: skip


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=8) | st.integers() | st.binary(max_size=4), _values, max_size=8))
def test_arbitrary_maps_raise_nothing_but_protocol_error(msg: dict[Any, Any]) -> None:
    try:
        parse_request(msg)
    except ProtocolError as err:
        assert err.code in ERROR_CODES


@settings(max_examples=500)
@given(op=st.sampled_from(C2S_OPS), fields=st.dictionaries(_keys, _values, max_size=8))
def test_maps_of_real_ops_with_arbitrary_fields_raise_nothing_but_protocol_error(
    op: str, fields: dict[str, Any]
) -> None:
    try:
        request = parse_request({**fields, "v": PROTOCOL_VERSION, "op": op})
    except ProtocolError as err:
        assert err.code in ERROR_CODES
        assert err.cid is None or 0 <= err.cid <= MAX_CID
    else:
        assert request.op == op


_SEEDS = [
    frame("send", cid=2, id=ID, to="bob", body=b"hi"),
    frame("ack", ids=[ID, ID2]),
    frame("sync", cid=3, cursor=b"\x00\x01", limit=5),
    frame("login", cid=1, user="alice", token="v1.x.1.y"),
]


@settings(max_examples=300)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(min_value=0, max_value=200), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(min_value=0, max_value=200),
)
def test_corrupted_and_truncated_frames_fail_only_with_documented_codes(
    seed: dict[str, Any], edits: list[tuple[int, int]], cut: int
) -> None:
    raw = bytearray(encode(seed))
    for pos, value in edits:
        raw[pos % len(raw)] = value
    try:
        parse_request(decode(bytes(raw[: max(1, len(raw) - cut % 8)])))
    except (FrameError, ProtocolError) as err:
        assert err.code in ERROR_CODES


_users = st.from_regex(r"\A[A-Za-z0-9_.@-]{1,64}\Z")
_cids = st.integers(min_value=0, max_value=MAX_CID)
_ids = st.binary(min_size=16, max_size=16)
_requests = st.one_of(
    st.builds(HelloRequest, client=st.none() | st.text(min_size=1, max_size=128)),
    st.builds(LoginRequest, cid=_cids, user=_users, token=st.text(min_size=1, max_size=512)),
    st.builds(SendRequest, cid=_cids, id=_ids, to=_users, body=st.binary(max_size=200)),
    st.builds(AckRequest, ids=st.lists(_ids, min_size=1, max_size=20).map(tuple)),
    st.builds(
        SyncRequest,
        cid=_cids,
        cursor=st.none() | st.binary(max_size=256),
        limit=st.none() | st.integers(min_value=1, max_value=(1 << 32) - 1),
    ),
    st.builds(PresenceRequest, cid=_cids, user=_users),
    st.builds(PingRequest, cid=_cids),
    st.builds(LogoutRequest, cid=_cids),
)


@given(_requests)
def test_valid_requests_survive_a_round_trip_through_their_wire_map(request: Any) -> None:
    assert parse_request(request.to_wire()) == request


# --- limits -----------------------------------------------------------------------------


def test_default_limits_are_the_documented_ones() -> None:
    assert DEFAULT_LIMITS.to_wire() == {
        "max_frame_bytes": 1 << 20,
        "max_body_bytes": 64 << 10,
        "send_rate_per_s": 200,
        "send_burst": 400,
        "max_pending_deliveries": 1000,
        "sync_page": 100,
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"sync_page": 0},
        {"send_burst": -1},
        {"send_rate_per_s": True},
        {"max_pending_deliveries": 1.5},
        {"max_body_bytes": 1 << 20},  # a max-size body would not fit in a frame
    ],
)
def test_limits_refuse_nonsense(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Limits(**changes)


# --- builders ---------------------------------------------------------------------------


def test_builders_make_the_documented_maps_in_key_order() -> None:
    delivery = Delivery(id=ID, sender="alice", ts_ms=5, body=b"hi", seq=1)
    assert list(build_hello("edge1", DEFAULT_LIMITS)) == ["v", "op", "node", "version", "limits"]
    assert build_ok(3) == {"v": PROTOCOL_VERSION, "op": "ok", "cid": 3}
    assert list(build_sent(3, ID, "queued")) == ["v", "op", "cid", "id", "status"]
    assert list(build_deliver(delivery)) == ["v", "op", "id", "from", "ts", "body", "seq"]
    inbox = build_inbox(3, [delivery], None, more=False)
    assert inbox["msgs"] == [{"id": ID, "from": "alice", "ts": 5, "body": b"hi", "seq": 1}]
    assert inbox["cursor"] is None and inbox["more"] is False
    assert build_presence(3, "bob", True, None)["last_seen"] is None


def test_error_reply_has_optional_cid_and_retry_after_as_a_float() -> None:
    assert list(build_error("internal", "boom")) == ["v", "op", "code", "detail"]
    reply = build_error("rate_limited", "slow down", cid=4, retry_after_s=1)
    assert list(reply) == ["v", "op", "cid", "code", "detail", "retry_after"]
    assert reply["retry_after"] == 1.0 and isinstance(reply["retry_after"], float)


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_error("nope", "x"),
        lambda: build_error("rate_limited", "x", retry_after_s=-1.0),
        lambda: build_error("rate_limited", "x", retry_after_s=float("nan")),
        lambda: build_error("internal", "x", cid=-1),
        lambda: build_sent(1, ID, "lost"),  # type: ignore[arg-type]
        lambda: build_sent(1, b"short", "stored"),
        lambda: build_ok(MAX_CID + 1),
        lambda: build_hello("", DEFAULT_LIMITS),
        lambda: build_presence(1, "not a name", False, None),
        lambda: build_presence(1, "bob", False, -5),
        lambda: build_inbox(1, [], b"c" * 257, True),
        lambda: Delivery(id=b"short", sender="alice", ts_ms=1, body=b"", seq=1),
        lambda: Delivery(id=ID, sender="", ts_ms=1, body=b"", seq=1),
        lambda: Delivery(id=ID, sender="alice", ts_ms=-1, body=b"", seq=1),
        lambda: Delivery(id=ID, sender="alice", ts_ms=1, body="text", seq=1),  # type: ignore[arg-type]
        lambda: Delivery(id=ID, sender="alice", ts_ms=1, body=b"", seq=1 << 64),
    ],
)
def test_builders_refuse_what_the_protocol_cannot_carry(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


def test_send_statuses() -> None:
    assert SEND_STATUSES == ("delivered", "stored", "queued")


# --- sans-IO ----------------------------------------------------------------------------

_MODULES = ("_protocol.py", "_tokens.py", "_ids.py", "_rate.py")
_FORBIDDEN = {"zmq", "rocksdict", "zeroconf", "threading", "time", "asyncio", "socket", "iris_mesh.sockets"}


@pytest.mark.parametrize("module", _MODULES)
def test_module_is_sans_io(module: str) -> None:
    path = Path(__file__).resolve().parents[3] / "iris_mesh" / "messaging" / module
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    bad = {name for name in imported if any(name == f or name.startswith(f + ".") for f in _FORBIDDEN)}
    assert not bad, f"{module} imports {bad}"
