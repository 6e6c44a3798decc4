"""The client protocol as data: error codes, limits, request parsers and reply builders.

docs/ARCHITECTURE.md section 3. `docs/PROTOCOL.md` is the specification a client author
reads; its hex test vectors are checked against this module by
`tests/unit/messaging/test_protocol_doc.py`, so the two cannot drift.

Sans-IO. The gateway decodes a frame with `iris_mesh.sockets._codec.decode`
(which already refuses oversized frames, bad CBOR and a wrong `v`), hands the
map to `parse_request`, and gets back a typed request or a ProtocolError whose
`to_frame()` is the error reply. Builders return maps ready for the codec's
`encode`. The key order of built maps is part of the contract: the documented
vectors are `cbor2.dumps` of exactly these maps.

Unknown keys in a request are ignored (room for later additions), except
`from` in `send`: the edge stamps the sender, and a client that tries to name
one gets `bad_request`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, TypeAlias

from iris_mesh import PROTOCOL_VERSION

__all__ = [
    "AckRequest",
    "C2S_OPS",
    "DEFAULT_LIMITS",
    "Delivery",
    "ERROR_CODES",
    "HelloRequest",
    "Limits",
    "LoginRequest",
    "LogoutRequest",
    "MAX_CID",
    "MAX_CLIENT_NAME_CHARS",
    "MAX_CURSOR_BYTES",
    "MAX_TOKEN_CHARS",
    "MESSAGE_ID_BYTES",
    "PROTOCOL_VERSION",
    "PingRequest",
    "PresenceRequest",
    "ProtocolError",
    "RETRYABLE_ERROR_CODES",
    "Request",
    "S2C_OPS",
    "SEND_STATUSES",
    "SendRequest",
    "SendStatus",
    "SyncRequest",
    "build_deliver",
    "build_error",
    "build_hello",
    "build_inbox",
    "build_move",
    "build_ok",
    "build_pong",
    "build_presence",
    "build_sent",
    "is_valid_user",
    "parse_request",
]

# The one place the closed list of error codes lives; PROTOCOL.md shows these meanings verbatim.
ERROR_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "auth_failed": "the login token is malformed, badly signed, expired or for another user",
        "not_logged_in": "the op needs a logged-in session and this connection has none (any more)",
        "too_large": "the frame is over max_frame_bytes or the body is over max_body_bytes",
        "bad_frame": "the frame is not one CBOR map with an integer v and a text op",
        "bad_request": "a field of a known op is missing, has the wrong type or is out of range",
        "bad_version": "the frame's v is not the protocol version this server speaks (the error's v)",
        "unknown_op": "the op is not a client-to-server op of this protocol version",
        "unavailable": "the replicas or the region needed for the request cannot be reached now",
        "partition_detected": "the recipient's cores are in safe mode after a partition and refuse writes",
        "rate_limited": "the user sends, or asks for inbox pages and presence, faster than send_rate_per_s allows (each has its own budget); wait retry_after seconds",
        "inbox_full": "the recipient's offline inbox is full until the recipient reads and acks",
        "too_many_pending": "the session has max_pending_deliveries sends still waiting for their sent",
        "no_quorum": ("a CP-mode write could not reach a Raft majority of the region's cores "
                      "(reserved: CP mode is not built, so no server sends it yet)"),
        "internal": "the server failed unexpectedly; the detail says what to report",
    }
)
# Codes after which the same request (same cid or a new one, same message id) may succeed later.
RETRYABLE_ERROR_CODES: Final[frozenset[str]] = frozenset(
    {"unavailable", "partition_detected", "rate_limited", "inbox_full", "too_many_pending", "no_quorum"}
)

SendStatus: TypeAlias = Literal["delivered", "stored", "queued"]
SEND_STATUSES: Final[tuple[SendStatus, ...]] = ("delivered", "stored", "queued")

MESSAGE_ID_BYTES: Final = 16
MAX_CID: Final = (1 << 63) - 1
MAX_TOKEN_CHARS: Final = 512
MAX_CLIENT_NAME_CHARS: Final = 128
MAX_CURSOR_BYTES: Final = 256
# Upper bound of a sync request's `limit`; the server pages by min(limit, sync_page) anyway.
_MAX_SYNC_LIMIT = (1 << 32) - 1
# Room for everything of a send, deliver or one-message inbox frame but its body: a max-size body must fit.
_FRAME_OVERHEAD_BYTES = 1024
_MAX_UINT64 = (1 << 64) - 1
# Details quote offending values; a hostile 1 MiB value must not make a 1 MiB error reply.
_MAX_QUOTED_CHARS = 40

_USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def is_valid_user(name: object) -> bool:
    """True for a user name: 1 to 64 characters of [A-Za-z0-9_.@-]."""
    return isinstance(name, str) and _USER_RE.fullmatch(name) is not None


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ProtocolError(Exception):
    """A request refused with a documented `code`; `cid` is the request's cid when it was readable."""

    __slots__ = ("code", "detail", "cid")

    def __init__(self, code: str, detail: str, cid: int | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"{code!r} is not a documented error code")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.cid = cid

    def to_frame(self) -> dict[str, Any]:
        """The error reply for this refusal."""
        return build_error(self.code, self.detail, cid=self.cid)


@dataclass(frozen=True, slots=True)
class Limits:
    """What an edge enforces per client; the hello reply tells clients these values."""

    max_frame_bytes: int = 1 << 20
    max_body_bytes: int = 64 << 10
    send_rate_per_s: int = 200
    send_burst: int = 400
    max_pending_deliveries: int = 1000
    sync_page: int = 100

    def __post_init__(self) -> None:
        """ValueError unless every limit is a positive integer and a max-size body fits in a frame."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not _is_uint(value) or value == 0:
                raise ValueError(f"limit {f.name} must be a positive integer, got {value!r}")
        if self.max_body_bytes + _FRAME_OVERHEAD_BYTES > self.max_frame_bytes:
            raise ValueError(
                f"max_body_bytes ({self.max_body_bytes}) plus {_FRAME_OVERHEAD_BYTES} bytes of frame overhead"
                f" must fit in max_frame_bytes ({self.max_frame_bytes})"
            )

    @property
    def max_ack_ids(self) -> int:
        """Most ids one ack may carry: a whole window of deliveries or a whole inbox page."""
        return max(self.max_pending_deliveries, self.sync_page)

    def to_wire(self) -> dict[str, int]:
        """The limits map of the hello reply, keyed by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_LIMITS: Final = Limits()


# --- requests (client to server) -------------------------------------------------------


def _envelope(op: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": op}


@dataclass(frozen=True, slots=True)
class HelloRequest:
    """`hello {client?, moves?}`: version check; `client` names the client software (free text); `moves`: the
    client handles `move` by logging in on another edge, so an operator's rebalance may move it."""

    op: ClassVar[str] = "hello"
    client: str | None = None
    moves: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire = _envelope(self.op)
        if self.client is not None:
            wire["client"] = self.client
        if self.moves:
            wire["moves"] = True
        return wire


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """`login {cid, user, token}`: authenticate this connection as `user`."""

    op: ClassVar[str] = "login"
    cid: int
    user: str
    token: str

    def to_wire(self) -> dict[str, Any]:
        return {**_envelope(self.op), "cid": self.cid, "user": self.user, "token": self.token}


@dataclass(frozen=True, slots=True)
class SendRequest:
    """`send {cid, id, to, body, after?}`: `id` is the client-made 16-byte idempotency key.

    `after`: the id of the sender's last earlier message to `to` that was `stored`, if none
    after it was `delivered` (docs/PROTOCOL.md 9.1); None when there is none or it is unknown.
    """

    op: ClassVar[str] = "send"
    cid: int
    id: bytes
    to: str
    body: bytes
    after: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {**_envelope(self.op), "cid": self.cid, "id": self.id, "to": self.to, "body": self.body}
        if self.after is not None:
            wire["after"] = self.after
        return wire


@dataclass(frozen=True, slots=True)
class AckRequest:
    """`ack {ids}`: the client has these messages; only now may they leave the store. No reply."""

    op: ClassVar[str] = "ack"
    ids: tuple[bytes, ...]

    def to_wire(self) -> dict[str, Any]:
        return {**_envelope(self.op), "ids": list(self.ids)}


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """`sync {cid, cursor, limit?}`: the next page of the offline inbox after `cursor` (None: from the start)."""

    op: ClassVar[str] = "sync"
    cid: int
    cursor: bytes | None
    limit: int | None = None

    def page_size(self, limits: Limits) -> int:
        """How many messages the reply may hold at most."""
        return limits.sync_page if self.limit is None else min(self.limit, limits.sync_page)

    def to_wire(self) -> dict[str, Any]:
        wire = {**_envelope(self.op), "cid": self.cid, "cursor": self.cursor}
        if self.limit is not None:
            wire["limit"] = self.limit
        return wire


@dataclass(frozen=True, slots=True)
class PresenceRequest:
    """`presence {cid, user}`: is `user` online, and when was it last seen."""

    op: ClassVar[str] = "presence"
    cid: int
    user: str

    def to_wire(self) -> dict[str, Any]:
        return {**_envelope(self.op), "cid": self.cid, "user": self.user}


@dataclass(frozen=True, slots=True)
class PingRequest:
    """`ping {cid}`: liveness; answered by pong."""

    op: ClassVar[str] = "ping"
    cid: int

    def to_wire(self) -> dict[str, Any]:
        return {**_envelope(self.op), "cid": self.cid}


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """`logout {cid}`: end the session's login; the connection may log in again."""

    op: ClassVar[str] = "logout"
    cid: int

    def to_wire(self) -> dict[str, Any]:
        return {**_envelope(self.op), "cid": self.cid}


Request: TypeAlias = (
    HelloRequest | LoginRequest | SendRequest | AckRequest | SyncRequest | PresenceRequest | PingRequest | LogoutRequest
)


# --- parsing ---------------------------------------------------------------------------


def _quote(value: object) -> str:
    """A short, safe rendering of a hostile value: never the repr of a whole container or bignum."""
    if isinstance(value, (list, tuple, dict)):
        return f"of {len(value)} items"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"of {value.bit_length()} bits"
    if isinstance(value, (str, bytes)) and len(value) > _MAX_QUOTED_CHARS:
        value = value[:_MAX_QUOTED_CHARS]
    try:
        text = repr(value)
    except Exception:  # e.g. a CBOR tag around a bignum past Python's int-to-text limit
        return "(unprintable)"
    return text if len(text) <= _MAX_QUOTED_CHARS else text[: _MAX_QUOTED_CHARS - 3] + "..."


def _kind(value: object) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {_quote(value)}"


def _bad(detail: str, cid: int | None) -> ProtocolError:
    return ProtocolError("bad_request", detail, cid)


def _readable_cid(msg: Mapping[Any, Any]) -> int | None:
    cid = msg.get("cid")
    return cid if _is_uint(cid) and cid <= MAX_CID else None


def _need_cid(msg: Mapping[Any, Any], cid: int | None) -> int:
    if cid is None:
        raise _bad(f"'cid' must be an unsigned integer below 2**63, got {_kind(msg.get('cid'))}", None)
    return cid


def _text(msg: Mapping[Any, Any], key: str, cid: int | None, max_chars: int) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise _bad(f"{key!r} must be text of 1 to {max_chars} characters, got {_kind(value)}", cid)
    return value


def _user(msg: Mapping[Any, Any], key: str, cid: int | None) -> str:
    value = msg.get(key)
    if not is_valid_user(value):
        raise _bad(f"{key!r} must be a user name (1-64 of [A-Za-z0-9_.@-]), got {_kind(value)}", cid)
    return value  # type: ignore[return-value]  # is_valid_user checked it is a str


def _message_id(value: object, what: str, cid: int | None) -> bytes:
    if not isinstance(value, bytes) or len(value) != MESSAGE_ID_BYTES:
        raise _bad(f"{what} must be a byte string of exactly {MESSAGE_ID_BYTES} bytes, got {_kind(value)}", cid)
    return value


def _parse_hello(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> HelloRequest:
    client = None if msg.get("client") is None else _text(msg, "client", cid, MAX_CLIENT_NAME_CHARS)
    moves = msg.get("moves")
    if moves is not None and not isinstance(moves, bool):
        raise _bad(f"'moves' must be true or false, got {_kind(moves)}", cid)
    return HelloRequest(client=client, moves=bool(moves))


def _parse_login(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> LoginRequest:
    cid = _need_cid(msg, cid)
    return LoginRequest(cid=cid, user=_user(msg, "user", cid), token=_text(msg, "token", cid, MAX_TOKEN_CHARS))


def _parse_send(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> SendRequest:
    cid = _need_cid(msg, cid)
    if "from" in msg:
        raise _bad("'from' is stamped by the edge with the logged-in user; do not send it", cid)
    msg_id = _message_id(msg.get("id"), "'id'", cid)
    to = _user(msg, "to", cid)
    body = msg.get("body")
    if not isinstance(body, bytes):
        raise _bad(f"'body' must be a byte string, got {_kind(body)}", cid)
    if len(body) > limits.max_body_bytes:
        detail = f"body of {len(body)} bytes exceeds max_body_bytes ({limits.max_body_bytes})"
        raise ProtocolError("too_large", detail, cid)
    after = msg.get("after")
    if after is not None:
        after = _message_id(after, "'after'", cid)
    return SendRequest(cid=cid, id=msg_id, to=to, body=body, after=after)


def _parse_ack(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> AckRequest:
    ids = msg.get("ids")
    if not isinstance(ids, (list, tuple)) or not 1 <= len(ids) <= limits.max_ack_ids:
        raise _bad(f"'ids' must be an array of 1 to {limits.max_ack_ids} message ids, got {_kind(ids)}", cid)
    return AckRequest(ids=tuple(_message_id(one, "every element of 'ids'", cid) for one in ids))


def _parse_sync(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> SyncRequest:
    cid = _need_cid(msg, cid)
    if "cursor" not in msg:
        raise _bad("'cursor' is required (null for the start of the inbox)", cid)
    cursor = msg["cursor"]
    if cursor is not None and (not isinstance(cursor, bytes) or len(cursor) > MAX_CURSOR_BYTES):
        raise _bad(f"'cursor' must be null or at most {MAX_CURSOR_BYTES} bytes, got {_kind(cursor)}", cid)
    limit = msg.get("limit")
    if limit is not None and (not _is_uint(limit) or not 1 <= limit <= _MAX_SYNC_LIMIT):
        raise _bad(f"'limit' must be a positive integer below 2**32, got {_kind(limit)}", cid)
    return SyncRequest(cid=cid, cursor=cursor, limit=limit)


def _parse_presence(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> PresenceRequest:
    cid = _need_cid(msg, cid)
    return PresenceRequest(cid=cid, user=_user(msg, "user", cid))


def _parse_ping(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> PingRequest:
    return PingRequest(cid=_need_cid(msg, cid))


def _parse_logout(msg: Mapping[Any, Any], cid: int | None, limits: Limits) -> LogoutRequest:
    return LogoutRequest(cid=_need_cid(msg, cid))


_PARSERS: Final[Mapping[str, Callable[[Mapping[Any, Any], int | None, Limits], Request]]] = MappingProxyType(
    {
        "hello": _parse_hello,
        "login": _parse_login,
        "send": _parse_send,
        "ack": _parse_ack,
        "sync": _parse_sync,
        "presence": _parse_presence,
        "ping": _parse_ping,
        "logout": _parse_logout,
    }
)
C2S_OPS: Final[tuple[str, ...]] = tuple(_PARSERS)
S2C_OPS: Final[tuple[str, ...]] = ("hello", "ok", "sent", "deliver", "inbox", "presence", "pong", "error", "move")


def parse_request(msg: object, limits: Limits = DEFAULT_LIMITS) -> Request:
    """Validate one decoded client frame into a typed request; raises nothing but ProtocolError."""
    if not isinstance(msg, Mapping):
        raise ProtocolError("bad_frame", f"frame is a {type(msg).__name__}, not a map")
    cid = _readable_cid(msg)
    version = msg.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("bad_frame", "frame has no integer 'v' (protocol version)", cid)
    if version != PROTOCOL_VERSION:
        detail = f"protocol version {_quote(version)} is not supported (this server speaks {PROTOCOL_VERSION})"
        raise ProtocolError("bad_version", detail, cid)
    op = msg.get("op")
    if not isinstance(op, str) or not op:
        raise ProtocolError("bad_frame", "frame has no text 'op'", cid)
    parser = _PARSERS.get(op)
    if parser is None:
        raise ProtocolError("unknown_op", f"unknown op {_quote(op)}; clients may send {', '.join(C2S_OPS)}", cid)
    return parser(msg, cid, limits)


# --- builders (server to client) -------------------------------------------------------


def _check_cid(cid: int) -> None:
    if not _is_uint(cid) or cid > MAX_CID:
        raise ValueError(f"cid must be an unsigned integer below 2**63, got {cid!r}")


def _check_id(msg_id: bytes) -> None:
    if not isinstance(msg_id, bytes) or len(msg_id) != MESSAGE_ID_BYTES:
        raise ValueError(f"a message id is exactly {MESSAGE_ID_BYTES} bytes, got {msg_id!r}")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a recipient sees it: in a deliver frame, or as an element of an inbox page."""

    id: bytes
    sender: str
    ts_ms: int
    body: bytes
    seq: int

    def __post_init__(self) -> None:
        """ValueError for a field the protocol cannot carry."""
        _check_id(self.id)
        if not is_valid_user(self.sender):
            raise ValueError(f"sender {self.sender!r} is not a user name")
        if not _is_uint(self.ts_ms) or not _is_uint(self.seq) or self.seq > _MAX_UINT64:
            raise ValueError(f"ts_ms and seq must be unsigned integers, got {self.ts_ms!r} and {self.seq!r}")
        if not isinstance(self.body, bytes):
            raise ValueError(f"body must be bytes, got {type(self.body).__name__}")

    def to_wire(self) -> dict[str, Any]:
        """The message fields without the envelope: `{id, from, ts, body, seq}`."""
        return {"id": self.id, "from": self.sender, "ts": self.ts_ms, "body": self.body, "seq": self.seq}


def build_hello(node_id: str, limits: Limits) -> dict[str, Any]:
    """The reply to hello: this edge's node id, protocol version and limits."""
    if not isinstance(node_id, str) or not node_id:
        raise ValueError(f"node id must be non-empty text, got {node_id!r}")
    return {**_envelope("hello"), "node": node_id, "version": PROTOCOL_VERSION, "limits": limits.to_wire()}


def build_ok(cid: int) -> dict[str, Any]:
    """The reply to a successful login or logout."""
    _check_cid(cid)
    return {**_envelope("ok"), "cid": cid}


def build_sent(cid: int, msg_id: bytes, status: SendStatus) -> dict[str, Any]:
    """The reply to send, once the message is delivered-and-acked, durably stored or durably queued."""
    _check_cid(cid)
    _check_id(msg_id)
    if status not in SEND_STATUSES:
        raise ValueError(f"sent status must be one of {SEND_STATUSES}, got {status!r}")
    return {**_envelope("sent"), "cid": cid, "id": msg_id, "status": status}


def build_deliver(delivery: Delivery) -> dict[str, Any]:
    """A message pushed to a recipient's session; the client acks its id."""
    return {**_envelope("deliver"), **delivery.to_wire()}


def build_inbox(cid: int, msgs: Sequence[Delivery], cursor: bytes | None, more: bool) -> dict[str, Any]:
    """The reply to sync: one page of the offline inbox, the cursor after it, and whether more follow."""
    _check_cid(cid)
    if cursor is not None and (not isinstance(cursor, bytes) or len(cursor) > MAX_CURSOR_BYTES):
        raise ValueError(f"cursor must be None or at most {MAX_CURSOR_BYTES} bytes, got {cursor!r}")
    return {**_envelope("inbox"), "cid": cid, "msgs": [m.to_wire() for m in msgs], "cursor": cursor, "more": bool(more)}


def build_presence(cid: int, user: str, online: bool, last_seen_ms: int | None) -> dict[str, Any]:
    """The reply to presence; `last_seen_ms` is None for a user never seen."""
    _check_cid(cid)
    if not is_valid_user(user):
        raise ValueError(f"{user!r} is not a user name")
    if last_seen_ms is not None and not _is_uint(last_seen_ms):
        raise ValueError(f"last_seen_ms must be None or an unsigned integer, got {last_seen_ms!r}")
    return {**_envelope("presence"), "cid": cid, "user": user, "online": bool(online), "last_seen": last_seen_ms}


def build_pong(cid: int, user: str | None = None) -> dict[str, Any]:
    """The reply to ping; `user`: who the connection is logged in as (None: not logged in, no key)."""
    _check_cid(cid)
    frame = {**_envelope("pong"), "cid": cid}
    if user is not None:
        frame["user"] = user
    return frame


def build_move(detail: str, edges: Sequence[tuple[str, str, str]] = ()) -> dict[str, Any]:
    """The edge ended this session and asks the client to log in on another edge (`detail`: why, for logs);
    `edges`: (node id, endpoint, server key) of the other edges serving clients now, to try before mDNS."""
    frame = {**_envelope("move"), "detail": str(detail)}
    if edges:
        frame["edges"] = [{"node": node, "endpoint": endpoint, "key": key} for node, endpoint, key in edges]
    return frame


def build_error(
    code: str, detail: str, *, cid: int | None = None, retry_after_s: float | None = None
) -> dict[str, Any]:
    """An error reply; `cid` when the refused request's cid was readable, `retry_after_s` for rate_limited."""
    if code not in ERROR_CODES:
        raise ValueError(f"{code!r} is not a documented error code")
    frame = _envelope("error")
    if cid is not None:
        _check_cid(cid)
        frame["cid"] = cid
    frame["code"] = code
    frame["detail"] = str(detail)
    if retry_after_s is not None:
        if not retry_after_s >= 0:  # also refuses NaN
            raise ValueError(f"retry_after_s must be >= 0, got {retry_after_s!r}")
        frame["retry_after"] = float(retry_after_s)
    return frame
