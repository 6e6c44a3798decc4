"""Parsers for server-to-client frames: the client's side of docs/PROTOCOL.md section 6.

Sans-IO. The SDK decodes a frame with `iris_mesh.sockets._codec.decode` (which
refuses bad CBOR, a missing `v`/`op` and a wrong version) and hands the map to
`parse_server_frame`, which returns one typed, validated frame or raises
ProtocolError. A frame that is not what the document promises is the edge's
bug, not the user's; the SDK logs it and drops the frame.

Following the document, unknown keys are ignored, unknown limit names in
`hello` are ignored, and an `error` whose code is not in the closed list is
read as `internal` (its original code is kept in `detail`).

The codes on a ProtocolError raised here are the closest documented ones:
`bad_frame` (not a map, no `v` or `op`), `bad_version`, `unknown_op` (an op a
server never sends) and `bad_request` (a field missing, of the wrong type or
out of range).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from iris_mesh import PROTOCOL_VERSION
from iris_mesh._z85 import is_z85_key

from ._protocol import (
    DEFAULT_LIMITS,
    ERROR_CODES,
    MAX_CID,
    MAX_CURSOR_BYTES,
    MESSAGE_ID_BYTES,
    SEND_STATUSES,
    Delivery,
    Limits,
    ProtocolError,
    SendStatus,
    is_valid_user,
)

__all__ = [
    "SERVER_OPS",
    "DeliverFrame",
    "ErrorReply",
    "HelloReply",
    "InboxReply",
    "MoveFrame",
    "OkReply",
    "PongReply",
    "PresenceReply",
    "SentReply",
    "ServerFrame",
    "parse_server_frame",
]

_MAX_UINT64 = (1 << 64) - 1
_MAX_QUOTED_CHARS = 40


@dataclass(frozen=True, slots=True)
class HelloReply:
    """`hello {node, version, limits}`: which edge this is, and the limits it enforces."""

    node: str
    version: int
    limits: Limits


@dataclass(frozen=True, slots=True)
class OkReply:
    """`ok {cid}`: a login or logout succeeded."""

    cid: int


@dataclass(frozen=True, slots=True)
class SentReply:
    """`sent {cid, id, status}`: the send with this cid is safe."""

    cid: int
    id: bytes
    status: SendStatus


@dataclass(frozen=True, slots=True)
class DeliverFrame:
    """`deliver {id, from, ts, body, seq}`: a message pushed to this session."""

    delivery: Delivery


@dataclass(frozen=True, slots=True)
class InboxReply:
    """`inbox {cid, msgs, cursor, more}`: one page of the offline inbox, oldest first."""

    cid: int
    msgs: tuple[Delivery, ...]
    cursor: bytes | None
    more: bool


@dataclass(frozen=True, slots=True)
class PresenceReply:
    """`presence {cid, user, online, last_seen}`; `last_seen_ms` is None for a user never seen."""

    cid: int
    user: str
    online: bool
    last_seen_ms: int | None


@dataclass(frozen=True, slots=True)
class PongReply:
    """`pong {cid, user?}`: the answer to ping; `user` is who the connection is logged in as (None: nobody)."""

    cid: int
    user: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """`error {cid?, code, detail, retry_after?}`; `code` is always one of ERROR_CODES."""

    cid: int | None
    code: str
    detail: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class MoveFrame:
    """`move {detail, edges?}`: the edge ended the session and asks the client to log in on another edge;
    `edges`: (node id, endpoint, server key) of other edges to try first (malformed entries are left out)."""

    detail: str
    edges: tuple[tuple[str, str, str], ...] = ()


ServerFrame: TypeAlias = (
    HelloReply | OkReply | SentReply | DeliverFrame | InboxReply | PresenceReply | PongReply | ErrorReply | MoveFrame
)


# --- field readers -----------------------------------------------------------------------


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _quote(value: object) -> str:
    """A short rendering of a value from the wire: never the repr of a whole container."""
    if isinstance(value, (list, tuple, dict)):
        return f"{type(value).__name__} of {len(value)} items"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a hostile tag whose repr fails
        return "(unprintable)"
    return text if len(text) <= _MAX_QUOTED_CHARS else text[: _MAX_QUOTED_CHARS - 3] + "..."


def _bad(op: str, detail: str) -> ProtocolError:
    return ProtocolError("bad_request", f"server frame {op!r}: {detail}")


def _cid(msg: Mapping[Any, Any], op: str) -> int:
    value = msg.get("cid")
    if not _is_uint(value) or value > MAX_CID:
        raise _bad(op, f"'cid' must be an unsigned integer below 2**63, got {_quote(value)}")
    return value


def _uint(msg: Mapping[Any, Any], key: str, op: str, maximum: int = _MAX_UINT64) -> int:
    value = msg.get(key)
    if not _is_uint(value) or value > maximum:
        raise _bad(op, f"{key!r} must be an unsigned integer, got {_quote(value)}")
    return value


def _text(msg: Mapping[Any, Any], key: str, op: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str):
        raise _bad(op, f"{key!r} must be text, got {_quote(value)}")
    return value


def _bool(msg: Mapping[Any, Any], key: str, op: str) -> bool:
    value = msg.get(key)
    if not isinstance(value, bool):
        raise _bad(op, f"{key!r} must be a bool, got {_quote(value)}")
    return value


def _message_id(value: object, op: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != MESSAGE_ID_BYTES:
        raise _bad(op, f"a message id must be exactly {MESSAGE_ID_BYTES} bytes, got {_quote(value)}")
    return value


def _delivery(msg: Mapping[Any, Any], op: str) -> Delivery:
    if not isinstance(msg, Mapping):
        raise _bad(op, f"a message must be a map, got {_quote(msg)}")
    msg_id = _message_id(msg.get("id"), op)
    sender = msg.get("from")
    if not is_valid_user(sender):
        raise _bad(op, f"'from' must be a user name, got {_quote(sender)}")
    body = msg.get("body")
    if not isinstance(body, bytes):
        raise _bad(op, f"'body' must be a byte string, got {_quote(body)}")
    return Delivery(id=msg_id, sender=sender, ts_ms=_uint(msg, "ts", op), body=body, seq=_uint(msg, "seq", op))


def _limits(value: object) -> Limits:
    if not isinstance(value, Mapping):
        raise _bad("hello", f"'limits' must be a map, got {_quote(value)}")
    known = {f.name for f in fields(Limits)}
    chosen: dict[str, int] = {}
    for name, limit in value.items():
        if name not in known:
            continue  # a limit of a later version
        if not _is_uint(limit) or limit == 0 or limit > _MAX_UINT64:
            raise _bad("hello", f"limit {name!r} must be a positive integer, got {_quote(limit)}")
        chosen[name] = limit
    try:
        return Limits(**{**DEFAULT_LIMITS.to_wire(), **chosen})
    except ValueError as exc:
        raise _bad("hello", str(exc)) from None


# --- one parser per op -------------------------------------------------------------------


def _parse_hello(msg: Mapping[Any, Any]) -> HelloReply:
    node = _text(msg, "node", "hello")
    if not node:
        raise _bad("hello", "'node' must not be empty")
    return HelloReply(node=node, version=_uint(msg, "version", "hello"), limits=_limits(msg.get("limits")))


def _parse_ok(msg: Mapping[Any, Any]) -> OkReply:
    return OkReply(cid=_cid(msg, "ok"))


def _parse_sent(msg: Mapping[Any, Any]) -> SentReply:
    status = msg.get("status")
    if status not in SEND_STATUSES:
        raise _bad("sent", f"'status' must be one of {', '.join(SEND_STATUSES)}, got {_quote(status)}")
    return SentReply(cid=_cid(msg, "sent"), id=_message_id(msg.get("id"), "sent"), status=status)


def _parse_deliver(msg: Mapping[Any, Any]) -> DeliverFrame:
    return DeliverFrame(delivery=_delivery(msg, "deliver"))


def _parse_inbox(msg: Mapping[Any, Any]) -> InboxReply:
    cid = _cid(msg, "inbox")
    msgs = msg.get("msgs")
    if not isinstance(msgs, list):
        raise _bad("inbox", f"'msgs' must be an array, got {_quote(msgs)}")
    if "cursor" not in msg:
        raise _bad("inbox", "'cursor' is missing")
    cursor = msg["cursor"]
    if cursor is not None and (not isinstance(cursor, bytes) or len(cursor) > MAX_CURSOR_BYTES):
        raise _bad("inbox", f"'cursor' must be null or at most {MAX_CURSOR_BYTES} bytes, got {_quote(cursor)}")
    return InboxReply(
        cid=cid, msgs=tuple(_delivery(m, "inbox") for m in msgs), cursor=cursor, more=_bool(msg, "more", "inbox")
    )


def _parse_presence(msg: Mapping[Any, Any]) -> PresenceReply:
    user = msg.get("user")
    if not is_valid_user(user):
        raise _bad("presence", f"'user' must be a user name, got {_quote(user)}")
    last_seen = msg.get("last_seen")
    if last_seen is not None:
        last_seen = _uint(msg, "last_seen", "presence")
    return PresenceReply(
        cid=_cid(msg, "presence"), user=user, online=_bool(msg, "online", "presence"), last_seen_ms=last_seen
    )


def _parse_pong(msg: Mapping[Any, Any]) -> PongReply:
    user = _text(msg, "user", "pong") if msg.get("user") is not None else None
    return PongReply(cid=_cid(msg, "pong"), user=user)


_MAX_RETRY_AFTER_S = 86_400


def _parse_error(msg: Mapping[Any, Any]) -> ErrorReply:
    cid = _cid(msg, "error") if msg.get("cid") is not None else None
    code = _text(msg, "code", "error")
    detail = _text(msg, "detail", "error")
    if code not in ERROR_CODES:
        # PROTOCOL.md section 6.8: an unknown code is treated like internal.
        detail = f"unknown error code {_quote(code)}: {detail}"
        code = "internal"
    retry_after = msg.get("retry_after")
    if retry_after is not None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
            raise _bad("error", f"'retry_after' must be a number, got {_quote(retry_after)}")
        if not 0 <= retry_after <= _MAX_RETRY_AFTER_S:  # false for nan; no float() of a huge integer before it
            raise _bad("error", f"'retry_after' must be a number of seconds from 0 to {_MAX_RETRY_AFTER_S:,}, "
                                f"got {_quote(retry_after)}")
        retry_after = float(retry_after)
    return ErrorReply(cid=cid, code=code, detail=detail, retry_after_s=retry_after)


def _parse_move(msg: Mapping[Any, Any]) -> MoveFrame:
    detail = _text(msg, "detail", "move") if msg.get("detail") is not None else ""
    edges = msg.get("edges")
    hints = []
    for entry in edges if isinstance(edges, list) else ():
        if not isinstance(entry, Mapping):
            continue
        node, endpoint, key = entry.get("node"), entry.get("endpoint"), entry.get("key")
        if (isinstance(node, str) and isinstance(endpoint, str) and endpoint.startswith("tcp://")
                and is_z85_key(key)):
            hints.append((node, endpoint, key))
    return MoveFrame(detail=detail, edges=tuple(hints))


_PARSERS: Final[Mapping[str, Callable[[Mapping[Any, Any]], ServerFrame]]] = MappingProxyType(
    {
        "hello": _parse_hello,
        "ok": _parse_ok,
        "sent": _parse_sent,
        "deliver": _parse_deliver,
        "inbox": _parse_inbox,
        "presence": _parse_presence,
        "pong": _parse_pong,
        "error": _parse_error,
        "move": _parse_move,
    }
)

SERVER_OPS: Final[tuple[str, ...]] = tuple(_PARSERS)


def parse_server_frame(msg: object) -> ServerFrame:
    """Validate one decoded server frame into a typed frame; raises nothing but ProtocolError."""
    if not isinstance(msg, Mapping):
        raise ProtocolError("bad_frame", f"server frame is a {type(msg).__name__}, not a map")
    version = msg.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("bad_frame", "server frame has no integer 'v' (protocol version)")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"server speaks protocol version {_quote(version)}, not {PROTOCOL_VERSION}")
    op = msg.get("op")
    if not isinstance(op, str) or not op:
        raise ProtocolError("bad_frame", "server frame has no text 'op'")
    parser = _PARSERS.get(op)
    if parser is None:
        raise ProtocolError("unknown_op", f"{_quote(op)} is not an op a server sends")
    try:
        return parser(msg)
    except ProtocolError:
        raise
    except ValueError as exc:  # Delivery's own checks
        raise _bad(op, str(exc)) from None
    except Exception as exc:  # a check that chokes on a hostile value (a huge integer) must not escape as another error
        raise _bad(op, f"a field could not be checked ({type(exc).__name__})") from None
